//! The rule index shared by policies and secrets: which (item, rule) pairs could match a
//! request, found without scanning every item.
//!
//! Items (policies, secrets) are grouped by an *anchor* tag — the rarest of their
//! `match_tags` — so a request only looks at groups for tags its workload carries, plus the
//! group of items without tags. Inside a group, rules are bucketed by host:
//! - an exact-name map (IP addresses included);
//! - a map of domains walked label by label (`*.suffix` patterns, and globs by their
//!   literal domain);
//! - CIDRs by first octet (IPv4) or first 16 bits (IPv6);
//! - short lists for `*`, wide CIDRs and globs without a domain.
//!
//! Every bucket is sorted by [`Key`], so a caller can stop a bucket at its first hit.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use smallvec::SmallVec;

use super::rule::{HostMatch, Rule, Tag};
use crate::policy::RequestFacts;

type TagId = u32;

/// The workload's tags, as ids known to one index; sorted.
#[derive(Debug, Clone, Default)]
pub struct WorkloadTagIds(SmallVec<[TagId; 8]>);

impl WorkloadTagIds {
    fn contains(&self, id: TagId) -> bool {
        self.0.binary_search(&id).is_ok()
    }
}

/// The order candidates are decided in: derived ordering is precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub priority: i32,
    pub rank: u8,
    /// The item's index in config order.
    pub item: u32,
    /// The rule's index within the item.
    pub rule: u32,
}

/// One item to index.
pub struct Indexed<'a> {
    pub priority: i32,
    pub rank: u8,
    pub match_tags: &'a [Tag],
    pub rules: &'a [Rule],
    /// Inactive items are not indexed (but keep their id).
    pub active: bool,
}

/// Which CIDR bucket a network is kept in: by its first 16 bits (IPv4 /16 or narrower;
/// IPv6 /32 or narrower, by 32), else its first 8 (IPv4 /8 to /15; IPv6 /16 to /31, by 16).
/// An address looks in both of its buckets, so a fleet of `10.N.0.0/16` rules is not one
/// long list every request to a `10.…` address walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum CidrBucket {
    V4Wide(u8),
    V4(u16),
    V6Wide(u16),
    V6(u32),
}

impl CidrBucket {
    /// The buckets an address's rules can be in.
    fn of_ip(ip: IpAddr) -> [CidrBucket; 2] {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, _, _] = v4.octets();
                [
                    CidrBucket::V4(u16::from_be_bytes([a, b])),
                    CidrBucket::V4Wide(a),
                ]
            }
            IpAddr::V6(v6) => {
                let s = v6.segments();
                [
                    CidrBucket::V6((u32::from(s[0]) << 16) | u32::from(s[1])),
                    CidrBucket::V6Wide(s[0]),
                ]
            }
        }
    }

    fn of_net(net: &IpNet) -> Option<CidrBucket> {
        let [fine, wide] = CidrBucket::of_ip(net.network());
        match net {
            IpNet::V4(n) if n.prefix_len() >= 16 => Some(fine),
            IpNet::V4(n) if n.prefix_len() >= 8 => Some(wide),
            IpNet::V6(n) if n.prefix_len() >= 32 => Some(fine),
            IpNet::V6(n) if n.prefix_len() >= 16 => Some(wide),
            _ => None,
        }
    }
}

/// The index's maps: keyed by text a store writer chooses (hosts, tags), so seeded per
/// map; and many times faster than the standard SipHash over 100,000 keys per compile.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;

/// The rules under one host or domain: most often one (a fleet of tenants, each naming
/// its own hosts), kept inline instead of in an allocation of its own.
type Bucket = SmallVec<[Key; 1]>;

#[derive(Debug, Default)]
struct HostIndex {
    /// Keyed by the rules' own host text (shared, not copied).
    exact: HashMap<Arc<str>, Bucket>,
    /// `*.suffix` rules under `suffix`, and globs under their literal domain.
    domain: HashMap<Arc<str>, Bucket>,
    any: Vec<Key>,
    cidr: HashMap<CidrBucket, Bucket>,
    wide_cidr: Vec<Key>,
    /// Globs with no literal domain (`api-*`): looked at for every request.
    glob: Vec<Key>,
}

impl HostIndex {
    fn insert(&mut self, rule: &Rule, key: Key) {
        match &rule.host.kind {
            HostMatch::Any => self.any.push(key),
            HostMatch::Exact(host) => self.exact.entry(Arc::clone(host)).or_default().push(key),
            HostMatch::Suffix(suffix) => {
                self.domain.entry(Arc::clone(suffix)).or_default().push(key)
            }
            HostMatch::Glob {
                domain: Some(domain),
                ..
            } => self.domain.entry(Arc::clone(domain)).or_default().push(key),
            HostMatch::Glob { domain: None, .. } => self.glob.push(key),
            HostMatch::Cidr(net) if net.prefix_len() == net.max_prefix_len() => {
                let host: Arc<str> = Arc::from(net.addr().to_string());
                self.exact.entry(host).or_default().push(key)
            }
            HostMatch::Cidr(net) => match CidrBucket::of_net(net) {
                Some(bucket) => self.cidr.entry(bucket).or_default().push(key),
                None => self.wide_cidr.push(key),
            },
        }
    }

    fn sort(&mut self) {
        for bucket in (self.exact.values_mut())
            .chain(self.domain.values_mut())
            .chain(self.cidr.values_mut())
        {
            bucket.sort_unstable();
            bucket.shrink_to_fit();
        }
        for list in [&mut self.any, &mut self.wide_cidr, &mut self.glob] {
            list.sort_unstable();
            list.shrink_to_fit();
        }
    }

    /// Calls `bucket` with every bucket that can hold a rule for the request's host.
    fn buckets<'s>(&'s self, req: &RequestFacts<'_>, mut bucket: impl FnMut(&'s [Key])) {
        if let Some(list) = self.exact.get(req.host) {
            bucket(list);
        }
        if !self.domain.is_empty() && req.ip.is_none() {
            let mut rest = req.host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(list) = self.domain.get(rest) {
                    bucket(list);
                }
            }
        }
        bucket(&self.any);
        if let Some(ip) = req.ip {
            for key in CidrBucket::of_ip(ip) {
                if let Some(list) = self.cidr.get(&key) {
                    bucket(list);
                }
            }
            bucket(&self.wide_cidr);
        }
        bucket(&self.glob);
    }
}

/// What a visitor wants after seeing a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep going through this bucket.
    Continue,
    /// Nothing later in this bucket can matter (buckets are sorted by [`Key`]).
    SkipBucket,
}

/// An immutable index over items' rules.
#[derive(Debug, Default)]
pub struct RuleIndex {
    tag_ids: HashMap<Arc<str>, TagId>,
    /// Each item's match tags, as sorted ids.
    item_tags: ItemTags,
    fleet: HostIndex,
    /// Indexed by the anchor tag's id.
    anchored: Vec<HostIndex>,
}

/// Every item's match tag ids in one list, item `i`'s run from `starts[i]` to
/// `starts[i + 1]`: two allocations for the whole set instead of one per policy, rebuilt on
/// every compile (at 100,000 policies, small blocks scattered among a reload's freed memory
/// keep its pages from being handed back).
#[derive(Debug)]
struct ItemTags {
    ids: Vec<TagId>,
    starts: Vec<u32>,
}

impl Default for ItemTags {
    fn default() -> Self {
        ItemTags::with_capacity(0)
    }
}

impl ItemTags {
    fn with_capacity(items: usize) -> ItemTags {
        let mut starts = Vec::with_capacity(items + 1);
        starts.push(0);
        ItemTags {
            ids: Vec::with_capacity(items),
            starts,
        }
    }

    fn of(&self, item: u32) -> &[TagId] {
        let item = item as usize;
        &self.ids[self.starts[item] as usize..self.starts[item + 1] as usize]
    }

    /// Appends the next item's tags, sorted and distinct.
    fn push(&mut self, sorted_distinct: &[TagId]) {
        self.ids.extend_from_slice(sorted_distinct);
        self.starts.push(self.ids.len() as u32);
    }
}

impl RuleIndex {
    pub fn build(items: &[Indexed<'_>]) -> RuleIndex {
        let mut tag_ids: HashMap<Arc<str>, TagId> = HashMap::default();
        let mut item_tags = ItemTags::with_capacity(items.len());
        let mut scratch: Vec<TagId> = Vec::new();
        for item in items {
            scratch.clear();
            scratch.extend(
                item.match_tags
                    .iter()
                    .map(|tag| match tag_ids.get(tag.as_str()) {
                        Some(id) => *id,
                        None => {
                            let id = tag_ids.len() as TagId;
                            tag_ids.insert(Arc::from(tag.as_str()), id);
                            id
                        }
                    }),
            );
            scratch.sort_unstable();
            scratch.dedup();
            item_tags.push(&scratch);
        }
        item_tags.ids.shrink_to_fit();
        let mut uses = vec![0u32; tag_ids.len()];
        for (item_id, item) in items.iter().enumerate() {
            if item.active {
                for id in item_tags.of(item_id as u32) {
                    uses[*id as usize] += 1;
                }
            }
        }
        let mut fleet = HostIndex::default();
        let mut anchored: Vec<HostIndex> = Vec::new();
        anchored.resize_with(tag_ids.len(), HostIndex::default);
        for (item_id, item) in items.iter().enumerate() {
            if !item.active {
                continue;
            }
            let ids = item_tags.of(item_id as u32);
            let index = match ids.iter().min_by_key(|id| uses[**id as usize]) {
                Some(anchor) => &mut anchored[*anchor as usize],
                None => &mut fleet,
            };
            for (rule_id, rule) in item.rules.iter().enumerate() {
                let key = Key {
                    priority: item.priority,
                    rank: item.rank,
                    item: item_id as u32,
                    rule: rule_id as u32,
                };
                index.insert(rule, key);
            }
        }
        fleet.sort();
        for index in &mut anchored {
            index.sort();
        }
        RuleIndex {
            tag_ids,
            item_tags,
            fleet,
            anchored,
        }
    }

    /// Maps a workload's tags to this index's ids; tags no item mentions are dropped.
    pub fn tag_ids<'t>(&self, tags: impl IntoIterator<Item = &'t Tag>) -> WorkloadTagIds {
        let mut ids: SmallVec<[TagId; 8]> = tags
            .into_iter()
            .filter_map(|tag| self.tag_ids.get(tag.as_str()).copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        WorkloadTagIds(ids)
    }

    /// Whether the workload carries every match tag of `item`.
    pub fn carries(&self, item: u32, tags: &WorkloadTagIds) -> bool {
        self.item_tags.of(item).iter().all(|id| tags.contains(*id))
    }

    /// Shows `visit` every candidate whose item's tags the workload carries and whose
    /// rule's host bucket fits the request, bucket by bucket in [`Key`] order. The visitor
    /// checks the rule itself.
    pub fn visit(
        &self,
        req: &RequestFacts<'_>,
        tags: &WorkloadTagIds,
        mut visit: impl FnMut(Key) -> Next,
    ) {
        let mut in_bucket = |list: &[Key]| {
            for key in list {
                if !self.carries(key.item, tags) {
                    continue;
                }
                if visit(*key) == Next::SkipBucket {
                    return;
                }
            }
        };
        self.fleet.buckets(req, &mut in_bucket);
        for id in &tags.0 {
            if let Some(index) = self.anchored.get(*id as usize) {
                index.buckets(req, &mut in_bucket);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_item_has_its_own_run_of_tags() {
        let mut tags = ItemTags::default();
        // item 0: none; item 1: [4, 7]; item 2: none; item 3: [2]
        for item in [&[][..], &[4, 7][..], &[][..], &[2][..]] {
            tags.push(item);
        }
        assert_eq!(tags.ids, vec![4, 7, 2]);
        let of: Vec<&[TagId]> = (0..4).map(|item| tags.of(item)).collect();
        assert_eq!(of, vec![&[][..], &[4, 7][..], &[][..], &[2][..]]);
    }
}
