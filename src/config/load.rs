//! Reading a config file into a [`Config`], collecting every error with its file, line,
//! field path and policy name.
//!
//! Each top-level section and each list element is deserialized on its own, so one broken
//! policy does not hide the errors of the next; cross-element checks (duplicate names,
//! environment lookups) run in `Snapshot::compile` once every element parsed.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_norway::Value;
use sha2::{Digest, Sha256};

use super::position::{Position, PositionIndex};
use super::{Config, FieldError, from_value};
use crate::identity::{IdentityConfig, validate_identity};
use crate::policy::{PolicyConfig, validate_policy};
use crate::transforms::TransformEntry;
use crate::transforms::secrets::{SecretConfig, validate_secret};

const TOP_LEVEL_FIELDS: &[&str] = &[
    "server",
    "gateway",
    "default_action",
    "identities",
    "policies",
    "secrets",
    "transforms",
    "audit",
    "interception",
    "telemetry",
    "store",
    "admin",
    "dlp",
    "mcp",
    "request",
    "network_guard",
    "approvals",
];

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Field path such as `policies[3].rules[0].host`; empty for the whole document.
    pub path: String,
    /// The name of the policy the path is in, when there is one.
    pub policy: Option<String>,
    /// The name of the secret the path is in, when there is one.
    pub secret: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(
                f,
                "{}:{}:{}: ",
                file.display(),
                line,
                self.column.unwrap_or(1)
            )?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, Some(line)) => write!(f, "line {line}: ")?,
            (None, None) => {}
        }
        if !self.path.is_empty() {
            f.write_str(&self.path)?;
            if let Some(policy) = &self.policy {
                write!(f, " (policy {policy:?})")?;
            }
            if let Some(secret) = &self.secret {
                write!(f, " (secret {secret:?})")?;
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

/// All problems found in one config file, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A parsed config and what is needed to place later errors in its text.
#[derive(Debug)]
pub struct LoadedConfig {
    pub config: Config,
    pub file: Option<PathBuf>,
    /// A short hash of the file's bytes; names this configuration in logs and audit records.
    pub version: String,
    /// The text, for placing errors: the position of every key is indexed only when an
    /// error is placed (for 100,000 policies the index is larger than the policies).
    text: std::sync::Arc<str>,
    index: std::sync::OnceLock<PositionIndex>,
    policy_names: Vec<Option<String>>,
    secret_names: Vec<Option<String>>,
}

impl LoadedConfig {
    fn index(&self) -> &PositionIndex {
        // The text parsed as YAML already: indexing it does not fail.
        self.index
            .get_or_init(|| PositionIndex::build(&self.text).unwrap_or_default())
    }

    /// Places errors found after parsing (in `Snapshot::compile`) in the file.
    pub fn place(&self, errors: Vec<FieldError>) -> ConfigErrors {
        if errors.is_empty() {
            return ConfigErrors(Vec::new());
        }
        let context = Context {
            file: self.file.as_deref(),
            index: self.index(),
            policy_names: &self.policy_names,
            secret_names: &self.secret_names,
        };
        ConfigErrors(errors.into_iter().map(|e| context.place(e)).collect())
    }

    /// [`LoadedConfig::place`], in the order of the file (line, column).
    pub fn place_in_order(&self, errors: Vec<FieldError>) -> ConfigErrors {
        let mut placed = self.place(errors).0;
        placed.sort_by_key(|e| (e.line.unwrap_or(0), e.column.unwrap_or(0)));
        ConfigErrors(placed)
    }
}

struct Context<'a> {
    file: Option<&'a Path>,
    index: &'a PositionIndex,
    policy_names: &'a [Option<String>],
    secret_names: &'a [Option<String>],
}

impl Context<'_> {
    fn place(&self, error: FieldError) -> ConfigError {
        let position = self.index.find(&error.path);
        self.at(error, position)
    }

    fn at(&self, error: FieldError, position: Option<Position>) -> ConfigError {
        let name_in = |section: &str, names: &[Option<String>]| {
            error
                .path
                .strip_prefix(section)
                .and_then(|rest| rest.strip_prefix('['))
                .and_then(|rest| rest.split(']').next())
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| names.get(i).cloned().flatten())
        };
        let policy = name_in("policies", self.policy_names);
        let secret = name_in("secrets", self.secret_names);
        ConfigError {
            file: self.file.map(Path::to_path_buf),
            line: position.map(|p| p.line),
            column: position.map(|p| p.column),
            path: error.path,
            policy,
            secret,
            message: error.message,
        }
    }
}

/// Reads and parses a config file.
pub fn load_file(path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    parse_str(&read_config(path)?, Some(path))
}

/// Reads and parses a config file as far as it can: what parsed, and the errors of what
/// did not (see [`Partial`]). Only unreadable files and broken YAML are an `Err`.
pub fn load_file_partial(path: &Path) -> Result<Partial, ConfigErrors> {
    parse_partial(&read_config(path)?, Some(path))
}

fn read_config(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: Some(path.to_path_buf()),
            line: None,
            column: None,
            path: String::new(),
            policy: None,
            secret: None,
            message: format!("cannot read config file: {e}"),
        }])
    })
}

/// Short content hash used as the config version.
pub fn version_of(text: &str) -> String {
    version_of_digest(&Sha256::digest(text.as_bytes()))
}

/// [`version_of`] a file's contents, read in pieces: a poll learns whether the file
/// changed without holding it whole (19 MB at 100,000 policies, every poll).
pub fn version_of_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 64 * 1024];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => return Ok(version_of_digest(&hasher.finalize())),
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn version_of_digest(digest: &[u8]) -> String {
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses config text; `file` is only used in error messages.
pub fn parse_str(text: &str, file: Option<&Path>) -> Result<LoadedConfig, ConfigErrors> {
    let partial = parse_partial(text, file)?;
    if partial.errors.is_empty() {
        Ok(partial.loaded)
    } else {
        Err(partial.loaded.place_in_order(partial.errors))
    }
}

/// A config parsed as far as it could be: every section and list entry that parsed, the
/// errors of those that did not, and where each kept list entry stood in the file, so that
/// later stages (compiling, reading the CA) can report their errors in the same run at the
/// right place.
#[derive(Debug)]
pub struct Partial {
    pub loaded: LoadedConfig,
    /// Unplaced: [`LoadedConfig::place`] them.
    pub errors: Vec<FieldError>,
    /// A whole section (`dlp`, `server`, …) failed, not only list entries: what later
    /// stages would say about the rest could be its consequence.
    pub section_failed: bool,
    kept: Vec<(&'static str, Vec<usize>)>,
}

impl Partial {
    /// Rewrites a later stage's error about the `k`-th kept entry of a list
    /// (`policies[k]…`) to name that entry's place in the file.
    pub fn in_file(&self, mut error: FieldError) -> FieldError {
        for (list, kept) in &self.kept {
            let Some(rest) = error
                .path
                .strip_prefix(list)
                .and_then(|r| r.strip_prefix('['))
            else {
                continue;
            };
            let Some((index, tail)) = rest.split_once(']') else {
                continue;
            };
            if let Some(original) = index.parse::<usize>().ok().and_then(|k| kept.get(k)) {
                error.path = format!("{list}[{original}]{tail}");
            }
            break;
        }
        error
    }
}

fn parse_partial(text: &str, file: Option<&Path>) -> Result<Partial, ConfigErrors> {
    parse_partial_as(text, file, true)
}

/// [`parse_partial`]; with `may_split` false the file is always parsed whole (the tests
/// compare the two).
fn parse_partial_as(
    text: &str,
    file: Option<&Path>,
    may_split: bool,
) -> Result<Partial, ConfigErrors> {
    let syntax_error = |message: String, line: Option<usize>, column: Option<usize>| {
        ConfigErrors(vec![ConfigError {
            file: file.map(Path::to_path_buf),
            line,
            column,
            path: String::new(),
            policy: None,
            secret: None,
            message: format!("invalid YAML: {message}"),
        }])
    };
    // A long policy list is parsed in pieces on every core (`split`); any doubt, and the
    // file is parsed whole.
    let split = may_split.then(|| split::policies(text)).flatten();
    let (document, mut pieces) = match split.as_ref().and_then(parse_split) {
        Some((document, parsed)) => (document, Some(parsed)),
        None => {
            let document: Value = serde_norway::from_str(text).map_err(|e| {
                let location = e.location();
                syntax_error(
                    e.to_string(),
                    location.as_ref().map(|l| l.line()),
                    location.as_ref().map(|l| l.column()),
                )
            })?;
            (document, None)
        }
    };
    let policy_names = match &pieces {
        Some(parsed) => parsed.iter().map(|(name, _)| name.clone()).collect(),
        None => names_in(&document, "policies"),
    };
    let secret_names = names_in(&document, "secrets");
    let mut errors: Vec<FieldError> = Vec::new();
    let mut config = Config::default();
    let mut lists = Lists::default();
    let sections = match document {
        Value::Null => Default::default(),
        Value::Mapping(mapping) => mapping,
        other => {
            errors.push(FieldError::new(
                "",
                format!(
                    "the config must be a mapping of sections ({}), found {}",
                    TOP_LEVEL_FIELDS.join(", "),
                    kind_of(&other)
                ),
            ));
            Default::default()
        }
    };
    for (key, value) in sections {
        let Some(key) = key.as_str().map(str::to_owned) else {
            errors.push(FieldError::new("", "top-level keys must be strings"));
            continue;
        };
        match key.as_str() {
            "server" => {
                if let Some(v) = section::<super::ServerConfig>(value, &key, &mut errors) {
                    errors.extend(super::channel::validate(
                        &v.grpc_listen,
                        v.grpc_tls.as_ref(),
                        v.grpc_mesh_authenticated,
                    ));
                    config.server = v;
                }
            }
            "gateway" => {
                if let Some(v) = section(value, &key, &mut errors) {
                    config.gateway = v;
                }
            }
            "default_action" => {
                if let Some(v) = section(value, &key, &mut errors) {
                    config.default_action = v;
                }
            }
            "audit" => {
                if let Some(v) = section(value, &key, &mut errors) {
                    config.audit = v;
                }
            }
            "interception" => {
                if let Some(v) = section::<crate::tls::InterceptionConfig>(value, &key, &mut errors)
                {
                    errors.extend(v.validate());
                    config.interception = Some(v);
                }
            }
            "telemetry" => {
                if let Some(v) = section(value, &key, &mut errors) {
                    config.telemetry = v;
                }
            }
            "store" => {
                if let Some(v) = section::<super::StoreConfig>(value, &key, &mut errors) {
                    errors.extend(v.validate().into_iter().map(|e| e.under("store")));
                    config.store = Some(v);
                }
            }
            "admin" => {
                if let Some(v) = section::<super::AdminConfig>(value, &key, &mut errors) {
                    config.admin = v;
                }
            }
            "dlp" => {
                if let Some(v) = section(value, &key, &mut errors) {
                    config.dlp = v;
                }
            }
            "mcp" => {
                if let Some(v) = section(value, &key, &mut errors) {
                    config.mcp = v;
                }
            }
            "approvals" => {
                if let Some(v) =
                    section::<crate::approvals::ApprovalsConfig>(value, &key, &mut errors)
                {
                    errors.extend(v.problems().into_iter().map(|e| e.under("approvals")));
                    config.approvals = v;
                }
            }
            "request" => {
                if let Some(v) = section(value, &key, &mut errors) {
                    config.request = v;
                }
            }
            "network_guard" => {
                if let Some(v) =
                    section::<crate::network::NetworkGuardConfig>(value, &key, &mut errors)
                {
                    errors.extend(v.validate().into_iter().map(|e| e.under("network_guard")));
                    config.network_guard = v;
                }
            }
            "identities" => {
                config.identities = lists.parse("identities", value, &mut errors, |v| {
                    super::every_error::deserialize_every_error::<IdentityConfig>(
                        v,
                        validate_identity,
                    )
                })
            }
            "policies" => {
                config.policies = match pieces.take() {
                    Some(parsed) => lists.collect(
                        "policies",
                        parsed.into_iter().map(|(_, policy)| policy),
                        &mut errors,
                    ),
                    None => lists.parse("policies", value, &mut errors, parse_policy),
                }
            }
            "transforms" => {
                config.transforms =
                    lists.parse("transforms", value, &mut errors, TransformEntry::parse);
            }
            "secrets" => {
                config.secrets = lists.parse("secrets", value, &mut errors, |v| {
                    super::every_error::deserialize_every_error::<SecretConfig>(v, validate_secret)
                })
            }
            _ => errors.push(FieldError::new(
                key.clone(),
                format!(
                    "unknown field `{key}`, expected one of {}",
                    TOP_LEVEL_FIELDS
                        .iter()
                        .map(|f| format!("`{f}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
    if config.transforms.is_empty() {
        config.transforms = vec![TransformEntry::allowlist()];
        // Secrets in the file, or in a store (where they can appear at any time).
        if !config.secrets.is_empty() || config.store.is_some() {
            config.transforms.push(TransformEntry::secrets());
        }
    }
    let section_failed = errors.len() > lists.errors;
    Ok(Partial {
        loaded: LoadedConfig {
            config,
            file: file.map(Path::to_path_buf),
            version: version_of(text),
            text: std::sync::Arc::from(text),
            index: std::sync::OnceLock::new(),
            policy_names,
            secret_names,
        },
        errors,
        section_failed,
        kept: lists.kept,
    })
}

fn parse_policy(value: Value) -> Result<PolicyConfig, Vec<FieldError>> {
    super::every_error::deserialize_every_error::<PolicyConfig>(value, validate_policy)
}

/// A policy as parsed from its list item, with the name the item gives (for errors).
type ParsedPolicy = (Option<String>, Result<PolicyConfig, Vec<FieldError>>);

/// Parses a split file: the rest of the file, and each piece of the policy list on its own
/// thread, its items parsed as they come. `None` when any piece does not parse on its own,
/// or the rest does not leave `policies:` as the empty key the cut left: then the whole
/// file is parsed instead.
fn parse_split(split: &split::Split<'_>) -> Option<(Value, Vec<ParsedPolicy>)> {
    let document: Value = serde_norway::from_str(&split.rest).ok()?;
    if !matches!(document.get("policies"), Some(Value::Null)) {
        return None;
    }
    let parse_piece = |piece: &str| -> Option<Vec<ParsedPolicy>> {
        let Value::Sequence(items) = serde_norway::from_str::<Value>(piece).ok()? else {
            return None;
        };
        Some(
            items
                .into_iter()
                .map(|item| {
                    let name = item.get("name").and_then(Value::as_str).map(str::to_owned);
                    (name, parse_policy(item))
                })
                .collect(),
        )
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(split.pieces.len());
    let mut parsed: Vec<(usize, Option<Vec<ParsedPolicy>>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(piece) = split.pieces.get(n) else {
                            return done;
                        };
                        done.push((n, parse_piece(piece)));
                    }
                })
            })
            .collect();
        (handles.into_iter())
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    if parsed.len() != split.pieces.len() {
        return None;
    }
    parsed.sort_unstable_by_key(|(n, _)| *n);
    let mut policies = Vec::new();
    for (_, piece) in parsed {
        policies.extend(piece?);
    }
    Some((document, policies))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn names_in(document: &Value, section: &str) -> Vec<Option<String>> {
    document
        .get(section)
        .and_then(Value::as_sequence)
        .map(|policies| {
            policies
                .iter()
                .map(|p| p.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn section<T: DeserializeOwned>(
    value: Value,
    key: &str,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    match from_value(value) {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(e.under(key));
            None
        }
    }
}

/// The list sections as parsed: where each kept entry stood in the file, and how many of
/// the errors are the lists' own (a broken entry, a list that is not one).
#[derive(Default)]
struct Lists {
    kept: Vec<(&'static str, Vec<usize>)>,
    errors: usize,
}

impl Lists {
    /// Keeps every entry of the list `key` that parsed, and an error for each that did
    /// not.
    fn collect<T>(
        &mut self,
        key: &'static str,
        entries: impl Iterator<Item = Result<T, Vec<FieldError>>>,
        errors: &mut Vec<FieldError>,
    ) -> Vec<T> {
        let before = errors.len();
        let mut parsed = Vec::new();
        let mut indexes = Vec::new();
        for (i, entry) in entries.enumerate() {
            match entry {
                Ok(v) => {
                    parsed.push(v);
                    indexes.push(i);
                }
                Err(problems) => {
                    let prefix = format!("{key}[{i}]");
                    errors.extend(problems.into_iter().map(|e| e.under(&prefix)));
                }
            }
        }
        self.kept.push((key, indexes));
        self.errors += errors.len() - before;
        parsed
    }

    /// Parses the list `key`, keeping every entry that parses and an error for each that
    /// does not.
    fn parse<T>(
        &mut self,
        key: &'static str,
        value: Value,
        errors: &mut Vec<FieldError>,
        parse: impl Fn(Value) -> Result<T, Vec<FieldError>>,
    ) -> Vec<T> {
        match value {
            Value::Null => self.collect(key, std::iter::empty(), errors),
            Value::Sequence(items) => self.collect(key, items.into_iter().map(parse), errors),
            other => {
                errors.push(FieldError::new(
                    key,
                    format!("expected a list, found {}", kind_of(&other)),
                ));
                self.errors += 1;
                self.kept.push((key, Vec::new()));
                Vec::new()
            }
        }
    }
}

mod split;

#[cfg(test)]
mod tests;
