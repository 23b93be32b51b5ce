//! jq expressions (evaluated by jaq) as they appear in mapping leaves.
//!
//! Every expression is compiled once when its mapping is loaded. It sees
//! the current value as `.`, the whole submission as `$submission`, and
//! the functions of [`super::functions`]. What could reach outside the
//! document is refused at load: user-defined functions (`def`, the way to
//! write unbounded recursion) and the filters that read the environment or
//! the process's input or stop it (`env`, `input`, `debug`, `halt`, ...).
//! Output count per evaluation is capped here; time, memory and stack are
//! bounded by running evaluations in the sandbox process
//! ([`super::sandbox`]).
//!
//! Most leaves of a mapping are evaluated without running jaq
//! ([`super::native`]): the same values, a fraction of the cost. jaq
//! evaluates the rest, and whatever the native evaluation is not sure to
//! answer exactly as jaq would (an error, say, which is jaq's to word).

use std::collections::HashSet;
use std::sync::LazyLock;

use jaq_core::load::parse::{self, Def};
use jaq_core::load::{Arena, File, Loader, lex};
use jaq_core::{Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;

use super::functions;
use super::native::Native;

type Data = data::JustLut<Val>;
type Filter = jaq_core::Filter<Data>;

/// Filters a mapping must not call: they read the environment or the
/// process's input, write to stderr, or stop the process.
const FORBIDDEN_FILTERS: &[&str] = &[
    "env", "input", "inputs", "debug", "stderr", "halt", "halt_error", "input_filename",
    "input_line_number", "get_search_list", "$__prog_args", "$ENV",
];

/// An expression produces at most this many values; more means the
/// mapping is wrong (or hostile) and the evaluation stops.
pub const MAX_OUTPUTS: usize = 10_000;

/// A compiled jq expression.
pub struct Expr {
    code: String,
    /// Line of the mapping file the expression is written on (0: unknown).
    line: u64,
    /// Code lists the expression looks up, by name.
    codelists: Vec<String>,
    filter: Filter,
    /// The expression for the native evaluator, if it can take all of it.
    native: Option<Native>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.code)
    }
}

/// Why an expression could not be compiled or evaluated; the text names
/// the problem but never the data it ran on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExprError(pub String);

/// The values bound to the global variables (see [`functions::GLOBALS`]),
/// bound once per document rather than once per expression run.
pub struct Globals {
    vars: Vars<Val>,
    /// The same values for the native evaluator.
    pub(super) submission: Val,
    pub(super) codelists: Val,
    pub(super) now: Val,
}

impl Globals {
    /// `codelists`: code list name → code → value; `now`: what `now`
    /// returns, in seconds since 1970.
    pub fn new(submission: Val, codelists: Val, now: Val) -> Self {
        Self { vars: Vars::new([submission.clone(), codelists.clone(), now.clone()]), submission, codelists, now }
    }
}

impl Expr {
    pub fn compile(code: &str, line: u64) -> Result<Self, ExprError> {
        Self::compile_with(code, line, Definitions::Reached)
    }

    fn compile_with(code: &str, line: u64, definitions: Definitions) -> Result<Self, ExprError> {
        let tokens = lex::Lexer::new(code)
            .lex()
            .map_err(|errs| ExprError(format!("syntax error: {}", describe_lex(&errs, code))))?;
        refuse_forbidden(&tokens)?;
        let mut codelists = Vec::new();
        find_lookups(&tokens, &mut codelists)?;

        let loader = Loader::new(match definitions {
            Definitions::Reached => {
                let mut words = HashSet::new();
                words_in(&tokens, &mut words);
                definitions_reached(words)
            }
            Definitions::All => DEFINITIONS.clone(),
        });
        let arena = Arena::default();
        let modules = loader.load(&arena, File { code, path: () }).map_err(|errs| {
            let text = errs
                .into_iter()
                .map(|(_, e)| match e {
                    jaq_core::load::Error::Lex(l) => describe_lex(&l, code),
                    jaq_core::load::Error::Parse(p) => {
                        p.iter().map(|(expect, rest)| expected_at(expect.as_str(), rest, code)).collect::<Vec<_>>().join("; ")
                    }
                    jaq_core::load::Error::Io(io) => {
                        io.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>().join("; ")
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            ExprError(format!("syntax error: {text}"))
        })?;
        // The forbidden natives stay registered because standard
        // definitions are built on them; user code cannot name them (see
        // `refuse_forbidden`). `now` is the prelude's pinnable clock.
        let funs = jaq_core::funs()
            .chain(jaq_std::funs().filter(|(name, _, _)| *name != "now"))
            .chain(jaq_json::funs())
            .chain(functions::natives());
        let filter = jaq_core::Compiler::default()
            .with_funs(funs)
            .with_global_vars(functions::GLOBALS)
            .compile(modules)
            .map_err(|errs| {
                let text = errs
                    .into_iter()
                    .flat_map(|(_, es)| es)
                    .map(|(name, undefined)| format!("undefined {} {name}", undefined.as_str()))
                    .collect::<Vec<_>>()
                    .join("; ");
                ExprError(text)
            })?;
        Ok(Self { code: code.to_owned(), line, codelists, filter, native: Native::of(code) })
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    pub fn line(&self) -> u64 {
        self.line
    }

    /// The code lists this expression looks up.
    pub fn codelists(&self) -> &[String] {
        &self.codelists
    }

    /// Runs the expression on `input` and collects its values.
    pub fn eval(&self, input: &Val, globals: &Globals) -> Result<Vec<Val>, ExprError> {
        if let Some(Ok(values)) = self.native.as_ref().map(|native| native.values(input, globals)) {
            return Ok(values);
        }
        self.run(input, globals)
    }

    /// The value of the expression if it is a plain path (`.a.b`), borrowed
    /// from `input` (`Some(None)`: null); `None` where [`Self::eval`] must
    /// answer.
    pub fn plain_path<'v>(&self, input: &'v Val) -> Option<Option<&'v Val>> {
        self.native.as_ref()?.plain_path(input)
    }

    /// Whether the native evaluator takes the expression (tests and the
    /// differential fuzz target compare it with jaq).
    pub fn is_native(&self) -> bool {
        self.native.is_some()
    }

    /// Runs the expression in jaq alone, as [`Self::eval`] does when the
    /// native evaluator does not answer.
    pub fn run(&self, input: &Val, globals: &Globals) -> Result<Vec<Val>, ExprError> {
        let ctx = Ctx::<Data>::new(&self.filter.lut, globals.vars.clone());
        let mut out = Vec::new();
        for value in self.filter.id.run((ctx, input.clone())).map(unwrap_valr) {
            if out.len() == MAX_OUTPUTS {
                return Err(ExprError(format!("yields more than {MAX_OUTPUTS} values")));
            }
            // jaq's error values carry the offending value; render only its
            // type so that form data never reaches a log line.
            out.push(value.map_err(|e| ExprError(describe_runtime(&e)))?);
        }
        Ok(out)
    }
}

/// jaq's standard definitions and the prelude's, in order, parsed once.
static DEFINITIONS: LazyLock<Vec<Def<&'static str>>> = LazyLock::new(|| {
    let prelude = jaq_core::load::parse(functions::PRELUDE, |p| p.defs()).expect("the prelude parses");
    jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs()).chain(prelude).collect()
});

/// Which standard definitions an expression is compiled with.
enum Definitions {
    /// Those it can reach.
    Reached,
    /// All (only to compare with in tests).
    #[cfg_attr(not(test), allow(dead_code))]
    All,
}

/// The standard definitions an expression can reach from `words` (its
/// names), in order. jaq compiles every definition it is given into each
/// expression, about 200 KiB apiece, and a mapping has dozens of
/// expressions in every sandbox process and in the server; most use a
/// handful. A definition sees only those before it (and itself), so one
/// pass from the last to the first finds all it needs. Names are matched
/// without arity, which may keep a definition too many, never one too few:
/// a call whose definition was left out could otherwise reach a native of
/// the same name.
fn definitions_reached(mut words: HashSet<&str>) -> Vec<Def<&str>> {
    let mut reached: Vec<&Def<&'static str>> = Vec::new();
    for def in DEFINITIONS.iter().rev() {
        if words.contains(def.name) {
            names_in(&def.body, &mut words);
            reached.push(def);
        }
    }
    reached.into_iter().rev().cloned().collect()
}

/// Every word and format (`@csv`) among `tokens`: the names an expression
/// may call.
fn words_in<'s>(tokens: &[lex::Token<&'s str>], words: &mut HashSet<&'s str>) {
    for lex::Token(text, tok) in tokens {
        match tok {
            lex::Tok::Word | lex::Tok::Fmt => {
                words.insert(text);
            }
            lex::Tok::Block(inner) => words_in(inner, words),
            lex::Tok::Str(parts) => {
                for part in parts {
                    if let lex::StrPart::Term(t) = part {
                        words_in(std::slice::from_ref(t), words);
                    }
                }
            }
            lex::Tok::Var | lex::Tok::Num | lex::Tok::Sym => {}
        }
    }
}

/// Every name a definition's body calls (or formats with), its local
/// definitions' included.
fn names_in<'s>(term: &parse::Term<&'s str>, names: &mut HashSet<&'s str>) {
    use parse::Term as T;
    match term {
        T::Id | T::Recurse | T::Num(_) | T::Break(_) | T::Var(_) => {}
        T::Str(format, parts) => {
            names.extend(format.iter().copied());
            for part in parts {
                if let lex::StrPart::Term(t) = part {
                    names_in(t, names);
                }
            }
        }
        T::Arr(inner) => inner.iter().for_each(|t| names_in(t, names)),
        T::Obj(pairs) => {
            for (key, value) in pairs {
                names_in(key, names);
                value.iter().for_each(|t| names_in(t, names));
            }
        }
        T::Neg(inner) | T::Label(_, inner) => names_in(inner, names),
        T::BinOp(l, op, r) => {
            if let parse::BinaryOp::Pipe(Some(pattern)) = op {
                names_in_pattern(pattern, names);
            }
            names_in(l, names);
            names_in(r, names);
        }
        T::Fold(_, xs, pattern, args) => {
            names_in(xs, names);
            names_in_pattern(pattern, names);
            args.iter().for_each(|t| names_in(t, names));
        }
        T::TryCatch(body, catch) => {
            names_in(body, names);
            catch.iter().for_each(|t| names_in(t, names));
        }
        T::IfThenElse(branches, otherwise) => {
            for (condition, then) in branches {
                names_in(condition, names);
                names_in(then, names);
            }
            otherwise.iter().for_each(|t| names_in(t, names));
        }
        T::Def(defs, rest) => {
            for def in defs {
                names_in(&def.body, names);
            }
            names_in(rest, names);
        }
        T::Call(name, args) => {
            names.insert(name);
            args.iter().for_each(|t| names_in(t, names));
        }
        T::Path(head, path) => {
            names_in(head, names);
            for (part, _) in &path.0 {
                match part {
                    jaq_core::path::Part::Index(i) => names_in(i, names),
                    jaq_core::path::Part::Range(from, to) => from.iter().chain(to).for_each(|t| names_in(t, names)),
                }
            }
        }
    }
}

fn names_in_pattern<'s>(pattern: &parse::Pattern<&'s str>, names: &mut HashSet<&'s str>) {
    match pattern {
        parse::Pattern::Var(_) => {}
        parse::Pattern::Arr(patterns) => patterns.iter().for_each(|p| names_in_pattern(p, names)),
        parse::Pattern::Obj(pairs) => {
            for (key, pattern) in pairs {
                names_in(key, names);
                names_in_pattern(pattern, names);
            }
        }
    }
}

/// Collects the names of `lookup("name")` calls; the name must be a
/// literal so that `amtsbote check` can verify the code list exists.
fn find_lookups(tokens: &[lex::Token<&str>], names: &mut Vec<String>) -> Result<(), ExprError> {
    let mut iter = tokens.iter().peekable();
    while let Some(lex::Token(text, tok)) = iter.next() {
        match tok {
            lex::Tok::Word if *text == "lookup" => {
                let literal = match iter.peek() {
                    Some(lex::Token(_, lex::Tok::Block(inner))) => {
                        let args: Vec<_> = inner.iter().filter(|t| !matches!(t.1, lex::Tok::Sym)).collect();
                        match args.as_slice() {
                            [lex::Token(_, lex::Tok::Str(parts))] => match parts.as_slice() {
                                [lex::StrPart::Str(name)] => Some(name.to_string()),
                                _ => None,
                            },
                            _ => None,
                        }
                    }
                    _ => None,
                };
                match literal {
                    Some(name) => names.push(name),
                    None => {
                        return Err(ExprError(
                            "lookup takes the code list's name as a literal string, e.g. lookup(\"rechtsform\")".into(),
                        ));
                    }
                }
            }
            lex::Tok::Block(inner) => find_lookups(inner, names)?,
            lex::Tok::Str(parts) => {
                for part in parts {
                    if let lex::StrPart::Term(t) = part {
                        find_lookups(std::slice::from_ref(t), names)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn describe_lex(errs: &[lex::Error<&str>], code: &str) -> String {
    errs.iter().map(|(expect, rest)| expected_at(expect.as_str(), rest, code)).collect::<Vec<_>>().join("; ")
}

/// jaq reports where it stopped as the rest of the code.
fn expected_at(what: &str, rest: &str, code: &str) -> String {
    format!("expected {what} at character {}", code.len().saturating_sub(rest.len()) + 1)
}

fn describe_runtime(error: &jaq_core::Error<Val>) -> String {
    // jaq's messages embed the values involved ("cannot calculate \"Anna\"
    // + 1"); those come from the submission, so keep only the leading
    // words that name the kind of failure, plus a trailing "as <type>".
    if let Val::TStr(message) = error.clone().into_val()
        && let Some(own) = String::from_utf8_lossy(&message).strip_prefix(functions::OWN_ERROR)
    {
        return own.to_owned();
    }
    let text = error.to_string();
    let kind: Vec<&str> = text
        .split(' ')
        .take_while(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
        .collect();
    if kind.is_empty() {
        return "evaluation failed: error raised by the expression".into();
    }
    let mut description = format!("evaluation failed: {} …", kind.join(" "));
    if let Some((_, typ)) = text.rsplit_once(" as ")
        && typ.bytes().all(|b| b.is_ascii_lowercase()) {
            description.push_str(&format!(" as {typ}"));
        }
    description
}

fn refuse_forbidden(tokens: &[lex::Token<&str>]) -> Result<(), ExprError> {
    for lex::Token(text, tok) in tokens {
        match tok {
            lex::Tok::Word if *text == "def" => {
                return Err(ExprError(
                    "function definitions (def) are not allowed in mappings".into(),
                ));
            }
            lex::Tok::Word | lex::Tok::Var if FORBIDDEN_FILTERS.contains(text) => {
                return Err(ExprError(format!("{text} is not available in mappings")));
            }
            lex::Tok::Block(inner) => refuse_forbidden(inner)?,
            lex::Tok::Str(parts) => {
                for part in parts {
                    if let lex::StrPart::Term(t) = part {
                        refuse_forbidden(std::slice::from_ref(t))?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(json: &str) -> Val {
        serde_json::from_str(json).unwrap()
    }

    fn eval(code: &str, input: &str) -> Result<Vec<String>, ExprError> {
        let input = val(input);
        let globals = Globals::new(input.clone(), val(r#"{"rf":{"gmbh":"310"}}"#), Val::from(1_439_071_200isize));
        Ok(Expr::compile(code, 1)?.eval(&input, &globals)?.iter().map(|v| v.to_string()).collect())
    }

    #[test]
    fn evaluates_paths_std_and_submission_var() {
        assert_eq!(eval(".a.b", r#"{"a":{"b":"x"}}"#).unwrap(), [r#""x""#]);
        assert_eq!(eval(".xs[] | ascii_upcase", r#"{"xs":["a","b"]}"#).unwrap(), [r#""A""#, r#""B""#]);
        assert_eq!(eval("$submission.id", r#"{"id":7}"#).unwrap(), ["7"]);
        assert_eq!(eval("empty", "{}").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn an_expression_compiles_with_the_definitions_it_reaches_as_with_all() {
        // Every standard and prelude definition, called alone: compiled
        // with only what it reaches, it compiles (or is refused) exactly as
        // with all definitions, so the reached set is never short.
        let mut calls: Vec<String> = DEFINITIONS
            .iter()
            .filter(|def| !def.name.starts_with('!'))
            .map(|def| match def.args.len() {
                0 => def.name.to_owned(),
                n => format!("{}({})", def.name, vec!["."; n].join("; ")),
            })
            .collect();
        calls.push("[.[] | tostring] | join(\",\") | ascii_downcase | split(\",\") | map(ltrimstr(\"a\")) | @base64".into());
        for code in &calls {
            let reached = Expr::compile_with(code, 1, Definitions::Reached).map(|_| ());
            let all = Expr::compile_with(code, 1, Definitions::All).map(|_| ());
            assert_eq!(reached.map_err(|e| e.0), all.map_err(|e| e.0), "{code}");
        }
        // And runs as with all definitions.
        let input = val(r#"["ab", "ac", 1]"#);
        let globals = Globals::new(Val::Null, Val::obj(Default::default()), Val::from(0isize));
        let code = calls.last().unwrap();
        let run = |definitions| Expr::compile_with(code, 1, definitions).unwrap().run(&input, &globals).unwrap();
        assert_eq!(run(Definitions::Reached), run(Definitions::All));
    }

    #[test]
    fn refuses_definitions_and_environment_access() {
        for code in ["def f: f; f", "env.HOME", "$ENV.PATH", "input", "[.[] | debug]", "\"\\(env)\"", "halt"] {
            let err = Expr::compile(code, 1).unwrap_err();
            assert!(err.0.contains("not"), "{code}: {err}");
        }
    }

    #[test]
    fn reports_syntax_and_undefined_names() {
        assert!(Expr::compile(".a |", 1).unwrap_err().0.starts_with("syntax error"));
        assert!(Expr::compile("nosuchfilter", 1).unwrap_err().0.contains("undefined"));
        assert!(Expr::compile("$nosuchvar", 1).unwrap_err().0.contains("undefined"));
    }

    fn one(code: &str, input: &str) -> String {
        let mut out = eval(code, input).unwrap_or_else(|e| panic!("{code}: {e}"));
        assert_eq!(out.len(), 1, "{code}: {out:?}");
        out.remove(0)
    }

    fn failure(code: &str, input: &str) -> String {
        eval(code, input).expect_err(code).0
    }

    #[test]
    fn dates_in_europe_berlin() {
        // Local midnight as a UTC instant: 9 August in Berlin (summer).
        assert_eq!(one(".t | local_date", r#"{"t":"2015-08-08T22:00:00+0000"}"#), r#""2015-08-09""#);
        assert_eq!(one(".t | local_date", r#"{"t":"2015-08-08T22:00:00Z"}"#), r#""2015-08-09""#);
        // Winter: UTC+1.
        assert_eq!(one(".t | local_date", r#"{"t":"1961-01-14T23:00:00+00:00"}"#), r#""1961-01-15""#);
        assert_eq!(one(".t | local_date", r#"{"t":"2015-08-09"}"#), r#""2015-08-09""#);
        assert_eq!(one(".t | local_datetime", r#"{"t":"2015-08-08T22:00:00+0000"}"#), r#""2015-08-09T00:00:00+02:00""#);
        assert_eq!(one(r#".t | date_format("DDMMYYYY")"#, r#"{"t":"1980-03-07"}"#), r#""07031980""#);
        assert_eq!(one(r#".t | date_format("DD.MM.YYYY hh:mm")"#, r#"{"t":"2015-08-08T22:30:00Z"}"#), r#""09.08.2015 00:30""#);
        assert_eq!(one(r#".t | date_parse("DD.MM.YYYY")"#, r#"{"t":"07.03.1980"}"#), r#""1980-03-07""#);
        assert_eq!(one(".t | local_date", r#"{"t":null}"#), "null");
        assert_eq!(one("now", "{}"), "1439071200");
        assert_eq!(one("now | local_date", "{}"), r#""2015-08-09""#);
        let err = failure(".t | local_date", r#"{"t":"Anna Musterfrau"}"#);
        assert!(err.contains("local_date expects") && !err.contains("Anna"), "{err}");
        let err = failure(r#".t | date_parse("DD.MM.YYYY")"#, r#"{"t":"31.02.1980"}"#);
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn code_lists_defaults_and_strings() {
        assert_eq!(one(r#".f | lookup("rf")"#, r#"{"f":"gmbh"}"#), r#""310""#);
        assert_eq!(one(r#".f | lookup("rf")"#, r#"{"f":null}"#), "null");
        let err = failure(r#".f | lookup("rf")"#, r#"{"f":"ag"}"#);
        assert_eq!(err, r#""ag" is not in code list "rf""#);
        let err = failure(r#".f | lookup("rf")"#, r#"{"f":"Anna Musterfrau GmbH"}"#);
        assert!(err.contains("a string of 20 characters") && !err.contains("Anna"), "{err}");
        assert_eq!(one(r#".f | lookup("rf")? // "999""#, r#"{"f":"ag"}"#), r#""999""#);
        assert!(Expr::compile(r#"lookup(.name)"#, 1).unwrap_err().0.contains("literal"));
        assert_eq!(Expr::compile(r#"[.a | lookup("x"), "\(.b | lookup("y"))"]"#, 1).unwrap().codelists(), ["x", "y"]);
        assert_eq!(one(r#".a | default("-")"#, r#"{"a":"  "}"#), r#""-""#);
        assert_eq!(one(r#".a | default("-")"#, r#"{"a":"x"}"#), r#""x""#);
        assert_eq!(eval(".a | nonblank", r#"{"a":""}"#).unwrap().len(), 0);
        assert_eq!(one("[.a | items]", r#"{"a":{"x":1}}"#), r#"[{"x":1}]"#);
        assert_eq!(one("[.a | items]", r#"{"a":[1,2]}"#), "[1,2]");
        assert_eq!(one("[.a | items]", r#"{"a":null}"#), "[]");
        assert_eq!(one(".a | upper", r#"{"a":"straße"}"#), r#""STRASSE""#);
        assert_eq!(one(".a | lower", r#"{"a":"ÄRGER"}"#), r#""ärger""#);
        assert_eq!(one(".a | normalize_space", r#"{"a":"  a \n b  "}"#), r#""a b""#);
        assert_eq!(one(".a | truncate(3)", r#"{"a":"Müller"}"#), r#""Mül""#);
        assert_eq!(one(r#".a | pad_left(5; "0")"#, r#"{"a":42}"#), r#""00042""#);
    }

    #[test]
    fn ids_are_stable_per_submission() {
        let input = r#"{"id":"0b7f3c1e-8a44-4a57-9a6f-0a3f4f0f2a11"}"#;
        let first = one(r#"uuid("nachricht")"#, input);
        assert_eq!(first, one(r#"uuid("nachricht")"#, input));
        assert_ne!(first, one(r#"uuid("vorgang")"#, input));
        assert_eq!(first.len(), 38);
    }

    #[test]
    fn attachments_by_purpose() {
        let input = r#"{"attachments":[{"name":"a.pdf","purpose":"form"},{"name":"b.jpg","purpose":"attachment"}]}"#;
        assert_eq!(one(r#"[attachments("attachment") | .name]"#, input), r#"["b.jpg"]"#);
        assert_eq!(one(r#"[attachments | .name]"#, input), r#"["a.pdf","b.jpg"]"#);
        assert_eq!(one(r#"[attachments | .name]"#, "{}"), "[]");
    }

    #[test]
    fn caps_output_count() {
        let err = eval("range(100000)", "null").unwrap_err();
        assert!(err.0.contains("more than"), "{err}");
    }

    #[test]
    fn runtime_errors_do_not_echo_data() {
        let err = eval(".secret + 1", r#"{"secret":"Geheimnis"}"#).unwrap_err();
        assert!(!err.0.contains("Geheimnis"), "{err}");
    }

    #[test]
    fn compiled_expressions_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Expr>();
    }
}
