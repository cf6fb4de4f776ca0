//! The route table Envoy decides with: per listener, for each host a policy names exactly,
//! the routes compiled from the rules that could decide a request to it, in decision
//! order. Each route sends what it matches to Envoy's upstream (allow, flag), answers 403
//! itself (deny), or hands it to Portcullis over ext_proc — wherever a rule reads more than
//! host, path and method, or Envoy cannot express the match exactly. Hosts no policy names
//! exactly, and every request with proxy credentials, a CONNECT, an unusual path or an npm
//! client, go to Portcullis (docs/fast-path.md).
//!
//! [`HostRoutes::route`] picks a route the way Envoy does (first match); `portcullis
//! check` answers with it, and the differential tests hold it equal to the full decision.

use std::sync::Arc;

use crate::identity::Presented;
use crate::policy::rule::{HostMatch, MethodSet, PathSet, PlainPath};
use crate::policy::{Action, RequestFacts, RuleRef, WorkloadTagIds};
use crate::request::{Method, OutboundRequest};
use crate::snapshot::Snapshot;
use crate::vocab::Tag;

/// The port a Host without one means on the plain-HTTP forward proxy.
pub const PLAIN_HTTP_PORT: u16 = 80;

/// The routes of one listener.
#[derive(Debug)]
pub struct ListenerRoutes {
    /// Why nothing on this listener is decided by Envoy, when nothing is.
    pub off: Option<String>,
    /// Hosts with at least one route Envoy decides, sorted by host and port.
    pub hosts: Vec<HostRoutes>,
    /// POST requests carrying an MCP session go to Portcullis first: it filters
    /// `tools/list` answers by the policies' tool rules.
    pub mcp_to_processor: bool,
}

/// The routes for one host and port, first match wins.
#[derive(Debug)]
pub struct HostRoutes {
    pub host: Box<str>,
    pub port: u16,
    pub routes: Vec<Route>,
}

/// One route: a path and a method set, and what happens to a request they match.
#[derive(Debug, Clone)]
pub struct Route {
    pub path: PathMatch,
    /// Never holds CONNECT or non-standard methods alone: those never reach these routes.
    pub methods: MethodSet,
    pub action: RouteAction,
}

/// A path as Envoy matches it: `Exact` is Envoy's `path` (the path without its query),
/// `Prefix` its `prefix` (a prefix without `?` matches the path without its query exactly
/// when it matches the whole `:path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
}

/// What a route does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    /// Envoy forwards it to the host's vetted address, unseen by Portcullis.
    Allow { rule: RuleRef, flag: bool },
    /// Envoy answers 403 with the contract's refusal; `None`: the default action.
    Deny { rule: Option<RuleRef> },
    /// Portcullis decides, over ext_proc, for this reason.
    Processor { why: Arc<str> },
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(exact) => path == &**exact,
            PathMatch::Prefix(prefix) => path.starts_with(&**prefix),
        }
    }
}

/// Why a request skips the routes before any host is looked at, when it does: what Envoy's
/// first routes on every host send to Portcullis.
pub fn skips_routes(request: &OutboundRequest, mcp_to_processor: bool) -> Option<&'static str> {
    if request.method == Method::Connect || request.intercepted {
        return Some("a CONNECT tunnel is decided by Portcullis");
    }
    if request.header("proxy-authorization").is_some() {
        return Some("it presents proxy credentials: its identity and tags come from them");
    }
    if request
        .header("user-agent")
        .is_some_and(|agent| agent.starts_with(b"npm/"))
    {
        return Some("npm's refusals are shaped for npm by Portcullis");
    }
    // The path as sent (as Envoy routes on it), not as Portcullis decoded it.
    let sent = request
        .header(":path")
        .map_or(request.path.as_bytes(), |p| {
            p.split(|b| *b == b'?').next().unwrap_or(p)
        });
    if sent
        .iter()
        .any(|b| UNUSUAL_PATH_CHARACTERS.contains(&char::from(*b)))
    {
        return Some(
            "its path has `%`, `;` or `\\`, which Portcullis reads by its `request:` settings",
        );
    }
    if mcp_to_processor && request.method == Method::Post && mcp_session(request) {
        return Some("an MCP tools/list answer is filtered by Portcullis");
    }
    None
}

/// Path characters Portcullis reads by its `request:` settings (percent-decoding, `;`
/// parameters, backslashes): a path holding one always goes to Portcullis.
pub const UNUSUAL_PATH_CHARACTERS: [char; 3] = ['%', ';', '\\'];

/// The headers by which Portcullis recognises an MCP exchange (`watches_tools_list`).
pub const MCP_HEADERS: [&str; 2] = ["mcp-session-id", "mcp-protocol-version"];

fn mcp_session(request: &OutboundRequest) -> bool {
    request.headers.iter().any(|(name, value)| {
        MCP_HEADERS.contains(&name.as_str())
            || (name == "accept" && value.windows(17).any(|w| w == b"text/event-stream"))
    })
}

impl HostRoutes {
    /// The route Envoy takes for a request to this host: the first whose path and method
    /// match.
    pub fn route(&self, path: &str, method: Method) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.methods.contains(method) && r.path.matches(path))
    }

    /// Whether some route is decided by Envoy.
    pub fn decides_any(&self) -> bool {
        self.routes
            .iter()
            .any(|r| !matches!(r.action, RouteAction::Processor { .. }))
    }
}

impl Snapshot {
    /// The routes of a listener carrying `listener_tags`, for a token-less workload.
    pub fn listener_routes(&self, listener_tags: &[Tag]) -> ListenerRoutes {
        let tags = match self.anonymous_tags(listener_tags) {
            Ok(tags) => tags,
            Err(off) => {
                return ListenerRoutes {
                    off: Some(off),
                    hosts: Vec::new(),
                    mcp_to_processor: false,
                };
            }
        };
        let mut hosts = Vec::new();
        for (host, port) in self.policies.named_hosts(&tags) {
            let routes = self.host_routes(&tags, host, port.unwrap_or(PLAIN_HTTP_PORT));
            if routes.decides_any() {
                hosts.push(routes);
            }
        }
        hosts.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        hosts.dedup_by(|a, b| a.host == b.host && a.port == b.port);
        ListenerRoutes {
            off: None,
            hosts,
            mcp_to_processor: self.mcp_to_processor(),
        }
    }

    /// Whether MCP POSTs go to Portcullis, which filters `tools/list` answers.
    pub fn mcp_to_processor(&self) -> bool {
        self.mcp.filter_tools_list && self.policies.has_tool_conditions()
    }

    /// The tag ids a request without credentials carries on this listener, or why the
    /// listener has no routes Envoy decides.
    pub(super) fn anonymous_tags(&self, listener_tags: &[Tag]) -> Result<WorkloadTagIds, String> {
        if !self.fast_path {
            return Err("the fast path is off (gateway.fast_path: false)".into());
        }
        if self.unavailable.is_some() {
            return Err("the policies have not been loaded".into());
        }
        if self.identities.depends_on_peer() {
            return Err(
                "identities by source address or certificate (source_cidr, uri_san) make the \
                 decision depend on who sends it"
                    .into(),
            );
        }
        if !self.pipeline.has_allowlist() {
            return Err("the pipeline has no allowlist".into());
        }
        let anonymous = Presented {
            source: None,
            peer_uri_san: None,
            proxy_authorization: None,
            listener_tags,
        };
        let identity = self
            .identities
            .resolve(&anonymous)
            .map_err(|e| e.to_string())?;
        Ok(self.policies.tag_ids(&identity.tags))
    }

    /// The routes for requests to `host` at `port` from a workload with `tags`: one per
    /// rule that could decide them (one per path of it), in decision order, then the
    /// default action.
    pub(super) fn host_routes(&self, tags: &WorkloadTagIds, host: &str, port: u16) -> HostRoutes {
        let probe = RequestFacts::host_probe(host, port);
        let mut routes = Vec::new();
        let stages = self.pipeline.stages_for_host(&probe);
        if !stages.is_empty() {
            routes.push(Route {
                path: PathMatch::Any,
                methods: MethodSet::ALL,
                action: RouteAction::Processor {
                    why: format!("transforms apply to it: {}", stages.join(", ")).into(),
                },
            });
        } else {
            for rule in self.policies.host_rules(&probe, tags) {
                self.rule_routes(rule, &mut routes);
            }
            routes.push(Route {
                path: PathMatch::Any,
                methods: MethodSet::ALL,
                action: match self.policies.default_action().action() {
                    Action::Deny => RouteAction::Deny { rule: None },
                    _ => RouteAction::Processor {
                        why: "it is allowed by the default action: there is no host to vet \
                              ahead of time, so the network guard vets it per request"
                            .into(),
                    },
                },
            });
        }
        HostRoutes {
            host: host.into(),
            port,
            routes,
        }
    }

    /// The routes of one rule: what its paths and methods match, and who decides it.
    fn rule_routes(&self, at: RuleRef, routes: &mut Vec<Route>) {
        let policy = self.policies.policy(at.policy);
        let rule = &policy.rules[at.rule as usize];
        let processor = |why: String| RouteAction::Processor { why: why.into() };
        let mut action = if policy.warn {
            processor(format!(
                "dry-run policy {:?} matches ahead of the decider",
                &*policy.name
            ))
        } else if policy.grant.is_some() {
            processor(format!("grant {:?} is for one identity", &*policy.name))
        } else if rule.conditions.is_some() {
            processor(format!(
                "its decision reads more than host, path and method: policy {:?} rule {} has \
                 conditions beyond host, path and method",
                &*policy.name, at.rule
            ))
        } else {
            match policy.action {
                Action::Deny => RouteAction::Deny { rule: Some(at) },
                Action::Allow | Action::Flag if matches!(rule.host.kind, HostMatch::Exact(_)) => {
                    RouteAction::Allow {
                        rule: at,
                        flag: policy.action == Action::Flag,
                    }
                }
                Action::Allow | Action::Flag => processor(format!(
                    "it is allowed by policy {:?}, whose rule names no exact host (a \
                     wildcard): there is no address to vet ahead of time, so the network \
                     guard vets it per request",
                    &*policy.name
                )),
                Action::Gated | Action::Approve => {
                    processor(format!("policy {:?} is `{}`", &*policy.name, policy.action))
                }
            }
        };
        // A refusal names its policy in text Envoy formats: a `%` there would be read as
        // a command.
        if matches!(action, RouteAction::Deny { .. })
            && (policy.name.contains('%')
                || policy.message.as_deref().is_some_and(|m| m.contains('%')))
        {
            action = processor(format!(
                "policy {:?}'s refusal text holds `%`, which Envoy's answer cannot carry",
                &*policy.name
            ));
        }
        // Methods Envoy cannot list (non-standard ones only a rule for ALL matches) widen
        // the route to every method: the request goes to Portcullis, which decides it.
        let mut methods = rule.methods;
        if methods != MethodSet::ALL && methods.contains(Method::Other) {
            methods = MethodSet::ALL;
            action = processor("its rule's methods cannot be listed in a route".into());
        }
        let paths: Vec<PathMatch> = match &*rule.paths {
            PathSet::Any => vec![PathMatch::Any],
            PathSet::Plain(plain) => plain
                .iter()
                .map(|p| match p {
                    PlainPath::Exact(exact) => PathMatch::Exact(exact.clone()),
                    PlainPath::Prefix(prefix) => PathMatch::Prefix(prefix.clone()),
                })
                .collect(),
            // A glob Envoy's matchers cannot express exactly: every path, for the rule's
            // methods, goes to Portcullis.
            PathSet::Globs(_) => {
                action = processor(format!(
                    "policy {:?} rule {} has a path glob Envoy's routes do not express",
                    &*policy.name, at.rule
                ));
                vec![PathMatch::Any]
            }
        };
        for path in paths {
            routes.push(Route {
                path,
                methods,
                action: action.clone(),
            });
        }
    }
}

/// What a route Envoy decides tells the audit trail, carried in the route's name: Envoy's
/// access log names the route each request took. `fast|<action>|<config version>|<rule>|
/// <policy version>|<listener>|<policy>`, `-` for what is absent; the policy name is last,
/// so any character in it survives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastRouteName<'a> {
    /// `allow`, `flag` or `deny`.
    pub action: &'a str,
    pub config_version: &'a str,
    pub rule: Option<u32>,
    pub policy_version: Option<i64>,
    /// The route configuration's name: the listener's tags.
    pub listener: &'a str,
    pub policy: Option<&'a str>,
}

const FAST_ROUTE: &str = "fast|";

impl FastRouteName<'_> {
    pub fn encode(&self) -> String {
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        format!(
            "{FAST_ROUTE}{}|{}|{}|{}|{}|{}",
            self.action,
            self.config_version,
            or_dash(self.rule.map(|r| r.to_string())),
            or_dash(self.policy_version.map(|v| v.to_string())),
            self.listener,
            self.policy.unwrap_or("-"),
        )
    }

    /// The name's parts, when it names a route Envoy decides.
    pub fn parse(name: &str) -> Option<FastRouteName<'_>> {
        let mut parts = name.strip_prefix(FAST_ROUTE)?.splitn(6, '|');
        let action = parts.next()?;
        if !matches!(action, "allow" | "flag" | "deny") {
            return None;
        }
        let config_version = parts.next()?;
        let rule = parts.next()?;
        let policy_version = parts.next()?;
        let listener = parts.next()?;
        let policy = parts.next()?;
        Some(FastRouteName {
            action,
            config_version,
            rule: rule.parse().ok(),
            policy_version: policy_version.parse().ok(),
            listener,
            policy: (policy != "-").then_some(policy),
        })
    }
}

impl Snapshot {
    /// The name of a route Envoy decides with `action` on the listener `listener`.
    pub fn fast_route_name(&self, action: &RouteAction, listener: &str) -> Option<String> {
        let (name, rule) = match action {
            RouteAction::Allow { rule, flag } => {
                (if *flag { "flag" } else { "allow" }, Some(*rule))
            }
            RouteAction::Deny { rule } => ("deny", *rule),
            RouteAction::Processor { .. } => return None,
        };
        let policy = rule.map(|r| self.policies.policy(r.policy));
        Some(
            FastRouteName {
                action: name,
                config_version: &self.version,
                rule: rule.map(|r| r.rule),
                policy_version: policy.and_then(|p| p.version),
                listener,
                policy: policy.map(|p| &*p.name),
            }
            .encode(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_name_carries_the_decision_and_any_policy_name() {
        let name = FastRouteName {
            action: "deny",
            config_version: "3f2a9c1b+r12",
            rule: Some(2),
            policy_version: Some(7),
            listener: "listener:forward-proxy,zone:a",
            policy: Some("odd|name"),
        };
        let text = name.encode();
        assert_eq!(FastRouteName::parse(&text), Some(name));
        let default = FastRouteName {
            action: "deny",
            config_version: "v",
            rule: None,
            policy_version: None,
            listener: "listener:x",
            policy: None,
        };
        assert_eq!(FastRouteName::parse(&default.encode()), Some(default));
        assert_eq!(FastRouteName::parse("fast|teleport|v|-|-|l|p"), None);
        assert_eq!(FastRouteName::parse("any_host"), None);
    }
}
