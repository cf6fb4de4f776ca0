//! CEL expressions in policies: a rule's `cel:` condition and a gated policy's `condition:`.
//!
//! An expression sees three variables:
//! - `request`: `method`, `scheme`, `host`, `port`, `path`, `headers` (lower-case name →
//!   first value), `action_type`, `body` (the JSON document, or the text, or null),
//!   `tool` and `args` (the MCP `tools/call` name and arguments; `""` and `{}` otherwise);
//! - `identity`: `name`, `kind`, `tags` (a list), `labels` (`key:value` tags as a map),
//!   `spiffe_id`;
//! - `agent`: `slug` (the value of the `agent:` tag), `name`, `tags`.
//!
//! Expressions are parsed when the policy is read and checked against a request of every
//! shape, so an undeclared variable, a misspelt field of `identity`, a type error or a
//! non-boolean result is a config error with its position, not a surprise at request time.
//! At request time an expression can still fail on what the workload sent (a missing
//! `args` key, a string where a number was expected): [`CelExpr::test`] says so, and the
//! caller fails closed — in a deny or gated policy the error denies, in an allow or flag
//! rule it does not match. The error is described by its kind and the types involved,
//! never by the request's values.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use cel::objects::Key;
use cel::{Context, Env, ExecutionError, Program, Value};
use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::inspect::Body;
use crate::policy::RequestFacts;
use crate::request::Method;

/// A compiled expression that keeps its source.
#[derive(Clone, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct CelExpr {
    source: Arc<str>,
    program: Arc<Program>,
    /// It mentions `request.body`, `request.args`, `request.tool` or
    /// `request.action_type`, which take the body.
    reads_body: bool,
    /// What of the request it reads: only that is built for each evaluation.
    reads: Reads,
}

/// The variables and `request` fields an expression reads. Over-approximated from the
/// source: a `request` used other than as `request.<field>` reads every field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reads {
    /// Bit `i`: `REQUEST_FIELDS[i]`.
    request: u16,
    identity: bool,
    agent: bool,
}

impl Reads {
    const ALL: Reads = Reads {
        request: u16::MAX,
        identity: true,
        agent: true,
    };

    fn of(code: &str, variables: &[&str]) -> Reads {
        let mut request = 0u16;
        let select = regex::Regex::new(r"\brequest\b(\s*\.\s*([A-Za-z_][A-Za-z0-9_]*))?")
            .unwrap_or_else(|_| unreachable!("a fixed, valid regex"));
        for found in select.captures_iter(code) {
            match found.get(2).and_then(|field| {
                REQUEST_FIELDS
                    .iter()
                    .position(|known| *known == field.as_str())
            }) {
                Some(i) => request |= 1 << i,
                None => request = u16::MAX,
            }
        }
        Reads {
            request,
            identity: variables.contains(&"identity"),
            agent: variables.contains(&"agent"),
        }
    }

    fn field(&self, name: &str) -> bool {
        REQUEST_FIELDS
            .iter()
            .position(|known| *known == name)
            .is_some_and(|i| self.request & (1 << i) != 0)
    }
}

impl fmt::Debug for CelExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CelExpr").field(&self.source).finish()
    }
}

impl PartialEq for CelExpr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl From<CelExpr> for String {
    fn from(expr: CelExpr) -> String {
        expr.source.to_string()
    }
}

impl fmt::Display for CelExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl utoipa::PartialSchema for CelExpr {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "A CEL expression over `request`, `identity` and `agent` giving a boolean.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for CelExpr {}

/// CEL's standard functions, built once: `Context::default()` builds them afresh, which
/// costs more than the rest of an evaluation.
static STDLIB: std::sync::LazyLock<Arc<Env>> = std::sync::LazyLock::new(|| Arc::new(Env::stdlib()));

const VARIABLES: &[&str] = &["request", "identity", "agent"];
const BODY_FIELDS: &[&str] = &["body", "args", "tool", "action_type"];

impl TryFrom<String> for CelExpr {
    type Error = String;

    fn try_from(source: String) -> Result<Self, String> {
        if source.trim().is_empty() {
            return Err("a CEL expression must not be empty".into());
        }
        let program = Program::compile(&source).map_err(|e| {
            format!(
                "CEL expression {source:?} does not parse: {}",
                one_line(&e.to_string())
            )
        })?;
        let code = code_only(&source);
        let references = program.references();
        let variables = references.variables();
        if let Some(unknown) = variables
            .iter()
            .copied()
            .find(|v| !VARIABLES.contains(v) && !is_bound_in(&code, v))
        {
            return Err(format!(
                "CEL expression {source:?} uses an undeclared variable `{unknown}` (expressions \
                 see `request`, `identity` and `agent`)"
            ));
        }
        if let Some(problem) = unknown_field(&code) {
            return Err(format!("CEL expression {source:?}: {problem}"));
        }
        let type_error = types::check(program.expression()).err();
        let expr = CelExpr {
            reads_body: identifiers(&code).any(|word| BODY_FIELDS.contains(&word)),
            reads: Reads::of(&code, &variables),
            source: Arc::from(source.as_str()),
            program: Arc::new(program),
        };
        if let Some(error) = type_error {
            let at = extent_of(&expr.program, error.id)
                .map(|(start, end)| expr.position(start, end))
                .unwrap_or_default();
            return Err(format!(
                "CEL expression {source:?} has a type error: {}{at}",
                error.message
            ));
        }
        expr.check()?;
        Ok(expr)
    }
}

impl CelExpr {
    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn reads_body(&self) -> bool {
        self.reads_body
    }

    /// Whether the expression holds for this request. Errors do not hold.
    pub fn holds(&self, req: &RequestFacts<'_>) -> bool {
        matches!(self.evaluate(req), Ok(Value::Bool(true)))
    }

    /// Whether the expression holds for this request, or why it could not be evaluated
    /// (without the request's values: the text goes into audit records).
    pub fn test(&self, req: &RequestFacts<'_>) -> Result<bool, String> {
        match self.evaluate(req) {
            Ok(Value::Bool(held)) => Ok(held),
            Ok(other) => Err(format!("it gave {}, not a boolean", type_name(&other))),
            Err(error) => Err(self.describe(&error)),
        }
    }

    /// An evaluation error without the values involved, which come from the request: their
    /// types, and a missing key only when the expression itself names it.
    fn describe(&self, error: &ExecutionError) -> String {
        match error {
            ExecutionError::NoSuchKey(key) if self.source.contains(key.as_str()) => {
                format!("no such key: {key}")
            }
            ExecutionError::NoSuchKey(_) => "no such key".to_owned(),
            ExecutionError::NoSuchOverload(_)
            | ExecutionError::UnexpectedType { .. }
            | ExecutionError::InvalidArgumentCount { .. }
            | ExecutionError::MissingArgumentOrTarget => one_line(&error.to_string()),
            ExecutionError::UnsupportedBinaryOperator(op, left, right) => format!(
                "operator '{op}' does not apply to {} and {}",
                type_name(left),
                type_name(right)
            ),
            ExecutionError::ValuesNotComparable(left, right) => format!(
                "{} cannot be compared to {}",
                type_name(left),
                type_name(right)
            ),
            ExecutionError::UnsupportedTargetType { target }
            | ExecutionError::NotSupportedAsMethod { target, .. } => {
                format!("a function does not apply to {}", type_name(target))
            }
            ExecutionError::UnsupportedIndex(index, target) => {
                format!("{} cannot index {}", type_name(index), type_name(target))
            }
            ExecutionError::FunctionError { function, .. } => {
                format!("function '{function}' failed")
            }
            ExecutionError::DivisionByZero(_) => "division by zero".to_owned(),
            ExecutionError::RemainderByZero(_) => "remainder by zero".to_owned(),
            ExecutionError::Overflow(op, _, _) => format!("overflow in '{op}'"),
            ExecutionError::IndexOutOfBounds(_) => "index out of bounds".to_owned(),
            _ => "the expression failed to evaluate".to_owned(),
        }
    }

    /// The expression's value for this request, for explanations.
    pub fn evaluate(&self, req: &RequestFacts<'_>) -> Result<Value, ExecutionError> {
        let mut context = Context::with_env(STDLIB.clone());
        for (name, value) in variables(req, self.reads) {
            context.add_variable_from_value(name, value);
        }
        self.program.execute(&context)
    }

    /// Runs the expression against requests of every shape the gateway produces: a
    /// misspelt field or a type error fails on one of them, while a missing key in the
    /// free-form `args`, `body` or `headers` is left to request time.
    fn check(&self) -> Result<(), String> {
        for shape in Shape::ALL {
            let mut context = Context::with_env(STDLIB.clone());
            for (name, value) in shape.variables() {
                context.add_variable_from_value(name, value);
            }
            match self.program.execute(&context) {
                Ok(Value::Bool(_)) => {}
                Ok(other) => {
                    return Err(format!(
                        "CEL expression {:?} must give a boolean, it gives {}",
                        &*self.source,
                        type_name(&other)
                    ));
                }
                // Fields are checked above; a missing key is one of `args`, `body`,
                // `headers` or `labels`, which vary per request.
                Err(ExecutionError::NoSuchKey(_)) => {}
                Err(error) => {
                    let at = failing_part(&self.program, &context)
                        .map(|(start, end)| self.position(start, end))
                        .unwrap_or_default();
                    return Err(format!(
                        "CEL expression {:?} is not valid for a request: {}{at}",
                        &*self.source,
                        one_line(&error.to_string())
                    ));
                }
            }
        }
        Ok(())
    }
}

impl CelExpr {
    /// ` at L:C-L:C (`text`)`: where the characters `start..=end` of the source are
    /// (lines and columns from 1), and what they say.
    fn position(&self, start: usize, end: usize) -> String {
        let line_column = |offset: usize| {
            let before: String = self.source.chars().take(offset).collect();
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("{line}:{column}")
        };
        let text: String = self
            .source
            .chars()
            .skip(start)
            .take(end + 1 - start)
            .collect();
        format!(
            " at {}-{} (`{}`)",
            line_column(start),
            line_column(end),
            one_line(&text)
        )
    }
}

/// The parts of a node that are evaluated alone: not a macro's body, which uses its
/// variable.
fn parts(e: &cel::IdedExpr) -> Vec<&cel::IdedExpr> {
    use cel::common::ast::Expr;
    match &e.expr {
        Expr::Call(call) => call.target.iter().map(|t| &**t).chain(&call.args).collect(),
        Expr::Select(select) => vec![&select.operand],
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Comprehension(c) => vec![&c.iter_range],
        _ => Vec::new(),
    }
}

/// Every part of a node, macro bodies included.
fn all_parts(e: &cel::IdedExpr) -> Vec<&cel::IdedExpr> {
    match &e.expr {
        cel::common::ast::Expr::Comprehension(c) => {
            vec![
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ]
        }
        _ => parts(e),
    }
}

/// The first and last character offsets in the source of the node `id` and its parts.
fn extent_of(program: &Program, id: u64) -> Option<(usize, usize)> {
    fn find(e: &cel::IdedExpr, id: u64) -> Option<&cel::IdedExpr> {
        if e.id == id {
            return Some(e);
        }
        all_parts(e).into_iter().find_map(|p| find(p, id))
    }
    fn extent(
        e: &cel::IdedExpr,
        info: &cel::common::ast::SourceInfo,
        span: &mut Option<(u32, u32)>,
    ) {
        if let Some((start, mut stop)) = info.offset_for(e.id) {
            // A selection is placed at its dot: the field's name follows.
            if let cel::common::ast::Expr::Select(select) = &e.expr {
                stop = stop.max(start + select.field.chars().count() as u32);
            }
            *span = Some(span.map_or((start, stop), |(s, t)| (s.min(start), t.max(stop))));
        }
        for part in all_parts(e) {
            extent(part, info, span);
        }
    }
    let node = find(program.expression(), id)?;
    let mut span = None;
    extent(node, program.source_info(), &mut span);
    span.map(|(start, stop)| (start as usize, stop as usize))
}

/// The smallest part of `program` that fails with `context` for a reason other than a
/// missing key: its first and last character offsets in the source. Parts inside a macro's
/// body are not evaluated alone (they use its variable): the macro call is the part.
fn failing_part(program: &Program, context: &Context) -> Option<(usize, usize)> {
    fn deepest<'e>(e: &'e cel::IdedExpr, context: &Context) -> Option<&'e cel::IdedExpr> {
        if let Some(found) = parts(e).into_iter().find_map(|c| deepest(c, context)) {
            return Some(found);
        }
        match Value::resolve(e, context) {
            Ok(_)
            | Err(ExecutionError::NoSuchKey(_))
            | Err(ExecutionError::UndeclaredReference(_)) => None,
            Err(_) => Some(e),
        }
    }
    extent_of(program, deepest(program.expression(), context)?.id)
}

/// Sample requests for [`CelExpr::check`]: an MCP tool call with arguments and a JSON
/// body, and a bare request with neither.
#[derive(Clone, Copy)]
enum Shape {
    ToolCall,
    Bare,
}

impl Shape {
    const ALL: [Shape; 2] = [Shape::ToolCall, Shape::Bare];

    /// The variables of a request of this shape, built as for a real one.
    fn variables(self) -> Vec<(&'static str, Value)> {
        let identity = Identity {
            kind: crate::identity::IdentityKind::Token,
            name: Some(Arc::from("check")),
            spiffe_id: None,
            tags: vec![
                crate::vocab::Tag::parse("agent:check")
                    .unwrap_or_else(|_| unreachable!("a fixed, valid tag")),
            ],
        };
        let body: &[u8] = match self {
            Shape::ToolCall => {
                br#"{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "check", "arguments": {}}}"#
            }
            // An empty document rather than null: field lookups on a body are the point
            // of `request.body`, and a body that is not JSON fails them at request time.
            Shape::Bare => b"{}",
        };
        let body = Body::new(body, None);
        let facts = RequestFacts {
            method: Method::Post,
            method_name: "POST",
            scheme: "https",
            host: "example.com",
            port: 443,
            ip: None,
            path: "/",
            headers: &[],
            intercepted: false,
            body: Some(&body),
            message: None,
            identity: Some(&identity),
            unknown_args: None,
        };
        variables(&facts, Reads::ALL)
    }
}

/// The variables for one evaluation: only those the expression reads, and of `request`
/// only the fields it reads (the headers map and the body's JSON cost the most).
fn variables(req: &RequestFacts<'_>, reads: Reads) -> Vec<(&'static str, Value)> {
    let mut map: HashMap<Key, Value> = HashMap::new();
    let mut put = |field: &'static str, value: &dyn Fn() -> Value| {
        if reads.field(field) {
            map.insert(key(field), value());
        }
    };
    put("method", &|| string(req.method_name()));
    put("scheme", &|| string(req.scheme));
    put("host", &|| string(req.host));
    put("port", &|| Value::Int(i64::from(req.port)));
    put("path", &|| string(req.path));
    put("headers", &|| {
        let mut headers: HashMap<Key, Value> = HashMap::new();
        for (name, value) in req.headers {
            if name.starts_with(':') {
                continue;
            }
            headers
                .entry(key(name))
                .or_insert_with(|| string(&String::from_utf8_lossy(value)));
        }
        Value::Map(headers.into())
    });
    put("action_type", &|| string(req.action_type().as_str()));
    // Built once per body: a batch's messages, decided one by one, share it.
    put("body", &|| match req.body {
        Some(body) => body.cel_value(|| match body.json() {
            Some(json) => json_to_cel(json),
            None if body.bytes().is_empty() => Value::Null,
            None => string(&String::from_utf8_lossy(body.bytes())),
        }),
        None => Value::Null,
    });
    put("tool", &|| {
        string(req.tool_call().map_or("", |(name, _)| name))
    });
    put("args", &|| match req.tool_call() {
        Some((_, args)) if args.is_object() => json_to_cel(args),
        // No tool call, or `arguments` that are not an object: nothing to look up.
        _ => Value::Map(HashMap::<Key, Value>::new().into()),
    });
    let mut variables = vec![("request", Value::Map(map.into()))];
    if reads.identity {
        variables.push(("identity", identity_value(req.identity)));
    }
    if reads.agent {
        variables.push(("agent", agent_value(req.identity)));
    }
    variables
}

fn identity_value(identity: Option<&Identity>) -> Value {
    let mut map: HashMap<Key, Value> = HashMap::new();
    let tags = identity.map(|i| i.tags.as_slice()).unwrap_or_default();
    map.insert(
        key("name"),
        string(identity.and_then(|i| i.name.as_deref()).unwrap_or("")),
    );
    map.insert(
        key("kind"),
        string(identity.map(|i| i.kind.as_str()).unwrap_or("none")),
    );
    map.insert(key("tags"), tag_list(tags));
    let mut labels: HashMap<Key, Value> = HashMap::new();
    for tag in tags {
        if let Some((k, v)) = tag.as_str().split_once(':') {
            labels.insert(key(k), string(v));
        }
    }
    map.insert(key("labels"), Value::Map(labels.into()));
    map.insert(
        key("spiffe_id"),
        string(identity.and_then(|i| i.spiffe_id.as_deref()).unwrap_or("")),
    );
    Value::Map(map.into())
}

fn agent_value(identity: Option<&Identity>) -> Value {
    let tags = identity.map(|i| i.tags.as_slice()).unwrap_or_default();
    let slug = tags
        .iter()
        .find_map(|t| t.as_str().strip_prefix("agent:"))
        .unwrap_or("");
    let mut map: HashMap<Key, Value> = HashMap::new();
    map.insert(key("slug"), string(slug));
    map.insert(
        key("name"),
        string(identity.and_then(|i| i.name.as_deref()).unwrap_or("")),
    );
    map.insert(key("tags"), tag_list(tags));
    Value::Map(map.into())
}

fn tag_list(tags: &[crate::vocab::Tag]) -> Value {
    Value::List(Arc::new(tags.iter().map(|t| string(t.as_str())).collect()))
}

fn key(name: &str) -> Key {
    Key::String(Arc::new(name.to_owned()))
}

fn string(text: &str) -> Value {
    Value::String(Arc::new(text.to_owned()))
}

/// JSON as CEL: integers stay integers, so `request.args.count > 3` compares as written.
fn json_to_cel(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => string(s),
        serde_json::Value::Array(items) => {
            Value::List(Arc::new(items.iter().map(json_to_cel).collect()))
        }
        serde_json::Value::Object(fields) => {
            let map: HashMap<Key, Value> = fields
                .iter()
                .map(|(k, v)| (key(k), json_to_cel(v)))
                .collect();
            Value::Map(map.into())
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Int(_) | Value::UInt(_) => "an integer",
        Value::Float(_) => "a number",
        Value::List(_) => "a list",
        Value::Map(_) => "a map",
        Value::Null => "null",
        _ => "a non-boolean value",
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `source` with the contents of its string literals blanked out, so that only code is
/// scanned for names.
fn code_only(source: &str) -> String {
    let mut code = String::with_capacity(source.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in source.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                    code.push(c);
                    continue;
                }
                code.push(' ');
            }
            None => {
                if c == '"' || c == '\'' {
                    quote = Some(c);
                }
                code.push(c);
            }
        }
    }
    code
}

fn identifiers(code: &str) -> impl Iterator<Item = &str> {
    code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
}

/// Whether `variable` is introduced by a macro (`tags.exists(t, …)`) in `code`.
fn is_bound_in(code: &str, variable: &str) -> bool {
    let idents: Vec<&str> = identifiers(code).collect();
    idents.windows(2).any(|pair| {
        matches!(pair[0], "all" | "exists" | "exists_one" | "map" | "filter") && pair[1] == variable
    })
}

/// The fields of `request`.
const REQUEST_FIELDS: &[&str] = &[
    "method",
    "scheme",
    "host",
    "port",
    "path",
    "headers",
    "action_type",
    "body",
    "tool",
    "args",
];

/// The fields of each variable; a field outside these is a misspelling.
const FIELDS: &[(&str, &[&str])] = &[
    ("request", REQUEST_FIELDS),
    ("identity", &["name", "kind", "tags", "labels", "spiffe_id"]),
    ("agent", &["slug", "name", "tags"]),
];

/// The first `variable.field` in `code` naming a field the variable does not have.
fn unknown_field(code: &str) -> Option<String> {
    let select = regex::Regex::new(r"\b(request|identity|agent)\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")
        .unwrap_or_else(|_| unreachable!("a fixed, valid regex"));
    select.captures_iter(code).find_map(|found| {
        let (variable, field) = (&found[1], &found[2]);
        let fields = FIELDS.iter().find(|(v, _)| *v == variable)?.1;
        (!fields.contains(&field)).then(|| {
            format!(
                "`{variable}` has no field `{field}` (it has {})",
                fields.join(", ")
            )
        })
    })
}

#[cfg(test)]
mod tests;
mod types;
