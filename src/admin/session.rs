//! Console sessions (docs/console.md): an admin token exchanged once for a session cookie,
//! so the browser keeps no token a script on the page could read. The cookie is `HttpOnly`
//! and `SameSite=Strict`; every call that is not a read also carries the session's CSRF
//! token in `X-CSRF-Token` (which a page of another origin cannot learn), and a call a
//! browser marks as cross-site is refused outright. A session ends `idle_timeout` after its
//! last call, `absolute_timeout` after sign-in, or at sign-out (`admin.sessions`). Sessions
//! live in this instance's memory: a restart signs everyone out, and behind a load balancer
//! a console needs sticky sessions.
//!
//! A session signed in with an admin token follows the token: removed from the config, its
//! sessions end; demoted, they are demoted too.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, Control};
use crate::config::AdminRole;
use crate::identity::admin::{AdminAuth, Caller};

/// The session cookie's name.
pub const COOKIE: &str = "portcullis_session";
/// The header a session's writes carry its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Open sessions one instance keeps; signing in beyond it ends the oldest.
const MAX_SESSIONS: usize = 10_000;

/// What a caller presented to the admin API: a bearer token, or a session cookie with, on a
/// write, its CSRF token. Extracted from every `/v1/` request.
pub struct Credentials {
    method: Method,
    headers: HeaderMap,
}

impl<S: Send + Sync> FromRequestParts<S> for Credentials {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Credentials {
            method: parts.method.clone(),
            headers: parts.headers.clone(),
        })
    }
}

impl Credentials {
    pub fn authorization(&self) -> Option<&[u8]> {
        self.headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)
    }

    /// The session cookie's value, when one was sent.
    fn session_cookie(&self) -> Option<&str> {
        self.cookie(COOKIE)
    }

    /// The value of the cookie `wanted`, when one was sent.
    pub(super) fn cookie(&self, wanted: &str) -> Option<&str> {
        self.headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == wanted)
            .map(|(_, value)| value.trim())
    }

    /// The session cookie, when the call authenticates with it: a bearer token, when
    /// present, is what authenticates.
    fn cookie_in_place_of_bearer(&self) -> Option<&str> {
        self.authorization()
            .is_none()
            .then(|| self.session_cookie())
            .flatten()
    }

    /// Whether the browser says the call comes from a page of another site, or names an
    /// origin other than this server's. Calls from scripts (no `Origin`, no
    /// `Sec-Fetch-Site`) are not cross-site.
    fn cross_site(&self) -> bool {
        let text = |name: &str| self.headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(site) = text("sec-fetch-site")
            && !matches!(site, "same-origin" | "none")
        {
            return true;
        }
        match (text("origin"), text("host")) {
            (Some(origin), Some(host)) => {
                let authority = origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"));
                authority != Some(host)
            }
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    fn is_read(&self) -> bool {
        matches!(self.method, Method::GET | Method::HEAD | Method::OPTIONS)
    }

    /// Whether the call reached the admin server over HTTPS (directly or, by the proxy's
    /// word, through one): then the cookie is `Secure`.
    pub(super) fn over_https(&self) -> bool {
        self.headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
    }
}

/// Who a session acts as.
#[derive(Debug, Clone)]
pub(super) enum SignedIn {
    /// With the admin token of this name (its role is read from the config at each call).
    Token(Arc<str>),
    /// By single sign-on (`admin.oidc`): the person, and the values of their role claim,
    /// mapped to a role again at each call.
    Sso {
        name: Arc<str>,
        claim_values: Vec<String>,
    },
}

struct Session {
    who: SignedIn,
    csrf: String,
    started: Instant,
    last_used: Instant,
    /// Ended by expiry: kept until the next sign-in sweeps it, so that every call with its
    /// cookie (a page's parallel ones too) is told it expired, and a longer timeout in a
    /// reloaded config does not revive it.
    ended: bool,
}

/// Why a session does not authenticate a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    Unknown,
    Expired,
    /// Its token is no longer in the config, or its single sign-on claims no longer map
    /// to a role.
    Revoked,
    CrossSite,
    MissingCsrf,
}

impl SessionError {
    fn into_api(self) -> ApiError {
        let (status, kind, message) = match self {
            SessionError::Unknown => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the console session is not known (signed out, or this instance restarted): \
                 sign in again",
            ),
            SessionError::Expired => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the console session has expired (admin.sessions): sign in again",
            ),
            SessionError::Revoked => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "what this session signed in with no longer grants a role (its admin token \
                 was removed, or admin.oidc or its role mapping changed): sign in again",
            ),
            SessionError::CrossSite => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "refused: the request comes from another site (Origin / Sec-Fetch-Site)",
            ),
            SessionError::MissingCsrf => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "a change made with a session cookie needs the session's CSRF token in \
                 X-CSRF-Token",
            ),
        };
        ApiError::new(status, kind, message)
    }
}

/// The open sessions of this instance, by the SHA-256 of their cookie (the cookie itself is
/// not kept).
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<[u8; 32], Session>>,
    /// Single sign-ons begun and not yet come back, by the SHA-256 of the cookie that
    /// binds each to its browser.
    pending: Mutex<HashMap<[u8; 32], PendingSignIn>>,
}

/// A single sign-on the browser was sent to the issuer for: what its callback must match.
pub(super) struct PendingSignIn {
    pub state: String,
    pub nonce: String,
    pub verifier: secrecy::SecretString,
    pub started: Instant,
}

/// How long a single sign-on may take, and how many may be under way at once.
const PENDING_TTL: Duration = Duration::from_secs(10 * 60);
const MAX_PENDING: usize = 1_000;

pub(super) fn random_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("no randomness from the operating system: {e}"),
        )
    })?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn key(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers a single sign-on begun; the cookie value binding it to this browser.
    pub(super) fn begin_sign_in(&self, pending: PendingSignIn) -> Result<String, ApiError> {
        let binding = random_token()?;
        let mut all = self
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        all.retain(|_, p| p.started.elapsed() < PENDING_TTL);
        if all.len() >= MAX_PENDING
            && let Some(oldest) = all.iter().min_by_key(|(_, p)| p.started).map(|(k, _)| *k)
        {
            all.remove(&oldest);
        }
        all.insert(key(&binding), pending);
        Ok(binding)
    }

    /// The single sign-on `binding` names, taken (each is completed at most once).
    pub(super) fn take_sign_in(&self, binding: &str) -> Option<PendingSignIn> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&key(binding))
            .filter(|p| p.started.elapsed() < PENDING_TTL)
    }

    /// Opens a session; its cookie value and CSRF token.
    pub(super) fn open(
        &self,
        who: SignedIn,
        auth: &AdminAuth,
    ) -> Result<(String, String), ApiError> {
        let cookie = random_token()?;
        let csrf = random_token()?;
        let now = Instant::now();
        let mut open = self.lock();
        open.retain(|_, s| !s.ended && !expired(s, auth, now));
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open.iter().min_by_key(|(_, s)| s.started).map(|(k, _)| *k)
        {
            open.remove(&oldest);
        }
        open.insert(
            key(&cookie),
            Session {
                who,
                csrf: csrf.clone(),
                started: now,
                last_used: now,
                ended: false,
            },
        );
        Ok((cookie, csrf))
    }

    /// The caller a session cookie acts as now, and the session's CSRF token; a write must
    /// also carry that token and come from this origin.
    fn authenticate(
        &self,
        cookie: &str,
        credentials: &Credentials,
        auth: &AdminAuth,
    ) -> Result<(Caller, String), SessionError> {
        let now = Instant::now();
        let mut open = self.lock();
        let key = key(cookie);
        let session = open.get_mut(&key).ok_or(SessionError::Unknown)?;
        if session.ended || expired(session, auth, now) {
            session.ended = true;
            return Err(SessionError::Expired);
        }
        if credentials.cross_site() {
            return Err(SessionError::CrossSite);
        }
        if !credentials.is_read() {
            let sent = credentials
                .headers
                .get(CSRF_HEADER)
                .map(HeaderValue::as_bytes)
                .unwrap_or_default();
            if !bool::from(sent.ct_eq(session.csrf.as_bytes())) {
                return Err(SessionError::MissingCsrf);
            }
        }
        let caller = match &session.who {
            SignedIn::Token(name) => auth.caller_named(name),
            SignedIn::Sso { name, claim_values } => auth
                .oidc
                .as_ref()
                .and_then(|provider| provider.role_of(claim_values))
                .map(|role| Caller {
                    name: name.clone(),
                    role,
                }),
        };
        let Some(caller) = caller else {
            open.remove(&key);
            return Err(SessionError::Revoked);
        };
        session.last_used = now;
        Ok((caller, session.csrf.clone()))
    }

    fn close(&self, cookie: &str) {
        self.lock().remove(&key(cookie));
    }

    /// When the session of `cookie` ends at the latest, as a wall-clock time.
    fn expires_at(&self, cookie: &str, auth: &AdminAuth) -> Option<SystemTime> {
        let open = self.lock();
        let session = open.get(&key(cookie))?;
        let now = Instant::now();
        let end = (session.last_used + auth.sessions.idle_timeout.0)
            .min(session.started + auth.sessions.absolute_timeout.0);
        Some(SystemTime::now() + end.saturating_duration_since(now))
    }
}

fn expired(session: &Session, auth: &AdminAuth, now: Instant) -> bool {
    now.duration_since(session.last_used) >= auth.sessions.idle_timeout.0
        || now.duration_since(session.started) >= auth.sessions.absolute_timeout.0
}

impl Control {
    /// Authenticates the caller: by its bearer token, or else by its session cookie.
    pub(super) fn authenticate(&self, credentials: &Credentials) -> Result<Caller, ApiError> {
        match credentials.cookie_in_place_of_bearer() {
            Some(cookie) => self.session(cookie, credentials).map(|(caller, _)| caller),
            None => self.authenticate_bearer(credentials.authorization()),
        }
    }

    /// The session `cookie` names, checked for this call (expiry, origin, the CSRF token of
    /// a write): the caller it acts as and its CSRF token.
    fn session(
        &self,
        cookie: &str,
        credentials: &Credentials,
    ) -> Result<(Caller, String), ApiError> {
        self.sessions
            .authenticate(cookie, credentials, &self.live.snapshot().admin)
            .map_err(SessionError::into_api)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    token: String,
}

/// `POST /v1/session`: an admin token for a session cookie. The answer holds the CSRF
/// token the console sends with every change.
pub async fn sign_in(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // A sign-in posted by another site's page (login CSRF) would sign the browser in as
    // the attacker's token.
    if credentials.cross_site() {
        return Err(SessionError::CrossSite.into_api());
    }
    let SignIn { token } = super::error::parse_body(&body)?;
    let snapshot = control.live.snapshot();
    let caller = snapshot.admin.authenticate_token(&token).map_err(|_| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin token is not recognised (admin tokens are set in the config's \
             `admin.tokens`)",
        )
    })?;
    let (cookie, csrf) = control
        .sessions
        .open(SignedIn::Token(caller.name.clone()), &snapshot.admin)?;
    tracing::info!(operator = %caller.name, role = caller.role.as_str(), "console sign-in");
    let lifetime = snapshot.admin.sessions.absolute_timeout.0;
    let set_cookie = cookie_header(&cookie, lifetime, credentials.over_https());
    let body = session_body(&caller, &csrf, &control, &cookie, &snapshot.admin);
    Ok((
        StatusCode::CREATED,
        [(header::SET_COOKIE, set_cookie), no_store()],
        axum::Json(body),
    )
        .into_response())
}

/// `GET /v1/session`: who the session (or bearer token) acts as, and the session's CSRF
/// token.
pub async fn current(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
) -> Result<Response, ApiError> {
    if let Some(cookie) = credentials.cookie_in_place_of_bearer() {
        let (caller, csrf) = control.session(cookie, &credentials)?;
        let body = session_body(
            &caller,
            &csrf,
            &control,
            cookie,
            &control.live.snapshot().admin,
        );
        return Ok(([no_store()], axum::Json(body)).into_response());
    }
    let caller = control.authenticate_bearer(credentials.authorization())?;
    Ok((
        [no_store()],
        axum::Json(json!({"name": &*caller.name, "role": caller.role.as_str(),
                          "session": false})),
    )
        .into_response())
}

/// `DELETE /v1/session`: signs out (a write: it needs the CSRF token).
pub async fn sign_out(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
) -> Result<Response, ApiError> {
    let Some(cookie) = credentials.session_cookie() else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "no console session to sign out of",
        ));
    };
    let (caller, _) = control.session(cookie, &credentials)?;
    control.sessions.close(cookie);
    tracing::info!(operator = %caller.name, "console sign-out");
    Ok((
        StatusCode::NO_CONTENT,
        [
            (
                header::SET_COOKIE,
                cookie_header("", Duration::ZERO, credentials.over_https()),
            ),
            no_store(),
        ],
    )
        .into_response())
}

fn session_body(
    caller: &Caller,
    csrf: &str,
    control: &Control,
    cookie: &str,
    auth: &AdminAuth,
) -> serde_json::Value {
    let expires_at = control
        .sessions
        .expires_at(cookie, auth)
        .map(|t| humantime::format_rfc3339_seconds(t).to_string());
    json!({
        "name": &*caller.name,
        "role": caller.role.as_str(),
        "session": true,
        "csrf_token": csrf,
        "expires_at": expires_at,
        "idle_timeout_seconds": auth.sessions.idle_timeout.0.as_secs(),
        "can": {
            "edit_policies": caller.role >= AdminRole::Editor,
            "edit_secrets": caller.role >= AdminRole::Admin,
        },
    })
}

pub(super) fn cookie_header(value: &str, lifetime: Duration, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        lifetime.as_secs()
    );
    HeaderValue::from_str(&text).expect("a cookie of base64url characters is a header value")
}

pub(super) fn no_store() -> (header::HeaderName, HeaderValue) {
    (header::CACHE_CONTROL, HeaderValue::from_static("no-store"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(method: Method, headers: &[(&str, &str)]) -> Credentials {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        Credentials {
            method,
            headers: map,
        }
    }

    fn auth(idle: u64, absolute: u64) -> AdminAuth {
        let config: crate::config::AdminConfig = serde_norway::from_str(&format!(
            "tokens: [{{name: alice, role: editor, token: {{env: T}}}}]\n\
             sessions: {{idle_timeout: {idle}s, absolute_timeout: {absolute}s}}"
        ))
        .unwrap();
        AdminAuth::compile(&config, &|_| Some("alice-token".into())).unwrap()
    }

    #[test]
    fn the_cookie_is_read_among_others() {
        let c = credentials(
            Method::GET,
            &[("cookie", "a=1; portcullis_session=abc ; b=2")],
        );
        assert_eq!(c.session_cookie(), Some("abc"));
        let c = credentials(Method::GET, &[("cookie", "xportcullis_session=abc")]);
        assert_eq!(c.session_cookie(), None);
    }

    #[test]
    fn cross_site_calls_are_told_by_origin_or_fetch_metadata() {
        let same = credentials(
            Method::POST,
            &[
                ("host", "127.0.0.1:9901"),
                ("origin", "http://127.0.0.1:9901"),
            ],
        );
        assert!(!same.cross_site());
        let other = credentials(
            Method::POST,
            &[
                ("host", "127.0.0.1:9901"),
                ("origin", "http://evil.example"),
            ],
        );
        assert!(other.cross_site());
        let null = credentials(Method::POST, &[("host", "h"), ("origin", "null")]);
        assert!(null.cross_site());
        let fetch = credentials(Method::POST, &[("sec-fetch-site", "cross-site")]);
        assert!(fetch.cross_site());
        let sibling = credentials(Method::POST, &[("sec-fetch-site", "same-site")]);
        assert!(
            sibling.cross_site(),
            "another origin of the same site is not trusted"
        );
        let script = credentials(Method::POST, &[("host", "h")]);
        assert!(!script.cross_site());
    }

    #[test]
    fn a_write_needs_the_csrf_token_and_a_read_does_not() {
        let auth = auth(60, 600);
        let sessions = Sessions::default();
        let (cookie, csrf) = sessions
            .open(SignedIn::Token(Arc::from("alice")), &auth)
            .unwrap();
        let read = credentials(Method::GET, &[]);
        let (caller, _) = sessions.authenticate(&cookie, &read, &auth).unwrap();
        assert_eq!((&*caller.name, caller.role), ("alice", AdminRole::Editor));
        let write = credentials(Method::POST, &[]);
        assert_eq!(
            sessions.authenticate(&cookie, &write, &auth).err(),
            Some(SessionError::MissingCsrf)
        );
        let wrong = credentials(Method::PUT, &[(CSRF_HEADER, "x")]);
        assert_eq!(
            sessions.authenticate(&cookie, &wrong, &auth).err(),
            Some(SessionError::MissingCsrf)
        );
        let right = credentials(Method::DELETE, &[(CSRF_HEADER, csrf.as_str())]);
        assert!(sessions.authenticate(&cookie, &right, &auth).is_ok());
        assert_eq!(
            sessions.authenticate("made-up", &read, &auth).err(),
            Some(SessionError::Unknown)
        );
        sessions.close(&cookie);
        assert_eq!(
            sessions.authenticate(&cookie, &read, &auth).err(),
            Some(SessionError::Unknown)
        );
    }

    #[test]
    fn a_session_ends_when_idle_and_follows_its_token() {
        let sessions = Sessions::default();
        let (cookie, _) = sessions
            .open(SignedIn::Token(Arc::from("alice")), &auth(60, 600))
            .unwrap();
        let read = credentials(Method::GET, &[]);
        // The same session judged with a zero-length idle window is over.
        let mut instant = auth(60, 600);
        instant.sessions.idle_timeout.0 = Duration::ZERO;
        assert_eq!(
            sessions.authenticate(&cookie, &read, &instant).err(),
            Some(SessionError::Expired)
        );
        assert_eq!(
            sessions.authenticate(&cookie, &read, &auth(60, 600)).err(),
            Some(SessionError::Expired),
            "an expired session stays expired, whatever the timeouts become"
        );
        let (cookie, _) = sessions
            .open(SignedIn::Token(Arc::from("alice")), &auth(60, 600))
            .unwrap();
        let mut ended = auth(60, 600);
        ended.sessions.absolute_timeout.0 = Duration::ZERO;
        assert_eq!(
            sessions.authenticate(&cookie, &read, &ended).err(),
            Some(SessionError::Expired),
            "however recently used, a session ends at its absolute timeout"
        );
        let (cookie, _) = sessions
            .open(SignedIn::Token(Arc::from("alice")), &auth(60, 600))
            .unwrap();
        let without_alice = AdminAuth::default();
        assert_eq!(
            sessions.authenticate(&cookie, &read, &without_alice).err(),
            Some(SessionError::Revoked)
        );
    }
}
