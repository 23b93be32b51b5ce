//! The import graph of `src/` against the layers ARCHITECTURE.md
//! declares ("Layers: who may import whom"): a module imports only from
//! its own layer or those below, never upwards; within a layer marked
//! "none imports another" not at all; and no modules import each other
//! in a circle. A new feature that needs an upward import moves the
//! shared piece down instead.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module as the layers name it: a top-level module of the library
/// (`src/x.rs` or `src/x/…`), the binary (`main`), or a submodule the
/// table names on its own (`http::intake`, `fit_connect::settings`: a
/// "wing" whose parts sit in different layers; `http` itself is
/// `src/http/mod.rs`).
fn unit_of(relative: &Path, wings: &BTreeSet<String>) -> String {
    let parts: Vec<String> = relative.with_extension("").iter().map(|p| p.to_string_lossy().into_owned()).collect();
    match parts.as_slice() {
        [first, second, ..] if wings.contains(&format!("{first}::{second}")) => format!("{first}::{second}"),
        [first, ..] => first.clone(),
        [] => unreachable!("a file has a name"),
    }
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// `crate::x`, `amtsbote::x` (and in a wing's submodule `super::x`) in
/// code, comments left out, as the units they name. A `super::` inside an
/// inline module (`mod tests { use super::*; }`) names that module's
/// parent, the file's own module, not the wing. Read line by line: an
/// inline module opens on the line of its `mod` (after attributes), its
/// body on the lines after; block comments are not read as comments (a
/// brace in one fails the test, it does not pass it).
fn imports_of(unit: &str, source: &str, wings: &BTreeSet<String>) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    let wing_of_unit = unit.split_once("::").map(|(wing, _)| wing.to_owned());
    // Brace depth, and the depth at which each open inline module began.
    let mut depth = 0usize;
    let mut inline_modules: Vec<usize> = Vec::new();
    let mut literal = Literal::None;
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        for prefix in ["crate::", "amtsbote::", "super::"] {
            if prefix == "super::" && wing_of_unit.is_none() {
                continue;
            }
            let mut rest = code;
            while let Some(at) = rest.find(prefix) {
                let before = rest[..at].chars().next_back();
                let mut after = &rest[at + prefix.len()..];
                // `super::super::…`: how many modules up.
                let mut up = 1;
                while prefix == "super::"
                    && let Some(further) = after.strip_prefix(prefix)
                {
                    after = further;
                    up += 1;
                }
                rest = after;
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                // Still within this file's module: no import.
                if prefix == "super::" && up <= inline_modules.len() {
                    continue;
                }
                let to_the_wing = prefix == "super::" && up == inline_modules.len() + 1;
                assert!(!after.starts_with('{'), "{unit}: write one `use` per module, not `{prefix}{{…}}`: {line}");
                let word = |text: &str| -> String { text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
                let first = word(after);
                let (wing, part) = match &wing_of_unit {
                    Some(wing) if to_the_wing => (wing.clone(), first.clone()),
                    _ => (first.clone(), after.strip_prefix(&format!("{first}::")).map(word).unwrap_or_default()),
                };
                let target = if wings.contains(&format!("{wing}::{part}")) { format!("{wing}::{part}") } else { wing };
                if !target.is_empty() && target != unit && target != "lib" {
                    named.insert(target);
                }
            }
        }
        let opens_inline_module = {
            let mut item = code.trim_start();
            // `#[cfg(test)] mod tests {`
            while item.starts_with("#[")
                && let Some(end) = item.find(']')
            {
                item = item[end + 1..].trim_start();
            }
            let item = ["pub(crate) ", "pub(super) ", "pub "].iter().find_map(|v| item.strip_prefix(v)).unwrap_or(item);
            item.starts_with("mod ") && item.contains('{')
        };
        let mut opened = false;
        for c in braces(line, &mut literal) {
            match c {
                '{' => {
                    if opens_inline_module && !opened {
                        inline_modules.push(depth);
                        opened = true;
                    }
                    depth += 1;
                }
                '}' => {
                    depth = depth.saturating_sub(1);
                    if inline_modules.last() == Some(&depth) {
                        inline_modules.pop();
                    }
                }
                _ => {}
            }
        }
    }
    assert_eq!(depth, 0, "{unit}: its braces, as read, do not balance");
    named
}

/// What a line ends in: code, or a string or raw string (with its
/// number of `#`) that goes on in the next line.
#[derive(Clone, Copy, PartialEq)]
enum Literal {
    None,
    Str,
    Raw(usize),
}

/// The braces in a line, those in string and char literals and comments
/// left out.
fn braces(line: &str, literal: &mut Literal) -> Vec<char> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let chars: Vec<char> = line.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match *literal {
            Literal::Str if c == '\\' => i += 1,
            Literal::Str if c == '"' => *literal = Literal::None,
            Literal::Str => {}
            Literal::Raw(hashes) => {
                if c == '"' && chars.get(i + 1..i + 1 + hashes).is_some_and(|h| h.iter().all(|&c| c == '#')) {
                    *literal = Literal::None;
                    i += hashes;
                }
            }
            Literal::None => match c {
                '"' => *literal = Literal::Str,
                // r"…", r#"…"#, br#"…"#
                'r' if (i == 0 || !ident(chars[i - 1]) || (chars[i - 1] == 'b' && (i == 1 || !ident(chars[i - 2]))))
                    && matches!(chars.get(i + 1), Some('"' | '#')) =>
                {
                    let hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
                    if chars.get(i + 1 + hashes) == Some(&'"') {
                        *literal = Literal::Raw(hashes);
                        i += 1 + hashes;
                    }
                }
                // A char literal ('{', '\'', '\u{7b}'); a lifetime has no
                // closing quote there.
                '\'' => {
                    if chars.get(i + 2) == Some(&'\'') {
                        i += 2;
                    } else if chars.get(i + 1) == Some(&'\\') {
                        i += chars.get(i + 3..).and_then(|rest| rest.iter().position(|&c| c == '\'')).map_or(0, |end| end + 3);
                    }
                }
                '/' if chars.get(i + 1) == Some(&'/') => break,
                '{' | '}' => found.push(c),
                _ => {}
            },
        }
        i += 1;
    }
    found
}

struct Layer {
    name: String,
    modules: Vec<String>,
    peers_independent: bool,
}

/// The table under "## Layers: who may import whom": `| layer | modules |
/// rule |`, top to bottom.
fn declared_layers() -> Vec<Layer> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md")).unwrap();
    let section = text.split("## Layers: who may import whom").nth(1).expect("ARCHITECTURE.md has the layers section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter(|line| line.starts_with("| ") && !line.starts_with("| layer") && !line.starts_with("|---"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let modules = cells[2].split(',').map(|m| m.trim().trim_matches('`').to_owned()).filter(|m| !m.is_empty()).collect();
            Layer { name: cells[1].to_owned(), modules, peers_independent: cells[3].contains("none imports another") }
        })
        .collect()
}

#[test]
fn modules_import_only_downwards_as_architecture_md_declares() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let layers = declared_layers();
    let wings: BTreeSet<String> = layers.iter().flat_map(|l| l.modules.iter()).filter(|m| m.contains("::")).cloned().collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let unit = unit_of(file.strip_prefix(&src).unwrap(), &wings);
        if unit == "lib" {
            continue;
        }
        let imports = imports_of(&unit, &std::fs::read_to_string(file).unwrap(), &wings);
        graph.entry(unit).or_default().extend(imports);
    }

    assert!(layers.len() >= 5, "the layers table reads");
    let mut layer_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, layer) in layers.iter().enumerate() {
        for module in &layer.modules {
            assert!(layer_of.insert(module, index).is_none(), "{module} is in two layers");
        }
    }
    let mut wrong = Vec::new();
    for unit in graph.keys() {
        if !layer_of.contains_key(unit.as_str()) {
            wrong.push(format!("{unit} is in no layer of ARCHITECTURE.md"));
        }
    }
    for declared in layer_of.keys() {
        if !graph.contains_key(*declared) {
            wrong.push(format!("ARCHITECTURE.md names {declared}, which src/ does not have"));
        }
    }
    for (unit, imports) in &graph {
        let Some(&own) = layer_of.get(unit.as_str()) else { continue };
        for import in imports {
            let Some(&theirs) = layer_of.get(import.as_str()) else { continue };
            if theirs < own {
                wrong.push(format!("{unit} ({}) imports {import} from the layer above ({})", layers[own].name, layers[theirs].name));
            } else if theirs == own && layers[own].peers_independent {
                wrong.push(format!("{unit} imports {import}, but in {} none imports another", layers[own].name));
            }
        }
    }
    for (a, b) in [("broker", "retry"), ("retry", "broker"), ("metrics", "worker")] {
        if graph.get(a).is_some_and(|imports| imports.contains(b)) {
            wrong.push(format!("{a} imports {b}"));
        }
    }
    for circle in circles(&graph) {
        wrong.push(format!("import circle: {}", circle.join(" → ")));
    }
    assert!(wrong.is_empty(), "the import graph breaks the layers:\n  {}", wrong.join("\n  "));
}

/// The message's headers are named, and its field tables built, in
/// `src/message/` only; `broker` builds the queues' argument tables
/// (topology, not message headers) and nothing else does either.
#[test]
fn only_the_message_module_names_headers_and_builds_field_tables() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        if relative.starts_with("message/") {
            continue;
        }
        for (number, line) in std::fs::read_to_string(&file).unwrap().lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let names_a_header = ["\"x-amtsbote", "\"amtsbote-delay\"", "\"traceparent\"", "\"tracestate\"", "\"received-at\""]
                .iter()
                .any(|name| code.contains(name));
            let builds_a_table = code.contains("AMQPValue") && relative != "broker.rs";
            if names_a_header || builds_a_table {
                wrong.push(format!("src/{relative}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(wrong.is_empty(), "headers and field tables belong in src/message/:\n  {}", wrong.join("\n  "));
}

/// The strongly connected components with more than one module (Tarjan).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Search<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Search<'g> {
        fn visit(&mut self, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.graph.contains_key(w) {
                    continue;
                }
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut search = Search { graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on_stack: BTreeSet::new(), found: Vec::new() };
    for v in graph.keys() {
        if !search.index.contains_key(v.as_str()) {
            search.visit(v);
        }
    }
    search.found
}
