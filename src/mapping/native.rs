//! The jq that mapping leaves are mostly made of, evaluated without jaq.
//!
//! Most leaves of a mapping are a string constant (`'"0500"'`), a path
//! (`.data.betrieb.name`) or a few steps more: a path iterated or
//! selected by, a choice between two strings, a code looked up, a date
//! formatted, two slices of a string joined (`.region | if length == 12
//! then .[0:5] + .[9:12] else . end`). A jaq run costs about a microsecond
//! and a half, much more than most of these take when evaluated directly.
//!
//! [`Native::of`] compiles, from jaq's own syntax tree, the part of jq
//! evaluated here: paths with their indexes, slices and iteration, `|`,
//! `,`, `//`, `if`, `and`/`or`, arithmetic, comparison, string
//! interpolation, array and object construction, `$submission`, and the
//! functions of [`Call`]. An expression with anything else (variables
//! bound with `as`, `reduce`, `try`, a format such as `@csv`, any other
//! function) is left to jaq as a whole.
//!
//! A value given here is the value jaq gives. The operations on values
//! are jaq's own (indexing, slicing, iteration, `+`, comparison, truth,
//! conversion to text), the functions are the same Rust functions jaq
//! calls or mirror the definitions jaq uses, and the control flow follows
//! jaq's evaluator. Where that could differ, the evaluation stops with
//! [`Unsure`] and jaq evaluates the expression from the start:
//! - on any error, so that jaq raises it in its own words;
//! - where jaq's order of evaluation would show: an operand, an index or
//!   a function argument with more than one value;
//! - past a budget of values made, so that a runaway expression meets
//!   jaq's lazy cap of [`MAX_OUTPUTS`] instead of filling memory here.
//!
//! Every subterm jaq would evaluate is evaluated here too (a few more:
//! both operands even when one has no value), so an error jaq would meet
//! is met here and hands over. Expressions have no side effects, so
//! running one again in jaq is safe. Tests compare both on every form and
//! on every leaf of the shipped mappings with their fixtures; the fuzz
//! target `native_as_jaq` on generated expressions and values.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use jaq_core::{ValR, ValT as _};
use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::{BinaryOp, Term};
use jaq_core::ops::{Cmp, Math};
use jaq_core::path::{Opt, Part};
use jaq_json::Val;

use super::expr::{Globals, MAX_OUTPUTS};
use super::functions::{self, Direct};

/// The evaluation cannot vouch for giving what jaq gives: jaq answers.
#[derive(Debug, PartialEq)]
pub(super) struct Unsure;

/// Values an evaluation may make, counted at every step, before it
/// leaves the expression to jaq.
const BUDGET: usize = 4 * MAX_OUTPUTS;

/// A compiled expression; the variants mirror jaq's terms.
#[derive(Debug)]
pub(super) enum Native {
    /// `.`
    Id,
    /// A literal: a string without interpolation, a number, `null`,
    /// `true`, `false`, `{}`.
    Value(Literal),
    /// `$submission`, `$__codelists` or `$__now`.
    Global(Global),
    /// A term and the path that follows it, each part with its `?`:
    /// `.a.b`, `.[]`, `.[0:5]`, `{…}[.k]`.
    Path(Box<Native>, Vec<(Part<Native>, Opt)>),
    /// `l | r`
    Pipe(Box<Native>, Box<Native>),
    /// `l, r`
    Comma(Box<Native>, Box<Native>),
    /// `l // r`
    Alt(Box<Native>, Box<Native>),
    /// `if c then t elif … else e end`; without `else`, `e` is `.`.
    If(Vec<(Native, Native)>, Box<Native>),
    /// `l or r` (`stop` true) and `l and r` (`stop` false).
    Logic(Box<Native>, bool, Box<Native>),
    Math(Box<Native>, Math, Box<Native>),
    Cmp(Box<Native>, Cmp, Box<Native>),
    Neg(Box<Native>),
    /// `[f]`
    Arr(Option<Box<Native>>),
    /// One entry of an object construction: `{k: v}`.
    Entry(Box<Native>, Box<Native>),
    /// Terms added from the right, as jaq compiles a string with
    /// interpolations and an object with several entries; the value when
    /// there are none.
    Sum(Vec<Native>, Literal),
    /// `. | tostring`, as interpolation converts.
    ToString,
    Call(Call),
}

/// A literal's value, kept so that a compiled expression can be shared
/// between threads (a `Val` cannot).
#[derive(Debug)]
pub(super) enum Literal {
    Null,
    Bool(bool),
    Text(Bytes),
    Int(isize),
    /// A number that is not an `isize`, as written.
    Num(String),
    EmptyObject,
}

impl Literal {
    fn text(text: &str) -> Self {
        Literal::Text(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn val(&self) -> Val {
        match self {
            Literal::Null => Val::Null,
            Literal::Bool(b) => Val::from(*b),
            Literal::Text(text) => Val::TStr(Box::new(text.clone())),
            Literal::Int(n) => Val::from(*n),
            Literal::Num(n) => Val::from_num(n).expect("checked when compiled"),
            Literal::EmptyObject => Val::obj(Default::default()),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Global {
    Submission,
    Codelists,
    Now,
}

/// The functions evaluated here, each as the definition jaq uses.
#[derive(Debug)]
pub(super) enum Call {
    /// `def empty: …` (no value).
    Empty,
    /// `def not: if . then false else true end;`
    Not,
    /// jaq_json's native `length`.
    Length,
    /// `def select(f): if f then . else empty end;`
    Select(Box<Native>),
    /// `def index($i): indices($i)[0];`, where the input is an array and
    /// `$i` is not.
    Index(Box<Native>),
    /// `def join($s): .[] |= tostring | .[:-1][] += $s | reduce .[] as $x
    /// (""; . + $x);`, where the input is an array and `$s` a string.
    Join(Box<Native>),
    /// One of amtsbote's natives ([`functions::direct`]), its arguments
    /// bound as `$name` parameters.
    Direct(Direct, Vec<Native>),
}

impl Native {
    /// The expression `code` compiled, if all of it is evaluated here.
    pub(super) fn of(code: &str) -> Option<Self> {
        let term = jaq_core::load::parse(code, |p| p.term())?;
        Self::compile(&term)
    }

    fn compile(term: &Term<&str>) -> Option<Self> {
        let boxed = |t: &Term<&str>| Self::compile(t).map(Box::new);
        // A part that is absent stays absent; one that cannot be compiled
        // leaves the whole expression to jaq.
        let optional = |t: &Option<Term<&str>>| match t {
            Some(t) => Self::compile(t).map(Some),
            None => Some(None),
        };
        Some(match term {
            Term::Id => Native::Id,
            Term::Num(n) => Native::Value(match n.parse::<isize>() {
                Ok(n) => Literal::Int(n),
                Err(_) => {
                    Val::from_num(n).ok()?;
                    Literal::Num(n.to_string())
                }
            }),
            Term::Str(None, parts) => {
                let parts = parts
                    .iter()
                    .map(|part| match part {
                        StrPart::Str(s) => Some(Native::Value(Literal::text(s))),
                        StrPart::Char(c) => Some(Native::Value(Literal::text(c.encode_utf8(&mut [0; 4])))),
                        StrPart::Term(t) => Some(Native::Pipe(boxed(t)?, Box::new(Native::ToString))),
                    })
                    .collect::<Option<Vec<_>>>()?;
                Native::sum(parts, Literal::text(""))
            }
            Term::Var(name) => Native::Global(match *name {
                "$submission" => Global::Submission,
                "$__codelists" => Global::Codelists,
                "$__now" => Global::Now,
                _ => return None,
            }),
            Term::Path(head, path) => Native::Path(
                boxed(head)?,
                path.0
                    .iter()
                    .map(|(part, opt)| {
                        let part = match part {
                            Part::Index(i) => Part::Index(Self::compile(i)?),
                            Part::Range(from, to) => Part::Range(optional(from)?, optional(to)?),
                        };
                        Some((part, *opt))
                    })
                    .collect::<Option<_>>()?,
            ),
            Term::BinOp(l, op, r) => {
                let (l, r) = (boxed(l)?, boxed(r)?);
                match op {
                    BinaryOp::Pipe(None) => Native::Pipe(l, r),
                    BinaryOp::Comma => Native::Comma(l, r),
                    BinaryOp::Alt => Native::Alt(l, r),
                    BinaryOp::Or => Native::Logic(l, true, r),
                    BinaryOp::And => Native::Logic(l, false, r),
                    BinaryOp::Math(op) => Native::Math(l, *op, r),
                    BinaryOp::Cmp(op) => Native::Cmp(l, *op, r),
                    _ => return None,
                }
            }
            Term::IfThenElse(branches, otherwise) => Native::If(
                branches.iter().map(|(c, t)| Some((Self::compile(c)?, Self::compile(t)?))).collect::<Option<_>>()?,
                match otherwise {
                    Some(e) => boxed(e)?,
                    None => Box::new(Native::Id),
                },
            ),
            Term::Neg(t) => Native::Neg(boxed(t)?),
            Term::Arr(t) => Native::Arr(match t {
                Some(t) => Some(boxed(t)?),
                None => None,
            }),
            Term::Obj(entries) => {
                let entries = entries
                    .iter()
                    .map(|(key, value)| {
                        let (key, value) = match (key, value) {
                            // `{$x}` is `{"x": $x}`.
                            (Term::Var(name), None) => {
                                (Native::Value(Literal::text(&name[1..])), Self::compile(key)?)
                            }
                            // `{k}` is `{k: .[k]}`.
                            (key, None) => {
                                let index = Self::compile(key)?;
                                let value = Native::Path(Box::new(Native::Id), vec![(Part::Index(Self::compile(key)?), Opt::Essential)]);
                                (index, value)
                            }
                            (key, Some(value)) => (Self::compile(key)?, Self::compile(value)?),
                        };
                        Some(Native::Entry(Box::new(key), Box::new(value)))
                    })
                    .collect::<Option<Vec<_>>>()?;
                Native::sum(entries, Literal::EmptyObject)
            }
            Term::Call(name, args) => Native::call(name, args)?,
            _ => return None,
        })
    }

    /// `parts` added from the right; literal strings joined at once
    /// (strings add up by joining).
    fn sum(parts: Vec<Native>, empty: Literal) -> Native {
        if parts.is_empty() {
            return Native::Value(empty);
        }
        if parts.iter().all(|part| matches!(part, Native::Value(Literal::Text(_)))) {
            let mut joined = BytesMut::new();
            for part in &parts {
                if let Native::Value(Literal::Text(text)) = part {
                    joined.extend_from_slice(text);
                }
            }
            return Native::Value(Literal::Text(joined.freeze()));
        }
        match <[Native; 1]>::try_from(parts) {
            Ok([only]) => only,
            Err(parts) => Native::Sum(parts, empty),
        }
    }

    /// A call of a function jaq defines or amtsbote adds; `None` for the
    /// rest. Mappings cannot define functions, so a name always means
    /// the standard one.
    fn call(name: &str, args: &[Term<&str>]) -> Option<Native> {
        let arg = |i: usize| Self::compile(&args[i]).map(Box::new);
        let string = |s: &str| Native::Value(Literal::text(s));
        Some(Native::Call(match (name, args.len()) {
            // `def null: [][0];`, `def true: 0 == 0;`, `def false: 0 != 0;`
            ("null", 0) => return Some(Native::Value(Literal::Null)),
            ("true", 0) => return Some(Native::Value(Literal::Bool(true))),
            ("false", 0) => return Some(Native::Value(Literal::Bool(false))),
            ("empty", 0) => Call::Empty,
            ("not", 0) => Call::Not,
            ("length", 0) => Call::Length,
            ("tostring", 0) => return Some(Native::ToString),
            ("now", 0) => return Some(Native::Global(Global::Now)),
            ("select", 1) => Call::Select(arg(0)?),
            ("index", 1) => Call::Index(arg(0)?),
            ("join", 1) => Call::Join(arg(0)?),
            // The prelude: `def lookup($list): __lookup($__codelists[$list]; $list);`
            ("lookup", 1) => {
                let table = Native::Path(
                    Box::new(Native::Global(Global::Codelists)),
                    vec![(Part::Index(Self::compile(&args[0])?), Opt::Essential)],
                );
                Call::Direct(functions::direct("__lookup", 2)?, vec![table, Self::compile(&args[0])?])
            }
            // `def uuid($name): __uuid5($submission.id; $name);` and
            // `def uuid: uuid("");`
            ("uuid", 0 | 1) => {
                let id = Native::Path(Box::new(Native::Global(Global::Submission)), vec![(Part::Index(string("id")), Opt::Essential)]);
                let name = match args.first() {
                    Some(name) => Self::compile(name)?,
                    None => string(""),
                };
                Call::Direct(functions::direct("__uuid5", 2)?, vec![id, name])
            }
            (name, arity) if !name.starts_with("__") => {
                Call::Direct(functions::direct(name, arity)?, args.iter().map(Self::compile).collect::<Option<_>>()?)
            }
            _ => return None,
        }))
    }

    /// The value of `.name.name…` (names that are literals, without `?`)
    /// on `input`, borrowed: `Some(None)` for null, `None` where the
    /// expression is not such a path or jaq must answer (a name of
    /// something that is neither an object nor null).
    pub(super) fn plain_path<'v>(&self, input: &'v Val) -> Option<Option<&'v Val>> {
        let Native::Path(head, parts) = self else { return None };
        if !matches!(**head, Native::Id) {
            return None;
        }
        let mut current = Some(input);
        for (part, opt) in parts {
            let (Part::Index(Native::Value(Literal::Text(name))), Opt::Essential) = (part, opt) else { return None };
            current = match current {
                None | Some(Val::Null) => None,
                Some(Val::Obj(object)) => object.get(&Field(name)),
                Some(_) => return None,
            };
        }
        Some(current)
    }

    /// The values of the expression on `input`, as jaq gives them.
    pub(super) fn values(&self, input: &Val, globals: &Globals) -> Result<Vec<Val>, Unsure> {
        let mut run = Run { globals, budget: BUDGET };
        let mut out = Vec::new();
        run.eval(self, input, &mut out)?;
        if out.len() > MAX_OUTPUTS {
            return Err(Unsure);
        }
        Ok(out)
    }
}

/// The value of an index or bound: a literal's, or the next of `keys`.
fn key<'k>(term: &Native, keys: &mut &'k [Val]) -> Cow<'k, Val> {
    match term {
        Native::Value(literal) => Cow::Owned(literal.val()),
        _ => {
            let (first, rest) = keys.split_first().expect("every index that is not a literal was evaluated");
            *keys = rest;
            Cow::Borrowed(first)
        }
    }
}

/// An object's field name looked up as the string value it equals,
/// without making that value: hashed and compared as jaq_json hashes and
/// compares `Val::TStr`. Should jaq_json change its hashing, lookups would
/// miss, and the tests, which compare with jaq, fail.
struct Field<'k>(&'k [u8]);

impl std::hash::Hash for Field<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u8(5);
        self.0.hash(state);
    }
}

impl indexmap::Equivalent<Val> for Field<'_> {
    fn equivalent(&self, key: &Val) -> bool {
        matches!(key, Val::TStr(bytes) | Val::BStr(bytes) if bytes.as_ref().as_ref() == self.0)
    }
}

/// One evaluation: the globals and what is left of the budget.
struct Run<'g> {
    globals: &'g Globals,
    budget: usize,
}

impl Run<'_> {
    fn emit(&mut self, out: &mut Vec<Val>, value: Val) -> Result<(), Unsure> {
        self.budget = self.budget.checked_sub(1).ok_or(Unsure)?;
        out.push(value);
        Ok(())
    }

    /// Appends the values of `term` on `input` to `out`.
    fn eval(&mut self, term: &Native, input: &Val, out: &mut Vec<Val>) -> Result<(), Unsure> {
        match term {
            Native::Id => self.emit(out, input.clone()),
            Native::Value(literal) => self.emit(out, literal.val()),
            Native::Global(global) => {
                let value = match global {
                    Global::Submission => self.globals.submission.clone(),
                    Global::Codelists => self.globals.codelists.clone(),
                    Global::Now => self.globals.now.clone(),
                };
                self.emit(out, value)
            }
            Native::Path(head, path) => {
                // Indexes and bounds are evaluated on the term's input, all
                // of them before the path is walked, as jaq does; literals
                // are read where they are used.
                let mut keys = Vec::new();
                for (part, _) in path {
                    let terms = match part {
                        Part::Index(i) => [Some(i), None],
                        Part::Range(from, to) => [from.as_ref(), to.as_ref()],
                    };
                    for term in terms.into_iter().flatten().filter(|t| !matches!(t, Native::Value(_))) {
                        keys.push(self.single(term, input)?.ok_or(Unsure)?);
                    }
                }
                match &**head {
                    Native::Id => self.walk(input.clone(), path, &keys, out),
                    head => {
                        for value in self.all(head, input)? {
                            self.walk(value, path, &keys, out)?;
                        }
                        Ok(())
                    }
                }
            }
            Native::Pipe(l, r) => {
                for value in self.all(l, input)? {
                    self.eval(r, &value, out)?;
                }
                Ok(())
            }
            Native::Comma(l, r) => {
                self.eval(l, input, out)?;
                self.eval(r, input, out)
            }
            Native::Alt(l, r) => {
                let before = out.len();
                out.extend(self.all(l, input)?.into_iter().filter(|v| v.as_bool()));
                if out.len() == before {
                    self.eval(r, input, out)?;
                }
                Ok(())
            }
            Native::If(branches, otherwise) => self.branch(branches, otherwise, input, out),
            Native::Logic(l, stop, r) => {
                for l in self.all(l, input)? {
                    if l.as_bool() == *stop {
                        self.emit(out, Val::from(*stop))?;
                    } else {
                        for r in self.all(r, input)? {
                            self.emit(out, Val::from(r.as_bool()))?;
                        }
                    }
                }
                Ok(())
            }
            Native::Math(l, op, r) => match self.pair(l, r, input)? {
                Some((l, r)) => {
                    let value = op.run(l, r).map_err(|_| Unsure)?;
                    self.emit(out, value)
                }
                None => Ok(()),
            },
            Native::Cmp(l, op, r) => match self.pair(l, r, input)? {
                Some((l, r)) => self.emit(out, Val::from(op.run(&l, &r))),
                None => Ok(()),
            },
            Native::Neg(t) => {
                for value in self.all(t, input)? {
                    let negated = (-value).map_err(|_| Unsure)?;
                    self.emit(out, negated)?;
                }
                Ok(())
            }
            Native::Arr(items) => {
                let items = match items {
                    Some(items) => self.all(items, input)?,
                    None => Vec::new(),
                };
                self.emit(out, items.into_iter().collect())
            }
            Native::Entry(k, v) => match self.pair(k, v, input)? {
                Some((k, v)) => {
                    let entry = Val::from_map([(k, v)]).map_err(|_| Unsure)?;
                    self.emit(out, entry)
                }
                None => Ok(()),
            },
            Native::Sum(parts, empty) => {
                // Every part is evaluated, as jaq would, before an empty one
                // leaves the sum without a value.
                let mut values = Vec::with_capacity(parts.len());
                for part in parts {
                    values.push(self.single(part, input)?);
                }
                let Some(values) = values.into_iter().collect::<Option<Vec<_>>>() else { return Ok(()) };
                let mut values = values.into_iter().rev();
                let mut sum = values.next().unwrap_or_else(|| empty.val());
                for value in values {
                    sum = (value + sum).map_err(|_| Unsure)?;
                }
                self.emit(out, sum)
            }
            Native::ToString => self.emit(out, input.clone().into_string()),
            Native::Call(call) => self.call(call, input, out),
        }
    }

    fn call(&mut self, call: &Call, input: &Val, out: &mut Vec<Val>) -> Result<(), Unsure> {
        match call {
            Call::Empty => Ok(()),
            Call::Not => self.emit(out, Val::from(!input.as_bool())),
            Call::Length => {
                let length = match input {
                    Val::Null => 0,
                    Val::TStr(s) => std::str::from_utf8(s).map_err(|_| Unsure)?.chars().count(),
                    Val::BStr(b) => b.len(),
                    Val::Arr(a) => a.len(),
                    Val::Obj(o) => o.len(),
                    // A number's absolute value is jaq's to compute, a
                    // boolean's length its error to raise.
                    Val::Num(_) | Val::Bool(_) => return Err(Unsure),
                };
                self.emit(out, Val::from(length))
            }
            Call::Select(condition) => {
                for value in self.all(condition, input)? {
                    if value.as_bool() {
                        self.emit(out, input.clone())?;
                    }
                }
                Ok(())
            }
            Call::Index(needle) => {
                let Some(needle) = self.single(needle, input)? else { return Ok(()) };
                match (input, &needle) {
                    (Val::Arr(_), Val::Arr(_)) => Err(Unsure),
                    (Val::Arr(items), needle) => {
                        let at = items.iter().position(|item| item == needle);
                        self.emit(out, at.map_or(Val::Null, |at| Val::from(at as isize)))
                    }
                    _ => Err(Unsure),
                }
            }
            Call::Join(separator) => {
                let Some(separator) = self.single(separator, input)? else { return Ok(()) };
                let (Val::Arr(items), Val::TStr(separator)) = (input, &separator) else { return Err(Unsure) };
                let mut joined = BytesMut::new();
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        joined.extend_from_slice(separator);
                    }
                    match item.clone().into_string() {
                        Val::TStr(text) => joined.extend_from_slice(&text),
                        _ => return Err(Unsure),
                    }
                }
                self.emit(out, Val::utf8_str(joined.freeze()))
            }
            Call::Direct(function, args) => {
                let mut values = Vec::with_capacity(args.len());
                for arg in args {
                    values.push(self.single(arg, input)?);
                }
                let Some(values) = values.into_iter().collect::<Option<Vec<_>>>() else { return Ok(()) };
                let value = function(input, &values).map_err(|_| Unsure)?;
                self.emit(out, value)
            }
        }
    }

    /// `if`: each value of the first condition picks its branch.
    fn branch(&mut self, branches: &[(Native, Native)], otherwise: &Native, input: &Val, out: &mut Vec<Val>) -> Result<(), Unsure> {
        let Some(((condition, then), rest)) = branches.split_first() else { return self.eval(otherwise, input, out) };
        for value in self.all(condition, input)? {
            if value.as_bool() {
                self.eval(then, input, out)?;
            } else {
                self.branch(rest, otherwise, input, out)?;
            }
        }
        Ok(())
    }

    /// Applies the path's parts to `value` one after the other; `keys`
    /// are the values of the indexes and bounds that are not literals, in
    /// order.
    fn walk(&mut self, value: Val, parts: &[(Part<Native>, Opt)], mut keys: &[Val], out: &mut Vec<Val>) -> Result<(), Unsure> {
        let Some(((part, opt), rest)) = parts.split_first() else { return self.emit(out, value) };
        let result = match (part, &value) {
            // `.name` of an object or null, without making the key a value.
            (Part::Index(Native::Value(Literal::Text(name))), Val::Obj(object)) => {
                Ok(object.get(&Field(name)).cloned().unwrap_or(Val::Null))
            }
            (Part::Index(Native::Value(_)), Val::Null) => Ok(Val::Null),
            (Part::Index(index), _) => {
                let index = key(index, &mut keys);
                value.index(&index)
            }
            (Part::Range(None, None), _) => {
                for item in value.values() {
                    self.step(item, *opt, rest, keys, out)?;
                }
                return Ok(());
            }
            (Part::Range(from, to), _) => {
                let from = from.as_ref().map(|from| key(from, &mut keys));
                let to = to.as_ref().map(|to| key(to, &mut keys));
                value.range(from.as_deref()..to.as_deref())
            }
        };
        self.step(result, *opt, rest, keys, out)
    }

    /// The rest of the path after one part's result: a part marked `?`
    /// drops its errors; any other error is jaq's.
    fn step(&mut self, result: ValR<Val>, opt: Opt, rest: &[(Part<Native>, Opt)], keys: &[Val], out: &mut Vec<Val>) -> Result<(), Unsure> {
        match (result, opt) {
            (Ok(value), _) => self.walk(value, rest, keys, out),
            (Err(_), Opt::Optional) => Ok(()),
            (Err(_), Opt::Essential) => Err(Unsure),
        }
    }

    fn all(&mut self, term: &Native, input: &Val) -> Result<Vec<Val>, Unsure> {
        let mut values = Vec::new();
        self.eval(term, input, &mut values)?;
        Ok(values)
    }

    /// The value of a term that has at most one.
    fn single(&mut self, term: &Native, input: &Val) -> Result<Option<Val>, Unsure> {
        let mut values = self.all(term, input)?;
        if values.len() > 1 {
            return Err(Unsure);
        }
        Ok(values.pop())
    }

    /// Both operands, each with at most one value, both evaluated.
    fn pair(&mut self, l: &Native, r: &Native, input: &Val) -> Result<Option<(Val, Val)>, Unsure> {
        let (l, r) = (self.single(l, input)?, self.single(r, input)?);
        Ok(l.zip(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::expr::Expr;

    fn val(json: &str) -> Val {
        serde_json::from_str(json).unwrap()
    }

    fn globals() -> Globals {
        Globals::new(
            val(r#"{"id":"6f1c0d2e-3b4a-4c5d-8e9f-0a1b2c3d4e5f","reference":"R-1"}"#),
            val(r#"{"rf":{"gmbh":"310","ag":"320","7":"sieben"}}"#),
            Val::from(1_439_071_200isize),
        )
    }

    /// What the expression gives, evaluated here (`None`: unsure) and by jaq.
    fn both(code: &str, input: &Val, globals: &Globals) -> (Option<Vec<Val>>, Result<Vec<Val>, String>) {
        let native = Native::of(code).unwrap_or_else(|| panic!("{code} is evaluated natively"));
        let by_jaq = Expr::compile(code, 1).unwrap().run(input, globals).map_err(|e| e.0);
        (native.values(input, globals).ok(), by_jaq)
    }

    /// Where the native evaluation answers, it answers as jaq; it answers
    /// each input of `answered` (by index into `INPUTS`).
    fn assert_as_jaq(code: &str, answered: &[usize]) {
        let globals = globals();
        for (i, input) in INPUTS.iter().enumerate() {
            let input = val(input);
            let (native, by_jaq) = both(code, &input, &globals);
            if let Some(found) = Native::of(code).unwrap().plain_path(&input) {
                let value = found.cloned().unwrap_or(Val::Null);
                assert_eq!(Ok(vec![value]), by_jaq, "{code} on {input}, as a plain path");
            }
            if let Some(values) = native {
                let by_jaq = by_jaq.unwrap_or_else(|e| panic!("{code} on {input}: jaq fails ({e}), native gives {values:?}"));
                assert_eq!(values, by_jaq, "{code} on {input}");
                let text = |vs: &[Val]| vs.iter().map(ToString::to_string).collect::<Vec<_>>();
                assert_eq!(text(&values), text(&by_jaq), "{code} on {input}");
            } else {
                assert!(!answered.contains(&i), "{code} on {input} is answered natively");
            }
        }
    }

    const INPUTS: [&str; 14] = [
        r#"{"a":{"b":"x","n":1.5,"o":{"k":[1,2]},"z":null},"_x1":true,"s":"text"}"#,
        r#"{"a":null}"#,
        r#"{"a":"a string"}"#,
        r#"{"a":[1]}"#,
        "null",
        "7",
        "[1,2]",
        r#""top""#,
        r#"{"rf":"gmbh","rfs":["gmbh","ag"],"bad":["gmbh","zz"],"n":1,"e":[]}"#,
        r#"{"region":"053150000000","short":"05315","long":"0531500000001","umlaut":"0531ä0000000","n":12}"#,
        r#"{"xs":["handel","industrie"],"ys":[],"zs":[1,"handel",null],"s":"handel"}"#,
        r#"{"t":["a","b","c"],"one":["a"],"none":[],"mixed":["a",1,null,true,{"k":1}],"text":"abc"}"#,
        r#"{"d":"1980-05-31T22:00:00Z","day":"2024-02-29","bad":"31.05.1980","num":0,"nd":null}"#,
        r#"{"telefon":"0221 1","email":null,"niederlassung":"zweig","a":false,"b":0}"#,
    ];

    #[test]
    fn paths_literals_and_the_former_shortcuts() {
        let all: Vec<usize> = (0..INPUTS.len()).collect();
        for code in [
            ".", ".a", ".a.b", ".a.n", ".a.o", ".a.o.k", ".a.z", ".a.z.deeper", ".missing", ".missing.more", "._x1", " .s ",
            r#""plain""#, r#""esc \" \\ \/ \n \u00e4 \u20ac""#, r#""""#, r#"."a""#, ".if", "1", "1.5", "-2", "1e3",
        ] {
            let answered: Vec<usize> = if code.trim().starts_with('.') && code.trim().len() > 1 { vec![0, 1, 4, 8] } else { all.clone() };
            assert_as_jaq(code, &answered);
        }
        for code in [".s.t", ".[]", ".a[]", ".a.o[]", ".a.o.k[]", ".missing[]", ".s[]", ".a[]?", ".a?", ".a[0]", ".[0]", ".[1:]", ".[-1:]", ".[:1]", ".a[0:1]", r#"if .a then "1" else "0" end | .x"#] {
            assert_as_jaq(code, &[]);
        }
        assert_as_jaq(".[]", &[0, 6]);
        assert_as_jaq(".a[]?", &[0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13]);
        assert_as_jaq(".[1:]", &[6, 7]);
        for code in [
            "select(.a)", "select( .a.z )", "select(.a.b)", "select(.missing)", "select(._x1)", "select(.)",
            r#"if .a then "1" else "0" end"#, r#"if .a.z then "yes" else "no" end"#, r#"if ._x1 then "" else "x\ty" end"#,
            r#"if .a then "1" elif .b then "2" else "3" end"#, r#"if .a then "1" end"#,
            r#"if (.a, ._x1) then "y" else "n" end"#, "select(.a) | .b", "select(.a), select(.b)", "empty", ".a, .s",
        ] {
            assert_as_jaq(code, &[0, 1, 8]);
        }
        for code in [
            r#".rf | lookup("rf")"#, r#".rfs[] | lookup("rf")"#, r#".bad[] | lookup("rf")"#, r#".e[]|lookup("rf")"#,
            r#".missing | lookup("rf")"#, r#".rf | lookup("nolist")"#, r#".n | lookup("rf")"#, r#".a.b | lookup( "rf" )"#,
            r#".rfs | lookup("rf")"#, r#"uuid("nachricht")"#, r#"uuid("")"#, r#"uuid( "a\u00e4" )"#, "uuid", "now",
            "$submission.id", "$submission", r#"$submission.reference // $submission.id"#,
        ] {
            assert_as_jaq(code, &[]);
        }
        assert_as_jaq(r#".rfs[] | lookup("rf")"#, &[8]);
        assert_as_jaq(r#"uuid("nachricht")"#, &(0..INPUTS.len()).collect::<Vec<_>>());
    }

    #[test]
    fn operators_conditions_and_functions() {
        for (code, answered) in [
            // The AGS from the ARS, as the XGewerbeanzeige mapping writes it.
            (".region | if length == 12 then .[0:5] + .[9:12] else . end", &[9][..]),
            (".short | if length == 12 then .[0:5] + .[9:12] else . end", &[9]),
            (".long | if length == 12 then .[0:5] + .[9:12] else . end", &[9]),
            (".umlaut | if length == 12 then .[0:5] + .[9:12] else . end", &[9]),
            (".n | if length == 12 then .[0:5] + .[9:12] else . end", &[]),
            (r#"if (.xs | index("industrie")) then "1" else "0" end"#, &[10]),
            (r#"if (.ys | index("industrie")) then "1" else "0" end"#, &[10]),
            (r#".zs | index("handel"), index(null), index(1)"#, &[10]),
            (r#".s | index("n")"#, &[]),
            (r#".xs | index(["handel"])"#, &[]),
            (r#"{"haupt": "1", "zweig": "2", "zweigstelle": "3"}[.niederlassung // "haupt"]"#, &[0, 1, 4, 13]),
            (r#"{a: .a, "b": 1, $submission, "c\(.s)": 2}"#, &[0, 1, 13]),
            (r#"{a: .a, "b": 1, $submission}"#, &[0, 1, 13]),
            (r#"{}"#, &[0]),
            (r#"{(.s): 1}"#, &[]),
            (r#"{a}"#, &[0, 1]),
            (r#".t | select(length > 0) | join("|")"#, &[11]),
            (r#".none | select(length > 0) | join("|")"#, &[11]),
            (r#".one | join(", ")"#, &[11]),
            (r#".none | join(", ")"#, &[11]),
            (r#".mixed | join("-")"#, &[11]),
            (r#".text | join("-")"#, &[]),
            (r#".t | join(1)"#, &[]),
            (".d | local_date | date_format(\"DDMMYYYY\")", &[12]),
            (".day | local_date", &[12]),
            (".bad | local_date", &[]),
            (".num | local_datetime", &[12]),
            (".nd | date_format(\"DD.MM.YYYY\")", &[12]),
            (".day | date_format(1)", &[]),
            (".text | upper, lower, truncate(2), pad_left(5; \"0\")", &[11]),
            (".a // .b", &[0, 1, 13]),
            (".a // .b // \"none\"", &[0, 1, 13]),
            ("(.a, .telefon) // .b", &[13]),
            (".a and .b", &[0, 1, 13]),
            (".a or .b", &[0, 1, 13]),
            (".a | not", &[0, 1, 13]),
            (".n * 2, .n / 4, .n - 1, .n % 5, -.n", &[9]),
            (".n / 0", &[]),
            (".a.n + .a.n", &[0]),
            ("(.a, .s) + \"x\"", &[]),
            (".s + .missing", &[0]),
            ("[.a[]?]", &[0, 1]),
            ("[]", &[0]),
            (".a == null, .a != null, .a < 1, .a >= \"a\"", &[0, 1, 13]),
            ("\"x\\(.s)y\\(.a)z\"", &[0, 1, 13]),
            ("\"\\(.s)\"", &[0, 1, 13]),
            ("\"\\(.missing)\\(empty)\"", &[0]),
            (".t | length, (.[0] | length), tostring", &[11]),
            (".a | length", &[1]),
            (".b | length", &[]),
            ("true | length", &[]),
            (".[] | select(. > 1)", &[6]),
        ] {
            assert_as_jaq(code, answered);
        }
    }

    #[test]
    fn the_rest_goes_to_jaq() {
        for code in [
            ".a as $x | $x", "reduce .[] as $x (0; . + $x)", "try .a", ".a?//1 | try . catch 1", "@csv", "@base64 \"\\(.a)\"",
            "ascii_downcase", "..", ".a |= 1", ".[] += 1", "first(.a)", "default(\"x\")", "nonblank", "attachments(\"form\")",
            "label $out | 1", "$__loc__", "$ENV", "limit(1; .[])", "__lookup(.; .)", "def f: 1; f", ".a[\"b\"] = 1",
        ] {
            assert!(Native::of(code).is_none(), "{code} must go to jaq");
        }
    }

    #[test]
    fn a_runaway_expression_is_left_to_jaq_and_its_cap() {
        let doubling = vec!["(., .)"; 20].join(" | ");
        let native = Native::of(&doubling).unwrap();
        assert_eq!(native.values(&Val::Null, &globals()), Err(Unsure));
        let expr = Expr::compile(&doubling, 1).unwrap();
        assert!(expr.eval(&Val::Null, &globals()).unwrap_err().0.contains("more than"));
    }

    #[test]
    fn every_native_jaq_calls_is_evaluated_directly() {
        for (name, params, _) in functions::natives() {
            assert!(functions::direct(name, params.len()).is_some(), "{name}/{}", params.len());
        }
    }
}
