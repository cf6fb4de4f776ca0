//! The control plane's store: policies and every version of them. SQLite (a file, nothing
//! to install) for one node, PostgreSQL for fleets; both run the same queries through
//! sqlx's Any driver and the same migrations (`migrations/`).
//!
//! Every change — create, update, disable, enable, delete, rollback — appends a version
//! row with its operator, reason, time and the full definition. Updates name the version
//! they change (optimistic concurrency): a stale one is refused and nothing is written.

mod diff;

use std::time::SystemTime;

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

pub use diff::{DiffEntry, diff};

use crate::config::FieldError;
use crate::policy::{PolicyConfig, PolicyStatus, validate_policy};

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
    #[error("invalid policy: {}", .0.iter().map(|e| format!("{}: {}", e.path, e.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    #[error("policy {0:?} does not exist")]
    NotFound(String),
    #[error("policy {0:?} already exists")]
    Exists(String),
    /// Optimistic concurrency: the caller changed an older version than the live one.
    #[error("policy {name:?} is at version {live}, not {expected}: reload it and retry")]
    Stale {
        name: String,
        expected: i64,
        live: i64,
    },
    #[error("policy {name:?} has no version {version}")]
    NoSuchVersion { name: String, version: i64 },
    #[error("unsupported store URL {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("store migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
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

/// What a version did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Create,
    Update,
    Disable,
    Enable,
    Delete,
    Rollback,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Disable => "disable",
            Operation::Enable => "enable",
            Operation::Delete => "delete",
            Operation::Rollback => "rollback",
        }
    }

    fn parse(text: &str) -> Operation {
        match text {
            "create" => Operation::Create,
            "disable" => Operation::Disable,
            "enable" => Operation::Enable,
            "delete" => Operation::Delete,
            "rollback" => Operation::Rollback,
            _ => Operation::Update,
        }
    }
}

/// A live policy and its version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredPolicy {
    pub version: i64,
    pub policy: PolicyConfig,
    pub updated_at: String,
}

/// One entry of a policy's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyVersion {
    pub version: i64,
    pub operation: Operation,
    pub operator: String,
    pub reason: String,
    pub at: String,
    /// The definition after this change (for a delete: the last one before it).
    pub policy: PolicyConfig,
}

/// A connected store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects to `sqlite://PATH` (created if missing) or `postgres://…`, and applies
    /// the migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        install_default_drivers();
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite://") {
            (Backend::Sqlite, format!("sqlite://{path}?mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        // SQLite has one writer: one connection keeps writers from failing with "locked".
        let connections = if backend == Backend::Sqlite { 1 } else { 8 };
        let pool = AnyPoolOptions::new()
            .max_connections(connections)
            .connect(&url)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Every live (not deleted) policy, by name.
    pub async fn list(&self) -> Result<Vec<StoredPolicy>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, definition, updated_at FROM policies WHERE deleted = 0 ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored).collect()
    }

    /// A live policy.
    pub async fn get(&self, name: &str) -> Result<StoredPolicy, StoreError> {
        let row = sqlx::query(
            "SELECT version, definition, updated_at FROM policies WHERE name = $1 AND deleted = 0",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(name.to_owned()))?;
        stored(&row)
    }

    /// Adds a new policy at version 1. A name that was deleted may be used again; its
    /// history continues.
    pub async fn create(&self, policy: &PolicyConfig, change: &Change) -> Result<i64, StoreError> {
        validate(policy)?;
        let mut tx = self.pool.begin().await?;
        let existing = sqlx::query("SELECT version, deleted FROM policies WHERE name = $1")
            .bind(policy.name.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let version = match existing {
            Some(row) if row.try_get::<i64, _>("deleted")? == 0 => {
                return Err(StoreError::Exists(policy.name.clone()));
            }
            Some(row) => row.try_get::<i64, _>("version")? + 1,
            None => 1,
        };
        let now = now();
        let definition = to_json(policy);
        sqlx::query(
            "INSERT INTO policies (name, version, deleted, definition, updated_at)
             VALUES ($1, $2, 0, $3, $4)
             ON CONFLICT (name) DO UPDATE SET version = $2, deleted = 0, definition = $3, updated_at = $4",
        )
        .bind(policy.name.as_str())
        .bind(version)
        .bind(definition.as_str())
        .bind(now.as_str())
        .execute(&mut *tx)
        .await?;
        record(
            &mut tx,
            &policy.name,
            version,
            Operation::Create,
            change,
            &now,
            &definition,
        )
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Replaces a policy's definition; `expected` is the version the caller read.
    pub async fn update(
        &self,
        expected: i64,
        policy: &PolicyConfig,
        change: &Change,
    ) -> Result<i64, StoreError> {
        validate(policy)?;
        self.write(&policy.name, expected, Operation::Update, change, |_| {
            Ok(policy.clone())
        })
        .await
    }

    /// Sets `status: disabled`: the policy stays listed and versioned but stops acting.
    pub async fn disable(
        &self,
        name: &str,
        expected: i64,
        change: &Change,
    ) -> Result<i64, StoreError> {
        self.set_status(
            name,
            expected,
            PolicyStatus::Disabled,
            Operation::Disable,
            change,
        )
        .await
    }

    /// Sets `status: active`.
    pub async fn enable(
        &self,
        name: &str,
        expected: i64,
        change: &Change,
    ) -> Result<i64, StoreError> {
        self.set_status(
            name,
            expected,
            PolicyStatus::Active,
            Operation::Enable,
            change,
        )
        .await
    }

    async fn set_status(
        &self,
        name: &str,
        expected: i64,
        status: PolicyStatus,
        operation: Operation,
        change: &Change,
    ) -> Result<i64, StoreError> {
        self.write(name, expected, operation, change, |live| {
            let mut policy = live.clone();
            policy.status = status;
            Ok(policy)
        })
        .await
    }

    /// Removes a policy from decisions; its history stays.
    pub async fn delete(
        &self,
        name: &str,
        expected: i64,
        change: &Change,
    ) -> Result<i64, StoreError> {
        self.write(name, expected, Operation::Delete, change, |live| {
            Ok(live.clone())
        })
        .await
    }

    /// Makes an earlier version's definition live again, as a new version.
    pub async fn rollback(
        &self,
        name: &str,
        to_version: i64,
        change: &Change,
    ) -> Result<i64, StoreError> {
        let earlier = self
            .history(name)
            .await?
            .into_iter()
            .find(|v| v.version == to_version)
            .ok_or_else(|| StoreError::NoSuchVersion {
                name: name.to_owned(),
                version: to_version,
            })?;
        let live = self.get(name).await?;
        self.write(name, live.version, Operation::Rollback, change, |_| {
            Ok(earlier.policy.clone())
        })
        .await
    }

    /// Every version of a policy, oldest first.
    pub async fn history(&self, name: &str) -> Result<Vec<PolicyVersion>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, operation, operator, reason, at, definition
             FROM policy_versions WHERE name = $1 ORDER BY version",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Err(StoreError::NotFound(name.to_owned()));
        }
        rows.iter()
            .map(|row| {
                Ok(PolicyVersion {
                    version: row.try_get("version")?,
                    operation: Operation::parse(&row.try_get::<String, _>("operation")?),
                    operator: row.try_get("operator")?,
                    reason: row.try_get("reason")?,
                    at: row.try_get("at")?,
                    policy: from_json(&row.try_get::<String, _>("definition")?)?,
                })
            })
            .collect()
    }

    /// One change to a live policy at version `expected`, in one transaction: the new
    /// definition from `next`, the live row, and a version row.
    async fn write(
        &self,
        name: &str,
        expected: i64,
        operation: Operation,
        change: &Change,
        next: impl FnOnce(&PolicyConfig) -> Result<PolicyConfig, StoreError>,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row =
            sqlx::query("SELECT version, definition FROM policies WHERE name = $1 AND deleted = 0")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound(name.to_owned()))?;
        let live: i64 = row.try_get("version")?;
        if live != expected {
            return Err(StoreError::Stale {
                name: name.to_owned(),
                expected,
                live,
            });
        }
        let policy = next(&from_json(&row.try_get::<String, _>("definition")?)?)?;
        if policy.name != name {
            return Err(StoreError::Invalid(vec![FieldError::new(
                "name",
                format!(
                    "cannot rename {name:?} to {:?}: create the new name instead",
                    policy.name
                ),
            )]));
        }
        let version = live + 1;
        let now = now();
        let definition = to_json(&policy);
        let deleted = i64::from(operation == Operation::Delete);
        // The version check is repeated in the UPDATE: a concurrent writer that got in
        // between makes it match no row.
        let updated = sqlx::query(
            "UPDATE policies SET version = $1, deleted = $2, definition = $3, updated_at = $4
             WHERE name = $5 AND version = $6",
        )
        .bind(version)
        .bind(deleted)
        .bind(definition.as_str())
        .bind(now.as_str())
        .bind(name)
        .bind(live)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::Stale {
                name: name.to_owned(),
                expected,
                live: live + 1,
            });
        }
        record(&mut tx, name, version, operation, change, &now, &definition).await?;
        tx.commit().await?;
        Ok(version)
    }
}

async fn record(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    name: &str,
    version: i64,
    operation: Operation,
    change: &Change,
    at: &str,
    definition: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO policy_versions (name, version, operation, operator, reason, at, definition)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(name)
    .bind(version)
    .bind(operation.as_str())
    .bind(change.operator.as_str())
    .bind(change.reason.as_str())
    .bind(at)
    .bind(definition)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn validate(policy: &PolicyConfig) -> Result<(), StoreError> {
    let errors = validate_policy(policy);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Invalid(errors))
    }
}

fn stored(row: &sqlx::any::AnyRow) -> Result<StoredPolicy, StoreError> {
    Ok(StoredPolicy {
        version: row.try_get("version")?,
        policy: from_json(&row.try_get::<String, _>("definition")?)?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn to_json(policy: &PolicyConfig) -> String {
    serde_json::to_string(policy).expect("a policy serializes")
}

fn from_json(text: &str) -> Result<PolicyConfig, StoreError> {
    serde_json::from_str(text).map_err(|e| {
        StoreError::Invalid(vec![FieldError::new(
            "",
            format!("a stored definition no longer parses: {e}"),
        )])
    })
}

fn now() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// A URL for an error message, without its password.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
