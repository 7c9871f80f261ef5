//! The least-privilege report (SPEC §9 `baton policy report`): the policy in force held
//! against the call graph. Rules that granted nothing in the window, prefix rules that
//! served one identity, scopes never granted, and callers the policy keeps refusing;
//! each finding carries a concrete change, a rule written as TOML that
//! [`Policy::from_toml`] accepts, or a `# delete …` comment.
//!
//! Edges record which tokens were issued, not which rule issued them, so each recent
//! edge is attributed to the rule the *current* policy grants it by: a report right after
//! a reload judges the new rules against the traffic the old ones served.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use baton_proto::SpiffeId;
use baton_proto::claims::Scope;

use super::model::{EdgeView, Finding, FindingKind, PolicyReport};
use crate::policy::{Policy, Rule};

/// Refusal reasons that say something about the policy; `rate_limited` and `other`
/// do not.
const POLICY_DENIALS: [&str; 2] = ["audience_not_allowed", "scope_not_allowed"];

/// Any lifetime will do: only which rule grants matters here.
const ANY_TTL: Duration = Duration::from_secs(60);

/// What one rule granted in the window.
#[derive(Default)]
struct Use {
    callers: BTreeSet<String>,
    audiences: BTreeSet<String>,
    scopes: BTreeSet<String>,
}

/// Refusals of one (caller, audience) in the window.
#[derive(Default)]
struct Refusals {
    by_reason: BTreeMap<&'static str, u64>,
    scopes: BTreeSet<String>,
    reserved: bool,
}

/// One edge whose caller, audience and scope parse.
struct Parsed<'a> {
    edge: &'a EdgeView,
    caller: SpiffeId,
    audience: SpiffeId,
    scope: Option<Scope>,
}

/// Judges `policy` against `edges` over the `window` before `now` (Unix seconds): rules
/// that granted nothing in it, prefix rules that served one caller or one audience,
/// scopes never granted, and (caller, audience) pairs refused by policy at least
/// `min_denials` times among the edges seen in the window. Findings come by rule, then
/// kind; findings about no rule come last. Edges whose caller, audience or scope do not
/// parse are skipped.
///
/// ```
/// use std::time::Duration;
/// use baton_issuer::policy::Policy;
/// use baton_issuer::visibility::least_privilege::analyze;
/// use baton_issuer::visibility::model::FindingKind;
/// let policy = Policy::from_toml(r#"
///     [[allow]]
///     caller = "spiffe://example.org/fn/orders"
///     audience = "spiffe://example.org/fn/payments"
/// "#, None).unwrap();
/// let report = analyze(&policy, None, &[], 1_000_000, Duration::from_secs(86_400), 10);
/// assert_eq!(report.findings[0].kind, FindingKind::UnusedRule);
/// assert!(report.findings[0].suggestion.starts_with("# delete rule 1 "));
/// ```
pub fn analyze(
    policy: &Policy,
    policy_file: Option<String>,
    edges: &[EdgeView],
    now: i64,
    window: Duration,
    min_denials: u64,
) -> PolicyReport {
    let window_seconds = window.as_secs();
    let cutoff = now.saturating_sub(i64::try_from(window_seconds).unwrap_or(i64::MAX));
    let since = humantime::format_duration(Duration::from_secs(window_seconds));
    let edges: Vec<Parsed<'_>> = edges.iter().filter_map(parse).collect();

    let mut uses: Vec<Use> = policy.rules().iter().map(|_| Use::default()).collect();
    for e in edges
        .iter()
        .filter(|e| e.edge.last_issued.is_some_and(|t| t >= cutoff))
    {
        let Ok(grant) = policy.decide(&e.caller, &e.audience, e.scope.as_ref(), ANY_TTL) else {
            continue;
        };
        let Some(used) = uses.get_mut(grant.rule - 1) else {
            continue;
        };
        used.callers.insert(e.caller.to_string());
        used.audiences.insert(e.audience.to_string());
        used.scopes.extend(e.edge.scope_tokens().map(str::to_owned));
    }

    let mut findings = Vec::new();
    for (i, (rule, used)) in policy.rules().iter().zip(&uses).enumerate() {
        judge_rule(i + 1, rule, used, &since, &mut findings);
    }
    findings.extend(repeated_denials(
        policy,
        &edges,
        cutoff,
        min_denials,
        &since,
    ));
    // Stable: rule-less findings keep their (caller, audience) order.
    findings.sort_by_key(|f| (f.rule.is_none(), f.rule, f.kind));

    PolicyReport {
        generated_at: now,
        window_seconds,
        min_denials,
        policy_file,
        rules: policy.rules().len(),
        findings,
    }
}

fn parse(edge: &EdgeView) -> Option<Parsed<'_>> {
    let scope = match edge.scope.as_deref() {
        Some(s) => Some(s.parse::<Scope>().ok()?),
        None => None,
    };
    Some(Parsed {
        edge,
        caller: edge.caller.parse().ok()?,
        audience: edge.audience.parse().ok()?,
        scope,
    })
}

/// The findings about rule `n` given what it granted in the window.
fn judge_rule(
    n: usize,
    rule: &Rule,
    used: &Use,
    since: &impl std::fmt::Display,
    out: &mut Vec<Finding>,
) {
    let caller = rule.caller().to_string();
    let audience = rule.audience().to_string();
    let scopes: Vec<&str> = rule.scopes().collect();
    let current = render_rule(&caller, &audience, &scopes, rule.max_ttl());
    let finding = |kind, summary, suggestion| Finding {
        kind,
        rule: Some(n),
        current: Some(current.clone()),
        summary,
        suggestion,
    };

    if used.callers.is_empty() {
        let mut suggestion = format!("# delete rule {n} (no token granted in the last {since})\n");
        for line in current.lines() {
            let _ = writeln!(suggestion, "# {line}");
        }
        out.push(finding(
            FindingKind::UnusedRule,
            format!("rule {n} ({caller} → {audience}) granted no token in the last {since}"),
            suggestion,
        ));
        return;
    }

    let only = |pattern_is_prefix: bool, seen: &BTreeSet<String>| match seen.iter().next() {
        Some(id) if pattern_is_prefix && seen.len() == 1 => Some(id.clone()),
        _ => None,
    };
    let one_caller = only(rule.caller().is_prefix(), &used.callers);
    let one_audience = only(rule.audience().is_prefix(), &used.audiences);
    if one_caller.is_some() || one_audience.is_some() {
        let mut what = Vec::new();
        if let Some(id) = &one_caller {
            what.push(format!("any caller under {caller} but only {id} used it"));
        }
        if let Some(id) = &one_audience {
            what.push(format!(
                "any audience under {audience} but only {id} was asked for"
            ));
        }
        out.push(finding(
            FindingKind::BroaderThanUsed,
            format!(
                "rule {n} allows {} in the last {since}",
                what.join(", and ")
            ),
            render_rule(
                one_caller.as_deref().unwrap_or(&caller),
                one_audience.as_deref().unwrap_or(&audience),
                &scopes,
                rule.max_ttl(),
            ),
        ));
    }

    let (granted, never): (Vec<&str>, Vec<&str>) =
        scopes.iter().partition(|s| used.scopes.contains(**s));
    if !never.is_empty() {
        let granted_text = if granted.is_empty() {
            "none was".to_owned()
        } else {
            format!(
                "only {} {}",
                granted.join(", "),
                if granted.len() == 1 { "was" } else { "were" }
            )
        };
        out.push(finding(
            FindingKind::UnusedScopes,
            format!(
                "rule {n} allows scopes {} but {granted_text} granted in the last {since}; never granted: {}",
                scopes.join(", "),
                never.join(", ")
            ),
            render_rule(&caller, &audience, &granted, rule.max_ttl()),
        ));
    }
}

/// One finding per (caller, audience), among edges seen in the window, refused by policy
/// at least `min_denials` times and still refused by the policy in force (a pair a
/// reload has since allowed needs nothing more).
fn repeated_denials(
    policy: &Policy,
    edges: &[Parsed<'_>],
    cutoff: i64,
    min_denials: u64,
    since: &impl std::fmt::Display,
) -> Vec<Finding> {
    let mut pairs: BTreeMap<(&str, &str), Refusals> = BTreeMap::new();
    for e in edges.iter().filter(|e| e.edge.last_seen >= cutoff) {
        let refused: Vec<(&'static str, u64)> = POLICY_DENIALS
            .iter()
            .filter_map(|r| e.edge.denied.get(*r).map(|n| (*r, *n)))
            .filter(|(_, n)| *n > 0)
            .collect();
        if refused.is_empty()
            || policy
                .decide(&e.caller, &e.audience, e.scope.as_ref(), ANY_TTL)
                .is_ok()
        {
            continue;
        }
        let pair = pairs
            .entry((e.caller.as_str(), e.audience.as_str()))
            .or_default();
        for (reason, n) in refused {
            let total = pair.by_reason.entry(reason).or_default();
            *total = total.saturating_add(n);
        }
        pair.scopes.extend(e.edge.scope_tokens().map(str::to_owned));
        pair.reserved |= e.caller.is_reserved() || e.audience.is_reserved();
    }

    pairs
        .into_iter()
        .filter_map(|((caller, audience), refusals)| {
            let count = refusals
                .by_reason
                .values()
                .fold(0u64, |a, n| a.saturating_add(*n));
            if count < min_denials {
                return None;
            }
            let reasons = refusals
                .by_reason
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let asked = if refusals.scopes.is_empty() {
                String::new()
            } else {
                let s: Vec<&str> = refusals.scopes.iter().map(String::as_str).collect();
                format!(" with scopes {}", s.join(" "))
            };
            let suggestion = if refusals.reserved {
                // The policy refuses /baton/ identities whatever its rules say.
                format!(
                    "# no rule can allow this: identities under /baton/ are Baton's own; find out why {caller} keeps asking (baton identities revoke {caller} stops it)\n"
                )
            } else {
                let scopes: Vec<&str> = refusals.scopes.iter().map(String::as_str).collect();
                format!(
                    "# only if this call is intended; otherwise find out why {caller} keeps asking (baton identities revoke {caller} stops it)\n{}",
                    render_rule(caller, audience, &scopes, None)
                )
            };
            Some(Finding {
                kind: FindingKind::RepeatedlyDenied,
                rule: None,
                current: None,
                summary: format!(
                    "{caller} was refused tokens for {audience}{asked} {count} times ({reasons}), most recently within the last {since}"
                ),
                suggestion,
            })
        })
        .collect()
}

/// One `[[allow]]` rule as TOML, strings escaped.
fn render_rule(caller: &str, audience: &str, scopes: &[&str], max_ttl: Option<Duration>) -> String {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut text = format!(
        "[[allow]]\ncaller = {}\naudience = {}\n",
        quote(caller),
        quote(audience)
    );
    if !scopes.is_empty() {
        let list: Vec<String> = scopes.iter().map(|s| quote(s)).collect();
        let _ = writeln!(text, "scopes = [{}]", list.join(", "));
    }
    if let Some(ttl) = max_ttl {
        let _ = writeln!(text, "max_ttl_seconds = {}", ttl.as_secs());
    }
    text
}

#[cfg(test)]
mod tests {
    use baton_proto::TrustDomain;

    use super::*;
    use crate::policy::Denial;

    const NOW: i64 = 1_700_000_000;
    const DAY: Duration = Duration::from_secs(86_400);
    const MIN_DENIALS: u64 = 10;

    /// The policy under test, one rule per entry, in file order.
    const RULES: [&str; 7] = [
        // 1: exact, used.
        "[[allow]]\ncaller = \"spiffe://example.org/fn/orders\"\naudience = \"spiffe://example.org/fn/payments\"\nscopes = [\"payments:charge\"]\nmax_ttl_seconds = 30\n",
        // 2: never used.
        "[[allow]]\ncaller = \"spiffe://example.org/fn/reports\"\naudience = \"spiffe://example.org/fn/ledger\"\n",
        // 3: caller prefix, used by one caller.
        "[[allow]]\ncaller = \"spiffe://example.org/fn/billing/*\"\naudience = \"spiffe://example.org/fn/ledger\"\nmax_ttl_seconds = 45\n",
        // 4: audience prefix, used for one audience.
        "[[allow]]\ncaller = \"spiffe://example.org/fn/gateway\"\naudience = \"spiffe://example.org/fn/api/*\"\nmax_ttl_seconds = 60\n",
        // 5: three scopes, one granted.
        "[[allow]]\ncaller = \"spiffe://example.org/fn/search\"\naudience = \"spiffe://example.org/fn/index\"\nscopes = [\"a\", \"b\", \"c\"]\n",
        // 6: used only before the window.
        "[[allow]]\ncaller = \"spiffe://example.org/fn/batch\"\naudience = \"spiffe://example.org/fn/archive\"\n",
        // 7: both prefixes, each caller for its own audience.
        "[[allow]]\ncaller = \"spiffe://example.org/fn/jobs/*\"\naudience = \"spiffe://example.org/fn/queue/*\"\n",
    ];

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn policy_of(rules: &[&str]) -> Policy {
        Policy::from_toml(&rules.join("\n"), Some(&td())).unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    fn fn_id(name: &str) -> String {
        format!("spiffe://example.org/fn/{name}")
    }

    /// An edge that last issued a token `issued_ago` seconds before [`NOW`] (`None`:
    /// never) and was refused as `denied` says.
    fn edge(
        caller: &str,
        audience: &str,
        scope: Option<&str>,
        issued_ago: Option<i64>,
        denied: &[(&str, u64)],
    ) -> EdgeView {
        let last_issued = issued_ago.map(|ago| NOW - ago);
        let last_seen = last_issued.unwrap_or(NOW - 60);
        EdgeView {
            caller: fn_id(caller),
            audience: fn_id(audience),
            scope: scope.map(str::to_owned),
            issued: u64::from(issued_ago.is_some()) * 5,
            denied: denied.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect(),
            first_seen: last_seen.min(NOW - 3 * 86_400),
            last_seen,
            last_issued,
            rate_last_minute: 0.0,
            issued_last_hour: 0,
        }
    }

    fn edges() -> Vec<EdgeView> {
        vec![
            edge(
                "orders",
                "payments",
                Some("payments:charge"),
                Some(120),
                &[],
            ),
            edge("billing/invoices", "ledger", None, Some(300), &[]),
            edge("gateway", "api/users", None, Some(10), &[]),
            edge("search", "index", Some("a"), Some(3_600), &[]),
            edge("batch", "archive", None, Some(2 * 86_400), &[]),
            edge("jobs/a", "queue/x", None, Some(50), &[]),
            edge("jobs/b", "queue/y", None, Some(50), &[]),
            edge(
                "scraper",
                "payments",
                Some("x y"),
                None,
                &[("audience_not_allowed", 12)],
            ),
            edge(
                "orders",
                "payments",
                None,
                None,
                &[("rate_limited", 40), ("other", 3)],
            ),
            edge(
                "search",
                "index",
                Some("d"),
                None,
                &[("scope_not_allowed", MIN_DENIALS - 1)],
            ),
        ]
    }

    fn report() -> PolicyReport {
        analyze(
            &policy_of(&RULES),
            Some("/etc/baton/policy.toml".to_owned()),
            &edges(),
            NOW,
            DAY,
            MIN_DENIALS,
        )
    }

    fn finding(report: &PolicyReport, rule: Option<usize>, kind: FindingKind) -> &Finding {
        report
            .findings
            .iter()
            .find(|f| f.rule == rule && f.kind == kind)
            .unwrap_or_else(|| panic!("no {kind:?} finding for rule {rule:?}: {report:#?}"))
    }

    /// The policy with rule `n` (1-based) replaced by `replacement`.
    fn with_rule(n: usize, replacement: &str) -> Policy {
        let mut rules = RULES.to_vec();
        rules[n - 1] = replacement;
        policy_of(&rules)
    }

    fn decide(
        policy: &Policy,
        caller: &str,
        audience: &str,
        scope: Option<&str>,
    ) -> Result<usize, Denial> {
        let scope: Option<Scope> = scope.map(|s| s.parse().unwrap());
        policy
            .decide(
                &id(&fn_id(caller)),
                &id(&fn_id(audience)),
                scope.as_ref(),
                ANY_TTL,
            )
            .map(|g| g.rule)
    }

    #[test]
    fn findings_come_by_rule_then_kind_with_rule_less_findings_last() {
        let report = report();
        let found: Vec<_> = report.findings.iter().map(|f| (f.rule, f.kind)).collect();
        assert_eq!(
            found,
            [
                (Some(2), FindingKind::UnusedRule),
                (Some(3), FindingKind::BroaderThanUsed),
                (Some(4), FindingKind::BroaderThanUsed),
                (Some(5), FindingKind::UnusedScopes),
                (Some(6), FindingKind::UnusedRule),
                (None, FindingKind::RepeatedlyDenied),
            ],
            "{report:#?}"
        );
        assert_eq!(report.generated_at, NOW);
        assert_eq!(report.window_seconds, 86_400);
        assert_eq!(report.min_denials, MIN_DENIALS);
        assert_eq!(
            report.policy_file.as_deref(),
            Some("/etc/baton/policy.toml")
        );
        assert_eq!(report.rules, RULES.len());
        assert_eq!(
            report,
            super::analyze(
                &policy_of(&RULES),
                Some("/etc/baton/policy.toml".to_owned()),
                &edges(),
                NOW,
                DAY,
                MIN_DENIALS
            )
        );
    }

    #[test]
    fn rule_findings_quote_the_rule_as_it_stands() {
        let report = report();
        for f in &report.findings {
            match f.rule {
                Some(n) => assert_eq!(
                    Policy::from_toml(f.current.as_deref().unwrap(), Some(&td()))
                        .unwrap()
                        .rules(),
                    [policy_of(&RULES).rules()[n - 1].clone()]
                ),
                None => assert_eq!(f.current, None),
            }
        }
    }

    #[test]
    fn unused_rule_is_suggested_for_deletion_commented_out() {
        let report = report();
        let f = finding(&report, Some(2), FindingKind::UnusedRule);
        let mut lines = f.suggestion.lines();
        assert_eq!(
            lines.next(),
            Some("# delete rule 2 (no token granted in the last 1day)")
        );
        let rest: Vec<&str> = lines.collect();
        assert!(rest.iter().all(|l| l.starts_with("# ")), "{}", f.suggestion);
        let uncommented: String = rest.iter().map(|l| format!("{}\n", &l[2..])).collect();
        assert_eq!(uncommented, RULES[1]);
        assert!(f.summary.contains(&fn_id("reports")), "{}", f.summary);
    }

    #[test]
    fn rule_used_only_before_the_window_is_unused() {
        let report = report();
        let f = finding(&report, Some(6), FindingKind::UnusedRule);
        assert!(
            f.suggestion.starts_with("# delete rule 6 "),
            "{}",
            f.suggestion
        );
        // With a window that reaches back to it, the rule is in use.
        let longer = analyze(
            &policy_of(&RULES),
            None,
            &edges(),
            NOW,
            3 * DAY,
            MIN_DENIALS,
        );
        assert!(
            !longer.findings.iter().any(|f| f.rule == Some(6)),
            "{longer:#?}"
        );
    }

    #[test]
    fn caller_prefix_used_by_one_caller_is_narrowed_to_it() {
        let report = report();
        let f = finding(&report, Some(3), FindingKind::BroaderThanUsed);
        assert_eq!(
            f.suggestion,
            "[[allow]]\ncaller = \"spiffe://example.org/fn/billing/invoices\"\naudience = \"spiffe://example.org/fn/ledger\"\nmax_ttl_seconds = 45\n"
        );
        assert!(
            f.summary.contains(&fn_id("billing/invoices")),
            "{}",
            f.summary
        );
        let narrowed = with_rule(3, &f.suggestion);
        assert_eq!(decide(&narrowed, "billing/invoices", "ledger", None), Ok(3));
        assert_eq!(
            decide(&narrowed, "billing/refunds", "ledger", None),
            Err(Denial::AudienceNotAllowed)
        );
    }

    #[test]
    fn audience_prefix_used_for_one_audience_is_narrowed_to_it() {
        let report = report();
        let f = finding(&report, Some(4), FindingKind::BroaderThanUsed);
        assert_eq!(
            f.suggestion,
            "[[allow]]\ncaller = \"spiffe://example.org/fn/gateway\"\naudience = \"spiffe://example.org/fn/api/users\"\nmax_ttl_seconds = 60\n"
        );
        let narrowed = with_rule(4, &f.suggestion);
        assert_eq!(decide(&narrowed, "gateway", "api/users", None), Ok(4));
        assert_eq!(
            decide(&narrowed, "gateway", "api/admin", None),
            Err(Denial::AudienceNotAllowed)
        );
    }

    #[test]
    fn prefix_rule_whose_callers_each_used_other_audiences_is_not_broader() {
        let report = report();
        assert!(
            !report.findings.iter().any(|f| f.rule == Some(7)),
            "{report:#?}"
        );
        // Used by one caller for two audiences: the caller narrows, the audience stays.
        let one_caller = [
            edge("jobs/a", "queue/x", None, Some(50), &[]),
            edge("jobs/a", "queue/y", None, Some(50), &[]),
        ];
        let report = analyze(
            &policy_of(&RULES[6..]),
            None,
            &one_caller,
            NOW,
            DAY,
            MIN_DENIALS,
        );
        let f = finding(&report, Some(1), FindingKind::BroaderThanUsed);
        assert_eq!(
            f.suggestion,
            "[[allow]]\ncaller = \"spiffe://example.org/fn/jobs/a\"\naudience = \"spiffe://example.org/fn/queue/*\"\n"
        );
    }

    #[test]
    fn rule_narrower_in_both_caller_and_audience_is_narrowed_in_both() {
        let edges = [edge("jobs/a", "queue/x", None, Some(50), &[])];
        let report = analyze(&policy_of(&RULES[6..]), None, &edges, NOW, DAY, MIN_DENIALS);
        let found: Vec<_> = report.findings.iter().map(|f| (f.rule, f.kind)).collect();
        assert_eq!(found, [(Some(1), FindingKind::BroaderThanUsed)]);
        let narrowed = policy_of(&[&report.findings[0].suggestion]);
        assert_eq!(decide(&narrowed, "jobs/a", "queue/x", None), Ok(1));
        assert!(decide(&narrowed, "jobs/b", "queue/x", None).is_err());
        assert!(decide(&narrowed, "jobs/a", "queue/y", None).is_err());
    }

    #[test]
    fn scopes_never_granted_are_dropped_from_the_suggested_rule() {
        let report = report();
        let f = finding(&report, Some(5), FindingKind::UnusedScopes);
        assert_eq!(
            f.suggestion,
            "[[allow]]\ncaller = \"spiffe://example.org/fn/search\"\naudience = \"spiffe://example.org/fn/index\"\nscopes = [\"a\"]\n"
        );
        assert!(f.summary.contains("never granted: b, c"), "{}", f.summary);
        let narrowed = with_rule(5, &f.suggestion);
        assert_eq!(decide(&narrowed, "search", "index", Some("a")), Ok(5));
        assert_eq!(
            decide(&narrowed, "search", "index", Some("b")),
            Err(Denial::ScopeNotAllowed)
        );
    }

    #[test]
    fn rule_used_without_scopes_is_suggested_without_a_scopes_key() {
        let edges = [edge("search", "index", None, Some(10), &[])];
        let report = analyze(
            &policy_of(&RULES[4..5]),
            None,
            &edges,
            NOW,
            DAY,
            MIN_DENIALS,
        );
        let f = finding(&report, Some(1), FindingKind::UnusedScopes);
        assert!(!f.suggestion.contains("scopes"), "{}", f.suggestion);
        let narrowed = policy_of(&[&f.suggestion]);
        assert_eq!(decide(&narrowed, "search", "index", None), Ok(1));
        assert_eq!(
            decide(&narrowed, "search", "index", Some("a")),
            Err(Denial::ScopeNotAllowed)
        );
    }

    #[test]
    fn repeatedly_denied_caller_gets_an_exact_rule_for_what_it_asked() {
        let report = report();
        let f = finding(&report, None, FindingKind::RepeatedlyDenied);
        let scraper = fn_id("scraper");
        assert_eq!(
            f.suggestion,
            format!(
                "# only if this call is intended; otherwise find out why {scraper} keeps asking (baton identities revoke {scraper} stops it)\n\
                 [[allow]]\ncaller = \"{scraper}\"\naudience = \"spiffe://example.org/fn/payments\"\nscopes = [\"x\", \"y\"]\n"
            )
        );
        for part in [
            &scraper,
            &fn_id("payments"),
            "12 times",
            "audience_not_allowed",
        ] {
            assert!(f.summary.contains(part), "{part}: {}", f.summary);
        }
        let mut rules = RULES.to_vec();
        rules.push(&f.suggestion);
        let allowed = policy_of(&rules);
        assert_eq!(decide(&allowed, "scraper", "payments", Some("x y")), Ok(8));
        assert_eq!(
            decide(&allowed, "scraper", "ledger", Some("x y")),
            Err(Denial::AudienceNotAllowed)
        );
    }

    #[test]
    fn denials_across_scopes_of_one_pair_add_up() {
        let edges = [
            edge(
                "scraper",
                "payments",
                Some("x"),
                None,
                &[("audience_not_allowed", 6)],
            ),
            edge(
                "scraper",
                "payments",
                Some("y"),
                None,
                &[("audience_not_allowed", 4)],
            ),
        ];
        let report = analyze(&Policy::deny_all(), None, &edges, NOW, DAY, MIN_DENIALS);
        let f = finding(&report, None, FindingKind::RepeatedlyDenied);
        assert!(f.summary.contains("10 times"), "{}", f.summary);
        assert!(
            f.suggestion.contains("scopes = [\"x\", \"y\"]"),
            "{}",
            f.suggestion
        );
    }

    #[test]
    fn rate_limited_and_below_threshold_refusals_are_not_findings() {
        let report = report();
        let rule_less: Vec<_> = report
            .findings
            .iter()
            .filter(|f| f.rule.is_none())
            .collect();
        assert_eq!(rule_less.len(), 1, "{report:#?}");
        assert!(!rule_less[0].summary.contains(&fn_id("orders")));
        assert!(!rule_less[0].summary.contains(&fn_id("search")));
    }

    #[test]
    fn denials_seen_only_before_the_window_are_not_findings() {
        let mut old = edge(
            "scraper",
            "payments",
            None,
            None,
            &[("audience_not_allowed", 50)],
        );
        old.last_seen = NOW - 2 * 86_400;
        let report = analyze(&Policy::deny_all(), None, &[old], NOW, DAY, MIN_DENIALS);
        assert!(report.findings.is_empty(), "{report:#?}");
    }

    #[test]
    fn denials_the_policy_in_force_now_grants_are_not_findings() {
        let denied = edge(
            "billing/invoices",
            "ledger",
            None,
            Some(10),
            &[("audience_not_allowed", 50)],
        );
        let report = analyze(
            &policy_of(&RULES[2..3]),
            None,
            &[denied],
            NOW,
            DAY,
            MIN_DENIALS,
        );
        assert!(
            !report
                .findings
                .iter()
                .any(|f| f.kind == FindingKind::RepeatedlyDenied),
            "{report:#?}"
        );
    }

    #[test]
    fn reserved_identities_get_no_rule_suggested() {
        let mut e = edge("x", "payments", None, None, &[("audience_not_allowed", 20)]);
        e.caller = "spiffe://example.org/baton/token-signer".to_owned();
        let report = analyze(&Policy::deny_all(), None, &[e], NOW, DAY, MIN_DENIALS);
        let f = finding(&report, None, FindingKind::RepeatedlyDenied);
        assert!(
            f.suggestion.starts_with("# no rule can allow this"),
            "{}",
            f.suggestion
        );
        assert!(!f.suggestion.contains("[[allow]]"), "{}", f.suggestion);
    }

    #[test]
    fn every_suggested_rule_parses_back_as_a_policy() {
        let report = report();
        let mut suggested = 0;
        for f in &report.findings {
            if f.suggestion.starts_with("# delete") {
                continue;
            }
            let policy = Policy::from_toml(&f.suggestion, None)
                .unwrap_or_else(|e| panic!("{e}: {}", f.suggestion));
            assert_eq!(policy.rules().len(), 1, "{}", f.suggestion);
            assert!(Policy::from_toml(&f.suggestion, Some(&td())).is_ok());
            suggested += 1;
        }
        assert_eq!(suggested, 4);
    }

    #[test]
    fn edges_that_do_not_parse_are_skipped() {
        let mut bad_caller = edge(
            "x",
            "payments",
            None,
            Some(1),
            &[("audience_not_allowed", 99)],
        );
        bad_caller.caller = "not a spiffe id".to_owned();
        let mut bad_scope = edge("search", "index", Some("a"), Some(1), &[]);
        bad_scope.scope = Some("a\"b".to_owned());
        let report = analyze(
            &policy_of(&RULES[4..5]),
            None,
            &[bad_caller, bad_scope],
            NOW,
            DAY,
            MIN_DENIALS,
        );
        let found: Vec<_> = report.findings.iter().map(|f| (f.rule, f.kind)).collect();
        assert_eq!(found, [(Some(1), FindingKind::UnusedRule)]);
    }

    #[test]
    fn rendered_strings_are_toml_escaped() {
        let text = render_rule("a\"b\\c", "d", &["e"], Some(Duration::from_secs(7)));
        let table: toml::Table = toml::from_str(&text).unwrap();
        let rule = table["allow"].as_array().unwrap()[0].as_table().unwrap();
        assert_eq!(rule["caller"].as_str(), Some("a\"b\\c"));
        assert_eq!(rule["scopes"].as_array().unwrap()[0].as_str(), Some("e"));
        assert_eq!(rule["max_ttl_seconds"].as_integer(), Some(7));
    }
}
