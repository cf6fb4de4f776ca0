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
pub use versioned::{
    ChangedRow, Definition, Held, Kind, Operation, Rows, Stored, Tally, Version, Versioned,
};

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
    /// Each in byte order of names.
    pub policies: Vec<Held<PolicyConfig>>,
    pub secrets: Vec<Held<SecretConfig>>,
    /// Tokens not revoked.
    pub tokens: Vec<EnrollmentToken>,
    /// Stored objects this gateway cannot use, each left out or standing in for itself
    /// ([`faults`]); the rest apply as usual.
    pub faults: Vec<Fault>,
}

/// What changed in a store after one revision, read in one transaction at `revision`:
/// every policy and secret row written since (deleted ones included), and the tokens in
/// full (few, and a revocation leaves no row to stamp).
#[derive(Debug, Clone)]
pub struct Changes {
    pub since: i64,
    pub revision: i64,
    pub policies: Vec<ChangedRow<PolicyConfig>>,
    pub secrets: Vec<ChangedRow<SecretConfig>>,
    pub tokens: Vec<EnrollmentToken>,
    pub token_faults: Vec<Fault>,
    /// The store's policy and secret rows at `revision`, to check the contents against.
    pub tallies: [Tally; 2],
}

impl Contents {
    /// These contents moved to the revision `changes` were read at. Contents at any
    /// revision from `changes.since` up come out the same: each changed row replaces what
    /// is held under its name, as it stood at `changes.revision`. Whether they then tally
    /// with the store; when not, a write stamped nothing and only a whole read is right.
    #[must_use]
    pub fn apply(&mut self, changes: Changes) -> bool {
        merge(&mut self.policies, &mut self.faults, changes.policies);
        merge(&mut self.secrets, &mut self.faults, changes.secrets);
        self.tokens = changes.tokens;
        self.faults.retain(|f| f.kind != "token");
        self.faults.extend(changes.token_faults);
        self.revision = changes.revision;
        self.tallies() == changes.tallies
    }

    /// The [`Tally`] of the policy rows and of the secret rows these contents stand for.
    pub fn tallies(&self) -> [Tally; 2] {
        [
            Tally::of(&self.policies, &self.faults),
            Tally::of(&self.secrets, &self.faults),
        ]
    }

    /// Takes from `held` (contents read earlier) each definition that is the same here,
    /// name, version and JSON: a whole read then shares what did not change, in memory and
    /// in the compile that knows a held definition by identity. Whether these contents
    /// hold nothing `held` does not (the revision aside).
    pub fn share_unchanged(&mut self, held: &Contents) -> bool {
        let policies = share(&mut self.policies, &held.policies);
        let secrets = share(&mut self.secrets, &held.secrets);
        policies && secrets && self.tokens == held.tokens && self.faults == held.faults
    }
}

/// [`Contents::share_unchanged`] for one kind; both lists in byte order of names. Whether
/// all of `fresh` was shared and nothing more is held.
fn share<T>(fresh: &mut [Held<T>], held: &[Held<T>]) -> bool {
    let mut all = fresh.len() == held.len();
    let mut held = held.iter().peekable();
    for stored in fresh {
        while held.next_if(|h| h.name < stored.name).is_some() {}
        match held.peek() {
            Some(h) if *h == stored => *stored = Held::clone(h),
            _ => all = false,
        }
    }
    all
}

/// Replaces what `stored` and `faults` hold under each changed row's name with the row
/// as read, keeping `stored` in byte order of names.
fn merge<T: Definition>(
    stored: &mut Vec<Held<T>>,
    faults: &mut Vec<Fault>,
    changed: Vec<ChangedRow<T>>,
) {
    let kind = T::KIND.as_str();
    // A change is a row or a few: each put in its place by a binary search.
    if changed.len() <= 64 {
        for row in changed {
            faults.retain(|f| f.kind != kind || f.name != row.name);
            faults.extend(row.fault);
            let at = stored.binary_search_by(|s| (*s.name).cmp(&row.name));
            match (at, row.stored) {
                (Ok(i), Some(definition)) => stored[i] = definition,
                (Ok(i), None) => {
                    stored.remove(i);
                }
                (Err(i), Some(definition)) => stored.insert(i, definition),
                (Err(_), None) => {}
            }
        }
        return;
    }
    let names: foldhash::HashSet<&str> = changed.iter().map(|c| c.name.as_str()).collect();
    faults.retain(|f| f.kind != kind || !names.contains(f.name.as_str()));
    stored.retain(|s| !names.contains(&*s.name));
    let mut added = Vec::new();
    for row in changed {
        faults.extend(row.fault);
        added.extend(row.stored);
    }
    if added.is_empty() {
        return;
    }
    stored.extend(added);
    // Mostly sorted already: the stable sort merges the appended run in linear time.
    stored.sort_by(|a, b| a.name.cmp(&b.name));
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

    /// A transaction whose reads all see one revision of the store, and that revision.
    async fn read_at_revision(
        &self,
    ) -> Result<(sqlx::Transaction<'static, sqlx::Any>, i64), StoreError> {
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
        Ok((tx, revision))
    }

    /// Every live policy and secret and every unrevoked token, read in one transaction so
    /// they belong to one revision.
    pub async fn contents(&self) -> Result<Contents, StoreError> {
        let (mut tx, revision) = self.read_at_revision().await?;
        let policies = versioned::held_rows(&mut tx, None).await?;
        let secrets = versioned::held_rows(&mut tx, None).await?;
        let (tokens, token_faults) = tokens::active_rows(&mut tx).await?;
        tx.commit().await?;
        let mut contents = Contents {
            revision,
            tokens,
            ..Contents::default()
        };
        for row in policies {
            contents.faults.extend(row.fault);
            contents.policies.extend(row.stored);
        }
        for row in secrets {
            contents.faults.extend(row.fault);
            contents.secrets.extend(row.stored);
        }
        contents.faults.extend(token_faults);
        Ok(contents)
    }

    /// What changed after revision `since`, read in one transaction. A `revision` below
    /// `since` means the store went back (restored from a backup): read it in full.
    pub async fn changes_since(&self, since: i64) -> Result<Changes, StoreError> {
        let (mut tx, revision) = self.read_at_revision().await?;
        let policies = versioned::held_rows(&mut tx, Some(since)).await?;
        let secrets = versioned::held_rows(&mut tx, Some(since)).await?;
        let (tokens, token_faults) = tokens::active_rows(&mut tx).await?;
        let tallies = [
            versioned::tally::<PolicyConfig>(&mut tx).await?,
            versioned::tally::<SecretConfig>(&mut tx).await?,
        ];
        tx.commit().await?;
        Ok(Changes {
            since,
            revision,
            policies,
            secrets,
            tokens,
            token_faults,
            tallies,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn policy(name: &str, version: i64, path: &str) -> Held<PolicyConfig> {
        let definition: PolicyConfig = serde_json::from_value(serde_json::json!({
            "name": name, "action": "allow", "rules": [{"host": "example.com", "paths": [path]}],
        }))
        .unwrap();
        Held::new(version, &definition)
    }

    fn holding(revision: i64, policies: &[(&str, i64, &str)]) -> Contents {
        Contents {
            revision,
            policies: (policies.iter())
                .map(|(name, version, path)| policy(name, *version, path))
                .collect(),
            ..Contents::default()
        }
    }

    fn row(
        name: &str,
        stored: Option<Held<PolicyConfig>>,
        fault: bool,
    ) -> ChangedRow<PolicyConfig> {
        ChangedRow {
            name: name.into(),
            fault: fault.then(|| Fault {
                kind: "policy",
                name: name.into(),
                version: Some(9),
                error: "rules[0]: broken".into(),
                outcome: Fault::outcome(stored.is_some()),
            }),
            stored,
        }
    }

    /// Changes to policies; the store then holds `rows` live policy rows whose versions
    /// add up to `versions`.
    fn changes(
        since: i64,
        revision: i64,
        policies: Vec<ChangedRow<PolicyConfig>>,
        (rows, versions): (i64, i64),
    ) -> Changes {
        Changes {
            since,
            revision,
            policies,
            secrets: Vec::new(),
            tokens: Vec::new(),
            token_faults: Vec::new(),
            tallies: [Tally { rows, versions }, Tally::default()],
        }
    }

    fn names(contents: &Contents) -> Vec<(&str, i64)> {
        (contents.policies.iter())
            .map(|p| (&*p.name, p.version))
            .collect()
    }

    #[test]
    fn changed_rows_replace_add_and_remove_by_name_in_byte_order() {
        let mut contents = holding(10, &[("a", 1, "/a"), ("b", 1, "/b"), ("c", 3, "/c")]);
        let unchanged = Arc::clone(&contents.policies[0].text);
        let changed = changes(
            10,
            13,
            vec![
                // Updated, deleted, created between existing names and after them; `B`
                // sorts before `a` by bytes whatever a database's collation says.
                row("b", Some(policy("b", 2, "/b2")), false),
                row("c", None, false),
                row("B", Some(policy("B", 1, "/B")), false),
                row("ab", Some(policy("ab", 1, "/ab")), false),
                row("z", Some(policy("z", 1, "/z")), false),
            ],
            (5, 6),
        );
        // A store that holds one more write than these rows say: a write stamped nothing.
        let mut untallied = changed.clone();
        untallied.tallies[0].versions += 1;
        assert!(!contents.clone().apply(untallied));
        assert!(contents.apply(changed));
        assert_eq!(contents.revision, 13);
        assert_eq!(
            names(&contents),
            [("B", 1), ("a", 1), ("ab", 1), ("b", 2), ("z", 1)]
        );
        // What did not change is the same definition, not a copy.
        assert!(Arc::ptr_eq(&contents.policies[1].text, &unchanged));
        assert_eq!(contents.policies[3], policy("b", 2, "/b2"));
    }

    #[test]
    fn a_row_that_breaks_brings_its_fault_and_one_that_is_fixed_takes_it_away() {
        let mut contents = holding(1, &[("a", 1, "/a"), ("b", 1, "/b")]);
        // `a` no longer parses: its stand-in and a fault; `b` is left out with its fault.
        assert!(contents.apply(changes(
            1,
            3,
            vec![
                row("a", Some(policy("a", 2, "/stand-in")), true),
                row("b", None, true),
            ],
            // `a` held as its stand-in, `b` only as its fault (at version 9).
            (2, 11),
        )));
        assert_eq!(names(&contents), [("a", 2)]);
        let faulty: Vec<&str> = contents.faults.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(faulty, ["a", "b"]);
        // Fixed: the faults go, and a token fault read in full replaces the last one.
        let mut fixed = changes(
            3,
            5,
            vec![row("a", Some(policy("a", 3, "/a")), false)],
            (2, 12),
        );
        fixed.token_faults.push(Fault {
            kind: "token",
            name: "ci".into(),
            version: None,
            error: "tags: broken".into(),
            outcome: "left_out",
        });
        assert!(contents.apply(fixed));
        let faulty: Vec<(&str, &str)> = (contents.faults.iter())
            .map(|f| (f.kind, f.name.as_str()))
            .collect();
        assert_eq!(faulty, [("policy", "b"), ("token", "ci")]);
        assert!(contents.apply(changes(5, 6, vec![row("b", None, false)], (1, 3))));
        // Tokens are read whole with every change: none broken now.
        assert!(contents.faults.is_empty(), "{:?}", contents.faults);
        assert_eq!(names(&contents), [("a", 3)]);
    }

    #[test]
    fn a_whole_read_shares_each_unchanged_definition_with_the_contents_held() {
        let held = holding(4, &[("a", 1, "/a"), ("b", 2, "/b"), ("c", 1, "/c")]);
        let mut fresh = holding(4, &[("a", 1, "/a"), ("b", 2, "/b"), ("c", 1, "/c")]);
        assert!(fresh.share_unchanged(&held));
        assert!(
            (fresh.policies.iter().zip(&held.policies)).all(|(f, h)| Arc::ptr_eq(&f.text, &h.text))
        );
        // Changed under the same version (a write that stamped nothing), gone, and added.
        let mut fresh = holding(4, &[("a", 1, "/a"), ("b", 2, "/changed"), ("d", 1, "/d")]);
        assert!(!fresh.share_unchanged(&held));
        assert!(Arc::ptr_eq(&fresh.policies[0].text, &held.policies[0].text));
        assert!(!Arc::ptr_eq(
            &fresh.policies[1].text,
            &held.policies[1].text
        ));
        let mut fewer = Contents {
            policies: vec![policy("a", 1, "/a")],
            ..held.clone()
        };
        assert!(
            !fewer.share_unchanged(&held),
            "a policy gone is a difference"
        );
    }

    #[test]
    fn many_changed_rows_merge_as_the_same_rows_one_by_one() {
        let held: Vec<(String, i64, String)> = (0..200)
            .map(|i| (format!("p{i:03}"), 1, format!("/{i}")))
            .collect();
        let held: Vec<(&str, i64, &str)> = (held.iter())
            .map(|(n, v, p)| (n.as_str(), *v, p.as_str()))
            .collect();
        let mut rows = Vec::new();
        for i in 0..100 {
            let name = format!("p{i:03}");
            rows.push(match i % 3 {
                0 => row(&name, None, false),
                1 => row(&name, Some(policy(&name, 2, "/changed")), false),
                _ => row(&name, None, true),
            });
            let added = format!("q{i:03}");
            rows.push(row(&added, Some(policy(&added, 1, "/new")), false));
        }
        let mut at_once = holding(1, &held);
        let _ = at_once.apply(changes(1, 2, rows.clone(), (0, 0)));
        let mut one_by_one = holding(1, &held);
        for (n, row) in rows.into_iter().enumerate() {
            let _ = one_by_one.apply(changes(1 + n as i64, 2 + n as i64, vec![row], (0, 0)));
        }
        assert_eq!(names(&at_once), names(&one_by_one));
        // A third deleted, a third left out with a fault, a third updated; 100 added.
        assert_eq!(at_once.policies.len(), 200 - 34 - 33 + 100);
        assert_eq!(at_once.faults, one_by_one.faults);
        assert!((at_once.policies.windows(2)).all(|w| w[0].name < w[1].name));
    }
}
