//! `type: onepassword_connect`: a field of an item, read from a 1Password Connect server.
//!
//! - The vault and the item are named by id (26 lowercase letters and digits) or by name
//!   and title, looked up with `GET /v1/vaults?filter=name eq "…"` and
//!   `GET /v1/vaults/{id}/items?filter=title eq "…"`. Looked-up ids are remembered; they
//!   are looked up again when the item is gone (renamed or recreated).
//! - `GET /v1/vaults/{vault}/items/{item}`, then the field whose `label` or `id` is
//!   `field` (case-insensitive); for `password`, the field with purpose `PASSWORD` when
//!   no label matches.
//! - Every request carries `Authorization: Bearer <token>`.

use std::sync::{Arc, Mutex};

use reqwest::Url;
use reqwest::header::HeaderValue;

use super::http::{clip, parse_url, read_body, request_failed, sensitive_header};
use super::{CompiledSource, Fetched, SourceContext};
use crate::secrets::{SecretValue, SourceCache, SourceError};
use crate::vocab::FieldError;

pub struct ConnectSource {
    http: reqwest::Client,
    base: Url,
    token: Arc<CompiledSource>,
    vault: String,
    item: String,
    field: String,
    /// The vault and item ids, once known.
    resolved: Mutex<Option<Ids>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ids {
    vault: String,
    item: String,
    /// Whether a name lookup produced them (so a 404 is worth a new lookup).
    looked_up: bool,
}

/// A failed request, with the HTTP status when there was one.
struct Failure {
    status: Option<u16>,
    error: SourceError,
}

impl From<SourceError> for Failure {
    fn from(error: SourceError) -> Failure {
        Failure {
            status: None,
            error,
        }
    }
}

impl ConnectSource {
    pub fn new(
        url: &str,
        token: Arc<CompiledSource>,
        vault: &str,
        item: &str,
        field: &str,
        ctx: &SourceContext,
    ) -> Result<ConnectSource, Vec<FieldError>> {
        let mut errors = Vec::new();
        let base = parse_url("url", url, false, &mut errors);
        for (name, value) in [("vault", vault), ("item", item), ("field", field)] {
            if value.trim().is_empty() {
                errors.push(FieldError::new(name, "must not be empty"));
            }
        }
        let (Some(base), true) = (base, errors.is_empty()) else {
            return Err(errors);
        };
        Ok(ConnectSource {
            http: ctx.http.clone(),
            base,
            token,
            vault: vault.to_owned(),
            item: item.to_owned(),
            field: field.to_owned(),
            resolved: Mutex::new(None),
        })
    }

    pub async fn fetch(&self, cache: &SourceCache) -> Result<Fetched, SourceError> {
        let token = Box::pin(cache.resolve(&self.token))
            .await
            .map_err(|e| SourceError::new(format!("token: {e}")))?;
        let auth = sensitive_header(
            &SecretValue::new(format!("Bearer {}", token.expose())),
            "token",
        )?;
        let known = self.resolved.lock().ok().and_then(|r| r.clone());
        let ids = match known {
            Some(ids) => ids,
            None => self.look_up(&auth).await?,
        };
        let item = match self.get_item(&auth, &ids).await {
            Err(Failure {
                status: Some(404), ..
            }) if ids.looked_up => {
                // Renamed or recreated: look the names up again, once.
                self.forget();
                let ids = self.look_up(&auth).await?;
                self.get_item(&auth, &ids).await
            }
            other => other,
        }
        .map_err(|f| f.error)?;
        pick_field(&item, &self.field).map(|v| Fetched::value(SecretValue::new(v)))
    }

    fn forget(&self) {
        if let Ok(mut r) = self.resolved.lock() {
            *r = None;
        }
    }

    /// Finds the vault and item ids (by id as written, or by name), and remembers them.
    async fn look_up(&self, auth: &HeaderValue) -> Result<Ids, SourceError> {
        let mut looked_up = false;
        let vault = if looks_like_id(&self.vault) {
            self.vault.clone()
        } else {
            looked_up = true;
            let url = self.url(&["vaults"], Some(("filter", filter("name", &self.vault))));
            let list = self
                .get(auth, url, "vault lookup")
                .await
                .map_err(|f| f.error)?;
            one_id(&list, "vault named", &self.vault)?
        };
        let item = if looks_like_id(&self.item) {
            self.item.clone()
        } else {
            looked_up = true;
            let url = self.url(
                &["vaults", &vault, "items"],
                Some(("filter", filter("title", &self.item))),
            );
            let list = self
                .get(auth, url, "item lookup")
                .await
                .map_err(|f| f.error)?;
            one_id(&list, "item titled", &self.item)?
        };
        let ids = Ids {
            vault,
            item,
            looked_up,
        };
        if let Ok(mut r) = self.resolved.lock() {
            *r = Some(ids.clone());
        }
        Ok(ids)
    }

    async fn get_item(&self, auth: &HeaderValue, ids: &Ids) -> Result<serde_json::Value, Failure> {
        let url = self.url(&["vaults", &ids.vault, "items", &ids.item], None);
        self.get(auth, url, "item").await
    }

    fn url(&self, segments: &[&str], query: Option<(&str, String)>) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut parts) = url.path_segments_mut() {
            parts.pop_if_empty().push("v1").extend(segments);
        }
        if let Some((name, value)) = query {
            url.query_pairs_mut().append_pair(name, &value);
        }
        url
    }

    async fn get(
        &self,
        auth: &HeaderValue,
        url: Url,
        what: &str,
    ) -> Result<serde_json::Value, Failure> {
        let response = self
            .http
            .get(url)
            .header("authorization", auth.clone())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| SourceError::new(format!("{what}: {}", request_failed(&e))))?;
        let status = response.status();
        let body = read_body(response)
            .await
            .map_err(|e| SourceError::new(format!("{what}: {e}")))?;
        if !status.is_success() {
            return Err(Failure {
                status: Some(status.as_u16()),
                error: SourceError::new(format!(
                    "{what}: HTTP {}{}",
                    status.as_u16(),
                    connect_error(&body)
                )),
            });
        }
        serde_json::from_slice(&body)
            .map_err(|_| SourceError::new(format!("{what}: the response is not JSON")).into())
    }
}

/// 1Password ids: 26 lowercase letters and digits.
fn looks_like_id(text: &str) -> bool {
    text.len() == 26
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A SCIM-style filter: `name eq "Production"`.
fn filter(attribute: &str, value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
    format!("{attribute} eq \"{escaped}\"")
}

/// The one `id` in a listing.
fn one_id(list: &serde_json::Value, what: &str, name: &str) -> Result<String, SourceError> {
    let entries = list
        .as_array()
        .ok_or_else(|| SourceError::new(format!("looking up the {what} {name:?}: not a list")))?;
    match entries.as_slice() {
        [one] => one
            .get("id")
            .and_then(|id| id.as_str())
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| SourceError::new(format!("the {what} {name:?} has no id"))),
        [] => Err(SourceError::new(format!(
            "no {what} {name:?} is visible to the token"
        ))),
        many => Err(SourceError::new(format!(
            "{} entries match the {what} {name:?}; name it by id",
            many.len()
        ))),
    }
}

/// The field's value: by label or id, then (for `password`) by purpose.
fn pick_field(item: &serde_json::Value, field: &str) -> Result<String, SourceError> {
    let fields = item
        .get("fields")
        .and_then(|f| f.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let is = |f: &serde_json::Value, key: &str| {
        f.get(key)
            .and_then(|v| v.as_str())
            .is_some_and(|v| v.eq_ignore_ascii_case(field))
    };
    let found = fields
        .iter()
        .find(|f| is(f, "label"))
        .or_else(|| fields.iter().find(|f| is(f, "id")))
        .or_else(|| {
            field
                .eq_ignore_ascii_case("password")
                .then(|| {
                    fields
                        .iter()
                        .find(|f| f.get("purpose").and_then(|p| p.as_str()) == Some("PASSWORD"))
                })
                .flatten()
        })
        .ok_or_else(|| SourceError::new(format!("the item has no field {field:?}")))?;
    match found.get("value") {
        Some(serde_json::Value::String(v)) if !v.is_empty() => Ok(v.clone()),
        _ => Err(SourceError::new(format!("field {field:?} has no value"))),
    }
}

/// Connect's `{"status": 401, "message": "Invalid token signature"}`, as `: Invalid …`.
fn connect_error(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(clip))
        .filter(|m| !m.is_empty())
        .map(|m| format!(": {m}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_and_filters() {
        assert!(looks_like_id("ytrfte14kw1uex5txu3qfmxsfy"));
        assert!(!looks_like_id("Production"));
        assert!(!looks_like_id("YTRFTE14KW1UEX5TXU3QFMXSFY"));
        assert_eq!(
            filter("title", r#"Stripe "live""#),
            r#"title eq "Stripe \"live\"""#
        );
    }

    #[test]
    fn listings_need_exactly_one_match() {
        assert_eq!(
            one_id(&json!([{"id": "v1", "name": "P"}]), "vault named", "P").unwrap(),
            "v1"
        );
        let none = one_id(&json!([]), "vault named", "P").unwrap_err();
        assert_eq!(none.0, "no vault named \"P\" is visible to the token");
        let two = one_id(&json!([{"id": "a"}, {"id": "b"}]), "item titled", "X").unwrap_err();
        assert!(two.0.contains("name it by id"), "{two}");
    }

    #[test]
    fn fields_by_label_id_then_purpose() {
        let item = json!({"fields": [
            {"id": "username", "label": "username", "value": "bot"},
            {"id": "pw", "label": "secret", "purpose": "PASSWORD", "value": "p4ss"},
            {"id": "api_key", "label": "API Key", "value": "k3y"},
            {"id": "empty", "label": "empty"},
        ]});
        assert_eq!(pick_field(&item, "api key").unwrap(), "k3y");
        assert_eq!(pick_field(&item, "API_KEY").unwrap(), "k3y");
        assert_eq!(pick_field(&item, "password").unwrap(), "p4ss");
        assert_eq!(pick_field(&item, "Secret").unwrap(), "p4ss");
        let missing = pick_field(&item, "token").unwrap_err();
        assert_eq!(missing.0, "the item has no field \"token\"");
        assert!(
            pick_field(&item, "empty")
                .unwrap_err()
                .0
                .contains("no value")
        );
    }

    #[tokio::test]
    async fn names_are_looked_up_once_and_again_when_the_item_is_gone() {
        use super::super::http::fake;
        const V: &str = "/v1/vaults/v-1";
        let item = |value: &str| json!({"id": "i", "fields": [{"id": "f1", "label": "API Key", "value": value}]});
        let (url, routes, seen) = fake::start(&[
            (
                "/v1/vaults?filter=name+eq+%22Prod%22",
                200,
                json!([{"id": "v-1", "name": "Prod"}]),
            ),
            (
                &format!("{V}/items?filter=title+eq+%22Stripe%22"),
                200,
                json!([{"id": "item-a"}]),
            ),
            (&format!("{V}/items/item-a"), 200, item("k-1")),
        ])
        .await;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "op-1").unwrap();
        let config: crate::secrets::SourceConfig = serde_norway::from_str(&format!(
            "{{type: onepassword_connect, url: '{url}', vault: Prod, item: Stripe, \
               field: api key, token: {{type: file, path: '{}'}}}}",
            token.display()
        ))
        .unwrap();
        let source = super::super::compile(&config, &SourceContext::new()).unwrap();
        let cache = SourceCache::new();
        let read = || async {
            source
                .fetch(&cache)
                .await
                .map(|f| f.value.expose().to_owned())
        };
        assert_eq!(read().await.unwrap(), "k-1");
        assert_eq!(read().await.unwrap(), "k-1");
        let paths = |seen: &fake::Seen| -> Vec<String> {
            seen.lock()
                .unwrap()
                .iter()
                .map(|(p, _)| p.clone())
                .collect()
        };
        assert_eq!(
            paths(&seen).len(),
            4,
            "names looked up once: {:?}",
            paths(&seen)
        );
        // The item is recreated under a new id: looked up again, once.
        {
            let mut routes = routes.lock().unwrap();
            routes.remove(&format!("{V}/items/item-a"));
            routes.insert(
                format!("{V}/items?filter=title+eq+%22Stripe%22"),
                (200, json!([{"id": "item-b"}])),
            );
            routes.insert(format!("{V}/items/item-b"), (200, item("k-2")));
        }
        assert_eq!(read().await.unwrap(), "k-2");
        assert_eq!(paths(&seen).len(), 8, "{:?}", paths(&seen));
        assert!(
            seen.lock()
                .unwrap()
                .iter()
                .all(|(_, h)| h["authorization"] == "Bearer op-1")
        );
        // Two items with the title: named, not guessed.
        routes.lock().unwrap().insert(
            format!("{V}/items?filter=title+eq+%22Stripe%22"),
            (200, json!([{"id": "item-b"}, {"id": "item-c"}])),
        );
        routes.lock().unwrap().remove(&format!("{V}/items/item-b"));
        let err = read().await.unwrap_err().0;
        assert_eq!(
            err,
            "onepassword_connect Prod/Stripe/api key: 2 entries match the item titled \"Stripe\"; \
             name it by id"
        );
    }

    #[test]
    fn connect_errors_are_named() {
        assert_eq!(
            connect_error(br#"{"status":401,"message":"Invalid token signature"}"#),
            ": Invalid token signature"
        );
        assert_eq!(connect_error(b"nope"), "");
    }
}
