//! What the transforms' unit tests share: a snapshot from config text, its errors, and a
//! request from a request line.

use crate::check::{CheckRequest, build_request};
use crate::config::parse_str;
use crate::request::OutboundRequest;
use crate::snapshot::{SecretsRuntime, Snapshot};

/// A compiled snapshot; panics with the errors of an invalid config.
pub fn snapshot(yaml: &str) -> Snapshot {
    let loaded = parse_str(yaml, None).unwrap_or_else(|e| panic!("{e}"));
    Snapshot::compile(
        &loaded.config,
        &loaded.version,
        &|_| None,
        &SecretsRuntime::default(),
    )
    .unwrap_or_else(|e| panic!("{e:?}"))
}

/// Every error of a config, as `path: message` (parse errors and compile errors).
pub fn config_errors(yaml: &str) -> Vec<String> {
    let loaded = match parse_str(yaml, None) {
        Ok(loaded) => loaded,
        Err(e) => {
            return e
                .0
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect();
        }
    };
    match Snapshot::compile(
        &loaded.config,
        &loaded.version,
        &|_| None,
        &SecretsRuntime::default(),
    ) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect(),
    }
}

/// A request from `"METHOD URL"` and its headers.
pub fn request(line: &str, headers: &[(&str, &str)]) -> OutboundRequest {
    build_request(&CheckRequest {
        request_line: line.into(),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        ..CheckRequest::default()
    })
    .unwrap()
}
