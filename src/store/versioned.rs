//! Versioned definitions: policies and secrets share one shape of storage — a live row per
//! name and an append-only version row per change.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row;

use super::faults::Fault;
use super::{Change, Contents, Store, StoreError, Touched, now};
use crate::policy::{PolicyConfig, PolicyStatus, validate_policy};
use crate::transforms::secrets::{SecretConfig, validate_secret};
use crate::vocab::FieldError;

/// What the store keeps versions of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Policy,
    Secret,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Policy => "policy",
            Kind::Secret => "secret",
        }
    }

    /// The config file section and the API collection: `policies`, `secrets`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Policy => "policies",
            Kind::Secret => "secrets",
        }
    }

    /// `{live}` and `{versions}` in a query become this kind's tables.
    fn sql(self, template: &str) -> sqlx::AssertSqlSafe<String> {
        let (live, versions) = match self {
            Kind::Policy => ("policies", "policy_versions"),
            Kind::Secret => ("secrets", "secret_versions"),
        };
        // The table names come from this closed enum, never from input.
        sqlx::AssertSqlSafe(
            template
                .replace("{live}", live)
                .replace("{versions}", versions),
        )
    }
}

/// A definition the store versions: a policy or a secret (metadata and source reference
/// only — a secret's value never reaches the store).
pub trait Definition:
    Serialize + DeserializeOwned + Clone + PartialEq + Send + Sync + Unpin + 'static
{
    const KIND: Kind;
    fn name(&self) -> &str;
    /// Checks what deserialization cannot; paths relative to the definition.
    fn validate(&self) -> Vec<FieldError>;
    /// This kind's definitions in a snapshot's contents.
    fn in_contents(contents: &mut Contents) -> &mut Vec<Held<Self>>;
    /// This kind's store.
    fn versioned(store: &Store) -> Versioned<'_, Self>;
    /// What stands in for a stored definition that cannot be used (docs/store.md): `None`
    /// leaves it out. `text` is its stored JSON, read as far as it still can be.
    fn stand_in(name: &str, text: &str) -> Option<Self>;
}

impl Definition for PolicyConfig {
    const KIND: Kind = Kind::Policy;
    fn name(&self) -> &str {
        &self.name
    }
    fn validate(&self) -> Vec<FieldError> {
        validate_policy(self)
    }
    fn in_contents(contents: &mut Contents) -> &mut Vec<Held<Self>> {
        &mut contents.policies
    }
    fn versioned(store: &Store) -> Versioned<'_, Self> {
        store.policies()
    }
    fn stand_in(name: &str, text: &str) -> Option<Self> {
        let raw: Option<serde_json::Value> = serde_json::from_str(text).ok();
        super::faults::policy_stand_in(name, raw.as_ref())
    }
}

impl Definition for SecretConfig {
    const KIND: Kind = Kind::Secret;
    fn name(&self) -> &str {
        &self.name
    }
    fn validate(&self) -> Vec<FieldError> {
        validate_secret(self)
    }
    fn in_contents(contents: &mut Contents) -> &mut Vec<Held<Self>> {
        &mut contents.secrets
    }
    fn versioned(store: &Store) -> Versioned<'_, Self> {
        store.secrets()
    }
    fn stand_in(_: &str, _: &str) -> Option<Self> {
        None
    }
}

/// A live definition and its version, parsed: what the API lists and answers. A gateway
/// holds the store's contents as [`Held`] JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stored<T> {
    pub version: i64,
    pub definition: T,
    pub updated_at: String,
}

/// A live definition as an instance holds it between compiles: its stored JSON, not its
/// parsed form. At 100,000 policies a parsed policy takes ~2 KB and its JSON a tenth of
/// that; only what changed is parsed again, to be compiled (and a whole list for the
/// playground).
pub struct Held<T> {
    pub version: i64,
    pub name: Arc<str>,
    /// Shared by every copy of the contents (the live ones, each check of a write) and by
    /// the policy compiled from it, which a recompile knows again by this identity.
    pub text: Arc<str>,
    kind: PhantomData<fn() -> T>,
}

impl<T: Definition> Held<T> {
    /// `definition` at `version`, written as JSON.
    pub fn new(version: i64, definition: &T) -> Held<T> {
        Held::of_text(version, definition.name(), &to_json(definition))
    }

    /// A row's JSON as read, already known to parse as a `T` named `name`.
    fn of_text(version: i64, name: &str, text: &str) -> Held<T> {
        Held {
            version,
            name: Arc::from(name),
            text: Arc::from(text),
            kind: PhantomData,
        }
    }

    /// The definition. Held text was parsed (or written) before it was held, so this
    /// fails only if a definition stopped reading back what it wrote.
    pub fn parse(&self) -> Result<T, String> {
        parse_row(&self.text)
    }
}

// By hand: derived, they would ask `T` for what a `PhantomData` does not need.
impl<T> Clone for Held<T> {
    fn clone(&self) -> Held<T> {
        Held {
            version: self.version,
            name: Arc::clone(&self.name),
            text: Arc::clone(&self.text),
            kind: PhantomData,
        }
    }
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Held<T>) -> bool {
        self.version == other.version && self.name == other.name && self.text == other.text
    }
}

impl<T> std::fmt::Debug for Held<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("version", &self.version)
            .field("name", &self.name)
            .field("text", &self.text)
            .finish()
    }
}

impl crate::policy::PolicyDefinition for Held<PolicyConfig> {
    fn name(&self) -> &str {
        &self.name
    }

    fn config(&self) -> Cow<'_, PolicyConfig> {
        match self.parse() {
            Ok(policy) => Cow::Owned(policy),
            Err(error) => {
                // Fails closed as a row that does not parse does.
                tracing::error!(policy = %self.name, version = self.version, %error,
                    "a held policy no longer parses; its stand-in applies");
                let stand_in = PolicyConfig::stand_in(&self.name, &self.text);
                Cow::Owned(stand_in.unwrap_or_else(|| left_out(&self.name)))
            }
        }
    }

    fn held(&self) -> Option<&Arc<str>> {
        Some(&self.text)
    }
}

/// A policy that acts on nothing: what a held allow that cannot be read back becomes, as
/// a row of it that does not parse is left out.
fn left_out(name: &str) -> PolicyConfig {
    let disabled =
        serde_json::json!({"name": name, "status": "disabled", "action": "deny", "rules": []});
    serde_json::from_value(disabled).expect("a disabled policy without rules parses")
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
    /// A new priority, written with others in one change (the console's drag to reorder).
    Reorder,
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
            Operation::Reorder => "reorder",
        }
    }

    fn parse(text: &str) -> Operation {
        match text {
            "create" => Operation::Create,
            "disable" => Operation::Disable,
            "enable" => Operation::Enable,
            "delete" => Operation::Delete,
            "rollback" => Operation::Rollback,
            "reorder" => Operation::Reorder,
            _ => Operation::Update,
        }
    }
}

/// One entry of a definition's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Version<T> {
    pub version: i64,
    pub operation: Operation,
    pub operator: String,
    pub reason: String,
    pub at: String,
    /// The definition after this change (for a delete: the last one before it).
    pub definition: T,
}

/// The policies or the secrets of a store.
#[derive(Debug, Clone, Copy)]
pub struct Versioned<'s, T> {
    store: &'s Store,
    _kind: std::marker::PhantomData<fn() -> T>,
}

impl Store {
    pub fn policies(&self) -> Versioned<'_, PolicyConfig> {
        Versioned {
            store: self,
            _kind: std::marker::PhantomData,
        }
    }

    pub fn secrets(&self) -> Versioned<'_, SecretConfig> {
        Versioned {
            store: self,
            _kind: std::marker::PhantomData,
        }
    }
}

impl<T: Definition> Versioned<'_, T> {
    fn not_found(name: &str) -> StoreError {
        StoreError::NotFound {
            kind: T::KIND.as_str(),
            name: name.to_owned(),
        }
    }

    /// Every live (not deleted) definition that parses, by name.
    pub async fn list(&self) -> Result<Vec<Stored<T>>, StoreError> {
        Ok(self.rows().await?.stored)
    }

    /// Every live definition, by name, and the rows that do not parse.
    pub async fn rows(&self) -> Result<Rows<T>, StoreError> {
        let mut conn = self.store.pool().acquire().await?;
        live_rows(&mut conn).await
    }

    /// The live version of a definition, whether or not it parses.
    pub async fn live_version(&self, name: &str) -> Result<i64, StoreError> {
        let row =
            sqlx::query(T::KIND.sql("SELECT version FROM {live} WHERE name = $1 AND deleted = 0"))
                .bind(name)
                .fetch_optional(&self.store.pool())
                .await?
                .ok_or_else(|| Self::not_found(name))?;
        Ok(row.try_get("version")?)
    }

    /// A live definition.
    pub async fn get(&self, name: &str) -> Result<Stored<T>, StoreError> {
        let row = sqlx::query(T::KIND.sql(
            "SELECT version, definition, updated_at FROM {live} WHERE name = $1 AND deleted = 0",
        ))
        .bind(name)
        .fetch_optional(&self.store.pool())
        .await?
        .ok_or_else(|| Self::not_found(name))?;
        stored(&row)
    }

    /// Adds a new definition. A name that was deleted may be used again; its history
    /// continues.
    pub async fn create(&self, definition: &T, change: &Change) -> Result<i64, StoreError> {
        let mut tx = self.store.pool().begin().await?;
        let version = self.create_in(&mut tx, definition, change).await?;
        self.commit(tx, &[definition.name()]).await?;
        Ok(version)
    }

    /// [`Self::create`] within `tx`, without bumping the revision: the live row and its
    /// version row.
    pub(super) async fn create_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        definition: &T,
        change: &Change,
    ) -> Result<i64, StoreError> {
        check(definition)?;
        let name = definition.name();
        let existing =
            sqlx::query(T::KIND.sql("SELECT version, deleted FROM {live} WHERE name = $1"))
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?;
        let version = match existing {
            Some(row) if row.try_get::<i64, _>("deleted")? == 0 => {
                return Err(StoreError::Exists {
                    kind: T::KIND.as_str(),
                    name: name.to_owned(),
                });
            }
            Some(row) => row.try_get::<i64, _>("version")? + 1,
            None => 1,
        };
        let now = now();
        let text = to_json(definition);
        sqlx::query(T::KIND.sql(
            "INSERT INTO {live} (name, version, deleted, definition, updated_at)
             VALUES ($1, $2, 0, $3, $4)
             ON CONFLICT (name) DO UPDATE SET version = $2, deleted = 0, definition = $3, updated_at = $4",
        ))
        .bind(name)
        .bind(version)
        .bind(text.as_str())
        .bind(now.as_str())
        .execute(&mut **tx)
        .await?;
        let written = Written {
            name,
            version,
            operation: Operation::Create,
            at: &now,
            definition: &text,
        };
        self.record(tx, &written, change).await?;
        Ok(version)
    }

    /// Replaces a definition; `expected` is the version the caller read.
    pub async fn update(
        &self,
        expected: i64,
        definition: &T,
        change: &Change,
    ) -> Result<i64, StoreError> {
        check(definition)?;
        self.write(
            definition.name(),
            expected,
            Operation::Update,
            change,
            |_| Ok(Some(definition.clone())),
        )
        .await
    }

    /// Removes a definition from decisions; its history stays. A definition that no
    /// longer parses can be deleted too.
    pub async fn delete(
        &self,
        name: &str,
        expected: i64,
        change: &Change,
    ) -> Result<i64, StoreError> {
        self.write(name, expected, Operation::Delete, change, |_| Ok(None))
            .await
    }

    /// Makes an earlier version's definition live again, as a new version. `expected` is
    /// the live version the caller read, when it names one.
    pub async fn rollback(
        &self,
        name: &str,
        to_version: i64,
        expected: Option<i64>,
        change: &Change,
    ) -> Result<i64, StoreError> {
        let earlier = self.version(name, to_version).await?;
        let live = match expected {
            Some(version) => version,
            None => self.get(name).await?.version,
        };
        self.write(name, live, Operation::Rollback, change, |_| {
            Ok(Some(earlier.definition.clone()))
        })
        .await
    }

    /// One version of a definition.
    pub async fn version(&self, name: &str, version: i64) -> Result<Version<T>, StoreError> {
        self.history(name)
            .await?
            .into_iter()
            .find(|v| v.version == version)
            .ok_or_else(|| StoreError::NoSuchVersion {
                kind: T::KIND.as_str(),
                name: name.to_owned(),
                version,
            })
    }

    /// Every version of a definition, oldest first.
    pub async fn history(&self, name: &str) -> Result<Vec<Version<T>>, StoreError> {
        let rows = sqlx::query(T::KIND.sql(
            "SELECT version, operation, operator, reason, at, definition
             FROM {versions} WHERE name = $1 ORDER BY version",
        ))
        .bind(name)
        .fetch_all(&self.store.pool())
        .await?;
        if rows.is_empty() {
            return Err(Self::not_found(name));
        }
        rows.iter()
            .map(|row| {
                Ok(Version {
                    version: row.try_get("version")?,
                    operation: Operation::parse(&row.try_get::<String, _>("operation")?),
                    operator: row.try_get("operator")?,
                    reason: row.try_get("reason")?,
                    at: row.try_get("at")?,
                    definition: from_json(&row.try_get::<String, _>("definition")?)?,
                })
            })
            .collect()
    }

    /// One change to a live definition at version `expected`, in one transaction: the new
    /// definition from `next` (given the live row's text; `None` keeps that text), the
    /// live row, a version row and the store revision. The live text is parsed only by a
    /// `next` that needs it, so a row that no longer parses can still be replaced.
    async fn write(
        &self,
        name: &str,
        expected: i64,
        operation: Operation,
        change: &Change,
        next: impl FnOnce(&str) -> Result<Option<T>, StoreError>,
    ) -> Result<i64, StoreError> {
        let mut tx = self.store.pool().begin().await?;
        let version = self
            .write_in(&mut tx, name, expected, operation, change, next)
            .await?;
        self.commit(tx, &[name]).await?;
        Ok(version)
    }

    /// [`Self::write`] within `tx`, without bumping the revision: the live row and its
    /// version row.
    pub(super) async fn write_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        name: &str,
        expected: i64,
        operation: Operation,
        change: &Change,
        next: impl FnOnce(&str) -> Result<Option<T>, StoreError>,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            T::KIND.sql("SELECT version, definition FROM {live} WHERE name = $1 AND deleted = 0"),
        )
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| Self::not_found(name))?;
        let live: i64 = row.try_get("version")?;
        let stale = |live| StoreError::Stale {
            kind: T::KIND.as_str(),
            name: name.to_owned(),
            expected,
            live,
        };
        if live != expected {
            return Err(stale(live));
        }
        let live_text: String = row.try_get("definition")?;
        let definition = next(&live_text)?;
        if let Some(definition) = &definition
            && definition.name() != name
        {
            return Err(StoreError::Invalid(vec![FieldError::new(
                "name",
                format!(
                    "cannot rename {name:?} to {:?}: create the new name instead",
                    definition.name()
                ),
            )]));
        }
        let version = live + 1;
        let now = now();
        let text = definition.as_ref().map_or(live_text, to_json);
        let deleted = i64::from(operation == Operation::Delete);
        // The version check is repeated in the UPDATE: a concurrent writer that got in
        // between makes it match no row.
        let updated = sqlx::query(T::KIND.sql(
            "UPDATE {live} SET version = $1, deleted = $2, definition = $3, updated_at = $4
             WHERE name = $5 AND version = $6",
        ))
        .bind(version)
        .bind(deleted)
        .bind(text.as_str())
        .bind(now.as_str())
        .bind(name)
        .bind(live)
        .execute(&mut **tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(stale(live + 1));
        }
        let written = Written {
            name,
            version,
            operation,
            at: &now,
            definition: &text,
        };
        self.record(tx, &written, change).await?;
        Ok(version)
    }

    /// Bumps the revision, stamps the live rows of `names` with it (how a reader finds
    /// what changed since the revision it holds), announces the change (naming the first),
    /// commits. The stamp follows the bump: the bump locks the revision row until commit,
    /// so no other change can commit a lower stamp after this one.
    pub(super) async fn commit(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Any>,
        names: &[&str],
    ) -> Result<(), StoreError> {
        let Some(first) = names.first() else {
            return Ok(());
        };
        let touched = Touched {
            kind: T::KIND.as_str(),
            name: first,
        };
        self.store.touch(&mut tx, &touched).await?;
        for name in names {
            sqlx::query(T::KIND.sql(
                "UPDATE {live} SET revision = (SELECT revision FROM store_revision WHERE id = 1)
                 WHERE name = $1",
            ))
            .bind(*name)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Appends the version row of `written`.
    async fn record(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        written: &Written<'_>,
        change: &Change,
    ) -> Result<(), StoreError> {
        sqlx::query(T::KIND.sql(
            "INSERT INTO {versions} (name, version, operation, operator, reason, at, definition)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        ))
        .bind(written.name)
        .bind(written.version)
        .bind(written.operation.as_str())
        .bind(change.operator.as_str())
        .bind(change.reason.as_str())
        .bind(written.at)
        .bind(written.definition)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// A version row about to be written.
struct Written<'a> {
    name: &'a str,
    version: i64,
    operation: Operation,
    at: &'a str,
    definition: &'a str,
}

impl Versioned<'_, PolicyConfig> {
    /// Sets `status: disabled`: the policy stays listed and versioned but stops acting.
    pub async fn disable(
        &self,
        name: &str,
        expected: i64,
        change: &Change,
    ) -> Result<i64, StoreError> {
        self.set_status(name, expected, PolicyStatus::Disabled, change)
            .await
    }

    /// Sets `status: active`.
    pub async fn enable(
        &self,
        name: &str,
        expected: i64,
        change: &Change,
    ) -> Result<i64, StoreError> {
        self.set_status(name, expected, PolicyStatus::Active, change)
            .await
    }

    /// New priorities for several policies, in one transaction and one store revision:
    /// every policy at the version the caller read (`Stale` otherwise, and nothing is
    /// written). Each gets a version (`reorder`) with the same reason.
    pub async fn reprioritize(
        &self,
        priorities: &[(String, i64, i32)],
        change: &Change,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let mut tx = self.store.pool().begin().await?;
        let mut written = Vec::new();
        for (name, expected, priority) in priorities {
            let version = self
                .write_in(
                    &mut tx,
                    name,
                    *expected,
                    Operation::Reorder,
                    change,
                    |live| {
                        let mut policy: PolicyConfig = from_json(live)?;
                        policy.priority = *priority;
                        Ok(Some(policy))
                    },
                )
                .await?;
            written.push((name.clone(), version));
        }
        let names: Vec<&str> = written.iter().map(|(name, _)| name.as_str()).collect();
        self.commit(tx, &names).await?;
        Ok(written)
    }

    async fn set_status(
        &self,
        name: &str,
        expected: i64,
        status: PolicyStatus,
        change: &Change,
    ) -> Result<i64, StoreError> {
        let operation = match status {
            PolicyStatus::Disabled => Operation::Disable,
            _ => Operation::Enable,
        };
        self.write(name, expected, operation, change, |live| {
            let mut policy: PolicyConfig = from_json(live)?;
            policy.status = status;
            Ok(Some(policy))
        })
        .await
    }
}

/// The live definitions of a kind: those that parse, and a fault for each that does not
/// (with its stand-in among `stored`, when the kind has one).
#[derive(Debug, Clone)]
pub struct Rows<T> {
    pub stored: Vec<Stored<T>>,
    pub faults: Vec<Fault>,
}

/// Every live definition of a kind, by name, parsed (the API's lists). A row that does
/// not parse costs only itself.
pub(super) async fn live_rows<T: Definition>(
    conn: &mut sqlx::AnyConnection,
) -> Result<Rows<T>, StoreError> {
    let read = read_rows::<T, _>(conn, None, |row| Stored {
        version: row.version,
        definition: row.definition,
        updated_at: row.updated_at,
    })
    .await?;
    let mut parsed = Rows {
        stored: Vec::with_capacity(read.len()),
        faults: Vec::new(),
    };
    for row in read {
        parsed.faults.extend(row.fault);
        parsed.stored.extend(row.kept);
    }
    Ok(parsed)
}

/// Every live definition of a kind as a gateway holds it (its JSON), by name, and a fault
/// for each row that does not parse (its stand-in held in its place, when the kind has
/// one); with `since`, only the rows changed after that store revision, deleted ones
/// included.
pub(super) async fn held_rows<T: Definition>(
    conn: &mut sqlx::AnyConnection,
    since: Option<i64>,
) -> Result<Vec<ChangedRow<T>>, StoreError> {
    let read = read_rows::<T, _>(conn, since, |row| match row.stand_in {
        false => Held::of_text(row.version, row.definition.name(), row.text),
        true => Held::new(row.version, &row.definition),
    })
    .await?;
    Ok(read
        .into_iter()
        .map(|row| ChangedRow {
            name: row.name,
            stored: row.kept,
            fault: row.fault,
        })
        .collect())
}

/// How many live rows of a kind there are and the sum of their versions. Every write
/// through Portcullis adds one to the version of a row it changes, so contents brought up
/// to date with what changed that count otherwise than the store missed a write that
/// stamped nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub rows: i64,
    pub versions: i64,
}

impl Tally {
    /// The tally of contents: each row is either held (as read, or its stand-in) or a
    /// fault that left it out.
    pub fn of<T: Definition>(stored: &[Held<T>], faults: &[Fault]) -> Tally {
        let left_out = (faults.iter())
            .filter(|f| f.kind == T::KIND.as_str() && f.outcome == Fault::outcome(false));
        let versions =
            (stored.iter().map(|s| s.version)).chain(left_out.clone().filter_map(|f| f.version));
        Tally {
            rows: (stored.len() + left_out.count()) as i64,
            versions: versions.sum(),
        }
    }
}

/// The [`Tally`] of a kind's live rows in the store.
pub(super) async fn tally<T: Definition>(
    conn: &mut sqlx::AnyConnection,
) -> Result<Tally, StoreError> {
    let row = sqlx::query(T::KIND.sql(
        "SELECT COUNT(*) AS live_rows, CAST(COALESCE(SUM(version), 0) AS BIGINT) AS versions
         FROM {live} WHERE deleted = 0",
    ))
    .fetch_one(conn)
    .await?;
    Ok(Tally {
        rows: row.try_get("live_rows")?,
        versions: row.try_get("versions")?,
    })
}

/// One live row of a kind as read: its definition as a gateway holds it (or its
/// stand-in), a fault when it does not parse, neither when it was deleted.
#[derive(Debug, Clone)]
pub struct ChangedRow<T> {
    pub name: String,
    pub stored: Option<Held<T>>,
    pub fault: Option<Fault>,
}

/// A live row that parsed, or the stand-in of one that did not.
struct Parsed<'r, T> {
    version: i64,
    updated_at: String,
    /// The row's JSON as stored.
    text: &'r str,
    definition: T,
    stand_in: bool,
}

/// A row as [`read_rows`] keeps it.
struct Read<K> {
    name: String,
    kept: Option<K>,
    fault: Option<Fault>,
}

/// The live rows of a kind, in byte order of their names (the decision order of ties,
/// the same on every backend and collation): all that are not deleted, or with `since`
/// every row changed after that store revision, deleted ones included. `keep` makes of
/// each what the caller holds.
async fn read_rows<T: Definition, K>(
    conn: &mut sqlx::AnyConnection,
    since: Option<i64>,
    keep: impl Fn(Parsed<'_, T>) -> K,
) -> Result<Vec<Read<K>>, StoreError> {
    let rows = match since {
        None => sqlx::query(T::KIND.sql(
            "SELECT name, version, deleted, definition, updated_at FROM {live} WHERE deleted = 0",
        ))
        .fetch_all(conn)
        .await?,
        Some(since) => sqlx::query(T::KIND.sql(
            "SELECT name, version, deleted, definition, updated_at FROM {live} WHERE revision > $1",
        ))
        .bind(since)
        .fetch_all(conn)
        .await?,
    };
    // Parsing 100,000 definitions takes a tenth of a second or more: not on a thread that
    // also decides requests (a whole read runs at every resync that finds the store moved).
    let mut read = off_the_request_threads(rows.len(), || parse_rows(&rows, keep))?;
    read.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok(read)
}

/// Runs `work` (CPU-bound, `size` items) where it holds up no request: for many items on
/// a multi-threaded runtime, its worker first hands its other tasks to the rest.
fn off_the_request_threads<R>(size: usize, work: impl FnOnce() -> R) -> R {
    const FEW: usize = 1000;
    let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
    match flavor {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) if size > FEW => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// [`read_rows`]' rows parsed, in the order read.
fn parse_rows<T: Definition, K>(
    rows: &[sqlx::any::AnyRow],
    keep: impl Fn(Parsed<'_, T>) -> K,
) -> Result<Vec<Read<K>>, StoreError> {
    let mut read = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.try_get("name")?;
        if row.try_get::<i64, _>("deleted")? != 0 {
            read.push(Read {
                name,
                kept: None,
                fault: None,
            });
            continue;
        }
        let version: i64 = row.try_get("version")?;
        let updated_at: String = row.try_get("updated_at")?;
        let text: String = row.try_get("definition")?;
        let error = match parse_row::<T>(&text) {
            Ok(definition) if definition.name() == name => {
                read.push(Read {
                    name,
                    kept: Some(keep(Parsed {
                        version,
                        updated_at,
                        text: &text,
                        definition,
                        stand_in: false,
                    })),
                    fault: None,
                });
                continue;
            }
            Ok(definition) => format!(
                "the stored definition is named {:?}, its row {name:?}",
                definition.name()
            ),
            Err(e) => e,
        };
        let stand_in = T::stand_in(&name, &text);
        let fault = Fault {
            kind: T::KIND.as_str(),
            name: name.clone(),
            version: Some(version),
            error,
            outcome: Fault::outcome(stand_in.is_some()),
        };
        read.push(Read {
            name,
            kept: stand_in.map(|definition| {
                keep(Parsed {
                    version,
                    updated_at,
                    text: &text,
                    definition,
                    stand_in: true,
                })
            }),
            fault: Some(fault),
        });
    }
    Ok(read)
}

fn check<T: Definition>(definition: &T) -> Result<(), StoreError> {
    let errors = definition.validate();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Invalid(errors))
    }
}

fn stored<T: Definition>(row: &sqlx::any::AnyRow) -> Result<Stored<T>, StoreError> {
    Ok(Stored {
        version: row.try_get("version")?,
        definition: from_json(&row.try_get::<String, _>("definition")?)?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A stored row's definition, or what is wrong with it and where (`rules[0].methods[1]:
/// …`).
fn parse_row<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    // The path-tracking parse is slower: it only places the error of a row that fails.
    if let Ok(definition) = serde_json::from_str(text) {
        return Ok(definition);
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        match path.as_str() {
            "." | "" => e.inner().to_string(),
            _ => format!("{path}: {}", e.inner()),
        }
    })
}

fn to_json<T: Serialize>(definition: &T) -> String {
    serde_json::to_string(definition).expect("a definition serializes")
}

pub(super) fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| {
        StoreError::Invalid(vec![FieldError::new(
            "",
            format!("a stored definition no longer parses: {e}"),
        )])
    })
}
