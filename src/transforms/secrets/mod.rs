//! The `secrets` transform: the workload never holds the real credential. For a request
//! matching a secret (its tags and rules), the value is read from the secret's source
//! (cached) and injected, swapped for a placeholder, or used to sign the request.
//!
//! - **Which secret.** Among matching secrets the first in config order wins; the others
//!   are recorded as `shadowed`.
//! - **Failures.** A source that cannot be read fails the request closed (502,
//!   `credential_unavailable`); the request never leaves without its credential.
//! - **Tunnels.** A CONNECT tunnel is opaque: nothing can be injected into it. A secret with
//!   `require: true` refuses the tunnel, which would otherwise bypass the swap, unless
//!   Envoy intercepts it: its requests are then swapped one by one.

pub mod config;
mod inject;
mod sigv4;
mod template;

use std::sync::Arc;

use smallvec::SmallVec;

pub use config::{InjectConfig, Location, SecretConfig, validate_secret};
use inject::{Credential, Refusal, Use};

use super::kind::{Applied, CompileContext, Kind, Transform, TransformConfig};
use super::{Annotations, CredentialUse, Exchange, RefusalKind, Rejection, Step};
use crate::identity::Identity;
use crate::inspect::Body;
use crate::policy::RequestFacts;
use crate::policy::index::{Indexed, Next, RuleIndex, WorkloadTagIds};
use crate::policy::rule::{Rule, RuleCompiler, Tag};
use crate::request::OutboundRequest;
use crate::secrets::sources::{self, CompiledSource, SourceContext};
use crate::secrets::{SecretValue, SourceCache};
use crate::vocab::{FieldError, duplicate_names};

struct CompiledSecret {
    name: Arc<str>,
    match_tags: Vec<Tag>,
    rules: Box<[Rule]>,
    source: Arc<CompiledSource>,
    inject: InjectConfig,
    allow_plaintext: bool,
}

impl CompiledSecret {
    fn requires_placeholder(&self) -> bool {
        matches!(self.inject, InjectConfig::ProxyToken { require: true, .. })
    }
}

/// The compiled transform.
pub struct SecretsTransform {
    secrets: Vec<CompiledSecret>,
    index: RuleIndex,
    cache: SourceCache,
}

impl SecretsTransform {
    /// Compiles validated secrets; errors carry paths under `secrets[N]`.
    pub fn compile(
        configs: &[SecretConfig],
        cache: &SourceCache,
        ctx: &SourceContext,
    ) -> Result<SecretsTransform, Vec<FieldError>> {
        let mut errors =
            duplicate_names("secrets", "secret", configs.iter().map(|c| c.name.as_str()));
        let mut rules = RuleCompiler::default();
        let mut secrets = Vec::with_capacity(configs.len());
        for (i, config) in configs.iter().enumerate() {
            let path = format!("secrets[{i}]");
            if matches!(config.inject, InjectConfig::AwsSigv4 { .. }) && !sigv4::AVAILABLE {
                errors.push(FieldError::new(
                    format!("{path}.inject.style"),
                    "style `aws_sigv4` is not supported by this build of portcullis yet",
                ));
            }
            let source = match sources::compile(&config.source, ctx) {
                Ok(source) => source,
                Err(e) => {
                    errors.extend(e.into_iter().map(|e| e.under(&format!("{path}.source"))));
                    continue;
                }
            };
            secrets.push(CompiledSecret {
                name: Arc::from(config.name.as_str()),
                match_tags: config.match_tags.clone(),
                rules: config.rules.iter().map(|r| rules.compile(r)).collect(),
                source,
                inject: config.inject.clone(),
                allow_plaintext: config.allow_plaintext,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let items: Vec<Indexed<'_>> = secrets
            .iter()
            .map(|s| Indexed {
                priority: 0,
                rank: 0,
                match_tags: &s.match_tags,
                rules: &s.rules,
                active: true,
            })
            .collect();
        let index = RuleIndex::build(&items);
        Ok(SecretsTransform {
            secrets,
            index,
            cache: cache.clone(),
        })
    }

    /// The secrets matching a request, in config order.
    fn select(&self, facts: &RequestFacts<'_>, tags: &WorkloadTagIds) -> SmallVec<[u32; 4]> {
        let mut found: SmallVec<[u32; 4]> = SmallVec::new();
        self.index.visit(facts, tags, |key| {
            let rule = &self.secrets[key.item as usize].rules[key.rule as usize];
            let matches = if facts.is_connect() {
                rule.touches_tunnel(facts)
            } else {
                rule.matches(facts)
            };
            if matches && !found.contains(&key.item) {
                found.push(key.item);
            }
            Next::Continue
        });
        found.sort_unstable();
        found
    }

    /// Whether some secret's rules match this request, whoever sends it.
    pub fn rules_match(&self, request: &OutboundRequest) -> bool {
        let facts = request.facts();
        !facts.is_connect()
            && self
                .secrets
                .iter()
                .any(|s| s.rules.iter().any(|rule| rule.matches(&facts)))
    }

    pub(super) async fn run(&self, exchange: &mut Exchange<'_>) -> Step {
        let request = exchange.request;
        let facts = request.facts();
        let tags = self.index.tag_ids(&exchange.identity.tags);
        let matched = self.select(&facts, &tags);
        let Some((&winner, others)) = matched.split_first() else {
            return Step::Continue(Annotations::default());
        };
        let secret = &self.secrets[winner as usize];
        let mut annotations = Annotations {
            shadowed: others
                .iter()
                .map(|i| self.secrets[*i as usize].name.clone())
                .collect(),
            ..Annotations::default()
        };
        if facts.is_connect() {
            // An intercepted tunnel's requests come one by one, and are swapped then.
            if secret.requires_placeholder() && !request.intercepted {
                annotations.reason = Some("tunnel_bypasses_credential");
                let message = format!(
                    "a CONNECT tunnel to {}:{} cannot carry credential {:?}, which requires its \
                     placeholder; send the request through the proxy without a tunnel",
                    request.host, request.port, &*secret.name
                );
                return Step::Reject(
                    refusal(403, "credential_placeholder_missing", message),
                    annotations,
                );
            }
            annotations.reason = Some("tunnel_not_injected");
            return Step::Continue(annotations);
        }
        let marker = format!("<secret:{}>", secret.name);
        let value;
        let credential = if exchange.preview {
            Credential::Marker(&marker)
        } else {
            match self.cache.resolve(&secret.source).await {
                Ok(v) => {
                    value = v;
                    Credential::Secret(&value)
                }
                Err(error) => {
                    tracing::warn!(secret = &*secret.name, %error, request_id = %request.id,
                        "credential unavailable; request refused");
                    annotations.reason = Some("credential_unavailable");
                    let message = format!("credential {:?} is unavailable", &*secret.name);
                    return Step::Reject(
                        refusal(502, "credential_unavailable", message),
                        annotations,
                    );
                }
            }
        };
        let step = match inject::apply(
            &secret.inject,
            credential,
            request,
            exchange.body.map(Body::bytes),
            &mut exchange.mutations,
        ) {
            Ok(applied)
                if !applied.locations.is_empty()
                    && !request.upstream_tls
                    && !secret.allow_plaintext =>
            {
                // Dropped with the refusal: the mutations never reach Envoy.
                annotations.reason = Some("credential_over_plaintext");
                let message = format!(
                    "credential {:?} is sent over HTTPS only, and this request to {}:{} leaves \
                     over plaintext HTTP: use https://, or set `allow_plaintext: true` on the \
                     secret",
                    &*secret.name, request.host, request.port
                );
                Step::Reject(
                    refusal(403, "credential_over_plaintext", message),
                    annotations,
                )
            }
            Ok(applied) => {
                if let Credential::Secret(value) = credential
                    && !applied.locations.is_empty()
                {
                    // Upstreams echo requests: the response is scrubbed of every form the
                    // credential left in, which needs it unencoded.
                    let mutations = &mut exchange.mutations;
                    mutations
                        .scrub
                        .extend(inject::echo_forms(&secret.inject, value));
                    mutations.set("accept-encoding", SecretValue::new("identity"));
                }
                let used = Some(CredentialUse {
                    secret: secret.name.clone(),
                    locations: applied.locations,
                });
                match applied.used {
                    Use::Injected => annotations.injected = used,
                    Use::Swapped => annotations.swapped = used,
                    Use::Signed => annotations.signed = used,
                }
                Step::Continue(annotations)
            }
            Err(Refusal::PlaceholderMissing) => {
                annotations.reason = Some("credential_placeholder_missing");
                let message = format!(
                    "requests to {} must use the placeholder of credential {:?}, not their own \
                     credential",
                    request.host, &*secret.name
                );
                Step::Reject(
                    refusal(403, "credential_placeholder_missing", message),
                    annotations,
                )
            }
            Err(Refusal::ForeignCredential(location)) => {
                annotations.reason = Some("foreign_credential");
                let message = format!(
                    "requests to {} must carry the placeholder of credential {:?} in {location}, \
                     and nothing else there: not a credential of their own",
                    request.host, &*secret.name
                );
                Step::Reject(refusal(403, "foreign_credential", message), annotations)
            }
            Err(Refusal::UnusableValue(why)) => {
                tracing::warn!(secret = &*secret.name, why, request_id = %request.id,
                    "credential unusable; request refused");
                annotations.reason = Some("credential_unavailable");
                let message = format!("credential {:?} is unavailable", &*secret.name);
                Step::Reject(refusal(502, "credential_unavailable", message), annotations)
            }
            Err(Refusal::ScopeMismatch(why)) => {
                annotations.reason = Some("signing_scope_mismatch");
                let message = format!("credential {:?}: {why}", &*secret.name);
                Step::Reject(refusal(403, "signing_scope_mismatch", message), annotations)
            }
        };
        if let Step::Reject(..) = step {
            // A refused request keeps nothing a style wrote before it refused.
            exchange.mutations = super::Mutations::default();
        }
        step
    }
}

fn refusal(status: u16, reason: &'static str, message: String) -> Rejection {
    Rejection {
        status,
        kind: if status == 502 {
            RefusalKind::CredentialUnavailable
        } else {
            RefusalKind::CredentialRefused
        },
        reason,
        message,
        policy: None,
        rule: None,
        transform: "secrets",
        retry_after: None,
        approval: None,
    }
}

/// `- secrets`: the secrets are the top-level `secrets:` section; no `config`.
pub(super) const KIND: Kind = Kind {
    name: "secrets",
    parse: |_, config| {
        if config.is_some() {
            return Err(vec![FieldError::new(
                "config",
                "secrets takes no `config`: the secrets are the top-level `secrets:` section",
            )]);
        }
        Ok(Arc::new(SecretsStep))
    },
};

#[derive(Debug, PartialEq)]
pub(super) struct SecretsStep;

impl TransformConfig for SecretsStep {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn runs_once(&self) -> bool {
        true
    }

    /// Errors carry the paths of the secrets (`secrets[N]`).
    fn compile(&self, ctx: &CompileContext<'_>) -> Result<Box<dyn Transform>, Vec<FieldError>> {
        let compiled = SecretsTransform::compile(ctx.secrets, ctx.cache, ctx.sources)?;
        Ok(Box::new(compiled))
    }
}

impl Transform for SecretsTransform {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn apply<'a>(&'a self, exchange: &'a mut Exchange<'_>) -> Applied<'a> {
        Applied::Waiting(Box::pin(self.run(exchange)))
    }

    /// Whether the secret that applies to this request needs its body.
    fn needs_body(&self, request: &OutboundRequest, identity: &Identity) -> bool {
        let facts = request.facts();
        if facts.is_connect() {
            return false;
        }
        let tags = self.index.tag_ids(&identity.tags);
        self.select(&facts, &tags)
            .first()
            .is_some_and(|&i| inject::needs_body(&self.secrets[i as usize].inject, request))
    }

    /// Every source, for cache refreshes.
    fn sources(&self) -> Vec<Arc<CompiledSource>> {
        self.secrets.iter().map(|s| s.source.clone()).collect()
    }

    fn may_put_credential(&self, request: &OutboundRequest) -> bool {
        self.rules_match(request)
    }

    fn may_put_credential_on_host(&self, host: &crate::policy::RequestFacts<'_>) -> bool {
        self.secrets
            .iter()
            .any(|s| s.rules.iter().any(|rule| rule.host.matches(host)))
    }
}

#[cfg(test)]
mod tests;
