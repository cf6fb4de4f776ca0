//! A listener's [`ListenerRoutes`] as Envoy's `RouteConfiguration`: one virtual host per
//! host and port Envoy decides for, whose first routes send to Portcullis what the table
//! never decides (CONNECT, proxy credentials, npm, unusual paths, MCP sessions), then one
//! route per table route; and the catch-all virtual host, which sends everything to
//! Portcullis as the static configs do.

use std::collections::HashMap;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::common::mutation_rules::v3::{HeaderMutation, header_mutation};
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, SubstitutionFormatString, header_value_option,
    substitution_format_string,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, FilterConfig, HeaderMatcher, Route, RouteAction as EnvoyRouteAction,
    RouteConfiguration, RouteMatch, VirtualHost, header_matcher, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3::{
    HeaderMutationPerRoute, Mutations,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Any, Duration, Struct, Value, value::Kind};

use crate::network::UPSTREAM_ADDRESS_HEADER;
use crate::policy::rule::MethodSet;
use crate::request::Method;
use crate::snapshot::route_table::{MCP_HEADERS, UNUSUAL_PATH_CHARACTERS};
use crate::snapshot::{HostRoutes, ListenerRoutes, PathMatch, RouteAction, Snapshot};

/// The cluster the forward proxy's allowed requests go to (envoy/forward-proxy.yaml): an
/// ORIGINAL_DST cluster connecting to the address in [`UPSTREAM_ADDRESS_HEADER`].
pub const UPSTREAM_CLUSTER: &str = "upstream_plain";
/// The HTTP filters the fast routes configure, by their names in the listener's chain.
pub const EXT_PROC_FILTER: &str = "envoy.filters.http.ext_proc";
pub const HEADER_MUTATION_FILTER: &str = "portcullis.upstream_address";

/// The vetted address Envoy connects to for an allowed route: by host, port and the
/// deciding policy (whose CIDR rules may exempt an internal range).
pub type Vetted<'a> = &'a dyn Fn(&str, u16, &RouteAction) -> Option<SocketAddr>;

/// The route configuration `name` (the listener's tags) for `routes`.
pub fn route_configuration(
    name: &str,
    snapshot: &Snapshot,
    routes: &ListenerRoutes,
    vetted: Vetted<'_>,
) -> RouteConfiguration {
    let mut virtual_hosts: Vec<VirtualHost> = routes
        .hosts
        .iter()
        .map(|host| virtual_host(name, snapshot, routes.mcp_to_processor, host, vetted))
        .collect();
    virtual_hosts.push(VirtualHost {
        // The config version, for whoever reads Envoy's config dump: which policies
        // these routes were compiled from.
        name: format!("any_host|{}", snapshot.version),
        domains: vec!["*".into()],
        routes: vec![connect_route(), processor_route(RouteMatch::default())],
        ..Default::default()
    });
    RouteConfiguration {
        name: name.into(),
        virtual_hosts,
        // Added by use_remote_address; not something to leak to third parties.
        request_headers_to_remove: vec![
            "x-envoy-external-address".into(),
            "x-envoy-internal".into(),
        ],
        ..Default::default()
    }
}

fn virtual_host(
    listener: &str,
    snapshot: &Snapshot,
    mcp_to_processor: bool,
    host: &HostRoutes,
    vetted: Vetted<'_>,
) -> VirtualHost {
    let mut domains = vec![format!("{}:{}", host.host, host.port)];
    if host.port == crate::snapshot::route_table::PLAIN_HTTP_PORT {
        domains.push(host.host.to_string());
    }
    let mut routes = vec![
        connect_route(),
        processor_route(RouteMatch {
            headers: vec![present("proxy-authorization")],
            ..any_path()
        }),
        processor_route(RouteMatch {
            headers: vec![prefix_header("user-agent", "npm/")],
            ..any_path()
        }),
        processor_route(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::SafeRegex(regex(&format!(
                ".*[{}].*",
                UNUSUAL_PATH_CHARACTERS
                    .iter()
                    .map(|c| format!("\\x{:02x}", *c as u32))
                    .collect::<String>()
            )))),
            ..Default::default()
        }),
    ];
    if mcp_to_processor {
        let post = methods_header(MethodSet::of(Method::Post)).expect("POST is listed");
        for name in MCP_HEADERS {
            routes.push(processor_route(RouteMatch {
                headers: vec![post.clone(), present(name)],
                ..any_path()
            }));
        }
        routes.push(processor_route(RouteMatch {
            headers: vec![post, contains_header("accept", "text/event-stream")],
            ..any_path()
        }));
    }
    for route in &host.routes {
        let Some(mut matcher) = path_match(&route.path) else {
            continue;
        };
        if route.methods != MethodSet::ALL {
            match methods_header(route.methods) {
                Some(methods) => matcher.headers.push(methods),
                // CONNECT alone: never reaches these routes.
                None => continue,
            }
        }
        routes.push(match &route.action {
            RouteAction::Processor { .. } => processor_route(matcher),
            action @ RouteAction::Allow { .. } => {
                match vetted(&host.host, host.port, action) {
                    Some(address) => Route {
                        name: snapshot
                            .fast_route_name(action, listener)
                            .unwrap_or_default(),
                        r#match: Some(matcher),
                        action: Some(route::Action::Route(upstream())),
                        typed_per_filter_config: HashMap::from([
                            (EXT_PROC_FILTER.to_owned(), ext_proc_disabled()),
                            (HEADER_MUTATION_FILTER.to_owned(), connect_to(address)),
                        ]),
                        ..Default::default()
                    },
                    // No vetted address (it resolves to an internal one, or not at all):
                    // Portcullis refuses it per request, saying why.
                    None => processor_route(matcher),
                }
            }
            action @ RouteAction::Deny { rule } => {
                match refusal_body(snapshot, *rule, &host.host, host.port) {
                    Some(body_format) => Route {
                        name: snapshot
                            .fast_route_name(action, listener)
                            .unwrap_or_default(),
                        r#match: Some(matcher),
                        action: Some(route::Action::DirectResponse(DirectResponseAction {
                            status: 403,
                            body: None,
                            body_format: Some(body_format),
                        })),
                        response_headers_to_add: vec![
                            set_header("x-portcullis-request-id", "%REQ(X-REQUEST-ID)%"),
                            set_header("x-request-id", "%REQ(X-REQUEST-ID)%"),
                        ],
                        // The filters before the router run on a direct response too.
                        typed_per_filter_config: HashMap::from([(
                            EXT_PROC_FILTER.to_owned(),
                            ext_proc_disabled(),
                        )]),
                        ..Default::default()
                    },
                    None => processor_route(matcher),
                }
            }
        });
    }
    VirtualHost {
        name: format!("fast:{}:{}", host.host, host.port),
        domains,
        routes,
        ..Default::default()
    }
}

/// The contract's refusal (`{"error": {"type": "policy_denied", …}}`), formatted by Envoy
/// with the request's method, path and id; `None` when the policy's text holds a `%`,
/// which Envoy would read as a command.
fn refusal_body(
    snapshot: &Snapshot,
    rule: Option<crate::policy::RuleRef>,
    host: &str,
    port: u16,
) -> Option<SubstitutionFormatString> {
    // As Portcullis words it: the port named unless it is plain HTTP's, the path without
    // its query.
    let target = if port == crate::snapshot::route_table::PLAIN_HTTP_PORT {
        format!("%REQ(:METHOD)% {host}%PATH(NQ)%")
    } else {
        format!("%REQ(:METHOD)% {host}:{port}%PATH(NQ)%")
    };
    let (reason, message, policy) = match rule {
        Some(rule) => {
            let policy = snapshot.policies.policy(rule.policy);
            let message = match &policy.message {
                Some(message) => message.to_string(),
                None => format!("{target} is denied by policy {:?}", &*policy.name),
            };
            ("policy_deny", message, Some(policy.name.to_string()))
        }
        None => (
            "no_matching_policy",
            format!("no policy allows {target} for this workload"),
            None,
        ),
    };
    if policy.as_deref().is_some_and(|p| p.contains('%'))
        || message
            .replace("%REQ(:METHOD)%", "")
            .replace("%PATH(NQ)%", "")
            .contains('%')
    {
        return None;
    }
    let text = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let mut error = vec![
        ("type", text("policy_denied")),
        ("message", text(&message)),
        ("reason", text(reason)),
        ("transform", text("allowlist")),
        ("request_id", text("%REQ(X-REQUEST-ID)%")),
    ];
    error.push((
        "policy",
        match &policy {
            Some(policy) => text(policy),
            None => Value {
                kind: Some(Kind::NullValue(0)),
            },
        },
    ));
    let error = Struct {
        fields: error.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    };
    Some(SubstitutionFormatString {
        format: Some(substitution_format_string::Format::JsonFormat(Struct {
            fields: HashMap::from([(
                "error".to_owned(),
                Value {
                    kind: Some(Kind::StructValue(error)),
                },
            )]),
        })),
        content_type: "application/json".into(),
        ..Default::default()
    })
}

fn any_path() -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix(String::new())),
        ..Default::default()
    }
}

fn path_match(path: &PathMatch) -> Option<RouteMatch> {
    let specifier = match path {
        PathMatch::Any => route_match::PathSpecifier::Prefix(String::new()),
        PathMatch::Exact(exact) => route_match::PathSpecifier::Path(exact.to_string()),
        // A `?` in a prefix would be compared with the query: the table never holds one
        // (a `?` makes a path a glob), and this keeps it so.
        PathMatch::Prefix(prefix) if prefix.contains('?') => return None,
        PathMatch::Prefix(prefix) => route_match::PathSpecifier::Prefix(prefix.to_string()),
    };
    Some(RouteMatch {
        path_specifier: Some(specifier),
        ..Default::default()
    })
}

/// `:method` is one of the set's standard methods (CONNECT excepted: it has its own
/// route); `None` when none is left.
fn methods_header(methods: MethodSet) -> Option<HeaderMatcher> {
    let names: Vec<&str> = Method::STANDARD
        .into_iter()
        .filter(|m| *m != Method::Connect && methods.contains(*m))
        .map(Method::as_str)
        .collect();
    if names.is_empty() {
        return None;
    }
    Some(HeaderMatcher {
        name: ":method".into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
            StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::SafeRegex(regex(
                    &names.join("|"),
                ))),
                ignore_case: false,
            },
        )),
        ..Default::default()
    })
}

fn regex(pattern: &str) -> RegexMatcher {
    RegexMatcher {
        regex: pattern.into(),
        ..Default::default()
    }
}

fn present(name: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true)),
        ..Default::default()
    }
}

fn prefix_header(name: &str, prefix: &str) -> HeaderMatcher {
    string_header(name, string_matcher::MatchPattern::Prefix(prefix.into()))
}

fn contains_header(name: &str, part: &str) -> HeaderMatcher {
    string_header(name, string_matcher::MatchPattern::Contains(part.into()))
}

fn string_header(name: &str, pattern: string_matcher::MatchPattern) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
            StringMatcher {
                match_pattern: Some(pattern),
                ignore_case: false,
            },
        )),
        ..Default::default()
    }
}

/// To the upstream cluster, no timeout: streams and long polls are the upstream's
/// business (as in the static configs).
fn upstream() -> EnvoyRouteAction {
    EnvoyRouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
            UPSTREAM_CLUSTER.into(),
        )),
        timeout: Some(Duration::default()),
        ..Default::default()
    }
}

/// A route through ext_proc to Portcullis, as every request took before the fast path.
fn processor_route(matcher: RouteMatch) -> Route {
    let matcher = if matcher.path_specifier.is_none() {
        RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(String::new())),
            ..matcher
        }
    } else {
        matcher
    };
    Route {
        r#match: Some(matcher),
        action: Some(route::Action::Route(upstream())),
        ..Default::default()
    }
}

/// CONNECT host:port: terminated here, the payload tunnelled as raw TCP, decided by
/// Portcullis.
fn connect_route() -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::ConnectMatcher(
                route_match::ConnectMatcher {},
            )),
            ..Default::default()
        }),
        action: Some(route::Action::Route(EnvoyRouteAction {
            upgrade_configs: vec![route_action::UpgradeConfig {
                upgrade_type: "CONNECT".into(),
                connect_config: Some(route_action::upgrade_config::ConnectConfig::default()),
                ..Default::default()
            }],
            ..upstream()
        })),
        ..Default::default()
    }
}

/// The route's own "not this filter": Envoy then never builds the ext_proc filter for
/// the request (it picks the route before it builds the chain). `ExtProcPerRoute`'s
/// `disabled` would have the filter built for every request, only to step aside — about
/// a fifth of what a fast-path request costs Envoy.
fn ext_proc_disabled() -> Any {
    any(&FilterConfig {
        disabled: true,
        ..Default::default()
    })
}

/// Sets the vetted address Envoy's upstream cluster connects to, over whatever the
/// workload sent in that header.
fn connect_to(address: SocketAddr) -> Any {
    any(&HeaderMutationPerRoute {
        mutations: Some(Mutations {
            request_mutations: vec![HeaderMutation {
                action: Some(header_mutation::Action::Append(set_header(
                    UPSTREAM_ADDRESS_HEADER,
                    &address.to_string(),
                ))),
            }],
            ..Default::default()
        }),
    })
}

fn set_header(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.into(),
            value: value.into(),
            ..Default::default()
        }),
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

pub fn any<M: prost::Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::test_support::snapshot;
    use crate::vocab::Tag;

    const POLICIES: &str = r#"
policies:
  - {name: registry, action: allow, rules: [{host: registry.npmjs.org, paths: [/pkg/*], methods: [GET]}]}
  - {name: no-admin, priority: 5, action: deny, rules: [{host: registry.npmjs.org, paths: [/pkg/admin]}]}
  - {name: team, action: allow, rules: [{host: "api.example.org:8080", headers: [{name: x-team, present: true}]}]}
"#;

    /// The route leaves ext_proc out of the request's chain (`FilterConfig.disabled`).
    fn disables_ext_proc(route: &Route) -> bool {
        let config = &route.typed_per_filter_config[EXT_PROC_FILTER];
        assert_eq!(config.type_url, <FilterConfig as prost::Name>::type_url());
        use prost::Message;
        FilterConfig::decode(config.value.as_slice())
            .expect("a FilterConfig")
            .disabled
    }

    fn configuration(vetted: Option<SocketAddr>) -> RouteConfiguration {
        let snapshot = snapshot(POLICIES);
        let tags = vec![Tag::parse("listener:forward-proxy").unwrap()];
        let routes = snapshot.listener_routes(&tags);
        route_configuration("listener:forward-proxy", &snapshot, &routes, &|_, _, _| {
            vetted
        })
    }

    fn host<'a>(config: &'a RouteConfiguration, domain: &str) -> &'a VirtualHost {
        config
            .virtual_hosts
            .iter()
            .find(|v| v.domains.iter().any(|d| d == domain))
            .unwrap_or_else(|| panic!("no virtual host for {domain}"))
    }

    #[test]
    fn a_named_host_gets_routes_in_decision_order_after_what_always_goes_to_portcullis() {
        let config = configuration(Some("93.184.215.14:80".parse().unwrap()));
        assert_eq!(config.name, "listener:forward-proxy");
        let registry = host(&config, "registry.npmjs.org");
        assert_eq!(
            registry.domains,
            vec!["registry.npmjs.org:80", "registry.npmjs.org"]
        );
        // CONNECT, proxy credentials, npm, unusual paths: never decided here.
        let first: Vec<bool> = registry.routes[..4]
            .iter()
            .map(|r| r.name.is_empty())
            .collect();
        assert_eq!(first, vec![true; 4]);
        let decided: Vec<&str> = registry.routes[4..]
            .iter()
            .map(|r| r.name.split('|').nth(1).unwrap_or("ext_proc"))
            .collect();
        // no-admin (priority 5) first, then registry, then the default deny.
        assert_eq!(decided, vec!["deny", "allow", "deny"]);
        let allow = &registry.routes[5];
        assert!(allow.name.ends_with("|registry"), "{}", allow.name);
        assert!(disables_ext_proc(allow));
        let mutation = &allow.typed_per_filter_config[HEADER_MUTATION_FILTER];
        assert!(
            String::from_utf8_lossy(&mutation.value).contains("93.184.215.14:80"),
            "the route connects to the vetted address"
        );
        let deny = &registry.routes[4];
        assert!(
            matches!(deny.action, Some(route::Action::DirectResponse(ref d)) if d.status == 403)
        );
        assert!(disables_ext_proc(deny));
        // A rule reading a header: what it matches goes to Portcullis, ahead of the
        // default.
        let team = host(&config, "api.example.org:8080");
        assert_eq!(team.domains, vec!["api.example.org:8080"]);
        assert!(team.routes[4].name.is_empty(), "{:?}", team.routes[4]);
        // Everything else: the catch-all through ext_proc.
        let last = config.virtual_hosts.last().unwrap();
        assert_eq!(last.domains, vec!["*"]);
        assert!(
            last.routes
                .iter()
                .all(|r| r.typed_per_filter_config.is_empty())
        );
    }

    #[test]
    fn an_allowed_host_without_a_vetted_address_is_left_to_portcullis() {
        let config = configuration(None);
        let registry = host(&config, "registry.npmjs.org");
        assert!(
            registry.routes.iter().all(|r| !r.name.contains("|allow|")),
            "no allow route without a vetted address"
        );
    }
}
