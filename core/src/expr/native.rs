//! Native evaluation of the commonest expression shapes, from the syntax tree Rhai built.
//!
//! Why: in both benchmarks of `docs/benchmarks.md` Rhai's interpreter was the largest cost
//! of the steps. Each evaluation starts with empty function-resolution caches, clones every
//! argument into a `Dynamic` (a date is a boxed custom type, so an allocation per use) and
//! converts the result back: about 10,000 instructions for the age band of the example
//! pipeline (`if age_at(data_nascita, ymd(2026, 1, 1)) < 18 { … } else if … `), against a
//! few hundred for the same work on [`Value`]s.
//!
//! What: [`Native::compile`] walks the tree of a compiled expression (Rhai's `internals`
//! feature exposes it; the `Cargo.lock` pins the version the walk was written against) and
//! accepts only what it can evaluate with the same result as Rhai: constants, fields,
//! `if`/`else`, `&&`, `||`, `!`, `??`, comparisons, text concatenation, and the functions of
//! [`FUNCTIONS`] (with the text functions and conversions of the parent module's tables,
//! which Rhai calls too). Anything else leaves the expression to Rhai.
//!
//! At run time a native expression also steps aside, returning `None`, whenever a value is
//! not one it knows the answer for (a comparison of an integer with a decimal, a text
//! function on a date, a condition that is not a boolean, a conversion that fails): Rhai
//! then evaluates the record and gives the value or the error it always gave. So a native
//! result is always Rhai's result; the test `native_results_are_rhai_results` compares them
//! on every shape and every kind of value.

use std::borrow::Cow;

use chrono::{Datelike, NaiveDate};
use rhai::{FnCallExpr, Stmt};

use super::{
    DATE_TEXT, DATETIME_TEXT, Expr, TEXT_FUNCTIONS, TextFn, VALUE_FUNCTIONS, ValueFn, from_dynamic,
    to_dynamic,
};
use crate::record::Schema;
use crate::validators;
use crate::value::{self, Text, Value, ValueType};

/// An expression compiled for native evaluation against records of one schema.
#[derive(Clone, Debug)]
pub struct Native {
    root: Node,
}

/// A function of the expression language evaluated natively, with its arity.
#[derive(Clone, Copy, Debug)]
enum Function {
    IsNull,
    NullIfEmpty,
    AgeAt,
    Year,
    Month,
    Day,
    IsForeignPlace,
    IstatCode,
    IstatRegion,
    Today,
    IsCodiceFiscale,
    IsPartitaIva,
    IsIban,
    Int,
    Bool,
    Decimal(crate::value::DecimalStyle),
}

/// The functions (besides the text functions and conversions of the parent module) that
/// native expressions call, by name and arity. Each does what its Rhai registration in
/// [`super::ExprEngine::with_vars`] does, through the same helper where there is logic.
const FUNCTIONS: [(&str, usize, Function); 17] = [
    ("is_null", 1, Function::IsNull),
    ("nullif_empty", 1, Function::NullIfEmpty),
    ("age_at", 2, Function::AgeAt),
    ("year", 1, Function::Year),
    ("month", 1, Function::Month),
    ("day", 1, Function::Day),
    ("is_foreign_place", 1, Function::IsForeignPlace),
    ("istat_code", 2, Function::IstatCode),
    ("istat_region", 2, Function::IstatRegion),
    ("today", 0, Function::Today),
    ("is_codice_fiscale", 1, Function::IsCodiceFiscale),
    ("is_partita_iva", 1, Function::IsPartitaIva),
    ("is_iban", 1, Function::IsIban),
    ("int", 1, Function::Int),
    ("bool", 1, Function::Bool),
    (
        "decimal",
        1,
        Function::Decimal(crate::value::DecimalStyle::DOT),
    ),
    (
        "decimal_it",
        1,
        Function::Decimal(crate::value::DecimalStyle::ITALIAN),
    ),
];

// `Node::eval` evaluates a call's arguments into two slots: a function of more would step
// aside to Rhai at every record, so refuse to compile instead.
const _: () = {
    let mut i = 0;
    while i < FUNCTIONS.len() {
        assert!(
            FUNCTIONS[i].1 <= 2,
            "a native function takes at most two arguments"
        );
        i += 1;
    }
};

#[derive(Clone, Copy, Debug)]
enum Comparison {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug)]
enum Node {
    Const(Value),
    Field(usize),
    Text(TextFn, Box<Node>),
    /// A conversion (`as_date`, `as_decimal`, …) and the type it yields: a value already of
    /// that type, or null, is what the conversion would give back.
    Convert(ValueFn, ValueType, Box<Node>),
    Call(Function, Vec<Node>),
    Compare(Comparison, Box<Node>, Box<Node>),
    Concat(Box<Node>, Box<Node>),
    Not(Box<Node>),
    /// `a && b && …` (`false`) or `a || b || …` (`true`): the operands in order until one
    /// is this value, which is then the result; otherwise its opposite.
    Logic(bool, Vec<Node>),
    /// `a ?? b`: evaluates `b` only when `a` is null.
    Coalesce(Vec<Node>),
    /// `coalesce(a, b[, c])`: a function, so every argument is evaluated first.
    CoalesceCall(Vec<Node>),
    If(Box<Node>, Box<Node>, Box<Node>),
}

static NULL: Value = Value::Null;

impl Native {
    /// The native form of `expr`, whose variables `field` maps to record positions; `None`
    /// when the expression has a shape, a function or a variable (not a field of the
    /// record) that only Rhai evaluates or reports.
    pub fn compile(expr: &Expr, field: &dyn Fn(&str) -> Option<usize>) -> Option<Native> {
        let root = block(expr.ast.statements(), field)?;
        Some(Native { root })
    }

    /// The native form of `expr` for records of `schema`: a variable is the field whose
    /// [`identifier`](super::identifier) it is, the last one when two fields share it (as in
    /// the Rhai scope, where the later push shadows the earlier).
    pub fn for_schema(expr: &Expr, schema: &Schema) -> Option<Native> {
        let variables: Vec<String> = schema
            .names()
            .iter()
            .map(|n| super::identifier(n))
            .collect();
        Native::compile(expr, &|v| variables.iter().rposition(|n| n == v))
    }

    /// The value for a record's `values`, or `None` when Rhai must decide (see the module
    /// documentation).
    pub fn eval(&self, values: &[Value]) -> Option<Value> {
        let v = self.root.eval(values)?;
        // Only values that pass through Rhai unchanged: a list or map would come back
        // from Rhai in another form (a map with sorted keys).
        scalar(&v).then(|| v.into_owned())
    }
}

fn scalar(v: &Value) -> bool {
    matches!(
        v,
        Value::Null
            | Value::Bool(_)
            | Value::Int(_)
            | Value::Decimal(_)
            | Value::Str(_)
            | Value::Date(_)
            | Value::DateTime(_)
    )
}

type FieldOf<'a> = &'a dyn Fn(&str) -> Option<usize>;

fn block(statements: &[Stmt], field: FieldOf) -> Option<Node> {
    match statements {
        [] => Some(Node::Const(Value::Null)),
        [s] => statement(s, field),
        _ => None,
    }
}

fn statement(s: &Stmt, field: FieldOf) -> Option<Node> {
    match s {
        Stmt::Expr(e) => expression(e, field),
        Stmt::FnCall(call, _) => call_node(call, field),
        Stmt::Block(b) => block(b.statements(), field),
        Stmt::If(flow, _) => Some(Node::If(
            Box::new(expression(&flow.expr, field)?),
            Box::new(block(flow.body.statements(), field)?),
            Box::new(block(flow.branch.statements(), field)?),
        )),
        _ => None,
    }
}

fn expression(e: &rhai::Expr, field: FieldOf) -> Option<Node> {
    use rhai::Expr as E;
    let all = |list: &[rhai::Expr]| -> Option<Vec<Node>> {
        list.iter().map(|e| expression(e, field)).collect()
    };
    Some(match e {
        E::DynamicConstant(d, _) => {
            // Only the kinds that pass through a record unchanged: a char, a function
            // pointer or another custom type folded by Rhai's optimiser would become text.
            let plain = d.is_unit()
                || d.is::<bool>()
                || d.is::<rhai::INT>()
                || d.is::<rust_decimal::Decimal>()
                || d.is::<rhai::ImmutableString>()
                || d.is::<NaiveDate>()
                || d.is::<chrono::NaiveDateTime>();
            if !plain {
                return None;
            }
            Node::Const(from_dynamic((**d).clone()))
        }
        E::BoolConstant(b, _) => Node::Const(Value::Bool(*b)),
        E::IntegerConstant(i, _) => Node::Const(Value::Int(*i)),
        E::StringConstant(s, _) => Node::Const(Value::Str(Text::new(s))),
        E::Unit(_) => Node::Const(Value::Null),
        E::Variable(var, _, _) => Node::Field(field(var.1.as_str())?),
        E::Stmt(b) => block(b.statements(), field)?,
        E::FnCall(call, _) => call_node(call, field)?,
        E::And(list, _) => Node::Logic(false, all(list)?),
        E::Or(list, _) => Node::Logic(true, all(list)?),
        E::Coalesce(list, _) => Node::Coalesce(all(list)?),
        _ => return None,
    })
}

fn call_node(call: &FnCallExpr, field: FieldOf) -> Option<Node> {
    if call.capture_parent_scope {
        return None;
    }
    let args: Vec<Node> = call
        .args
        .iter()
        .map(|a| expression(a, field))
        .collect::<Option<_>>()?;
    let name = call.name.as_str();
    let comparison = match name {
        "==" => Some(Comparison::Eq),
        "!=" => Some(Comparison::Ne),
        "<" => Some(Comparison::Lt),
        "<=" => Some(Comparison::Le),
        ">" => Some(Comparison::Gt),
        ">=" => Some(Comparison::Ge),
        _ => None,
    };
    let mut args = args.into_iter();
    let node = match (name, args.len()) {
        (_, 2) if comparison.is_some() => {
            let (a, b) = (args.next()?, args.next()?);
            Node::Compare(comparison?, Box::new(a), Box::new(b))
        }
        ("+", 2) => {
            let (a, b) = (args.next()?, args.next()?);
            Node::Concat(Box::new(a), Box::new(b))
        }
        ("!", 1) => Node::Not(Box::new(args.next()?)),
        ("coalesce", 2 | 3) => Node::CoalesceCall(args.collect()),
        (name, 1) if TEXT_FUNCTIONS.iter().any(|(n, _)| *n == name) => {
            let f = TEXT_FUNCTIONS.iter().find(|(n, _)| *n == name)?.1;
            Node::Text(f, Box::new(args.next()?))
        }
        (name, 1) if VALUE_FUNCTIONS.iter().any(|(n, _, _)| *n == name) => {
            let (_, f, yields) = VALUE_FUNCTIONS.iter().find(|(n, _, _)| *n == name)?;
            Node::Convert(*f, *yields, Box::new(args.next()?))
        }
        (name, arity) => {
            let (_, _, f) = FUNCTIONS
                .iter()
                .find(|(n, a, _)| *n == name && *a == arity)?;
            Node::Call(*f, args.collect())
        }
    };
    Some(node)
}

impl Node {
    /// The value of an operand: a field or a constant is read in place, anything else
    /// evaluated. Why: fields and constants are most operands, and evaluating one through
    /// a call returned its 48-byte `Cow` through memory, read back at once: in the CSV
    /// benchmark's profile the loads after those returns were most of `eval`'s own time.
    #[inline(always)]
    fn operand<'a>(&'a self, values: &'a [Value]) -> Option<Cow<'a, Value>> {
        match self {
            Node::Field(i) => values.get(*i).map(Cow::Borrowed),
            Node::Const(v) => Some(Cow::Borrowed(v)),
            _ => self.eval(values),
        }
    }

    fn eval<'a>(&'a self, values: &'a [Value]) -> Option<Cow<'a, Value>> {
        Some(match self {
            Node::Const(v) => Cow::Borrowed(v),
            Node::Field(i) => Cow::Borrowed(values.get(*i)?),
            Node::Text(f, arg) => Cow::Owned(match text(&*arg.operand(values)?)? {
                None => Value::Null,
                Some(s) => Value::Str(f(&s)),
            }),
            Node::Convert(f, yields, arg) => {
                let v = arg.operand(values)?;
                // What a typed source (PostgreSQL, a typed CSV column) already delivers comes
                // back unchanged: no trip through Rhai's value and back for each field of each
                // record (`as_decimal(importo)` in every SIUSS record).
                if matches!(*v, Value::Null) || v.value_type() == Some(*yields) {
                    return Some(v);
                }
                Cow::Owned(from_dynamic(f(to_dynamic(&v)).ok()?))
            }
            Node::Call(f, args) => {
                // The functions take at most two arguments (`FUNCTIONS`): evaluated in place,
                // not into a vector allocated per call (the age band calls `age_at` twice
                // per record).
                let mut evaluated = [Cow::Borrowed(&NULL), Cow::Borrowed(&NULL)];
                for (slot, a) in evaluated.iter_mut().zip(args) {
                    *slot = a.operand(values)?;
                }
                Cow::Owned(call(*f, evaluated.get(..args.len())?)?)
            }
            Node::Compare(op, a, b) => {
                let (a, b) = (a.operand(values)?, b.operand(values)?);
                Cow::Owned(Value::Bool(compare(*op, &a, &b)?))
            }
            Node::Concat(a, b) => {
                let (a, b) = (a.operand(values)?, b.operand(values)?);
                match (&*a, &*b) {
                    (Value::Str(x), Value::Str(y)) => {
                        let mut t = Text::with_capacity(x.len() + y.len());
                        t.push_str(x);
                        t.push_str(y);
                        Cow::Owned(Value::Str(t))
                    }
                    // Rhai's `+` of text and null is the text.
                    (Value::Str(_), Value::Null) => a,
                    (Value::Null, Value::Str(_)) => b,
                    _ => return None,
                }
            }
            Node::Not(a) => match &*a.operand(values)? {
                Value::Bool(b) => Cow::Owned(Value::Bool(!b)),
                _ => return None,
            },
            Node::Logic(decisive, list) => {
                for n in list {
                    match &*n.operand(values)? {
                        Value::Bool(b) if b == decisive => {
                            return Some(Cow::Owned(Value::Bool(*decisive)));
                        }
                        Value::Bool(_) => {}
                        _ => return None,
                    }
                }
                Cow::Owned(Value::Bool(!decisive))
            }
            Node::Coalesce(list) => {
                for n in list {
                    let v = n.operand(values)?;
                    if !v.is_null() {
                        return Some(v);
                    }
                }
                Cow::Borrowed(&NULL)
            }
            Node::CoalesceCall(list) => {
                let evaluated: Vec<Cow<Value>> = list
                    .iter()
                    .map(|a| a.operand(values))
                    .collect::<Option<_>>()?;
                let last = evaluated.len() - 1;
                evaluated
                    .into_iter()
                    .enumerate()
                    .find(|(i, v)| *i == last || !v.is_null())
                    .map(|(_, v)| v)?
            }
            Node::If(cond, then, otherwise) => match &*cond.operand(values)? {
                Value::Bool(true) => then.operand(values)?,
                Value::Bool(false) => otherwise.operand(values)?,
                _ => return None,
            },
        })
    }
}

/// The text the parent module's `text_of` gives (`Some(None)` for null), or `None` for a
/// value whose text is Rhai's business (a list, a map, bytes).
fn text(v: &Value) -> Option<Option<Cow<'_, str>>> {
    Some(Some(match v {
        Value::Null => return Some(None),
        Value::Str(s) => Cow::Borrowed(s.as_str()),
        Value::Int(i) => Cow::Owned(i.to_string()),
        Value::Decimal(d) => Cow::Owned(d.to_string()),
        Value::Bool(b) => Cow::Owned(b.to_string()),
        Value::Date(d) => Cow::Owned(d.format(DATE_TEXT).to_string()),
        Value::DateTime(d) => Cow::Owned(d.format(DATETIME_TEXT).to_string()),
        _ => return None,
    }))
}

/// Rhai's comparison of two values: its built-in operators on numbers, text and
/// booleans, the date comparisons registered by the engine, and Rhai's rule for values of
/// different, not both numeric, kinds (only `!=` is true). `None` for what Rhai refuses
/// (date-times have no comparison) or what is not a plain value.
fn compare(op: Comparison, a: &Value, b: &Value) -> Option<bool> {
    use rust_decimal::Decimal;
    use std::cmp::Ordering;
    let order: Ordering = match (a, b) {
        (Value::Int(a), Value::Int(b)) => a.cmp(b),
        (Value::Decimal(a), Value::Decimal(b)) => a.cmp(b),
        (Value::Int(a), Value::Decimal(b)) => Decimal::from(*a).cmp(b),
        (Value::Decimal(a), Value::Int(b)) => a.cmp(&Decimal::from(*b)),
        (Value::Str(a), Value::Str(b)) => a.as_str().cmp(b.as_str()),
        (Value::Date(a), Value::Date(b)) => a.cmp(b),
        (Value::Null, Value::Null) => return Some(matches!(op, Comparison::Eq)),
        (Value::Bool(a), Value::Bool(b)) => {
            return match op {
                Comparison::Eq => Some(a == b),
                Comparison::Ne => Some(a != b),
                _ => None,
            };
        }
        (Value::DateTime(_), Value::DateTime(_)) => return None,
        _ if scalar(a) && scalar(b) => return Some(matches!(op, Comparison::Ne)),
        _ => return None,
    };
    Some(match op {
        Comparison::Eq => order.is_eq(),
        Comparison::Ne => order.is_ne(),
        Comparison::Lt => order.is_lt(),
        Comparison::Le => order.is_le(),
        Comparison::Gt => order.is_gt(),
        Comparison::Ge => order.is_ge(),
    })
}

fn call(f: Function, args: &[Cow<Value>]) -> Option<Value> {
    let arg = |i: usize| args.get(i).map(|v| &**v);
    let date = |i: usize| match arg(i) {
        Some(Value::Date(d)) => Some(*d),
        _ => None,
    };
    Some(match f {
        Function::IsNull => Value::Bool(arg(0)?.is_null()),
        Function::NullIfEmpty => match text(arg(0)?)? {
            Some(s) if !s.trim().is_empty() => arg(0)?.clone(),
            _ => Value::Null,
        },
        Function::AgeAt => Value::Int(super::age_at(date(0)?, date(1)?)),
        Function::Year => Value::Int(date(0)?.year() as i64),
        Function::Month => Value::Int(date(0)?.month() as i64),
        Function::Day => Value::Int(date(0)?.day() as i64),
        Function::IsForeignPlace => {
            Value::Bool(text(arg(0)?)?.is_some_and(|s| super::is_foreign_place(&s)))
        }
        Function::IstatCode | Function::IstatRegion => {
            let at: NaiveDate = date(1)?;
            match text(arg(0)?)? {
                None => Value::Null,
                Some(code) => {
                    let found = match f {
                        Function::IstatCode => validators::comuni::istat_code_at(code.trim(), at),
                        _ => validators::comuni::istat_region_at(code.trim(), at),
                    };
                    found.map(|c| Value::Str(c.into())).unwrap_or(Value::Null)
                }
            }
        }
        Function::Today => Value::Date(super::today()),
        Function::IsCodiceFiscale => {
            check(arg(0)?, |s| validators::codice_fiscale::validate(s).is_ok())?
        }
        Function::IsPartitaIva => check(arg(0)?, |s| validators::partita_iva::validate(s).is_ok())?,
        Function::IsIban => check(arg(0)?, |s| validators::iban::validate(s).is_ok())?,
        // As the registrations: the value itself when it is of the kind, null for null or
        // blank text, else the text parsed (a failure is Rhai's to report).
        Function::Int => match arg(0)? {
            Value::Int(i) => Value::Int(*i),
            // Rhai's own conversions take a decimal before the registration does.
            Value::Decimal(_) => return None,
            v => match text(v)? {
                Some(s) if !s.trim().is_empty() => Value::Int(value::parse_int(&s).ok()?),
                _ => Value::Null,
            },
        },
        Function::Bool => match arg(0)? {
            Value::Bool(b) => Value::Bool(*b),
            v => match text(v)? {
                Some(s) if !s.trim().is_empty() => Value::Bool(value::parse_bool(&s).ok()?),
                _ => Value::Null,
            },
        },
        Function::Decimal(style) => match arg(0)? {
            Value::Decimal(d) => Value::Decimal(*d),
            Value::Int(i) => Value::Decimal((*i).into()),
            v => match text(v)? {
                Some(s) if !s.trim().is_empty() => {
                    Value::Decimal(value::parse_decimal(&s, style).ok()?)
                }
                _ => Value::Null,
            },
        },
    })
}

/// A domain check on a value's text, as the engine's `bool_check`: false for null.
fn check(v: &Value, valid: impl Fn(&str) -> bool) -> Option<Value> {
    Some(Value::Bool(text(v)?.is_some_and(|s| valid(&s))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::ExprEngine;
    use crate::record::{Record, SourcePosition};

    /// Every expression of the pipelines' shapes, compiled natively, gives Rhai's value on
    /// every kind of value, or steps aside (`None`); it never steps aside where Rhai
    /// succeeds on the shapes the benchmarks and shipped pipelines use, and never returns a
    /// value where Rhai fails.
    #[test]
    fn native_results_are_rhai_results() {
        let expressions = [
            r#"if age_at(a, ymd(2026, 1, 1)) < 18 { "minori" } else if age_at(a, ymd(2026, 1, 1)) < 65 { "adulti" } else { "anziani" }"#,
            r#"if is_null(a) { "2" } else { "1" }"#,
            r#"if is_foreign_place(a) { upper(trim(a)) } else { () }"#,
            r#"if upper(trim(a)) == "M" { "1" } else { if upper(trim(a)) == "F" { "2" } else { () } }"#,
            r#"coalesce(nullif_empty(trim(a)), "WD-" + text(b))"#,
            r#"if is_null(a) { () } else { text(year(as_date(a))) }"#,
            r#"coalesce(a, "380")"#,
            r#"coalesce(a, b, "x")"#,
            "a ?? b",
            r#"a ?? b ?? "z""#,
            r#"if a < 3 { "1" } else if a < 6 { "2" } else { () }"#,
            r#"if is_null(a) { () } else if a == decimal("0") { "1" } else if a <= decimal("3000") { "2" } else { "3" }"#,
            "a == b",
            "a != b",
            "a < b",
            "a <= b",
            "a > b",
            "a >= b",
            "a > 5 && b < 10",
            r#"a == "x" || b == "y""#,
            "!is_null(a)",
            "!(a == b)",
            "istat_code(a, ymd(2020, 1, 1))",
            "istat_region(a, today())",
            "is_null(istat_code(a, today()))",
            "year(a)",
            "month(a)",
            "day(a)",
            "a",
            r#""k""#,
            "()",
            "if true { a } else { b }",
            "if a { 1 } else { 2 }",
            "if a { 1 }",
            "nullif_empty(a)",
            "age_at(a, b)",
            r#"text(a) + "-" + text(b)"#,
            "upper(collapse_spaces(a))",
            "as_decimal(a)",
            "as_date(a)",
            "as_datetime(a)",
            "norm_name(a)",
            "is_foreign_place(a)",
            "is_codice_fiscale(a)",
            "is_partita_iva(a)",
            "is_iban(a)",
            "int(a)",
            "bool(a)",
            "decimal(a)",
            "decimal_it(a)",
            "if is_codice_fiscale(upper(trim(a))) { int(b) } else { decimal_it(a) }",
        ];
        let not_native = ["left(a, 2)", "a * 2", "[a, b]", "a.len()", "c + 1"];
        let date = |y, m, d| Value::Date(NaiveDate::from_ymd_opt(y, m, d).unwrap());
        let a_values = [
            Value::Null,
            Value::Str(Default::default()),
            Value::Str(" m ".into()),
            Value::Str("F".into()),
            Value::Str("Z100".into()),
            Value::Str(" z404 ".into()),
            Value::Str("D969".into()),
            Value::Str("x".into()),
            Value::Str("2024-03-01".into()),
            Value::Str("31/12/1950".into()),
            Value::Str("  d'Angelo   nicolò ".into()),
            Value::Str("RSSMRA85T10A562S".into()),
            Value::Str("rssmra85t10a562s ".into()),
            Value::Str("IT60X0542811101000000123456".into()),
            Value::Str("01234567897".into()),
            Value::Str(" 1.234,5 ".into()),
            Value::Str("12.50".into()),
            Value::Str("S".into()),
            Value::Str(" 42 ".into()),
            Value::Int(2),
            Value::Int(7),
            Value::Int(-5),
            Value::Decimal("0".parse().unwrap()),
            Value::Decimal("2500.50".parse().unwrap()),
            Value::Decimal("7000".parse().unwrap()),
            date(2010, 5, 1),
            date(1950, 1, 1),
            Value::DateTime(
                NaiveDate::from_ymd_opt(2026, 2, 28)
                    .unwrap()
                    .and_hms_opt(10, 30, 0)
                    .unwrap(),
            ),
            Value::Bool(true),
            Value::Bool(false),
            Value::List(vec![Value::Int(1)]),
        ];
        let b_values = [
            Value::Null,
            Value::Str("y".into()),
            Value::Int(7),
            date(2026, 1, 1),
            Value::Decimal("0".parse().unwrap()),
        ];
        let engine = ExprEngine::new();
        let schema = Schema::new(vec!["a".into(), "b".into()]);
        let field = |n: &str| ["a", "b"].iter().position(|f| *f == n);
        for src in not_native {
            let e = engine.compile(src).unwrap();
            assert!(
                Native::compile(&e, &field).is_none(),
                "`{src}` is not native"
            );
        }
        let (mut agreed, mut aside, mut refused) = (0, 0, 0);
        for src in expressions {
            let expr = engine.compile(src).unwrap();
            let native = Native::compile(&expr, &field).unwrap_or_else(|| panic!("`{src}`"));
            for a in &a_values {
                for b in &b_values {
                    let rec = Record {
                        schema: schema.clone(),
                        values: vec![a.clone(), b.clone()],
                        position: SourcePosition::default(),
                    };
                    let rhai = engine.eval(&expr, &mut engine.scope_with(&rec, &[0, 1]));
                    match (native.eval(&rec.values), rhai) {
                        (Some(n), Ok(r)) => {
                            assert_eq!(n, r, "`{src}` with a = {a:?}, b = {b:?}");
                            agreed += 1;
                        }
                        (Some(n), Err(e)) => {
                            panic!("`{src}` with a = {a:?}, b = {b:?}: {n:?}, Rhai: {e}")
                        }
                        (None, Ok(r)) => {
                            eprintln!("aside: `{src}` a={a:?} b={b:?} -> {r:?}");
                            aside += 1
                        }
                        (None, Err(_)) => refused += 1,
                    }
                }
            }
        }
        // Stepping aside where Rhai succeeds is right for the mixed kinds above but must
        // stay the exception.
        assert!(
            agreed > 4 * aside,
            "{agreed} agreed, {aside} left to Rhai, {refused} refused by both"
        );
    }

    /// The example pipeline's age band, each `if` arm, evaluated natively.
    #[test]
    fn the_age_band_is_native_in_every_arm() {
        let engine = ExprEngine::new();
        let expr = engine
            .compile(r#"if age_at(data_nascita, ymd(2026, 1, 1)) < 18 { "minori" } else if age_at(data_nascita, ymd(2026, 1, 1)) < 65 { "adulti" } else { "anziani" }"#)
            .unwrap();
        let native = Native::compile(&expr, &|n| (n == "data_nascita").then_some(0)).unwrap();
        let band = |y| native.eval(&[Value::Date(NaiveDate::from_ymd_opt(y, 1, 1).unwrap())]);
        assert_eq!(band(2010), Some(Value::Str("minori".into())));
        assert_eq!(band(1980), Some(Value::Str("adulti".into())));
        assert_eq!(band(1940), Some(Value::Str("anziani".into())));
        // An unknown variable is never native: Rhai names it in the reject.
        assert!(Native::compile(&expr, &|_| None).is_none());
    }
}
