//! Database pools, one schema per service, and embedded migrations per
//! backend.
//!
//! Production runs on PostgreSQL, each service in its own schema (so several
//! services may share one database without seeing each other's tables);
//! `confidant dev` runs on one SQLite file per service.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

/// Errors of connecting and migrating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL names no supported backend.
    #[error("unsupported database url scheme (expected postgres:// or sqlite:)")]
    UnsupportedUrl,
    /// The schema name is not a plain lowercase identifier.
    #[error("invalid schema name {0:?}")]
    InvalidSchema(String),
    /// Connecting or running a statement failed.
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A connection pool on one of the two backends.
#[derive(Debug, Clone)]
pub enum Database {
    /// PostgreSQL, with `search_path` set to the service's schema.
    Postgres(PgPool),
    /// SQLite, one file per service.
    Sqlite(SqlitePool),
}

/// Which backend a [`Database`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

/// A service's migrations, one set per backend (`migrations/postgres` and
/// `migrations/sqlite` in the service crate, embedded with `sqlx::migrate!`).
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// PostgreSQL migrations.
    pub postgres: &'static Migrator,
    /// SQLite migrations.
    pub sqlite: &'static Migrator,
}

/// No migrations: for a service whose tables have not been written yet, and
/// for tests of the common tables alone.
pub static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

/// Only the common migrations.
pub const COMMON_ONLY: Migrations = Migrations {
    postgres: &NO_MIGRATIONS,
    sqlite: &NO_MIGRATIONS,
};

/// Migrations every service has: the audit outbox. Their versions are small
/// integers, below the timestamped versions of the services' own migrations.
pub static COMMON_POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");
/// SQLite counterpart of [`COMMON_POSTGRES`].
pub static COMMON_SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");

fn combined(service: &Migrator, common: &Migrator) -> Migrator {
    let mut all: Vec<Migration> = common.iter().chain(service.iter()).cloned().collect();
    all.sort_by_key(|m| m.version);
    Migrator::with_migrations(all)
}

fn check_schema(schema: &str) -> Result<(), Error> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase())
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidSchema(schema.to_owned()))
    }
}

/// Pool settings.
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    /// Upper bound of open connections.
    pub max_connections: u32,
    /// How long a caller waits for a free connection.
    pub acquire_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// A pooled connection idle for longer than this is checked with a round
/// trip before it is handed out; one used more recently is handed out as it
/// is (a connection that died since fails its statement, which the caller
/// sees as an error like any other database failure).
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(30);

/// PostgreSQL pool settings as the services use them: sqlx's default pings
/// every connection it hands out (an extra round trip per statement); these
/// ping only a connection idle for [`PING_IF_IDLE_FOR`].
pub fn postgres_pool_options(options: PoolOptions) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IF_IDLE_FOR {
                    use sqlx::Connection as _;
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

impl Database {
    /// Connects to `url`. For PostgreSQL the pool's connections use `schema`
    /// (created if missing); for SQLite the file is created if missing.
    pub async fn connect(url: &str, schema: &str, options: PoolOptions) -> Result<Self, Error> {
        check_schema(schema)?;
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let base = PgConnectOptions::from_str(url)?;
            // The schema must exist before connections that use it as their
            // search_path can see anything; a one-off pool creates it.
            let bootstrap = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(base.clone())
                .await?;
            // Checked first so that a normal start logs no "already exists" notice.
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                    .bind(schema)
                    .fetch_one(&bootstrap)
                    .await?;
            if !exists {
                let created = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
                )))
                .execute(&bootstrap)
                .await;
                // Two replicas racing to create the schema: the loser sees a
                // unique violation on the catalog, which is fine.
                if let Err(e) = created
                    && crate::error::classify_sqlx(&e) != crate::error::StorageFault::AlreadyExists
                {
                    return Err(e.into());
                }
            }
            bootstrap.close().await;
            let pool = postgres_pool_options(options)
                .connect_with(base.options([("search_path", schema)]))
                .await?;
            Ok(Database::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            // An SQLite connection is a file handle in this process: there
            // is no peer that could have gone away, so nothing to ping.
            let pool = SqlitePoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .test_before_acquire(false)
                .connect_with(opts)
                .await?;
            Ok(Database::Sqlite(pool))
        } else {
            Err(Error::UnsupportedUrl)
        }
    }

    /// Connections a hot path may keep for itself, at most `most`; on
    /// PostgreSQL only (an SQLite connection costs no round trip).
    pub fn kept_connections(&self, most: usize) -> Option<KeptConnections> {
        match self {
            Database::Postgres(pool) => Some(KeptConnections::new(pool.clone(), most)),
            Database::Sqlite(_) => None,
        }
    }

    /// The backend of this pool.
    pub fn backend(&self) -> Backend {
        match self {
            Database::Postgres(_) => Backend::Postgres,
            Database::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Applies the common migrations and the service's. On PostgreSQL sqlx
    /// holds an advisory lock while it migrates, so replicas starting together
    /// run them once.
    pub async fn migrate(&self, migrations: Migrations) -> Result<(), Error> {
        match self {
            Database::Postgres(pool) => {
                combined(migrations.postgres, &COMMON_POSTGRES)
                    .run(pool)
                    .await?
            }
            Database::Sqlite(pool) => {
                combined(migrations.sqlite, &COMMON_SQLITE)
                    .run(pool)
                    .await?
            }
        }
        Ok(())
    }

    /// Versions of migrations not yet applied to this database. `serve`
    /// refuses to start on a schema that `confidant migrate` has not brought
    /// up to date.
    pub async fn unapplied_migrations(&self, migrations: Migrations) -> Result<Vec<i64>, Error> {
        let all = match self {
            Database::Postgres(_) => combined(migrations.postgres, &COMMON_POSTGRES),
            Database::Sqlite(_) => combined(migrations.sqlite, &COMMON_SQLITE),
        };
        let applied = self.applied_migrations().await?.unwrap_or_default();
        Ok(all
            .iter()
            .map(|m| m.version)
            .filter(|v| !applied.contains(v))
            .collect())
    }

    /// Whether no migration was ever applied here: a service that never
    /// ran on this database. A database that cannot be asked is an error,
    /// not a "never".
    pub async fn never_migrated(&self) -> Result<bool, Error> {
        Ok(self
            .applied_migrations()
            .await?
            .is_none_or(|applied| applied.is_empty()))
    }

    /// The versions of the migrations applied here; `None` when there is
    /// no bookkeeping table yet (nothing was ever applied).
    async fn applied_migrations(&self) -> Result<Option<Vec<i64>>, Error> {
        // PostgreSQL looks the table up on the search path, that is in the
        // service's schema.
        let exists = match self {
            Database::Postgres(_) => "SELECT to_regclass('_sqlx_migrations') IS NOT NULL",
            Database::Sqlite(_) => {
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')"
            }
        };
        if self.fetch_optional::<(bool,)>(exists, vec![]).await? != Some((true,)) {
            return Ok(None);
        }
        let applied: Vec<(i64,)> = self
            .fetch_all("SELECT version FROM _sqlx_migrations WHERE success", vec![])
            .await?;
        Ok(Some(applied.into_iter().map(|(v,)| v).collect()))
    }

    /// Cheap liveness check (`SELECT 1`).
    pub async fn ping(&self) -> Result<(), Error> {
        match self {
            Database::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
            Database::Sqlite(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        match self {
            Database::Postgres(pool) => pool.close().await,
            Database::Sqlite(pool) => pool.close().await,
        }
    }
}

/// Begins a SQLite transaction that takes the write lock at once.
///
/// A deferred transaction that reads before it writes fails with "database
/// is locked" when another writer commits in between; every read-then-write
/// transaction on SQLite starts here instead.
pub async fn begin_sqlite_write(
    pool: &SqlitePool,
) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(check_schema("vault").is_ok());
        assert!(check_schema("t_0a1b").is_ok());
        assert!(check_schema("Vault").is_err());
        assert!(check_schema("x\"; drop").is_err());
        assert!(check_schema("").is_err());
    }
}

/// A kept connection and since when it waits.
type KeptOne = (
    sqlx::pool::PoolConnection<sqlx::Postgres>,
    std::time::Instant,
);

/// PostgreSQL connections a hot path keeps for itself between uses (the
/// group commit of read events, grouped record look-ups). A connection
/// returned to the pool costs a round trip (sqlx checks every connection it
/// takes back) and, handed out in turn with all the others, meets a server
/// process that has gone cold; a kept one is used again at once. A kept
/// connection idle for longer than [`PING_IF_IDLE_FOR`] goes back to the
/// pool (which checks it) rather than being used; one whose statement
/// failed is never kept.
#[derive(Debug, Clone)]
pub struct KeptConnections {
    pool: PgPool,
    kept: std::sync::Arc<std::sync::Mutex<Vec<KeptOne>>>,
    most: usize,
}

/// A connection taken from [`KeptConnections`]; [`Kept::keep`] puts it back
/// after a statement that succeeded, dropping it returns it to the pool.
#[derive(Debug)]
pub struct Kept {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    home: KeptConnections,
}

impl KeptConnections {
    /// At most `most` connections of `pool` kept, and never more than a
    /// quarter of the pool: a service has several hot paths (the vault
    /// three: read events, look-ups, writes), each keeping connections the
    /// pool counts as in use, and the rest of the service (the outbox relay,
    /// every other statement) must still find free ones. A pool of fewer
    /// than four connections keeps none: each use then goes through the
    /// pool.
    pub fn new(pool: PgPool, most: usize) -> Self {
        let quarter = usize::try_from(pool.options().get_max_connections() / 4).unwrap_or(0);
        Self {
            pool,
            kept: std::sync::Arc::default(),
            most: most.min(quarter),
        }
    }

    /// A kept connection, or one from the pool.
    pub async fn take(&self) -> Result<Kept, sqlx::Error> {
        let recent = {
            let mut kept = self
                .kept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut found = None;
            while let Some((conn, since)) = kept.pop() {
                if since.elapsed() <= PING_IF_IDLE_FOR {
                    found = Some(conn);
                    break;
                }
                // Dropped: back to the pool, which checks it.
                drop(conn);
            }
            found
        };
        let conn = match recent {
            Some(conn) => conn,
            None => self.pool.acquire().await?,
        };
        Ok(Kept {
            conn,
            home: self.clone(),
        })
    }

    /// A connection from the pool, not one kept (for a second attempt).
    pub async fn fresh(&self) -> Result<Kept, sqlx::Error> {
        Ok(Kept {
            conn: self.pool.acquire().await?,
            home: self.clone(),
        })
    }
}

impl Kept {
    /// Keeps the connection for the next use (after a statement that
    /// succeeded).
    pub fn keep(self) {
        let mut kept = self
            .home
            .kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() < self.home.most {
            kept.push((self.conn, std::time::Instant::now()));
        }
    }
}

impl std::ops::Deref for Kept {
    type Target = sqlx::PgConnection;
    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl std::ops::DerefMut for Kept {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}
