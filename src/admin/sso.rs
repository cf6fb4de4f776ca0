//! Console single sign-on (`admin.oidc`, docs/console.md): `GET /v1/session/oidc` sends the
//! browser to the issuer, and the issuer sends it back to `GET /v1/session/oidc/callback`,
//! which opens a console session like a token sign-in.
//!
//! The callback comes from the issuer's site, so it cannot be refused as cross-site; what
//! binds it to the browser that began the sign-in is a cookie set when it began
//! (`SameSite=Lax`, so the issuer's redirect carries it) naming the pending sign-in whose
//! `state` the callback must return. A code obtained elsewhere (an attacker's own sign-in,
//! planted in a victim's browser) finds no pending sign-in of its state; a code stolen from
//! the redirect is useless without the PKCE verifier, which never leaves this server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use subtle::ConstantTimeEq;

use super::session::{Credentials, PendingSignIn, SignedIn, cookie_header, no_store};
use super::{ApiError, Control};
use crate::identity::oidc::OidcError;

/// The cookie binding a pending sign-in to its browser.
pub const BINDING_COOKIE: &str = "portcullis_oidc";
const BINDING_PATH: &str = "/v1/session/oidc";

/// `GET /v1/session/providers` (no credentials): how the console can sign in.
pub async fn providers(State(control): State<Arc<Control>>) -> Response {
    let snapshot = control.live.snapshot();
    let oidc = snapshot.admin.oidc.as_ref().map(|provider| {
        json!({"label": provider.config.label, "issuer": provider.config.issuer,
               "start": BINDING_PATH})
    });
    (
        [no_store()],
        axum::Json(json!({"token": true, "oidc": oidc})),
    )
        .into_response()
}

fn not_configured() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "single sign-on is not configured (admin.oidc)",
    )
}

fn binding_cookie(value: &str, lifetime: Duration, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!(
        "{BINDING_COOKIE}={value}; Path={BINDING_PATH}; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        lifetime.as_secs()
    );
    HeaderValue::from_str(&text).expect("a cookie of base64url characters is a header value")
}

/// Whether cookies set by the callback must be `Secure`: the browser reaches it over
/// HTTPS by the config's word or the proxy's.
fn secure(control: &Control, credentials: &Credentials) -> bool {
    credentials.over_https()
        || control
            .live
            .snapshot()
            .admin
            .oidc
            .as_ref()
            .is_some_and(|p| p.config.redirect_url.starts_with("https://"))
}

/// `GET /v1/session/oidc`: begins a sign-in (state, nonce, PKCE) and redirects to the
/// issuer.
pub async fn begin(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
) -> Result<Response, ApiError> {
    let Some(provider) = control.live.snapshot().admin.oidc.clone() else {
        return Err(not_configured());
    };
    let authorization = provider.authorization().await.map_err(|e| {
        tracing::warn!(error = %e, "single sign-on could not begin");
        ApiError::new(StatusCode::BAD_GATEWAY, "unavailable", e.to_string())
    })?;
    let binding = control.sessions.begin_sign_in(PendingSignIn {
        state: authorization.state,
        nonce: authorization.nonce,
        verifier: authorization.verifier,
        started: Instant::now(),
    })?;
    let location = HeaderValue::from_str(&authorization.url).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "unavailable",
            "the issuer's authorization endpoint is not a usable URL",
        )
    })?;
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, location),
            (
                header::SET_COOKIE,
                binding_cookie(
                    &binding,
                    Duration::from_secs(600),
                    secure(&control, &credentials),
                ),
            ),
            no_store(),
        ],
    )
        .into_response())
}

/// The callback's query: `code` and `state`, or `error` (each read once; a repeated or
/// undecodable parameter reads as absent or lossily, and fails the checks below).
#[derive(Default)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

impl Callback {
    fn parse(query: Option<&str>) -> Callback {
        let mut callback = Callback::default();
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let slot = match &*name {
                "code" => &mut callback.code,
                "state" => &mut callback.state,
                "error" => &mut callback.error,
                _ => continue,
            };
            if slot.is_some() {
                // A parameter twice: neither is trusted.
                *slot = Some(String::new());
            } else {
                *slot = Some(value.into_owned());
            }
        }
        callback
    }
}

/// A failed sign-in, as a plain-text page the person reads (the console is one link away).
fn refusal(status: StatusCode, message: &str, secure: bool) -> Response {
    let body = format!("Sign-in failed: {message}\n\nReturn to the console: /\n");
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (
                header::HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::SET_COOKIE,
                binding_cookie("", Duration::ZERO, secure),
            ),
            no_store(),
        ],
        body,
    )
        .into_response()
}

/// `GET /v1/session/oidc/callback`: completes a sign-in and opens a session.
pub async fn callback(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    RawQuery(query): RawQuery,
) -> Response {
    let callback = Callback::parse(query.as_deref());
    let secure = secure(&control, &credentials);
    let snapshot = control.live.snapshot();
    let Some(provider) = snapshot.admin.oidc.clone() else {
        return not_configured().into_response();
    };
    let refuse = |status: StatusCode, message: &str| {
        tracing::warn!(reason = message, "single sign-on refused");
        refusal(status, message, secure)
    };
    let pending = credentials
        .cookie(BINDING_COOKIE)
        .and_then(|binding| control.sessions.take_sign_in(binding));
    let Some(pending) = pending else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "this browser has no sign-in under way (it was begun in another browser, took \
             longer than 10 minutes, or was already completed): sign in again",
        );
    };
    let returned = callback.state.unwrap_or_default();
    if !bool::from(returned.as_bytes().ct_eq(pending.state.as_bytes())) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the issuer's answer is not for the sign-in this browser began (state mismatch)",
        );
    }
    if let Some(error) = callback.error {
        // Only an error code is repeated: the description is the URL's, anyone's to write.
        let code = if !error.is_empty()
            && error.len() <= 64
            && error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            error
        } else {
            "an unreadable error".to_owned()
        };
        return refuse(
            StatusCode::UNAUTHORIZED,
            &format!("the identity provider refused the sign-in: {code}"),
        );
    }
    let Some(code) = callback.code.filter(|c| !c.is_empty()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the issuer's answer has no authorization code",
        );
    };
    let person = match provider
        .complete(&code, &pending.verifier, &pending.nonce)
        .await
    {
        Ok(person) => person,
        Err(e) => {
            let status = match e {
                OidcError::Issuer(_) => StatusCode::BAD_GATEWAY,
                OidcError::Token(_) => StatusCode::UNAUTHORIZED,
                OidcError::NoRole(_) => StatusCode::FORBIDDEN,
            };
            return refuse(status, &e.to_string());
        }
    };
    let role = provider
        .role_of(&person.claim_values)
        .expect("a person is returned only with a mapped role");
    let who = SignedIn::Sso {
        name: Arc::from(person.name.as_str()),
        claim_values: person.claim_values,
    };
    let (cookie, _) = match control.sessions.open(who, &snapshot.admin) {
        Ok(opened) => opened,
        Err(e) => return e.into_response(),
    };
    tracing::info!(operator = %person.name, role = role.as_str(), "console sign-in (single sign-on)");
    let mut response = (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, HeaderValue::from_static("/")),
            no_store(),
        ],
    )
        .into_response();
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        cookie_header(&cookie, snapshot.admin.sessions.absolute_timeout.0, secure),
    );
    headers.append(
        header::SET_COOKIE,
        binding_cookie("", Duration::ZERO, secure),
    );
    response
}
