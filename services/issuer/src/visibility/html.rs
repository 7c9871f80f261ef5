//! `baton report --html`: the visibility views as one self-contained HTML5 page — the
//! call graph drawn as inline SVG (laid out here), the identity inventory, the
//! least-privilege findings and recent anomalies.
//!
//! Everything in a [`Report`] is attacker-influenced: a denied request's audience is
//! whatever the caller asked for, and identities and findings quote such strings. Every
//! text and attribute value goes through [`escape`], the page carries no script and
//! names no URL, and its Content Security Policy lets nothing load or run should markup
//! ever get through.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::model::{AnomalyView, EdgeView, Finding, FindingKind, IdentityView, Report};

/// Identities drawn at most: the busiest are kept, the page says how many were not.
const MAX_NODES: usize = 500;
/// (caller, audience) edges drawn at most, likewise.
const MAX_EDGES: usize = 2000;

/// Node box, in SVG user units (pixels). Labels are monospace, so [`LABEL_CHARS`]
/// characters fit the width.
const NODE_W: f64 = 240.0;
const NODE_H: f64 = 36.0;
const LABEL_CHARS: usize = 30;
/// Room between columns, for the edges' count labels.
const COL_GAP: f64 = 190.0;
/// Row to row; the gap leaves room for a self-edge's loop above a node.
const ROW_PITCH: f64 = 84.0;
/// The row an arrow's line takes in a column it crosses, with room for its label.
const WAYPOINT_PITCH: f64 = 26.0;
const MARGIN: f64 = 24.0;
const MARGIN_TOP: f64 = 12.0;
/// Crossing-reduction passes (each one left-to-right and one right-to-left).
const SWEEPS: usize = 4;

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";

const STYLE: &str = r#"
:root { color-scheme: light; --fg: #1d2330; --muted: #5b6475; --line: #dde1ea; --accent: #2f5fd0; --bad: #c62828; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--fg); background: #f4f5f9; }
header { padding: 18px 32px; background: #1d2330; color: #fff; }
header h1 { margin: 0; font-size: 22px; font-weight: 600; }
header h1 .td { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-weight: 500; color: #9fc1ff; }
header p { margin: 4px 0 0; color: #c5cbd8; }
main { padding: 4px 32px 40px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px; margin: 20px 0; }
h2 { font-size: 17px; margin: 0 0 6px; }
h3 { font-size: 14px; margin: 0 0 4px; }
p { margin: 6px 0; }
.muted { color: var(--muted); }
.scroll { overflow: auto; max-width: 100%; }
.bad { color: var(--bad); font-weight: 600; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; overflow-wrap: break-word; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #f0f2f7; font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.when { white-space: nowrap; }
.tag { display: inline-block; padding: 0 6px; margin: 1px 2px 1px 0; border-radius: 9px; background: #e8edf8; font-size: 12px; }
.legend { display: flex; gap: 18px; flex-wrap: wrap; font-size: 12.5px; color: var(--muted); margin: 4px 0 10px; }
.swatch { display: inline-block; width: 28px; height: 0; margin-right: 6px; vertical-align: middle; border-top: 2px solid #59627a; }
.swatch.denied { border-top: 2px dashed var(--bad); }
.swatch.box { width: 18px; height: 12px; border: 1.5px solid var(--accent); background: #eef3ff; border-radius: 3px; }
.swatch.box.foreign { border: 1.5px dashed #b26a00; background: #fff6e8; }
.swatch.box.denylisted { border-color: var(--bad); background: #fdecec; }
svg.graph { display: block; background: #fbfcfe; border: 1px solid var(--line); border-radius: 6px; }
svg.graph text { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; }
.node rect { fill: #eef3ff; stroke: #2f5fd0; stroke-width: 1.5; }
.node rect.foreign { fill: #fff6e8; stroke: #b26a00; stroke-dasharray: 5 3; }
.node rect.denylisted { fill: #fdecec; stroke: #c62828; }
.node text { font-size: 12px; fill: #1d2330; text-anchor: middle; dominant-baseline: central; }
.edge path { fill: none; stroke: #59627a; }
.edge path.denied { stroke: #c62828; stroke-dasharray: 6 4; }
.edge rect { fill: #fbfcfe; fill-opacity: .92; }
.edge text { font-size: 11px; fill: #39414f; text-anchor: middle; dominant-baseline: central; }
.edge tspan.d, .edge text.denied { fill: #c62828; }
#arrow path { fill: #59627a; }
#arrow-denied path { fill: #c62828; }
.finding { border-top: 1px solid var(--line); padding: 12px 0 4px; }
.finding .kind { display: inline-block; padding: 0 8px; border-radius: 9px; background: #fff1d6; color: #7a4b00; font-size: 12px; font-weight: 600; margin-right: 8px; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.pair.one { grid-template-columns: 1fr; }
.pair h3 { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); margin-top: 6px; }
pre { margin: 0; background: #f4f5f9; border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; font-size: 12.5px; white-space: pre-wrap; overflow-wrap: anywhere; }
pre.suggestion { background: #edf7ee; border-color: #b9dcbc; }
"#;

/// The report as one HTML5 document: no script, no external resource, nothing fetched
/// (its Content Security Policy allows inline styles and `data:` images only). Every
/// string of `report` is escaped.
pub fn render(report: &Report) -> String {
    let mut out = String::with_capacity(16 * 1024 + report.graph.edges.len() * 512);
    // Writing to a String cannot fail.
    let _ = document(&mut out, report);
    out
}

fn document(out: &mut String, r: &Report) -> fmt::Result {
    let td = escape(&r.trust_domain);
    let generated = rfc3339(r.graph.generated_at);
    write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Baton report · {td}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <header>\n<h1>Baton report · <span class=\"td\">{td}</span></h1>\n\
         <p>Generated <time datetime=\"{g}\">{g}</time> · graph store {store} · \
         {ids} · {edges} · {findings} · {anomalies}</p>\n\
         </header>\n<main>\n",
        g = escape(&generated),
        store = escape(&r.graph.store),
        ids = counted(r.identities.len(), "identity", "identities"),
        edges = counted(r.graph.edges.len(), "recorded edge", "recorded edges"),
        findings = counted(r.policy.findings.len(), "finding", "findings"),
        anomalies = counted(r.anomalies.len(), "anomaly", "anomalies"),
    )?;
    graph_section(out, r)?;
    identities_section(out, r)?;
    policy_section(out, r)?;
    anomalies_section(out, r)?;
    out.write_str("</main>\n</body>\n</html>\n")
}

fn graph_section(out: &mut String, r: &Report) -> fmt::Result {
    out.write_str("<section id=\"graph\">\n<h2>Call graph</h2>\n")?;
    let drawing = Drawing::select(&r.graph.edges);
    if drawing.nodes.is_empty() {
        return out.write_str("<p>No calls recorded yet.</p>\n</section>\n");
    }
    writeln!(
        out,
        "<p class=\"muted\">{n} identities and {e} (caller, audience) edges, from {rec} recorded \
         (caller, audience, scope) edges (at most {max} are kept). Hover a box or a label for details.</p>",
        n = drawing.nodes.len(),
        e = drawing.arrows.len(),
        rec = r.graph.edges.len(),
        max = r.graph.max_edges,
    )?;
    if drawing.omitted_nodes > 0 || drawing.omitted_edges > 0 {
        writeln!(
            out,
            "<p class=\"bad\">Not drawn: {} identities and {} edges (the page draws the busiest \
             {MAX_NODES} identities and {MAX_EDGES} edges).</p>",
            drawing.omitted_nodes, drawing.omitted_edges
        )?;
    }
    out.write_str(
        "<div class=\"legend\"><span><span class=\"swatch\"></span>tokens issued</span>\
         <span><span class=\"swatch denied\"></span>only refusals</span>\
         <span><span class=\"swatch box\"></span>in the trust domain</span>\
         <span><span class=\"swatch box foreign\"></span>outside it (as asked)</span>\
         <span><span class=\"swatch box denylisted\"></span>on the deny list</span></div>\n",
    )?;
    let denylisted: BTreeSet<&str> = r
        .identities
        .iter()
        .filter(|i| i.denied)
        .map(|i| i.id.as_str())
        .collect();
    out.write_str("<div class=\"scroll\">\n")?;
    svg(out, &drawing, &r.trust_domain, &denylisted)?;
    out.write_str("</div>\n</section>\n")
}

fn identities_section(out: &mut String, r: &Report) -> fmt::Result {
    out.write_str("<section id=\"identities\">\n<h2>Identities</h2>\n")?;
    if r.identities.is_empty() {
        return out.write_str("<p>No identities known.</p>\n</section>\n");
    }
    out.write_str(
        "<div class=\"scroll\"><table>\n<thead><tr><th>Identity</th><th>Seen as</th>\
         <th>Certificate expires</th><th>Last token</th><th>Tokens issued</th><th>Refused</th>\
         <th>Join tokens</th><th>Denied</th></tr></thead>\n<tbody>\n",
    )?;
    for i in &r.identities {
        identity_row(out, i, r.graph.generated_at)?;
    }
    out.write_str("</tbody></table></div>\n</section>\n")
}

fn identity_row(out: &mut String, i: &IdentityView, now: i64) -> fmt::Result {
    write!(out, "<tr><td class=\"mono\">{}</td><td>", escape(&i.id))?;
    for s in &i.seen_as {
        write!(out, "<span class=\"tag\">{}</span>", escape(s))?;
    }
    out.write_str("</td>")?;
    match i.cert_not_after {
        Some(t) if t <= now => write!(
            out,
            "<td class=\"when bad\">{} (expired)</td>",
            escape(&rfc3339(t))
        )?,
        Some(t) => write!(out, "<td class=\"when\">{}</td>", escape(&rfc3339(t)))?,
        None => out.write_str("<td class=\"muted\">none</td>")?,
    }
    match i.last_token {
        Some(t) => write!(out, "<td class=\"when\">{}</td>", escape(&rfc3339(t)))?,
        None => out.write_str("<td class=\"muted\">never</td>")?,
    }
    write!(
        out,
        "<td class=\"num\">{}</td><td class=\"num{}\">{}</td><td>",
        i.tokens_issued,
        if i.tokens_denied > 0 { " bad" } else { "" },
        i.tokens_denied
    )?;
    if i.join_tokens.is_empty() {
        out.write_str("<span class=\"muted\">none</span>")?;
    }
    for h in &i.join_tokens {
        write!(out, "<code>{}</code> ", escape(h))?;
    }
    out.write_str(if i.denied {
        "</td><td class=\"bad\">denied</td></tr>\n"
    } else {
        "</td><td class=\"muted\">no</td></tr>\n"
    })
}

fn policy_section(out: &mut String, r: &Report) -> fmt::Result {
    let p = &r.policy;
    out.write_str("<section id=\"policy\">\n<h2>Least privilege</h2>\n<p class=\"muted\">")?;
    match &p.policy_file {
        Some(f) => write!(out, "Policy <code>{}</code>", escape(f))?,
        None => out.write_str("No policy file")?,
    }
    writeln!(
        out,
        " · {} rules · judged over the last {} · a caller refused {} or more times for one audience is a finding · \
         made {}</p>",
        p.rules,
        escape(&humantime::format_duration(Duration::from_secs(p.window_seconds)).to_string()),
        p.min_denials,
        escape(&rfc3339(p.generated_at)),
    )?;
    if p.findings.is_empty() {
        return out.write_str("<p>No findings: every rule was used as written.</p>\n</section>\n");
    }
    for f in &p.findings {
        finding(out, f)?;
    }
    out.write_str("</section>\n")
}

fn finding(out: &mut String, f: &Finding) -> fmt::Result {
    let kind = match f.kind {
        FindingKind::UnusedRule => "Unused rule",
        FindingKind::BroaderThanUsed => "Broader than used",
        FindingKind::UnusedScopes => "Unused scopes",
        FindingKind::RepeatedlyDenied => "Repeatedly denied",
    };
    write!(
        out,
        "<div class=\"finding\" data-kind=\"{}\">\n<h3><span class=\"kind\">{kind}</span>",
        f.kind.as_str()
    )?;
    match f.rule {
        Some(n) => writeln!(out, "rule {n}</h3>")?,
        None => out.write_str("no rule</h3>\n")?,
    }
    writeln!(out, "<p>{}</p>", escape(&f.summary))?;
    match &f.current {
        Some(current) => write!(
            out,
            "<div class=\"pair\"><div><h3>Current rule</h3><pre>{}</pre></div>",
            escape(current)
        )?,
        None => out.write_str("<div class=\"pair one\">")?,
    }
    write!(
        out,
        "<div><h3>Suggestion</h3><pre class=\"suggestion\">{}</pre></div></div>\n</div>\n",
        escape(&f.suggestion)
    )
}

fn anomalies_section(out: &mut String, r: &Report) -> fmt::Result {
    out.write_str("<section id=\"anomalies\">\n<h2>Anomalies</h2>\n")?;
    if r.anomalies.is_empty() {
        return out.write_str("<p>No anomalies recorded.</p>\n</section>\n");
    }
    out.write_str(
        "<div class=\"scroll\"><table>\n<thead><tr><th>When</th><th>Kind</th><th>Caller</th>\
         <th>Audience</th><th>Observed</th><th>Threshold</th><th>Detail</th></tr></thead>\n<tbody>\n",
    )?;
    for a in &r.anomalies {
        anomaly_row(out, a)?;
    }
    out.write_str("</tbody></table></div>\n</section>\n")
}

fn anomaly_row(out: &mut String, a: &AnomalyView) -> fmt::Result {
    let opt = |s: &Option<String>| match s {
        Some(s) => format!("<td class=\"mono\">{}</td>", escape(s)),
        None => "<td class=\"muted\">n/a</td>".to_owned(),
    };
    writeln!(
        out,
        "<tr><td class=\"when\">{}</td><td><span class=\"tag\">{}</span></td>{}{}\
         <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
        escape(&rfc3339(a.at)),
        a.kind.as_str(),
        opt(&a.caller),
        opt(&a.audience),
        number(a.observed),
        number(a.threshold),
        escape(&a.detail),
    )
}

/// What the graph section draws: every scope of one (caller, audience) summed into
/// one arrow, bounded to the busiest [`MAX_EDGES`] arrows and [`MAX_NODES`] nodes.
struct Drawing<'a> {
    /// Node IDs, sorted; arrows refer to them by index.
    nodes: Vec<&'a str>,
    /// Sorted by (caller, audience).
    arrows: Vec<Arrow<'a>>,
    omitted_nodes: usize,
    omitted_edges: usize,
}

#[derive(Default)]
struct Arrow<'a> {
    from: usize,
    to: usize,
    issued: u64,
    denied: u64,
    reasons: BTreeMap<&'a str, u64>,
    scopes: BTreeSet<&'a str>,
}

impl Arrow<'_> {
    fn weight(&self) -> u64 {
        self.issued.saturating_add(self.denied)
    }
}

impl<'a> Drawing<'a> {
    fn select(edges: &'a [EdgeView]) -> Self {
        let mut sums: BTreeMap<(&str, &str), Arrow<'a>> = BTreeMap::new();
        for e in edges {
            let a = sums
                .entry((e.caller.as_str(), e.audience.as_str()))
                .or_default();
            a.issued = a.issued.saturating_add(e.issued);
            for (reason, n) in &e.denied {
                a.denied = a.denied.saturating_add(*n);
                let r = a.reasons.entry(reason.as_str()).or_default();
                *r = r.saturating_add(*n);
            }
            a.scopes.extend(e.scope_tokens());
        }
        let all_nodes = sums
            .keys()
            .flat_map(|(c, a)| [*c, *a])
            .collect::<BTreeSet<_>>()
            .len();
        let all_edges = sums.len();

        let mut kept: Vec<((&str, &str), Arrow<'a>)> = sums.into_iter().collect();
        if kept.len() > MAX_EDGES {
            // Stable: equal weights stay in (caller, audience) order.
            kept.sort_by_key(|(_, a)| Reverse(a.weight()));
            kept.truncate(MAX_EDGES);
        }
        let mut weights: BTreeMap<&str, u64> = BTreeMap::new();
        for ((caller, audience), a) in &kept {
            for id in [*caller, *audience] {
                let w = weights.entry(id).or_default();
                *w = w.saturating_add(a.weight());
            }
        }
        let mut nodes: Vec<(&str, u64)> = weights.into_iter().collect();
        if nodes.len() > MAX_NODES {
            nodes.sort_by_key(|(_, w)| Reverse(*w));
            nodes.truncate(MAX_NODES);
            nodes.sort_unstable();
        }
        let nodes: Vec<&str> = nodes.into_iter().map(|(id, _)| id).collect();
        let index: HashMap<&str, usize> =
            nodes.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut arrows: Vec<Arrow<'a>> = kept
            .into_iter()
            .filter_map(|((caller, audience), a)| {
                Some(Arrow {
                    from: *index.get(caller)?,
                    to: *index.get(audience)?,
                    ..a
                })
            })
            .collect();
        arrows.sort_by_key(|a| (a.from, a.to));
        Self {
            omitted_nodes: all_nodes - nodes.len(),
            omitted_edges: all_edges - arrows.len(),
            nodes,
            arrows,
        }
    }
}

/// Each node's column: the longest path to it from a source, over the graph with its
/// cycles broken (the back-edges of a depth-first search, self-edges among them, are
/// left out). Also says which arrows were left out.
fn layers(n: usize, arrows: &[Arrow<'_>]) -> (Vec<usize>, Vec<bool>) {
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut has_caller = vec![false; n];
    for (i, a) in arrows.iter().enumerate() {
        out[a.from].push(i);
        if a.from != a.to {
            has_caller[a.to] = true;
        }
    }
    const NEW: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let mut state = vec![NEW; n];
    let mut back = vec![false; arrows.len()];
    let mut finished = Vec::with_capacity(n);
    // Sources first, so a cycle is broken at the edge that leads back towards them.
    let roots = (0..n).filter(|v| !has_caller[*v]).chain(0..n);
    // Iterative: a long chain must not exhaust the stack.
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for root in roots {
        if state[root] != NEW {
            continue;
        }
        state[root] = ON_PATH;
        stack.push((root, 0));
        while let Some(top) = stack.last_mut() {
            let v = top.0;
            if let Some(&i) = out[v].get(top.1) {
                top.1 += 1;
                let w = arrows[i].to;
                match state[w] {
                    NEW => {
                        state[w] = ON_PATH;
                        stack.push((w, 0));
                    }
                    ON_PATH => back[i] = true,
                    _ => {}
                }
            } else {
                state[v] = DONE;
                finished.push(v);
                stack.pop();
            }
        }
    }
    // Reverse finishing order is a topological order of the graph without back-edges.
    let mut column = vec![0; n];
    for &v in finished.iter().rev() {
        for &i in &out[v] {
            if !back[i] {
                let w = arrows[i].to;
                column[w] = column[w].max(column[v] + 1);
            }
        }
    }
    (column, back)
}

/// Where things go: each node's box (top-left corner) and, per arrow, the points its
/// line passes through in the columns between its ends.
struct Layout {
    x: Vec<f64>,
    y: Vec<f64>,
    /// Per arrow: whether it was left out of the layering to break a cycle.
    back: Vec<bool>,
    /// Per arrow: (left edge of the column, height) of each column it crosses, from
    /// the lower column to the higher.
    via: Vec<Vec<(f64, f64)>>,
}

/// Place-holders an arrow's line takes in the columns it crosses, at most: beyond it
/// the remaining long arrows are drawn straight, across whatever lies in between.
const MAX_WAYPOINTS: usize = 20_000;

/// Layered layout (Sugiyama): columns by [`layers`]; an arrow crossing columns gets a
/// place-holder in each, so its line runs between the boxes rather than through them;
/// rows ordered by barycentre to remove most crossings.
fn layout(n: usize, arrows: &[Arrow<'_>]) -> Layout {
    let (column, back) = layers(n, arrows);
    let columns = column.iter().max().map_or(0, |m| m + 1);
    // Items 0..n are the nodes; the rest are place-holders.
    let mut item_column = column.clone();
    let mut neighbours: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut chains: Vec<Vec<usize>> = vec![Vec::new(); arrows.len()];
    for (i, a) in arrows.iter().enumerate() {
        if a.from == a.to {
            continue;
        }
        let (lo, hi) = if back[i] {
            (a.to, a.from)
        } else {
            (a.from, a.to)
        };
        let mut prev = lo;
        if column[hi] - column[lo] >= 2
            && item_column.len() - n + column[hi] - column[lo] <= MAX_WAYPOINTS
        {
            for c in column[lo] + 1..column[hi] {
                let p = item_column.len();
                item_column.push(c);
                neighbours.push(vec![prev]);
                neighbours[prev].push(p);
                chains[i].push(p);
                prev = p;
            }
        }
        neighbours[prev].push(hi);
        neighbours[hi].push(prev);
    }
    let slot = |v: usize| if v < n { ROW_PITCH } else { WAYPOINT_PITCH };
    let mut cols: Vec<Vec<usize>> = vec![Vec::new(); columns];
    for (v, c) in item_column.iter().enumerate() {
        cols[*c].push(v);
    }
    let height = |col: &[usize]| col.iter().map(|v| slot(*v)).sum::<f64>();
    let tallest = cols.iter().map(|c| height(c)).fold(0.0, f64::max);
    // The middle of each item's slot; columns are centred on the tallest.
    let mut y = vec![0.0; item_column.len()];
    let place = |col: &[usize], y: &mut [f64]| {
        let mut top = MARGIN_TOP + (tallest - height(col)) / 2.0;
        for &v in col {
            y[v] = top + slot(v) / 2.0;
            top += slot(v);
        }
    };
    for col in &cols {
        place(col, &mut y);
    }
    // Barycentre ordering: each item moves towards the mean height of its neighbours
    // in the columns already placed.
    let reorder = |col: &mut Vec<usize>, y: &mut [f64], placed: &dyn Fn(usize) -> bool| {
        let mut keyed: Vec<(f64, f64, usize)> = col
            .iter()
            .map(|&v| {
                let (sum, k) = neighbours[v]
                    .iter()
                    .filter(|w| placed(**w))
                    .fold((0.0, 0usize), |(s, k), w| (s + y[*w], k + 1));
                let key = if k > 0 { sum / k as f64 } else { y[v] };
                (key, y[v], v)
            })
            .collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        *col = keyed.into_iter().map(|(_, _, v)| v).collect();
        place(col, y);
    };
    for _ in 0..SWEEPS {
        for (c, col) in cols.iter_mut().enumerate().skip(1) {
            reorder(col, &mut y, &|w| item_column[w] < c);
        }
        for (c, col) in cols.iter_mut().enumerate().rev().skip(1) {
            reorder(col, &mut y, &|w| item_column[w] > c);
        }
    }
    let left = |c: usize| MARGIN + c as f64 * (NODE_W + COL_GAP);
    // A box sits low in its slot: the room above is for a self-edge's loop.
    let box_top = |v: usize| y[v] - ROW_PITCH / 2.0 + ROW_PITCH - NODE_H - 10.0;
    Layout {
        x: (0..n).map(|v| left(column[v])).collect(),
        y: (0..n).map(box_top).collect(),
        via: chains
            .iter()
            .map(|chain| {
                chain
                    .iter()
                    .map(|p| (left(item_column[*p]), y[*p]))
                    .collect()
            })
            .collect(),
        back,
    }
}

/// An arrow's line as SVG path data, the points that bound it, and where its label
/// goes.
struct Curve {
    d: String,
    bounds: Vec<(f64, f64)>,
    label: (f64, f64),
}

/// Width of an edge label of `chars` characters (11px monospace, 0.6em a character),
/// with its padding.
fn label_width(chars: usize) -> f64 {
    chars as f64 * 6.7 + 8.0
}

/// The point at t = 1/2 of the cubic Bézier `p`.
fn midpoint(p: [(f64, f64); 4]) -> (f64, f64) {
    (
        (p[0].0 + 3.0 * (p[1].0 + p[2].0) + p[3].0) / 8.0,
        (p[0].1 + 3.0 * (p[1].1 + p[2].1) + p[3].1) / 8.0,
    )
}

fn curve(l: &Layout, a: &Arrow<'_>, i: usize, label_chars: usize) -> Curve {
    let (x1, y1, x2, y2) = (l.x[a.from], l.y[a.from], l.x[a.to], l.y[a.to]);
    let single = |p: [(f64, f64); 4], label| Curve {
        d: format!(
            "M{:.1},{:.1} C{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}",
            p[0].0, p[0].1, p[1].0, p[1].1, p[2].0, p[2].1, p[3].0, p[3].1
        ),
        bounds: p.to_vec(),
        label,
    };
    if a.from == a.to {
        // A loop over the box's top right corner, its label left of it, above the box:
        // no other line passes there.
        let (left, right, top) = (x1 + NODE_W - 60.0, x1 + NODE_W - 18.0, y1 - 36.0);
        let label = (left - 6.0 - label_width(label_chars) / 2.0, y1 - 14.0);
        return single([(left, y1), (left, top), (right, top), (right, y1)], label);
    }
    let via = &l.via[i];
    if !via.is_empty() {
        return threaded(l, a, l.back[i], via);
    }
    let p = if l.back[i] {
        // Cycles are broken at back-edges, which point left; one to the next column is
        // an arc under both boxes, into the target's bottom.
        let start = (x1 + NODE_W * 0.4, y1 + NODE_H);
        let end = (x2 + NODE_W * 0.6, y2 + NODE_H);
        let low = y1.max(y2) + NODE_H + 40.0;
        [start, (start.0, low), (end.0, low), end]
    } else {
        let start = (x1 + NODE_W, y1 + NODE_H / 2.0);
        let end = (x2, y2 + NODE_H / 2.0);
        let dx = ((end.0 - start.0) / 2.0).max(40.0);
        [start, (start.0 + dx, start.1), (end.0 - dx, end.1), end]
    };
    single(p, midpoint(p))
}

/// An arrow across columns, through its place-holders: a curve between columns and a
/// straight run across each. Forward from the caller's right side into the audience's
/// left; a back-edge leaves the caller's left side low and enters the audience's right
/// side low, apart from the forward lines. The label sits on the middle run.
fn threaded(l: &Layout, a: &Arrow<'_>, back: bool, via: &[(f64, f64)]) -> Curve {
    let dx = COL_GAP / 2.0;
    let port = |v: usize, side: f64, dy: f64| (l.x[v] + side, l.y[v] + dy);
    let (start, end, dir) = if back {
        (
            port(a.from, 0.0, NODE_H * 0.75),
            port(a.to, NODE_W, NODE_H * 0.75),
            -1.0,
        )
    } else {
        (
            port(a.from, NODE_W, NODE_H / 2.0),
            port(a.to, 0.0, NODE_H / 2.0),
            1.0,
        )
    };
    // (entry, exit) of each run, in drawing order.
    let runs: Vec<((f64, f64), (f64, f64))> = if back {
        via.iter()
            .rev()
            .map(|&(x, y)| ((x + NODE_W, y), (x, y)))
            .collect()
    } else {
        via.iter()
            .map(|&(x, y)| ((x, y), (x + NODE_W, y)))
            .collect()
    };
    let mut d = format!("M{:.1},{:.1}", start.0, start.1);
    let mut bounds = vec![start, end];
    let mut at = start;
    let mut to = |d: &mut String, from: (f64, f64), next: (f64, f64)| {
        let _ = write!(
            d,
            " C{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}",
            from.0 + dir * dx,
            from.1,
            next.0 - dir * dx,
            next.1,
            next.0,
            next.1
        );
        bounds.push(next);
    };
    for &(entry, exit) in &runs {
        to(&mut d, at, entry);
        let _ = write!(d, " L{:.1},{:.1}", exit.0, exit.1);
        at = exit;
    }
    to(&mut d, at, end);
    let (entry, exit) = runs[runs.len() / 2];
    Curve {
        d,
        bounds,
        label: ((entry.0 + exit.0) / 2.0, entry.1),
    }
}

fn svg(out: &mut String, d: &Drawing<'_>, td: &str, denylisted: &BTreeSet<&str>) -> fmt::Result {
    let l = layout(d.nodes.len(), &d.arrows);
    let labels: Vec<String> = d.arrows.iter().map(count_label).collect();
    let curves: Vec<Curve> = d
        .arrows
        .iter()
        .zip(&labels)
        .enumerate()
        .map(|(i, (a, text))| curve(&l, a, i, text.chars().count()))
        .collect();

    // The picture's extent: boxes, curves (inside their control points' hull) and
    // labels.
    let (mut w, mut h) = (0.0f64, 0.0f64);
    for v in 0..d.nodes.len() {
        w = w.max(l.x[v] + NODE_W);
        h = h.max(l.y[v] + NODE_H);
    }
    for (c, text) in curves.iter().zip(&labels) {
        for &(x, y) in &c.bounds {
            w = w.max(x);
            h = h.max(y);
        }
        w = w.max(c.label.0 + label_width(text.chars().count()) / 2.0);
        h = h.max(c.label.1 + 8.0);
    }
    let (w, h) = ((w + MARGIN).ceil(), (h + MARGIN).ceil());
    write!(
        out,
        "<svg class=\"graph\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" \
         aria-label=\"Call graph\">\n<defs>\
         <marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerUnits=\"userSpaceOnUse\" \
         markerWidth=\"10\" markerHeight=\"10\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\"/></marker>\
         <marker id=\"arrow-denied\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerUnits=\"userSpaceOnUse\" \
         markerWidth=\"10\" markerHeight=\"10\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\"/></marker>\
         </defs>\n"
    )?;
    for ((a, c), text) in d.arrows.iter().zip(&curves).zip(&labels) {
        edge(out, d, a, c, text)?;
    }
    for (v, id) in d.nodes.iter().enumerate() {
        let (label, foreign) = node_label(id, td);
        let class = if denylisted.contains(id) {
            "denylisted"
        } else if foreign {
            "foreign"
        } else {
            "inside"
        };
        writeln!(
            out,
            "<g class=\"node\" data-id=\"{id}\"><title>{id}</title>\
             <rect class=\"{class}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{NODE_W}\" height=\"{NODE_H}\" rx=\"7\"/>\
             <text x=\"{tx:.1}\" y=\"{ty:.1}\">{label}</text></g>",
            id = escape(id),
            x = l.x[v],
            y = l.y[v],
            tx = l.x[v] + NODE_W / 2.0,
            ty = l.y[v] + NODE_H / 2.0,
            label = escape(&shorten(&label, LABEL_CHARS)),
        )?;
    }
    out.write_str("</svg>\n")
}

fn edge(out: &mut String, d: &Drawing<'_>, a: &Arrow<'_>, c: &Curve, text: &str) -> fmt::Result {
    let (caller, audience) = (escape(d.nodes[a.from]), escape(d.nodes[a.to]));
    writeln!(
        out,
        "<g class=\"edge\" data-caller=\"{caller}\" data-audience=\"{audience}\"><title>{caller} → {audience}"
    )?;
    if a.scopes.is_empty() {
        out.write_str("no scope")?;
    } else {
        out.write_str("scopes:")?;
        for s in &a.scopes {
            write!(out, " {}", escape(s))?;
        }
    }
    write!(out, "\n{} issued", a.issued)?;
    for (reason, n) in &a.reasons {
        write!(out, "\n{n} denied: {}", escape(reason))?;
    }
    let (class, marker, width) = if a.issued > 0 {
        // Thicker for busier edges, within reason.
        let w = 1.4 + ((a.issued as f64).log10() * 0.8).clamp(0.0, 2.6);
        ("line", "arrow", w)
    } else {
        ("line denied", "arrow-denied", 1.6)
    };
    write!(
        out,
        "</title><path class=\"{class}\" stroke-width=\"{width:.1}\" marker-end=\"url(#{marker})\" \
         d=\"{}\"/>",
        c.d
    )?;
    let (lx, ly) = c.label;
    // A backdrop, so lines passing under the label do not cross it out.
    let lw = label_width(text.chars().count());
    write!(
        out,
        "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{lw:.1}\" height=\"15\" rx=\"3\"/>",
        lx - lw / 2.0,
        ly - 7.5
    )?;
    if a.issued == 0 {
        writeln!(
            out,
            "<text class=\"denied\" x=\"{lx:.1}\" y=\"{ly:.1}\">{text}</text></g>"
        )
    } else if a.denied > 0 {
        writeln!(
            out,
            "<text x=\"{lx:.1}\" y=\"{ly:.1}\">{} issued · <tspan class=\"d\">{} denied</tspan></text></g>",
            a.issued, a.denied
        )
    } else {
        writeln!(out, "<text x=\"{lx:.1}\" y=\"{ly:.1}\">{text}</text></g>")
    }
}

/// "12 issued · 3 denied", leaving out a zero side.
fn count_label(a: &Arrow<'_>) -> String {
    match (a.issued, a.denied) {
        (i, 0) => format!("{i} issued"),
        (0, d) => format!("{d} denied"),
        (i, d) => format!("{i} issued · {d} denied"),
    }
}

/// What a node's box says: the ID's path when it is in the trust domain (it starts
/// with `/`), another domain's ID without its scheme, anything else as it is; and
/// whether it is foreign.
fn node_label(id: &str, td: &str) -> (String, bool) {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return (id.to_owned(), true);
    };
    match rest.strip_prefix(td) {
        // `spiffe://example.org.evil/x` is not in `example.org`.
        Some(path) if path.is_empty() || path.starts_with('/') => {
            (if path.is_empty() { "/" } else { path }.to_owned(), false)
        }
        _ => (rest.to_owned(), true),
    }
}

/// `s` cut to `max` characters with an ellipsis in the middle: both the ID's start and
/// its last segments stay readable.
fn shorten(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_owned();
    }
    let head = (max - 1) / 3;
    let tail = max - 1 - head;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(n - tail));
    out
}

fn rfc3339(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{t} (Unix seconds)"))
}

fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Whole numbers without decimals, others to one decimal.
fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// `s` as HTML text or as a double- or single-quoted attribute value: the five markup
/// characters become character references; control characters (but tab and newline)
/// and bidirectional overrides, which could hide or reorder what a reader sees,
/// become U+FFFD.
fn escape(s: &str) -> Escaped<'_> {
    Escaped(s)
}

/// See [`escape`].
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let mut start = 0;
        for (i, c) in s.char_indices() {
            let replacement = match c {
                '&' => "&amp;",
                '<' => "&lt;",
                '>' => "&gt;",
                '"' => "&quot;",
                '\'' => "&#39;",
                '\t' | '\n' => continue,
                '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                    "\u{fffd}"
                }
                c if c.is_control() => "\u{fffd}",
                _ => continue,
            };
            f.write_str(&s[start..i])?;
            f.write_str(replacement)?;
            start = i + c.len_utf8();
        }
        f.write_str(&s[start..])
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::visibility::model::{AnomalyKind, GraphView, PolicyReport};

    const NOW: i64 = 1_700_000_000;
    const FRONTEND: &str = "spiffe://example.org/ns/web/frontend";
    const API: &str = "spiffe://example.org/ns/core/api";
    const DB: &str = "spiffe://example.org/ns/core/db";
    const ADMIN: &str = "spiffe://example.org/ns/ops/admin";

    fn edge(caller: &str, audience: &str, scope: &str, issued: u64, denied: u64) -> EdgeView {
        EdgeView {
            caller: caller.to_owned(),
            audience: audience.to_owned(),
            scope: (!scope.is_empty()).then(|| scope.to_owned()),
            issued,
            denied: if denied > 0 {
                BTreeMap::from([("audience_not_allowed".to_owned(), denied)])
            } else {
                BTreeMap::new()
            },
            first_seen: NOW - 3600,
            last_seen: NOW - 5,
            last_issued: (issued > 0).then_some(NOW - 5),
            rate_last_minute: 0.0,
            issued_last_hour: issued,
        }
    }

    fn identity(id: &str, seen_as: &[&str]) -> IdentityView {
        IdentityView {
            id: id.to_owned(),
            seen_as: seen_as.iter().map(|s| (*s).to_owned()).collect(),
            cert_not_after: Some(NOW + 86_400),
            enrolled_at: Some(NOW - 86_400),
            last_attested: Some(NOW - 60),
            last_token: Some(NOW - 5),
            last_called: None,
            tokens_issued: 10,
            tokens_denied: 0,
            join_tokens: Vec::new(),
            denied: false,
        }
    }

    fn report(edges: Vec<EdgeView>) -> Report {
        Report {
            trust_domain: "example.org".to_owned(),
            graph: GraphView {
                generated_at: NOW,
                store: "embedded".to_owned(),
                max_edges: 10_000,
                edges,
            },
            identities: vec![
                identity(FRONTEND, &["enrolled", "attested", "caller"]),
                identity(API, &["enrolled", "caller", "audience"]),
                identity(DB, &["audience"]),
            ],
            policy: PolicyReport {
                generated_at: NOW,
                window_seconds: 7 * 86_400,
                min_denials: 3,
                policy_file: Some("/etc/baton/policy.toml".to_owned()),
                rules: 2,
                findings: vec![Finding {
                    kind: FindingKind::UnusedScopes,
                    rule: Some(1),
                    current: Some(format!(
                        "[[allow]]\ncaller = \"{FRONTEND}\"\naudience = \"{API}\"\nscopes = [\"read\", \"write\", \"admin\"]\n"
                    )),
                    summary:
                        "rule 1 allows scopes read, write, admin but only read, write were granted"
                            .to_owned(),
                    suggestion: format!(
                        "[[allow]]\ncaller = \"{FRONTEND}\"\naudience = \"{API}\"\nscopes = [\"read\", \"write\"]\n"
                    ),
                }],
            },
            anomalies: vec![AnomalyView {
                kind: AnomalyKind::NewAudience,
                at: NOW - 30,
                caller: Some(API.to_owned()),
                audience: Some(ADMIN.to_owned()),
                observed: 1.0,
                threshold: 0.0,
                detail: "api asked for a token for admin for the first time".to_owned(),
            }],
        }
    }

    /// frontend → api (two scopes, one edge drawn), api → db, api → admin (refused only).
    fn sample() -> Report {
        report(vec![
            edge(FRONTEND, API, "read", 12, 0),
            edge(FRONTEND, API, "read write", 3, 2),
            edge(API, DB, "", 40, 0),
            edge(API, ADMIN, "", 0, 3),
        ])
    }

    /// The `<g class="edge">` of (caller, audience).
    fn edge_markup<'h>(html: &'h str, caller: &str, audience: &str) -> &'h str {
        let start = html
            .find(&format!(
                "data-caller=\"{caller}\" data-audience=\"{audience}\""
            ))
            .unwrap();
        &html[start..start + html[start..].find("</g>").unwrap()]
    }

    fn count(html: &str, needle: &str) -> usize {
        html.matches(needle).count()
    }

    /// Every tag of `html` as (name, attribute names). Text and attribute values are
    /// escaped, so every `<` opens a tag and no `>` hides in a value.
    fn tags(html: &str) -> Vec<(String, Vec<String>)> {
        html.split('<')
            .skip(1)
            .map(|chunk| {
                let inner = chunk.split('>').next().unwrap_or("");
                let inner = inner.trim_start_matches('/').trim_end_matches('/');
                let (name, mut rest) = inner.split_once(char::is_whitespace).unwrap_or((inner, ""));
                let mut attrs = Vec::new();
                loop {
                    rest = rest.trim_start();
                    if rest.is_empty() {
                        break;
                    }
                    let end = rest
                        .find(|c: char| c == '=' || c.is_whitespace())
                        .unwrap_or(rest.len());
                    attrs.push(rest[..end].to_owned());
                    rest = &rest[end..];
                    if let Some(value) = rest.strip_prefix('=') {
                        let quote = value.chars().next().unwrap();
                        assert!(quote == '"', "unquoted attribute value in <{inner}>");
                        let close = value[1..].find('"').unwrap();
                        rest = &value[close + 2..];
                    }
                }
                (name.to_ascii_lowercase(), attrs)
            })
            .collect()
    }

    /// The page holds only the elements and attributes render writes itself: no
    /// script, no event handler, nothing that loads.
    fn assert_only_own_markup(html: &str) {
        const ELEMENTS: &[&str] = &[
            "!doctype", "html", "head", "meta", "title", "style", "body", "header", "h1", "h2",
            "h3", "p", "span", "time", "main", "section", "div", "svg", "defs", "marker", "path",
            "g", "rect", "text", "tspan", "table", "thead", "tbody", "tr", "th", "td", "pre",
            "code",
        ];
        const ATTRIBUTES: &[&str] = &[
            "html",
            "lang",
            "charset",
            "http-equiv",
            "content",
            "name",
            "class",
            "datetime",
            "data-id",
            "data-caller",
            "data-audience",
            "data-kind",
            "width",
            "height",
            "viewBox",
            "role",
            "aria-label",
            "id",
            "refX",
            "refY",
            "markerUnits",
            "markerWidth",
            "markerHeight",
            "orient",
            "d",
            "x",
            "y",
            "rx",
            "stroke-width",
            "marker-end",
        ];
        for (name, attrs) in tags(html) {
            assert!(ELEMENTS.contains(&name.as_str()), "unexpected <{name}>");
            for a in attrs {
                assert!(
                    ATTRIBUTES.contains(&a.as_str()),
                    "unexpected {a}= in <{name}>"
                );
            }
        }
        assert!(!html.to_ascii_lowercase().contains("<script"));
    }

    #[test]
    fn graph_draws_one_box_per_identity_and_one_arrow_per_caller_audience() {
        let html = render(&sample());
        assert_eq!(count(&html, "<g class=\"node\""), 4, "{html}");
        assert_eq!(count(&html, "<g class=\"edge\""), 3, "{html}");
        for id in [FRONTEND, API, DB, ADMIN] {
            assert!(
                html.contains(&format!("<g class=\"node\" data-id=\"{id}\">")),
                "{id}"
            );
        }
        // frontend → api's two scope edges are summed into one arrow.
        assert!(
            html.contains("15 issued · <tspan class=\"d\">2 denied</tspan>"),
            "{html}"
        );
        assert!(html.contains("scopes: read write"), "{html}");
        assert!(!html.contains("Not drawn"));
    }

    #[test]
    fn an_edge_with_only_refusals_is_dashed_red() {
        let html = render(&sample());
        let denied = edge_markup(&html, API, ADMIN);
        assert!(denied.contains("<path class=\"line denied\""), "{denied}");
        assert!(denied.contains("url(#arrow-denied)"), "{denied}");
        assert!(denied.contains(">3 denied</text>"), "{denied}");
        let issued = edge_markup(&html, API, DB);
        assert!(issued.contains("<path class=\"line\""), "{issued}");
        assert!(issued.contains("url(#arrow)"), "{issued}");
        assert!(issued.contains(">40 issued</text>"), "{issued}");
    }

    #[test]
    fn page_is_self_contained_and_runs_nothing() {
        let html = render(&sample());
        assert!(html.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"));
        assert!(html.contains(
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
             style-src 'unsafe-inline'; img-src data:\">"
        ));
        assert_only_own_markup(&html);
        for absent in [
            "src=",
            "href=",
            "http://",
            "https://",
            "@import",
            "@font-face",
            "javascript:",
        ] {
            assert!(!html.contains(absent), "{absent}");
        }
        for id in ["graph", "identities", "policy", "anomalies"] {
            assert_eq!(count(&html, &format!("<section id=\"{id}\">")), 1, "{id}");
        }
    }

    #[test]
    fn sections_show_the_report() {
        let html = render(&sample());
        assert!(html.contains("<span class=\"td\">example.org</span>"));
        assert!(html.contains("<time datetime=\"2023-11-14T22:13:20Z\">"));
        // The suggestion, quotes escaped, in its <pre>.
        assert!(html.contains(&format!(
            "<pre class=\"suggestion\">[[allow]]\ncaller = &quot;{FRONTEND}&quot;"
        )));
        assert!(html.contains("scopes = [&quot;read&quot;, &quot;write&quot;, &quot;admin&quot;]"));
        assert!(html.contains("judged over the last 7days"));
        assert_eq!(count(&html, "<tr><td class=\"mono\">"), 3);
        assert!(html.contains("2023-11-15T22:13:20Z"), "certificate expiry");
        assert!(html.contains("<span class=\"tag\">new_audience</span>"));
        // Boxes say the path; the title says the whole ID.
        assert!(html.contains(">/ns/core/api</text>"));
        assert!(html.contains(&format!("<title>{API}</title>")));
    }

    #[test]
    fn hostile_strings_come_out_inert() {
        let hostile = [
            "spiffe://example.org/<script>alert(1)</script>",
            "\"><img src=x onerror=alert(1)>",
            "' onmouseover='alert(1)",
            "</title></g></svg><script>alert(1)</script>",
            "spiffe://example.org/<!--",
        ];
        let mut edges = vec![edge(FRONTEND, API, "<b>read</b>", 1, 0)];
        edges.extend(hostile.iter().map(|h| edge(FRONTEND, h, "", 0, 1)));
        let mut r = report(edges);
        r.trust_domain = "<script>alert('td')</script>".to_owned();
        r.graph.store = "redis://<script>".to_owned();
        r.identities[0].seen_as.push("<script>".to_owned());
        r.identities[0].join_tokens.push("\"><script>".to_owned());
        r.policy.policy_file = Some("<script>".to_owned());
        r.policy.findings[0].suggestion = format!("audience = \"{}\"", hostile[1]);
        r.policy.findings[0].summary = hostile[3].to_owned();
        r.anomalies[0].detail = hostile[0].to_owned();
        r.anomalies[0].audience = Some(hostile[2].to_owned());
        let html = render(&r);
        assert_only_own_markup(&html);
        assert!(!html.contains("<img"));
        assert!(!html.contains("<!--"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("data-audience=\"&quot;&gt;&lt;img src=x onerror=alert(1)&gt;\""));
        assert!(html.contains("data-audience=\"&#39; onmouseover=&#39;alert(1)\""));
        assert_eq!(count(&html, "<g class=\"node\""), 2 + hostile.len());
    }

    #[test]
    fn escape_turns_markup_into_text() {
        let e = |s: &str| escape(s).to_string();
        assert_eq!(
            e("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        assert_eq!(
            e("plain spiffe://example.org/a"),
            "plain spiffe://example.org/a"
        );
        assert_eq!(e("line\nnext\ttab"), "line\nnext\ttab");
        assert_eq!(
            e("nul\0 esc\u{1b} cr\r"),
            "nul\u{fffd} esc\u{fffd} cr\u{fffd}"
        );
        assert_eq!(e("a\u{202e}gpj.exe"), "a\u{fffd}gpj.exe");
        assert_eq!(e("é→ü"), "é→ü");
    }

    #[test]
    fn a_cycle_and_a_self_edge_are_drawn() {
        let a = "spiffe://example.org/a";
        let b = "spiffe://example.org/b";
        let c = "spiffe://example.org/c";
        let html = render(&report(vec![
            edge(a, b, "", 5, 0),
            edge(b, a, "", 2, 0),
            edge(a, a, "", 1, 0),
            edge(b, c, "", 1, 0),
        ]));
        assert_eq!(count(&html, "<g class=\"node\""), 3);
        assert_eq!(count(&html, "<g class=\"edge\""), 4);
        assert_only_own_markup(&html);

        let two = report(vec![edge(a, b, "", 1, 0), edge(b, a, "", 1, 0)]);
        let (column, back) = layers(2, &Drawing::select(&two.graph.edges).arrows);
        assert_eq!(column, [0, 1]);
        assert_eq!(back, [false, true], "b → a closes the cycle");
    }

    #[test]
    fn columns_are_longest_paths_from_the_sources() {
        // a → b → c → d, a → d, d → b (a cycle b → c → d → b), e → e.
        let ids = ["a", "b", "c", "d", "e"].map(|s| format!("spiffe://example.org/{s}"));
        let pairs = [(0, 1), (1, 2), (2, 3), (0, 3), (3, 1), (4, 4)];
        let edges: Vec<EdgeView> = pairs
            .iter()
            .map(|(x, y)| edge(&ids[*x], &ids[*y], "", 1, 0))
            .collect();
        let r = report(edges);
        let d = Drawing::select(&r.graph.edges);
        let (column, back) = layers(d.nodes.len(), &d.arrows);
        assert_eq!(column, [0, 1, 2, 3, 0]);
        assert_eq!(back.iter().filter(|b| **b).count(), 2, "d → b and e → e");
        let l = layout(d.nodes.len(), &d.arrows);
        for (v, w) in [(0, 1), (1, 2), (2, 3)] {
            assert!(l.x[v] < l.x[w]);
        }
    }

    #[test]
    fn a_long_arrow_runs_between_the_boxes_it_passes() {
        // a → b → c and a → c: a → c crosses b's column beside b, not through it; the
        // back-edge c → a also gets a way of its own there.
        let [a, b, c] = ["a", "b", "c"].map(|s| format!("spiffe://example.org/{s}"));
        let r = report(vec![
            edge(&a, &b, "", 1, 0),
            edge(&b, &c, "", 1, 0),
            edge(&a, &c, "", 1, 0),
            edge(&c, &a, "", 1, 0),
        ]);
        let d = Drawing::select(&r.graph.edges);
        let l = layout(d.nodes.len(), &d.arrows);
        let b_box = l.y[1]..=l.y[1] + NODE_H;
        for (i, arrow) in d.arrows.iter().enumerate() {
            let crosses = (arrow.from, arrow.to) == (0, 2) || (arrow.from, arrow.to) == (2, 0);
            assert_eq!(l.via[i].len(), usize::from(crosses), "arrow {i}");
            for (x, y) in &l.via[i] {
                assert_eq!(*x, l.x[1]);
                assert!(!b_box.contains(y), "{y} runs through b at {b_box:?}");
            }
        }
        assert_only_own_markup(&render(&r));
    }

    #[test]
    fn a_long_chain_lays_out_without_recursion() {
        let ids: Vec<String> = (0..400)
            .map(|i| format!("spiffe://example.org/n{i:03}"))
            .collect();
        let edges: Vec<EdgeView> = ids
            .windows(2)
            .map(|w| edge(&w[0], &w[1], "", 1, 0))
            .collect();
        let html = render(&report(edges));
        assert_eq!(count(&html, "<g class=\"node\""), 400);
    }

    #[test]
    fn an_empty_report_says_so() {
        let mut r = report(Vec::new());
        r.identities.clear();
        r.policy.findings.clear();
        r.anomalies.clear();
        let html = render(&r);
        assert!(html.contains("<p>No calls recorded yet.</p>"));
        assert!(!html.contains("<svg"));
        assert!(html.contains("No identities known."));
        assert!(html.contains("No findings"));
        assert!(html.contains("No anomalies recorded."));
        for id in ["graph", "identities", "policy", "anomalies"] {
            assert!(html.contains(&format!("<section id=\"{id}\">")), "{id}");
        }
        assert_only_own_markup(&html);
    }

    #[test]
    fn drawing_is_bounded_and_says_what_it_left_out() {
        // 2,500 disjoint edges: 5,000 identities.
        let edges: Vec<EdgeView> = (0..2500)
            .map(|i| {
                edge(
                    &format!("spiffe://example.org/caller/{i}"),
                    &format!("spiffe://example.org/audience/{i}"),
                    "",
                    i,
                    0,
                )
            })
            .collect();
        let html = render(&report(edges));
        assert_eq!(count(&html, "<g class=\"node\""), MAX_NODES);
        assert_eq!(count(&html, "<g class=\"edge\""), MAX_NODES / 2);
        assert!(
            html.contains("Not drawn: 4500 identities and 2250 edges"),
            "busiest kept"
        );
        // The busiest edges are the ones drawn.
        assert!(html.contains("data-caller=\"spiffe://example.org/caller/2499\""));
        assert!(!html.contains("data-caller=\"spiffe://example.org/caller/0\""));
    }

    #[test]
    fn only_ids_in_the_trust_domain_are_shortened_to_their_path() {
        assert_eq!(
            node_label("spiffe://example.org/a/b", "example.org"),
            ("/a/b".to_owned(), false)
        );
        assert_eq!(
            node_label("spiffe://example.org.evil/a", "example.org"),
            ("example.org.evil/a".to_owned(), true)
        );
        assert_eq!(
            node_label("not an id", "example.org"),
            ("not an id".to_owned(), true)
        );
        assert_eq!(shorten("abcdefghij", 10), "abcdefghij");
        assert_eq!(shorten("abcdefghijk", 10), "abc…fghijk");
        assert_eq!(shorten("ééééééééééé", 4).chars().count(), 4);
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(NOW), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(i64::MAX), format!("{} (Unix seconds)", i64::MAX));
        assert_eq!(number(12.0), "12");
        assert_eq!(number(2.34), "2.3");
    }
}
