//! A type check of a CEL expression against the variables policies see, as a CEL checker
//! does before evaluation: `request.method == 1` compares a string with an int, which CEL
//! evaluates to `false` at runtime (so no sample request would fail), but is surely a
//! mistake. Each error names the part of the expression at fault; its position is found
//! by the caller from the node's id.
//!
//! Deliberately lenient where the types depend on the request: `request.body`,
//! `request.args` and their members are `dyn`, and any operation on `dyn` passes. The
//! numeric kinds compare with one another, as the evaluator allows.

use cel::IdedExpr;
use cel::common::ast::{Expr, LiteralValue};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Type {
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Null,
    List(Box<Type>),
    Map(Box<Type>, Box<Type>),
    /// One of the variables, with its fields.
    Object(&'static [(&'static str, Type)]),
    Dyn,
}

impl Type {
    fn name(&self) -> String {
        match self {
            Type::Bool => "bool".into(),
            Type::Int => "int".into(),
            Type::Uint => "uint".into(),
            Type::Double => "double".into(),
            Type::String => "string".into(),
            Type::Bytes => "bytes".into(),
            Type::Null => "null".into(),
            Type::List(t) => format!("list({})", t.name()),
            Type::Map(k, v) => format!("map({}, {})", k.name(), v.name()),
            Type::Object(_) => "an object".into(),
            Type::Dyn => "dyn".into(),
        }
    }

    fn numeric(&self) -> bool {
        matches!(self, Type::Int | Type::Uint | Type::Double)
    }

    /// Whether values of the two types can be compared for equality without a mistake.
    fn comparable(&self, other: &Type) -> bool {
        match (self, other) {
            (Type::Dyn, _) | (_, Type::Dyn) | (Type::Null, _) | (_, Type::Null) => true,
            (a, b) if a.numeric() && b.numeric() => true,
            (Type::List(a), Type::List(b)) => a.comparable(b),
            (Type::Map(k1, v1), Type::Map(k2, v2)) => k1.comparable(k2) && v1.comparable(v2),
            (Type::Object(_), Type::Object(_)) => true,
            (a, b) => a == b,
        }
    }
}

fn string_map() -> Type {
    Type::Map(Box::new(Type::String), Box::new(Type::String))
}

/// The type of each variable.
fn variable(name: &str) -> Option<Type> {
    static REQUEST: std::sync::LazyLock<Vec<(&'static str, Type)>> =
        std::sync::LazyLock::new(|| {
            vec![
                ("method", Type::String),
                ("scheme", Type::String),
                ("host", Type::String),
                ("port", Type::Int),
                ("path", Type::String),
                ("headers", string_map()),
                ("action_type", Type::String),
                ("body", Type::Dyn),
                ("tool", Type::String),
                (
                    "args",
                    Type::Map(Box::new(Type::String), Box::new(Type::Dyn)),
                ),
            ]
        });
    static IDENTITY: std::sync::LazyLock<Vec<(&'static str, Type)>> =
        std::sync::LazyLock::new(|| {
            vec![
                ("name", Type::String),
                ("kind", Type::String),
                ("tags", Type::List(Box::new(Type::String))),
                ("labels", string_map()),
                ("spiffe_id", Type::String),
            ]
        });
    static AGENT: std::sync::LazyLock<Vec<(&'static str, Type)>> = std::sync::LazyLock::new(|| {
        vec![
            ("slug", Type::String),
            ("name", Type::String),
            ("tags", Type::List(Box::new(Type::String))),
        ]
    });
    let fields: &'static Vec<(&'static str, Type)> = match name {
        "request" => &REQUEST,
        "identity" => &IDENTITY,
        "agent" => &AGENT,
        _ => return None,
    };
    Some(Type::Object(fields.as_slice()))
}

/// A type error: the node at fault and what is wrong.
pub(super) struct TypeError {
    pub id: u64,
    pub message: String,
}

/// The variables a part of the expression sees: the policy's, and those macros bind.
struct Scope<'a> {
    bound: Vec<(&'a str, Type)>,
}

/// Checks `expr`; its type, or the first error.
pub(super) fn check(expr: &IdedExpr) -> Result<Type, TypeError> {
    // A result that is not a bool is reported by evaluation, which says what it gives.
    infer(expr, &mut Scope { bound: Vec::new() })
}

fn error(e: &IdedExpr, message: String) -> Result<Type, TypeError> {
    Err(TypeError { id: e.id, message })
}

fn infer<'a>(e: &'a IdedExpr, scope: &mut Scope<'a>) -> Result<Type, TypeError> {
    match &e.expr {
        Expr::Literal(literal) => Ok(match literal {
            LiteralValue::Boolean(_) => Type::Bool,
            LiteralValue::Int(_) => Type::Int,
            LiteralValue::UInt(_) => Type::Uint,
            LiteralValue::Double(_) => Type::Double,
            LiteralValue::String(_) => Type::String,
            LiteralValue::Bytes(_) => Type::Bytes,
            LiteralValue::Null => Type::Null,
        }),
        Expr::Ident(name) => Ok(scope
            .bound
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .or_else(|| variable(name))
            // Undeclared variables are reported elsewhere, with their names.
            .unwrap_or(Type::Dyn)),
        Expr::Select(select) => {
            let operand = infer(&select.operand, scope)?;
            if select.test {
                return Ok(Type::Bool);
            }
            match operand {
                Type::Object(fields) => Ok(fields
                    .iter()
                    .find(|(n, _)| *n == select.field)
                    .map(|(_, t)| t.clone())
                    // Misspelt fields are reported elsewhere, with the fields there are.
                    .unwrap_or(Type::Dyn)),
                Type::Map(_, v) => Ok(*v),
                Type::Dyn => Ok(Type::Dyn),
                other => error(
                    e,
                    format!("`.{}` selects a field of {}", select.field, other.name()),
                ),
            }
        }
        Expr::List(list) => {
            let mut element = None;
            for item in &list.elements {
                let t = infer(item, scope)?;
                element = Some(match element {
                    None => t,
                    Some(prev) if prev == t => prev,
                    Some(_) => Type::Dyn,
                });
            }
            Ok(Type::List(Box::new(element.unwrap_or(Type::Dyn))))
        }
        Expr::Map(_) | Expr::Struct(_) | Expr::Unspecified => Ok(Type::Dyn),
        Expr::Comprehension(c) => {
            let range = infer(&c.iter_range, scope)?;
            let element = match range {
                Type::List(t) => *t,
                Type::Map(k, _) => *k,
                Type::Dyn => Type::Dyn,
                other => {
                    return error(
                        &c.iter_range,
                        format!(
                            "a macro iterates over a list or a map, not {}",
                            other.name()
                        ),
                    );
                }
            };
            let depth = scope.bound.len();
            scope.bound.push((c.iter_var.as_str(), element));
            if let Some(second) = &c.iter_var2 {
                scope.bound.push((second.as_str(), Type::Dyn));
            }
            let accumulator = infer(&c.accu_init, scope)?;
            scope.bound.push((c.accu_var.as_str(), accumulator));
            let outcome = (|| {
                infer(&c.loop_cond, scope)?;
                infer(&c.loop_step, scope)?;
                infer(&c.result, scope)
            })();
            scope.bound.truncate(depth);
            outcome
        }
        Expr::Call(call) => {
            let target = match &call.target {
                Some(t) => Some(infer(t, scope)?),
                None => None,
            };
            let mut args = Vec::with_capacity(call.args.len());
            for arg in &call.args {
                args.push(infer(arg, scope)?);
            }
            call_type(e, &call.func_name, target, &args)
        }
    }
}

fn call_type(
    e: &IdedExpr,
    function: &str,
    target: Option<Type>,
    args: &[Type],
) -> Result<Type, TypeError> {
    let dyn_in = |types: &[&Type]| types.iter().any(|t| **t == Type::Dyn);
    match (function, target.as_ref(), args) {
        ("_==_" | "_!=_", None, [a, b]) => {
            if a.comparable(b) {
                Ok(Type::Bool)
            } else {
                error(
                    e,
                    format!("{} is compared with {}: never equal", a.name(), b.name()),
                )
            }
        }
        ("_<_" | "_<=_" | "_>_" | "_>=_", None, [a, b]) => {
            let ordered = dyn_in(&[a, b])
                || (a.numeric() && b.numeric())
                || (a == b && matches!(a, Type::String | Type::Bytes | Type::Bool));
            if ordered {
                Ok(Type::Bool)
            } else {
                error(e, format!("{} and {} have no order", a.name(), b.name()))
            }
        }
        ("_&&_" | "_||_", None, [a, b]) => {
            for t in [a, b] {
                if !matches!(t, Type::Bool | Type::Dyn) {
                    return error(e, format!("`&&` and `||` join bools, not {}", t.name()));
                }
            }
            Ok(Type::Bool)
        }
        ("!_", None, [a]) => match a {
            Type::Bool | Type::Dyn => Ok(Type::Bool),
            other => error(e, format!("`!` negates a bool, not {}", other.name())),
        },
        ("_?_:_", None, [c, a, b]) => {
            if !matches!(c, Type::Bool | Type::Dyn) {
                return error(e, format!("a condition is a bool, not {}", c.name()));
            }
            Ok(if a == b { a.clone() } else { Type::Dyn })
        }
        ("_+_", None, [a, b]) => {
            if dyn_in(&[a, b]) {
                return Ok(Type::Dyn);
            }
            match (a, b) {
                (Type::String, Type::String) => Ok(Type::String),
                (Type::Bytes, Type::Bytes) => Ok(Type::Bytes),
                (Type::List(x), Type::List(_)) => Ok(Type::List(x.clone())),
                (x, y) if x == y && x.numeric() => Ok(x.clone()),
                _ => error(e, format!("{} + {} is not defined", a.name(), b.name())),
            }
        }
        ("_-_" | "_*_" | "_/_" | "_%_", None, [a, b]) => {
            if dyn_in(&[a, b]) {
                return Ok(Type::Dyn);
            }
            if a == b && a.numeric() {
                Ok(a.clone())
            } else {
                let op = &function[1..2];
                error(e, format!("{} {op} {} is not defined", a.name(), b.name()))
            }
        }
        ("-_", None, [a]) => match a {
            Type::Int | Type::Double | Type::Dyn => Ok(a.clone()),
            other => error(e, format!("`-` negates a number, not {}", other.name())),
        },
        ("@in", None, [item, container]) => match container {
            Type::List(element) if !item.comparable(element) => error(
                e,
                format!(
                    "{} is looked for in {}: never found",
                    item.name(),
                    container.name()
                ),
            ),
            Type::Map(key, _) if !item.comparable(key) => error(
                e,
                format!(
                    "{} is looked for among the keys of {}: never found",
                    item.name(),
                    container.name()
                ),
            ),
            Type::List(_) | Type::Map(..) | Type::Object(_) | Type::Dyn => Ok(Type::Bool),
            other => error(
                e,
                format!("`in` looks in a list or a map, not {}", other.name()),
            ),
        },
        ("_[_]", None, [container, index]) => match container {
            Type::List(element) => match index {
                Type::Int | Type::Uint | Type::Dyn => Ok((**element).clone()),
                other => error(
                    e,
                    format!("a list is indexed by an int, not {}", other.name()),
                ),
            },
            Type::Map(key, value) => {
                if index.comparable(key) {
                    Ok((**value).clone())
                } else {
                    error(
                        e,
                        format!("{} is indexed by {}", container.name(), index.name()),
                    )
                }
            }
            Type::Object(_) | Type::Dyn => Ok(Type::Dyn),
            other => error(e, format!("{} cannot be indexed", other.name())),
        },
        ("size", None, [a]) | ("size", Some(a), []) => match a {
            Type::String
            | Type::Bytes
            | Type::List(_)
            | Type::Map(..)
            | Type::Object(_)
            | Type::Dyn => Ok(Type::Int),
            other => error(e, format!("size() of {} is not defined", other.name())),
        },
        ("startsWith" | "endsWith" | "contains" | "matches", Some(t), [arg]) => {
            for (what, ty) in [("its target", t), ("its argument", arg)] {
                if !matches!(ty, Type::String | Type::Dyn) {
                    return error(
                        e,
                        format!("{function}() needs a string as {what}, not {}", ty.name()),
                    );
                }
            }
            Ok(Type::Bool)
        }
        ("string", None, [_]) => Ok(Type::String),
        ("int", None, [_]) => Ok(Type::Int),
        ("uint", None, [_]) => Ok(Type::Uint),
        ("double", None, [_]) => Ok(Type::Double),
        ("bytes", None, [_]) => Ok(Type::Bytes),
        // Functions this check does not model: evaluation checks them.
        _ => Ok(Type::Dyn),
    }
}
