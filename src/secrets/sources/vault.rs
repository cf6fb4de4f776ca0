//! `type: vault`: a secret from HashiCorp Vault's KV version 2 engine.
//!
//! `GET {address}/v1/{mount}/data/{path}` with `X-Vault-Token` (and `X-Vault-Namespace`),
//! answered with `{"data": {"data": {...}, "metadata": {...}}}`. With `key`, that field of
//! the secret's data (numbers and booleans as text); without, the data object as JSON.

use std::sync::Arc;

use reqwest::Url;
use reqwest::header::HeaderValue;

use super::http::{clip, parse_url, read_body, request_failed, sensitive_header};
use super::{CompiledSource, Fetched, SourceContext};
use crate::secrets::{SecretValue, SourceCache, SourceError};
use crate::vocab::FieldError;

pub struct VaultSource {
    http: reqwest::Client,
    url: Url,
    token: Arc<CompiledSource>,
    key: Option<String>,
    namespace: Option<HeaderValue>,
}

impl VaultSource {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        address: &str,
        token: Arc<CompiledSource>,
        mount: &str,
        path: &str,
        key: Option<&str>,
        namespace: Option<&str>,
        ctx: &SourceContext,
    ) -> Result<VaultSource, Vec<FieldError>> {
        let mut errors = Vec::new();
        let base = parse_url("address", address, false, &mut errors);
        let mount_segments = segments("mount", mount, &mut errors);
        let path_segments = segments("path", path, &mut errors);
        if key.is_some_and(str::is_empty) {
            errors.push(FieldError::new(
                "key",
                "must not be empty; omit it to get the whole secret as JSON",
            ));
        }
        let namespace = match namespace {
            None => None,
            Some(ns) if ns.trim().is_empty() => {
                errors.push(FieldError::new("namespace", "must not be empty"));
                None
            }
            Some(ns) => HeaderValue::from_str(ns).map(Some).unwrap_or_else(|_| {
                errors.push(FieldError::new(
                    "namespace",
                    format!("{ns:?} cannot be sent in a header"),
                ));
                None
            }),
        };
        let (Some(mut url), true) = (base, errors.is_empty()) else {
            return Err(errors);
        };
        if let Ok(mut parts) = url.path_segments_mut() {
            parts.pop_if_empty().push("v1");
            parts
                .extend(&mount_segments)
                .push("data")
                .extend(&path_segments);
        }
        Ok(VaultSource {
            http: ctx.http.clone(),
            url,
            token,
            key: key.map(str::to_owned),
            namespace,
        })
    }

    pub async fn fetch(&self, cache: &SourceCache) -> Result<Fetched, SourceError> {
        let token = Box::pin(cache.resolve(&self.token))
            .await
            .map_err(|e| SourceError::new(format!("token: {e}")))?;
        let mut request = self
            .http
            .get(self.url.clone())
            .header("x-vault-token", sensitive_header(&token, "token")?)
            .header("accept", "application/json");
        if let Some(ns) = &self.namespace {
            request = request.header("x-vault-namespace", ns.clone());
        }
        let response = request.send().await.map_err(|e| request_failed(&e))?;
        let status = response.status();
        let body = read_body(response).await?;
        if !status.is_success() {
            return Err(SourceError::new(format!(
                "HTTP {}{}",
                status.as_u16(),
                vault_errors(&body)
            )));
        }
        let parsed: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| SourceError::new("the response is not JSON"))?;
        let data = match parsed.get("data").and_then(|d| d.get("data")) {
            Some(serde_json::Value::Object(data)) => data,
            Some(serde_json::Value::Null) => {
                return Err(SourceError::new(
                    "the secret's current version is deleted or destroyed",
                ));
            }
            _ => {
                return Err(SourceError::new(
                    "the response has no data.data object (is the mount KV version 2?)",
                ));
            }
        };
        let value = match &self.key {
            None => serde_json::to_string(data)
                .map_err(|_| SourceError::new("cannot encode the secret's data"))?,
            Some(key) => match data.get(key) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                Some(serde_json::Value::Bool(b)) => b.to_string(),
                Some(_) => {
                    return Err(SourceError::new(format!(
                        "key {key:?} of the secret is not a string"
                    )));
                }
                None => {
                    return Err(SourceError::new(format!("the secret has no key {key:?}")));
                }
            },
        };
        Ok(Fetched::value(SecretValue::new(value)))
    }
}

/// Vault's `{"errors": ["permission denied"]}`, as `: permission denied`.
fn vault_errors(body: &[u8]) -> String {
    let errors: Vec<String> = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("errors").and_then(|e| e.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect();
    if errors.is_empty() {
        String::new()
    } else {
        format!(": {}", clip(&errors.join("; ")))
    }
}

/// The split path of `mount` or `path`: no empty, `.` or `..` segments.
fn segments(field: &str, text: &str, errors: &mut Vec<FieldError>) -> Vec<String> {
    let trimmed = text.trim_matches('/');
    if trimmed.is_empty() {
        errors.push(FieldError::new(field, "must not be empty"));
        return Vec::new();
    }
    let parts: Vec<String> = trimmed.split('/').map(str::to_owned).collect();
    if parts.iter().any(|p| p.is_empty() || p == "." || p == "..") {
        errors.push(FieldError::new(
            field,
            format!("{text:?} has an empty, `.` or `..` segment"),
        ));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::super::http::MAX_ERROR_TEXT;
    use super::*;
    use crate::secrets::SourceConfig;

    fn compile(yaml: &str) -> Result<Arc<CompiledSource>, Vec<FieldError>> {
        let config: SourceConfig = serde_norway::from_str(yaml).unwrap();
        super::super::compile(&config, &SourceContext::new())
    }

    fn url_of(source: &CompiledSource) -> String {
        match &source.backend {
            super::super::Backend::Vault(v) => v.url.to_string(),
            _ => panic!("not vault"),
        }
    }

    #[test]
    fn builds_the_kv2_url() {
        let s = compile(
            "{type: vault, address: 'https://vault.internal:8200/', path: /app/github/, \
              key: token, token: {type: env, var: VAULT_TOKEN}}",
        )
        .unwrap();
        assert_eq!(
            url_of(&s),
            "https://vault.internal:8200/v1/secret/data/app/github"
        );
        let s = compile(
            "{type: vault, address: 'http://v/prefix', mount: 'kv team', path: 'a b/c', \
              token: {type: env, var: T}}",
        )
        .unwrap();
        assert_eq!(url_of(&s), "http://v/prefix/v1/kv%20team/data/a%20b/c");
    }

    #[test]
    fn bad_fields_are_named() {
        let errors = compile(
            "{type: vault, address: 'vault:8200', mount: '', path: 'a/../b', key: '', \
              namespace: ' ', token: {type: env, var: ''}}",
        )
        .unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["token.var"], "{errors:?}");
        let errors = compile(
            "{type: vault, address: 'vault:8200', mount: '', path: 'a/../b', key: '', \
              namespace: ' ', token: {type: env, var: T}}",
        )
        .unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["address", "mount", "path", "key", "namespace"],
            "{errors:?}"
        );
    }

    #[tokio::test]
    async fn reads_keys_whole_secrets_and_names_failures() {
        let secret = |data: serde_json::Value| {
            (
                200,
                serde_json::json!({"data": {"data": data, "metadata": {"version": 3}}}),
            )
        };
        let (ok, deleted, denied) = (
            secret(serde_json::json!({"token": "t-1", "n": 7, "on": true, "o": {}})),
            secret(serde_json::Value::Null),
            (403, serde_json::json!({"errors": ["permission denied"]})),
        );
        let (url, _, seen) = super::super::http::fake::start(&[
            ("/v1/secret/data/app/gh", ok.0, ok.1),
            ("/v1/secret/data/app/deleted", deleted.0, deleted.1),
            ("/v1/secret/data/app/denied", denied.0, denied.1),
        ])
        .await;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "vt-1\n").unwrap();
        let cache = SourceCache::new();
        let read = |path: &str, key: Option<&str>| {
            let key = key.map_or(String::new(), |k| format!(", key: {k}"));
            let source = compile(&format!(
                "{{type: vault, address: '{url}', path: {path}, namespace: ns1{key}, \
                   token: {{type: file, path: '{}'}}}}",
                token.display()
            ))
            .unwrap();
            let cache = cache.clone();
            async move {
                source
                    .fetch(&cache)
                    .await
                    .map(|f| f.value.expose().to_owned())
            }
        };
        assert_eq!(read("app/gh", Some("token")).await.unwrap(), "t-1");
        assert_eq!(read("app/gh", Some("n")).await.unwrap(), "7");
        assert_eq!(read("app/gh", Some("on")).await.unwrap(), "true");
        let whole: serde_json::Value =
            serde_json::from_str(&read("app/gh", None).await.unwrap()).unwrap();
        assert_eq!(whole["token"], "t-1");
        let err = |r: Result<String, SourceError>| r.unwrap_err().0;
        assert_eq!(
            err(read("app/gh", Some("o")).await),
            "vault secret/app/gh: key \"o\" of the secret is not a string"
        );
        assert_eq!(
            err(read("app/gh", Some("x")).await),
            "vault secret/app/gh: the secret has no key \"x\""
        );
        assert!(err(read("app/deleted", Some("token")).await).contains("deleted or destroyed"));
        assert_eq!(
            err(read("app/denied", Some("token")).await),
            "vault secret/app/denied: HTTP 403: permission denied"
        );
        assert_eq!(
            err(read("app/missing", Some("token")).await),
            "vault secret/app/missing: HTTP 404"
        );
        assert!(
            seen.lock()
                .unwrap()
                .iter()
                .all(|(_, h)| h["x-vault-token"] == "vt-1" && h["x-vault-namespace"] == "ns1")
        );
        let gone = compile(&format!(
            "{{type: vault, address: 'http://127.0.0.1:1', path: a, token: {{type: file, path: '{}'}}}}",
            token.display()
        ))
        .unwrap();
        let e = gone.fetch(&cache).await.unwrap_err().0;
        assert!(e.starts_with("vault secret/a: cannot connect"), "{e}");
    }

    #[test]
    fn errors_are_clipped_and_named() {
        assert_eq!(
            vault_errors(br#"{"errors":["permission denied","x"]}"#),
            ": permission denied; x"
        );
        assert_eq!(vault_errors(b"<html>"), "");
        let long = "e\n".repeat(300);
        assert!(clip(&long).chars().count() <= MAX_ERROR_TEXT + 1);
        assert!(!clip(&long).contains('\n'));
    }
}
