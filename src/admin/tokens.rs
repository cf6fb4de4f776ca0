//! `/v1/tokens`: enrollment tokens. A token is minted with a tag set and shown once; the
//! store keeps its SHA-256. A workload presents it as its proxy credential and carries its
//! tags; revoking it refuses it (407) from the next snapshot on.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::parse_body;
use super::{ApiError, Control, Credentials};
use crate::config::AdminRole;
use crate::store::Change;
use crate::vocab::Tag;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    /// Names the workload in audit records; unique among unrevoked tokens.
    name: String,
    #[serde(default)]
    tags: Vec<Tag>,
}

pub async fn list(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
) -> Result<axum::Json<Value>, ApiError> {
    control.caller(&credentials, AdminRole::Viewer)?;
    let tokens = control
        .store()?
        .tokens()
        .await
        .map_err(|e| ApiError::from_store(e, ""))?;
    Ok(axum::Json(json!({ "tokens": tokens })))
}

pub async fn mint(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let caller = control.caller(&credentials, AdminRole::Editor)?;
    let store = control.store()?;
    let request: MintRequest = parse_body(&body)?;
    let change = Change::by(&caller.name, "mint token");
    let minted = store
        .mint_token(&request.name, &request.tags, &change)
        .await
        .map_err(|e| ApiError::from_store(e, ""))?;
    control.refresh().await;
    // The only place the value ever appears: the answer to the caller who minted it.
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "token": minted.token,
            "value": minted.value.expose_secret(),
        })),
    ))
}

pub async fn revoke(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let caller = control.caller(&credentials, AdminRole::Editor)?;
    let store = control.store()?;
    let token = store
        .revoke_token(&id, &Change::by(&caller.name, "revoke token"))
        .await
        .map_err(|e| ApiError::from_store(e, ""))?;
    control.refresh().await;
    Ok(axum::Json(json!({ "token": token })))
}
