//! A [`Snapshot`] is everything a request is decided against — compiled policies,
//! identities and the transforms pipeline — built from one config version. Snapshots are
//! immutable; a reload compiles a new one and swaps it in whole, so a request never sees
//! half of a change, and an invalid change never replaces a good snapshot.

mod compile;
mod decide;
mod fast_path;
mod tools_list;

use std::sync::Arc;

pub use compile::{Origin, unknown_detectors};
pub use fast_path::{
    FastPath, HostRoutes, ListenerRoutes, PathMatch, Route, RouteAction, table as route_table,
};
pub use tools_list::ToolsListFilter;

use crate::config::McpConfig;
use crate::identity::admin::AdminAuth;
use crate::identity::{Identity, IdentityError, IdentityResolver, Presented};
use crate::policy::{PolicySet, RequestFacts};
use crate::request::OutboundRequest;
use crate::secrets::{SourceCache, SourceContext};
use crate::transforms::judge::JudgeStates;
use crate::transforms::{Outcome, Pipeline};
use crate::vocab::Tag;

/// What outlives snapshots, so that a reload keeps what did not change: the secret value
/// cache (a kept source keeps its value), the HTTP client the sources share, the LLM
/// judges' breakers, caps and verdict caches, and the network guard's resolver.
#[derive(Clone, Default)]
pub struct Runtime {
    pub cache: SourceCache,
    pub sources: Arc<SourceContext>,
    pub judges: Arc<JudgeStates>,
    /// The rate limits' buckets.
    pub limits: Arc<crate::transforms::rate_limit::LimitStates>,
    /// What each budget's keys spent.
    pub budgets: Arc<crate::transforms::budget::BudgetStates>,
    /// The network guard's DNS resolver and its cache.
    pub resolvers: crate::network::Resolvers,
    /// The approval queue (the store, once open) refusals needing approval go to.
    pub approvals: Arc<crate::approvals::Desk>,
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
    /// Where approvals go, and their settings.
    pub approvals: Arc<crate::approvals::Desk>,
    pub approval_settings: crate::approvals::ApprovalsConfig,
    /// Whether Envoy's routes decide what they can (`gateway.fast_path`).
    pub fast_path: bool,
}

/// The decision for one request and who it was decided for.
#[derive(Debug)]
pub struct Decided {
    pub identity: Result<Identity, IdentityError>,
    pub outcome: Outcome,
}

impl Snapshot {
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
