use std::path::Path;

use super::*;

fn submission(json: &str) -> Val {
    serde_json::from_str(json).unwrap()
}

fn render(mapping: &str, input: &str) -> String {
    let m = Mapping::parse(mapping, "test.yaml").unwrap();
    match m.render(&submission(input), 0).unwrap() {
        Payload::Document { body, .. } => String::from_utf8(body.to_vec()).unwrap(),
        Payload::Files(_) => panic!("a folder"),
    }
}

#[test]
fn xml_with_namespaces_attributes_repeats_and_escaping() {
    let mapping = r#"
output: xml
root: n:root
namespaces:
  n: urn:example
document:
  "@version": '"1.0"'
  n:id: .id
  n:name: .data.name
  n:tag: .data.tags[]
  n:contact:
    $each: .data.contacts[]
    n:kind:
      code: .kind
    n:value:
      "@type": .type
      $text: .value
  n:missing: .data.nothing
  n:optional:
    n:inner: .data.nothing
  n:fixed: 7
"#;
    let input = r#"{"id":"i-1","data":{"name":"Müller & <Söhne> \"GmbH\"","tags":["a","b"],
        "contacts":[{"kind":"01","type":"mail","value":"x@y.de"},{"kind":"02","value":"0221"}]}}"#;
    let expected = r#"<?xml version="1.0" encoding="UTF-8"?>
<n:root xmlns:n="urn:example" version="1.0">
  <n:id>i-1</n:id>
  <n:name>Müller &amp; &lt;Söhne&gt; "GmbH"</n:name>
  <n:tag>a</n:tag>
  <n:tag>b</n:tag>
  <n:contact>
    <n:kind>
      <code>01</code>
    </n:kind>
    <n:value type="mail">x@y.de</n:value>
  </n:contact>
  <n:contact>
    <n:kind>
      <code>02</code>
    </n:kind>
    <n:value>0221</n:value>
  </n:contact>
  <n:fixed>7</n:fixed>
</n:root>
"#;
    assert_eq!(render(mapping, input), expected);
}

#[test]
fn xml_rendering_is_deterministic() {
    let mapping = "output: xml\nroot: r\ndocument:\n  a: .x\n  b: .y\n";
    let input = r#"{"x":1,"y":"2"}"#;
    assert_eq!(render(mapping, input), render(mapping, input));
}

#[test]
fn attribute_values_are_escaped() {
    let mapping = "output: xml\nroot: r\ndocument:\n  \"@a\": .x\n";
    assert_eq!(
        render(mapping, r#"{"x":"\"<&>'"}"#),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<r a=\"&quot;&lt;&amp;&gt;&apos;\"/>\n"
    );
}

#[test]
fn control_characters_are_refused_not_written() {
    let m = Mapping::parse("output: xml\nroot: r\ndocument:\n  a: .x\n", "m.yaml").unwrap();
    let err = m.render(&submission(r#"{"x":"a\u0001b"}"#), 0).unwrap_err();
    assert_eq!(err.path, "document/a");
    assert!(err.message.contains("U+0001"), "{err}");
}

#[test]
fn json_output_keeps_order_and_omits_missing() {
    let mapping = r#"
output: json
document:
  caseId: .reference
  applicant:
    name: .data.name
    missing: .data.nothing // empty
    explicitNull: .data.nothing
  tags: [".data.tags[]", '"fixed"']
  contacts:
    - $each: .data.contacts[]
      value: .value
  count: 3
  raw: .data.nested
"#;
    let input = r#"{"reference":"R-1","data":{"name":"A","tags":["x"],"contacts":[{"value":1},{"value":2}],"nested":{"z":1,"a":[true]}}}"#;
    let out: serde_json::Value = serde_json::from_str(&render(mapping, input)).unwrap();
    assert_eq!(
        out.to_string(),
        r#"{"caseId":"R-1","applicant":{"name":"A","explicitNull":null},"tags":["x","fixed"],"contacts":[{"value":1},{"value":2}],"count":3,"raw":{"z":1,"a":[true]}}"#
    );
}

#[test]
fn json_leaf_with_several_values_is_an_error_naming_the_place() {
    let m = Mapping::parse("output: json\ndocument:\n  a: .xs[]\n", "m.yaml").unwrap();
    let err = m.render(&submission(r#"{"xs":[1,2]}"#), 0).unwrap_err();
    assert_eq!((err.file.as_str(), err.path.as_str()), ("m.yaml", "document/a"));
    assert_eq!(err.expression.as_deref(), Some(".xs[]"));
}

#[test]
fn load_errors_name_file_place_and_expression() {
    let cases = [
        ("output: xml\nroot: r\ndocument:\n  a: '.x |'\n", "document/a"),
        ("output: xml\nroot: r\ndocument:\n  p:a: .x\n", "not declared"),
        ("output: xml\nroot: r\ndocument:\n  a: 'def f: f; f'\n", "not allowed"),
        ("output: xml\ndocument:\n  a: .x\n", "root"),
        ("output: json\ndocument:\n  a:\n    $each: .x\n", "$each"),
        ("output: json\ndocument: {}\nextra: 1\n", "extra"),
        ("output: yaml\ndocument: {}\n", "yaml"),
        ("output: csv\ndocument:\n  a:\n    b: .x\n", "a column is one expression"),
        ("output: json\ncsv: {}\ndocument: {}\n", "only for CSV"),
        ("output: xml\nroot: r\ndocument:\n  a: '.x | lookup(.y)'\n", "literal"),
        ("output: xml\nroot: r\ndocument:\n  $when: .x\n", "unknown directive"),
    ];
    for (text, needle) in cases {
        let err = Mapping::parse(text, "bad.yaml").unwrap_err().to_string();
        assert!(err.starts_with("bad.yaml: "), "{err}");
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
}

#[test]
fn hostile_input_cannot_break_rendering() {
    // Deeply nested data is bounded by the JSON parser's recursion limit
    // before it reaches a mapping.
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    assert!(serde_json::from_str::<Val>(&deep).is_err());
}

/// The mappings shipped in `mappings/` pass their fixtures (what
/// `amtsbote mappings test` checks, here without the sandbox).
#[test]
fn shipped_mappings_match_their_fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let report = runtime.block_on(fixtures::run(&dir, fixtures::Evaluator::InProcess, fixtures::WriteExpected::Never)).unwrap();
    assert!(report.failed.is_empty() && report.passed >= 6, "{}", report.log);
}

#[test]
fn errors_name_the_line_of_the_expression() {
    let text = "output: json\ndocument:\n  a: .x\n  b:\n    c: '.y |'\n";
    let err = Mapping::parse(text, "bad.yaml").unwrap_err().to_string();
    assert!(err.starts_with("bad.yaml: line 5: at document/b/c: syntax error"), "{err}");
    let m = Mapping::parse("output: json\ndocument:\n  a: .x\n  b: '.y + 1'\n", "m.yaml").unwrap();
    let err = m.render(&submission(r#"{"y":"Anna"}"#), 0).unwrap_err();
    assert_eq!(err.line, 4);
    assert!(err.to_string().starts_with("m.yaml:4: at document/b:"), "{err}");
    assert!(!err.to_string().contains("Anna"), "{err}");
}

#[test]
fn csv_with_semicolons_quotes_crlf_and_one_row_per_item() {
    let mapping = r#"
output: csv
csv:
  bom: true
  escape_formulas: true
document:
  $each: '.data.hunde[] | {halter: $submission.data.name, hund: .}'
  Halter: .halter
  Hund: .hund.name
  Geboren: '.hund.geboren | date_format("DD.MM.YYYY")'
  Gefaehrlich: 'if .hund.gefaehrlich then "ja" else "nein" end'
  Chip: .hund.chip
  Fest: 1
"#;
    let input = r#"{"data":{"name":"Müller; \"Hans\"","hunde":[
        {"name":"Bello","geboren":"2020-05-01","gefaehrlich":false,"chip":"=1+2"},
        {"name":"Rex\nII","geboren":"2021-01-31","gefaehrlich":true}]}}"#;
    let out = render(mapping, input);
    assert_eq!(
        out,
        "\u{feff}Halter;Hund;Geboren;Gefaehrlich;Chip;Fest\r\n\
         \"Müller; \"\"Hans\"\"\";Bello;01.05.2020;nein;'=1+2;1\r\n\
         \"Müller; \"\"Hans\"\"\";\"Rex\nII\";31.01.2021;ja;;1\r\n"
    );
}

fn attachment(name: &str, purpose: &str, content: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        r#"{{"name":"{name}","file":"{name}","mediaType":"application/pdf","purpose":"{purpose}","size":{},"content":"{}"}}"#,
        content.len(),
        base64::engine::general_purpose::STANDARD.encode(content)
    )
}

const PACKAGE: &str = r#"
output: xml
root: akte
document:
  id: .id
  datei:
    - $each: attachments
      name: .file
package:
  format: FORMAT
  document: '"\(.id)_nachricht.xml"'
  files:
    - each: attachments("form")
      path: '"antrag.pdf"'
    - each: attachments("attachment")
      path: '"anlagen/" + .file'
"#;

#[test]
fn folder_package_holds_document_form_and_attachments_as_bytes() {
    let m = Mapping::parse(&PACKAGE.replace("FORMAT", "folder"), "p.yaml").unwrap();
    let input = format!(
        r#"{{"id":"x1","receivedAt":"2026-11-24T10:00:00Z","attachments":[{},{}]}}"#,
        attachment("formular.pdf", "form", b"%PDF form"),
        attachment("foto.jpg", "attachment", &[0, 159, 255])
    );
    let Payload::Files(files) = m.render(&submission(&input), 0).unwrap() else { panic!("not a folder") };
    let listing: Vec<(&str, &[u8])> = files.iter().map(|f| (f.path.as_str(), &f.content.in_memory().unwrap()[..])).collect();
    assert_eq!(listing[1..], [("antrag.pdf", &b"%PDF form"[..]), ("anlagen/foto.jpg", &[0, 159, 255][..])]);
    assert_eq!(listing[0].0, "x1_nachricht.xml");
    assert!(String::from_utf8_lossy(listing[0].1).contains("<name>foto.jpg</name>"));
}

#[test]
fn zip_package_is_deterministic_and_reads_back() {
    let m = Mapping::parse(&PACKAGE.replace("FORMAT", "zip"), "p.yaml").unwrap();
    let input = format!(
        r#"{{"id":"x1","receivedAt":"2026-11-24T10:00:00Z","attachments":[{}]}}"#,
        attachment("formular.pdf", "form", b"%PDF form")
    );
    let first = m.render(&submission(&input), 1).unwrap();
    assert_eq!(first, m.render(&submission(&input), 2).unwrap(), "same submission, same bytes");
    let Payload::Document { content_type, .. } = &first else { panic!() };
    assert_eq!(content_type, "application/zip");
    let files = fixtures::files_of(first).unwrap();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["antrag.pdf", "x1_nachricht.xml"]);
    assert_eq!(files[0].1, b"%PDF form");
}

#[test]
fn stored_attachments_stay_out_of_the_mapping_and_join_the_package_at_the_end() {
    let blob = BlobId::parse(&crate::domain::sha256_hex(b"%PDF scan")).unwrap();
    let stored = format!(r#"{{"name":"scan.pdf","file":"scan.pdf","purpose":"attachment","size":9,"blob":"{blob}"}}"#);
    let input = format!(
        r#"{{"id":"x1","receivedAt":"2026-11-24T10:00:00Z","attachments":[{},{stored}]}}"#,
        attachment("formular.pdf", "form", b"%PDF form")
    );
    for format in ["folder", "zip"] {
        let m = Mapping::parse(&PACKAGE.replace("FORMAT", format), "p.yaml").unwrap();
        let rendition = m.rendition(&submission(&input), 0).unwrap();
        assert_eq!(rendition.stored().collect::<Vec<_>>(), [blob]);
        let missing = rendition.clone().into_payload(|_| None).unwrap_err();
        assert!(missing.contains(&blob.to_string()), "{missing}");
        let payload = rendition.into_payload(|stored| (stored == blob).then(|| b"%PDF scan".to_vec().into())).unwrap();
        let files = fixtures::files_of(payload).unwrap();
        let scan = files.iter().find(|(n, _)| n == "anlagen/scan.pdf").expect("the stored attachment");
        assert_eq!(scan.1, b"%PDF scan", "{format}");
    }
    let not_a_blob = input.replace(&blob.to_string(), "../../../etc/passwd");
    let m = Mapping::parse(&PACKAGE.replace("FORMAT", "folder"), "p.yaml").unwrap();
    assert!(m.rendition(&submission(&not_a_blob), 0).unwrap_err().message.contains("not an attachment"));
}

#[test]
fn package_paths_cannot_leave_the_package() {
    for path in ["'\"../x\"'", "'\"/etc/x\"'", "'\"a//b\"'", "'\".hidden\"'", "'\"a\\\\b\"'"] {
        let text = format!("output: json\ndocument:\n  a: 1\npackage:\n  format: folder\n  document: {path}\n");
        let m = Mapping::parse(&text, "p.yaml").unwrap();
        let err = m.render(&submission("{}"), 0).unwrap_err();
        assert!(err.message.contains("path"), "{path}: {err}");
    }
    let text = "output: json\ndocument:\n  a: 1\npackage:\n  format: folder\n  document: '\"a.json\"'\n  files:\n    - each: attachments\n      path: '\"same\"'\n";
    let m = Mapping::parse(text, "p.yaml").unwrap();
    let input = format!(r#"{{"attachments":[{},{}]}}"#, attachment("a", "attachment", b"1"), attachment("b", "attachment", b"2"));
    assert!(m.render(&submission(&input), 0).unwrap_err().message.contains("path of an earlier one"));
}

#[test]
fn output_schema_failures_are_mapping_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.json"), r#"{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}"#).unwrap();
    std::fs::write(dir.path().join("m.yaml"), "output: json\nschema: s.json\ndocument:\n  n: .n\n").unwrap();
    let m = Mapping::load(dir.path(), Path::new("m.yaml")).unwrap();
    assert!(m.render(&submission(r#"{"n":3}"#), 0).is_ok());
    let err = m.render(&submission(r#"{"n":"Geheim"}"#), 0).unwrap_err().to_string();
    assert!(err.contains("at /n") && !err.contains("Geheim"), "{err}");
    std::fs::write(dir.path().join("x.yaml"), "output: json\nschema: missing.json\ndocument: {}\n").unwrap();
    let err = Mapping::load(dir.path(), Path::new("x.yaml")).unwrap_err().to_string();
    assert!(err.contains("missing.json"), "{err}");
}

#[test]
fn code_lists_come_from_the_codelists_folder_and_version_the_mapping() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("codelists")).unwrap();
    std::fs::write(dir.path().join("codelists/rf.yaml"), "codes:\n  gmbh: \"310\"\n  ag: 320\n").unwrap();
    std::fs::write(dir.path().join("m.yaml"), "output: json\ndocument:\n  rf: '.f | lookup(\"rf\")'\n").unwrap();
    let m = Mapping::load(dir.path(), Path::new("m.yaml")).unwrap();
    assert_eq!(render_payload(&m, r#"{"f":"ag"}"#), "{\n  \"rf\": \"320\"\n}\n");
    let before = m.version().to_owned();
    std::fs::write(dir.path().join("codelists/rf.yaml"), "codes:\n  gmbh: \"311\"\n").unwrap();
    let changed = Mapping::load(dir.path(), Path::new("m.yaml")).unwrap();
    assert_ne!(before, changed.version(), "a changed code list is a new mapping version");
    std::fs::write(dir.path().join("n.yaml"), "output: json\ndocument:\n  rf: '.f | lookup(\"nope\")'\n").unwrap();
    let err = Mapping::load(dir.path(), Path::new("n.yaml")).unwrap_err().to_string();
    assert!(err.contains("code list \"nope\""), "{err}");
}

fn render_payload(m: &Mapping, input: &str) -> String {
    match m.render(&submission(input), 0).unwrap() {
        Payload::Document { body, .. } => String::from_utf8(body.to_vec()).unwrap(),
        Payload::Files(_) => panic!("a folder"),
    }
}

#[test]
fn a_bare_word_is_reported_as_a_constant_that_needs_quotes() {
    let err = Mapping::parse("output: json\ndocument:\n  Land: DE\n", "m.yaml").unwrap_err().to_string();
    assert!(err.contains("line 3") && err.contains("needs quotes") && err.contains(r#"'"DE"'"#), "{err}");
}

#[test]
fn an_undeclared_namespace_prefix_is_reported_at_its_line() {
    let in_root = "output: xml\nnamespaces:\n  a: urn:a\nroot: x:r\ndocument:\n  a:b: 1\n";
    let err = Mapping::parse(in_root, "m.yaml").unwrap_err().to_string();
    assert!(err.contains("line 4") && err.contains("\"x\""), "{err}");
    let in_a_constant = "output: xml\nroot: a:r\nnamespaces:\n  a: urn:a\ndocument:\n  a:b:\n    a:c: '.x'\n    y:d: 7\n";
    let err = Mapping::parse(in_a_constant, "m.yaml").unwrap_err().to_string();
    assert!(err.contains("line 8") && err.contains("\"y\""), "{err}");
}

#[test]
fn fixtures_hold_only_attachment_names_that_intake_takes() {
    let input = serde_json::json!({"attachments": [{"name": "../../etc/passwd", "purpose": "attachment"}]});
    let err = fixtures::prepare_input(input).unwrap_err().to_string();
    assert!(err.contains("attachments[0].name") && err.contains("path separators"), "{err}");
    let input = serde_json::json!({"attachments": [{"name": "antrag.pdf", "file": "a/b.pdf"}]});
    assert!(fixtures::prepare_input(input).unwrap_err().to_string().contains("attachments[0].file"));
}

/// Every leaf of the shipped mappings gives what jaq gives, on each of
/// their fixtures and on every value nested in it (what `$each` makes
/// the current value); and every leaf of the XGewerbeanzeige mapping, the
/// benchmark's, is evaluated natively.
#[test]
fn shipped_mappings_evaluate_natively_as_jaq_does() {
    fn nested(value: &Val, out: &mut Vec<Val>) {
        out.push(value.clone());
        match value {
            Val::Arr(items) => items.iter().for_each(|item| nested(item, out)),
            Val::Obj(entries) => entries.values().for_each(|item| nested(item, out)),
            _ => {}
        }
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let mut compared = 0;
    for file in fixtures::mapping_files(&dir).unwrap() {
        let relative = file.strip_prefix(&dir).unwrap();
        let mapping = Mapping::load(&dir, relative).unwrap();
        let expressions: Vec<&Expr> = mapping.compiled.expressions().collect();
        if relative.starts_with("xgewerbeanzeige-2.2") {
            let by_jaq: Vec<&str> = expressions.iter().filter(|e| !e.is_native()).map(|e| e.code()).collect();
            assert!(by_jaq.is_empty(), "{}: {by_jaq:?} go to jaq", relative.display());
        }
        for fixture in fixtures::fixtures_of(&file).unwrap() {
            let input: serde_json::Value = serde_json::from_slice(&std::fs::read(&fixture.input).unwrap()).unwrap();
            let submission: Val = serde_json::from_value(fixtures::prepare_input(input).unwrap()).unwrap();
            let globals = Globals::new(submission.clone(), mapping.code_lists(), Val::from(1_700_000_000isize));
            let mut inputs = Vec::new();
            nested(&submission, &mut inputs);
            for expr in &expressions {
                for input in &inputs {
                    let text = |r: Result<Vec<Val>, expr::ExprError>| r.map(|vs| vs.iter().map(ToString::to_string).collect::<Vec<_>>());
                    assert_eq!(text(expr.eval(input, &globals)), text(expr.run(input, &globals)), "{}: {} on {input}", relative.display(), expr.code());
                    if let Some(found) = expr.plain_path(input) {
                        let found = Ok(vec![found.cloned().unwrap_or(Val::Null)]);
                        assert_eq!(text(found), text(expr.run(input, &globals)), "{}: {} on {input}", relative.display(), expr.code());
                    }
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > 1_000, "{compared}");
}

/// The XML writer's corners: an attribute written after a child in the
/// mapping, text with children, elements that end up empty, escaping in
/// attributes and text, an empty root.
#[test]
fn xml_corners_are_written_as_quick_xml_writes_them() {
    let mapping = r#"
output: xml
root: n:root
namespaces:
  n: urn:example
  "": urn:default
document:
  n:a:
    $text: .t
    n:b: .x
    "@late": .q
  n:mixed:
    $text: '"text"'
    n:child: '"c"'
    n:more:
      n:inner: .x
  n:empty:
    n:inner: .missing
  n:onlyattr:
    n:inner: .missing
    "@k": .q
  n:esc:
    "@v": .weird
    $text: .weird
  n:emptytext: '""'
  n:list:
    - .x
    - n:deep:
        n:deeper: .x
    - .missing
  n:last: 7
"#;
    let input = r#"{"t":"T","x":"X","q":"Q","weird":"a<b>&'\"\t\n\r c"}"#;
    let expected = concat!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
        "<n:root xmlns:n=\"urn:example\" xmlns=\"urn:default\">\n",
        "  <n:a late=\"Q\">T<n:b>X</n:b>\n",
        "  </n:a>\n",
        "  <n:mixed>text<n:child>c</n:child>\n",
        "    <n:more>\n",
        "      <n:inner>X</n:inner>\n",
        "    </n:more>\n",
        "  </n:mixed>\n",
        "  <n:onlyattr k=\"Q\"/>\n",
        "  <n:esc v=\"a&lt;b&gt;&amp;&apos;&quot;&#9;&#10;&#13; c\">a&lt;b&gt;&amp;'\"\t\n&#13; c</n:esc>\n",
        "  <n:emptytext></n:emptytext>\n",
        "  <n:list>X</n:list>\n",
        "  <n:list>\n",
        "    <n:deep>\n",
        "      <n:deeper>X</n:deeper>\n",
        "    </n:deep>\n",
        "  </n:list>\n",
        "  <n:last>7</n:last>\n",
        "</n:root>\n",
    );
    assert_eq!(render(mapping, input), expected);
    let empty = "output: xml\nroot: n:root\nnamespaces:\n  n: urn:example\ndocument:\n  n:x: .missing\n";
    assert_eq!(render(empty, "{}"), "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<n:root xmlns:n=\"urn:example\"/>\n");
    let each = "output: xml\nroot: r\ndocument:\n  $each: .xs[]\n  x: .\n";
    for xs in ["[]", "[null, null]"] {
        assert_eq!(render(each, &format!(r#"{{"xs":{xs}}}"#)), "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<r/>\n", "{xs}");
    }
    assert_eq!(render(each, r#"{"xs":[null, 1]}"#), "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<r>\n  <x>1</x>\n</r>\n");
    let two = Mapping::parse(each, "t.yaml").unwrap().render(&submission(r#"{"xs":[1, 2]}"#), 0).unwrap_err();
    assert!(two.to_string().contains("the root element must not repeat"), "{two}");
}
