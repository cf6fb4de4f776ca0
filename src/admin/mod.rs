//! The admin HTTP server: `/healthz`, `/readyz`, `/metrics`, and the control plane's API
//! under `/v1/` (docs/api.md): policies and secrets with their history, the playground,
//! impact previews, fire counts, audit search and enrollment tokens.

mod approvals;
mod definitions;
mod error;
mod insight;
pub mod openapi;
mod playground;
mod session;
mod sso;
mod tokens;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::json;

pub use error::ApiError;
pub use session::{COOKIE as SESSION_COOKIE, CSRF_HEADER};

use session::Credentials;

use crate::config::AdminRole;
use crate::identity::admin::{AuthError, Caller};
use crate::live::{Live, PolicySource};
use crate::policy::PolicyConfig;
use crate::store::Store;
use crate::transforms::secrets::SecretConfig;

/// What the admin server works with: the live snapshot and its sources, and the store once
/// it is open.
pub struct Control {
    pub live: Arc<Live>,
    store: OnceLock<Store>,
    sessions: session::Sessions,
}

impl Control {
    pub fn new(live: Arc<Live>) -> Control {
        Control {
            live,
            store: OnceLock::new(),
            sessions: session::Sessions::default(),
        }
    }

    /// Called once the store is open.
    pub fn set_store(&self, store: Store) {
        let _ = self.store.set(store);
    }

    /// The store, or why there is none to use.
    fn store(&self) -> Result<&Store, ApiError> {
        if let Some(store) = self.store.get() {
            return Ok(store);
        }
        Err(if self.live.policy_source() == PolicySource::Store {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the policy store has not been reached yet; try again shortly",
            )
        } else {
            ApiError::new(
                StatusCode::CONFLICT,
                "no_store",
                "this gateway reads its policies from its config file: edit the file, or \
                 configure a `store` to manage them through the API",
            )
        })
    }

    /// Reads the store and publishes its contents, so a change made through this
    /// instance decides its next request; returns the live store revision.
    async fn refresh(&self) -> Option<i64> {
        let store = self.store.get()?;
        self.live.refresh_from(store).await
    }

    /// Authenticates the caller (an admin token, or a console session: see
    /// [`session`]) and checks it holds `role`: 401 without a valid token or session, 403
    /// with one whose role is too low or a session's write without its CSRF token.
    fn caller(&self, credentials: &Credentials, role: AdminRole) -> Result<Caller, ApiError> {
        let caller = self.authenticate(credentials)?;
        if caller.role < role {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "admin token {:?} is {} {}: this call needs {} {} (`admin.tokens[].role`)",
                    &*caller.name,
                    article(caller.role),
                    caller.role.as_str(),
                    article(role),
                    role.as_str()
                ),
            ));
        }
        Ok(caller)
    }

    /// Authenticates an `Authorization: Bearer` header value.
    fn authenticate_bearer(&self, presented: Option<&[u8]>) -> Result<Caller, ApiError> {
        let snapshot = self.live.snapshot();
        snapshot.admin.authenticate(presented).map_err(|e| {
            let mut error = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string());
            if e == AuthError::Unknown {
                error
                    .message
                    .push_str(" (admin tokens are set in the config's `admin.tokens`)");
            }
            error
        })
    }
}

fn article(role: AdminRole) -> &'static str {
    match role {
        AdminRole::Viewer => "a",
        AdminRole::Editor | AdminRole::Admin => "an",
    }
}

pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/status", get(status))
        .route(
            "/v1/session",
            get(session::current)
                .post(session::sign_in)
                .delete(session::sign_out),
        )
        .route("/v1/session/providers", get(sso::providers))
        .route("/v1/session/oidc", get(sso::begin))
        .route("/v1/session/oidc/callback", get(sso::callback))
        .merge(definitions::routes::<PolicyConfig>("/v1/policies"))
        .merge(definitions::routes::<SecretConfig>("/v1/secrets"))
        .merge(definitions::status_routes("/v1/policies"))
        .route("/v1/playground", post(playground::playground))
        .route("/v1/impact", post(playground::impact))
        .route("/v1/secret-sources/test", post(playground::test_source))
        .route("/v1/fire-counts", get(insight::fire_counts))
        .route("/v1/limits", get(insight::limits))
        .route("/v1/budgets", get(insight::budgets))
        .route("/v1/audit", get(insight::audit_search))
        .route("/v1/tokens", get(tokens::list).post(tokens::mint))
        .route("/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/v1/approvals", get(approvals::list))
        .route("/v1/approvals/{approval}", get(approvals::get))
        .route("/v1/approvals/{approval}/approve", post(approvals::approve))
        .route("/v1/approvals/{approval}/deny", post(approvals::deny))
        .route("/v1/approvals/{approval}/revoke", post(approvals::revoke))
        .merge(crate::console::routes())
        .fallback(not_found)
        .with_state(control)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint: see /v1/openapi.json")
}

/// Ready once a policy snapshot is live — with a store, once the store was first read —
/// and until shutdown begins.
async fn readyz(State(control): State<Arc<Control>>) -> impl IntoResponse {
    let shared = &control.live.shared;
    let snapshot = shared.snapshot.load();
    let draining = shared.draining.load(std::sync::atomic::Ordering::Relaxed);
    let loaded = snapshot.unavailable.is_none();
    let ready = loaded && !draining;
    let mut body = json!({
        "ready": ready,
        "draining": draining,
        "config_version": &*snapshot.version,
        "policies_active": snapshot.policies.active_count(),
    });
    if control.live.policy_source() == PolicySource::Store {
        body["store_revision"] = json!(snapshot.store_revision);
        if !loaded {
            body["reason"] = json!("the policy store has not been read yet");
        }
        // Ready all the same: everything else in the store applies (docs/store.md). This
        // endpoint needs no token: which objects, not why (the log and `/v1/` say why).
        let faults = control.live.faults();
        if !faults.is_empty() {
            let named: Vec<serde_json::Value> = faults
                .iter()
                .map(|f| {
                    json!({"kind": f.kind, "name": f.name, "version": f.version,
                           "outcome": f.outcome})
                })
                .collect();
            body["store_faults"] = json!(named);
        }
    }
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        axum::Json(body),
    )
}

async fn metrics(State(control): State<Arc<Control>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        control.live.shared.metrics.render(),
    )
}

/// Which snapshot this instance decides with, and where its policies come from.
async fn status(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    control.caller(&credentials, AdminRole::Viewer)?;
    let snapshot = control.live.snapshot();
    let store = control.store.get();
    Ok(axum::Json(json!({
        "config_version": &*snapshot.version,
        "policies": snapshot.policies.policies().len(),
        "policies_active": snapshot.policies.active_count(),
        "source": match control.live.policy_source() {
            PolicySource::Store => "store",
            PolicySource::File => "file",
        },
        "store": store.map(|s| json!({"backend": s.backend(), "url": s.display_url()})),
        "store_revision": snapshot.store_revision,
        "loaded": snapshot.unavailable.is_none(),
    })))
}
