//! Which requests could be decided inside Envoy, without a round trip to Portcullis: those
//! whose decision this snapshot makes from the request's host, port, path and method and
//! the listener's (and gateway's) tags alone, that need nothing else from Portcullis — no
//! identity from a credential, source or certificate, no secret, no transform beyond the
//! policy engine, no dry run — and, when allowed, go to a host Portcullis can resolve and
//! vet ahead of time. `portcullis check` reports it (docs/fast-path.md); the routes Envoy
//! would decide with are issue 18's next step.

use serde::Serialize;

use super::{Snapshot, presented};
use crate::policy::rule::HostMatch;
use crate::policy::{Action, RequestFacts};
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
    /// Where this request's decision would be made (see the module's documentation).
    pub fn fast_path(&self, request: &OutboundRequest, listener_tags: &[Tag]) -> FastPath {
        match self.fast_path_verdict(request, listener_tags) {
            Ok((action, policy)) => FastPath::Envoy { action, policy },
            Err(reason) => FastPath::Portcullis { reason },
        }
    }

    fn fast_path_verdict(
        &self,
        request: &OutboundRequest,
        listener_tags: &[Tag],
    ) -> Result<(Action, Option<String>), String> {
        if self.unavailable.is_some() {
            return Err("the policies have not been loaded".into());
        }
        if request.method == crate::request::Method::Connect || request.intercepted {
            return Err("a CONNECT tunnel is decided by Portcullis".into());
        }
        if request.header("proxy-authorization").is_some() {
            return Err(
                "it presents proxy credentials: its identity and tags come from them".into(),
            );
        }
        if self.identities.depends_on_peer() {
            return Err(
                "identities by source address or certificate (source_cidr, uri_san) make the \
                 decision depend on who sends it"
                    .into(),
            );
        }
        let stages = self.pipeline.processor_stages(request);
        if !stages.is_empty() {
            return Err(format!("transforms apply to it: {}", stages.join(", ")));
        }
        if !self.pipeline.has_allowlist() {
            return Err("the pipeline has no allowlist".into());
        }
        if self.watches_tools_list(request) {
            return Err("an MCP tools/list answer is filtered by Portcullis".into());
        }
        let anonymous = crate::identity::Presented {
            proxy_authorization: None,
            ..presented(request, listener_tags)
        };
        let identity = self
            .identities
            .resolve(&anonymous)
            .map_err(|e| e.to_string())?;
        let facts = RequestFacts {
            identity: Some(&identity),
            ..request.facts()
        };
        let verdict = self
            .policies
            .scope_verdict(&facts, &self.policies.tag_ids(&identity.tags))
            .map_err(|more| {
                format!("its decision reads more than host, path and method: {more}")
            })?;
        let policy = verdict.decided_by.map(|r| self.policies.policy(r.policy));
        if verdict.action != Action::Deny {
            // Envoy would connect by itself: only to addresses Portcullis resolved and
            // vetted ahead of time, which takes a host named exactly.
            let exact = verdict.decided_by.is_some_and(|r| {
                let rule = &self.policies.policy(r.policy).rules[r.rule as usize];
                matches!(rule.host.kind, HostMatch::Exact(_)) && request.ip.is_none()
            });
            if !exact {
                return Err(
                    "it is allowed by a rule without an exact host name (a wildcard, an \
                     address, or the default action): there is no address to vet ahead of \
                     time, so the network guard vets it per request"
                        .into(),
                );
            }
        }
        Ok((verdict.action, policy.map(|p| p.name.to_string())))
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
            path(POLICIES, "GET https://registry.npmjs.org/left-pad", &[]),
            FastPath::Envoy {
                action: Action::Allow,
                policy: Some("registry".into())
            }
        );
        assert_eq!(
            path(POLICIES, "GET https://registry.npmjs.org/-/admin/x", &[]),
            FastPath::Envoy {
                action: Action::Deny,
                policy: Some("no-admin".into())
            }
        );
        // Nothing matches: the default action denies.
        assert_eq!(
            path(POLICIES, "GET https://elsewhere.net/", &[]),
            FastPath::Envoy {
                action: Action::Deny,
                policy: None
            }
        );
        assert!(matches!(
            path(POLICIES, "PUT https://uploads.example.org/f", &[]),
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
                "GET https://docs.example.com/",
                "without an exact host name",
            ),
            (
                "POST https://api.example.org/v1",
                "policy \"bodies\" rule 0 has conditions",
            ),
            (
                "GET https://watched.example.org/",
                "dry-run policy \"watching\"",
            ),
            (
                "GET https://pay.example.org/",
                "policy \"ask\" is `approve`",
            ),
            ("CONNECT registry.npmjs.org:443", "CONNECT tunnel"),
        ];
        for (line, why) in cases {
            let said = reason(path(POLICIES, line, &[]));
            assert!(said.contains(why), "{line}: {said}");
        }
        let said = reason(path(
            POLICIES,
            "GET https://registry.npmjs.org/x",
            &[("proxy-authorization", "Bearer t")],
        ));
        assert!(said.contains("proxy credentials"), "{said}");
        let with_secret = format!(
            "{POLICIES}secrets:\n  - {{name: npm, source: {{type: env, var: NPM}}, \
             inject: {{style: bearer}}, rules: [{{host: registry.npmjs.org}}]}}\n\
             transforms: [allowlist, secrets]\n"
        );
        let said = reason(path(&with_secret, "GET https://registry.npmjs.org/x", &[]));
        assert!(said.contains("transforms apply to it: secrets"), "{said}");
        let by_source = format!(
            "{POLICIES}identities:\n  - {{name: ci, source_cidr: 10.0.0.0/8, tags: [env:ci]}}\n"
        );
        let said = reason(path(&by_source, "GET https://registry.npmjs.org/x", &[]));
        assert!(said.contains("source_cidr"), "{said}");
    }
}
