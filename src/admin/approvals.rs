//! `/v1/approvals`: the queue of requests waiting for a person (`action: approve`), and
//! the decisions. Approving writes the grant — a policy, versioned like any other, with
//! the approver as its operator — and publishes it, so the agent's retry passes.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::parse_body;
use super::{ApiError, Control, Credentials};
use crate::approvals::{grant_duration, grant_policy, rfc3339};
use crate::config::AdminRole;
use crate::identity::admin::Caller;
use crate::store::Change;
use crate::store::approvals::DecideError;
use crate::vocab::FieldError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `pending`, `lapsed`, `approved`, `expired`, `denied`, `revoked`.
    status: Option<String>,
    limit: Option<i64>,
}

const STATUSES: &[&str] = &[
    "pending", "lapsed", "approved", "expired", "denied", "revoked",
];

pub async fn list(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    control.caller(&credentials, AdminRole::Viewer)?;
    let Query(query) = query.map_err(|e| ApiError::bad_query(e.body_text()))?;
    if let Some(status) = &query.status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::bad_query(format!(
            "status {status:?} is not one of {}",
            STATUSES.join(", ")
        )));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_query(format!(
            "limit {limit} is not between 1 and 1000"
        )));
    }
    let approvals = control
        .store()?
        .approvals(query.status.as_deref(), limit)
        .await
        .map_err(|e| ApiError::from_store(e, ""))?;
    Ok(axum::Json(json!({ "approvals": approvals })))
}

pub async fn get(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    control.caller(&credentials, AdminRole::Viewer)?;
    let approval = control
        .store()?
        .approval(&id)
        .await
        .map_err(|e| ApiError::from_store(e, ""))?
        .ok_or_else(|| ApiError::not_found(format!("approval {id:?} does not exist")))?;
    let link = control.live.snapshot().approval_settings.link(&approval.id);
    Ok(axum::Json(json!({ "approval": approval, "url": link })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Decision {
    /// How long the grant lasts (`15m`); default `approvals.grant_for`.
    #[serde(default, rename = "for")]
    lasts: Option<String>,
    /// Why, recorded with the decision and the grant's version.
    #[serde(default)]
    note: Option<String>,
}

/// The editor deciding, the store, and what they sent (an empty body says nothing).
fn deciding<'c>(
    control: &'c Control,
    credentials: &Credentials,
    body: &Bytes,
) -> Result<(Caller, &'c crate::store::Store, Decision), ApiError> {
    let caller = control.caller(credentials, AdminRole::Editor)?;
    let store = control.store()?;
    let decision = if body.iter().all(u8::is_ascii_whitespace) {
        Decision::default()
    } else {
        parse_body(body)?
    };
    Ok((caller, store, decision))
}

pub async fn approve(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    let (caller, store, decision) = deciding(&control, &credentials, &body)?;
    let snapshot = control.live.snapshot();
    let settings = &snapshot.approval_settings;
    let lasts = grant_duration(settings, decision.lasts.as_deref())
        .map_err(|e| ApiError::invalid(vec![FieldError::new("for", e.to_string())], ""))?;
    let approval = store
        .approval(&id)
        .await
        .map_err(|e| ApiError::from_store(e, ""))?
        .ok_or_else(|| ApiError::not_found(format!("approval {id:?} does not exist")))?;
    // The grant goes just ahead of the policy that asked; one no longer there leaves the
    // default priority to go ahead of.
    let asking_priority = snapshot
        .policies
        .policies()
        .iter()
        .find(|p| *p.name == *approval.policy)
        .map_or(10, |p| p.priority);
    let expires_at = rfc3339(SystemTime::now() + lasts);
    let grant = grant_policy(&approval, asking_priority, &expires_at)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "ungrantable", e.to_string()))?;
    let reason = match &decision.note {
        Some(note) => format!("approve {id}: {note}"),
        None => format!("approve {id}"),
    };
    let approved = store
        .approve(
            &id,
            &grant,
            decision.note.as_deref(),
            &Change::by(&caller.name, &reason),
        )
        .await
        .map_err(decide_error)?;
    control.refresh().await;
    tracing::info!(approval = %id, grant = %grant.name, expires_at = %expires_at,
        operator = %caller.name, "approval granted");
    Ok(axum::Json(json!({ "approval": approved, "grant": grant })))
}

pub async fn deny(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    let (caller, store, decision) = deciding(&control, &credentials, &body)?;
    if decision.lasts.is_some() {
        return Err(ApiError::invalid(
            vec![FieldError::new(
                "for",
                "the length of a grant: a denial has none",
            )],
            "",
        ));
    }
    let denied = store
        .deny_approval(
            &id,
            decision.note.as_deref(),
            &Change::by(&caller.name, "deny"),
        )
        .await
        .map_err(decide_error)?;
    tracing::info!(approval = %id, operator = %caller.name, "approval denied");
    Ok(axum::Json(json!({ "approval": denied })))
}

pub async fn revoke(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    let (caller, store, decision) = deciding(&control, &credentials, &body)?;
    let reason = match &decision.note {
        Some(note) => format!("revoke grant of {id}: {note}"),
        None => format!("revoke grant of {id}"),
    };
    let revoked = store
        .revoke_approval(
            &id,
            decision.note.as_deref(),
            &Change::by(&caller.name, &reason),
        )
        .await
        .map_err(decide_error)?;
    control.refresh().await;
    tracing::info!(approval = %id, operator = %caller.name, "grant revoked");
    Ok(axum::Json(json!({ "approval": revoked })))
}

fn decide_error(error: DecideError) -> ApiError {
    match error {
        DecideError::NotFound(_) => ApiError::not_found(error.to_string()),
        DecideError::NotPending { .. } | DecideError::NotInForce { .. } => {
            ApiError::new(StatusCode::CONFLICT, "not_pending", error.to_string())
        }
        DecideError::Store(e) => ApiError::from_store(e, "grant"),
    }
}
