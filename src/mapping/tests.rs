use std::path::Path;

use super::*;

fn submission(json: &str) -> Val {
    serde_json::from_str(json).unwrap()
}

fn render(mapping: &str, input: &str) -> String {
    let m = Mapping::parse(mapping, "test.yaml").unwrap();
    String::from_utf8(m.render(&submission(input)).unwrap().body).unwrap()
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
    let err = m.render(&submission(r#"{"x":"a\u0001b"}"#)).unwrap_err();
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
    let err = m.render(&submission(r#"{"xs":[1,2]}"#)).unwrap_err();
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
        ("output: csv\ndocument: {}\n", "csv"),
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

/// The mappings shipped in `mappings/` produce their fixtures byte for
/// byte. `AMTSBOTE_BLESS=1` writes missing expected files (review them!).
#[test]
fn shipped_mappings_match_their_fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let fixtures = fixtures::discover(&dir).unwrap();
    assert!(fixtures.len() >= 2, "fixtures found: {fixtures:?}");
    for f in fixtures {
        let mapping = Mapping::load(&f.mapping, &f.mapping.display().to_string()).unwrap();
        let input: Val = serde_json::from_slice(&std::fs::read(&f.input).unwrap()).unwrap();
        let actual = mapping.render(&input).unwrap().body;
        if !f.expected.exists() && std::env::var("AMTSBOTE_BLESS").is_ok() {
            let ext = if mapping.content_type.contains("json") { "json" } else { "xml" };
            std::fs::write(format!("{}.{ext}", f.expected.display()), &actual).unwrap();
            continue;
        }
        let expected = std::fs::read(&f.expected).unwrap_or_else(|e| panic!("{}: {e}", f.expected.display()));
        assert_eq!(String::from_utf8_lossy(&actual), String::from_utf8_lossy(&expected), "{}", f.mapping.display());
    }
}
