//! `/v1/openapi.json`: the admin API described as OpenAPI 3.1. The policy and secret
//! schemas are derived from the very types the API parses (utoipa), so they cannot drift
//! from what is accepted; the endpoints come from [`ENDPOINTS`], which an integration test
//! walks against the running server.

use serde_json::{Map, Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;

use crate::policy::PolicyConfig;
use crate::transforms::secrets::SecretConfig;

mod constraints;
pub use constraints::Gateway;

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    Viewer,
    Editor,
    /// Secrets: an `admin` token.
    Admin,
}

/// One documented endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub access: Access,
    /// A schema in `components.schemas` for the JSON body.
    pub body: Option<&'static str>,
    /// Query parameters: name and description.
    pub query: &'static [(&'static str, &'static str)],
}

const fn endpoint(
    method: &'static str,
    path: &'static str,
    access: Access,
    summary: &'static str,
) -> Endpoint {
    Endpoint {
        method,
        path,
        summary,
        access,
        body: None,
        query: &[],
    }
}

const fn with_body(mut e: Endpoint, body: &'static str) -> Endpoint {
    e.body = Some(body);
    e
}

const fn with_query(mut e: Endpoint, query: &'static [(&'static str, &'static str)]) -> Endpoint {
    e.query = query;
    e
}

use Access::{Admin, Editor, Public, Viewer};

/// Every `/v1/` endpoint.
pub const ENDPOINTS: &[Endpoint] = &[
    endpoint("get", "/v1/openapi.json", Public, "This document"),
    endpoint(
        "get",
        "/v1/status",
        Viewer,
        "Which snapshot this instance decides with",
    ),
    with_body(
        endpoint(
            "post",
            "/v1/session",
            Public,
            "Console sign-in: an admin token for a session cookie and its CSRF token",
        ),
        "SignIn",
    ),
    endpoint(
        "get",
        "/v1/session",
        Viewer,
        "Who the caller is; for a session, its CSRF token and expiry",
    ),
    endpoint("delete", "/v1/session", Viewer, "Console sign-out"),
    endpoint(
        "get",
        "/v1/session/providers",
        Public,
        "How the console can sign in: an admin token, and single sign-on when admin.oidc is set",
    ),
    endpoint(
        "get",
        "/v1/session/oidc",
        Public,
        "Begin single sign-on: a redirect (303) to the issuer, with a cookie binding it to this browser",
    ),
    with_query(
        endpoint(
            "get",
            "/v1/session/oidc/callback",
            Public,
            "Complete single sign-on (the issuer's redirect): a session cookie and a redirect to /",
        ),
        &[
            ("code", "The authorization code"),
            ("state", "The state the sign-in sent"),
            ("error", "The issuer's refusal"),
        ],
    ),
    with_query(
        endpoint("get", "/v1/policies", Viewer, "List policies"),
        &[("window", "Add fire counts for this window, e.g. 24h")],
    ),
    with_body(
        endpoint("post", "/v1/policies", Editor, "Create a policy"),
        "PolicyCreate",
    ),
    endpoint("get", "/v1/policies/{name}", Viewer, "Read a policy"),
    with_body(
        endpoint(
            "put",
            "/v1/policies/{name}",
            Editor,
            "Replace a policy (optimistic concurrency: 409 on a stale version)",
        ),
        "PolicyUpdate",
    ),
    with_query(
        endpoint(
            "delete",
            "/v1/policies/{name}",
            Editor,
            "Delete a policy (its history stays)",
        ),
        &[
            ("version", "The version read (required)"),
            ("reason", "Why"),
        ],
    ),
    with_body(
        endpoint(
            "post",
            "/v1/policies/{name}/enable",
            Editor,
            "Set status active",
        ),
        "VersionedChange",
    ),
    with_body(
        endpoint(
            "post",
            "/v1/policies/{name}/disable",
            Editor,
            "Set status disabled: stops firing, stays listed",
        ),
        "VersionedChange",
    ),
    endpoint(
        "get",
        "/v1/policies/{name}/history",
        Viewer,
        "Every version, oldest first",
    ),
    with_query(
        endpoint(
            "get",
            "/v1/policies/{name}/diff",
            Viewer,
            "Changes between two versions, by field path",
        ),
        &[
            ("from", "A version (required)"),
            ("to", "A version (default: the newest)"),
        ],
    ),
    with_body(
        endpoint(
            "post",
            "/v1/policies/{name}/rollback",
            Editor,
            "Make an earlier version live again, as a new version",
        ),
        "Rollback",
    ),
    endpoint(
        "get",
        "/v1/secrets",
        Viewer,
        "List secrets (metadata and source references only)",
    ),
    with_body(
        endpoint("post", "/v1/secrets", Admin, "Create a secret"),
        "SecretCreate",
    ),
    endpoint(
        "get",
        "/v1/secrets/{name}",
        Viewer,
        "Read a secret's definition",
    ),
    with_body(
        endpoint("put", "/v1/secrets/{name}", Admin, "Replace a secret"),
        "SecretUpdate",
    ),
    with_query(
        endpoint(
            "delete",
            "/v1/secrets/{name}",
            Admin,
            "Delete a secret (its history stays)",
        ),
        &[
            ("version", "The version read (required)"),
            ("reason", "Why"),
        ],
    ),
    endpoint(
        "get",
        "/v1/secrets/{name}/history",
        Viewer,
        "Every version, oldest first",
    ),
    with_query(
        endpoint(
            "get",
            "/v1/secrets/{name}/diff",
            Viewer,
            "Changes between two versions",
        ),
        &[
            ("from", "A version (required)"),
            ("to", "A version (default: the newest)"),
        ],
    ),
    with_body(
        endpoint(
            "post",
            "/v1/secrets/{name}/rollback",
            Admin,
            "Make an earlier version live again",
        ),
        "Rollback",
    ),
    with_body(
        endpoint(
            "post",
            "/v1/playground",
            Viewer,
            "What the gateway would do with a request",
        ),
        "PlaygroundRequest",
    ),
    with_body(
        endpoint(
            "post",
            "/v1/impact",
            Viewer,
            "Recent audited requests a draft policy would decide differently",
        ),
        "ImpactRequest",
    ),
    endpoint(
        "get",
        "/v1/limits",
        Viewer,
        "Rate limits and their most used keys now",
    ),
    endpoint(
        "get",
        "/v1/budgets",
        Viewer,
        "LLM budgets and what their keys spent this window",
    ),
    with_query(
        endpoint(
            "get",
            "/v1/fire-counts",
            Viewer,
            "How often each policy decided, busiest first",
        ),
        &[("window", "e.g. 1h, 24h (default), 7d")],
    ),
    with_query(
        endpoint(
            "get",
            "/v1/audit",
            Viewer,
            "Search audit events, newest first",
        ),
        &[
            ("tag", "Comma-separated tags, all required"),
            ("decision", "allowed, flagged or denied"),
            ("policy", "The deciding policy"),
            ("identity", "The workload identity's name"),
            ("host", "A host, or *.example.com"),
            ("since", "A duration back (1h) or an RFC 3339 time"),
            ("until", "A duration back or an RFC 3339 time (exclusive)"),
            ("limit", "Events per page, 1 to 1000 (default 50)"),
            ("cursor", "next_cursor of the previous page"),
        ],
    ),
    endpoint(
        "get",
        "/v1/tokens",
        Viewer,
        "List enrollment tokens (never their values)",
    ),
    with_body(
        endpoint(
            "post",
            "/v1/tokens",
            Editor,
            "Mint an enrollment token; its value is shown once",
        ),
        "MintToken",
    ),
    endpoint(
        "delete",
        "/v1/tokens/{id}",
        Editor,
        "Revoke an enrollment token",
    ),
    with_query(
        endpoint("get", "/v1/approvals", Viewer, "Approvals, newest first"),
        &[
            (
                "status",
                "pending, lapsed, approved, expired, denied or revoked",
            ),
            ("limit", "At most this many, 1 to 1000 (default 100)"),
        ],
    ),
    endpoint(
        "get",
        "/v1/approvals/{approval}",
        Viewer,
        "One approval and its console link",
    ),
    with_body(
        endpoint(
            "post",
            "/v1/approvals/{approval}/approve",
            Editor,
            "Approve: write a grant for exactly that request, expiring by itself",
        ),
        "ApprovalDecision",
    ),
    with_body(
        endpoint(
            "post",
            "/v1/approvals/{approval}/deny",
            Editor,
            "Deny a pending approval",
        ),
        "ApprovalNote",
    ),
    with_body(
        endpoint(
            "post",
            "/v1/approvals/{approval}/revoke",
            Editor,
            "End an approval's grant before it expires",
        ),
        "ApprovalNote",
    ),
];

/// The document for this gateway, built once per call (it is small and rarely fetched):
/// its DLP detectors and the sources its stored secrets may read are part of the contract.
pub async fn document(
    axum::extract::State(control): axum::extract::State<std::sync::Arc<super::Control>>,
) -> axum::Json<Value> {
    let snapshot = control.live.snapshot();
    let gateway = Gateway::of(&*control.live.config().await, snapshot.policies.dlp());
    axum::Json(build(&gateway))
}

fn schema_value<T: utoipa::ToSchema>(schemas: &mut Map<String, Value>) {
    let mut nested: Vec<(String, RefOr<Schema>)> = Vec::new();
    T::schemas(&mut nested);
    nested.push((T::name().into_owned(), T::schema()));
    for (name, schema) in nested {
        schemas.insert(name, serde_json::to_value(schema).unwrap_or_default());
    }
}

fn envelope(definition: &str, reference: &str, version: bool) -> Value {
    let mut properties = json!({
        definition: {"$ref": format!("#/components/schemas/{reference}")},
        "reason": {"type": ["string", "null"], "description": "Why: recorded with the version"},
    });
    let mut required = vec![definition.to_owned()];
    if version {
        properties["version"] = json!({"type": "integer", "minimum": 1, "maximum": i64::MAX,
            "description": "The version you read; a stale one is a 409"});
        required.push("version".to_owned());
    }
    json!({"type": "object", "additionalProperties": false,
           "properties": properties, "required": required})
}

/// Builds the OpenAPI document.
pub fn build(gateway: &Gateway) -> Value {
    let mut schemas = Map::new();
    schema_value::<PolicyConfig>(&mut schemas);
    schema_value::<SecretConfig>(&mut schemas);
    constraints::apply(&mut schemas, gateway);
    schemas.insert(
        "PolicyCreate".into(),
        envelope("policy", "PolicyConfig", false),
    );
    schemas.insert(
        "PolicyUpdate".into(),
        envelope("policy", "PolicyConfig", true),
    );
    schemas.insert(
        "SecretCreate".into(),
        envelope("secret", "SecretConfig", false),
    );
    schemas.insert(
        "SecretUpdate".into(),
        envelope("secret", "SecretConfig", true),
    );
    schemas.insert(
        "VersionedChange".into(),
        json!({"type": "object", "additionalProperties": false, "required": ["version"],
               "properties": {"version": {"type": "integer", "minimum": 1, "maximum": i64::MAX},
                              "reason": {"type": ["string", "null"]}}}),
    );
    schemas.insert(
        "Rollback".into(),
        json!({"type": "object", "additionalProperties": false, "required": ["to_version", "version"],
               "properties": {"to_version": {"type": "integer", "minimum": 1, "maximum": i64::MAX,
                                             "description": "The version to make live again"},
                              "version": {"type": "integer", "minimum": 1, "maximum": i64::MAX,
                                          "description": "The live version you read"},
                              "reason": {"type": ["string", "null"]}}}),
    );
    let token = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";
    schemas.insert(
        "PlaygroundRequest".into(),
        json!({"type": "object", "additionalProperties": false, "required": ["method", "url"],
               "properties": {
                   "method": {"type": "string", "pattern": token},
                   "url": {"type": "string",
                           "description": "An absolute http(s) URL; for CONNECT, host:port"},
                   "headers": {"type": "object", "propertyNames": {"pattern": token},
                               "additionalProperties": {"type": "string",
                                                        "pattern": "^[^\\r\\n\\u0000]*$"}},
                   "body": {"type": ["string", "null"]},
                   "tags": {"type": "array", "items": {"$ref": "#/components/schemas/Tag"},
                            "description": "Tags besides the identity's, as a listener would add"},
                   "token": {"type": ["string", "null"],
                             "description": "A proxy token the workload presents"},
                   "source": {"description": "The workload's IP address",
                              "anyOf": [{"type": "string", "format": "ipv4"},
                                        {"type": "string", "format": "ipv6"},
                                        {"type": "null"}]},
                   "spiffe_id": {"type": ["string", "null"]},
                   "intercepted": {"type": "boolean"}},
               // A CONNECT names host:port and carries no body; any other method an
               // absolute URL.
               "oneOf": [
                   {"properties": {"method": {"const": "CONNECT"},
                                   "url": {"type": "string", "format": "authority",
                                           "examples": ["api.github.com:443"]},
                                   "body": {"anyOf": [{"type": "null"}, {"maxLength": 0}]}}},
                   {"properties": {"method": {"not": {"const": "CONNECT"}},
                                   "url": {"type": "string", "format": "absolute-url",
                                           "examples": ["https://api.github.com/repos/o/r"]}}}]}),
    );
    schemas.insert(
        "ImpactRequest".into(),
        json!({"type": "object", "additionalProperties": false, "required": ["policy"],
               "properties": {
                   "policy": {"$ref": "#/components/schemas/PolicyConfig"},
                   "since": {"anyOf": [{"type": "string", "format": "time-or-duration"},
                                       {"type": "null"}],
                             "description": "A duration back (default 24h) or an RFC 3339 time"},
                   "limit": {"type": ["integer", "null"], "minimum": 1, "maximum": 10000}}}),
    );
    schemas.insert(
        "MintToken".into(),
        json!({"type": "object", "additionalProperties": false, "required": ["name"],
               "properties": {"name": {"$ref": "#/components/schemas/Name"},
                              "tags": {"type": "array", "items": {"$ref": "#/components/schemas/Tag"}}}}),
    );
    schemas.insert(
        "ApprovalDecision".into(),
        json!({"type": "object", "additionalProperties": false,
               "properties": {
                   "for": {"type": "string", "format": "grant-duration",
                           "description": "How long the grant lasts (default approvals.grant_for, at most approvals.max_grant_for)"},
                   "note": {"type": "string", "description": "Why; kept with the decision"}}}),
    );
    schemas.insert(
        "ApprovalNote".into(),
        json!({"type": "object", "additionalProperties": false,
               "properties": {"note": {"type": "string", "description": "Why; kept with the decision"}}}),
    );
    schemas.insert(
        "SignIn".into(),
        json!({"type": "object", "additionalProperties": false, "required": ["token"],
               "properties": {"token": {"type": "string", "minLength": 1,
                                        "description": "An admin token (`admin.tokens`)"}}}),
    );
    schemas.insert(
        "PolicyOrder".into(),
        json!({"type": "object", "additionalProperties": false, "required": ["order"],
               "properties": {
                   "order": {"type": "array", "minItems": 1, "items": {
                       "type": "object", "additionalProperties": false,
                       "required": ["name", "version", "priority"],
                       "properties": {"name": {"$ref": "#/components/schemas/Name"},
                                      "version": {"type": "integer", "minimum": 1,
                                                  "maximum": i64::MAX},
                                      "priority": {"type": "integer", "minimum": i32::MIN,
                                                   "maximum": i32::MAX}}}},
                   "reason": {"type": "string"}}}),
    );
    schemas.insert(
        "SourceTest".into(),
        json!({"type": "object", "additionalProperties": false, "required": ["source"],
               "properties": {"source": {"$ref": "#/components/schemas/Source"}}}),
    );
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["type", "message"], "properties": {
                "type": {"type": "string", "enum": ["malformed_json", "invalid", "invalid_query",
                    "not_found", "conflict", "stale_version", "unauthorized", "forbidden",
                    "no_store", "store_unavailable", "unavailable"]},
                "message": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object", "required": ["path", "message"],
                    "properties": {"path": {"type": "string"}, "message": {"type": "string"}}}},
                "live_version": {"type": "integer"}}}}}),
    );

    let mut paths = Map::new();
    for e in ENDPOINTS {
        let mut parameters: Vec<Value> = path_parameters(e.path)
            .map(|name| {
                json!({"name": name, "in": "path", "required": true,
                               "schema": path_schema(name)})
            })
            .collect();
        parameters.extend(e.query.iter().map(|(name, description)| {
            json!({"name": name, "in": "query", "required": description.contains("(required)"),
                   "description": description, "schema": query_schema(name)})
        }));
        let error = json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        let mut responses = json!({
            "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
        });
        if e.method == "post" && matches!(e.path, "/v1/policies" | "/v1/secrets" | "/v1/tokens") {
            responses["201"] = json!({"description": "Created"});
        }
        let session = e.path == "/v1/session";
        if session && e.method == "post" {
            responses = json!({"201": {"description": "Signed in: Set-Cookie holds the session"}});
            for (code, description) in [
                ("401", "The admin token is not recognised"),
                ("403", "Posted from another site's page"),
            ] {
                responses[code] = json!({"description": description});
                responses[code]
                    .as_object_mut()
                    .unwrap()
                    .extend(error.as_object().unwrap().clone());
            }
        }
        if e.path.starts_with("/v1/session/oidc") {
            responses = json!({
                "303": {"description": "To the issuer (begin), or signed in and to / (callback)"},
                "404": {"description": "Single sign-on is not configured (admin.oidc)"},
                "502": {"description": "The issuer could not be reached or answered wrongly"},
            });
            responses["404"]
                .as_object_mut()
                .unwrap()
                .extend(error.as_object().unwrap().clone());
            if e.path.ends_with("/callback") {
                let page = json!({"text/plain": {"schema": {"type": "string"}}});
                for (code, description) in [
                    (
                        "400",
                        "No sign-in under way in this browser, or not this one's state",
                    ),
                    ("401", "The issuer refused, or its ID token is not accepted"),
                    (
                        "403",
                        "Signed in, but no role is mapped to the person's claim",
                    ),
                    ("502", "The issuer could not be reached or answered wrongly"),
                ] {
                    responses[code] = json!({"description": description, "content": page});
                }
            }
        }
        if session && e.method == "delete" {
            responses =
                json!({"204": {"description": "Signed out: Set-Cookie clears the session"}});
        }
        if e.access != Public {
            responses["401"] = json!({"description": "No valid admin token"});
            responses["401"]
                .as_object_mut()
                .unwrap()
                .extend(error.as_object().unwrap().clone());
        }
        if matches!(e.access, Editor | Admin) {
            responses["403"] = json!({"description": if e.access == Admin {
                "A viewer or editor token: changing secrets needs an admin token"
            } else {
                "A viewer token"
            }});
            responses["409"] =
                json!({"description": "A stale version, an existing name, or no store"});
        }
        // Every status the server can answer with is declared, each with the Error body.
        let mut errors: Vec<(&str, &str)> = Vec::new();
        if e.body.is_some() {
            errors.push(("400", "Malformed JSON"));
            errors.push(("422", "Invalid: every problem as {path, message}"));
        } else if !e.query.is_empty() && !e.path.starts_with("/v1/session/oidc") {
            errors.push(("400", "A query parameter is not of its form"));
            if e.query.iter().any(|(_, d)| d.contains("(required)")) {
                errors.push(("422", "A required query parameter is missing"));
            }
        }
        if path_parameters(e.path).next().is_some() || e.path == "/v1/policy-order" {
            errors.push(("404", "No such policy, secret or token"));
        }
        if session && e.access != Public {
            errors.push((
                "403",
                "A session's change without its CSRF token, or from another site",
            ));
        }
        if e.access != Public && e.path != "/v1/status" && !session {
            errors.push(("503", "The store cannot be reached"));
            if !matches!(e.access, Editor | Admin) {
                errors.push(("409", "No store: the policies are in the config file"));
            }
        }
        for (code, description) in errors {
            responses[code] = json!({"description": description});
            responses[code]
                .as_object_mut()
                .unwrap()
                .extend(error.as_object().unwrap().clone());
        }
        let mut operation = json!({
            "summary": e.summary,
            "operationId": operation_id(e),
            "parameters": parameters,
            "responses": responses,
        });
        if e.access != Public {
            operation["security"] = json!([{"bearer": []}]);
        }
        if let Some(body) = e.body {
            operation["requestBody"] = json!({"required": true, "content": {"application/json": {
                "schema": {"$ref": format!("#/components/schemas/{body}")}}}});
        }
        paths
            .entry(e.path.to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("a path item is an object")
            .insert(e.method.to_owned(), operation);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Portcullis admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The control plane of the Portcullis egress gateway (docs/api.md). \
                            Authenticate with `Authorization: Bearer <admin token>`, or with \
                            the console's session cookie from `POST /v1/session` (a change \
                            then also needs `X-CSRF-Token`).",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "paths": paths,
    })
}

/// A query parameter's schema, by name: versions and limits are integers, `decision` is one
/// of three words, the rest strings.
fn query_schema(name: &str) -> Value {
    match name {
        "version" | "from" | "to" => json!({"type": "integer", "minimum": 1,
                                            "maximum": i64::MAX}),
        "limit" => json!({"type": "integer", "minimum": 1, "maximum": 1000}),
        // What the server reads as a span back from now (humantime reads more forms).
        "window" => json!({"type": "string", "pattern": "^[1-9][0-9]{0,5}(s|m|h|d)$"}),
        "decision" => json!({"type": "string", "enum": ["allowed", "flagged", "denied"]}),
        "status" => json!({"type": "string", "enum": ["pending", "lapsed", "approved",
                                                      "expired", "denied", "revoked"]}),
        "since" | "until" => json!({"type": "string", "format": "time-or-duration"}),
        // Opaque: only what an earlier page returned as `next_cursor`.
        "cursor" => json!({"type": "string", "format": "cursor"}),
        _ => json!({"type": "string"}),
    }
}

/// A path parameter's schema: policies and secrets are named, tokens have a UUID.
fn path_schema(name: &str) -> Value {
    match name {
        "name" => json!({"$ref": "#/components/schemas/Name"}),
        "approval" => json!({"type": "string", "pattern": "^ap-[a-z2-7]{16}$"}),
        _ => json!({"type": "string", "format": "uuid"}),
    }
}

fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
}

fn operation_id(e: &Endpoint) -> String {
    let mut id = e.method.to_owned();
    for segment in e.path.trim_start_matches("/v1/").split('/') {
        let word = segment
            .trim_matches(|c| c == '{' || c == '}')
            .replace(['-', '.'], "_");
        id.push('_');
        id.push_str(&word);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves_and_policy_fields_are_described() {
        let doc = build(&Gateway::default());
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(schemas.contains_key(name), "unresolved $ref {name}");
        }
        let policy = &schemas["PolicyConfig"];
        assert!(
            policy["properties"]["priority"]["description"]
                .as_str()
                .unwrap()
                .contains("Lower wins")
        );
        assert!(schemas.contains_key("RuleConfig"));
        let ids: Vec<String> = ENDPOINTS.iter().map(operation_id).collect();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(ids.len(), unique.len(), "operation ids are unique");
    }
}
