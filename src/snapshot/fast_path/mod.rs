//! Which requests are decided inside Envoy, without a round trip to Portcullis: those the
//! listener's route table ([`table`]) decides — whose decision this snapshot makes from
//! the request's host, port, path and method and the listener's (and gateway's) tags
//! alone, that need nothing else from Portcullis (no identity from a credential, source or
//! certificate, no secret, no transform beyond the policy engine, no dry run) and, when
//! allowed, go to a host named exactly, whose addresses Portcullis vets ahead of time.
//! `portcullis check` reports it (docs/fast-path.md).

pub mod table;

use serde::Serialize;

pub use table::{HostRoutes, ListenerRoutes, PathMatch, Route, RouteAction};

use super::Snapshot;
use crate::policy::Action;
use crate::request::OutboundRequest;
use crate::vocab::Tag;

/// Where a request's decision would be made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decided_by", rename_all = "snake_case")]
pub enum FastPath {
    /// Its decision depends only on host, port, path, method and the listener: `allow`,
    /// `flag` or `deny`, by `policy` (none: the default action).
    Envoy {
        action: Action,
        #[serde(skip_serializing_if = "Option::is_none")]
        policy: Option<String>,
    },
    /// It needs Portcullis, for `reason`.
    Portcullis { reason: String },
}

impl Snapshot {
    /// Where this request's decision would be made: the route Envoy would take for it on
    /// a listener carrying `listener_tags` (see the module's documentation).
    pub fn fast_path(&self, request: &OutboundRequest, listener_tags: &[Tag]) -> FastPath {
        match self.fast_route(request, listener_tags) {
            Ok(RouteAction::Allow { rule, flag }) => FastPath::Envoy {
                action: if flag { Action::Flag } else { Action::Allow },
                policy: Some(self.policies.policy(rule.policy).name.to_string()),
            },
            Ok(RouteAction::Deny { rule }) => FastPath::Envoy {
                action: Action::Deny,
                policy: rule.map(|r| self.policies.policy(r.policy).name.to_string()),
            },
            Ok(RouteAction::Processor { why }) => FastPath::Portcullis {
                reason: why.to_string(),
            },
            Err(reason) => FastPath::Portcullis { reason },
        }
    }

    /// The action of the route Envoy takes for this request, or why it takes none of
    /// the listener's routes (and goes to Portcullis).
    pub fn fast_route(
        &self,
        request: &OutboundRequest,
        listener_tags: &[Tag],
    ) -> Result<RouteAction, String> {
        if let Some(why) = table::skips_routes(request, self.mcp_to_processor()) {
            return Err(why.into());
        }
        let tags = self.anonymous_tags(listener_tags)?;
        let named = request.ip.is_none()
            && self.policies.named_hosts(&tags).iter().any(|(host, port)| {
                *host == request.host && port.unwrap_or(table::PLAIN_HTTP_PORT) == request.port
            });
        if !named {
            return Err(format!(
                "no rule names {}:{} exactly: requests to it are decided by Portcullis",
                request.host, request.port
            ));
        }
        let routes = self.host_routes(&tags, &request.host, request.port);
        routes
            .route(&request.path, request.method)
            .map(|route| route.action.clone())
            .ok_or_else(|| "no route matches it".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::test_support::{request, snapshot};

    const POLICIES: &str = r#"
policies:
  - {name: registry, action: allow, rules: [{host: registry.npmjs.org, methods: [GET]}]}
  - {name: docs, action: allow, rules: [{host: "*.example.com"}]}
  - {name: no-admin, priority: 5, action: deny, rules: [{host: registry.npmjs.org, paths: [/-/admin/*]}]}
  - {name: uploads, action: flag, rules: [{host: uploads.example.org}]}
  - {name: bodies, action: deny, rules: [{host: api.example.org, body: {contains: [secret]}}]}
  - {name: api, action: allow, rules: [{host: api.example.org}]}
  - {name: watching, warn: true, action: deny, rules: [{host: watched.example.org}]}
  - {name: watched, action: allow, rules: [{host: watched.example.org}]}
  - {name: ask, action: approve, rules: [{host: pay.example.org}]}
  - {name: wide, priority: 2, action: allow, rules: [{host: "*.npmjs.org", paths: [/wide/*]}]}
  - {name: globbed, priority: 20, action: deny, rules: [{host: "registry.npmjs.org", paths: ["/x/[a-z]"], methods: [DELETE]}]}
"#;

    fn path(yaml: &str, line: &str, headers: &[(&str, &str)]) -> FastPath {
        snapshot(yaml).fast_path(&request(line, headers), &[])
    }

    fn reason(answer: FastPath) -> String {
        match answer {
            FastPath::Portcullis { reason } => reason,
            other => panic!("expected Portcullis, got {other:?}"),
        }
    }

    #[test]
    fn host_path_and_method_decisions_qualify() {
        assert_eq!(
            path(POLICIES, "GET http://registry.npmjs.org/left-pad", &[]),
            FastPath::Envoy {
                action: Action::Allow,
                policy: Some("registry".into())
            }
        );
        assert_eq!(
            path(POLICIES, "GET http://registry.npmjs.org/-/admin/x", &[]),
            FastPath::Envoy {
                action: Action::Deny,
                policy: Some("no-admin".into())
            }
        );
        // No rule matches a host a rule names: the default action denies.
        assert_eq!(
            path(POLICIES, "POST http://registry.npmjs.org/left-pad", &[]),
            FastPath::Envoy {
                action: Action::Deny,
                policy: None
            }
        );
        assert!(matches!(
            path(POLICIES, "PUT http://uploads.example.org/f", &[]),
            FastPath::Envoy {
                action: Action::Flag,
                ..
            }
        ));
    }

    #[test]
    fn whatever_reads_more_goes_to_portcullis_and_says_why() {
        let cases = [
            (
                "GET http://docs.example.com/",
                "no rule names docs.example.com:80",
            ),
            (
                "GET http://elsewhere.net/",
                "no rule names elsewhere.net:80",
            ),
            (
                "GET http://registry.npmjs.org/wide/x",
                "names no exact host (a wildcard)",
            ),
            ("GET http://registry.npmjs.org/a%41b", "its path has `%`"),
            ("DELETE http://registry.npmjs.org/x/y", "a path glob"),
            (
                "POST http://api.example.org/v1",
                "policy \"bodies\" rule 0 has conditions",
            ),
            (
                "GET http://watched.example.org/",
                "dry-run policy \"watching\"",
            ),
            ("GET http://pay.example.org/", "policy \"ask\" is `approve`"),
            ("CONNECT registry.npmjs.org:443", "CONNECT tunnel"),
        ];
        for (line, why) in cases {
            let said = reason(path(POLICIES, line, &[]));
            assert!(said.contains(why), "{line}: {said}");
        }
        let said = reason(path(
            POLICIES,
            "GET http://registry.npmjs.org/x",
            &[("proxy-authorization", "Bearer t")],
        ));
        assert!(said.contains("proxy credentials"), "{said}");
        let with_secret = format!(
            "{POLICIES}secrets:\n  - {{name: npm, source: {{type: env, var: NPM}}, \
             inject: {{style: bearer}}, rules: [{{host: registry.npmjs.org}}]}}\n\
             transforms: [allowlist, secrets]\n"
        );
        let said = reason(path(&with_secret, "GET http://registry.npmjs.org/x", &[]));
        assert!(said.contains("transforms apply to it: secrets"), "{said}");
        let by_source = format!(
            "{POLICIES}identities:\n  - {{name: ci, source_cidr: 10.0.0.0/8, tags: [env:ci]}}\n"
        );
        let said = reason(path(&by_source, "GET http://registry.npmjs.org/x", &[]));
        assert!(said.contains("source_cidr"), "{said}");
    }
}

#[cfg(test)]
mod differential;
