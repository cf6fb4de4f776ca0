//! Workload tags: what identities carry and policies and secrets match on.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A workload tag such as `env:prod` or `tenant:acme-corp`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tag(Arc<str>);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Tag> for String {
    fn from(tag: Tag) -> String {
        tag.0.to_string()
    }
}

impl TryFrom<String> for Tag {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Tag::parse(&text)
    }
}

impl Tag {
    /// A tag exactly as written: no trimming, so what the API accepts is what its schema
    /// (`vocab::names::TAG_PATTERN`) says.
    pub fn parse(text: &str) -> Result<Tag, String> {
        match super::names::tag_problem(text) {
            Some(problem) => Err(problem),
            None => Ok(Tag(text.into())),
        }
    }

    /// The tags of a listener as Envoy names them (`a:b,c:d`, in ext_proc's initial
    /// metadata or a route configuration's name); an invalid one is logged and left out.
    pub fn parse_listener_list(list: &str) -> Vec<Tag> {
        list.split(',')
            .filter(|t| !t.trim().is_empty())
            .filter_map(|t| match Tag::parse(t.trim()) {
                Ok(tag) => Some(tag),
                Err(e) => {
                    tracing::warn!(tag = t, error = %e, "ignoring invalid listener tag");
                    None
                }
            })
            .collect()
    }
}
