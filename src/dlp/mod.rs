//! DLP detectors: leaked credentials and personal data in request bodies.
//!
//! A [`Scanner`] holds every detector — the builtins ([`BUILTIN`]) and the custom ones of
//! the `dlp:` config section — compiled into one [`regex::bytes::RegexSet`]. A scan is one
//! pass of that set over the body, which says which detectors may have matched; only those
//! run their own pattern again to locate each match and confirm it (boundaries, Luhn,
//! a JWT header that decodes, the key name before an AWS secret, placeholders rejected).
//!
//! A [`Findings`] never holds what matched, only which detector fired and how many times:
//! its `Debug` and `Serialize` forms are safe for logs, audit records and the playground.

mod builtin;

use std::fmt;
use std::sync::{Arc, LazyLock};

use regex::bytes::{Regex, RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};

use crate::vocab::FieldError;
use crate::vocab::regex_error_summary;

/// The builtin detector names, in the order [`Scanner::names`] lists them.
pub const BUILTIN: &[&str] = &[
    "aws_access_key",
    "aws_secret_key",
    "private_key",
    "github_token",
    "gitlab_token",
    "slack_token",
    "openai_key",
    "anthropic_key",
    "stripe_key",
    "jwt",
    "credit_card",
    "email",
];

/// The longest detector name accepted.
const MAX_NAME_LEN: usize = 64;

/// A detector defined in config: a name for rules to refer to, and a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomDetectorConfig {
    /// How rules name it (`dlp: [acme_api_key]`): ASCII letters, digits, `_` and `-`,
    /// starting with a letter; not a builtin's name.
    pub name: String,
    /// A regular expression (Rust `regex` syntax) over the raw body bytes, unanchored.
    /// Each non-overlapping match counts once.
    pub regex: String,
}

/// The `dlp:` config section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DlpConfig {
    /// Detectors added to the builtins.
    #[serde(default)]
    pub custom: Vec<CustomDetectorConfig>,
}

/// A detector of one [`Scanner`]: its position in [`Scanner::names`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DetectorId(u16);

impl DetectorId {
    /// The position of the detector in [`Scanner::names`].
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// How a detector confirms what the set found.
#[derive(Clone, Copy)]
enum Confirm {
    Builtin(builtin::Validate),
    /// Every non-empty match counts.
    Custom,
}

#[derive(Clone)]
struct Detector {
    name: Arc<str>,
    /// The pattern that locates the detector's matches once the set found one.
    regex: Regex,
    /// Whether `regex` has a group 1 (the value, after its context).
    has_value_group: bool,
    confirm: Confirm,
}

impl Detector {
    /// Where the confirmed matches of `body` are: the value (group 1) for a detector
    /// that matches context before it, else the whole match.
    fn spans(&self, body: &[u8]) -> Vec<std::ops::Range<usize>> {
        match self.confirm {
            Confirm::Custom => self
                .regex
                .find_iter(body)
                .filter(|m| !m.is_empty())
                .map(|m| m.range())
                .collect(),
            Confirm::Builtin(validate) if self.has_value_group => self
                .regex
                .captures_iter(body)
                .filter_map(|c| c.get(1))
                .map(|value| value.range())
                .filter(|range| validate(body, range.clone()) > 0)
                .collect(),
            Confirm::Builtin(validate) => self
                .regex
                .find_iter(body)
                .map(|m| m.range())
                .filter(|range| validate(body, range.clone()) > 0)
                .collect(),
        }
    }

    /// How many confirmed matches `body` holds.
    fn count(&self, body: &[u8]) -> usize {
        match self.confirm {
            Confirm::Custom => self.regex.find_iter(body).filter(|m| !m.is_empty()).count(),
            Confirm::Builtin(validate) if self.has_value_group => self
                .regex
                .captures_iter(body)
                .filter_map(|c| c.get(1))
                .map(|value| validate(body, value.range()))
                .sum(),
            Confirm::Builtin(validate) => self
                .regex
                .find_iter(body)
                .map(|m| validate(body, m.range()))
                .sum(),
        }
    }
}

/// The compiled detectors. Cheap to clone (the compiled patterns are shared).
#[derive(Clone)]
pub struct Scanner {
    /// Pattern `i` is detector `i`'s.
    set: RegexSet,
    detectors: Box<[Detector]>,
}

// Names only: a custom pattern may spell out the very value it looks for.
impl fmt::Debug for Scanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scanner")
            .field("detectors", &self.names().collect::<Vec<_>>())
            .finish()
    }
}

/// The set's lazy DFA cache: the builtins share states heavily, but a large custom list
/// would otherwise thrash the default 2 MiB.
const DFA_SIZE_LIMIT: usize = 8 << 20;

static BUILTIN_SCANNER: LazyLock<Scanner> = LazyLock::new(|| {
    let detectors: Box<[Detector]> = builtin::DETECTORS
        .iter()
        .map(|b| {
            let regex = Regex::new(b.confirm)
                .unwrap_or_else(|e| panic!("builtin detector {}: {e}", b.name));
            Detector {
                name: Arc::from(b.name),
                has_value_group: regex.captures_len() > 1,
                regex,
                confirm: Confirm::Builtin(b.validate),
            }
        })
        .collect();
    let set = build_set(builtin::DETECTORS.iter().map(|b| b.pattern))
        .unwrap_or_else(|e| panic!("builtin detectors: {e}"));
    Scanner { set, detectors }
});

fn build_set<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Result<RegexSet, regex::Error> {
    RegexSetBuilder::new(patterns)
        .dfa_size_limit(DFA_SIZE_LIMIT)
        .build()
}

impl Scanner {
    /// The builtins and `config`'s custom detectors. Every problem is reported, at its
    /// path under the `dlp` section (`custom[2].regex`, `custom[0].name`).
    pub fn compile(config: &DlpConfig) -> Result<Scanner, Vec<FieldError>> {
        let builtins = Scanner::builtin();
        if config.custom.is_empty() {
            return Ok(builtins);
        }
        let mut errors = Vec::new();
        let mut detectors = builtins.detectors.into_vec();
        // Lowercased names in use, with where: a builtin, or the custom index.
        let mut taken: std::collections::HashMap<String, Option<usize>> =
            BUILTIN.iter().map(|n| (n.to_string(), None)).collect();
        if detectors.len() + config.custom.len() > usize::from(u16::MAX) {
            errors.push(FieldError::new(
                "custom",
                format!(
                    "at most {} custom detectors",
                    usize::from(u16::MAX) - BUILTIN.len()
                ),
            ));
            return Err(errors);
        }
        for (i, custom) in config.custom.iter().enumerate() {
            let at = |field: &str| format!("custom[{i}].{field}");
            match name_problem(&custom.name) {
                Some(problem) => errors.push(FieldError::new(at("name"), problem)),
                None => match taken.get(&custom.name.to_ascii_lowercase()) {
                    Some(None) => errors.push(FieldError::new(
                        at("name"),
                        format!(
                            "{:?} is a builtin detector; a custom detector needs another name",
                            custom.name
                        ),
                    )),
                    Some(Some(first)) => errors.push(FieldError::new(
                        at("name"),
                        format!(
                            "duplicate detector name {:?} (first used at custom[{first}])",
                            custom.name
                        ),
                    )),
                    None => {
                        taken.insert(custom.name.to_ascii_lowercase(), Some(i));
                    }
                },
            }
            if custom.regex.is_empty() {
                errors.push(FieldError::new(at("regex"), "must not be empty"));
                continue;
            }
            match Regex::new(&custom.regex) {
                Err(e) => errors.push(FieldError::new(
                    at("regex"),
                    format!(
                        "regex {:?} is not valid: {}",
                        custom.regex,
                        regex_error_summary(&e)
                    ),
                )),
                Ok(regex) if regex.is_match(b"") => errors.push(FieldError::new(
                    at("regex"),
                    format!(
                        "regex {:?} matches the empty string, so it would fire on every body",
                        custom.regex
                    ),
                )),
                Ok(regex) => detectors.push(Detector {
                    name: Arc::from(custom.name.as_str()),
                    has_value_group: false,
                    regex,
                    confirm: Confirm::Custom,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let patterns = builtin::DETECTORS
            .iter()
            .map(|b| b.pattern)
            .chain(config.custom.iter().map(|c| c.regex.as_str()));
        let set = build_set(patterns).map_err(|e| {
            vec![FieldError::new(
                "custom",
                format!(
                    "the detectors cannot be compiled together: {}",
                    regex_error_summary(&e)
                ),
            )]
        })?;
        Ok(Scanner {
            set,
            detectors: detectors.into_boxed_slice(),
        })
    }

    /// The builtin detectors only.
    pub fn builtin() -> Scanner {
        BUILTIN_SCANNER.clone()
    }

    /// The detector named `name` (exactly), `None` when there is none.
    pub fn detector_id(&self, name: &str) -> Option<DetectorId> {
        self.detectors
            .iter()
            .position(|d| &*d.name == name)
            .map(|i| DetectorId(i as u16))
    }

    /// Every detector's name: the builtins in [`BUILTIN`] order, then the custom ones in
    /// config order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.detectors.iter().map(|d| &*d.name)
    }

    /// The name of detector `id`, `None` for an id of another scanner beyond this one's.
    pub fn name(&self, id: DetectorId) -> Option<&str> {
        self.detectors.get(id.index()).map(|d| &*d.name)
    }

    /// Which detectors fire on `body`, and how many times each.
    pub fn scan(&self, body: &[u8]) -> Findings {
        let mut findings = Findings::default();
        for index in self.set.matches(body).iter() {
            let detector = &self.detectors[index];
            let count = detector.count(body);
            if count > 0 {
                findings.list.push(Finding {
                    id: DetectorId(index as u16),
                    detector: detector.name.clone(),
                    count,
                });
            }
        }
        findings
    }
}

impl Scanner {
    /// `body` with every confirmed match of a detector in `only` (every detector when
    /// empty) replaced by `[REDACTED:<detector>]`, and what was found; `None` when nothing
    /// was. The marker holds no quote or backslash, so a JSON string stays one.
    pub fn redact(&self, body: &[u8], only: &[DetectorId]) -> Option<(Vec<u8>, Findings)> {
        let mut spans: Vec<(std::ops::Range<usize>, usize)> = Vec::new();
        let mut findings = Findings::default();
        for index in self.set.matches(body).iter() {
            if !only.is_empty() && !only.iter().any(|id| id.index() == index) {
                continue;
            }
            let detector = &self.detectors[index];
            let found = detector.spans(body);
            if found.is_empty() {
                continue;
            }
            findings.list.push(Finding {
                id: DetectorId(index as u16),
                detector: detector.name.clone(),
                count: found.len(),
            });
            spans.extend(found.into_iter().map(|range| (range, index)));
        }
        if spans.is_empty() {
            return None;
        }
        // Overlapping matches (a JWT inside a longer custom match) merge into the first.
        spans.sort_by_key(|(range, _)| (range.start, std::cmp::Reverse(range.end)));
        let mut out = Vec::with_capacity(body.len());
        let mut at = 0;
        for (range, index) in spans {
            if range.start < at {
                continue;
            }
            out.extend_from_slice(&body[at..range.start]);
            out.extend_from_slice(b"[REDACTED:");
            out.extend_from_slice(self.detectors[index].name.as_bytes());
            out.push(b']');
            at = range.end;
        }
        out.extend_from_slice(&body[at..]);
        Some((out, findings))
    }
}

/// Why `name` cannot name a detector, if it cannot.
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if name.len() > MAX_NAME_LEN {
        return Some(format!(
            "detector name is {} bytes long; at most {MAX_NAME_LEN}",
            name.len()
        ));
    }
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    (!valid).then(|| {
        format!(
            "detector name {name:?} may hold only ASCII letters, digits, `_` and `-`, \
             and must start with a letter"
        )
    })
}

/// One detector that fired: its name and how many matches it confirmed — never the
/// matched text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    #[serde(skip)]
    id: DetectorId,
    detector: Arc<str>,
    count: usize,
}

impl Finding {
    pub fn id(&self) -> DetectorId {
        self.id
    }

    pub fn detector(&self) -> &str {
        &self.detector
    }

    pub fn count(&self) -> usize {
        self.count
    }
}

/// What a scan found, in detector order. Serializes as `[{"detector": …, "count": …}]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Findings {
    list: Vec<Finding>,
}

impl Findings {
    /// Whether detector `id` fired.
    pub fn contains(&self, id: DetectorId) -> bool {
        self.list.iter().any(|f| f.id == id)
    }

    /// How many matches detector `id` confirmed (0 when it did not fire).
    pub fn count(&self, id: DetectorId) -> usize {
        self.list.iter().find(|f| f.id == id).map_or(0, |f| f.count)
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Findings) {
        for finding in &other.list {
            match self.list.iter_mut().find(|f| f.id == finding.id) {
                Some(mine) => mine.count += finding.count,
                None => self.list.push(finding.clone()),
            }
        }
    }

    /// Whether no detector fired.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// How many detectors fired.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Each detector that fired: its name and its count.
    pub fn iter(&self) -> impl Iterator<Item = (&str, usize)> {
        self.list.iter().map(|f| (&*f.detector, f.count))
    }

    /// The findings themselves (with their ids).
    pub fn findings(&self) -> &[Finding] {
        &self.list
    }
}

#[cfg(test)]
mod tests;
