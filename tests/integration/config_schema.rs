//! The config file's JSON Schema (`amtsbote config schema`): published in
//! the repository, accepted by the shipped configs, and in step with the
//! README's connector sections.

use std::path::Path;

use amtsbote::config::Config;
use amtsbote::yaml::parse_yaml;

const PUBLISHED: &str = "docs/amtsbote.schema.json";

fn repository_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&Config::json_schema()).expect("the generated schema compiles")
}

/// The schema's complaints about `yaml`, one line each (empty: valid).
pub fn schema_problems(yaml: &str) -> Vec<String> {
    let value: serde_json::Value = parse_yaml(yaml).expect("YAML");
    validator().iter_errors(&value).map(|e| format!("at {}: {e}", e.instance_path())).collect()
}

#[test]
fn the_published_schema_is_the_generated_one() {
    let generated = serde_json::to_string_pretty(&Config::json_schema()).unwrap() + "\n";
    assert!(
        repository_file(PUBLISHED) == generated,
        "{PUBLISHED} is out of date: cargo run -- config schema > {PUBLISHED}"
    );
}

#[test]
fn the_example_config_validates_and_points_editors_at_the_schema() {
    let example = repository_file("examples/demo/amtsbote.yaml");
    assert_eq!(schema_problems(&example), Vec::<String>::new());
    assert!(
        example.starts_with("# yaml-language-server: $schema=../../docs/amtsbote.schema.json\n"),
        "the example's first line points editors at the schema"
    );
    // And what serde takes, the schema takes: the example loads.
    parse_yaml::<Config>(&example).expect("the example config loads");
}

#[test]
fn the_several_hosts_example_validates_and_names_a_cluster_postgres_and_a_bucket() {
    let example = repository_file("examples/several-hosts/amtsbote.yaml");
    assert_eq!(schema_problems(&example), Vec::<String>::new());
    let config = parse_yaml::<Config>(&example).expect("the several-hosts example loads");
    assert_eq!(config.broker.nodes.len(), 3);
    assert!(config.store.postgres.is_some() && config.blobs.s3.is_some());
}

#[test]
fn the_schema_flags_what_loading_refuses() {
    let example = repository_file("examples/demo/amtsbote.yaml");
    for (from, to, mistake) in [
        ("mapping:", "mappping:", "a misspelt setting"),
        ("role: viewer", "role: admin", "an unknown role"),
        ("tenant: koeln", "tenant: Köln", "a name with capitals"),
        ("token_sha256: 6111", "token_sha256: 611", "a hash one digit short"),
    ] {
        assert!(example.contains(from), "the example has {from}");
        let broken = example.replacen(from, to, 1);
        assert!(parse_yaml::<Config>(&broken).is_err(), "loading refuses {mistake}");
        assert!(!schema_problems(&broken).is_empty(), "the schema flags {mistake}");
    }
}

/// The README shows each connector kind as a YAML example under `### \`kind\``;
/// the example must validate, and every setting of the kind must be named
/// in its section, so neither can drift from the config structs.
#[test]
fn the_readme_connector_sections_match_the_connector_settings() {
    let readme = repository_file("README.md");
    let schema = Config::json_schema();
    let connectors = &schema["$defs"]["ConnectorConfig"]["oneOf"];
    let kinds: Vec<(String, String)> = connectors
        .as_array()
        .expect("one schema per connector kind")
        .iter()
        .map(|kind| {
            let (name, settings) = kind["properties"].as_object().unwrap().iter().next().unwrap();
            let reference = settings["$ref"].as_str().expect("a kind's settings are a definition");
            (name.clone(), reference.rsplit('/').next().unwrap().to_owned())
        })
        .collect();
    assert!(kinds.len() >= 5, "http, soap, directory, sftp, email and any added since");
    for (kind, definition) in kinds {
        let heading = format!("### `{kind}`");
        let start = readme.find(&heading).unwrap_or_else(|| panic!("README has no section {heading}"));
        let section = &readme[start..];
        let section = &section[..section[heading.len()..].find("\n#").map_or(section.len(), |end| end + heading.len())];
        let example = section.split("```yaml\n").nth(1).and_then(|rest| rest.split("```").next());
        let example = example.unwrap_or_else(|| panic!("{heading} has a YAML example"));
        let target = format!("targets:\n  t:\n    mapping: m.yaml\n{}routes: []\n", indent(example, "    "));
        assert_eq!(schema_problems(&target), Vec::<String>::new(), "the example of {heading}");
        let settings = schema["$defs"][&definition]["properties"].as_object().unwrap();
        let unnamed: Vec<&String> = settings.keys().filter(|setting| !section.contains(&format!("{setting}:")) && !section.contains(&format!("`{setting}`"))).collect();
        assert!(unnamed.is_empty(), "{heading} does not name {unnamed:?} (see `amtsbote config schema`, {definition})");
    }
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|line| format!("{by}{line}\n")).collect()
}
