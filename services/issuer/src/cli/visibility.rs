//! `baton graph [--json | --dot]`, `baton identities list`, `baton policy report` and
//! `baton report --html FILE` (SPEC §9): what the running issuer's call graph shows,
//! read over the admin socket only.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use baton_issuer::admin::{Reply, Request};
use baton_issuer::fsio::{self, Mode};
use baton_issuer::shared::{self, SharedStore};
use baton_issuer::visibility::graph::Graph;
use baton_issuer::visibility::model::{EdgeView, GraphView, IdentityView, PolicyReport, Report};
use baton_issuer::visibility::redis::RedisGraph;
use baton_issuer::visibility::{GRAPH_FILE, add_to_graph_file, html};
use baton_proto::SpiffeId;
use clap::Args;
use serde::de::DeserializeOwned;

use super::{Context, admin, print_json};

#[derive(Debug, Args)]
pub(super) struct GraphArgs {
    /// Print every edge record as JSON.
    #[arg(long, conflicts_with = "dot")]
    json: bool,
    /// Print the graph in Graphviz DOT (`| dot -Tsvg > graph.svg`).
    #[arg(long)]
    dot: bool,
}

#[derive(Debug, Args)]
pub(super) struct ReportArgs {
    /// Write one self-contained HTML page (graph as SVG, inventory, least-privilege
    /// report, recent anomalies) to FILE (mode 0600: it shows the system's shape).
    #[arg(long, value_name = "FILE")]
    html: PathBuf,
    /// The least-privilege window (default: `policy_report_window`).
    #[arg(long)]
    window: Option<humantime::Duration>,
}

#[derive(Debug, Args)]
pub(super) struct PolicyReportArgs {
    /// A rule that granted no token within this window is unused (default: the
    /// configuration's `policy_report_window`, 7days).
    #[arg(long)]
    window: Option<humantime::Duration>,
    /// Refusals of one caller for one audience within the window that make it a
    /// finding (default: `policy_report_min_denials`, 10).
    #[arg(long)]
    min_denials: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    /// Print the inventory as JSON.
    #[arg(long)]
    json: bool,
}

/// Sends `request` and takes member `key` of a successful reply as `T`.
fn fetch<T: DeserializeOwned>(ctx: &Context, request: &Request, key: &str) -> anyhow::Result<T> {
    let reply = admin::call(ctx, request)?;
    if !reply.is_ok() {
        admin::refused(request, &reply)?;
    }
    member(&reply, key).with_context(|| format!("the issuer's `{}` reply", request.name()))
}

fn member<T: DeserializeOwned>(reply: &Reply, key: &str) -> anyhow::Result<T> {
    let value = reply
        .get(key)
        .cloned()
        .with_context(|| format!("has no `{key}`"))?;
    Ok(serde_json::from_value(value)?)
}

pub(super) fn graph(ctx: &Context, args: &GraphArgs) -> anyhow::Result<()> {
    let graph: GraphView = fetch(ctx, &Request::Graph {}, "graph")?;
    if args.json {
        return print_json(&serde_json::to_value(&graph)?);
    }
    if args.dot {
        print!("{}", dot(&graph));
        return Ok(());
    }
    if graph.edges.is_empty() {
        println!("no calls recorded yet ({})", graph.store);
        return Ok(());
    }
    for e in &graph.edges {
        println!("{}", edge_line(e));
    }
    println!(
        "{} edges (at most {} kept; store: {})",
        graph.edges.len(),
        graph.max_edges,
        graph.store
    );
    Ok(())
}

fn edge_line(e: &EdgeView) -> String {
    let mut line = format!("{} -> {}", e.caller, e.audience);
    if let Some(scope) = &e.scope {
        let _ = write!(line, " [{scope}]");
    }
    let _ = write!(line, "  issued {}", e.issued);
    if !e.denied.is_empty() {
        let reasons: Vec<String> = e.denied.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let _ = write!(
            line,
            "  denied {} ({})",
            e.denied_total(),
            reasons.join(", ")
        );
    }
    let _ = write!(
        line,
        "  {:.1}/min  {} last hour  last seen {}",
        e.rate_last_minute,
        e.issued_last_hour,
        time_or(Some(e.last_seen), "never")
    );
    line
}

/// A DOT string literal: quotes and backslashes escaped, line breaks as `\n`. Every
/// name in the graph came from a request, so none is trusted as DOT syntax.
fn dot_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' | '\r' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The graph in Graphviz DOT: one node per identity, one arrow per edge, labelled with
/// its scope, counts and last use; edges that never got a token dashed red.
fn dot(graph: &GraphView) -> String {
    let mut out = String::from(
        "digraph baton {\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"sans-serif\"];\n  edge [fontname=\"sans-serif\", fontsize=10];\n",
    );
    let mut nodes: Vec<&str> = graph
        .edges
        .iter()
        .flat_map(|e| [e.caller.as_str(), e.audience.as_str()])
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    for node in nodes {
        let _ = writeln!(out, "  {};", dot_str(node));
    }
    for e in &graph.edges {
        let mut label = String::new();
        if let Some(scope) = &e.scope {
            let _ = writeln!(label, "{scope}");
        }
        let _ = write!(label, "{} issued", e.issued);
        if e.denied_total() > 0 {
            let _ = write!(label, ", {} denied", e.denied_total());
        }
        let _ = write!(
            label,
            "\nlast {}",
            time_or(e.last_issued.or(Some(e.last_seen)), "never")
        );
        let style = if e.issued == 0 {
            ", style=dashed, color=red, fontcolor=red"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {} -> {} [label={}{style}];",
            dot_str(&e.caller),
            dot_str(&e.audience),
            dot_str(&label)
        );
    }
    out.push_str("}\n");
    out
}

pub(super) fn list_identities(ctx: &Context, args: &ListArgs) -> anyhow::Result<()> {
    let ids: Vec<IdentityView> = fetch(ctx, &Request::ListIdentities {}, "identities")?;
    if args.json {
        return print_json(&serde_json::to_value(&ids)?);
    }
    if ids.is_empty() {
        println!("no identity enrolled or seen yet");
        return Ok(());
    }
    for id in &ids {
        let mut line = id.id.clone();
        if id.denied {
            line.push_str("  DENIED");
        }
        let _ = write!(
            line,
            "  cert expires {}  last token {}  tokens {} issued, {} denied",
            time_or(id.cert_not_after, "unknown"),
            time_or(id.last_token, "never"),
            id.tokens_issued,
            id.tokens_denied,
        );
        if !id.join_tokens.is_empty() {
            let _ = write!(line, "  join tokens {}", id.join_tokens.join(","));
        }
        let _ = write!(line, "  ({})", id.seen_as.join(", "));
        println!("{line}");
    }
    println!("{} identities", ids.len());
    Ok(())
}

pub(super) fn policy_report(ctx: &Context, args: &PolicyReportArgs) -> anyhow::Result<()> {
    let request = Request::PolicyReport {
        window_seconds: args.window.map(|w| Duration::from(w).as_secs()),
        min_denials: args.min_denials,
    };
    let report: PolicyReport = fetch(ctx, &request, "report")?;
    if args.json {
        return print_json(&serde_json::to_value(&report)?);
    }
    let window = humantime::format_duration(Duration::from_secs(report.window_seconds));
    println!(
        "least-privilege report over the last {window}: {} rules{}, {} findings",
        report.rules,
        report
            .policy_file
            .as_deref()
            .map(|f| format!(" in {f}"))
            .unwrap_or_default(),
        report.findings.len()
    );
    for f in &report.findings {
        println!();
        match f.rule {
            Some(rule) => println!("[{}] rule {rule}: {}", f.kind.as_str(), f.summary),
            None => println!("[{}] {}", f.kind.as_str(), f.summary),
        }
        if let Some(current) = &f.current {
            println!("  now:");
            for line in current.lines() {
                println!("    {line}");
            }
        }
        println!("  suggested:");
        for line in f.suggestion.lines() {
            println!("    {line}");
        }
    }
    Ok(())
}

pub(super) fn report(ctx: &Context, args: &ReportArgs) -> anyhow::Result<()> {
    let request = Request::Report {
        window_seconds: args.window.map(|w| Duration::from(w).as_secs()),
    };
    let report: Report = fetch(ctx, &request, "report")?;
    let page = html::render(&report);
    fsio::write_atomic(&args.html, page.as_bytes(), Mode::Private)
        .with_context(|| format!("cannot write {}", args.html.display()))?;
    println!(
        "wrote {}: {} identities, {} edges, {} findings, {} anomalies",
        args.html.display(),
        report.identities.len(),
        report.graph.edges.len(),
        report.policy.findings.len(),
        report.anomalies.len()
    );
    Ok(())
}

/// Records a certificate issued by `baton enroll` in the inventory: through the running
/// issuer when there is one, else straight into the store (the data directory's graph
/// file, or Redis). Best effort: the certificate is issued either way.
pub(super) fn record_enrollment(ctx: &Context, id: &SpiffeId, not_after: i64, now: i64) {
    let request = Request::Enrolled {
        id: id.as_str().to_owned(),
        not_after,
    };
    let socket = ctx.data_dir.admin_socket_path();
    if socket.exists()
        && let Ok(reply) = baton_issuer::admin::call(&socket, &request)
        && reply.is_ok()
    {
        return;
    }
    let recorded = (|| -> anyhow::Result<()> {
        let config = ctx.config()?;
        let mut delta = Graph::new(config.graph_max_edges);
        delta.enrolled(id.as_str(), not_after, now);
        match config.redis_url() {
            Some(url) => {
                let store = SharedStore::connect(url, shared::DEFAULT_TIMEOUT)?;
                RedisGraph::new(store, config.graph_max_edges, config.graph_retention)
                    .add(&delta, now)?;
            }
            None => add_to_graph_file(&ctx.data_dir.root().join(GRAPH_FILE), &delta)?,
        }
        Ok(())
    })();
    if let Err(e) = recorded {
        eprintln!("note: the certificate is issued, but not recorded in the inventory: {e:#}");
    }
}

fn time_or(t: Option<i64>, none: &str) -> String {
    t.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .map_or_else(|| none.to_owned(), super::rfc3339)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_output_cannot_be_broken_out_of() {
        let graph = GraphView {
            generated_at: 0,
            store: "embedded".into(),
            max_edges: 10,
            edges: vec![EdgeView {
                caller: "spiffe://example.org/a".into(),
                audience: "spiffe://example.org/b\"]; evil -> x [label=\"".into(),
                scope: None,
                issued: 0,
                denied: [("audience_not_allowed".to_owned(), 3)].into(),
                first_seen: 1,
                last_seen: 2,
                last_issued: None,
                rate_last_minute: 0.0,
                issued_last_hour: 0,
            }],
        };
        let dot = dot(&graph);
        assert!(!dot.contains("evil -> x [label=\"\""), "{dot}");
        assert!(dot.contains(r#"b\"]; evil"#), "{dot}");
        assert!(dot.contains("style=dashed"), "{dot}");
    }
}
