//! The native evaluator gives what jaq gives. An input is an expression
//! (its first line) and a value (the rest, JSON); an expression the
//! native evaluator takes is evaluated both ways on the value, which is
//! also the submission. Expressions and values are kept short, so that a
//! doubling expression stays small in both evaluators.
#![no_main]

use amtsbote::mapping::expr::{Expr, Globals};
use jaq_json::Val;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some((code, json)) = text.split_once('\n') else { return };
    if code.len() > 80 || json.len() > 1024 {
        return;
    }
    let Ok(input) = serde_json::from_str::<Val>(json) else { return };
    let Ok(expr) = Expr::compile(code, 1) else { return };
    if !expr.is_native() {
        return;
    }
    let codelists = serde_json::from_str(r#"{"rf":{"gmbh":"310","ag":"320","7":"sieben"}}"#).unwrap();
    let globals = Globals::new(input.clone(), codelists, Val::from(1_439_071_200isize));
    let by_jaq = expr.run(&input, &globals);
    let either = expr.eval(&input, &globals);
    let text = |values: &[Val]| values.iter().map(ToString::to_string).collect::<Vec<_>>();
    match (&either, &by_jaq) {
        // Compared as written out and in their representation (an integer
        // is not a float of the same value); not with `==`, by which NaN
        // differs from itself.
        (Ok(native), Ok(jaq)) => {
            assert_eq!(text(native), text(jaq), "{code} on {json}");
            assert_eq!(format!("{native:?}"), format!("{jaq:?}"), "{code} on {json}");
        }
        (Err(native), Err(jaq)) => assert_eq!(native, jaq, "{code} on {json}"),
        _ => panic!("{code} on {json}: {either:?} against jaq's {by_jaq:?}"),
    }
    if let Some(found) = expr.plain_path(&input) {
        let found = vec![found.cloned().unwrap_or(Val::Null)];
        assert_eq!(Ok(format!("{found:?}")), by_jaq.map(|jaq| format!("{jaq:?}")), "{code} on {json}, as a plain path");
    }
});
