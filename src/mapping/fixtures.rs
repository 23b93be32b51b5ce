//! Fixture pairs beside the mappings: `<dir>/fixtures/<name>.input.json`
//! (a queued submission) and `<dir>/fixtures/<name>.expected.<ext>` (the
//! exact bytes the mapping `<dir>/<name>.yaml` must produce).

use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct Fixture {
    pub mapping: PathBuf,
    pub input: PathBuf,
    pub expected: PathBuf,
}

/// Every fixture under `mappings_dir`, sorted by path.
pub fn discover(mappings_dir: &Path) -> std::io::Result<Vec<Fixture>> {
    let mut fixtures = Vec::new();
    for entry in std::fs::read_dir(mappings_dir)? {
        let dir = entry?.path();
        let fixture_dir = dir.join("fixtures");
        if !fixture_dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&fixture_dir)? {
            let input = file?.path();
            let Some(name) = input.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".input.json")) else {
                continue;
            };
            let expected = std::fs::read_dir(&fixture_dir)?
                .filter_map(|f| f.ok().map(|f| f.path()))
                .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{name}.expected."))))
                .unwrap_or_else(|| fixture_dir.join(format!("{name}.expected")));
            fixtures.push(Fixture { mapping: dir.join(format!("{name}.yaml")), input: input.clone(), expected });
        }
    }
    fixtures.sort_by(|a, b| a.input.cmp(&b.input));
    Ok(fixtures)
}
