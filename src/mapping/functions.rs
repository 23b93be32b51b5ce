//! The functions amtsbote adds to jq for mappings: dates in Europe/Berlin,
//! code lists, defaults, strings, attachments, ids and a clock that tests
//! can pin. README.md ("Mapping guide") documents each with an example.
//!
//! Natives are Rust; the rest is a jq prelude built on them. Errors the
//! functions raise start with [`OWN_ERROR`] so that the evaluator can show
//! them verbatim: they are written not to contain form data (a code that
//! looks like a code is named, anything longer only by its length).

use std::sync::OnceLock;

use jaq_core::native::{Filter, Fun, bome, run, v};
use jaq_core::{Cv, Error, RunPtr, ValR, ValXs, data};
use jaq_json::Val;
use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;

type Data = data::JustLut<Val>;

/// Prefix of error messages raised by these functions.
pub const OWN_ERROR: &str = "amtsbote: ";

/// Global variables every expression sees, in the order
/// [`super::expr::Expr::eval`] binds them.
pub const GLOBALS: [&str; 3] = ["$submission", "$__codelists", "$__now"];

/// Definitions in jq, on top of the natives below.
pub const PRELUDE: &str = r#"
def now: $__now;
def lookup($list): __lookup($__codelists[$list]; $list);
def uuid($name): __uuid5($submission.id; $name);
def uuid: uuid("");
def default($value): if . == null or (type == "string" and (trim == "")) then $value else . end;
def nonblank: select(. != null and (type != "string" or (trim != "")));
def items: if . == null then empty elif type == "array" then .[] else . end;
def attachments: $submission.attachments[]?;
def attachments($purpose): attachments | select(.purpose == $purpose);
"#;

/// The natives, registered next to jaq's standard ones; each computes
/// what [`direct`] says for its name.
pub fn natives() -> impl Iterator<Item = Fun<Data>> {
    let natives: Box<[Filter<RunPtr<Data>>]> = Box::new([
        ("local_date", v(0), |cv| by_direct(cv, "local_date", 0)),
        ("local_datetime", v(0), |cv| by_direct(cv, "local_datetime", 0)),
        ("date_format", v(1), |cv| by_direct(cv, "date_format", 1)),
        ("date_parse", v(1), |cv| by_direct(cv, "date_parse", 1)),
        ("__lookup", v(2), |cv| by_direct(cv, "__lookup", 2)),
        ("__uuid5", v(2), |cv| by_direct(cv, "__uuid5", 2)),
        ("upper", v(0), |cv| by_direct(cv, "upper", 0)),
        ("lower", v(0), |cv| by_direct(cv, "lower", 0)),
        ("normalize_space", v(0), |cv| by_direct(cv, "normalize_space", 0)),
        ("truncate", v(1), |cv| by_direct(cv, "truncate", 1)),
        ("pad_left", v(2), |cv| by_direct(cv, "pad_left", 2)),
    ]);
    natives.into_vec().into_iter().map(run::<Data>)
}

/// A native as a function of the input and its arguments' values (bound
/// like `$name` parameters, in order).
pub(super) type Direct = fn(&Val, &[Val]) -> ValR<Val>;

/// What each native computes, by name and number of arguments: jaq calls
/// them through [`natives`], the native evaluator ([`super::native`])
/// directly.
pub(super) fn direct(name: &str, arity: usize) -> Option<Direct> {
    Some(match (name, arity) {
        ("local_date", 0) => |v, _| local_date(v),
        ("local_datetime", 0) => |v, _| local_datetime(v),
        ("date_format", 1) => |v, args| date_format(v, &args[0]),
        ("date_parse", 1) => |v, args| date_parse(v, &args[0]),
        ("__lookup", 2) => |v, args| lookup(v, &args[0], &args[1]),
        ("__uuid5", 2) => |_, args| uuid5(&args[0], &args[1]),
        ("upper", 0) => |v, _| map_text(v, "upper", |s| s.to_uppercase()),
        ("lower", 0) => |v, _| map_text(v, "lower", |s| s.to_lowercase()),
        ("normalize_space", 0) => {
            |v, _| map_text(v, "normalize_space", |s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        }
        ("truncate", 1) => |v, args| truncate(v, &args[0]),
        ("pad_left", 2) => |v, args| pad_left(v, &args[0], &args[1]),
        _ => return None,
    })
}

/// Runs the native `name` for jaq: its arguments come off the context's
/// variables, the last first.
fn by_direct<'a>(mut cv: Cv<'a, Data>, name: &str, arity: usize) -> ValXs<'a, Val> {
    let mut args: Vec<Val> = (0..arity).map(|_| cv.0.pop_var()).collect();
    args.reverse();
    let function = direct(name, arity).expect("every native registered has its function");
    bome(function(&cv.1, &args))
}

fn own_error(message: String) -> Error<Val> {
    Error::str(format!("{OWN_ERROR}{message}"))
}

fn fail<T>(message: String) -> Result<T, Error<Val>> {
    Err(own_error(message))
}

pub(super) fn text(v: &Val) -> Option<String> {
    match v {
        Val::TStr(s) => Some(String::from_utf8_lossy(s).into_owned()),
        _ => None,
    }
}

fn type_name(v: &Val) -> &'static str {
    match v {
        Val::Null => "null",
        Val::Bool(_) => "boolean",
        Val::Num(_) => "number",
        Val::TStr(_) | Val::BStr(_) => "string",
        Val::Arr(_) => "array",
        Val::Obj(_) => "object",
    }
}

/// How a value from a form appears in an error: only by its shape.
fn describe(v: &Val) -> String {
    match v {
        Val::TStr(_) => format!("a string of {} characters", text(v).unwrap_or_default().chars().count()),
        other => format!("a {}", type_name(other)),
    }
}

/// How a code that a code list lacks appears in an error: short codes
/// (letters, digits, `-`, `_`; such as `eK`, `CL`, `170`) as they are, so
/// that an operator sees what to add; anything else only by its shape.
fn describe_code(v: &Val) -> String {
    let shown = match v {
        Val::TStr(_) => text(v).unwrap_or_default(),
        Val::Num(n) => n.to_string(),
        _ => return describe(v),
    };
    let code_like = shown.chars().count() <= 8 && shown.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
    if code_like { format!("{shown:?}") } else { describe(v) }
}

fn berlin() -> &'static TimeZone {
    static BERLIN: OnceLock<TimeZone> = OnceLock::new();
    BERLIN.get_or_init(|| TimeZone::get("Europe/Berlin").expect("the bundled time zone database has Europe/Berlin"))
}

/// A point in time or a calendar date, as mappings receive them.
enum When {
    Date(Date),
    Instant(Timestamp),
}

fn when(v: &Val, function: &str) -> Result<When, Error<Val>> {
    let expected = || {
        own_error(format!(
            "{function} expects a date (YYYY-MM-DD), an RFC 3339 instant or seconds since 1970, got {}",
            describe(v)
        ))
    };
    match v {
        Val::Num(_) => {
            let seconds: f64 = v.to_string().parse().map_err(|_| expected())?;
            let whole = seconds.floor();
            let nanos = ((seconds - whole) * 1e9) as i32;
            Timestamp::new(whole as i64, nanos).map(When::Instant).map_err(|_| expected())
        }
        Val::TStr(_) => {
            let s = text(v).unwrap_or_default();
            if s.len() == 10 {
                return s.parse::<Date>().map(When::Date).map_err(|_| expected());
            }
            // Form servers write offsets without a colon (`+0000`), which
            // RFC 3339 does not allow; accept them.
            let normalized = match s.len().checked_sub(5).map(|i| s.split_at(i)) {
                Some((head, tail))
                    if (tail.starts_with('+') || tail.starts_with('-')) && tail[1..].bytes().all(|b| b.is_ascii_digit()) =>
                {
                    format!("{head}{}:{}", &tail[..3], &tail[3..])
                }
                _ => s,
            };
            normalized.parse::<Timestamp>().map(When::Instant).map_err(|_| expected())
        }
        _ => Err(expected()),
    }
}

fn local(when: When) -> DateTime {
    match when {
        When::Date(d) => d.to_datetime(jiff::civil::Time::midnight()),
        When::Instant(t) => t.to_zoned(berlin().clone()).datetime(),
    }
}

fn local_date(v: &Val) -> ValR<Val> {
    if matches!(v, Val::Null) {
        return Ok(Val::Null);
    }
    let date = local(when(v, "local_date")?).date();
    Ok(Val::from(date.to_string()))
}

fn local_datetime(v: &Val) -> ValR<Val> {
    match when(v, "local_datetime")? {
        When::Date(_) => fail("local_datetime needs an instant, not a date".into()),
        When::Instant(t) => Ok(Val::from(t.to_zoned(berlin().clone()).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string())),
    }
}

/// `YYYY`, `MM`, `DD`, `hh`, `mm`, `ss` in a pattern, as strftime.
fn strftime_pattern(pattern: &Val, function: &str) -> Result<String, Error<Val>> {
    let Some(pattern) = text(pattern) else {
        return Err(own_error(format!("{function} needs a pattern string such as \"DD.MM.YYYY\"")));
    };
    let mut out = String::new();
    let mut rest = pattern.as_str();
    while !rest.is_empty() {
        let token = ["YYYY", "MM", "DD", "hh", "mm", "ss"].into_iter().find(|t| rest.starts_with(t));
        match token {
            Some(t) => {
                out.push_str(match t {
                    "YYYY" => "%Y",
                    "MM" => "%m",
                    "DD" => "%d",
                    "hh" => "%H",
                    "mm" => "%M",
                    _ => "%S",
                });
                rest = &rest[t.len()..];
            }
            None => {
                let c = rest.chars().next().expect("rest is not empty");
                if c == '%' {
                    out.push_str("%%");
                } else {
                    out.push(c);
                }
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    Ok(out)
}

fn date_format(v: &Val, pattern: &Val) -> ValR<Val> {
    if matches!(v, Val::Null) {
        return Ok(Val::Null);
    }
    let format = strftime_pattern(pattern, "date_format")?;
    let local = local(when(v, "date_format")?);
    Ok(Val::from(local.strftime(&format).to_string()))
}

fn date_parse(v: &Val, pattern: &Val) -> ValR<Val> {
    if matches!(v, Val::Null) {
        return Ok(Val::Null);
    }
    let format = strftime_pattern(pattern, "date_parse")?;
    let Some(s) = text(v) else {
        return fail(format!("date_parse expects a string, got {}", describe(v)));
    };
    let with_time = format.contains("%H");
    let parsed = if with_time {
        DateTime::strptime(&format, s.trim()).map(|dt| dt.strftime("%Y-%m-%dT%H:%M:%S").to_string())
    } else {
        Date::strptime(&format, s.trim()).map(|d| d.to_string())
    };
    match parsed {
        Ok(iso) => Ok(Val::from(iso)),
        Err(_) => fail(format!("date_parse: {} does not match the pattern {:?}", describe(v), text(pattern).unwrap_or_default())),
    }
}

fn lookup(code: &Val, table: &Val, name: &Val) -> ValR<Val> {
    let name = text(name).unwrap_or_default();
    let Val::Obj(entries) = table else {
        return fail(format!("there is no code list {name:?}"));
    };
    let key = match code {
        Val::Null => return Ok(Val::Null),
        Val::TStr(_) => code.clone(),
        Val::Num(n) => Val::from(n.to_string()),
        other => return fail(format!("lookup in code list {name:?} needs a string or number, got {}", describe(other))),
    };
    match entries.get(&key) {
        Some(value) => Ok(value.clone()),
        None => fail(format!("{} is not in code list {name:?}", describe_code(code))),
    }
}

fn uuid5(namespace: &Val, name: &Val) -> ValR<Val> {
    let name = text(name).unwrap_or_else(|| name.to_string());
    match text(namespace).and_then(|namespace| uuid5_text(&namespace, &name)) {
        Some(uuid) => Ok(uuid),
        None => fail("uuid needs the submission's id ($submission.id) to be a UUID".into()),
    }
}

/// The UUID (version 5) for `name` in the namespace `namespace`, if that
/// is a UUID.
fn uuid5_text(namespace: &str, name: &str) -> Option<Val> {
    let namespace = namespace.parse::<uuid::Uuid>().ok()?;
    Some(Val::from(uuid::Uuid::new_v5(&namespace, name.as_bytes()).to_string()))
}

fn map_text(v: &Val, function: &str, f: impl Fn(&str) -> String) -> ValR<Val> {
    match v {
        Val::Null => Ok(Val::Null),
        Val::TStr(_) => Ok(Val::from(f(&text(v).unwrap_or_default()))),
        other => fail(format!("{function} expects a string, got {}", describe(other))),
    }
}

fn count(n: &Val, function: &str) -> Result<usize, Error<Val>> {
    n.to_string()
        .parse::<usize>()
        .ok()
        .filter(|&n| n <= 10_000)
        .ok_or_else(|| own_error(format!("{function} needs a whole number from 0 to 10000")))
}

fn truncate(v: &Val, n: &Val) -> ValR<Val> {
    let n = count(n, "truncate")?;
    map_text(v, "truncate", |s| s.chars().take(n).collect())
}

fn pad_left(v: &Val, width: &Val, fill: &Val) -> ValR<Val> {
    let width = count(width, "pad_left")?;
    let fill = match text(fill).and_then(|f| f.chars().next().filter(|_| f.chars().count() == 1)) {
        Some(c) => c,
        None => return fail("pad_left needs one fill character, such as \"0\"".into()),
    };
    let s = match v {
        Val::TStr(_) => text(v).unwrap_or_default(),
        Val::Num(n) => n.to_string(),
        Val::Null => return Ok(Val::Null),
        other => return fail(format!("pad_left expects a string or number, got {}", describe(other))),
    };
    let missing = width.saturating_sub(s.chars().count());
    Ok(Val::from(std::iter::repeat_n(fill, missing).chain(s.chars()).collect::<String>()))
}
