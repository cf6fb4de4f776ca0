//! The control plane's store: policies, secrets (metadata and source references only),
//! enrollment tokens (hashed), every version of them, and audit events. SQLite (a file,
//! nothing to install) for one node, PostgreSQL for fleets; both run the same queries
//! through sqlx's Any driver and the same migrations (`migrations/`).
//!
//! Every change — create, update, disable, enable, delete, rollback — appends a version
//! row with its operator, reason, time and the full definition, and bumps the store
//! revision in the same transaction. Updates name the version they change (optimistic
//! concurrency): a stale one is refused and nothing is written. On PostgreSQL each
//! committed change is also announced with `NOTIFY` ([`CHANNEL`]), which is how every
//! instance hears of it within milliseconds ([`changes`]).

pub mod apply;
pub mod approvals;
pub mod audit;
pub mod changes;
mod diff;
pub mod faults;
pub mod tokens;
mod versioned;

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

pub use crate::vocab::redact_url;
pub use diff::{DiffEntry, diff};
pub use faults::Fault;
pub use tokens::{EnrollmentToken, MintedToken};
pub use versioned::{Definition, Kind, Operation, Rows, Stored, Version, Versioned};

use crate::policy::PolicyConfig;
use crate::transforms::secrets::SecretConfig;
use crate::vocab::FieldError;

/// The PostgreSQL channel every committed change is announced on.
pub const CHANNEL: &str = "portcullis_changes";

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Why a store operation did nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The definition is invalid; each error has a field path.
    #[error("invalid definition: {}", .0.iter().map(|e| if e.path.is_empty() { e.message.clone() } else { format!("{}: {}", e.path, e.message) }).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    #[error("{kind} {name:?} does not exist")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name:?} already exists")]
    Exists { kind: &'static str, name: String },
    /// Optimistic concurrency: the caller changed an older version than the live one.
    #[error("{kind} {name:?} is at version {live}, not {expected}: reload it and retry")]
    Stale {
        kind: &'static str,
        name: String,
        expected: i64,
        live: i64,
    },
    #[error("{kind} {name:?} has no version {version}")]
    NoSuchVersion {
        kind: &'static str,
        name: String,
        version: i64,
    },
    #[error("unsupported store URL {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("store migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Whether the database could not be reached or failed, as opposed to a refused change.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Database(_) | StoreError::Migrate(_))
    }
}

/// Who made a change and why; recorded with the version.
#[derive(Debug, Clone)]
pub struct Change {
    pub operator: String,
    pub reason: String,
}

impl Change {
    pub fn by(operator: &str, reason: &str) -> Change {
        Change {
            operator: operator.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// Everything a gateway decides with, read at one revision.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    pub revision: i64,
    pub policies: Vec<Stored<PolicyConfig>>,
    pub secrets: Vec<Stored<SecretConfig>>,
    /// Tokens not revoked.
    pub tokens: Vec<EnrollmentToken>,
    /// Stored objects this gateway cannot use, each left out or standing in for itself
    /// ([`faults`]); the rest apply as usual.
    pub faults: Vec<Fault>,
}

/// What a change touched, announced to listening instances.
#[derive(Debug, Serialize)]
pub(crate) struct Touched<'a> {
    pub kind: &'static str,
    pub name: &'a str,
}

/// A connected store.
#[derive(Debug, Clone)]
pub struct Store {
    /// Replaced whole by [`Store::renew`] when its connections went silent.
    pools: Arc<ArcSwap<AnyPool>>,
    backend: Backend,
    /// The URL as given (with its password): [`changes`] opens its own connection.
    url: String,
    /// The URL the pool connects to (for SQLite, with its open mode).
    connect_url: String,
}

impl Store {
    /// Connects to `sqlite://PATH` (created if missing) or `postgres://…`, and applies
    /// the migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        install_default_drivers();
        let backend = Store::backend_of(url)?;
        let connect_url = match backend {
            Backend::Sqlite => {
                let path = url.trim_start_matches("sqlite://");
                let path = path.split('?').next().unwrap_or(path);
                // An embedded store is created on first use, directory included.
                if let Some(parent) = std::path::Path::new(path).parent()
                    && !parent.as_os_str().is_empty()
                {
                    let _ = std::fs::create_dir_all(parent);
                }
                match url.contains('?') {
                    true if url.contains("mode=") => url.to_owned(),
                    true => format!("{url}&mode=rwc"),
                    false => format!("{url}?mode=rwc"),
                }
            }
            Backend::Postgres => url.to_owned(),
        };
        let pool = Store::pool_options(backend).connect(&connect_url).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store {
            pools: Arc::new(ArcSwap::from_pointee(pool)),
            backend,
            url: url.to_owned(),
            connect_url,
        })
    }

    fn pool_options(backend: Backend) -> AnyPoolOptions {
        // SQLite has one writer: one connection keeps writers from failing with "locked".
        let connections = if backend == Backend::Sqlite { 1 } else { 8 };
        AnyPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
    }

    /// The connection pool in use.
    fn pool(&self) -> AnyPool {
        AnyPool::clone(&self.pools.load())
    }

    /// Replaces the connection pool with a fresh one that connects on first use; the old
    /// one is closed in the background. For connections that went silent (a NAT or a
    /// failover dropped their flows): nothing reports them, and each would cost a caller
    /// its acquire timeout before being thrown away. A file (SQLite) keeps its pool.
    pub fn renew(&self) {
        if self.backend == Backend::Sqlite {
            return;
        }
        let fresh = match Store::pool_options(self.backend).connect_lazy(&self.connect_url) {
            Ok(pool) => pool,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the store's connection pool");
                return;
            }
        };
        let old = self.pools.swap(Arc::new(fresh));
        tokio::spawn(async move {
            // A connection stuck in a silent query would hold `close` forever.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), old.close()).await;
        });
    }

    /// Which backend a URL names, without connecting.
    pub fn backend_of(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite://") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl(redact_url(url)))
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL without its password, for logs.
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }

    /// The store revision: bumped by every change to policies, secrets or tokens.
    pub async fn revision(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT revision FROM store_revision WHERE id = 1")
            .fetch_one(&self.pool())
            .await?;
        Ok(row.try_get("revision")?)
    }

    /// Every live policy and secret and every unrevoked token, read in one transaction so
    /// they belong to one revision.
    pub async fn contents(&self) -> Result<Contents, StoreError> {
        let mut tx = self.pool().begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        let revision: i64 = sqlx::query("SELECT revision FROM store_revision WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?
            .try_get("revision")?;
        let policies = versioned::live_rows(&mut tx).await?;
        let secrets = versioned::live_rows(&mut tx).await?;
        let (tokens, token_faults) = tokens::active_rows(&mut tx).await?;
        tx.commit().await?;
        let mut faults = policies.faults;
        faults.extend(secrets.faults);
        faults.extend(token_faults);
        Ok(Contents {
            revision,
            policies: policies.stored,
            secrets: secrets.stored,
            tokens,
            faults,
        })
    }

    /// Bumps the revision and, on PostgreSQL, announces the change (delivered at commit).
    pub(crate) async fn touch(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        touched: &Touched<'_>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE store_revision SET revision = revision + 1 WHERE id = 1")
            .execute(&mut **tx)
            .await?;
        if self.backend == Backend::Postgres {
            let payload = serde_json::to_string(touched).unwrap_or_default();
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(payload)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

pub(crate) fn now() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}
