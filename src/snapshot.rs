//! A [`Snapshot`] is everything a request is decided against — compiled policies,
//! identities and the transforms pipeline — built from one config version. Snapshots are
//! immutable; a reload compiles a new one and swaps it in whole, so a request never sees
//! half of a change, and an invalid change never replaces a good snapshot.

use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, ConfigErrors, LoadedConfig, McpConfig, load_file, parse_str};
use crate::dlp::Scanner;
use crate::identity::admin::AdminAuth;
use crate::identity::{
    Identity, IdentityConfig, IdentityError, IdentityResolver, Presented, TokenSource,
};
use crate::inspect::Body;
use crate::mcp::{Inbound, Message, MessageKind, ParseError};
use crate::policy::{Decision, PolicySet};
use crate::request::Method;
use crate::request::{OutboundRequest, RequestFacts};
use crate::secrets::{SourceCache, SourceContext};
use crate::store::Contents;
use crate::transforms::{
    Annotations, Exchange, JsonRpcReply, Mutations, Outcome, Pipeline, Rejection, TraceAction,
    TransformTrace,
};
use crate::vocab::Tag;
use crate::vocab::{FieldError, duplicate_names};

/// What outlives snapshots: the secret value cache (a reload that keeps a source keeps its
/// value) and the HTTP client the sources share.
#[derive(Clone, Default)]
pub struct SecretsRuntime {
    pub cache: SourceCache,
    pub sources: Arc<SourceContext>,
    /// The network guard's DNS resolver and its cache.
    pub resolvers: crate::network::Resolvers,
}

/// One compiled config version.
#[derive(Debug)]
pub struct Snapshot {
    /// The config version (a short content hash, then `+r<revision>` with a store),
    /// recorded in every audit record.
    pub version: Arc<str>,
    pub policies: PolicySet,
    pub identities: IdentityResolver,
    pub pipeline: Pipeline,
    /// The largest body buffered for transforms that need it.
    pub max_body_bytes: usize,
    /// Who may call the admin API.
    pub admin: AdminAuth,
    /// The store revision the policies, secrets and tokens were read at; `None` when they
    /// come from the config file.
    pub store_revision: Option<i64>,
    /// Set on the stand-in snapshot served before a store was ever read: every request is
    /// refused (503) with this reason.
    pub unavailable: Option<&'static str>,
    /// How refused MCP messages are answered.
    pub mcp: McpConfig,
    /// How a request's target is read before it is decided.
    pub request: crate::request::RequestConfig,
    /// Vets the address an allowed request connects to.
    pub network: crate::network::NetworkGuard,
}

/// The decision for one request and who it was decided for.
#[derive(Debug)]
pub struct Decided {
    pub identity: Result<Identity, IdentityError>,
    pub outcome: Outcome,
}

impl Snapshot {
    /// Compiles a parsed config. `env` resolves environment variables (token sources).
    pub fn compile(
        config: &Config,
        version: &str,
        env: &dyn Fn(&str) -> Option<String>,
        runtime: &SecretsRuntime,
    ) -> Result<Snapshot, Vec<FieldError>> {
        Snapshot::compile_versions(config, version, &[], env, runtime)
    }

    fn compile_versions(
        config: &Config,
        version: &str,
        policy_versions: &[i64],
        env: &dyn Fn(&str) -> Option<String>,
        runtime: &SecretsRuntime,
    ) -> Result<Snapshot, Vec<FieldError>> {
        let mut errors = duplicate_names(
            "policies",
            "policy",
            config.policies.iter().map(|p| p.name.as_str()),
        );
        if config.audit.sink == crate::config::AuditSinkKind::File && config.audit.path.is_none() {
            errors.push(FieldError::new("audit.path", "`sink: file` needs a `path`"));
        }
        let identities = IdentityResolver::compile(&config.gateway.tags, &config.identities, env)
            .map_err(|e| errors.extend(e))
            .ok();
        let pipeline = Pipeline::compile(
            &config.transforms,
            &config.secrets,
            &runtime.cache,
            &runtime.sources,
        )
        .map_err(|e| errors.extend(e))
        .ok();
        let admin = AdminAuth::compile(&config.admin.tokens, env)
            .map_err(|e| errors.extend(e))
            .ok();
        let scanner = Scanner::compile(&config.dlp)
            .map_err(|e| errors.extend(e.into_iter().map(|e| e.under("dlp"))))
            .ok();
        if let Some(scanner) = &scanner {
            for (p, policy) in config.policies.iter().enumerate() {
                errors.extend(
                    unknown_detectors(policy, scanner)
                        .into_iter()
                        .map(|e| e.under(&format!("policies[{p}]"))),
                );
            }
        }
        match (identities, pipeline, admin, scanner) {
            (Some(identities), Some(pipeline), Some(admin), Some(scanner)) if errors.is_empty() => {
                Ok(Snapshot {
                    version: Arc::from(version),
                    policies: PolicySet::compile_versioned(
                        &config.policies,
                        policy_versions,
                        config.default_action,
                    )
                    .with_dlp(Arc::new(scanner)),
                    mcp: config.mcp.clone(),
                    request: config.request,
                    network: crate::network::NetworkGuard::compile(
                        &config.network_guard,
                        &runtime.resolvers,
                    ),
                    identities,
                    pipeline,
                    max_body_bytes: config.gateway.max_body_bytes,
                    admin,
                    store_revision: None,
                    unavailable: None,
                })
            }
            _ => Err(errors),
        }
    }

    /// Compiles the gateway settings of `config` with the policies, secrets and
    /// enrollment tokens read from a store. Errors in stored definitions are placed by
    /// name (`policies["ci-npm"].rules[0].host`), not by list index.
    pub fn compile_with_store(
        config: &Config,
        config_version: &str,
        contents: &Contents,
        env: &dyn Fn(&str) -> Option<String>,
        runtime: &SecretsRuntime,
    ) -> Result<Snapshot, Vec<FieldError>> {
        let mut effective = config.clone();
        effective.policies = contents
            .policies
            .iter()
            .map(|p| p.definition.clone())
            .collect();
        effective.secrets = contents
            .secrets
            .iter()
            .map(|s| s.definition.clone())
            .collect();
        let file_identities = effective.identities.len();
        effective
            .identities
            .extend(contents.tokens.iter().map(|token| IdentityConfig {
                name: Some(token.name.clone()),
                token: Some(TokenSource {
                    env: None,
                    file: None,
                    sha256: Some(token.sha256.clone()),
                }),
                source_cidr: None,
                uri_san: None,
                tags: token.tags.clone(),
            }));
        let versions: Vec<i64> = contents.policies.iter().map(|p| p.version).collect();
        let version = format!("{config_version}+r{}", contents.revision);
        // A stored secret reads only what the file config lets the store's writers reach.
        let bounds = config.store.as_ref().map(|s| &s.secret_sources);
        let mut errors: Vec<FieldError> = effective
            .secrets
            .iter()
            .enumerate()
            .flat_map(|(i, secret)| {
                let checked = bounds.map(|b| b.check(&secret.source)).unwrap_or_default();
                checked
                    .into_iter()
                    .map(move |e| e.under(&format!("secrets[{i}].source")))
            })
            .collect();
        let compiled = Snapshot::compile_versions(&effective, &version, &versions, env, runtime)
            .map_err(|e| errors.extend(e))
            .ok();
        let mut snapshot = match compiled {
            Some(snapshot) if errors.is_empty() => snapshot,
            _ => {
                return Err(errors
                    .into_iter()
                    .map(|e| name_stored(e, &effective, file_identities))
                    .collect());
            }
        };
        snapshot.store_revision = Some(contents.revision);
        snapshot.identities.expect_tokens();
        Ok(snapshot)
    }

    /// The snapshot served while a store has never been read: every request is refused
    /// with 503 `policy_store_unavailable`, whatever the default action says.
    pub fn unavailable(
        config: &Config,
        config_version: &str,
        env: &dyn Fn(&str) -> Option<String>,
        runtime: &SecretsRuntime,
    ) -> Result<Snapshot, Vec<FieldError>> {
        let mut bare = config.clone();
        bare.policies.clear();
        bare.secrets.clear();
        bare.default_action = crate::policy::DefaultAction::Deny;
        let mut snapshot =
            Snapshot::compile(&bare, &format!("{config_version}+unloaded"), env, runtime)?;
        snapshot.unavailable = Some("policy_store_unavailable");
        Ok(snapshot)
    }

    /// Reads, parses and compiles a config file, with every error placed in the file.
    pub fn load(
        path: &Path,
        runtime: &SecretsRuntime,
    ) -> Result<(LoadedConfig, Snapshot), ConfigErrors> {
        Snapshot::settle(load_file(path)?, runtime)
    }

    /// Parses and compiles config text read from `file`.
    pub fn from_text(
        text: &str,
        file: &Path,
        runtime: &SecretsRuntime,
    ) -> Result<(LoadedConfig, Snapshot), ConfigErrors> {
        Snapshot::settle(parse_str(text, Some(file))?, runtime)
    }

    fn settle(
        loaded: LoadedConfig,
        runtime: &SecretsRuntime,
    ) -> Result<(LoadedConfig, Snapshot), ConfigErrors> {
        let env = |name: &str| std::env::var(name).ok();
        match Snapshot::compile(&loaded.config, &loaded.version, &env, runtime) {
            Ok(snapshot) => Ok((loaded, snapshot)),
            Err(errors) => Err(loaded.place(errors)),
        }
    }

    /// Whether Envoy may terminate TLS for `server_name` on a listener carrying
    /// `listener_tags`: some workload there could be allowed a request to that host.
    /// Only then is a certificate minted for it.
    pub fn may_intercept(&self, server_name: &str, listener_tags: &[Tag]) -> bool {
        let reachable = self.identities.reachable_tags(listener_tags);
        self.policies
            .could_allow_host(server_name, |tag| reachable.contains(tag))
    }

    /// Whether deciding this request needs its body first: a matching secret signs or
    /// swaps in the body, or a policy rule with a body condition could decide it. Only
    /// asked for requests that have one.
    pub fn needs_body(&self, request: &OutboundRequest, listener_tags: &[Tag]) -> bool {
        match self.identities.resolve(&presented(request, listener_tags)) {
            Ok(identity) => {
                self.pipeline.needs_body(request, &identity)
                    || self.policies_need_body(request, &identity)
                    || self.watches_tools_list(request)
            }
            // The request is refused at the identity step: no body needed.
            Err(_) => false,
        }
    }

    /// Whether this request may be an MCP `tools/list` whose answer should be filtered: a
    /// POST from a Streamable HTTP client (its MCP headers, or its `Accept` of both JSON and
    /// SSE), while some policy names tools. Its body is then read, and its response watched.
    pub fn watches_tools_list(&self, request: &OutboundRequest) -> bool {
        self.mcp.filter_tools_list
            && request.method == Method::Post
            && self.policies.has_tool_conditions()
            && self.pipeline.has_allowlist()
            && request
                .headers
                .iter()
                .any(|(name, value)| match name.as_str() {
                    "mcp-session-id" | "mcp-protocol-version" => true,
                    "accept" => value.windows(17).any(|w| w == b"text/event-stream"),
                    _ => false,
                })
    }

    /// The ids of the `tools/list` requests in an MCP body.
    pub fn tools_list_ids(body: &[u8]) -> Vec<serde_json::Value> {
        crate::mcp::parse_inbound(body)
            .map(|inbound| inbound.request_ids("tools/list"))
            .unwrap_or_default()
    }

    /// Whether a workload may call the tool `name` on this request's server with some
    /// arguments: a `tools/call` of it is not denied when argument conditions are given the
    /// benefit of the doubt. Tools it may not call are dropped from `tools/list` answers.
    pub fn tool_visible(&self, request: &OutboundRequest, identity: &Identity, name: &str) -> bool {
        let call = Message {
            id: None,
            kind: MessageKind::Request {
                method: "tools/call".to_owned(),
                params: Some(serde_json::json!({"name": name, "arguments": {}})),
            },
        };
        let facts = RequestFacts {
            message: Some(&call),
            identity: Some(identity),
            unknown_args: Some(true),
            ..request.facts()
        };
        self.policies
            .evaluate(&facts, &self.policies.tag_ids(&identity.tags))
            .decision()
            != Decision::Denied
    }

    /// Whether the policy engine needs the body to decide. The precomputed flag keeps this
    /// free for a config without body conditions.
    fn policies_need_body(&self, request: &OutboundRequest, identity: &Identity) -> bool {
        self.policies.has_body_conditions()
            && self.pipeline.has_allowlist()
            && self.policies.needs_body(
                &RequestFacts {
                    identity: Some(identity),
                    ..request.facts()
                },
                &self.policies.tag_ids(&identity.tags),
            )
    }

    /// Decides one request. `body` is the buffered body when [`Snapshot::needs_body`]
    /// asked for it (empty when the request has none).
    pub async fn decide(
        &self,
        request: &OutboundRequest,
        listener_tags: &[Tag],
        body: Option<&[u8]>,
    ) -> Decided {
        self.run(request, listener_tags, body, false).await
    }

    /// Decides without reading any secret source: credentials appear as markers
    /// (`<secret:github>`), for `portcullis check`.
    pub async fn preview(
        &self,
        request: &OutboundRequest,
        listener_tags: &[Tag],
        body: Option<&[u8]>,
    ) -> Decided {
        self.run(request, listener_tags, body, true).await
    }

    /// Identity, then the transforms pipeline. A `Proxy-Authorization` header never
    /// leaves, whatever the outcome.
    async fn run(
        &self,
        request: &OutboundRequest,
        listener_tags: &[Tag],
        body: Option<&[u8]>,
        preview: bool,
    ) -> Decided {
        let mut mutations = Mutations::default();
        if request.header("proxy-authorization").is_some() {
            mutations.remove("proxy-authorization");
        }
        if let Some(reason) = self.unavailable {
            return self.refused(
                request,
                listener_tags,
                Rejection {
                    status: 503,
                    kind: "policy_unavailable",
                    reason,
                    message: "this gateway has not loaded its policies yet (the policy store \
                              is unreachable); nothing is forwarded until it has"
                        .to_owned(),
                    policy: None,
                    rule: None,
                    transform: "allowlist",
                },
            );
        }
        // Parsed lazily, once, for every transform that looks into it.
        let body = body.map(|bytes| Body::new(bytes, self.policies.dlp()));
        let unreadable = match body.as_ref().and_then(Body::mcp) {
            // Policies on MCP messages cannot be applied to what cannot be read: refuse it
            // as a JSON-RPC server would.
            Some(Err(error)) => Some((
                "malformed_jsonrpc",
                format!("the JSON-RPC body is malformed: {error}"),
                error.clone(),
            )),
            // Each message is decided on its own: a bound on their number bounds the work.
            Some(Ok(Inbound::Batch(messages))) if messages.len() > self.mcp.max_batch => {
                let reason = format!(
                    "the batch holds {} messages, more than the {} allowed (mcp.max_batch)",
                    messages.len(),
                    self.mcp.max_batch
                );
                Some((
                    "jsonrpc_batch_too_large",
                    format!("the JSON-RPC body is refused: {reason}"),
                    ParseError::NotJsonRpc(reason),
                ))
            }
            _ => None,
        };
        if let Some((reason, message, error)) = unreadable {
            let mut decided = self.refused(
                request,
                listener_tags,
                Rejection {
                    status: 400,
                    kind: "invalid_request",
                    reason,
                    message,
                    policy: None,
                    rule: None,
                    transform: "mcp",
                },
            );
            decided.outcome.mutations = mutations;
            decided.outcome.jsonrpc_reply = Some(JsonRpcReply {
                status: 400,
                body: crate::mcp::parse_error_reply(&error),
            });
            return decided;
        }
        match self.identities.resolve(&presented(request, listener_tags)) {
            Ok(identity) => {
                let exchange = Exchange {
                    request,
                    body: body.as_ref(),
                    identity: &identity,
                    policies: &self.policies,
                    tag_ids: self.policies.tag_ids(&identity.tags),
                    mutations,
                    verdict: None,
                    preview,
                };
                let mut outcome = self.pipeline.run(exchange).await;
                // An intercepted CONNECT connects nowhere itself: its requests are vetted.
                if outcome.rejection.is_none() && !preview && !request.intercepted {
                    self.network
                        .apply(request, &self.policies, &mut outcome)
                        .await;
                }
                if let (Some(rejection), Some(body)) = (&outcome.rejection, &body) {
                    outcome.jsonrpc_reply = self.jsonrpc_refusal(request, rejection, body);
                }
                Decided {
                    identity: Ok(identity),
                    outcome,
                }
            }
            Err(error) => {
                let reason = match error {
                    IdentityError::MalformedProxyAuthorization => "malformed_proxy_authorization",
                    IdentityError::UnknownToken => "unknown_proxy_token",
                };
                Decided {
                    identity: Err(error),
                    outcome: Outcome {
                        decision: Decision::Denied,
                        verdict: None,
                        rejection: Some(Rejection {
                            status: 407,
                            kind: "proxy_auth_required",
                            reason,
                            message: error.to_string(),
                            policy: None,
                            rule: None,
                            transform: "identity",
                        }),
                        mutations,
                        trace: vec![TransformTrace {
                            name: "identity",
                            action: TraceAction::Reject,
                            annotations: Annotations {
                                reason: Some(reason),
                                ..Annotations::default()
                            },
                        }],
                        jsonrpc_reply: None,
                    },
                }
            }
        }
    }

    /// The JSON-RPC answer to a refused MCP message: HTTP 200 with an error per message
    /// that has an id, as an MCP server answers a call it refuses; `None` for a body that
    /// is not JSON-RPC, a refusal that is not a policy's, or a batch of notifications only
    /// (which get the plain 403).
    fn jsonrpc_refusal(
        &self,
        request: &OutboundRequest,
        rejection: &Rejection,
        body: &Body<'_>,
    ) -> Option<JsonRpcReply> {
        if rejection.kind != "policy_denied" {
            return None;
        }
        let Some(Ok(inbound)) = body.mcp() else {
            return None;
        };
        let data = serde_json::json!({
            "type": rejection.kind,
            "reason": rejection.reason,
            "message": rejection.message,
            "policy": rejection.policy.as_deref(),
            "transform": rejection.transform,
            "request_id": request.id,
        });
        let reply = crate::mcp::error_reply(
            inbound,
            self.mcp.deny_code,
            &self.mcp.deny_message,
            Some(data),
        )?;
        Some(JsonRpcReply {
            status: 200,
            body: reply,
        })
    }

    /// The record of a request refused before the pipeline ran (it could not be parsed):
    /// identity is still resolved, for the audit trail.
    pub fn refused(
        &self,
        request: &OutboundRequest,
        listener_tags: &[Tag],
        rejection: Rejection,
    ) -> Decided {
        let reason = rejection.reason;
        let stage = rejection.transform;
        Decided {
            identity: self.identities.resolve(&presented(request, listener_tags)),
            outcome: Outcome {
                decision: Decision::Denied,
                verdict: None,
                rejection: Some(rejection),
                mutations: Mutations::default(),
                trace: vec![TransformTrace {
                    name: stage,
                    action: TraceAction::Reject,
                    annotations: Annotations {
                        reason: Some(reason),
                        ..Annotations::default()
                    },
                }],
                jsonrpc_reply: None,
            },
        }
    }
}

/// `dlp:` conditions of `policy` naming a detector that is neither built in nor defined
/// under `dlp:`; paths relative to the policy.
pub fn unknown_detectors(
    policy: &crate::policy::PolicyConfig,
    scanner: &Scanner,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (r, rule) in policy.rules.iter().enumerate() {
        for (d, name) in rule.dlp.iter().enumerate() {
            if !scanner.names().any(|known| known == name) {
                errors.push(FieldError::new(
                    format!("rules[{r}].dlp[{d}]"),
                    format!(
                        "unknown DLP detector {name:?}; detectors: {} (define others under \
                         `dlp.custom`)",
                        scanner.names().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
    }
    errors
}

/// Rewrites an error in a store-read definition from its list index to its name.
fn name_stored(error: FieldError, config: &Config, file_identities: usize) -> FieldError {
    let rename = |section: &str, name_of: &dyn Fn(usize) -> Option<String>| {
        let rest = error.path.strip_prefix(section)?.strip_prefix('[')?;
        let (index, tail) = rest.split_once(']')?;
        let name = name_of(index.parse().ok()?)?;
        Some(format!("{section}[{name:?}]{tail}"))
    };
    let policy = |i: usize| config.policies.get(i).map(|p| p.name.clone());
    let secret = |i: usize| config.secrets.get(i).map(|s| s.name.clone());
    let token = |i: usize| {
        i.checked_sub(file_identities)
            .and_then(|_| config.identities.get(i))
            .and_then(|t| t.name.clone())
    };
    let path = rename("policies", &policy)
        .or_else(|| rename("secrets", &secret))
        .or_else(|| rename("identities", &token).map(|p| p.replacen("identities", "tokens", 1)));
    match path {
        Some(path) => FieldError {
            path,
            message: error.message,
        },
        None => error,
    }
}

/// What the request tells the identity resolver about its workload.
fn presented<'a>(request: &'a OutboundRequest, listener_tags: &'a [Tag]) -> Presented<'a> {
    Presented {
        source: request.source.map(|s| s.ip()),
        peer_uri_san: request.peer_uri_san.as_deref(),
        proxy_authorization: request.header("proxy-authorization"),
        listener_tags,
    }
}
