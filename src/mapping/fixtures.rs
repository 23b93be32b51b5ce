//! Fixture pairs that test mappings like code: for the mapping
//! `<dir>/<name>.yaml`, every `<dir>/fixtures/<name>[.<case>].input.json`
//! is a submission as the mapping sees it (see [`crate::submission`]), and
//! beside it the expected result:
//!
//! * `<name>[.<case>].expected.<xml|json|csv|...>`: the exact bytes;
//! * `<name>[.<case>].expected/`: a folder holding the package's files (a
//!   zip is compared by its contents);
//! * `<name>[.<case>].expected.error`: text the mapping error must contain.
//!
//! `now` is pinned to the input's `receivedAt`. Inputs may leave out the
//! attachments' `file` names, and may give the form as `dataXml` instead
//! of `data`: both are completed the way intake does it.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use amtsbote_connector::Payload;
use serde_json::Value;

use super::sandbox::{EvalError, Sandbox};
use super::Mapping;

/// One input with what it must give.
#[derive(Debug)]
pub struct Fixture {
    pub mapping: PathBuf,
    pub input: PathBuf,
    pub expected: Expected,
}

#[derive(Debug)]
pub enum Expected {
    Bytes(PathBuf),
    Folder(PathBuf),
    Error(PathBuf),
    /// No expected file yet; `--bless` writes one.
    Missing(PathBuf),
}

/// What a run of the fixtures found.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: usize,
    pub failed: Vec<String>,
    /// Mappings that have no fixture.
    pub untested: Vec<PathBuf>,
    pub blessed: Vec<PathBuf>,
    /// The readable log: one line per fixture, diffs for failures.
    pub log: String,
}

/// Which expected files a run writes from the actual output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteExpected {
    /// None: the run only compares.
    Never,
    /// Those of fixtures that have none yet (`--bless`).
    Missing,
    /// Those missing and those that differ (`--update`), as snapshot tools
    /// do: for outputs nobody writes by hand, such as ids made by
    /// `uuid(...)`. Review the change (`git diff`) before committing it.
    Differing,
}

/// How mappings are evaluated: in this process (tests) or in the sandbox.
pub enum Evaluator<'a> {
    InProcess,
    Sandbox(&'a Sandbox),
}

/// The directory whose `codelists/` a mapping under `path` uses: the
/// nearest ancestor (or `path` itself) that has one, else `path`'s folder.
pub fn mappings_root(path: &Path) -> PathBuf {
    let start = if path.is_dir() { path.to_owned() } else { path.parent().unwrap_or(Path::new(".")).to_owned() };
    start.ancestors().find(|a| a.join("codelists").is_dir()).map(Path::to_owned).unwrap_or(start)
}

/// Every mapping file under `path` (or `path` itself if it is a file).
pub fn mapping_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut found = Vec::new();
    let mut dirs = vec![path.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.is_dir() {
                if name != "fixtures" && name != "codelists" && !name.starts_with('.') {
                    dirs.push(p);
                }
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                found.push(p);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The fixtures of one mapping file.
pub fn fixtures_of(mapping: &Path) -> std::io::Result<Vec<Fixture>> {
    let Some(stem) = mapping.file_stem().and_then(|s| s.to_str()) else { return Ok(Vec::new()) };
    let dir = mapping.parent().unwrap_or(Path::new(".")).join("fixtures");
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut names: Vec<String> =
        std::fs::read_dir(&dir)?.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    names.sort();
    let mut fixtures = Vec::new();
    for name in &names {
        let Some(case) = name.strip_suffix(".input.json") else { continue };
        if case != stem && !case.starts_with(&format!("{stem}.")) {
            continue;
        }
        let prefix = format!("{case}.expected");
        let expected = names
            .iter()
            .find(|n| **n == prefix || n.starts_with(&format!("{prefix}.")))
            .map(|n| {
                let p = dir.join(n);
                if p.is_dir() {
                    Expected::Folder(p)
                } else if n.ends_with(".error") {
                    Expected::Error(p)
                } else {
                    Expected::Bytes(p)
                }
            })
            .unwrap_or_else(|| Expected::Missing(dir.join(&prefix)));
        fixtures.push(Fixture { mapping: mapping.to_owned(), input: dir.join(name), expected });
    }
    Ok(fixtures)
}

/// Why a fixture's input is not one intake could have let through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FixtureInputError {
    #[error("the input is not a JSON object")]
    NotAnObject,
    #[error("dataXml: {0}")]
    DataXml(#[from] crate::submission::xml::XmlDataError),
    #[error("attachments[{index}].{field} {rule}", rule = crate::submission::attachment_name_rule())]
    AttachmentName { index: usize, field: &'static str },
}

/// Why a package payload's files could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageFilesError {
    #[error("{0} is streamed, not rendered")]
    Streamed(String),
    #[error("the zip does not read back: {0}")]
    Zip(String),
    #[error("a zip entry's name does not read back: {0}")]
    EntryName(String),
    #[error("the mapping makes one document; expect it with a file `*.expected.<ext>`")]
    OneDocument,
}

/// Completes a fixture input the way intake builds the queued message.
pub fn prepare_input(mut input: Value) -> Result<Value, FixtureInputError> {
    let Some(object) = input.as_object_mut() else { return Err(FixtureInputError::NotAnObject) };
    if !object.contains_key("data")
        && let Some(Value::String(xml)) = object.get("dataXml")
    {
        let tree = crate::submission::xml::to_json(xml)?;
        object.insert("data".into(), tree);
    }
    if let Some(Value::Array(attachments)) = object.get_mut("attachments") {
        let names: Vec<String> =
            attachments.iter().map(|a| a.get("name").and_then(Value::as_str).unwrap_or("attachment").to_owned()).collect();
        // A fixture holds what intake would let through, nothing else.
        for (i, attachment) in attachments.iter().enumerate() {
            for field in ["name", "file"] {
                if let Some(name) = attachment.get(field).and_then(Value::as_str)
                    && !crate::submission::is_safe_file_name(name)
                {
                    return Err(FixtureInputError::AttachmentName { index: i, field });
                }
            }
        }
        let files = crate::submission::unique_file_names(names.iter().map(String::as_str));
        for (attachment, file) in attachments.iter_mut().zip(files) {
            if let Some(a) = attachment.as_object_mut() {
                a.entry("file").or_insert(Value::String(file));
            }
        }
    }
    Ok(input)
}

/// Runs every fixture of every mapping under `path`.
pub async fn run(path: &Path, evaluator: Evaluator<'_>, write: WriteExpected) -> std::io::Result<Report> {
    let root = mappings_root(path);
    let mut report = Report::default();
    for mapping_path in mapping_files(path)? {
        let fixtures = fixtures_of(&mapping_path)?;
        let relative = mapping_path.strip_prefix(&root).unwrap_or(&mapping_path);
        let mapping = match Mapping::load(&root, relative) {
            Ok(m) => m,
            Err(e) => {
                let _ = writeln!(report.log, "FAIL  {}\n      {e}", mapping_path.display());
                report.failed.push(mapping_path.display().to_string());
                continue;
            }
        };
        if fixtures.is_empty() {
            let _ = writeln!(report.log, "----  {} has no fixtures", mapping_path.display());
            report.untested.push(mapping_path.clone());
        }
        for fixture in fixtures {
            let label = format!("{} ← {}", mapping_path.display(), fixture.input.file_name().unwrap_or_default().to_string_lossy());
            match check(&mapping, &fixture, &evaluator, write).await {
                Ok(Outcome::Passed) => {
                    report.passed += 1;
                    let _ = writeln!(report.log, "ok    {label}");
                }
                Ok(Outcome::Blessed(path)) => {
                    let _ = writeln!(report.log, "new   {label}: wrote {}", path.display());
                    report.blessed.push(path);
                }
                Ok(Outcome::Updated(path, diff)) => {
                    let _ = writeln!(report.log, "upd   {label}: wrote {}\n{}", path.display(), indent(&diff));
                    report.blessed.push(path);
                }
                Err(problem) => {
                    let _ = writeln!(report.log, "FAIL  {label}\n{}", indent(&problem));
                    report.failed.push(label);
                }
            }
        }
    }
    let _ = writeln!(
        report.log,
        "\n{} passed, {} failed, {} written, {} mappings without fixtures",
        report.passed,
        report.failed.len(),
        report.blessed.len(),
        report.untested.len()
    );
    Ok(report)
}

enum Outcome {
    Passed,
    Blessed(PathBuf),
    /// The expected file was rewritten; what changed.
    Updated(PathBuf, String),
}

async fn check(mapping: &Mapping, fixture: &Fixture, evaluator: &Evaluator<'_>, write: WriteExpected) -> Result<Outcome, String> {
    let input: Value = serde_json::from_slice(&std::fs::read(&fixture.input).map_err(|e| e.to_string())?)
        .map_err(|e| format!("{}: not JSON: {e}", fixture.input.display()))?;
    let input = prepare_input(input).map_err(|e| e.to_string())?;
    let now = input
        .get("receivedAt")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or(0, |t| t.as_second());
    let bytes = serde_json::to_vec(&input).expect("JSON serializes");
    let result = match evaluator {
        Evaluator::InProcess => {
            let value = super::input::parse(&bytes::Bytes::from(bytes)).map_err(|e| e.to_string())?;
            mapping.render(&value, now).map_err(|e| e.to_string())
        }
        Evaluator::Sandbox(sandbox) => match sandbox.render(mapping, &bytes, &[], now).await {
            Ok(rendition) => rendition.into_payload(|_| None),
            Err(EvalError::Mapping(e)) => Err(e.to_string()),
            Err(other) => Err(format!("sandbox: {other}")),
        },
    };
    match (&fixture.expected, result) {
        (Expected::Error(path), Err(actual)) => {
            let wanted = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
            if actual.contains(wanted.trim()) { Ok(Outcome::Passed) } else { Err(format!("the error was:\n  {actual}\nexpected it to contain:\n  {}", wanted.trim())) }
        }
        (Expected::Error(_), Ok(_)) => Err("the mapping succeeded, but the fixture expects an error".into()),
        (_, Err(actual)) => Err(format!("the mapping failed: {actual}")),
        (Expected::Missing(path), Ok(payload)) if write != WriteExpected::Never => {
            bless_into(path, mapping, &payload).map(Outcome::Blessed)
        }
        (Expected::Missing(path), Ok(_)) => Err(format!("no expected output; run with --bless to write {}.*", path.display())),
        (Expected::Bytes(path), Ok(payload)) => {
            let expected = std::fs::read(path).map_err(|e| e.to_string())?;
            let actual = match &payload {
                Payload::Document { body, .. } => body.to_vec(),
                Payload::Files(_) => return Err("the mapping makes a folder package; expect it with a folder `*.expected/`".into()),
            };
            match compare(&expected, &actual) {
                Ok(()) => Ok(Outcome::Passed),
                Err(diff) if write == WriteExpected::Differing => {
                    std::fs::write(path, &actual).map_err(|e| e.to_string())?;
                    Ok(Outcome::Updated(path.clone(), diff))
                }
                Err(diff) => Err(format!("{diff}\n(if the actual output is right, `amtsbote mappings test --update` writes it)")),
            }
        }
        (Expected::Folder(path), Ok(payload)) => {
            let expected = read_folder(path).map_err(|e| e.to_string())?;
            let actual = files_of(payload.clone()).map_err(|e| e.to_string())?;
            match compare_files(&expected, &actual) {
                Ok(()) => Ok(Outcome::Passed),
                Err(diff) if write == WriteExpected::Differing => {
                    std::fs::remove_dir_all(path).map_err(|e| e.to_string())?;
                    bless_into(path, mapping, &payload)?;
                    Ok(Outcome::Updated(path.clone(), diff))
                }
                Err(diff) => Err(format!("{diff}\n(if the actual output is right, `amtsbote mappings test --update` writes it)")),
            }
        }
    }
}

fn bless_into(path: &Path, mapping: &Mapping, payload: &Payload) -> Result<PathBuf, String> {
    match payload {
        Payload::Document { content_type, body } if content_type != "application/zip" => {
            let file = PathBuf::from(format!("{}.{}", path.display(), mapping.extension()));
            std::fs::write(&file, body).map_err(|e| e.to_string())?;
            Ok(file)
        }
        _ => {
            for (name, content) in files_of(payload.clone()).map_err(|e| e.to_string())? {
                let file = path.join(&name);
                std::fs::create_dir_all(file.parent().expect("a file in a folder")).map_err(|e| e.to_string())?;
                std::fs::write(&file, content).map_err(|e| e.to_string())?;
            }
            Ok(path.to_owned())
        }
    }
}

/// The files of a package payload (a zip is unpacked), sorted by path.
pub fn files_of(payload: Payload) -> Result<Vec<(String, Vec<u8>)>, PackageFilesError> {
    let mut files: Vec<(String, Vec<u8>)> = match payload {
        Payload::Files(files) => files
            .into_iter()
            .map(|f| Ok((f.path.clone(), f.content.in_memory().ok_or_else(|| PackageFilesError::Streamed(f.path.clone()))?.to_vec())))
            .collect::<Result<_, PackageFilesError>>()?,
        Payload::Document { content_type, body } if content_type == "application/zip" => {
            let mut archive = zip::ZipArchive::new(std::io::Cursor::new(body)).map_err(|e| PackageFilesError::Zip(e.to_string()))?;
            let mut files = Vec::new();
            for i in 0..archive.len() {
                let mut entry = archive.by_index(i).map_err(|e| PackageFilesError::Zip(e.to_string()))?;
                let mut content = Vec::new();
                entry.read_to_end(&mut content).map_err(|e| PackageFilesError::Zip(e.to_string()))?;
                let name = entry.name().map_err(|e| PackageFilesError::EntryName(e.to_string()))?.into_owned();
                files.push((name, content));
            }
            files
        }
        Payload::Document { .. } => return Err(PackageFilesError::OneDocument),
    };
    files.sort();
    Ok(files)
}

fn read_folder(dir: &Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d)? {
            let p = entry?.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let name = p.strip_prefix(dir).expect("under dir").to_string_lossy().replace('\\', "/");
                files.push((name, std::fs::read(&p)?));
            }
        }
    }
    files.sort();
    Ok(files)
}

fn compare_files(expected: &[(String, Vec<u8>)], actual: &[(String, Vec<u8>)]) -> Result<(), String> {
    let mut problems = Vec::new();
    for (name, content) in expected {
        match actual.iter().find(|(n, _)| n == name) {
            None => problems.push(format!("missing file {name}")),
            Some((_, got)) => {
                if let Err(diff) = compare(content, got) {
                    problems.push(format!("file {name} differs:\n{}", indent(&diff)));
                }
            }
        }
    }
    for (name, _) in actual {
        if !expected.iter().any(|(n, _)| n == name) {
            problems.push(format!("unexpected file {name}"));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

/// Equal bytes, or a unified diff (text) or a size note (binary).
fn compare(expected: &[u8], actual: &[u8]) -> Result<(), String> {
    if expected == actual {
        return Ok(());
    }
    match (std::str::from_utf8(expected), std::str::from_utf8(actual)) {
        (Ok(e), Ok(a)) => {
            let diff = similar::TextDiff::from_lines(e, a);
            let mut out = String::new();
            for hunk in diff.unified_diff().context_radius(2).header("expected", "actual").iter_hunks() {
                let _ = write!(out, "{hunk}");
            }
            if out.trim().is_empty() {
                // Same lines, different line ends or final newline.
                out = "the texts differ only in line ends or the final newline".into();
            }
            Err(out)
        }
        _ => Err(format!("binary content differs ({} bytes expected, {} bytes actual)", expected.len(), actual.len())),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("      {l}")).collect::<Vec<_>>().join("\n")
}
