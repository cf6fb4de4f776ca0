//! A [`Snapshot`] is everything a request is decided against — compiled policies,
//! identities and the transforms pipeline — built from one config version. Snapshots are
//! immutable; a reload compiles a new one and swaps it in whole, so a request never sees
//! half of a change, and an invalid change never replaces a good snapshot.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, ConfigErrors, FieldError, LoadedConfig, load_file, parse_str};
use crate::identity::{Identity, IdentityError, IdentityResolver, Presented};
use crate::policy::rule::Tag;
use crate::policy::{Decision, PolicySet};
use crate::request::OutboundRequest;
use crate::transforms::{
    Annotations, Exchange, HeaderMutations, Outcome, Pipeline, Rejection, TraceAction,
    TransformTrace,
};

/// One compiled config version.
#[derive(Debug)]
pub struct Snapshot {
    /// The config version (a short content hash), recorded in every audit record.
    pub version: Arc<str>,
    pub policies: PolicySet,
    pub identities: IdentityResolver,
    pub pipeline: Pipeline,
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
    ) -> Result<Snapshot, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut first_use: HashMap<&str, usize> = HashMap::with_capacity(config.policies.len());
        for (i, policy) in config.policies.iter().enumerate() {
            match first_use.get(policy.name.as_str()) {
                Some(first) => errors.push(FieldError::new(
                    format!("policies[{i}].name"),
                    format!(
                        "duplicate policy name {:?} (first used at policies[{first}])",
                        policy.name
                    ),
                )),
                None => {
                    first_use.insert(&policy.name, i);
                }
            }
        }
        if config.audit.sink == crate::config::AuditSinkKind::File && config.audit.path.is_none() {
            errors.push(FieldError::new("audit.path", "`sink: file` needs a `path`"));
        }
        let identities = IdentityResolver::compile(&config.gateway.tags, &config.identities, env)
            .map_err(|e| errors.extend(e))
            .ok();
        let pipeline = Pipeline::compile(&config.transforms)
            .map_err(|e| errors.extend(e))
            .ok();
        match (identities, pipeline) {
            (Some(identities), Some(pipeline)) if errors.is_empty() => Ok(Snapshot {
                version: Arc::from(version),
                policies: PolicySet::compile(&config.policies, config.default_action),
                identities,
                pipeline,
            }),
            _ => Err(errors),
        }
    }

    /// Reads, parses and compiles a config file, with every error placed in the file.
    pub fn load(path: &Path) -> Result<(LoadedConfig, Snapshot), ConfigErrors> {
        Snapshot::settle(load_file(path)?)
    }

    /// Parses and compiles config text read from `file`.
    pub fn from_text(text: &str, file: &Path) -> Result<(LoadedConfig, Snapshot), ConfigErrors> {
        Snapshot::settle(parse_str(text, Some(file))?)
    }

    fn settle(loaded: LoadedConfig) -> Result<(LoadedConfig, Snapshot), ConfigErrors> {
        let env = |name: &str| std::env::var(name).ok();
        match Snapshot::compile(&loaded.config, &loaded.version, &env) {
            Ok(snapshot) => Ok((loaded, snapshot)),
            Err(errors) => Err(loaded.place(errors)),
        }
    }

    /// Decides one request: identity, then the transforms pipeline. A `Proxy-Authorization`
    /// header never leaves, whatever the outcome.
    pub async fn decide(&self, request: &OutboundRequest, listener_tags: &[Tag]) -> Decided {
        let mut mutations = HeaderMutations::default();
        if request.header("proxy-authorization").is_some() {
            mutations.remove("proxy-authorization");
        }
        match self.identities.resolve(&presented(request, listener_tags)) {
            Ok(identity) => {
                let exchange = Exchange {
                    request,
                    identity: &identity,
                    policies: &self.policies,
                    tag_ids: self.policies.tag_ids(&identity.tags),
                    mutations,
                    verdict: None,
                };
                let outcome = self.pipeline.run(exchange).await;
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
                    },
                }
            }
        }
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
                mutations: HeaderMutations::default(),
                trace: vec![TransformTrace {
                    name: stage,
                    action: TraceAction::Reject,
                    annotations: Annotations {
                        reason: Some(reason),
                        ..Annotations::default()
                    },
                }],
            },
        }
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
