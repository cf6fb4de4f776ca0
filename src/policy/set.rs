//! The compiled policy set and its index.
//!
//! Policies are grouped by an *anchor* tag — the rarest of their `match_tags` — so a request
//! only looks at groups for tags its workload carries (plus the fleet-wide group of policies
//! without tags). Inside a group, rules are bucketed by host: an exact-name map (IP
//! addresses included), a map of domains walked label by label (`*.suffix` patterns and
//! globs by their literal domain), CIDRs by first octet, and short lists for `*`, wide
//! CIDRs and globs without a domain. Every bucket is sorted by precedence, so a scan stops
//! at its first full match.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use smallvec::SmallVec;

use super::model::{Action, DefaultAction, PolicyConfig, PolicyStatus};
use super::rule::{HostMatch, Rule, RuleCompiler, Tag};
use crate::request::RequestFacts;

/// Index of a policy in config order.
pub type PolicyId = u32;
type TagId = u32;

/// A policy ready to evaluate.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub name: Arc<str>,
    pub priority: i32,
    pub status: PolicyStatus,
    pub action: Action,
    pub warn: bool,
    pub match_tags: Vec<Tag>,
    pub message: Option<Arc<str>>,
    pub rules: Box<[Rule]>,
    tag_ids: Box<[TagId]>,
}

impl CompiledPolicy {
    /// Whether `rule` of this policy matches the request. For CONNECT, a granting action
    /// needs a rule that covers the whole tunnel, while a deny applies to any rule naming
    /// the host (what the tunnel would carry cannot be checked).
    fn rule_matches(&self, rule: &Rule, req: &RequestFacts<'_>) -> bool {
        if req.is_connect() {
            match self.action {
                Action::Deny => rule.touches_tunnel(req),
                Action::Allow | Action::Flag | Action::Gated => rule.grants_tunnel(req),
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

/// The result of evaluating one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// What to do: the deciding policy's action, or the default action.
    pub action: Action,
    /// The deciding rule; `None` when the default action applied.
    pub decided_by: Option<RuleRef>,
    /// A dry-run (`warn`) policy that would have decided the request ahead of `decided_by`.
    pub dry_run: Option<RuleRef>,
}

/// One matching policy, for explanations (`check`, playground).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyMatch {
    pub policy: PolicyId,
    /// The first rule of the policy that matched.
    pub rule: u32,
}

/// The workload's tags, as ids known to one [`PolicySet`]; sorted.
#[derive(Debug, Clone, Default)]
pub struct WorkloadTagIds(SmallVec<[TagId; 8]>);

impl WorkloadTagIds {
    fn contains(&self, id: TagId) -> bool {
        self.0.binary_search(&id).is_ok()
    }
}

/// Precedence of a rule: derived ordering is the decision order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Precedence {
    priority: i32,
    rank: u8,
    policy: PolicyId,
    rule: u32,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Precedence,
}

impl Entry {
    fn rule_ref(self) -> RuleRef {
        RuleRef {
            policy: self.key.policy,
            rule: self.key.rule,
        }
    }
}

/// Which CIDR bucket an address or network falls in: the first octet of IPv4, the first
/// 16 bits of IPv6. Networks wider than that go to a short list scanned for every IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum CidrBucket {
    V4(u8),
    V6(u16),
}

impl CidrBucket {
    fn of_ip(ip: IpAddr) -> CidrBucket {
        match ip {
            IpAddr::V4(v4) => CidrBucket::V4(v4.octets()[0]),
            IpAddr::V6(v6) => CidrBucket::V6(v6.segments()[0]),
        }
    }

    fn of_net(net: &IpNet) -> Option<CidrBucket> {
        let narrow_enough = match net {
            IpNet::V4(n) => n.prefix_len() >= 8,
            IpNet::V6(n) => n.prefix_len() >= 16,
        };
        narrow_enough.then(|| CidrBucket::of_ip(net.network()))
    }
}

#[derive(Debug, Default)]
struct HostIndex {
    exact: HashMap<Box<str>, Vec<Entry>>,
    /// `*.suffix` rules under `suffix`, and globs under their literal domain: found by
    /// walking the request host's parent domains.
    domain: HashMap<Box<str>, Vec<Entry>>,
    any: Vec<Entry>,
    cidr: HashMap<CidrBucket, Vec<Entry>>,
    wide_cidr: Vec<Entry>,
    /// Globs with no literal domain (`api-*`): scanned for every request.
    glob: Vec<Entry>,
}

impl HostIndex {
    fn insert(&mut self, rule: &Rule, entry: Entry) {
        match &rule.host.kind {
            HostMatch::Any => self.any.push(entry),
            HostMatch::Exact(host) => self.exact.entry(host.clone()).or_default().push(entry),
            HostMatch::Suffix(suffix) => self.domain.entry(suffix.clone()).or_default().push(entry),
            HostMatch::Glob {
                domain: Some(domain),
                ..
            } => self.domain.entry(domain.clone()).or_default().push(entry),
            HostMatch::Glob { domain: None, .. } => self.glob.push(entry),
            HostMatch::Cidr(net) if net.prefix_len() == net.max_prefix_len() => {
                let host = net.addr().to_string().into_boxed_str();
                self.exact.entry(host).or_default().push(entry)
            }
            HostMatch::Cidr(net) => match CidrBucket::of_net(net) {
                Some(bucket) => self.cidr.entry(bucket).or_default().push(entry),
                None => self.wide_cidr.push(entry),
            },
        }
    }

    fn sort(&mut self) {
        let by_key = |a: &Entry, b: &Entry| a.key.cmp(&b.key);
        for list in self
            .exact
            .values_mut()
            .chain(self.domain.values_mut())
            .chain(self.cidr.values_mut())
        {
            list.sort_unstable_by(by_key);
            list.shrink_to_fit();
        }
        for list in [&mut self.any, &mut self.wide_cidr, &mut self.glob] {
            list.sort_unstable_by(by_key);
            list.shrink_to_fit();
        }
    }
}

/// The best enforced and best dry-run match found so far.
#[derive(Default)]
struct Best {
    enforced: Option<Entry>,
    warn: Option<Entry>,
}

/// An immutable, compiled set of policies. Build one per config change.
#[derive(Debug)]
pub struct PolicySet {
    policies: Vec<CompiledPolicy>,
    tag_ids: HashMap<Arc<str>, TagId>,
    fleet: HostIndex,
    /// Indexed by the anchor tag's id.
    anchored: Vec<HostIndex>,
    default_action: DefaultAction,
}

impl PolicySet {
    /// Compiles validated policies. Disabled and draft policies are kept (for listing and
    /// explanations) but never indexed.
    pub fn compile(configs: &[PolicyConfig], default_action: DefaultAction) -> PolicySet {
        let mut tag_ids: HashMap<Arc<str>, TagId> = HashMap::new();
        let mut tag_uses: Vec<u32> = Vec::new();
        let mut policies = Vec::with_capacity(configs.len());
        let mut rules = RuleCompiler::default();
        for config in configs {
            let mut ids: Vec<TagId> = config
                .match_tags
                .iter()
                .map(|tag| {
                    let next = tag_ids.len() as TagId;
                    *tag_ids.entry(Arc::from(tag.as_str())).or_insert(next)
                })
                .collect();
            ids.sort_unstable();
            ids.dedup();
            if config.status == PolicyStatus::Active {
                tag_uses.resize(tag_ids.len(), 0);
                for id in &ids {
                    tag_uses[*id as usize] += 1;
                }
            }
            policies.push(CompiledPolicy {
                name: Arc::from(config.name.as_str()),
                priority: config.priority,
                status: config.status,
                action: config.action,
                warn: config.warn,
                match_tags: config.match_tags.clone(),
                message: config.message.as_deref().map(Arc::from),
                rules: config.rules.iter().map(|r| rules.compile(r)).collect(),
                tag_ids: ids.into_boxed_slice(),
            });
        }
        let mut fleet = HostIndex::default();
        let mut anchored: Vec<HostIndex> = Vec::new();
        anchored.resize_with(tag_ids.len(), HostIndex::default);
        for (policy_id, policy) in policies.iter().enumerate() {
            if policy.status != PolicyStatus::Active {
                continue;
            }
            let index = match policy
                .tag_ids
                .iter()
                .min_by_key(|id| tag_uses[**id as usize])
            {
                Some(anchor) => &mut anchored[*anchor as usize],
                None => &mut fleet,
            };
            for (rule_id, rule) in policy.rules.iter().enumerate() {
                let key = Precedence {
                    priority: policy.priority,
                    rank: policy.action.rank(),
                    policy: policy_id as PolicyId,
                    rule: rule_id as u32,
                };
                index.insert(rule, Entry { key });
            }
        }
        fleet.sort();
        for index in &mut anchored {
            index.sort();
        }
        PolicySet {
            policies,
            tag_ids,
            fleet,
            anchored,
            default_action,
        }
    }

    pub fn policies(&self) -> &[CompiledPolicy] {
        &self.policies
    }

    pub fn policy(&self, id: PolicyId) -> &CompiledPolicy {
        &self.policies[id as usize]
    }

    pub fn default_action(&self) -> DefaultAction {
        self.default_action
    }

    pub fn active_count(&self) -> usize {
        self.policies
            .iter()
            .filter(|p| p.status == PolicyStatus::Active)
            .count()
    }

    /// Maps a workload's tags to this set's ids; tags no policy mentions are irrelevant to
    /// the decision and dropped.
    pub fn tag_ids<'t>(&self, tags: impl IntoIterator<Item = &'t Tag>) -> WorkloadTagIds {
        let mut ids: SmallVec<[TagId; 8]> = tags
            .into_iter()
            .filter_map(|tag| self.tag_ids.get(tag.as_str()).copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        WorkloadTagIds(ids)
    }

    /// Decides one request.
    pub fn evaluate(&self, req: &RequestFacts<'_>, tags: &WorkloadTagIds) -> Verdict {
        let mut best = Best::default();
        self.search(&self.fleet, req, tags, &mut best);
        for id in &tags.0 {
            if let Some(index) = self.anchored.get(*id as usize) {
                self.search(index, req, tags, &mut best);
            }
        }
        let dry_run = match (best.warn, best.enforced) {
            (Some(warn), Some(enforced)) if warn.key < enforced.key => Some(warn.rule_ref()),
            (Some(warn), None) => Some(warn.rule_ref()),
            _ => None,
        };
        match best.enforced {
            Some(entry) => Verdict {
                action: self.policies[entry.key.policy as usize].action,
                decided_by: Some(entry.rule_ref()),
                dry_run,
            },
            None => Verdict {
                action: self.default_action.action(),
                decided_by: None,
                dry_run,
            },
        }
    }

    fn search(
        &self,
        index: &HostIndex,
        req: &RequestFacts<'_>,
        tags: &WorkloadTagIds,
        best: &mut Best,
    ) {
        if let Some(list) = index.exact.get(req.host) {
            self.scan(list, req, tags, best);
        }
        if !index.domain.is_empty() && req.ip.is_none() {
            let mut rest = req.host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(list) = index.domain.get(rest) {
                    self.scan(list, req, tags, best);
                }
            }
        }
        self.scan(&index.any, req, tags, best);
        if let Some(ip) = req.ip {
            if let Some(list) = index.cidr.get(&CidrBucket::of_ip(ip)) {
                self.scan(list, req, tags, best);
            }
            self.scan(&index.wide_cidr, req, tags, best);
        }
        self.scan(&index.glob, req, tags, best);
    }

    fn scan(&self, list: &[Entry], req: &RequestFacts<'_>, tags: &WorkloadTagIds, best: &mut Best) {
        for entry in list {
            if best.enforced.is_some_and(|b| entry.key >= b.key) {
                return;
            }
            let policy = &self.policies[entry.key.policy as usize];
            if !policy.tag_ids.iter().all(|id| tags.contains(*id)) {
                continue;
            }
            if !policy.rule_matches(&policy.rules[entry.key.rule as usize], req) {
                continue;
            }
            if policy.warn {
                if best.warn.is_none_or(|w| entry.key < w.key) {
                    best.warn = Some(*entry);
                }
            } else {
                best.enforced = Some(*entry);
                return;
            }
        }
    }

    /// Every active policy that matches the request, in decision order, with its first
    /// matching rule. A linear scan: for explanations, not for the request path.
    pub fn explain(&self, req: &RequestFacts<'_>, tags: &WorkloadTagIds) -> Vec<PolicyMatch> {
        let mut matches: Vec<(Precedence, PolicyMatch)> = Vec::new();
        for (policy_id, policy) in self.policies.iter().enumerate() {
            if policy.status != PolicyStatus::Active
                || !policy.tag_ids.iter().all(|id| tags.contains(*id))
            {
                continue;
            }
            if let Some(rule_id) = policy
                .rules
                .iter()
                .position(|r| policy.rule_matches(r, req))
            {
                let key = Precedence {
                    priority: policy.priority,
                    rank: policy.action.rank(),
                    policy: policy_id as PolicyId,
                    rule: rule_id as u32,
                };
                matches.push((
                    key,
                    PolicyMatch {
                        policy: policy_id as PolicyId,
                        rule: rule_id as u32,
                    },
                ));
            }
        }
        matches.sort_by_key(|(key, _)| *key);
        matches.into_iter().map(|(_, m)| m).collect()
    }
}
