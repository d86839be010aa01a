//! The crate's data flows one way: each part imports only the parts it
//! hands data to, and the shared leaves. This test reads `src/` and fails
//! on an import against the flow (see the README's "How it is built").

use std::collections::BTreeSet;
use std::path::Path;

/// What each top-level module may import from the crate (besides itself).
fn allowed(module: &str) -> Option<&'static [&'static str]> {
    Some(match module {
        // Leaves: shared by all, importing nothing.
        "error" | "queue" => &[],
        // The record format: vocabulary, encoding, chain, line layout.
        "record" => &[],
        // Reading events, then submitting to the pipeline it builds.
        "layer" => &["record", "pipeline", "sink", "queue", "error"],
        // The worker: sequencing, sealing, handing lines to the sinks.
        "pipeline" => &["record", "sink", "queue", "error"],
        // The file and the forwarders.
        "sink" => &["record", "queue", "error"],
        // The read side: the files a file sink wrote.
        "trail" => &["record", "sink", "policy", "error"],
        // The sidecar layer: the layer's reading of fields and spans.
        "policy" => &["record", "layer", "error"],
        _ => return None,
    })
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The lowercase module names after `crate::` in code (not comments).
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + 7..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let next = rest[name.len()..].chars().next();
            // `crate::Name` (a root re-export) names no module.
            if !name.is_empty() && !next.is_some_and(char::is_alphanumeric) {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn no_module_imports_against_the_flow() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs");
        let Some(ok) = allowed(module) else {
            continue; // lib.rs and the command (which use the public API)
        };
        checked += 1;
        for m in imports(&std::fs::read_to_string(f).unwrap()) {
            if m != module && !ok.contains(&m.as_str()) {
                wrong.push(format!("{} imports crate::{m}", rel.display()));
            }
        }
    }
    assert!(
        checked >= 20,
        "only {checked} files checked: has src/ moved?"
    );
    assert!(
        wrong.is_empty(),
        "imports against the flow:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_scanner_sees_imports() {
    let text = "use crate::pipeline::Msg;\n// crate::sink in a comment\nlet x = crate::AuditStats::default(); crate::record::encode::cut_str(a, 1);";
    let got: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(got, ["pipeline", "record"]);
}
