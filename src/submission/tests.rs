use super::*;

const VALID: &str = r#"{"service":"99050012104000","region":"053150000000","reference":"OAA-2026-000123",
  "submittedAt":"2026-11-20T09:14:00Z","data":{"name":"Anna"},
  "attachments":[{"name":"antrag.pdf","mediaType":"application/pdf","purpose":"form","content":"JVBERi0xLjQ="}]}"#;

fn fields(body: &str) -> Vec<FieldError> {
    match Submission::parse(body.as_bytes(), &Limits::default()) {
        Err(InvalidSubmission::Fields(f)) => f,
        other => panic!("expected field errors, got {other:?}"),
    }
}

fn pointers(body: &str) -> Vec<String> {
    fields(body).into_iter().map(|f| f.pointer).collect()
}

#[test]
fn valid_submission_becomes_a_queue_message() {
    let s = Submission::parse(VALID.as_bytes(), &Limits::default()).unwrap();
    let id = Uuid::nil();
    let at = time::macros::datetime!(2026-11-20 09:15:00 UTC);
    let message: serde_json::Value = serde_json::from_slice(&s.to_message(id, at)).unwrap();
    assert_eq!(message["id"], "00000000-0000-0000-0000-000000000000");
    assert_eq!(message["receivedAt"], "2026-11-20T09:15:00.000Z");
    assert_eq!(message["data"]["name"], "Anna");
    assert_eq!(message["attachments"][0]["size"], 8);
    assert_eq!(message["attachments"][0]["content"], "JVBERi0xLjQ=");
}

#[test]
fn escaped_base64_as_php_writes_it_is_read_and_kept_out_like_any_other() {
    // json_encode writes `/` as `\/`; such a string cannot be borrowed.
    let escaped = VALID.replace("JVBERi0xLjQ=", r"JVBE\/i0xLjQ=").replace(r#""name":"Anna""#, r#""name":"Anna","x":"JVBERi0xLjQ=""#);
    let body = bytes::Bytes::from(escaped);
    let mut s = Submission::parse(&body, &Limits::default()).unwrap();
    let message: serde_json::Value = serde_json::from_slice(&s.to_message(Uuid::nil(), time::OffsetDateTime::UNIX_EPOCH)).unwrap();
    assert_eq!(message["attachments"][0]["content"], "JVBE/i0xLjQ=", "unescaped");
    assert_eq!(s.attachments_from(1, &body), [(0, bytes::Bytes::from_static(b"JVBE/i0xLjQ="))]);
    let blob = crate::domain::BlobId::parse(&"ab".repeat(32)).unwrap();
    s.keep_out(0, blob);
    assert!(s.attachments_from(1, &body).is_empty(), "kept out once");
    let message: serde_json::Value = serde_json::from_slice(&s.to_message(Uuid::nil(), time::OffsetDateTime::UNIX_EPOCH)).unwrap();
    assert_eq!(message["attachments"][0]["blob"], "ab".repeat(32));
    assert!(message["attachments"][0].get("content").is_none());

    let body = bytes::Bytes::from_static(VALID.as_bytes());
    let s = Submission::parse(&body, &Limits::default()).unwrap();
    assert_eq!(s.attachments_from(8, &body), [(0, bytes::Bytes::from_static(b"JVBERi0xLjQ="))], "a slice of the body");
    assert!(s.attachments_from(9, &body).is_empty(), "smaller than asked for");
}

#[test]
fn malformed_json_is_malformed() {
    assert!(matches!(Submission::parse(b"{\"service\":", &Limits::default()), Err(InvalidSubmission::Malformed(_))));
    let trailing = format!("{VALID} {{}}");
    assert!(matches!(Submission::parse(trailing.as_bytes(), &Limits::default()), Err(InvalidSubmission::Malformed(_))));
    assert_eq!(pointers(" [1]"), ["#"]);
}

#[test]
fn each_bad_field_is_named() {
    let with = |from: &str, to: &str| VALID.replace(from, to);
    assert_eq!(pointers(&with("\"service\":\"99050012104000\",", "")), ["#/service"]);
    assert_eq!(pointers(&with("99050012104000", "12345")), ["#/service"]);
    assert_eq!(pointers(&with("053150000000", "0531")), ["#/region"]);
    assert_eq!(pointers(&with("\"service\":\"99050012104000\"", "\"service\":99050012104000")), ["#/service"]);
    assert_eq!(pointers(&with("JVBERi0xLjQ=", "not base64!")), ["#/attachments/0/content"]);
    assert_eq!(pointers(&with("JVBERi0xLjQ=", "JVBERi0xLjR=")), ["#/attachments/0/content"], "non-canonical");
    assert_eq!(pointers(&with("antrag.pdf", "../etc/passwd")), ["#/attachments/0/name"]);
    assert_eq!(pointers(&with("\"form\"", "\"selfie\"")), ["#/attachments/0/purpose"]);
    assert_eq!(pointers(&with("{\"name\":\"Anna\"}", "[1]")), ["#/data"]);
    assert_eq!(pointers(&with("2026-11-20T09:14:00Z", "20.11.2026")), ["#/submittedAt"]);
    assert_eq!(pointers(&with("\"reference\"", "\"referenz\"")), ["#/referenz"]);
    assert_eq!(
        pointers(&with("99050012104000", "1").replace("053150000000", "2")),
        ["#/service", "#/region"],
        "all invalid identifiers at once"
    );
}

#[test]
fn error_details_never_echo_values() {
    for f in fields(&VALID.replace("053150000000", "Anna Musterfrau")) {
        assert!(!f.detail.contains("Anna"), "{f:?}");
    }
}

#[test]
fn base64_rules() {
    for ok in ["", "AA==", "AAA=", "AAAA", "+/+/"] {
        assert!(is_base64(ok), "{ok}");
    }
    for bad in ["A", "AA=", "A===", "AB==", "AAB=", "AA AA", "AA-_"] {
        assert!(!is_base64(bad), "{bad}");
    }
    assert_eq!(decoded_len("AA=="), 1);
    assert_eq!(decoded_len("AAAA"), 3);
}

#[test]
fn each_limit_is_refused_naming_the_field() {
    let limits = Limits { attachments: 2, attachment_bytes: 8, json_depth: 3 };
    let refused = |body: &str| match Submission::parse(body.as_bytes(), &limits) {
        Err(InvalidSubmission::Fields(f)) => f.into_iter().map(|f| (f.pointer, f.detail)).collect::<Vec<_>>(),
        other => panic!("expected field errors, got {other:?}"),
    };
    assert!(Submission::parse(VALID.as_bytes(), &limits).is_ok(), "8 decoded bytes are within the limit");

    let nine_bytes = VALID.replace("JVBERi0xLjQ=", "JVBERi0xLjQu");
    assert_eq!(refused(&nine_bytes)[0].0, "#/attachments/0/content");
    assert!(refused(&nine_bytes)[0].1.contains("at most 8"));

    let attachment = r#"{"name":"a.pdf","mediaType":"application/pdf","purpose":"attachment","content":""}"#;
    let three = VALID.replace(r#""attachments":["#, &format!(r#""attachments":[{attachment},{attachment},"#));
    assert_eq!(refused(&three)[0].0, "#/attachments");

    // Three levels pass, four do not; brackets inside strings do not count.
    let deep = |data: &str| VALID.replace(r#"{"name":"Anna"}"#, data);
    assert!(Submission::parse(deep(r#"{"a":[{"b":"[[[[{{{{"}]}"#).as_bytes(), &limits).is_ok());
    assert_eq!(refused(&deep(r#"{"a":[{"b":["\"]"]}]}"#))[0], ("#/data".into(), "is nested deeper than 3 levels".into()));
}

#[test]
fn xml_form_data_is_held_to_the_json_depth_limit() {
    // 100 elements deep is what the XML reader takes; as JSON it is 101.
    let xml = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
    let body = VALID.replace(r#""data":{"name":"Anna"}"#, &format!(r#""dataXml":"{xml}""#));
    match Submission::parse(body.as_bytes(), &Limits::default()) {
        Err(InvalidSubmission::Fields(f)) => assert_eq!(f[0].pointer, "#/dataXml"),
        other => panic!("expected a field error, got {other:?}"),
    }
    let deep = Limits { json_depth: 128, ..Limits::default() };
    assert!(Submission::parse(body.as_bytes(), &deep).unwrap().data_value().is_object());
}

#[test]
fn xml_whose_json_tree_is_deeper_than_serde_json_reads_is_refused_not_a_panic() {
    // Each level holds two `a`s, so each element adds an object and an
    // array: 90 elements deep is 180 levels of JSON.
    let xml = format!("{}{}", "<a><a/>".repeat(90), "</a>".repeat(90));
    let body = VALID.replace(r#""data":{"name":"Anna"}"#, &format!(r#""dataXml":"{xml}""#));
    let deepest = Limits { json_depth: 100, ..Limits::default() };
    match Submission::parse(body.as_bytes(), &deepest) {
        Err(InvalidSubmission::Fields(f)) => {
            assert_eq!(f[0].pointer, "#/dataXml");
            assert!(f[0].detail.contains("once read as JSON"), "{}", f[0].detail);
        }
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn half_a_surrogate_pair_in_the_form_data_is_refused_naming_the_field() {
    let with = |text: &str| VALID.replace(r#"{"name":"Anna"}"#, &format!(r#"{{"name":"{text}"}}"#));
    for lone in [r"Rodr\ude00guez", r"\ud83d", r"\ud83dx", r"\ud83d\u0041", r"ok \uDFFF"] {
        assert_eq!(pointers(&with(lone)), ["#/data"], "{lone}");
    }
    for fine in [r"\ud83d\ude00", r"\\ude00", r"\u00e4 \n \\", r"\uD83D\uDE00"] {
        let body = with(fine);
        let s = Submission::parse(body.as_bytes(), &Limits::default()).unwrap_or_else(|e| panic!("{fine}: {e:?}"));
        let message: serde_json::Value = serde_json::from_slice(&s.to_message(Uuid::nil(), time::OffsetDateTime::UNIX_EPOCH)).unwrap();
        assert!(message["data"]["name"].is_string(), "{fine}");
    }
}
