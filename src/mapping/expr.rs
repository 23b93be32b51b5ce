//! jq expressions (evaluated by jaq) as they appear in mapping leaves.
//!
//! Every expression is compiled once when its mapping is loaded. It sees
//! the current value as `.` and the whole submission as `$submission`.
//! Expressions run inside the worker process, so what could take the
//! process down is refused at load: user-defined functions (`def`, the one
//! way to write unbounded recursion, which overflows the stack and aborts)
//! and the filters that reach outside the document (`env`, `input`,
//! `debug`, `halt`, ...). Output count per evaluation is capped.

use jaq_core::load::{Arena, File, Loader, lex};
use jaq_core::{Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;

type Data = data::JustLut<Val>;
type Filter = jaq_core::Filter<Data>;

/// Filters a mapping must not call: they read the environment or the
/// process's input, write to stderr, or stop the process.
const FORBIDDEN_FILTERS: &[&str] = &[
    "env", "input", "inputs", "debug", "stderr", "halt", "halt_error", "input_filename",
    "input_line_number", "get_search_list", "$__prog_args",
];

/// An expression produces at most this many values; more means the
/// mapping is wrong (or hostile) and the evaluation stops.
pub const MAX_OUTPUTS: usize = 10_000;

/// A compiled jq expression.
pub struct Expr {
    code: String,
    filter: Filter,
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

impl Expr {
    pub fn compile(code: &str) -> Result<Self, ExprError> {
        let tokens = lex::Lexer::new(code)
            .lex()
            .map_err(|errs| ExprError(format!("syntax error: {}", describe_lex(&errs, code))))?;
        refuse_forbidden(&tokens)?;

        let loader = Loader::new(jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs()));
        let arena = Arena::default();
        let modules = loader.load(&arena, File { code, path: () }).map_err(|errs| {
            let text = errs
                .into_iter()
                .map(|(_, e)| match e {
                    jaq_core::load::Error::Lex(l) => describe_lex(&l, code),
                    jaq_core::load::Error::Parse(p) => p
                        .iter()
                        .map(|(expect, rest)| {
                            let offset = code.len().saturating_sub(rest.len());
                            format!("expected {} at character {}", expect.as_str(), offset + 1)
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
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
        // `refuse_forbidden`).
        let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
        let filter = jaq_core::Compiler::default()
            .with_funs(funs)
            .with_global_vars(["$submission"])
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
        Ok(Self { code: code.to_owned(), filter })
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    /// Runs the expression on `input` and collects its values.
    pub fn eval(&self, input: &Val, submission: &Val) -> Result<Vec<Val>, ExprError> {
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new([submission.clone()]));
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

fn describe_lex(errs: &[lex::Error<&str>], code: &str) -> String {
    errs.iter()
        .map(|(expect, rest)| {
            let offset = code.len() - rest.len();
            format!("expected {} at character {}", expect.as_str(), offset + 1)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_runtime(error: &jaq_core::Error<Val>) -> String {
    // jaq's messages embed the values involved ("cannot calculate \"Anna\"
    // + 1"); those come from the submission, so keep only the leading
    // words that name the kind of failure, plus a trailing "as <type>".
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
            lex::Tok::Var if *text == "$ENV" => {
                return Err(ExprError("$ENV is not available in mappings".into()));
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
        Ok(Expr::compile(code)?.eval(&input, &input)?.iter().map(|v| v.to_string()).collect())
    }

    #[test]
    fn evaluates_paths_std_and_submission_var() {
        assert_eq!(eval(".a.b", r#"{"a":{"b":"x"}}"#).unwrap(), [r#""x""#]);
        assert_eq!(eval(".xs[] | ascii_upcase", r#"{"xs":["a","b"]}"#).unwrap(), [r#""A""#, r#""B""#]);
        assert_eq!(eval("$submission.id", r#"{"id":7}"#).unwrap(), ["7"]);
        assert_eq!(eval("empty", "{}").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn refuses_definitions_and_environment_access() {
        for code in ["def f: f; f", "env.HOME", "$ENV.PATH", "input", "[.[] | debug]", "\"\\(env)\"", "halt"] {
            let err = Expr::compile(code).unwrap_err();
            assert!(err.0.contains("not"), "{code}: {err}");
        }
    }

    #[test]
    fn reports_syntax_and_undefined_names() {
        assert!(Expr::compile(".a |").unwrap_err().0.starts_with("syntax error"));
        assert!(Expr::compile("nosuchfilter").unwrap_err().0.contains("undefined"));
        assert!(Expr::compile("$nosuchvar").unwrap_err().0.contains("undefined"));
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
