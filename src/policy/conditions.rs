//! The conditions of a policy rule beyond host, path and method: header matchers, action
//! types, body and prompt content, MCP tool names, DLP detectors and a CEL expression.
//! They AND together and with the rule's host, paths and methods.
//!
//! Each condition knows whether it needs the request body: header matchers, `chat_completion`
//! / `embedding` action types and CEL expressions that read neither `request.body` nor
//! `request.args` are decided on the headers alone, so a rule made of them never makes
//! Envoy buffer a body.

use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use super::body::{BodyCondition, BodyMatcher, BodyRegex};
use super::cel::CelExpr;
use crate::inspect::{ActionType, ActionTypeSet, classify_path};
use crate::policy::RequestFacts;

/// One header matcher as written: `{name, exact | prefix | suffix | contains | regex |
/// present, invert}`, as Envoy's route header matchers. Values compare case-sensitively;
/// a header sent several times matches when any of its values does.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "HeaderFields", into = "HeaderFields")]
pub struct HeaderCondition {
    fields: HeaderFields,
    matcher: Arc<HeaderMatcher>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderFields {
    /// The header name, case-insensitive.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// A regular expression that must match the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub regex: Option<BodyRegex>,
    /// `true`: the header is sent (any value); `false`: it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// The condition holds when the matcher does not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

impl utoipa::PartialSchema for HeaderCondition {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <HeaderFields as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for HeaderCondition {
    fn name() -> std::borrow::Cow<'static, str> {
        <HeaderFields as utoipa::ToSchema>::name()
    }
}

impl PartialEq for HeaderCondition {
    fn eq(&self, other: &Self) -> bool {
        self.fields == other.fields
    }
}

impl From<HeaderCondition> for HeaderFields {
    fn from(condition: HeaderCondition) -> HeaderFields {
        condition.fields
    }
}

#[derive(Debug)]
enum ValueMatch {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    Suffix(Vec<u8>),
    Contains(Vec<u8>),
    Regex(regex::bytes::Regex),
    Present(bool),
}

/// A compiled header matcher.
#[derive(Debug)]
pub struct HeaderMatcher {
    name: String,
    value: ValueMatch,
    invert: bool,
}

impl TryFrom<HeaderFields> for HeaderCondition {
    type Error = String;

    fn try_from(fields: HeaderFields) -> Result<Self, String> {
        let name = fields.name.to_ascii_lowercase();
        if name.is_empty() {
            return Err("a header condition needs a `name`".into());
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(*c)))
        {
            return Err(format!("header name {:?} contains {bad:?}", fields.name));
        }
        let mut values = Vec::new();
        let bytes = |s: &Option<String>| s.as_ref().map(|s| s.as_bytes().to_vec());
        if let Some(v) = bytes(&fields.exact) {
            values.push(ValueMatch::Exact(v));
        }
        if let Some(v) = bytes(&fields.prefix) {
            values.push(ValueMatch::Prefix(v));
        }
        if let Some(v) = bytes(&fields.suffix) {
            values.push(ValueMatch::Suffix(v));
        }
        if let Some(v) = bytes(&fields.contains) {
            values.push(ValueMatch::Contains(v));
        }
        if let Some(regex) = &fields.regex {
            // Anchored: a header regex describes the whole value, as in Envoy.
            let anchored = regex::bytes::Regex::new(&format!("^(?:{})$", regex.as_str()))
                .map_err(|e| format!("regex {:?} is not valid: {e}", regex.as_str()))?;
            values.push(ValueMatch::Regex(anchored));
        }
        if let Some(present) = fields.present {
            values.push(ValueMatch::Present(present));
        }
        if values.len() != 1 {
            return Err(format!(
                "header condition on {name:?} needs exactly one of `exact`, `prefix`, `suffix`, \
                 `contains`, `regex`, `present` (it has {})",
                values.len()
            ));
        }
        let matcher = HeaderMatcher {
            name,
            value: values.remove(0),
            invert: fields.invert,
        };
        Ok(HeaderCondition {
            fields,
            matcher: Arc::new(matcher),
        })
    }
}

impl HeaderMatcher {
    /// Whether the matcher holds on `headers`. A header sent more than once is judged value
    /// by value, in the direction that fails closed: in a rule that refuses
    /// (`any_value_holds`: deny and gated policies) one value that satisfies the condition is
    /// enough; in any other rule every value must, so a workload cannot add a second,
    /// conflicting value (which the upstream may read instead) to pass an allow rule, nor
    /// add a harmless one to slip past a deny.
    ///
    /// A value may also be a comma-separated list (`X-Role: user, admin`), which HTTP treats
    /// as the same header sent once per element. In a refusing rule each element counts as a
    /// value too, so folding `admin` into a list does not slip past `exact: admin`. An allow
    /// rule judges the whole value: requiring each element to match there would refuse
    /// legitimate values that hold commas (`User-Agent: Mozilla/5.0 (X11, Linux)`), and a
    /// folded list already fails `exact`; to keep lists out of a `prefix` or `contains` allow
    /// rule, use a `regex` that excludes commas. An inverted matcher in an allow rule also
    /// needs every element to hold, so `X-Env: dev, prod` does not pass "not `prod`".
    pub fn matches(&self, headers: &[(String, Vec<u8>)], any_value_holds: bool) -> bool {
        let mut values = headers
            .iter()
            .filter(|(n, _)| *n == self.name)
            .map(|(_, v)| v.as_slice())
            .peekable();
        let test: &dyn Fn(&[u8]) -> bool = match &self.value {
            ValueMatch::Present(present) => {
                return (values.peek().is_some() == *present) != self.invert;
            }
            ValueMatch::Exact(want) => &|v| v == want.as_slice(),
            ValueMatch::Prefix(want) => &|v| v.starts_with(want),
            ValueMatch::Suffix(want) => &|v| v.ends_with(want),
            ValueMatch::Contains(want) => {
                &|v| want.is_empty() || v.windows(want.len()).any(|w| w == want.as_slice())
            }
            ValueMatch::Regex(regex) => &|v| regex.is_match(v),
        };
        if values.peek().is_none() {
            // An absent header matches no value: only an inverted matcher holds.
            return self.invert;
        }
        if any_value_holds {
            values
                .any(|v| test(v) != self.invert || list_elements(v).any(|e| test(e) != self.invert))
        } else {
            values.all(|v| {
                test(v) != self.invert && (!self.invert || list_elements(v).all(|e| !test(e)))
            })
        }
    }
}

/// The elements of a comma-separated header value, without the optional whitespace around
/// them (RFC 9110 §5.6.1); nothing when the value holds no comma.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let folded = value.contains(&b',');
    value
        .split(|b| *b == b',')
        .filter(move |_| folded)
        .map(|element| element.trim_ascii())
}

/// An MCP tool name pattern such as `send_*`; `*` matches any run of characters.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct ToolPattern {
    original: String,
    glob: globset::Glob,
}

impl PartialEq for ToolPattern {
    fn eq(&self, other: &Self) -> bool {
        self.original == other.original
    }
}

impl From<ToolPattern> for String {
    fn from(pattern: ToolPattern) -> String {
        pattern.original
    }
}

impl TryFrom<String> for ToolPattern {
    type Error = String;

    fn try_from(original: String) -> Result<Self, String> {
        if original.trim().is_empty() {
            return Err("a tool pattern must not be empty (use \"*\" for every tool)".into());
        }
        let glob = GlobBuilder::new(&original)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|e| {
                format!(
                    "tool pattern {original:?} is not a valid glob: {}",
                    e.kind()
                )
            })?;
        Ok(ToolPattern { original, glob })
    }
}

/// The compiled conditions of one rule.
#[derive(Debug)]
pub struct Conditions {
    headers: Box<[Arc<HeaderMatcher>]>,
    action_types: ActionTypeSet,
    body: Option<Arc<BodyMatcher>>,
    prompt: Option<Arc<BodyMatcher>>,
    tools: Option<GlobSet>,
    dlp: Box<[Arc<str>]>,
    cel: Option<CelExpr>,
    /// The rule refuses (a deny or gated policy's): every doubt is read towards the
    /// refusal. A CEL expression that fails to evaluate holds, one value of a repeated
    /// header (or one element of a folded list) is enough, and so is one of the action
    /// types a request may be taken for. Elsewhere the doubt goes against the rule.
    refusing: bool,
    needs_body: bool,
}

/// What a rule's conditions are compiled from.
pub struct ConditionSources<'a> {
    pub headers: &'a [HeaderCondition],
    pub action_types: &'a [ActionType],
    pub body: Option<&'a BodyCondition>,
    pub prompt: Option<&'a BodyCondition>,
    pub tools: &'a [ToolPattern],
    pub dlp: &'a [String],
    pub cel: Option<&'a CelExpr>,
    /// The rule refuses: doubts count towards it holding (see [`Conditions`]).
    pub refusing: bool,
}

impl Conditions {
    /// The DLP detectors the rule names, in the order written.
    pub fn detectors(&self) -> impl Iterator<Item = &str> {
        self.dlp.iter().map(|d| &**d)
    }

    /// `None` for a rule without conditions.
    pub fn compile(sources: ConditionSources<'_>) -> Option<Conditions> {
        let action_types = ActionTypeSet::of(sources.action_types);
        let tools = (!sources.tools.is_empty()).then(|| {
            let mut set = GlobSetBuilder::new();
            for tool in sources.tools {
                set.add(tool.glob.clone());
            }
            // Each glob compiled on its own when read; an empty set fails closed.
            set.build().unwrap_or_else(|_| GlobSet::empty())
        });
        let needs_body = sources.body.is_some()
            || sources.prompt.is_some()
            || tools.is_some()
            || !sources.dlp.is_empty()
            || action_types.needs_body()
            || sources.cel.is_some_and(CelExpr::reads_body);
        let conditions = Conditions {
            headers: sources.headers.iter().map(|h| h.matcher.clone()).collect(),
            action_types,
            body: sources.body.map(|b| b.matcher().clone()),
            prompt: sources.prompt.map(|p| p.matcher().clone()),
            tools,
            dlp: sources.dlp.iter().map(|d| Arc::from(d.as_str())).collect(),
            cel: sources.cel.cloned(),
            refusing: sources.refusing,
            needs_body,
        };
        let empty = conditions.headers.is_empty()
            && conditions.action_types.is_empty()
            && conditions.body.is_none()
            && conditions.prompt.is_none()
            && conditions.tools.is_none()
            && conditions.dlp.is_empty()
            && conditions.cel.is_none();
        (!empty).then_some(conditions)
    }

    /// Whether some condition reads the body (it then counts as empty when unbuffered).
    pub fn needs_body(&self) -> bool {
        self.needs_body
    }

    /// Whether the rule names MCP tools.
    pub fn has_tools(&self) -> bool {
        self.tools.is_some()
    }

    /// Why the CEL expression could not be evaluated for this request, if it could not.
    pub fn cel_error(&self, req: &RequestFacts<'_>) -> Option<String> {
        let cel = self.cel.as_ref()?;
        if cel.reads_body() && req.unknown_args.is_some() {
            return None;
        }
        cel.test(req).err()
    }

    fn cel_holds(&self, cel: &CelExpr, req: &RequestFacts<'_>) -> bool {
        cel.test(req).unwrap_or(self.refusing)
    }

    /// The conditions decidable on the headers: header matchers, header-classifiable
    /// action types, and a CEL expression that reads no body.
    pub fn hold_on_headers(&self, req: &RequestFacts<'_>) -> bool {
        if !self
            .headers
            .iter()
            .all(|h| h.matches(req.headers, self.refusing))
        {
            return false;
        }
        if !self.action_types.is_empty()
            && !self.action_types.needs_body()
            && !classify_path(req.method, req.path).is_some_and(|t| self.action_types.contains(t))
        {
            return false;
        }
        match &self.cel {
            Some(cel) if !cel.reads_body() => self.cel_holds(cel, req),
            _ => true,
        }
    }

    /// A refusing rule holds on any action type the request may be taken for (a
    /// `tools/call` posted to a chat-completions path is a `tool_call` too); any other rule
    /// on the one it is recorded as.
    fn holds_on_action_type(&self, req: &RequestFacts<'_>) -> bool {
        if self.refusing {
            self.action_types.intersects(req.possible_action_types())
        } else {
            self.action_types.contains(req.action_type())
        }
    }

    /// The conditions that read the body; an unbuffered body counts as empty.
    pub fn hold_on_body(&self, req: &RequestFacts<'_>) -> bool {
        if !self.needs_body {
            return true;
        }
        let empty = crate::inspect::Body::empty();
        let body = req.body.unwrap_or(&empty);
        if self.action_types.needs_body() && !self.holds_on_action_type(req) {
            return false;
        }
        // Each matcher runs once per body, however many messages of a batch are decided
        // with it: the body is not scanned again per message. A prompt matcher's key is
        // offset by one from its address, which no other matcher can have.
        if let Some(matcher) = &self.body
            && !body.remember(Arc::as_ptr(matcher) as usize, || {
                matcher.matches(body.bytes())
            })
        {
            return false;
        }
        if let Some(matcher) = &self.prompt
            && !body.remember(Arc::as_ptr(matcher) as usize + 1, || {
                matcher.matches(body.prompt().as_bytes())
            })
        {
            return false;
        }
        if let Some(tools) = &self.tools
            && !req
                .tool_call()
                .is_some_and(|(name, _)| tools.is_match(name))
        {
            return false;
        }
        if !self.dlp.is_empty() {
            let findings = body.findings();
            if !findings
                .iter()
                .any(|(name, _)| self.dlp.iter().any(|d| **d == *name))
            {
                return false;
            }
        }
        match &self.cel {
            // A hypothetical call with unknown arguments: the caller says what to assume.
            Some(cel) if cel.reads_body() => {
                req.unknown_args.unwrap_or_else(|| self.cel_holds(cel, req))
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(yaml: &str) -> Result<HeaderCondition, String> {
        serde_norway::from_str::<HeaderCondition>(yaml).map_err(|e| e.to_string())
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn header_matchers_follow_envoys() {
        let sent = headers(&[("x-user", "alice@example.com"), ("x-env", "ci")]);
        let cases = [
            ("{name: X-User, exact: alice@example.com}", true),
            ("{name: x-user, exact: Alice@example.com}", false),
            ("{name: x-user, prefix: alice}", true),
            ("{name: x-user, suffix: '@example.com'}", true),
            ("{name: x-user, contains: '@'}", true),
            ("{name: x-user, regex: '[a-z]+@example\\.com'}", true),
            ("{name: x-user, regex: 'alice'}", false),
            ("{name: x-env, exact: ci}", true),
            ("{name: x-session, present: false}", true),
            ("{name: x-session, present: true}", false),
            ("{name: x-env, exact: ci, invert: true}", false),
            ("{name: x-env, exact: prod, invert: true}", true),
        ];
        for (yaml, want) in cases {
            let condition = header(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
            assert_eq!(condition.matcher.matches(&sent, true), want, "{yaml}");
            assert_eq!(condition.matcher.matches(&sent, false), want, "{yaml}");
        }
    }

    /// A second, conflicting value never helps a workload: an allow rule needs every value
    /// to satisfy it, a deny rule any one (inverted matchers likewise, value by value).
    #[test]
    fn repeated_headers_are_judged_value_by_value_towards_refusal() {
        let sent = |values: &[&str]| -> Vec<(String, Vec<u8>)> {
            values
                .iter()
                .map(|v| ("x-tenant".to_owned(), v.as_bytes().to_vec()))
                .collect()
        };
        let exact = header("{name: x-tenant, exact: acme}").unwrap();
        let inverted = header("{name: x-tenant, exact: acme, invert: true}").unwrap();
        let present = header("{name: x-tenant, present: true}").unwrap();
        let (allowing, refusing) = (false, true);
        for (values, exact_allow, exact_deny, inverted_allow, inverted_deny) in [
            (&["acme"][..], true, true, false, false),
            (&["evil"][..], false, false, true, true),
            (&["acme", "evil"][..], false, true, false, true),
            (&["evil", "acme"][..], false, true, false, true),
            (&["acme", "acme"][..], true, true, false, false),
            (&[][..], false, false, true, true),
            // A folded list: its elements count in a refusing rule; an allowing one needs
            // the whole value (which `exact` then fails) and, inverted, every element.
            (&["evil, acme"][..], false, true, false, true),
            (&["acme,evil"][..], false, true, false, true),
            (&["evil,\tacme "][..], false, true, false, true),
            (&["acme, acme"][..], false, true, false, true),
            (&["evil, other"][..], false, false, true, true),
        ] {
            let headers = sent(values);
            assert_eq!(
                exact.matcher.matches(&headers, allowing),
                exact_allow,
                "{values:?}"
            );
            assert_eq!(
                exact.matcher.matches(&headers, refusing),
                exact_deny,
                "{values:?}"
            );
            assert_eq!(
                inverted.matcher.matches(&headers, allowing),
                inverted_allow,
                "{values:?}"
            );
            assert_eq!(
                inverted.matcher.matches(&headers, refusing),
                inverted_deny,
                "{values:?}"
            );
            for mode in [allowing, refusing] {
                assert_eq!(present.matcher.matches(&headers, mode), !values.is_empty());
            }
        }
    }

    #[test]
    fn header_matchers_need_exactly_one_test() {
        let error = header("{name: x-a, exact: a, prefix: b}").unwrap_err();
        assert!(error.contains("exactly one of"), "{error}");
        let error = header("{name: x-a}").unwrap_err();
        assert!(error.contains("exactly one of"), "{error}");
        let error = header("{name: 'x a', present: true}").unwrap_err();
        assert!(error.contains("contains ' '"), "{error}");
        let error = header("{name: x-a, regex: '('}").unwrap_err();
        assert!(error.contains("is not valid"), "{error}");
        let error = header("{name: x-a, exact: a, typo: 1}").unwrap_err();
        assert!(error.contains("unknown field `typo`"), "{error}");
    }

    #[test]
    fn only_conditions_that_read_the_body_need_it() {
        let compile = |yaml: &str| {
            let rule: crate::policy::rule::RuleConfig = serde_norway::from_str(yaml).unwrap();
            crate::policy::rule::Rule::compile(&rule)
        };
        assert!(!compile("{host: '*', headers: [{name: x-a, present: true}]}").needs_body());
        assert!(!compile("{host: '*', action_types: [chat_completion, embedding]}").needs_body());
        assert!(compile("{host: '*', action_types: [tool_call]}").needs_body());
        assert!(!compile("{host: '*', cel: 'agent.slug == \"x\"'}").needs_body());
        assert!(compile("{host: '*', cel: 'request.args.x == 1'}").needs_body());
        assert!(compile("{host: '*', tools: ['send_*']}").needs_body());
        assert!(compile("{host: '*', prompt: {contains: [x]}}").needs_body());
        assert!(compile("{host: '*', dlp: [aws_access_key]}").needs_body());
        assert!(compile("{host: '*'}").conditions.is_none());
    }

    /// A `tools/call` posted to a chat-completions path is recorded as a chat completion,
    /// which an allow rule on `tool_call` does not take; a deny on `tool_call` does.
    #[test]
    fn a_refusing_rule_holds_on_any_action_type_a_request_may_be_taken_for() {
        let conditions = |refusing: bool, types: &[ActionType]| {
            Conditions::compile(ConditionSources {
                headers: &[],
                action_types: types,
                body: None,
                prompt: None,
                tools: &[],
                dlp: &[],
                cel: None,
                refusing,
            })
            .unwrap()
        };
        let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"s"},"model":"m","messages":[]}"#;
        let chat = br#"{"model":"m","messages":[]}"#;
        for (path, body, recorded, possible) in [
            (
                "/v1/chat/completions",
                &call[..],
                ActionType::ChatCompletion,
                &[ActionType::ChatCompletion, ActionType::ToolCall][..],
            ),
            (
                "/v1/chat/completions",
                &chat[..],
                ActionType::ChatCompletion,
                &[ActionType::ChatCompletion][..],
            ),
            (
                "/mcp",
                &call[..],
                ActionType::ToolCall,
                &[ActionType::ToolCall][..],
            ),
            (
                "/mcp",
                &chat[..],
                ActionType::HttpRequest,
                &[ActionType::HttpRequest][..],
            ),
        ] {
            let body = crate::inspect::Body::new(body, None);
            let req = RequestFacts {
                method: crate::request::Method::Post,
                method_name: "POST",
                scheme: "https",
                host: "h.example",
                port: 443,
                ip: None,
                path,
                headers: &[],
                intercepted: false,
                body: Some(&body),
                message: None,
                identity: None,
                unknown_args: None,
            };
            assert_eq!(req.action_type(), recorded, "{path}");
            assert_eq!(
                req.possible_action_types(),
                ActionTypeSet::of(possible),
                "{path}"
            );
            for t in ActionType::ALL.into_iter().filter(|t| t.needs_body()) {
                assert_eq!(
                    conditions(false, &[t]).hold_on_body(&req),
                    t == recorded,
                    "{path} allow {t}"
                );
                assert_eq!(
                    conditions(true, &[t]).hold_on_body(&req),
                    possible.contains(&t),
                    "{path} deny {t}"
                );
            }
        }
    }
}
