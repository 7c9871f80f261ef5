//! The threat model, the security docs and the fuzzing guide name the tests that prove
//! each defence. A renamed or deleted test would leave a claim with no proof behind it:
//! every `[label::test_name](path/to/file.rs)` link in those documents must point at a
//! file that defines `fn test_name`.

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The documents that cite tests: the threat model, the security policy, the fuzzing
/// guide (its findings' regression tests), and docs/.
fn documents() -> Vec<PathBuf> {
    let root = repo_root();
    let mut docs = vec![
        root.join("THREAT_MODEL.md"),
        root.join("SECURITY.md"),
        root.join("fuzz/README.md"),
    ];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    pages.sort();
    docs.extend(pages);
    docs
}

/// Every `(label, target)` of a Markdown link `[label](target)` in `text`.
fn links(text: &str) -> Vec<(&str, &str)> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(mid) = rest.find("](") {
        let label_start = rest[..mid].rfind('[').map(|i| i + 1);
        let target_end = rest[mid + 2..].find(')').map(|i| mid + 2 + i);
        if let (Some(start), Some(end)) = (label_start, target_end) {
            found.push((&rest[start..mid], &rest[mid + 2..end]));
        }
        rest = &rest[mid + 2..];
    }
    found
}

/// The test name a link cites, when its label is `module::test_name` and its target a
/// Rust file.
fn cited_test<'a>(label: &'a str, target: &str) -> Option<&'a str> {
    let (_, name) = label.rsplit_once("::")?;
    let is_ident = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    (is_ident && target.ends_with(".rs")).then_some(name)
}

#[test]
fn every_cited_test_exists_where_the_link_points() {
    let mut checked = 0;
    let mut missing = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let base = doc.parent().unwrap();
        for (label, target) in links(&text) {
            if target.starts_with("http") {
                continue;
            }
            let Some(name) = cited_test(label, target) else {
                // Any other relative link must at least lead somewhere.
                let file = base.join(target.split('#').next().unwrap_or(target));
                if !file.exists() {
                    missing.push(format!(
                        "{}: [{label}]({target}): no such file",
                        doc.display()
                    ));
                }
                continue;
            };
            let path = base.join(target);
            let source = std::fs::read_to_string(&path).unwrap_or_default();
            if !source.contains(&format!("fn {name}(")) {
                missing.push(format!(
                    "{}: [{label}]({target}): no `fn {name}` in {}",
                    doc.display(),
                    path.display()
                ));
            }
            checked += 1;
        }
    }
    assert!(
        missing.is_empty(),
        "dangling citations:\n{}",
        missing.join("\n")
    );
    assert!(
        checked >= 40,
        "only {checked} cited tests found: is the parser broken?"
    );
}

#[test]
fn link_parser_finds_labels_and_targets() {
    let text = "see [a::b_c](x/y.rs) and [SPEC](../SPEC.md), not [plain] text (here)";
    assert_eq!(
        links(text),
        vec![("a::b_c", "x/y.rs"), ("SPEC", "../SPEC.md")]
    );
    assert_eq!(cited_test("a::b_c", "x/y.rs"), Some("b_c"));
    assert_eq!(cited_test("SPEC", "../SPEC.md"), None);
    assert_eq!(cited_test("a::B", "x.rs"), None);
}
