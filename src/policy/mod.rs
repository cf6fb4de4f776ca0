//! The policy engine: the stored form of a policy ([`PolicyConfig`]), its compilation into
//! an indexed [`PolicySet`], and per-request evaluation.
//!
//! Decision rule (SPEC): among active policies whose `match_tags` the workload carries, the
//! matching rule of the lowest-priority-number policy decides; at equal priority
//! `deny > gated > flag > allow`, then config order. Nothing matches: the default action.
//! `warn: true` policies are evaluated but only recorded (dry run). A rule's body condition
//! is only checked when the body could change the decision ([`PolicySet::needs_body`]).

pub mod body;
pub mod cel;
pub mod conditions;
mod facts;
pub mod index;
mod model;
pub mod rule;
mod set;

pub use facts::RequestFacts;
pub use index::WorkloadTagIds;
pub use model::{
    Action, ConditionFails, Decision, DefaultAction, Grant, PolicyConfig, PolicyDefinition,
    PolicyStatus, lint_policy, validate_policy,
};
pub use set::{
    CompiledFrom, CompiledGrant, CompiledPolicy, DefinitionDigest, NeedsMore, PolicyId,
    PolicyMatch, PolicySet, RuleRef, Verdict,
};

#[cfg(test)]
mod tests;
