//! The compiled policy set: policies in config order and a [`RuleIndex`] over their rules.

use std::sync::Arc;

use super::cel::CelExpr;
use super::index::{Indexed, Key, Next, RuleIndex, WorkloadTagIds};
use super::model::Decision;
use super::model::{Action, DefaultAction, PolicyConfig, PolicyDefinition, PolicyStatus};
use super::rule::{Rule, RuleCompiler, Tag};
use crate::dlp::Scanner;
use crate::policy::RequestFacts;

/// Index of a policy in config order.
pub type PolicyId = u32;

/// A policy ready to evaluate.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub name: Arc<str>,
    /// What it was compiled from, to know it again in a recompile.
    pub compiled_from: CompiledFrom,
    /// The store version this was compiled from; `None` for a policy from a config file.
    pub version: Option<i64>,
    pub priority: i32,
    pub status: PolicyStatus,
    pub action: Action,
    pub warn: bool,
    pub match_tags: Vec<Tag>,
    pub message: Option<Arc<str>>,
    pub rules: Box<[Rule]>,
    /// A gated policy's condition. Boxed, as the grant: most policies have neither, and
    /// at 100,000 policies every byte of this struct is a hundred kilobytes.
    pub condition: Option<Box<CelExpr>>,
    /// A gated policy whose failed condition asks for approval instead of denying.
    pub approve_when_condition_fails: bool,
    /// Set on a grant (the policy an approval created): who, until when, which arguments.
    pub grant: Option<Box<CompiledGrant>>,
}

/// A grant's narrowing, beyond its rules and tags.
#[derive(Debug)]
pub struct CompiledGrant {
    pub approval: Arc<str>,
    pub identity: Option<Arc<str>>,
    pub expires: std::time::SystemTime,
    pub arguments_sha256: Option<String>,
}

impl CompiledGrant {
    fn compile(grant: &super::model::Grant) -> CompiledGrant {
        CompiledGrant {
            approval: Arc::from(grant.approval.as_str()),
            identity: grant.identity.as_deref().map(Arc::from),
            // Validated; a time that does not parse has already expired.
            expires: humantime::parse_rfc3339(&grant.expires_at).unwrap_or(std::time::UNIX_EPOCH),
            arguments_sha256: grant.arguments_sha256.clone(),
        }
    }

    /// Whether the grant covers this request, its rules aside: the approved identity,
    /// before it expires, and for a tool call the approved arguments. Unknown arguments (is
    /// the tool worth listing?) are taken to be the approved ones.
    fn covers(&self, req: &RequestFacts<'_>) -> bool {
        if std::time::SystemTime::now() >= self.expires {
            return false;
        }
        let identity = req.identity.and_then(|i| i.name.as_deref());
        if identity != self.identity.as_deref() {
            return false;
        }
        match &self.arguments_sha256 {
            None => true,
            Some(_) if req.unknown_args.is_some() => true,
            Some(approved) => req
                .mcp_message()
                .and_then(crate::mcp::Message::tool_call_digest)
                .is_some_and(|(_, digest)| digest.eq_ignore_ascii_case(approved)),
        }
    }
}

impl CompiledPolicy {
    fn compile(
        config: &PolicyConfig,
        compiled_from: CompiledFrom,
        version: Option<i64>,
        rules: &mut RuleCompiler,
    ) -> CompiledPolicy {
        CompiledPolicy {
            name: Arc::from(config.name.as_str()),
            compiled_from,
            version,
            priority: config.priority,
            status: config.status,
            action: config.action,
            warn: config.warn,
            match_tags: config.match_tags.clone(),
            message: config.message.as_deref().map(Arc::from),
            // A refusing policy fails closed on a condition it cannot evaluate.
            rules: (config.rules.iter())
                .map(|r| rules.compile_for(r, config.action.refuses()))
                .collect(),
            condition: config.condition.clone().map(Box::new),
            approve_when_condition_fails: config.when_condition_fails
                == super::model::ConditionFails::Approve,
            grant: (config.grant.as_ref()).map(|g| Box::new(CompiledGrant::compile(g))),
        }
    }

    /// Whether deciding a request with `rule` takes its body: a condition of the rule, or
    /// the gate condition, reads it.
    fn rule_needs_body(&self, rule: &Rule) -> bool {
        rule.needs_body()
            || self.condition.as_deref().is_some_and(CelExpr::reads_body)
            || self
                .grant
                .as_ref()
                .is_some_and(|g| g.arguments_sha256.is_some())
    }

    /// Whether `rule` of this policy matches the request. For an opaque CONNECT, a
    /// granting action needs a rule that covers the whole tunnel (every path, CONNECT, no
    /// body condition), while a deny applies to any rule naming the host (what the tunnel
    /// would carry cannot be checked). For an intercepted CONNECT it is the other way
    /// round: each request inside is decided on its own, so any granting rule naming the
    /// host opens the tunnel, and only a deny covering every path, method and body keeps
    /// it shut.
    fn rule_matches(&self, rule: &Rule, req: &RequestFacts<'_>) -> bool {
        if let Some(grant) = &self.grant
            && !grant.covers(req)
        {
            return false;
        }
        if req.unknown_args.is_some() {
            // Could some call allow? Assume unknown arguments satisfy granting rules and
            // escape deny rules.
            let assumed = RequestFacts {
                unknown_args: Some(self.action != Action::Deny),
                ..*req
            };
            return rule.matches(&assumed);
        }
        if req.is_connect() {
            match (req.intercepted, self.action) {
                (false, Action::Deny) => rule.touches_tunnel(req),
                (false, Action::Allow | Action::Flag | Action::Gated | Action::Approve) => {
                    rule.grants_tunnel(req)
                }
                (true, Action::Deny) => rule.covers_tunnel(req),
                (true, Action::Allow | Action::Flag | Action::Gated | Action::Approve) => {
                    rule.touches_tunnel(req)
                }
            }
        } else {
            rule.matches(req)
        }
    }
}

/// A reference to one rule of one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleRef {
    pub policy: PolicyId,
    pub rule: u32,
}

/// What a policy was compiled from: the first 16 bytes of the SHA-256 of its definition
/// as JSON. A recompile takes an earlier compiled policy only when its name, store version
/// and this digest are the same, so nothing but the definition is kept to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefinitionDigest([u8; 16]);

impl DefinitionDigest {
    /// `None` for a definition that cannot be written as JSON: never taken for another.
    pub fn of(config: &PolicyConfig) -> Option<DefinitionDigest> {
        struct Digesting(sha2::Sha256);
        impl std::io::Write for Digesting {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                sha2::Digest::update(&mut self.0, bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut digesting = Digesting(<sha2::Sha256 as sha2::Digest>::new());
        serde_json::to_writer(&mut digesting, config).ok()?;
        let full = sha2::Digest::finalize(digesting.0);
        let mut digest = [0; 16];
        digest.copy_from_slice(&full[..16]);
        Some(DefinitionDigest(digest))
    }
}

/// What a policy was compiled from, as a recompile knows it again.
#[derive(Debug)]
pub enum CompiledFrom {
    /// A config file's definition, by digest: the file's definitions are not kept.
    Digest(DefinitionDigest),
    /// A definition held as shared JSON (the store's contents), by identity; held here
    /// too, so no other definition can take its address while this compile lives.
    Held(Arc<str>),
    /// One that cannot be written as JSON: never taken for another.
    Unknown,
}

impl CompiledFrom {
    fn of<P: PolicyDefinition>(definition: &P) -> CompiledFrom {
        match definition.held() {
            Some(held) => CompiledFrom::Held(Arc::clone(held)),
            None => DefinitionDigest::of(&definition.config())
                .map_or(CompiledFrom::Unknown, CompiledFrom::Digest),
        }
    }

    fn same(&self, other: &CompiledFrom) -> bool {
        match (self, other) {
            (CompiledFrom::Digest(a), CompiledFrom::Digest(b)) => a == b,
            (CompiledFrom::Held(a), CompiledFrom::Held(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// The earlier compile of each policy, by name.
type EarlierByName<'e> = foldhash::HashMap<&'e str, &'e Arc<CompiledPolicy>>;

fn earlier_by_name(set: &PolicySet) -> EarlierByName<'_> {
    set.policies.iter().map(|p| (&*p.name, p)).collect()
}

/// What a recompile does with one definition.
// A batch of these lives only until it is compiled: boxing the parsed definitions would
// cost an allocation each for nothing.
#[allow(clippy::large_enum_variant)]
enum Prepared<'d> {
    /// Takes the earlier compile as it was.
    Taken(Arc<CompiledPolicy>),
    /// Compiles it anew from `config`.
    Anew {
        compiled_from: CompiledFrom,
        version: Option<i64>,
        config: std::borrow::Cow<'d, PolicyConfig>,
    },
}

impl Prepared<'_> {
    /// Definitions prepared at once: enough to spread over every core, few enough that
    /// the parsed ones (held JSON, ~2 KB each) never add up to much.
    const BATCH: usize = 8192;

    /// `definitions` (the `first`th on) prepared, on every core when there are many:
    /// digesting a file's definitions, and parsing held ones that changed, is most of
    /// what compiling 100,000 policies costs, and each is on its own.
    fn all<'d, P: PolicyDefinition + Sync>(
        definitions: &'d [P],
        first: usize,
        versions: &[i64],
        earlier: Option<&EarlierByName<'_>>,
    ) -> Vec<Prepared<'d>> {
        const ALONE: usize = 4096;
        let one = |(i, definition): (usize, &'d P)| -> Prepared<'d> {
            let compiled_from = CompiledFrom::of(definition);
            let version = versions.get(first + i).copied();
            match (earlier.and_then(|earlier| earlier.get(definition.name())))
                .filter(|e| e.version == version && e.compiled_from.same(&compiled_from))
            {
                Some(compiled) => Prepared::Taken(Arc::clone(compiled)),
                None => Prepared::Anew {
                    compiled_from,
                    version,
                    config: definition.config(),
                },
            }
        };
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        if definitions.len() < ALONE || workers < 2 {
            return definitions.iter().enumerate().map(one).collect();
        }
        let chunk = definitions.len().div_ceil(workers);
        std::thread::scope(|scope| {
            let parts: Vec<_> = (definitions.chunks(chunk).enumerate())
                .map(|(c, part)| {
                    let one = &one;
                    scope.spawn(move || {
                        let at = c * chunk;
                        (part.iter().enumerate())
                            .map(|(i, d)| one((at + i, d)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|part| {
                    part.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        })
    }
}

/// The result of evaluating one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// What to do: the deciding policy's action, or the default action.
    pub action: Action,
    /// The deciding rule; `None` when the default action applied.
    pub decided_by: Option<RuleRef>,
    /// A dry-run (`warn`) policy that would have decided the request ahead of `decided_by`.
    pub dry_run: Option<RuleRef>,
    /// For a gated decider: whether its condition held.
    pub gate: Option<bool>,
    /// The deciding policy refuses (deny, gated) because a condition of it (the rule's
    /// `cel`, the gate's `condition`) could not be evaluated: [`PolicySet::condition_error`]
    /// says why.
    pub condition_error: bool,
}

impl Verdict {
    /// What the verdict means for the request: a gated policy allows only when its
    /// condition held.
    pub fn decision(&self) -> Decision {
        match (self.action, self.gate) {
            (Action::Gated, Some(true)) if !self.condition_error => Decision::Allowed,
            (Action::Gated, _) => Decision::Denied,
            (action, _) => action.decision(),
        }
    }
}

/// Why a request's decision cannot be made from its host, port, path and method (and the
/// workload's tags) alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NeedsMore {
    /// A dry-run policy would decide first: what it would have done is recorded.
    DryRun { policy: Arc<str> },
    /// A rule that could decide has conditions beyond host, path and method (body,
    /// headers, CEL, tools, DLP, action types, prompt).
    Condition { policy: Arc<str>, rule: u32 },
    /// A `gated` or `approve` policy could decide: its condition, or a person.
    Action { policy: Arc<str>, action: Action },
    /// A grant could decide: it is for one identity.
    Grant { policy: Arc<str> },
}

impl std::fmt::Display for NeedsMore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NeedsMore::DryRun { policy } => {
                write!(f, "dry-run policy {policy:?} matches ahead of the decider")
            }
            NeedsMore::Condition { policy, rule } => write!(
                f,
                "policy {policy:?} rule {rule} has conditions beyond host, path and method"
            ),
            NeedsMore::Action { policy, action } => {
                write!(f, "policy {policy:?} is `{action}`")
            }
            NeedsMore::Grant { policy } => write!(f, "grant {policy:?} is for one identity"),
        }
    }
}

/// One matching policy, for explanations (`check`, playground).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyMatch {
    pub policy: PolicyId,
    /// The first rule of the policy that matched.
    pub rule: u32,
}

fn rule_ref(key: Key) -> RuleRef {
    RuleRef {
        policy: key.item,
        rule: key.rule,
    }
}

/// The best enforced and best dry-run match found so far.
#[derive(Default)]
struct Best {
    enforced: Option<Key>,
    warn: Option<Key>,
}

/// An immutable, compiled set of policies. Build one per config change.
#[derive(Debug)]
pub struct PolicySet {
    /// Shared with the sets compiled after this one while their definitions stay the same.
    policies: Vec<Arc<CompiledPolicy>>,
    index: RuleIndex,
    default_action: DefaultAction,
    /// Some active policy has a rule with a body condition: only then can a request need
    /// its body for the decision.
    body_conditions: bool,
    /// The DLP detectors `dlp:` conditions name.
    dlp: Option<Arc<Scanner>>,
    /// Some active policy has a rule naming MCP tools: only then is a `tools/list` answer
    /// worth filtering.
    tool_conditions: bool,
    /// How many policies are active: counted once, as `/readyz` and the metrics ask
    /// often and the policies are 100,000 allocations to visit.
    active: usize,
}

impl PolicySet {
    /// Compiles validated policies. Disabled and draft policies are kept (for listing and
    /// explanations) but never indexed.
    pub fn compile(configs: &[PolicyConfig], default_action: DefaultAction) -> PolicySet {
        PolicySet::compile_versioned(configs, &[], default_action)
    }

    /// Compiles policies read from the store: `versions[i]` is the store version of
    /// `configs[i]` (missing entries: no version), recorded in audit records.
    pub fn compile_versioned(
        configs: &[PolicyConfig],
        versions: &[i64],
        default_action: DefaultAction,
    ) -> PolicySet {
        PolicySet::compile_reusing(configs, versions, default_action, None)
    }

    /// [`PolicySet::compile_versioned`], taking each policy whose definition and version
    /// are unchanged from `earlier` as it was compiled there (any earlier set: what is
    /// taken is matched by its definition's digest, or held JSON by its identity):
    /// a change to one of 100,000 policies compiles one. Only the index over all rules is
    /// built anew.
    pub fn compile_reusing<P: PolicyDefinition + Sync>(
        configs: &[P],
        versions: &[i64],
        default_action: DefaultAction,
        earlier: Option<&PolicySet>,
    ) -> PolicySet {
        let mut rules = RuleCompiler::default();
        let earlier = earlier.map(earlier_by_name);
        let mut policies: Vec<Arc<CompiledPolicy>> = Vec::with_capacity(configs.len());
        for (b, batch) in configs.chunks(Prepared::BATCH).enumerate() {
            let first = b * Prepared::BATCH;
            for prepared in Prepared::all(batch, first, versions, earlier.as_ref()) {
                policies.push(match prepared {
                    Prepared::Taken(compiled) => compiled,
                    Prepared::Anew {
                        compiled_from,
                        version,
                        config,
                    } => Arc::new(CompiledPolicy::compile(
                        &config,
                        compiled_from,
                        version,
                        &mut rules,
                    )),
                });
            }
        }
        let items: Vec<Indexed<'_>> = policies
            .iter()
            .map(|p| Indexed {
                priority: p.priority,
                rank: p.action.rank(),
                match_tags: &p.match_tags,
                rules: &p.rules,
                active: p.status == PolicyStatus::Active,
            })
            .collect();
        let index = RuleIndex::build(&items);
        let body_conditions = policies.iter().any(|p| {
            p.status == PolicyStatus::Active && p.rules.iter().any(|r| p.rule_needs_body(r))
        });
        let tool_conditions = policies
            .iter()
            .any(|p| p.status == PolicyStatus::Active && p.rules.iter().any(Rule::has_tools));
        let active = items.iter().filter(|item| item.active).count();
        PolicySet {
            policies,
            index,
            default_action,
            body_conditions,
            dlp: None,
            tool_conditions,
            active,
        }
    }

    /// The set with the DLP detectors its `dlp:` conditions use.
    pub fn with_dlp(mut self, scanner: Arc<Scanner>) -> PolicySet {
        self.dlp = Some(scanner);
        self
    }

    /// The DLP detectors, when the set was given them.
    pub fn dlp(&self) -> Option<&Scanner> {
        self.dlp.as_deref()
    }

    pub fn policies(&self) -> &[Arc<CompiledPolicy>] {
        &self.policies
    }

    pub fn policy(&self, id: PolicyId) -> &CompiledPolicy {
        &self.policies[id as usize]
    }

    pub fn default_action(&self) -> DefaultAction {
        self.default_action
    }

    pub fn active_count(&self) -> usize {
        self.active
    }

    /// Maps a workload's tags to this set's ids; tags no policy mentions are irrelevant to
    /// the decision and dropped.
    pub fn tag_ids<'t>(&self, tags: impl IntoIterator<Item = &'t Tag>) -> WorkloadTagIds {
        self.index.tag_ids(tags)
    }

    /// Whether some request to `host` could be allowed for a workload whose tags all pass
    /// `reachable`: an active, enforced granting policy (allow, flag, gated) whose match
    /// tags are all reachable has a rule naming the host, or the default action allows.
    /// Asked before any request is seen, to decide whether to mint a certificate for a
    /// TLS server name. A linear scan, once per new name.
    pub fn could_allow_host(&self, host: &str, reachable: impl Fn(&Tag) -> bool) -> bool {
        if self.default_action.action() != Action::Deny {
            return true;
        }
        self.policies.iter().any(|policy| {
            policy.status == PolicyStatus::Active
                && !policy.warn
                && policy.action != Action::Deny
                && policy.match_tags.iter().all(&reachable)
                && policy.rules.iter().any(|rule| rule.host.accepts_name(host))
        })
    }

    /// Whether some active policy has a rule naming MCP tools.
    pub fn has_tool_conditions(&self) -> bool {
        self.tool_conditions
    }

    /// Whether some active policy has a rule with a body condition.
    pub fn has_body_conditions(&self) -> bool {
        self.body_conditions
    }

    /// Whether the decision for this request could depend on its body, asked on the
    /// headers: some candidate rule with a body condition (active, its tags carried, its
    /// host, path and method matching) ranks ahead of the best enforced candidate without
    /// one, which would decide whatever the body holds. Dry-run rules with a body condition
    /// count too, since they are recorded. A CONNECT never needs one: nothing in a tunnel is
    /// a body Portcullis could inspect.
    pub fn needs_body(&self, req: &RequestFacts<'_>, tags: &WorkloadTagIds) -> bool {
        if !self.body_conditions || req.is_connect() {
            return false;
        }
        let mut first_body: Option<Key> = None;
        let mut decider: Option<Key> = None;
        // Buckets are sorted by key: a candidate ranked after the best body rule or the
        // best header-only decider seen so far cannot change the answer.
        self.index.visit(req, tags, |key| {
            if decider.is_some_and(|d| key >= d) || first_body.is_some_and(|b| key >= b) {
                return Next::SkipBucket;
            }
            let policy = &self.policies[key.item as usize];
            let rule = &policy.rules[key.rule as usize];
            if !rule.matches_headers(req) {
                return Next::Continue;
            }
            if policy.rule_needs_body(rule) {
                first_body = Some(key);
                Next::SkipBucket
            } else if policy.warn {
                Next::Continue
            } else {
                decider = Some(key);
                Next::SkipBucket
            }
        });
        first_body.is_some_and(|b| decider.is_none_or(|d| b < d))
    }

    /// Decides one request.
    pub fn evaluate(&self, req: &RequestFacts<'_>, tags: &WorkloadTagIds) -> Verdict {
        let mut best = Best::default();
        self.index.visit(req, tags, |key| {
            if best.enforced.is_some_and(|b| key >= b) {
                return Next::SkipBucket;
            }
            let policy = &self.policies[key.item as usize];
            if !policy.rule_matches(&policy.rules[key.rule as usize], req) {
                return Next::Continue;
            }
            if policy.warn {
                if best.warn.is_none_or(|w| key < w) {
                    best.warn = Some(key);
                }
                Next::Continue
            } else {
                best.enforced = Some(key);
                Next::SkipBucket
            }
        });
        let dry_run = match (best.warn, best.enforced) {
            (Some(warn), Some(enforced)) if warn < enforced => Some(rule_ref(warn)),
            (Some(warn), None) => Some(rule_ref(warn)),
            _ => None,
        };
        match best.enforced {
            Some(key) => {
                let policy = &self.policies[key.item as usize];
                let gate = policy.condition.as_ref().map(|c| match req.unknown_args {
                    Some(_) if c.reads_body() => Ok(true),
                    _ => c.test(req),
                });
                let condition_error = matches!(gate, Some(Err(_)))
                    || (policy.action.refuses()
                        && policy.rules[key.rule as usize]
                            .conditions
                            .as_ref()
                            .is_some_and(|c| c.cel_error(req).is_some()));
                Verdict {
                    action: policy.action,
                    decided_by: Some(rule_ref(key)),
                    dry_run,
                    gate: gate.map(|held| held.unwrap_or(false)),
                    condition_error,
                }
            }
            None => Verdict {
                action: self.default_action.action(),
                decided_by: None,
                dry_run,
                gate: None,
                condition_error: false,
            },
        }
    }

    /// Every host name an active policy the workload's tags select names exactly, with the
    /// port its rule restricts it to (`None`: any port), sorted.
    pub fn named_hosts(&self, tags: &WorkloadTagIds) -> Vec<(&str, Option<u16>)> {
        let mut hosts: Vec<(&str, Option<u16>)> = self
            .policies
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                p.status == PolicyStatus::Active && self.index.carries(*i as u32, tags)
            })
            .flat_map(|(_, p)| p.rules.iter())
            .filter_map(|rule| match &rule.host.kind {
                super::rule::HostMatch::Exact(host) => Some((&**host, rule.host.port)),
                _ => None,
            })
            .collect();
        hosts.sort_unstable();
        hosts.dedup();
        hosts
    }

    /// The rules that could decide a request to the probe's host and port, whatever its
    /// path and method, in decision order: what Envoy's routes for that host are compiled
    /// from (docs/fast-path.md).
    pub fn host_rules(&self, probe: &RequestFacts<'_>, tags: &WorkloadTagIds) -> Vec<RuleRef> {
        let mut keys = Vec::new();
        self.index.visit(probe, tags, |key| {
            let rule = &self.policies[key.item as usize].rules[key.rule as usize];
            if rule.host.matches(probe) {
                keys.push(key);
            }
            Next::Continue
        });
        keys.sort();
        keys.dedup();
        keys.into_iter().map(rule_ref).collect()
    }

    /// The verdict for a request decided from its host, port, path and method alone, for a
    /// workload with `tags`: `Err` when a rule that could decide it reads more (a
    /// condition), a dry run would be recorded, or its action asks more than that (gated,
    /// approve, a grant). For `check` and the fast path (docs/fast-path.md).
    pub fn scope_verdict(
        &self,
        req: &RequestFacts<'_>,
        tags: &WorkloadTagIds,
    ) -> Result<Verdict, NeedsMore> {
        // The first rule in decision order whose host, path and method match decides, or
        // says why it cannot decide on them alone.
        let mut first: Option<Key> = None;
        self.index.visit(req, tags, |key| {
            if first.is_some_and(|f| key >= f) {
                return Next::SkipBucket;
            }
            let rule = &self.policies[key.item as usize].rules[key.rule as usize];
            if rule.host.matches(req)
                && rule.methods.contains(req.method)
                && rule.paths.matches(req.path)
            {
                first = Some(key);
                return Next::SkipBucket;
            }
            Next::Continue
        });
        let Some(key) = first else {
            return Ok(Verdict {
                action: self.default_action.action(),
                decided_by: None,
                dry_run: None,
                gate: None,
                condition_error: false,
            });
        };
        let policy = &self.policies[key.item as usize];
        let name = || policy.name.clone();
        if policy.warn {
            return Err(NeedsMore::DryRun { policy: name() });
        }
        if policy.grant.is_some() {
            return Err(NeedsMore::Grant { policy: name() });
        }
        if policy.rules[key.rule as usize].conditions.is_some() {
            return Err(NeedsMore::Condition {
                policy: name(),
                rule: key.rule,
            });
        }
        if matches!(policy.action, Action::Gated | Action::Approve) {
            return Err(NeedsMore::Action {
                policy: name(),
                action: policy.action,
            });
        }
        Ok(Verdict {
            action: policy.action,
            decided_by: Some(rule_ref(key)),
            dry_run: None,
            gate: None,
            condition_error: false,
        })
    }

    /// Why a condition of the rule `decided_by` (its `cel`, or its policy's gate
    /// `condition`) could not be evaluated for this request, when it could not: the text of
    /// a [`Verdict::condition_error`], for the audit record.
    pub fn condition_error(&self, decided_by: RuleRef, req: &RequestFacts<'_>) -> Option<String> {
        let policy = self.policy(decided_by.policy);
        let rule = policy.rules.get(decided_by.rule as usize)?;
        if let Some(error) = rule.conditions.as_ref().and_then(|c| c.cel_error(req)) {
            return Some(format!("rule {} `cel`: {error}", decided_by.rule));
        }
        let condition = policy.condition.as_ref()?;
        if condition.reads_body() && req.unknown_args.is_some() {
            return None;
        }
        condition
            .test(req)
            .err()
            .map(|error| format!("`condition` `{}`: {error}", condition.as_str()))
    }

    /// Every active policy that matches the request, in decision order, with its first
    /// matching rule; body conditions are checked against `req.body`. A linear scan: for
    /// explanations, not for the request path.
    pub fn explain(&self, req: &RequestFacts<'_>, tags: &WorkloadTagIds) -> Vec<PolicyMatch> {
        let mut matches: Vec<(Key, PolicyMatch)> = Vec::new();
        for (policy_id, policy) in self.policies.iter().enumerate() {
            let id = policy_id as PolicyId;
            if policy.status != PolicyStatus::Active || !self.index.carries(id, tags) {
                continue;
            }
            if let Some(rule_id) = policy
                .rules
                .iter()
                .position(|r| policy.rule_matches(r, req))
            {
                let key = Key {
                    priority: policy.priority,
                    rank: policy.action.rank(),
                    item: id,
                    rule: rule_id as u32,
                };
                matches.push((
                    key,
                    PolicyMatch {
                        policy: id,
                        rule: rule_id as u32,
                    },
                ));
            }
        }
        matches.sort_by_key(|(key, _)| *key);
        matches.into_iter().map(|(_, m)| m).collect()
    }
}
