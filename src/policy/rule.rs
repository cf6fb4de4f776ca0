//! The request-rule vocabulary shared by policies and transform scopes: host patterns,
//! path globs, method sets, the conditions of policy rules ([`super::conditions`]), and
//! the compiled [`Rule`] that matches a request against them.
//!
//! Every user-written pattern is parsed at deserialization time (`TryFrom<String>`), so an
//! invalid glob or CIDR is reported with the field path it came from, and keeps its original
//! spelling for audit records and error messages.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::RequestFacts;
use super::body::BodyCondition;
use super::cel::CelExpr;
use super::conditions::{ConditionSources, Conditions, HeaderCondition, ToolPattern};
use crate::inspect::ActionType;
use crate::request::{Host, Method, canonical_host, canonical_ip, canonical_net, split_host_port};
pub use crate::vocab::Tag;

/// One request rule as written in the config: `host`, optional `paths`, `methods` and
/// `body`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// `api.example.com`, `*.example.com` (any depth of subdomain, not the bare domain),
    /// `*` (any host), a CIDR such as `10.0.0.0/8`, or an IP address. A `:port` suffix
    /// restricts the rule to that port; without one any port matches.
    pub host: HostPattern,
    /// Path globs; `*` matches any run of characters including `/`. Empty: any path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathPattern>,
    /// HTTP methods; empty or `[ALL]`: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<MethodName>,
    /// A condition on the request body, ANDed with the others: the body contains one of
    /// `contains` (ASCII case-insensitive) or matches one of `regex`. Policy rules only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyCondition>,
    /// Header matchers; every one must hold. Policy rules only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderCondition>,
    /// The request is one of these action types (`chat_completion`, `embedding`,
    /// `tool_call`, `mcp_request`, `http_request`). Policy rules only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub action_types: Vec<ActionType>,
    /// Like `body`, over the prompt content of a chat body (messages, system prompt, tool
    /// results) instead of the raw bytes. Policy rules only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<BodyCondition>,
    /// MCP `tools/call` tool name globs (`send_*`): the request calls one of them.
    /// Policy rules only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub tools: Vec<ToolPattern>,
    /// DLP detectors (`aws_secret_key`, a custom one, …): one of them finds something in
    /// the body. Policy rules only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dlp: Vec<String>,
    /// A CEL expression over `request`, `identity` and `agent` that must hold. Policy
    /// rules only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cel: Option<CelExpr>,
}

impl RuleConfig {
    /// A rule matching host, paths and methods only.
    pub fn scope(host: HostPattern, paths: Vec<PathPattern>, methods: Vec<MethodName>) -> Self {
        RuleConfig {
            host,
            paths,
            methods,
            body: None,
            headers: Vec::new(),
            action_types: Vec::new(),
            prompt: None,
            tools: Vec::new(),
            dlp: Vec::new(),
            cel: None,
        }
    }

    /// The names of the conditions beyond host, paths and methods this rule sets, for
    /// "policy rules only" errors.
    pub fn condition_fields(&self) -> Vec<&'static str> {
        let mut fields = Vec::new();
        if self.body.is_some() {
            fields.push("body");
        }
        if !self.headers.is_empty() {
            fields.push("headers");
        }
        if !self.action_types.is_empty() {
            fields.push("action_types");
        }
        if self.prompt.is_some() {
            fields.push("prompt");
        }
        if !self.tools.is_empty() {
            fields.push("tools");
        }
        if !self.dlp.is_empty() {
            fields.push("dlp");
        }
        if self.cel.is_some() {
            fields.push("cel");
        }
        fields
    }

    /// Whether CONNECT is the only method this rule takes.
    pub fn connect_only(&self) -> bool {
        MethodSet::from_names(&self.methods) == MethodSet::of(Method::Connect)
    }

    /// What this rule asks for that a request it could match never has, when there is
    /// such a thing: a CONNECT request (its only method) has no path, body or MCP call.
    pub fn never_matches(&self) -> Option<String> {
        if !self.connect_only() {
            return None;
        }
        let mut missing: Vec<&str> = Vec::new();
        if !self.paths.iter().all(PathPattern::is_any) {
            missing.push("paths");
        }
        missing.extend(
            self.condition_fields()
                .into_iter()
                .filter(|f| !matches!(*f, "headers" | "cel" | "action_types")),
        );
        (!missing.is_empty()).then(|| {
            format!(
                "this rule can never match: CONNECT is its only method, and a CONNECT request \
                 has nothing for its {} to match (it names a host and port only). Requests \
                 inside an intercepted tunnel are decided on their own method: name those \
                 methods (GET, POST …) instead of CONNECT",
                missing.join(", ")
            )
        })
    }
}

/// What part of the host a [`HostPattern`] compares, as written (validated, uncompiled).
#[derive(Debug, Clone)]
pub enum HostKind {
    /// `*`: every host.
    Any,
    /// A lower-case host name, compared exactly.
    Exact(Box<str>),
    /// `*.example.com`, stored as `example.com`: any subdomain at any depth.
    Suffix(Box<str>),
    /// Any other wildcard pattern such as `api-*.example.com` (`*` any run of characters,
    /// dots included; `?` any one), matched by [`wildcard_match`].
    Glob {
        pattern: Box<str>,
        /// The literal domain after the last wildcard (`example.com`), when there is one:
        /// every matching host ends with `.` and this, which lets the index bucket it.
        domain: Option<Box<str>>,
    },
    /// An IP network (a single address is a /32 or /128); matches IP-literal hosts only.
    Cidr(IpNet),
}

/// A parsed `host` field.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPattern {
    original: String,
    kind: HostKind,
    port: Option<u16>,
}

impl HostPattern {
    pub fn kind(&self) -> &HostKind {
        &self.kind
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    pub fn as_str(&self) -> &str {
        &self.original
    }
}

/// The compiled form of [`HostKind`].
#[derive(Debug, Clone)]
pub enum HostMatch {
    Any,
    /// Shared with the rule index, which files the rule under it.
    Exact(Arc<str>),
    Suffix(Arc<str>),
    Glob {
        pattern: Arc<str>,
        domain: Option<Arc<str>>,
    },
    Cidr(IpNet),
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (none, or
/// dots included) and `?` any one character: what a host glob means. Linear in practice:
/// on a mismatch after a `*`, that `*` takes one more character and matching resumes.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // The last `*` seen, and where in the text it was tried last.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    star = Some((sp, st + 1));
                    p = sp + 1;
                    t = st + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// A compiled host pattern.
#[derive(Debug, Clone)]
pub struct HostMatcher {
    pub kind: HostMatch,
    pub port: Option<u16>,
}

impl HostMatcher {
    /// Whether this pattern accepts the request's host and port.
    pub fn matches(&self, req: &RequestFacts<'_>) -> bool {
        if let Some(port) = self.port
            && port != req.port
        {
            return false;
        }
        match &self.kind {
            HostMatch::Any => true,
            HostMatch::Exact(host) => **host == *req.host,
            HostMatch::Suffix(suffix) => is_strict_subdomain(req.host, suffix),
            HostMatch::Glob { pattern, .. } => wildcard_match(pattern, req.host),
            HostMatch::Cidr(net) => req.ip.is_some_and(|ip| net.contains(&ip)),
        }
    }
}

impl HostMatcher {
    /// Whether this pattern accepts a host name on some port (the port of a TLS server
    /// name is not known before the request).
    pub fn accepts_name(&self, host: &str) -> bool {
        match &self.kind {
            HostMatch::Any => true,
            HostMatch::Exact(exact) => **exact == *host,
            HostMatch::Suffix(suffix) => is_strict_subdomain(host, suffix),
            HostMatch::Glob { pattern, .. } => wildcard_match(pattern, host),
            HostMatch::Cidr(_) => false,
        }
    }
}

/// `host` is a subdomain (at any depth) of `suffix`, and not `suffix` itself.
pub fn is_strict_subdomain(host: &str, suffix: &str) -> bool {
    host.len() > suffix.len()
        && host.ends_with(suffix)
        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
}

impl PartialEq for HostPattern {
    fn eq(&self, other: &Self) -> bool {
        self.original == other.original
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

impl From<HostPattern> for String {
    fn from(pattern: HostPattern) -> String {
        pattern.original
    }
}

impl TryFrom<String> for HostPattern {
    type Error = String;

    fn try_from(original: String) -> Result<Self, String> {
        let (kind, port) = parse_host_pattern(original.trim())?;
        Ok(HostPattern {
            original,
            kind,
            port,
        })
    }
}

fn parse_host_pattern(text: &str) -> Result<(HostKind, Option<u16>), String> {
    if text.is_empty() {
        return Err("host must not be empty (use \"*\" for any host)".into());
    }
    if let Some(scheme_end) = text.find("://") {
        return Err(format!(
            "host {text:?} looks like a URL: write only the host name, without {:?}",
            &text[..scheme_end + 3]
        ));
    }
    if text.contains('/') {
        // A CIDR: `10.0.0.0/8` or `fd00::/8`. Ports are not supported on CIDR rules.
        let net = IpNet::from_str(text).map_err(|_| {
            format!("host {text:?} is not a valid CIDR (expected e.g. 10.0.0.0/8 or fd00::/8)")
        })?;
        return Ok((HostKind::Cidr(canonical_net(net.trunc())), None));
    }
    let (name, port) =
        split_host_port(text).map_err(|why| format!("host {text:?} has an invalid port: {why}"))?;
    if let Ok(ip) = IpAddr::from_str(name) {
        return Ok((HostKind::Cidr(IpNet::from(canonical_ip(ip))), port));
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(format!("host {text:?} has no name"));
    }
    // The form requests are compared in: UTS-46 ASCII, label by label so that wildcards
    // survive; a name that is a number in disguise (`0x7f.1`) is its address.
    let name = if name.contains(['*', '?']) {
        name.split('.')
            .map(
                |label| match label.contains(['*', '?']) || label.is_empty() {
                    true => Ok(label.to_ascii_lowercase()),
                    false => match canonical_host(label) {
                        Ok(Host::Name(ascii)) => Ok(ascii),
                        _ => Err(format!("host {text:?} has an invalid label {label:?}")),
                    },
                },
            )
            .collect::<Result<Vec<_>, _>>()?
            .join(".")
    } else {
        match canonical_host(name) {
            Ok(Host::Name(ascii)) => ascii,
            Ok(Host::Ip(ip)) => return Ok((HostKind::Cidr(IpNet::from(ip)), port)),
            Err(why) => {
                return Err(format!(
                    "host {text:?} is not a host name: {why}; host names use letters, \
                     digits, '-', '.', '_' and the wildcard '*'"
                ));
            }
        }
    };
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '*' | '?')))
    {
        return Err(format!(
            "host {text:?} contains {bad:?}; host names use letters, digits, '-', '.', '_' \
             and the wildcard '*'"
        ));
    }
    if name.contains("..") {
        return Err(format!("host {text:?} has an empty label"));
    }
    if name == "*" {
        return Ok((HostKind::Any, port));
    }
    if let Some(suffix) = name.strip_prefix("*.")
        && !suffix.contains(['*', '?'])
    {
        return Ok((HostKind::Suffix(suffix.into()), port));
    }
    if name.contains(['*', '?']) {
        let domain = glob_domain(&name).map(Box::from);
        return Ok((
            HostKind::Glob {
                pattern: name.into(),
                domain,
            },
            port,
        ));
    }
    Ok((HostKind::Exact(name.into()), port))
}

/// The literal domain every host matching `pattern` ends in, after a dot: for
/// `api-*.eu.example.com` it is `eu.example.com`.
fn glob_domain(pattern: &str) -> Option<&str> {
    let tail_start = pattern.rfind(['*', '?', '[', ']', '{', '}'])? + 1;
    let tail = &pattern[tail_start..];
    let domain = &tail[tail.find('.')? + 1..];
    (!domain.is_empty()).then_some(domain)
}

/// A path glob such as `/repos/*`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct PathPattern {
    original: String,
}

impl PathPattern {
    pub fn as_str(&self) -> &str {
        &self.original
    }

    /// `*`, `/*`, `**` and `/**` accept every path.
    fn is_any(&self) -> bool {
        matches!(self.original.as_str(), "*" | "/*" | "**" | "/**")
    }
}

impl PartialEq for PathPattern {
    fn eq(&self, other: &Self) -> bool {
        self.original == other.original
    }
}

impl From<PathPattern> for String {
    fn from(pattern: PathPattern) -> String {
        pattern.original
    }
}

impl TryFrom<String> for PathPattern {
    type Error = String;

    fn try_from(original: String) -> Result<Self, String> {
        if !(original.starts_with('/') || original.starts_with('*')) {
            return Err(format!(
                "path {original:?} must start with '/' (or '*'); it never matches otherwise"
            ));
        }
        if original.contains('?') && original.contains('=') {
            return Err(format!(
                "path {original:?} looks like it holds a query string: paths are matched \
                 without their query (in a glob '?' matches any one character)"
            ));
        }
        // Checked now, compiled with its rule: a config keeps only the text, since a fleet
        // holds hundreds of thousands of these. A literal, or one with a trailing `*`,
        // is a valid glob without building one (most paths; a store at 100,000 policies
        // reads each definition again at every whole read).
        if PlainPath::of(&original).is_none() {
            path_glob(&original)?;
        }
        Ok(PathPattern { original })
    }
}

/// A method name in a rule: one of the standard methods, or `ALL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct MethodName(MethodSet);

impl From<MethodName> for String {
    fn from(method: MethodName) -> String {
        if method.0 == MethodSet::ALL {
            return "ALL".to_owned();
        }
        Method::STANDARD
            .into_iter()
            .find(|m| MethodSet::of(*m) == method.0)
            .map_or("ALL", Method::as_str)
            .to_owned()
    }
}

impl TryFrom<String> for MethodName {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let upper = text.to_ascii_uppercase();
        if upper == "ALL" || upper == "*" {
            return Ok(MethodName(MethodSet::ALL));
        }
        match Method::from_bytes(upper.as_bytes()) {
            Method::Other => Err(format!(
                "unknown method {text:?}; expected one of {} or ALL",
                Method::STANDARD
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            m => Ok(MethodName(MethodSet::of(m))),
        }
    }
}

/// A set of methods as a bitset; a request method outside the standard set only matches
/// [`MethodSet::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSet(u16);

impl MethodSet {
    pub const ALL: MethodSet = MethodSet(u16::MAX);

    pub fn of(method: Method) -> MethodSet {
        MethodSet(1 << method as u16)
    }

    pub fn from_names(names: &[MethodName]) -> MethodSet {
        if names.is_empty() {
            return MethodSet::ALL;
        }
        MethodSet(names.iter().fold(0, |bits, m| bits | m.0.0))
    }

    pub fn contains(self, method: Method) -> bool {
        self.0 & (1 << method as u16) != 0
    }
}

/// The paths of a rule, compiled once.
#[derive(Debug, Clone)]
pub enum PathSet {
    Any,
    /// Paths written without glob syntax, or with one `*` at the end only (most rules:
    /// `/v1/*`): matched by comparing text, as the glob would, at a fraction of a compiled
    /// glob set's size.
    Plain(Box<[PlainPath]>),
    Globs(GlobSet),
}

/// A path pattern that is a literal, or a literal and a trailing `*` (any rest, `/`
/// included, since path globs do not treat `/` specially).
#[derive(Debug, Clone)]
pub enum PlainPath {
    Exact(Box<str>),
    Prefix(Box<str>),
}

impl PlainPath {
    fn of(pattern: &str) -> Option<PlainPath> {
        let special = |c: char| matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\' | ',');
        match pattern.strip_suffix('*') {
            Some(prefix) if !prefix.contains(special) => Some(PlainPath::Prefix(prefix.into())),
            _ if !pattern.contains(special) => Some(PlainPath::Exact(pattern.into())),
            _ => None,
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PlainPath::Exact(exact) => path == &**exact,
            PlainPath::Prefix(prefix) => path.starts_with(&**prefix),
        }
    }
}

/// A path pattern as a glob: `*` matches any run of characters, `/` included.
fn path_glob(pattern: &str) -> Result<globset::Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("path {pattern:?} is not a valid glob: {}", e.kind()))
}

impl PathSet {
    pub fn compile(paths: &[PathPattern]) -> PathSet {
        if paths.is_empty() || paths.iter().any(PathPattern::is_any) {
            return PathSet::Any;
        }
        if let Some(plain) = paths
            .iter()
            .map(|p| PlainPath::of(&p.original))
            .collect::<Option<Vec<_>>>()
        {
            return PathSet::Plain(plain.into_boxed_slice());
        }
        let mut builder = GlobSetBuilder::new();
        for path in paths {
            // Validated when the config was read.
            if let Ok(glob) = path_glob(&path.original) {
                builder.add(glob);
            }
        }
        // A set of valid globs only fails to build on resource limits, and a set that
        // matches nothing fails closed.
        PathSet::Globs(builder.build().unwrap_or_else(|_| GlobSet::empty()))
    }

    pub fn is_any(&self) -> bool {
        matches!(self, PathSet::Any)
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathSet::Any => true,
            PathSet::Plain(plain) => plain.iter().any(|p| p.matches(path)),
            PathSet::Globs(set) => set.is_match(path),
        }
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub host: HostMatcher,
    pub paths: Arc<PathSet>,
    pub methods: MethodSet,
    /// Conditions beyond host, paths and methods, when the rule has any.
    pub conditions: Option<Arc<Conditions>>,
}

impl Rule {
    /// Compiles one rule on its own; [`RuleCompiler`] shares matchers across many.
    pub fn compile(config: &RuleConfig) -> Rule {
        RuleCompiler::default().compile(config)
    }

    /// Whether a request that Portcullis can see fully (method, path, body) matches. A
    /// body that was not buffered counts as empty: [`super::PolicySet::needs_body`] makes
    /// sure that only happens where the body cannot change the decision.
    pub fn matches(&self, req: &RequestFacts<'_>) -> bool {
        self.matches_headers(req) && self.body_holds(req)
    }

    /// Whether the request's host, method, path and header conditions match, whatever
    /// its body.
    pub fn matches_headers(&self, req: &RequestFacts<'_>) -> bool {
        self.host.matches(req)
            && self.methods.contains(req.method)
            && self.paths.matches(req.path)
            && self
                .conditions
                .as_ref()
                .is_none_or(|c| c.hold_on_headers(req))
    }

    /// Whether the conditions that read the body hold (always, for a rule without any).
    fn body_holds(&self, req: &RequestFacts<'_>) -> bool {
        self.conditions.as_ref().is_none_or(|c| c.hold_on_body(req))
    }

    /// Whether some condition of this rule reads the body.
    pub fn needs_body(&self) -> bool {
        self.conditions.as_ref().is_some_and(|c| c.needs_body())
    }

    /// Whether the rule names MCP tools.
    pub fn has_tools(&self) -> bool {
        self.conditions.as_ref().is_some_and(|c| c.has_tools())
    }

    /// Whether this rule grants an opaque CONNECT tunnel to the request's host: only a rule
    /// that accepts every path and the CONNECT method, and has no other condition, does,
    /// since nothing inside the tunnel can be checked against narrower paths, methods,
    /// headers or content.
    pub fn grants_tunnel(&self, req: &RequestFacts<'_>) -> bool {
        self.host.matches(req)
            && self.methods.contains(Method::Connect)
            && self.paths.is_any()
            && self.conditions.is_none()
    }

    /// Whether this rule, as a restriction, touches a CONNECT tunnel to the request's host:
    /// any rule naming the host does, since the tunnel could carry the path, method or body
    /// it names.
    pub fn touches_tunnel(&self, req: &RequestFacts<'_>) -> bool {
        self.host.matches(req)
    }

    /// Whether this rule covers every request a tunnel to the request's host could carry:
    /// any path, any method, any header or content.
    pub fn covers_tunnel(&self, req: &RequestFacts<'_>) -> bool {
        self.host.matches(req)
            && self.methods == MethodSet::ALL
            && self.paths.is_any()
            && self.conditions.is_none()
    }
}

/// Compiles rules, sharing the compiled path sets and host globs of rules that repeat the
/// same patterns: fleets repeat `/v1/*` thousands of times, and each compiled glob set can
/// hold a regex.
#[derive(Default)]
pub struct RuleCompiler {
    paths: HashMap<Vec<String>, Arc<PathSet>>,
    globs: HashMap<Box<str>, Arc<str>>,
}

impl RuleCompiler {
    /// Compiles a rule whose CEL errors do not match: rules that grant, and scopes.
    pub fn compile(&mut self, config: &RuleConfig) -> Rule {
        self.compile_for(config, false)
    }

    /// Compiles a rule; with `refusing` (the rules of deny and gated policies), doubts count
    /// towards the rule holding, so the refusal applies (a CEL expression that fails to
    /// evaluate, a repeated header, a request of two action types; see
    /// [`super::conditions::Conditions`]).
    pub fn compile_for(&mut self, config: &RuleConfig, refusing: bool) -> Rule {
        let kind = match config.host.kind() {
            HostKind::Any => HostMatch::Any,
            HostKind::Exact(host) => HostMatch::Exact(Arc::from(&**host)),
            HostKind::Suffix(suffix) => HostMatch::Suffix(Arc::from(&**suffix)),
            HostKind::Cidr(net) => HostMatch::Cidr(*net),
            HostKind::Glob { pattern, domain } => HostMatch::Glob {
                pattern: self
                    .globs
                    .entry(pattern.clone())
                    .or_insert_with(|| Arc::from(&**pattern))
                    .clone(),
                domain: domain.as_deref().map(Arc::from),
            },
        };
        let key: Vec<String> = config.paths.iter().map(|p| p.original.clone()).collect();
        let paths = self
            .paths
            .entry(key)
            .or_insert_with(|| Arc::new(PathSet::compile(&config.paths)))
            .clone();
        Rule {
            host: HostMatcher {
                kind,
                port: config.host.port(),
            },
            paths,
            methods: MethodSet::from_names(&config.methods),
            conditions: Conditions::compile(ConditionSources {
                headers: &config.headers,
                action_types: &config.action_types,
                body: config.body.as_ref(),
                prompt: config.prompt.as_ref(),
                tools: &config.tools,
                dlp: &config.dlp,
                cel: config.cel.as_ref(),
                refusing,
            })
            .map(Arc::new),
        }
    }
}

/// Any rule in the list matches (rules OR-combine). Used by transform scopes.
pub fn any_rule_matches(rules: &[Rule], req: &RequestFacts<'_>) -> bool {
    rules.iter().any(|rule| {
        if req.is_connect() {
            rule.touches_tunnel(req)
        } else {
            rule.matches(req)
        }
    })
}

/// The text-valued pattern types appear in JSON schemas as strings.
macro_rules! string_schema {
    ($($ty:ty => $description:literal),* $(,)?) => {$(
        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some($description))
                    .into()
            }
        }
        impl utoipa::ToSchema for $ty {}
    )*};
}

string_schema! {
    Tag => "A workload tag such as `env:prod`: no whitespace, no commas.",
    HostPattern => "`api.example.com`, `*.example.com` (any subdomain depth), `*`, a CIDR or an IP; optional `:port`.",
    PathPattern => "A path glob starting with `/`; `*` spans `/`.",
    MethodName => "An HTTP method (`GET`, …) or `ALL`.",
}

#[cfg(test)]
mod tests;
