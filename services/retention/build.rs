//! `sqlx::migrate!` embeds the `migrations` directory when the crate is
//! compiled; without this, cargo would not rebuild the crate when only a
//! migration is added or changed (an incremental build, such as CI's, would
//! then run the previous set).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
