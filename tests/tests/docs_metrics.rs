//! The operations runbook (docs/operations.md) tells operators what to alert on and
//! which commands to run. A renamed metric or subcommand would leave an alert that never
//! fires, or a runbook step that fails in the middle of an incident. So:
//!
//! - every `baton_…` metric named in docs/operations.md and README.md is one the
//!   issuer defines (`services/issuer/src/metrics.rs`, where metric names live, once),
//!   every label a document puts on it (`name{label=…}`) is one the issuer records it
//!   with, and every defined metric appears in the runbook;
//! - every `baton …` command line in a ```sh block of docs/operations.md names a real
//!   subcommand path (`baton <sub> [<sub2>] --help` exits 0) and only flags that
//!   path's `--help` lists.

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
}

/// A metric the issuer defines: its name, whether it is a histogram (then Prometheus
/// also exposes `_bucket`, `_sum` and `_count`), and the labels it is recorded with.
#[derive(Debug, Default)]
struct Metric {
    histogram: bool,
    labels: BTreeSet<String>,
}

/// The metrics of `metrics.rs` (`pub const NAME: &str = "baton_…";`), keyed by
/// metric name, with the labels every `counter!` / `gauge!` / `histogram!` call in the
/// issuer's sources records them with, and those of series `metrics.rs` renders
/// itself (`{CONST}{{label=\"…\"}}`).
fn defined_metrics() -> BTreeMap<String, Metric> {
    let metrics_rs = read("services/issuer/src/metrics.rs");
    let mut by_const = BTreeMap::new();
    for line in metrics_rs.lines() {
        let Some(rest) = line.trim().strip_prefix("pub const ") else {
            continue;
        };
        let Some((ident, value)) = rest.split_once(": &str = \"") else {
            continue;
        };
        let Some(name) = value.strip_suffix("\";") else {
            continue;
        };
        if name.starts_with("baton_") {
            by_const.insert(ident.to_owned(), name.to_owned());
        }
    }
    let mut metrics: BTreeMap<String, Metric> = by_const
        .values()
        .map(|name| (name.clone(), Metric::default()))
        .collect();

    const MACROS: [&str; 3] = ["counter!(", "gauge!(", "histogram!("];
    for file in rust_files(&repo_root().join("services/issuer/src")) {
        let source = std::fs::read_to_string(&file).unwrap();
        let starts: Vec<(usize, &str)> = MACROS
            .iter()
            .flat_map(|m| source.match_indices(m).map(|(i, _)| (i + m.len(), *m)))
            .collect();
        for &(start, mac) in &starts {
            // The call's text: up to the statement's end or the next macro call.
            let end = starts
                .iter()
                .map(|&(s, _)| s)
                .filter(|&s| s > start)
                .chain(source[start..].find(';').map(|i| start + i))
                .min()
                .unwrap_or(source.len());
            let call = &source[start..end];
            let first = call.split([',', ')']).next().unwrap_or("").trim();
            let ident = first.rsplit("::").next().unwrap_or(first);
            let Some(name) = by_const.get(ident) else {
                continue;
            };
            let metric = metrics.get_mut(name).unwrap();
            metric.histogram |= mac == "histogram!(";
            metric.labels.extend(labels_before_arrows(call));
        }
    }
    for (ident, name) in &by_const {
        let marker = format!("{{{ident}}}{{{{");
        for (i, _) in metrics_rs.match_indices(&marker) {
            let rest = &metrics_rs[i + marker.len()..];
            let inner = &rest[..rest.find("}}").unwrap_or(0)];
            for pair in inner.split(',') {
                if let Some((label, _)) = pair.split_once('=') {
                    metrics
                        .get_mut(name)
                        .unwrap()
                        .labels
                        .insert(label.to_owned());
                }
            }
        }
    }
    metrics
}

/// The string literals directly before `=>` in a metrics macro call: its label names.
fn labels_before_arrows(call: &str) -> Vec<String> {
    let mut labels = Vec::new();
    for (i, _) in call.match_indices("=>") {
        let before = call[..i].trim_end();
        let Some(body) = before.strip_suffix('"') else {
            continue;
        };
        let Some(open) = body.rfind('"') else {
            continue;
        };
        let label = &body[open + 1..];
        if !label.is_empty() && label.bytes().all(is_ident_byte) {
            labels.push(label.to_owned());
        }
    }
    labels
}

/// Identifiers starting `baton_` that are Rust crates, not metrics.
const CRATES: [&str; 4] = ["baton_sdk", "baton_issuer", "baton_proto", "baton_tests"];

/// Every metric `text` names, with the label names of each `name{…}` selector (README
/// style `{method,reason}` or PromQL `{route="/v1/token",status=~"5.."}`).
fn mentioned_metrics(text: &str) -> Vec<(String, Vec<String>)> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    for (i, _) in text.match_indices("baton_") {
        if i > 0 && (is_ident_byte(bytes[i - 1]) || bytes[i - 1] == b':') {
            continue;
        }
        let len = text[i..].bytes().take_while(|&b| is_ident_byte(b)).count();
        let name = &text[i..i + len];
        let after = &text[i + len..];
        if CRATES.contains(&name) || after.starts_with("::") || name.ends_with('_') {
            continue;
        }
        let mut labels = Vec::new();
        if let Some(selector) = after.strip_prefix('{') {
            let inner = &selector[..selector.find('}').unwrap_or(0)];
            for part in inner.split(',') {
                let label: String = part
                    .trim()
                    .bytes()
                    .take_while(|&b| is_ident_byte(b))
                    .map(char::from)
                    .collect();
                if !label.is_empty() {
                    labels.push(label);
                }
            }
        }
        found.push((name.to_owned(), labels));
    }
    found
}

/// The metric `name` refers to and the labels it may carry: its own, or a histogram's
/// series (`_bucket` adds `le`).
fn resolve<'a>(
    metrics: &'a BTreeMap<String, Metric>,
    name: &str,
) -> Option<(&'a str, BTreeSet<String>)> {
    if let Some((defined, m)) = metrics.get_key_value(name) {
        return Some((defined, m.labels.clone()));
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        let Some(base) = name.strip_suffix(suffix) else {
            continue;
        };
        if let Some((defined, m)) = metrics.get_key_value(base)
            && m.histogram
        {
            let mut labels = m.labels.clone();
            if suffix == "_bucket" {
                labels.insert("le".to_owned());
            }
            return Some((defined, labels));
        }
    }
    None
}

#[test]
fn every_metric_and_label_the_docs_name_is_defined_and_every_metric_is_in_the_runbook() {
    let metrics = defined_metrics();
    assert!(
        metrics.len() >= 20,
        "only {} metrics found in metrics.rs: is the parser broken?",
        metrics.len()
    );
    assert!(
        metrics["baton_token_denials_total"]
            .labels
            .contains("reason")
            && metrics["baton_http_request_duration_seconds"].histogram
            && metrics["baton_signing_key_age_seconds"]
                .labels
                .contains("state"),
        "the metrics.rs parser lost labels or kinds: {metrics:?}"
    );

    let mut problems = Vec::new();
    let mut runbook_names = BTreeSet::new();
    for doc in ["docs/operations.md", "README.md"] {
        for (name, labels) in mentioned_metrics(&read(doc)) {
            let Some((defined, known)) = resolve(&metrics, &name) else {
                problems.push(format!("{doc}: `{name}` is not defined in metrics.rs"));
                continue;
            };
            if doc == "docs/operations.md" {
                runbook_names.insert(defined.to_owned());
            }
            for label in labels {
                if !known.contains(&label) {
                    problems.push(format!(
                        "{doc}: `{name}` is never recorded with label `{label}` (it has {known:?})"
                    ));
                }
            }
        }
    }
    for name in metrics.keys() {
        if !runbook_names.contains(name) {
            problems.push(format!(
                "docs/operations.md does not mention `{name}`: add it to the metrics table"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// One `baton …` invocation found in a shell block.
#[derive(Debug)]
struct Invocation {
    line: String,
    /// The subcommand path, e.g. `["keys", "revoke"]`.
    path: Vec<String>,
    /// The `--flags` it passes.
    flags: Vec<String>,
}

/// Every `baton …` command of the ```sh blocks of `markdown`: the first word of a
/// simple command (after `VAR=value` assignments), at the start of a line or after
/// `|`, `;`, `&&`, `||` or `$(`, that is `baton` or ends in `/baton`.
fn baton_invocations(markdown: &str) -> Vec<Invocation> {
    let mut lines = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for raw in markdown.lines() {
        let trimmed = raw.trim();
        if trimmed.starts_with("```") {
            in_sh = !in_sh && trimmed == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = match trimmed.find(" #") {
            _ if trimmed.starts_with('#') => "",
            Some(i) => &trimmed[..i],
            None => trimmed,
        };
        match code.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(code);
                lines.push(std::mem::take(&mut pending));
            }
        }
    }

    let mut found = Vec::new();
    for line in lines {
        let separated = line
            .replace("$(", ";")
            .replace("&&", ";")
            .replace("||", ";");
        for segment in separated.split(['|', ';', '(', ')', '`']) {
            let mut words = segment
                .split_whitespace()
                .skip_while(|w| is_assignment(w) || ["sudo", "env", "exec"].contains(w));
            match words.next() {
                Some(w) if w == "baton" || w.ends_with("/baton") => {}
                _ => continue,
            }
            let mut path = Vec::new();
            let mut flags = Vec::new();
            // Subcommands come first; only the global `--data-dir` may precede them.
            let mut in_path = true;
            while let Some(word) = words.next() {
                if let Some(flag) = word.strip_prefix("--") {
                    let (flag, inline_value) = match flag.split_once('=') {
                        Some((flag, _)) => (flag, true),
                        None => (flag, false),
                    };
                    if flag == "data-dir" {
                        if !inline_value {
                            words.next();
                        }
                    } else {
                        in_path = false;
                    }
                    flags.push(format!("--{flag}"));
                } else if in_path && path.len() < 2 && is_subcommand(word) {
                    path.push(word.to_owned());
                } else {
                    in_path = false;
                }
            }
            found.push(Invocation {
                line: line.clone(),
                path,
                flags,
            });
        }
    }
    found
}

/// A word that can be a subcommand name: lower case, digits and `-`.
fn is_subcommand(word: &str) -> bool {
    word.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && word
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

#[test]
fn command_line_parser_finds_paths_flags_and_skips_other_programs() {
    let doc = "```sh\n\
        BATON_KEK_FILE=/k baton --data-dir /d kek rotate --new-kek-file F\n\
        baton keys revoke KID --force   # emergency\n\
        baton identities revoke spiffe://example.org/fn/a --json\n\
        systemctl stop baton\n\
        x=$(baton token mint --issuer U \\\n  --audience A) && echo $x\n\
        ```\n\
        baton not-in-a-block\n";
    let found: Vec<(Vec<String>, Vec<String>)> = baton_invocations(doc)
        .into_iter()
        .map(|i| (i.path, i.flags))
        .collect();
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        found,
        vec![
            (
                strings(&["kek", "rotate"]),
                strings(&["--data-dir", "--new-kek-file"])
            ),
            (strings(&["keys", "revoke"]), strings(&["--force"])),
            (strings(&["identities", "revoke"]), strings(&["--json"])),
            (
                strings(&["token", "mint"]),
                strings(&["--issuer", "--audience"])
            ),
        ]
    );
}

#[test]
fn every_baton_command_in_the_runbook_is_a_real_subcommand_with_real_flags() {
    let invocations = baton_invocations(&read("docs/operations.md"));
    assert!(
        invocations.len() >= 15,
        "only {} `baton` command lines found in docs/operations.md: is the parser broken?",
        invocations.len()
    );
    let mut by_path: BTreeMap<Vec<String>, Vec<&Invocation>> = BTreeMap::new();
    let mut problems = Vec::new();
    for invocation in &invocations {
        if invocation.path.is_empty() {
            problems.push(format!("no subcommand in: {}", invocation.line));
            continue;
        }
        by_path
            .entry(invocation.path.clone())
            .or_default()
            .push(invocation);
    }
    assert!(by_path.len() >= 10, "only {} command paths", by_path.len());

    let bin = baton_tests::baton_bin();
    for (path, uses) in &by_path {
        let out = Command::new(&bin)
            .args(path)
            .arg("--help")
            .env_clear()
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            problems.push(format!(
                "`baton {} --help` failed ({}): {}\n  used in: {}",
                path.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                uses[0].line
            ));
            continue;
        }
        for invocation in uses {
            for flag in &invocation.flags {
                let listed = help.match_indices(flag.as_str()).any(|(i, _)| {
                    !help[i + flag.len()..]
                        .bytes()
                        .next()
                        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
                if !listed {
                    problems.push(format!(
                        "`baton {}` has no flag {flag}\n  used in: {}",
                        path.join(" "),
                        invocation.line
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
