//! The library's layers point down only (see `src/lib.rs`): outside test code, a
//! module uses only modules of the layers below its own, never its own layer's
//! others nor anything above. The command line (`src/cli/`, part of the binary) is
//! above all of them; the compiler keeps the library from importing it.
// This test reads source files; it sees the package's dependencies and uses none.
#![allow(
    unused_crate_dependencies,
    reason = "a source-reading test of the package"
)]
#![allow(
    clippy::expect_used,
    reason = "a test: failing to read the sources fails it"
)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Top to bottom.
const LAYERS: &[&[&str]] = &[
    &["cni"],
    &["cluster"],
    &["node", "reconcile"],
    &["endpoint"],
    &["state"],
    &["egress"],
    &["datapath"],
    &["kernel"],
    &["defaults", "error", "fault"],
];

fn layer(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("module {module} is in no layer: add it to LAYERS"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments and its `#[cfg(test)] mod tests`.
fn non_test_code(text: &str) -> String {
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a piece of code names with `crate::`.
fn uses(code: &str) -> BTreeSet<String> {
    code.match_indices("crate::")
        .filter(|(i, _)| {
            // `vethbpf_crate::` or similar identifiers are not paths of this crate.
            !code[..*i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
        })
        .map(|(i, m)| {
            code[i + m.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn library_layers_point_down_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut checked = 0;
    let mut wrong = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("utf-8 path");
        let module = first.trim_end_matches(".rs");
        // The binary's own modules, and the crate roots.
        if matches!(module, "cli" | "main" | "lib") {
            continue;
        }
        // Test-only modules (the fakes, unit tests) may use anything.
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if matches!(name, "testing.rs" | "tests.rs" | "fake.rs") {
            continue;
        }
        let code = non_test_code(&fs::read_to_string(&file).expect("read source"));
        for used in uses(&code) {
            if used == module || used == "EBPF_OBJECT" {
                continue;
            }
            if layer(&used) <= layer(module) {
                wrong.push(format!("{} uses crate::{used}", rel.display()));
            }
        }
        checked += 1;
    }
    assert!(
        checked > 20,
        "only {checked} files checked: is src/ where it was?"
    );
    assert!(
        wrong.is_empty(),
        "upward or sideways uses:\n{}",
        wrong.join("\n")
    );
}
