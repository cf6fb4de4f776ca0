//! The rules the server enforces on policies and secrets, written into the schemas that
//! utoipa derives from their types: name and tag spellings, the one-of-these shapes of
//! header conditions, sources and injection styles, the `gated`/`condition` pairing, and
//! what *this* gateway allows (its DLP detectors, the sources a stored secret may read).
//!
//! What a regular expression cannot say (a CEL expression, a Rust regex, a host pattern,
//! a glob, a template, a duration) is a named `format`, described in docs/api.md; a client
//! that does not know a format treats the value as a string, and the server says what is
//! wrong with it at its field path.

use serde_json::{Map, Value, json};

use crate::request::Method;
use crate::secrets::config::SourceBounds;
use crate::vocab::names::{NAME_MAX, NAME_PATTERN, TAG_MAX, TAG_PATTERN};

/// What the document says about this gateway in particular.
#[derive(Debug, Clone, Default)]
pub struct Gateway {
    /// Every DLP detector a rule may name: the builtins and the config's custom ones.
    pub detectors: Vec<String>,
    /// `store.secret_sources`, when policies and secrets come from a store: what a secret
    /// written through the API may read. `None`: every source (the file is not bounded).
    pub bounds: Option<SourceBounds>,
}

impl Gateway {
    /// `config` is the live one; `scanner` the live snapshot's detectors, already compiled.
    pub fn of(config: &crate::config::Config, scanner: Option<&crate::dlp::Scanner>) -> Gateway {
        let detectors = match scanner {
            Some(scanner) => scanner.names().map(str::to_owned).collect(),
            None => crate::dlp::BUILTIN
                .iter()
                .map(|n| (*n).to_owned())
                .collect(),
        };
        Gateway {
            detectors,
            bounds: config.store.as_ref().map(|s| s.secret_sources.clone()),
        }
    }
}

/// The characters of an HTTP header name (RFC 9110 `token`).
const TOKEN: &str = "[!#$%&'*+.^_`|~0-9A-Za-z-]+";

/// Headers a secret may not write, as the transforms refuse them (case-insensitive).
const RESERVED_HEADERS: [&str; 5] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "proxy-authorization",
];

/// `text` as a pattern matching it in any letter case, with no inline flags: the same
/// pattern must mean the same in ECMAScript, Python and Rust.
fn any_case(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            c if c.is_ascii_alphabetic() => {
                format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase())
            }
            '-' | '.' | '*' => format!("\\{c}"),
            c => c.to_string(),
        })
        .collect()
}

fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            c if c.is_ascii_alphanumeric() || c == '_' || c == '/' || c == ':' => c.to_string(),
            c if c.is_ascii() => format!("\\{c}"),
            c => format!("\\u{:04x}", c as u32),
        })
        .collect()
}

fn nullable(schema: Value) -> Value {
    json!({"anyOf": [schema, {"type": "null"}]})
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// A header a secret may write: a token that is not one of the reserved names, `:` or
/// `x-envoy-` headers (a token cannot start with `:`).
fn writable_header() -> Value {
    json!({"type": "string", "pattern": format!("^{TOKEN}$"), "not": reserved_header(""),
           "description": "A header name; not Host, Content-Length, Transfer-Encoding, \
                           Connection, Proxy-Authorization or x-envoy-*"})
}

/// Matches a reserved header name (any case) after `prefix`.
fn reserved_header(prefix: &str) -> Value {
    let reserved: Vec<String> = RESERVED_HEADERS.iter().map(|h| any_case(h)).collect();
    json!({"anyOf": [{"pattern": format!("^{prefix}(?:{})$", reserved.join("|"))},
                     {"pattern": format!("^{prefix}{}", any_case("x-envoy-"))}]})
}

/// Exactly one of `fields` is present with a non-null value.
fn exactly_one(fields: &[&str], schema: &Value) -> Value {
    Value::Array(
        fields
            .iter()
            .map(|f| json!({"required": [f], "properties": {*f: schema}}))
            .collect(),
    )
}

fn set(schemas: &mut Map<String, Value>, component: &str, path: &[&str], value: Value) {
    let mut at = schemas
        .get_mut(component)
        .unwrap_or_else(|| panic!("no component {component}"));
    for key in path {
        at = at
            .get_mut(*key)
            .unwrap_or_else(|| panic!("no {key} in {component}"));
    }
    *at = value;
}

/// Writes the server's rules into `schemas`.
pub fn apply(schemas: &mut Map<String, Value>, gateway: &Gateway) {
    strings(schemas);
    policy(schemas, gateway);
    secret(schemas, gateway);
    // Definitions are read as YAML is: a list left empty (`paths:`) is null, and null is
    // an empty list.
    // (Not inside `source` and `inject`: a tagged variant is read as it is written.)
    for name in [
        "PolicyConfig",
        "RuleConfig",
        "ScopeRule",
        "BodyFields",
        "HeaderFields",
        "SecretConfig",
    ] {
        if let Some(schema) = schemas.get_mut(name) {
            lists_take_null(schema);
        }
    }
}

/// Every optional array property below `schema` also takes null.
fn lists_take_null(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        if let Some(items) = schema.as_array_mut() {
            items.iter_mut().for_each(lists_take_null);
        }
        return;
    };
    let required: Vec<String> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if let Some(properties) = object.get_mut("properties").and_then(Value::as_object_mut) {
        for (name, property) in properties.iter_mut() {
            if !required.contains(name) && property.get("type") == Some(&json!("array")) {
                property["type"] = json!(["array", "null"]);
            }
        }
    }
    for (key, value) in object.iter_mut() {
        if matches!(
            key.as_str(),
            "properties" | "oneOf" | "anyOf" | "allOf" | "items" | "then" | "else"
        ) {
            match value {
                Value::Object(map) if key == "properties" => {
                    map.values_mut().for_each(lists_take_null);
                }
                other => lists_take_null(other),
            }
        }
    }
}

/// The string types, each once.
fn strings(schemas: &mut Map<String, Value>) {
    let methods: Vec<String> = Method::STANDARD
        .iter()
        .map(|m| any_case(m.as_str()))
        .chain([any_case("ALL"), "\\*".to_owned()])
        .collect();
    for (name, schema) in [
        (
            "Name",
            json!({"type": "string", "pattern": NAME_PATTERN, "maxLength": NAME_MAX,
                   "description": "Printable ASCII, 1 to 128 characters, no space at either end"}),
        ),
        (
            "Tag",
            json!({"type": "string", "pattern": TAG_PATTERN, "maxLength": TAG_MAX,
                   "description": "A tag such as `team:ci`: printable ASCII without spaces or \
                                   commas, 1 to 256 characters"}),
        ),
        (
            "HostPattern",
            json!({"type": "string", "format": "host-pattern", "minLength": 1,
                   "description": "`api.example.com`, `*.example.com` (any subdomain depth), \
                                   `*`, a glob such as `api-*.example.com`, a CIDR or an IP; an \
                                   optional `:port` (1-65535). Not a URL."}),
        ),
        (
            "PathPattern",
            json!({"type": "string", "format": "path-glob", "pattern": "^[/*]",
                   "description": "A path glob starting with `/` (or `*`); `*` spans `/`; \
                                   no query string"}),
        ),
        (
            "MethodName",
            json!({"type": "string", "pattern": format!("^(?:{})$", methods.join("|")),
                   "description": "An HTTP method (`GET`, …, any case) or `ALL`"}),
        ),
        (
            "ToolPattern",
            json!({"type": "string", "format": "glob", "minLength": 1,
                   "description": "An MCP tool name glob such as `send_*`"}),
        ),
        (
            "CelExpr",
            json!({"type": "string", "format": "cel",
                   "description": "A CEL expression over `request`, `identity` and `agent` \
                                   giving a boolean (docs/cel.md)"}),
        ),
        (
            "Regex",
            json!({"type": "string", "format": "rust-regex",
                   "description": "A regular expression in Rust `regex` syntax"}),
        ),
        (
            "Duration",
            json!({"type": "string", "format": "duration-text",
                   "description": "A duration such as `30s`, `5m` or `1h 30m`"}),
        ),
        (
            "Template",
            json!({"type": "string", "format": "template",
                   "description": "Text with `{{ var }}` or `{{ base64 var }}` (docs/secrets.md)"}),
        ),
    ] {
        schemas.insert(name.into(), schema);
    }
}

/// An enum of lower-case words, with the Capitalized and UPPER CASE spellings the server
/// also reads.
fn spellings(words: &[&str]) -> Value {
    let mut all: Vec<String> = Vec::new();
    for word in words {
        let mut capitalized = word.to_string();
        capitalized[..1].make_ascii_uppercase();
        all.extend([word.to_string(), capitalized, word.to_ascii_uppercase()]);
    }
    json!({"type": "string", "enum": all,
           "description": "Lower case; Capitalized and UPPER CASE are read too"})
}

fn policy(schemas: &mut Map<String, Value>, gateway: &Gateway) {
    schemas.insert(
        "Action".into(),
        spellings(&["allow", "flag", "deny", "gated", "approve"]),
    );
    schemas.insert(
        "PolicyStatus".into(),
        spellings(&["active", "disabled", "draft"]),
    );
    set(
        schemas,
        "PolicyConfig",
        &["properties", "name"],
        reference("Name"),
    );
    let priority = &mut schemas["PolicyConfig"]["properties"]["priority"];
    priority["minimum"] = json!(i32::MIN);
    priority["maximum"] = json!(i32::MAX);
    let rules = &mut schemas["PolicyConfig"]["properties"]["rules"];
    rules["minItems"] = json!(1);
    // A gated policy has a condition; no other policy has one, nor asks for approval when
    // it fails. A grant allows.
    schemas["PolicyConfig"]["allOf"] = json!([{
        "if": {"required": ["action"],
               "properties": {"action": {"enum": ["gated", "Gated", "GATED"]}}},
        "then": {"required": ["condition"],
                 "properties": {"condition": reference("CelExpr")}},
        "else": {"properties": {"condition": {"type": "null"},
                                "when_condition_fails": {"enum": ["deny"]}}},
    }, {
        "if": {"required": ["grant"], "properties": {"grant": {"type": "object"}}},
        "then": {"properties": {"action": {"enum": ["allow", "Allow", "ALLOW"]}}},
    }]);
    let grant = schemas.get_mut("Grant").expect("Grant");
    grant["properties"]["expires_at"] = json!({"type": "string", "format": "utc-time"});
    grant["properties"]["arguments_sha256"] =
        nullable(json!({"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}));
    set(
        schemas,
        "PolicyConfig",
        &["properties", "condition"],
        nullable(reference("CelExpr")),
    );

    let rule = &mut schemas["RuleConfig"]["properties"];
    rule["host"] = reference("HostPattern");
    rule["paths"]["items"] = reference("PathPattern");
    rule["methods"]["items"] = reference("MethodName");
    rule["tools"]["items"] = reference("ToolPattern");
    rule["cel"] = nullable(reference("CelExpr"));
    rule["body"] = nullable(reference("BodyFields"));
    rule["prompt"] = nullable(reference("BodyFields"));
    rule["dlp"]["items"] = json!({"type": "string", "enum": gateway.detectors});

    let body = schemas.get_mut("BodyFields").expect("BodyFields");
    body["properties"]["contains"]["items"] = json!({"type": "string", "minLength": 1});
    body["properties"]["regex"]["items"] = reference("Regex");
    body["anyOf"] = json!([
        {"required": ["contains"], "properties": {"contains": {"type": "array", "minItems": 1}}},
        {"required": ["regex"], "properties": {"regex": {"type": "array", "minItems": 1}}},
    ]);

    let header = schemas.get_mut("HeaderFields").expect("HeaderFields");
    header["properties"]["name"] = json!({"type": "string", "pattern": format!("^{TOKEN}$"),
                                          "description": "The header name, case-insensitive"});
    header["properties"]["regex"] = nullable(reference("Regex"));
    let mut matchers: Vec<Value> = exactly_one(
        &["exact", "prefix", "suffix", "contains"],
        &json!({"type": "string"}),
    )
    .as_array()
    .cloned()
    .unwrap_or_default();
    matchers.push(json!({"required": ["regex"], "properties": {"regex": reference("Regex")}}));
    matchers.push(json!({"required": ["present"], "properties": {"present": {"type": "boolean"}}}));
    header["oneOf"] = Value::Array(matchers);
    header["description"] = json!(
        "Exactly one of `exact`, `prefix`, `suffix`, `contains`, \
                                   `regex` or `present`, on the header `name`"
    );

    // A secret's rules scope it by host, path and method only.
    let mut scope = schemas["RuleConfig"].clone();
    let keep = ["host", "paths", "methods"];
    if let Some(properties) = scope["properties"].as_object_mut() {
        properties.retain(|k, _| keep.contains(&k.as_str()));
    }
    scope["description"] = json!("Where a secret applies: `host`, optional `paths` and `methods`");
    schemas.insert("ScopeRule".into(), scope);
}

fn secret(schemas: &mut Map<String, Value>, gateway: &Gateway) {
    set(
        schemas,
        "SecretConfig",
        &["properties", "name"],
        reference("Name"),
    );
    let properties = &mut schemas["SecretConfig"]["properties"];
    properties["rules"]["items"] = reference("ScopeRule");
    properties["rules"]["minItems"] = json!(1);
    properties["source"] = reference("Source");
    properties["inject"] = reference("Inject");
    schemas.insert("Source".into(), source(gateway.bounds.as_ref()));
    schemas.insert("Inject".into(), inject());
}

/// One variant of a tagged object: `key` is `tag`, beside `fields`; closed to others.
fn tagged(key: &str, tag: &str, fields: Value, required: &[&str]) -> Value {
    let mut properties = json!({key: {"const": tag}});
    if let (Some(all), Some(fields)) = (properties.as_object_mut(), fields.as_object()) {
        all.extend(fields.clone());
    }
    let mut required: Vec<&str> = required.to_vec();
    required.insert(0, key);
    json!({"type": "object", "additionalProperties": false, "properties": properties,
           "required": required})
}

/// One source variant: its own fields beside the common ones.
fn variant(kind: &str, mut own: Value, required: &[&str]) -> Value {
    if let Some(own) = own.as_object_mut() {
        own.extend([
            ("ttl".to_owned(), reference("Duration")),
            ("failure_ttl".to_owned(), reference("Duration")),
            (
                "json_key".to_owned(),
                json!({"type": "string", "minLength": 1}),
            ),
        ]);
    }
    tagged("type", kind, own, required)
}

/// `Source`: where a value is read. Bounded by `store.secret_sources` when the gateway has
/// a store: only the allowed types, `env` variables with an allowed prefix, `file`s under
/// an allowed directory. Nested sources (a Vault token) are bounded the same way.
fn source(bounds: Option<&SourceBounds>) -> Value {
    let string = json!({"type": "string"});
    let optional = nullable(string.clone());
    let source = reference("Source");
    let allowed = |kind: &str| bounds.is_none_or(|b| b.types.iter().any(|t| t == kind));
    let mut variants = Vec::new();
    // A variable name is not empty and holds no `=` or NUL.
    let env_var = match bounds {
        None => Some(json!({"type": "string", "pattern": "^[^=\\u0000]+$"})),
        Some(b) if b.env_prefixes.is_empty() => None,
        Some(b) => {
            let prefixes: Vec<String> = b.env_prefixes.iter().map(|p| escape(p)).collect();
            Some(json!({"type": "string",
                        "pattern": format!("^(?:{})[^=\\u0000]*$", prefixes.join("|")),
                        "description": format!("A variable whose name starts with {}",
                                               b.env_prefixes.join(", "))}))
        }
    };
    if let Some(var) = env_var {
        variants.push(variant("env", json!({"var": var}), &["var"]));
    }
    let file_path = match bounds {
        None => Some(json!({"type": "string", "minLength": 1})),
        Some(b) if b.file_dirs.is_empty() => None,
        Some(b) => {
            let dirs: Vec<String> = (b.file_dirs.iter())
                .map(|d| escape(d.to_string_lossy().trim_end_matches('/')))
                .collect();
            Some(json!({"type": "string",
                        "pattern": format!("^(?!.*/\\.\\.(?:/|$))(?:{})/", dirs.join("|")),
                        "description": "An absolute path without `..` inside an allowed \
                                        directory (a symlink out of it is refused)"}))
        }
    };
    if let Some(path) = file_path {
        variants.push(variant("file", json!({"path": path}), &["path"]));
    }
    let remote = [
        (
            "aws_secrets_manager",
            json!({"secret_id": string, "version_stage": optional, "region": optional,
                "endpoint_url": optional}),
            &["secret_id"][..],
        ),
        (
            "aws_ssm",
            json!({"parameter": string, "with_decryption": {"type": "boolean"}, "region": optional,
                "endpoint_url": optional}),
            &["parameter"][..],
        ),
        (
            "aws_credentials",
            json!({"profile": optional, "region": optional}),
            &[][..],
        ),
        (
            "onepassword_connect",
            json!({"url": string, "token": source, "vault": string, "item": string,
                "field": string}),
            &["url", "token", "vault", "item"][..],
        ),
        (
            "vault",
            json!({"address": string, "token": source, "mount": string, "path": string,
                "key": optional, "namespace": optional}),
            &["address", "token", "path"][..],
        ),
        (
            "oauth2",
            json!({"token_url": string,
                "grant": {"enum": ["client_credentials", "refresh_token", "jwt_bearer"]},
                "client_id": optional, "client_secret": nullable(source.clone()),
                "client_auth": {"enum": ["basic", "body"]},
                "refresh_token": nullable(source.clone()),
                "assertion": nullable(json!({"type": "object", "additionalProperties": false,
                    "required": ["issuer", "private_key"],
                    "properties": {"issuer": string, "subject": optional, "audience": optional,
                                   "private_key": source, "algorithm": {"enum": ["RS256", "ES256"]},
                                   "key_id": optional}})),
                "scopes": {"type": "array", "items": string}, "audience": optional}),
            &["token_url", "grant"][..],
        ),
        (
            "gcp_service_account",
            json!({"key": source, "scopes": {"type": "array", "items": string},
                "subject": optional, "token_url": optional}),
            &["key", "scopes"][..],
        ),
    ];
    for (kind, own, required) in remote {
        if allowed(kind) {
            variants.push(variant(kind, own, required));
        }
    }
    let mut schema = json!({
        "description": "Where the value is read, on the gateway host (docs/secrets.md); never \
                        the value itself. With a store, only what `store.secret_sources` allows.",
        "oneOf": variants,
    });
    if schema["oneOf"].as_array().is_some_and(Vec::is_empty) {
        // Nothing is allowed: no source is valid.
        schema = json!({"not": {}, "description": "This gateway's `store.secret_sources` \
                                                   allows no source"});
    }
    schema
}

/// `Inject`: how the value reaches the upstream, one object per `style`.
fn inject() -> Value {
    let header = writable_header();
    let optional_header = nullable(header.clone());
    let placeholder = json!({"type": "string", "pattern": "^[!-~]{8,}$",
                             "description": "At least 8 printable ASCII characters, no spaces"});
    let aws_name = json!({"type": "string", "pattern": "^[A-Za-z0-9-]+$"});
    let location = json!({"type": "string", "anyOf": [
        {"enum": ["path", "body"]},
        {"pattern": "^query:[\\s\\S]"},
        {"pattern": format!("^header:{TOKEN}$"), "not": reserved_header("header:")},
    ]});
    let style = |name: &str, own: Value, required: &[&str]| tagged("style", name, own, required);
    let mut custom = style(
        "custom",
        json!({"header": optional_header, "query": nullable(json!({"type": "string", "minLength": 1})),
               "format": {"type": "string", "format": "credential-template",
                          "description": "A template using {{ value }} and no request variables"}}),
        &[],
    );
    custom["oneOf"] = json!([
        {"required": ["header"], "properties": {"header": header, "query": {"type": "null"}}},
        {"required": ["query"], "properties": {"query": {"type": "string"}, "header": {"type": "null"}}},
    ]);
    json!({
        "description": "How the value reaches the upstream (docs/secrets.md)",
        "oneOf": [
            style("bearer", json!({}), &[]),
            style("basic", json!({"username": {"type": "string"}}), &["username"]),
            custom,
            style("path_token", json!({"placeholder": placeholder}), &["placeholder"]),
            style("proxy_token", json!({"placeholder": placeholder,
                                        "locations": {"type": "array", "minItems": 1, "items": location},
                                        "require": {"type": "boolean"}}), &["placeholder"]),
            style("aws_sigv4", json!({"service": aws_name, "region": aws_name}),
                  &["service", "region"]),
            style("hmac", json!({"header": header,
                                 "message": {"type": "string", "format": "message-template",
                                             "description": "A template of request variables, \
                                                             without {{ value }}"},
                                 "algorithm": {"enum": ["sha256", "sha512", "sha1"]},
                                 "encoding": {"enum": ["hex", "base64"]},
                                 "prefix": nullable(json!({"type": "string"})),
                                 "timestamp_header": optional_header}),
                  &["header", "message"]),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consts(schema: &Value, key: &str) -> Vec<String> {
        schema["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["properties"][key]["const"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Every variant the server reads is in the schema, and nothing else is.
    #[test]
    fn sources_and_styles_are_the_ones_the_server_reads() {
        let sources = [
            "{type: env, var: X}",
            "{type: file, path: /x}",
            "{type: aws_secrets_manager, secret_id: x}",
            "{type: aws_ssm, parameter: x}",
            "{type: aws_credentials}",
            "{type: onepassword_connect, url: u, token: {type: env, var: T}, vault: v, item: i}",
            "{type: vault, address: a, token: {type: env, var: T}, path: p}",
            "{type: oauth2, token_url: u, grant: client_credentials}",
            "{type: gcp_service_account, key: {type: env, var: K}, scopes: []}",
        ];
        let mut read: Vec<String> = sources
            .iter()
            .map(|s| {
                let source: crate::secrets::SourceConfig = serde_norway::from_str(s).unwrap();
                source.kind.type_name().to_owned()
            })
            .collect();
        let mut described = consts(&source(None), "type");
        read.sort();
        described.sort();
        assert_eq!(read, described);

        let styles = [
            "{style: bearer}",
            "{style: basic, username: u}",
            "{style: custom, header: x-key}",
            "{style: path_token, placeholder: ptok_12345}",
            "{style: proxy_token, placeholder: ptok_12345}",
            "{style: aws_sigv4, service: s3, region: eu-west-1}",
            "{style: hmac, header: x-sig, message: '{{ method }}'}",
        ];
        let mut read: Vec<String> = styles
            .iter()
            .map(|s| {
                let inject: crate::transforms::secrets::InjectConfig =
                    serde_norway::from_str(s).unwrap();
                inject.style().to_owned()
            })
            .collect();
        let mut described = consts(&inject(), "style");
        read.sort();
        described.sort();
        assert_eq!(read, described);
    }

    #[test]
    fn a_store_gateway_offers_only_the_sources_its_bounds_allow() {
        let bounds: SourceBounds =
            serde_norway::from_str("{env_prefixes: [GH_, APP.], types: [vault]}").unwrap();
        let schema = source(Some(&bounds));
        assert_eq!(consts(&schema, "type"), ["env", "vault"]);
        let pattern = schema["oneOf"][0]["properties"]["var"]["pattern"]
            .as_str()
            .unwrap();
        let re = regex::Regex::new(pattern).unwrap();
        assert!(re.is_match("GH_TOKEN") && re.is_match("APP.KEY"));
        assert!(!re.is_match("HOME") && !re.is_match("APPXKEY") && !re.is_match("GH_A=B"));
        let none = source(Some(&SourceBounds::default()));
        assert!(none.get("oneOf").is_none(), "{none}");
    }

    #[test]
    fn any_case_matches_every_spelling() {
        let re = regex::Regex::new(&format!("^{}$", any_case("x-envoy-"))).unwrap();
        assert!(re.is_match("X-Envoy-") && re.is_match("x-envoy-"));
        assert!(!re.is_match("xxenvoy-"));
    }
}
