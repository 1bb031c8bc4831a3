//! The build script of every crate with a `migrations` directory (each
//! names it with `build = "../migrations_build.rs"`): `sqlx::migrate!`
//! embeds that directory when the crate is compiled, and without this cargo
//! would not rebuild the crate when only a migration is added or changed
//! (an incremental build, such as CI's, would then run the previous set).
//! The path is relative to the crate being built.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
