//! The databases of `[stores.NAME]`: one sqlx pool per store per process,
//! kept in the pipeline's `Resources`; a missing database is created
//! (SQLite file or PostgreSQL database); migrations (`migrations/postgres/`,
//! `migrations/sqlite/`, embedded) are applied at start and by `flowpulse
//! migrate`. A database down at start is retried with backoff and shown as
//! the component's outage, never a crash.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowpulse_core::config::StoreSettings;
use flowpulse_core::outage::Outage;
use flowpulse_core::plugin::BuildContext;
use flowpulse_core::redact::redact_url;
use flowpulse_core::telemetry::ComponentStats;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::ConnectOptions as _;
use tokio::sync::watch;

/// A PostgreSQL timestamp as RFC 3339 UTC with milliseconds.
macro_rules! pg_ts {
    ($col:literal) => {
        concat!(
            "to_char(",
            $col,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
        )
    };
}

pub mod alerts;
pub mod rules;

/// How long SQLite waits for a lock held by another connection.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a store could not be opened or prepared.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is not a database URL Flowpulse knows.
    #[error("store \"{store}\": {message}")]
    Url {
        /// The store.
        store: String,
        /// What is wrong.
        message: String,
    },
    /// The database could not be reached, created or migrated.
    #[error("store \"{store}\" ({url}): {source}")]
    Database {
        /// The store.
        store: String,
        /// Its URL, without credentials.
        url: String,
        /// What failed.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("store \"{store}\" ({url}): migration failed: {source}")]
    Migration {
        /// The store.
        store: String,
        /// Its URL, without credentials.
        url: String,
        /// What failed.
        source: sqlx::migrate::MigrateError,
    },
}

/// The SQL dialect of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

/// A store's pool, by dialect.
#[derive(Debug, Clone)]
pub enum StorePool {
    /// A PostgreSQL pool.
    Postgres(PgPool),
    /// A SQLite pool.
    Sqlite(SqlitePool),
}

impl StorePool {
    /// The dialect.
    pub fn dialect(&self) -> Dialect {
        match self {
            StorePool::Postgres(_) => Dialect::Postgres,
            StorePool::Sqlite(_) => Dialect::Sqlite,
        }
    }
}

/// One declared store: its pool (connecting lazily) and whether its
/// database is ready (created and migrated).
#[derive(Debug)]
pub struct Store {
    /// Its name in `[stores.NAME]`.
    pub name: String,
    /// Its settings.
    pub settings: StoreSettings,
    /// The pool.
    pub pool: StorePool,
    ready: watch::Sender<bool>,
}

impl Store {
    /// A store whose pool connects on first use.
    pub fn new(name: &str, settings: &StoreSettings) -> Result<Store, StoreError> {
        let url_error = |message: String| StoreError::Url {
            store: name.to_owned(),
            message,
        };
        let pool = if settings.url.starts_with("postgres://")
            || settings.url.starts_with("postgresql://")
        {
            let options = PgConnectOptions::from_str(&settings.url)
                .map_err(|e| {
                    url_error(format!(
                        "invalid PostgreSQL URL {}: {e}",
                        redact_url(&settings.url)
                    ))
                })?
                .log_statements(tracing::log::LevelFilter::Debug);
            StorePool::Postgres(
                PgPoolOptions::new()
                    .max_connections(settings.max_connections)
                    .acquire_timeout(settings.connect_timeout)
                    .connect_lazy_with(options),
            )
        } else if settings.url.starts_with("sqlite:") {
            let options = sqlite_options(&settings.url).map_err(url_error)?;
            StorePool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(settings.max_connections)
                    .acquire_timeout(settings.connect_timeout)
                    .connect_lazy_with(options),
            )
        } else {
            return Err(url_error(format!(
                "`{}` is neither postgres://… nor sqlite://PATH",
                redact_url(&settings.url)
            )));
        };
        Ok(Store {
            name: name.to_owned(),
            settings: settings.clone(),
            pool,
            ready: watch::channel(false).0,
        })
    }

    /// The URL without credentials, for messages.
    pub fn display_url(&self) -> String {
        redact_url(&self.settings.url)
    }

    /// How many migrations the database has applied; 0 where it cannot
    /// tell (no database yet, never migrated).
    pub async fn applied_migrations(&self) -> usize {
        const COUNT: &str = "SELECT COUNT(*) FROM _sqlx_migrations WHERE success";
        let counted = match &self.pool {
            StorePool::Postgres(pool) => sqlx::query_scalar::<_, i64>(COUNT).fetch_one(pool).await,
            StorePool::Sqlite(pool) => sqlx::query_scalar::<_, i64>(COUNT).fetch_one(pool).await,
        };
        counted.map_or(0, |n| n.max(0) as usize)
    }

    fn database_error(&self, source: sqlx::Error) -> StoreError {
        StoreError::Database {
            store: self.name.clone(),
            url: self.display_url(),
            source,
        }
    }

    /// Creates the database if it is missing and applies the migrations
    /// (idempotent: applied ones are skipped). Once it has succeeded the
    /// store is ready.
    pub async fn prepare(&self) -> Result<(), StoreError> {
        match &self.pool {
            StorePool::Postgres(pool) => {
                create_postgres_database(&self.settings.url, self.settings.connect_timeout)
                    .await
                    .map_err(|e| self.database_error(e))?;
                sqlx::migrate!("../migrations/postgres")
                    .run(pool)
                    .await
                    .map_err(|source| StoreError::Migration {
                        store: self.name.clone(),
                        url: self.display_url(),
                        source,
                    })?;
            }
            StorePool::Sqlite(pool) => {
                sqlx::migrate!("../migrations/sqlite")
                    .run(pool)
                    .await
                    .map_err(|source| StoreError::Migration {
                        store: self.name.clone(),
                        url: self.display_url(),
                        source,
                    })?;
            }
        }
        self.ready.send_replace(true);
        Ok(())
    }

    /// Prepares the store, retrying with backoff through an outage (logged
    /// once, shown in `stats`), until it succeeds or `shutdown` is cancelled.
    pub async fn prepare_until_ready(
        &self,
        component: &str,
        stats: Option<Arc<ComponentStats>>,
        shutdown: &tokio_util::sync::CancellationToken,
    ) {
        let mut outage = Outage::new("the database");
        if let Some(stats) = stats {
            outage = outage.reporting_to(stats);
        }
        loop {
            match self.prepare().await {
                Ok(()) => {
                    outage.recovered(component, &self.settings.url);
                    tracing::info!(component, store = %self.name, "store ready");
                    return;
                }
                Err(e) => {
                    let wait = outage.failed(component, &self.settings.url, &e);
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Whether the database has been created and migrated.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Resolves once the database is ready.
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|ready| *ready).await;
    }
}

/// SQLite options for `sqlite://PATH` (or `sqlite:PATH`): the file (and its
/// directory) created if missing, WAL, a busy timeout, foreign keys on.
fn sqlite_options(url: &str) -> Result<SqliteConnectOptions, String> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() {
        return Err(format!(
            "`{url}` names no file; e.g. sqlite://data/flowpulse.db"
        ));
    }
    if let Some(dir) = std::path::Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    Ok(SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true))
}

/// Creates the PostgreSQL database `url` names if it does not exist,
/// through the server's `postgres` database.
async fn create_postgres_database(url: &str, timeout: Duration) -> Result<(), sqlx::Error> {
    use sqlx::Connection as _;
    let options = PgConnectOptions::from_str(url)?;
    let Some(database) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    // Connecting to the database itself works when it exists.
    let direct = tokio::time::timeout(timeout, sqlx::PgConnection::connect_with(&options)).await;
    match direct {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            return Ok(());
        }
        Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() == Some("3D000") => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(sqlx::Error::PoolTimedOut),
    }
    let admin = options.database("postgres");
    let mut conn = tokio::time::timeout(timeout, sqlx::PgConnection::connect_with(&admin))
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    let quoted = format!("\"{}\"", database.replace('"', "\"\""));
    let created = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    match created {
        Ok(_) => {
            tracing::info!(database, "created the database");
            Ok(())
        }
        // Created meanwhile by another instance.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(()),
        Err(e) => Err(e),
    }
}

/// The pipeline's stores, opened on first use; kept in its `Resources` so
/// that every component naming a store shares one pool.
#[derive(Clone, Default)]
pub struct Stores(Arc<Mutex<HashMap<String, Arc<Store>>>>);

impl Stores {
    /// The pipeline's stores.
    pub fn of(cx: &BuildContext) -> Stores {
        cx.resources.get_or_insert_with(Stores::default)
    }

    /// The store `name` (declared, as validation checked), opened on first
    /// use; its database is prepared in the background, retrying through
    /// outages shown in `cx.stats`.
    pub fn open(&self, cx: &BuildContext, name: &str) -> Result<Arc<Store>, StoreError> {
        let mut stores = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(store) = stores.get(name) {
            return Ok(Arc::clone(store));
        }
        let settings = cx.stores.get(name).ok_or_else(|| StoreError::Url {
            store: name.to_owned(),
            message: "is not declared".into(),
        })?;
        let store = Arc::new(Store::new(name, settings)?);
        let preparing = Arc::clone(&store);
        let component = cx.name.clone();
        let stats = Arc::clone(&cx.stats);
        let shutdown = cx.shutdown.clone();
        tokio::spawn(async move {
            preparing
                .prepare_until_ready(&component, Some(stats), &shutdown)
                .await;
        });
        stores.insert(name.to_owned(), Arc::clone(&store));
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sqlite_url_names_a_file() {
        assert!(sqlite_options("sqlite://").is_err());
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/sub/x.db", dir.path().display());
        let options = sqlite_options(&url).unwrap();
        assert_eq!(options.get_filename(), dir.path().join("sub/x.db"));
        assert!(dir.path().join("sub").is_dir());
    }
}
