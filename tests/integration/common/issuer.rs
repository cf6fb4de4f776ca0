//! A stand-in OpenID Connect issuer for the console's single sign-on: discovery, a JWKS
//! with the EC fixture key, an authorization page with one button per person (as dex's
//! mock connector), and a token endpoint that checks the client, the redirect URI and the
//! PKCE verifier against the challenge, and issues ES256 ID tokens. What it refuses is
//! kept in `rejections()`; `forge()` makes it issue a bad ID token of a chosen kind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::backends::{Answer, Received, Server, decode_pairs, fixture_key, pem_der, unix_now};

/// A person the issuer can sign in.
#[derive(Clone)]
pub struct Person {
    pub email: String,
    pub groups: Vec<String>,
}

impl Person {
    pub fn new(email: &str, groups: &[&str]) -> Person {
        Person {
            email: email.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }
}

/// What is wrong with the ID tokens the issuer hands out, for the tests that play a
/// compromised or confused issuer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Forgery {
    /// Issued to another client.
    OtherAudience,
    /// Carrying a nonce other than the one of the sign-in.
    OtherNonce,
    /// Expired an hour ago.
    Expired,
    /// Signed with a key that is not in the JWKS, under the JWKS key's `kid`.
    UnknownKey,
    /// `HS256` with the client secret as the key.
    SymmetricWithClientSecret,
}

struct Authorizing {
    redirect_uri: String,
    state: String,
    nonce: String,
    challenge: String,
}

struct IssuerState {
    url: String,
    client_id: String,
    client_secret: Option<String>,
    redirect_uri: String,
    people: Vec<Person>,
    /// Authorization requests shown, by id.
    requests: HashMap<String, Authorizing>,
    /// Codes issued, not yet exchanged: (person, the request).
    codes: HashMap<String, (Person, Authorizing)>,
    forgery: Option<Forgery>,
    counter: u64,
    rejections: Vec<String>,
    id_tokens: Vec<String>,
}

pub struct Issuer {
    server: Server,
    state: Arc<Mutex<IssuerState>>,
}

const KID: &str = "stand-in-es256";

impl Issuer {
    /// An issuer for the client `client_id` (with `client_secret`, when confidential) whose
    /// one registered redirect URI is `redirect_uri`.
    pub fn start(
        client_id: &str,
        client_secret: Option<&str>,
        redirect_uri: &str,
        people: Vec<Person>,
    ) -> Issuer {
        let state = Arc::new(Mutex::new(IssuerState {
            url: String::new(),
            client_id: client_id.into(),
            client_secret: client_secret.map(str::to_owned),
            redirect_uri: redirect_uri.into(),
            people,
            requests: HashMap::new(),
            codes: HashMap::new(),
            forgery: None,
            counter: 0,
            rejections: Vec::new(),
            id_tokens: Vec::new(),
        }));
        let shared = state.clone();
        let server = Server::start(Arc::new(move |r: &Received| answer(&shared, r)));
        state.lock().unwrap().url = server.url();
        Issuer { server, state }
    }

    /// The issuer identifier (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The registered redirect URI, changed (when the console's port is known only later).
    pub fn set_redirect_uri(&self, uri: &str) {
        self.state.lock().unwrap().redirect_uri = uri.into();
    }

    pub fn forge(&self, forgery: Option<Forgery>) {
        self.state.lock().unwrap().forgery = forgery;
    }

    pub fn rejections(&self) -> Vec<String> {
        self.state.lock().unwrap().rejections.clone()
    }

    /// Every ID token issued, in order.
    pub fn id_tokens(&self) -> Vec<String> {
        self.state.lock().unwrap().id_tokens.clone()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn answer(shared: &Mutex<IssuerState>, r: &Received) -> Answer {
    let mut state = shared.lock().unwrap();
    let result = match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/.well-known/openid-configuration") => Ok(Answer::json(
            200,
            json!({
                "issuer": state.url,
                "authorization_endpoint": format!("{}/authorize", state.url),
                "token_endpoint": format!("{}/token", state.url),
                "jwks_uri": format!("{}/jwks", state.url),
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "id_token_signing_alg_values_supported": ["ES256"],
                "subject_types_supported": ["public"],
            }),
        )),
        ("GET", "/jwks") => {
            let spki = pem_der(&fixture_key("ec-public.pem"));
            let point = &spki[spki.len() - 65..];
            Ok(Answer::json(
                200,
                json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": KID, "use": "sig",
                                 "alg": "ES256", "x": b64(&point[1..33]),
                                 "y": b64(&point[33..65])}]}),
            ))
        }
        ("GET", "/authorize") => authorize_page(&mut state, r),
        ("POST", "/authorize") => approve(&mut state, r),
        ("POST", "/token") => token(&mut state, r),
        _ => Err((404, format!("{} {}", r.method, r.path))),
    };
    match result {
        Ok(answer) => answer,
        Err((status, why)) => {
            state.rejections.push(why.clone());
            Answer::json(
                status,
                json!({"error": "invalid_request", "error_description": "refused"}),
            )
        }
    }
}

/// `GET /authorize`: checks the request and shows one button per person.
fn authorize_page(state: &mut IssuerState, r: &Received) -> Result<Answer, (u16, String)> {
    let param = |name: &str| r.query_param(name).unwrap_or_default();
    if param("client_id") != state.client_id {
        return Err((400, format!("client_id {:?}", param("client_id"))));
    }
    if param("redirect_uri") != state.redirect_uri {
        return Err((400, format!("redirect_uri {:?}", param("redirect_uri"))));
    }
    if param("response_type") != "code" || param("code_challenge_method") != "S256" {
        return Err((400, "response_type or code_challenge_method".into()));
    }
    if !param("scope").split(' ').any(|s| s == "openid") {
        return Err((400, format!("scope {:?}", param("scope"))));
    }
    for name in ["state", "nonce", "code_challenge"] {
        if param(name).len() < 16 {
            return Err((400, format!("{name} missing or short")));
        }
    }
    state.counter += 1;
    let id = format!("req-{}", state.counter);
    state.requests.insert(
        id.clone(),
        Authorizing {
            redirect_uri: param("redirect_uri"),
            state: param("state"),
            nonce: param("nonce"),
            challenge: param("code_challenge"),
        },
    );
    let buttons: String = state
        .people
        .iter()
        .map(|p| {
            format!(
                "<button name=\"person\" value=\"{0}\">Sign in as {0}</button>\n",
                html_escape(&p.email)
            )
        })
        .collect();
    Ok(Answer::html(
        200,
        format!(
            "<!doctype html><html lang=\"en\"><title>Stand-in issuer</title><link rel=\"icon\" href=\"data:,\"><main>\
             <h1>Stand-in issuer</h1><form method=\"post\" action=\"/authorize\">\
             <input type=\"hidden\" name=\"request\" value=\"{id}\">{buttons}</form></main></html>"
        ),
    ))
}

/// `POST /authorize`: the person chose; back to the client with a code.
fn approve(state: &mut IssuerState, r: &Received) -> Result<Answer, (u16, String)> {
    let form: HashMap<String, String> = decode_pairs(&r.body).into_iter().collect();
    let request = form
        .get("request")
        .and_then(|id| state.requests.remove(id))
        .ok_or((400, "unknown authorization request".to_owned()))?;
    let person = state
        .people
        .iter()
        .find(|p| Some(&p.email) == form.get("person"))
        .cloned()
        .ok_or((400, "unknown person".to_owned()))?;
    state.counter += 1;
    let code = format!("code-{}-{}", state.counter, unix_now());
    let location = format!(
        "{}?code={}&state={}",
        request.redirect_uri,
        super::backends::url_form_encode(&code),
        super::backends::url_form_encode(&request.state)
    );
    state.codes.insert(code, (person, request));
    Ok(Answer::redirect(location))
}

/// `POST /token`: the code, once, with the verifier of its challenge.
fn token(state: &mut IssuerState, r: &Received) -> Result<Answer, (u16, String)> {
    let field = |name: &str| r.field(name).unwrap_or_default();
    if field("grant_type") != "authorization_code" {
        return Err((400, format!("grant_type {:?}", field("grant_type"))));
    }
    match &state.client_secret {
        Some(secret) => {
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{secret}", state.client_id))
            );
            if r.header("authorization") != Some(expected.as_str()) {
                return Err((401, "client authentication".into()));
            }
        }
        None => {
            if field("client_id") != state.client_id {
                return Err((401, format!("client_id {:?}", field("client_id"))));
            }
        }
    }
    let (person, request) = state
        .codes
        .remove(&field("code"))
        .ok_or((400, "unknown or reused code".to_owned()))?;
    if field("redirect_uri") != request.redirect_uri {
        return Err((400, "redirect_uri differs from the authorization's".into()));
    }
    let challenge = b64(&Sha256::digest(field("code_verifier").as_bytes()));
    if challenge != request.challenge {
        return Err((
            400,
            "code_verifier does not match the code_challenge".into(),
        ));
    }
    let now = unix_now();
    let mut claims = json!({
        "iss": state.url, "sub": format!("sub-{}", person.email), "aud": state.client_id,
        "iat": now, "exp": now + 300, "nonce": request.nonce,
        "email": person.email, "groups": person.groups,
    });
    let ec_key = EncodingKey::from_ec_der(&pem_der(&fixture_key("ec-private.pem")));
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(KID.into());
    let id_token = match state.forgery {
        None => jsonwebtoken::encode(&header, &claims, &ec_key),
        Some(forgery) => {
            match forgery {
                Forgery::OtherAudience => claims["aud"] = "another-client".into(),
                Forgery::OtherNonce => claims["nonce"] = "a-nonce-of-another-sign-in".into(),
                Forgery::Expired => claims["exp"] = (now - 3600).into(),
                Forgery::UnknownKey | Forgery::SymmetricWithClientSecret => {}
            }
            match forgery {
                Forgery::UnknownKey => {
                    // A fresh P-256 key of the same shape, not published in the JWKS.
                    let other =
                        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
                    let key = EncodingKey::from_ec_der(&other.serialize_der());
                    jsonwebtoken::encode(&header, &claims, &key)
                }
                Forgery::SymmetricWithClientSecret => {
                    let mut hs = Header::new(Algorithm::HS256);
                    hs.kid = Some(KID.into());
                    let secret = state.client_secret.clone().unwrap_or_default();
                    jsonwebtoken::encode(&hs, &claims, &EncodingKey::from_secret(secret.as_bytes()))
                }
                _ => jsonwebtoken::encode(&header, &claims, &ec_key),
            }
        }
    }
    .unwrap();
    state.id_tokens.push(id_token.clone());
    Ok(Answer::json(
        200,
        json!({"access_token": format!("at-{now}"), "token_type": "Bearer",
               "expires_in": 300, "id_token": id_token}),
    ))
}

/// The value of a JWT's claim, unverified (for assertions about what was issued).
pub fn claim(jwt: &str, name: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice::<Value>(&bytes).unwrap()[name].clone()
}
