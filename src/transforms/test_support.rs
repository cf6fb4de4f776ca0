//! What the transforms' unit tests share: a snapshot from config text, its errors, and a
//! request from a request line.

use crate::check::{CheckRequest, build_request};
use crate::config::parse_str;
use crate::request::OutboundRequest;
use crate::snapshot::{Runtime, Snapshot};

/// A compiled snapshot; panics with the errors of an invalid config. Every host name
/// resolves to a public documentation address, off the network (the network guard lets it
/// through).
pub fn snapshot(yaml: &str) -> Snapshot {
    let loaded = parse_str(yaml, None).unwrap_or_else(|e| panic!("{e}"));
    Snapshot::compile(
        &loaded.config,
        &loaded.version,
        &|_| None,
        &Runtime {
            resolvers: crate::network::Resolvers::answering([203, 0, 113, 10].into()),
            ..Runtime::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e:?}"))
}

/// The mutations the transforms made: without the network guard's routing header, which
/// every allowed request gets.
pub fn transform_mutations(outcome: &crate::transforms::Outcome) -> crate::transforms::Mutations {
    let mut mutations = outcome.mutations.clone();
    mutations
        .set
        .retain(|(name, _)| name != crate::network::UPSTREAM_ADDRESS_HEADER);
    mutations
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
        &Runtime::default(),
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
