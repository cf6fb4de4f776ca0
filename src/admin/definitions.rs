//! `/v1/policies` and `/v1/secrets`: create, read, update, delete, history, diff and
//! rollback, the same for both kinds; enable and disable for policies.
//!
//! Every change names the version it read (`version`), is checked against this gateway's
//! config before anything is written (a change the gateway would refuse is a 422), is
//! recorded with the caller's token name as operator, and is live on this instance when
//! the response is sent.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::parse_body;
use super::{ApiError, Control, Credentials};
use crate::config::AdminRole;
use crate::config::every_error::deserialize_every_error;
use crate::live::ChangeRefused;
use crate::policy::{PolicyConfig, PolicyDefinition};
use crate::store::{Change, Definition, Held, Kind, Stored, diff};
use crate::vocab::FieldError;

type Json = axum::Json<Value>;

pub fn routes<T: Definition>(base: &str) -> Router<Arc<Control>> {
    Router::new()
        .route(base, get(list::<T>).post(create::<T>))
        .route(
            &format!("{base}/{{name}}"),
            get(read::<T>).put(update::<T>).delete(delete::<T>),
        )
        .route(&format!("{base}/{{name}}/history"), get(history::<T>))
        .route(&format!("{base}/{{name}}/diff"), get(diff_versions::<T>))
        .route(&format!("{base}/{{name}}/rollback"), post(rollback::<T>))
}

/// Enable and disable: policies only (a secret has no status).
pub fn status_routes(base: &str) -> Router<Arc<Control>> {
    Router::new()
        .route(&format!("{base}/{{name}}/enable"), post(enable))
        .route(&format!("{base}/{{name}}/disable"), post(disable))
        // Not under /v1/policies/: a policy may be named anything.
        .route("/v1/policy-order", post(reorder))
}

/// The role that changes a kind: secrets need `admin`, since a secret chooses what the
/// gateway host reads and which requests carry it.
fn writer<T: Definition>() -> AdminRole {
    match T::KIND {
        Kind::Policy => AdminRole::Editor,
        Kind::Secret => AdminRole::Admin,
    }
}

/// A change's request body: the definition under its kind's name (`policy`, `secret`),
/// the version read (updates), and why.
struct Envelope<T> {
    definition: Option<T>,
    version: Option<i64>,
    to_version: Option<i64>,
    reason: String,
}

/// Which envelope fields a call takes.
#[derive(Clone, Copy)]
struct Fields {
    definition: bool,
    version: bool,
    to_version: bool,
}

impl Fields {
    const CREATE: Fields = Fields {
        definition: true,
        version: false,
        to_version: false,
    };
    const UPDATE: Fields = Fields {
        definition: true,
        version: true,
        to_version: false,
    };
    /// Enable and disable: the version read, nothing else.
    const STATUS: Fields = Fields {
        definition: false,
        version: true,
        to_version: false,
    };
    const ROLLBACK: Fields = Fields {
        definition: false,
        version: true,
        to_version: true,
    };
}

/// A definition as the config file's are read (YAML rules: a null list is an empty one),
/// with every error at its path and the kind's own checks.
pub(super) fn parse_definition<T: Definition>(value: &Value) -> Result<T, Vec<FieldError>> {
    serde_norway::to_value(value)
        .map_err(|e| vec![FieldError::new("", e.to_string())])
        .and_then(|value| deserialize_every_error::<T>(value, T::validate))
}

/// Parses an envelope: unknown or missing fields are 422s at their path; the definition's
/// own errors are placed under its kind's name.
fn envelope<T: Definition>(bytes: &[u8], fields: Fields) -> Result<Envelope<T>, ApiError> {
    let kind = T::KIND.as_str();
    let object: serde_json::Map<String, Value> = parse_body(bytes)?;
    let mut errors = Vec::new();
    for key in object.keys() {
        let known = (key == kind && fields.definition)
            || (key == "version" && fields.version)
            || (key == "to_version" && fields.to_version)
            || key == "reason";
        if !known {
            let mut expected = vec![];
            if fields.definition {
                expected.push(format!("`{kind}`"));
            }
            if fields.version {
                expected.push("`version`".into());
            }
            if fields.to_version {
                expected.push("`to_version`".into());
            }
            expected.push("`reason`".into());
            errors.push(FieldError::new(
                key.clone(),
                format!("unknown field `{key}`, expected {}", expected.join(", ")),
            ));
        }
    }
    let integer = |key: &str, errors: &mut Vec<FieldError>| match object.get(key) {
        None => {
            errors.push(FieldError::new(
                key,
                format!("missing `{key}`: the version you read (optimistic concurrency)"),
            ));
            None
        }
        // JSON has one number type: `3.0` is the integer 3, as JSON Schema counts it.
        Some(value) => match value.as_i64().or_else(|| {
            value
                .as_f64()
                .filter(|f| f.fract() == 0.0 && (1.0..=9_007_199_254_740_992.0).contains(f))
                .map(|f| f as i64)
        }) {
            Some(v) if v >= 1 => Some(v),
            _ => {
                errors.push(FieldError::new(
                    key,
                    "expected a version number (1 or more)",
                ));
                None
            }
        },
    };
    let version = fields
        .version
        .then(|| integer("version", &mut errors))
        .flatten();
    let to_version = fields
        .to_version
        .then(|| integer("to_version", &mut errors))
        .flatten();
    let reason = match object.get("reason") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(reason)) if reason.len() <= 1024 => reason.clone(),
        Some(_) => {
            errors.push(FieldError::new(
                "reason",
                "expected a string of at most 1024 bytes",
            ));
            String::new()
        }
    };
    let definition = if fields.definition {
        match object.get(kind) {
            None => {
                errors.push(FieldError::new(kind, format!("missing `{kind}`")));
                None
            }
            // Every error of the definition, not only the first (as `portcullis validate`).
            Some(value) => match parse_definition::<T>(value) {
                Ok(definition) => Some(definition),
                Err(problems) => {
                    errors.extend(problems.into_iter().map(|e| e.under(kind)));
                    None
                }
            },
        }
    } else {
        None
    };
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors, ""));
    }
    Ok(Envelope {
        definition,
        version,
        to_version,
        reason,
    })
}

fn one<T: Definition>(stored: &Stored<T>) -> Value {
    json!({
        "name": stored.definition.name(),
        "version": stored.version,
        "updated_at": stored.updated_at,
        T::KIND.as_str(): stored.definition,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// With fire counts for this window (`24h`).
    window: Option<String>,
}

async fn list<T: Definition>(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json, ApiError> {
    control.caller(&credentials, AdminRole::Viewer)?;
    let Query(query) = query.map_err(|e| ApiError::bad_query(e.body_text()))?;
    let store = control.store()?;
    let rows = T::versioned(store)
        .rows()
        .await
        .map_err(|e| ApiError::from_store(e, ""))?;
    // A row that does not parse is listed apart, with what stands in for it.
    let faulty = |s: &&Stored<T>| rows.faults.iter().any(|f| f.name == s.definition.name());
    let mut items: Vec<Value> = rows.stored.iter().filter(|s| !faulty(s)).map(one).collect();
    if let Some(window) = &query.window {
        let since = super::insight::window_start(window)?;
        let counts = store
            .fire_counts(&since)
            .await
            .map_err(|e| ApiError::from_store(e, ""))?;
        for item in &mut items {
            let name = item["name"].as_str().unwrap_or_default().to_owned();
            item["fires"] = super::insight::fires_of(&counts, Some(&name));
        }
    }
    let mut listed = json!({ T::KIND.plural(): items });
    if !rows.faults.is_empty() {
        listed["faults"] = json!(rows.faults);
    }
    Ok(axum::Json(listed))
}

async fn read<T: Definition>(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    Path(name): Path<String>,
) -> Result<Json, ApiError> {
    control.caller(&credentials, AdminRole::Viewer)?;
    let stored = T::versioned(control.store()?)
        .get(&name)
        .await
        .map_err(|e| ApiError::from_store(e, ""))?;
    Ok(axum::Json(one(&stored)))
}

async fn create<T: Definition>(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    body: Bytes,
) -> Result<(StatusCode, Json), ApiError> {
    let caller = control.caller(&credentials, writer::<T>())?;
    let store = control.store()?;
    let envelope = envelope::<T>(&body, Fields::CREATE)?;
    let definition = envelope.definition.expect("parsed with a definition");
    check::<T>(&control, definition.clone()).await?;
    let change = Change::by(&caller.name, &envelope.reason);
    let version = T::versioned(store)
        .create(&definition, &change)
        .await
        .map_err(|e| ApiError::from_store(e, T::KIND.as_str()))?;
    let revision = control.refresh().await;
    Ok((
        StatusCode::CREATED,
        axum::Json(written::<T>(definition.name(), version, revision)),
    ))
}

async fn update<T: Definition>(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json, ApiError> {
    let caller = control.caller(&credentials, writer::<T>())?;
    let store = control.store()?;
    let envelope = envelope::<T>(&body, Fields::UPDATE)?;
    let definition = envelope.definition.expect("parsed with a definition");
    if definition.name() != name {
        return Err(ApiError::invalid(
            vec![FieldError::new(
                "name",
                format!(
                    "the {} in the body is {:?}, the URL names {name:?}: a rename is a create \
                     and a delete",
                    T::KIND.as_str(),
                    definition.name()
                ),
            )],
            T::KIND.as_str(),
        ));
    }
    check::<T>(&control, definition.clone()).await?;
    let change = Change::by(&caller.name, &envelope.reason);
    let version = T::versioned(store)
        .update(envelope.version.expect("parsed"), &definition, &change)
        .await
        .map_err(|e| ApiError::from_store(e, T::KIND.as_str()))?;
    let revision = control.refresh().await;
    Ok(axum::Json(written::<T>(&name, version, revision)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    version: Option<i64>,
    reason: Option<String>,
}

async fn delete<T: Definition>(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    Path(name): Path<String>,
    query: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json, ApiError> {
    let caller = control.caller(&credentials, writer::<T>())?;
    let Query(query) = query.map_err(|e| ApiError::bad_query(e.body_text()))?;
    let store = control.store()?;
    let Some(expected) = query.version else {
        return Err(ApiError::invalid(
            vec![FieldError::new(
                "version",
                "missing `?version=`: the version you read (optimistic concurrency)",
            )],
            "",
        ));
    };
    let versioned = T::versioned(store);
    // Not parsed: a row that no longer parses can be deleted.
    versioned
        .live_version(&name)
        .await
        .map_err(|e| ApiError::from_store(e, ""))?;
    let removed = name.clone();
    check_edit::<T>(&control, None, move |list| {
        list.retain(|s| *s.name != *removed)
    })
    .await?;
    let change = Change::by(&caller.name, query.reason.as_deref().unwrap_or(""));
    let version = versioned
        .delete(&name, expected, &change)
        .await
        .map_err(|e| ApiError::from_store(e, ""))?;
    let revision = control.refresh().await;
    Ok(axum::Json(written::<T>(&name, version, revision)))
}

async fn history<T: Definition>(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    Path(name): Path<String>,
) -> Result<Json, ApiError> {
    control.caller(&credentials, AdminRole::Viewer)?;
    let versions = T::versioned(control.store()?)
        .history(&name)
        .await
        .map_err(|e| ApiError::from_store(e, ""))?;
    let kind = T::KIND.as_str();
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            json!({
                "version": v.version,
                "operation": v.operation,
                "operator": v.operator,
                "reason": v.reason,
                "at": v.at,
                kind: v.definition,
            })
        })
        .collect();
    Ok(axum::Json(json!({"name": name, "versions": versions})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffQuery {
    from: i64,
    /// Default: the newest version.
    to: Option<i64>,
}

async fn diff_versions<T: Definition>(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    Path(name): Path<String>,
    query: Result<Query<DiffQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json, ApiError> {
    control.caller(&credentials, AdminRole::Viewer)?;
    let Query(query) = query
        .map_err(|e| ApiError::bad_query(format!("{} (expected ?from=N[&to=M])", e.body_text())))?;
    let history = T::versioned(control.store()?)
        .history(&name)
        .await
        .map_err(|e| ApiError::from_store(e, ""))?;
    let find = |version: i64| {
        history
            .iter()
            .find(|v| v.version == version)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "{} {name:?} has no version {version}",
                    T::KIND.as_str()
                ))
            })
    };
    let to = query
        .to
        .unwrap_or_else(|| history.last().map_or(0, |v| v.version));
    let (before, after) = (find(query.from)?, find(to)?);
    let entries = diff(
        &serde_json::to_value(&before.definition).unwrap_or_default(),
        &serde_json::to_value(&after.definition).unwrap_or_default(),
    );
    Ok(axum::Json(json!({
        "name": name, "from": query.from, "to": to, "changes": entries,
    })))
}

async fn rollback<T: Definition>(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json, ApiError> {
    let caller = control.caller(&credentials, writer::<T>())?;
    let store = control.store()?;
    let envelope = envelope::<T>(&body, Fields::ROLLBACK)?;
    let versioned = T::versioned(store);
    let earlier = versioned
        .version(&name, envelope.to_version.expect("parsed"))
        .await
        .map_err(|e| ApiError::from_store(e, ""))?;
    check::<T>(&control, earlier.definition.clone()).await?;
    let change = Change::by(&caller.name, &envelope.reason);
    let version = versioned
        .rollback(&name, earlier.version, envelope.version, &change)
        .await
        .map_err(|e| ApiError::from_store(e, ""))?;
    let revision = control.refresh().await;
    Ok(axum::Json(written::<T>(&name, version, revision)))
}

async fn enable(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json, ApiError> {
    set_status(control, credentials, name, body, true).await
}

async fn disable(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json, ApiError> {
    set_status(control, credentials, name, body, false).await
}

async fn set_status(
    control: Arc<Control>,
    credentials: Credentials,
    name: String,
    body: Bytes,
    active: bool,
) -> Result<Json, ApiError> {
    let caller = control.caller(&credentials, AdminRole::Editor)?;
    let store = control.store()?;
    let envelope = envelope::<PolicyConfig>(&body, Fields::STATUS)?;
    let expected = envelope.version.expect("parsed");
    let change = Change::by(&caller.name, &envelope.reason);
    let policies = store.policies();
    let version = if active {
        policies.enable(&name, expected, &change).await
    } else {
        policies.disable(&name, expected, &change).await
    }
    .map_err(|e| ApiError::from_store(e, ""))?;
    let revision = control.refresh().await;
    Ok(axum::Json(written::<PolicyConfig>(
        &name, version, revision,
    )))
}

/// `POST /v1/policy-order`: new priorities for several policies as one change.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reorder {
    order: Vec<Placement>,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Placement {
    name: String,
    /// The version read.
    version: i64,
    priority: i32,
}

/// `POST /v1/policy-order` (the console's drag to reorder): `{"order": [{name, version,
/// priority}], "reason"}` gives each listed policy its new priority in one transaction and
/// one store revision, each policy a `reorder` version; a stale version anywhere refuses
/// the whole change (409), as does an order the gateway would not compile (422).
async fn reorder(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    body: Bytes,
) -> Result<Json, ApiError> {
    let caller = control.caller(&credentials, AdminRole::Editor)?;
    let store = control.store()?;
    let Reorder { order, reason } = parse_body(&body)?;
    let mut errors = Vec::new();
    if order.is_empty() {
        errors.push(FieldError::new("order", "no policy to reorder"));
    }
    for (i, placement) in order.iter().enumerate() {
        if order[..i].iter().any(|p| p.name == placement.name) {
            errors.push(FieldError::new(
                format!("order[{i}].name"),
                format!("{:?} is listed twice", placement.name),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors, ""));
    }
    let priorities: Vec<(String, i64, i32)> = order
        .iter()
        .map(|p| (p.name.clone(), p.version, p.priority))
        .collect();
    let edits = priorities.clone();
    check_edit::<PolicyConfig>(&control, None, move |list| {
        for (name, _, priority) in edits {
            if let Some(held) = list.iter_mut().find(|s| *s.name == *name) {
                let mut policy = PolicyDefinition::config(held).into_owned();
                policy.priority = priority;
                *held = Held::new(held.version, &policy);
            }
        }
    })
    .await?;
    let change = Change::by(&caller.name, &reason);
    let written = store
        .policies()
        .reprioritize(&priorities, &change)
        .await
        .map_err(|e| ApiError::from_store(e, ""))?;
    let revision = control.refresh().await;
    Ok(axum::Json(json!({
        "reordered": written.iter().map(|(name, version)| json!({"name": name, "version": version}))
            .collect::<Vec<_>>(),
        "store_revision": revision,
    })))
}

fn written<T: Definition>(name: &str, version: i64, revision: Option<i64>) -> Value {
    json!({"kind": T::KIND, "name": name, "version": version, "store_revision": revision})
}

/// Refuses (422) a definition this gateway would not compile alongside the rest.
async fn check<T: Definition>(control: &Control, definition: T) -> Result<(), ApiError> {
    let name = definition.name().to_owned();
    let written = name.clone();
    check_edit::<T>(control, Some(&written), move |list| {
        let stored = Held::new(0, &definition);
        match list.iter_mut().find(|s| *s.name == *name) {
            Some(slot) => *slot = stored,
            None => list.push(stored),
        }
    })
    .await
}

/// Compiles this instance's snapshot with `edit` applied to the store's contents. Errors
/// inside the written definition (`policies["name"].rules[0]`) are placed in the body
/// (`policy.rules[0]`).
async fn check_edit<T: Definition>(
    control: &Control,
    written: Option<&str>,
    edit: impl FnOnce(&mut Vec<Held<T>>),
) -> Result<(), ApiError> {
    let kind = T::KIND.as_str();
    let stored_prefix = written.map(|name| format!("{}[{name:?}]", T::KIND.plural()));
    control
        .live
        .check_contents(stored_prefix.as_deref(), |contents| {
            edit(T::in_contents(contents))
        })
        .await
        .map_err(|ChangeRefused(errors)| {
            let errors = errors
                .into_iter()
                .map(|e| {
                    match stored_prefix
                        .as_deref()
                        .and_then(|prefix| e.path.strip_prefix(prefix))
                    {
                        Some(rest) => FieldError::new(format!("{kind}{rest}"), e.message),
                        None => e,
                    }
                })
                .collect();
            ApiError::invalid(errors, "")
        })
}
