//! Policy (SPEC §6) through its public API and the `baton policy check` command:
//! decisions agree with a naive reference reading of the rules, random input never
//! panics, and the example policy shipped in `infra/config/` stays valid.

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use baton_issuer::policy::{Denial, IdPattern, Policy};
use baton_proto::SpiffeId;
use baton_proto::claims::{MAX_TOKEN_TTL_SECS, Scope};
use proptest::prelude::*;

const EXAMPLE_POLICY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../infra/config/policy.toml"
);

// Small alphabets, so that generated patterns and IDs often overlap, share prefixes,
// differ by one character, or fall under the reserved /baton path.
fn trust_domain() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["example.org", "example.org.evil", "other.org"])
}

fn segments(max: usize) -> impl Strategy<Value = Vec<&'static str>> {
    let segment = prop::sample::select(vec!["a", "ab", "a-b", "b", "baton", "batonx", "A"]);
    prop::collection::vec(segment, 0..max)
}

fn id() -> impl Strategy<Value = String> {
    (
        trust_domain(),
        segments(4),
        prop::sample::select(vec!["a", "b", "baton", "c"]),
    )
        .prop_map(|(td, mut segs, last)| {
            segs.push(last);
            format!("spiffe://{td}/{}", segs.join("/"))
        })
}

/// An exact ID or a prefix pattern `spiffe://td[/seg…]/*`.
fn pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        id(),
        (trust_domain(), segments(3)).prop_map(|(td, segs)| {
            let mut s = format!("spiffe://{td}");
            for seg in segs {
                s.push('/');
                s.push_str(seg);
            }
            s + "/*"
        }),
    ]
}

/// The rule of SPEC §6 spelt out on strings: `…/*` matches every ID in that trust
/// domain whose path has the pattern's segments followed by at least one more.
fn reference_matches(pattern: &str, id: &str) -> bool {
    let Some(base) = pattern.strip_suffix("/*") else {
        return pattern == id;
    };
    let split = |s: &str| -> (String, Vec<String>) {
        let rest = s.strip_prefix("spiffe://").unwrap();
        let mut parts = rest.split('/').map(str::to_owned);
        let td = parts.next().unwrap();
        (td, parts.collect())
    };
    let (ptd, pseg) = split(base);
    let (itd, iseg) = split(id);
    ptd == itd && iseg.len() > pseg.len() && iseg[..pseg.len()] == pseg[..]
}

fn reserved(id: &str) -> bool {
    SpiffeId::new(id).unwrap().is_reserved()
}

#[derive(Debug, Clone)]
struct RawRule {
    caller: String,
    audience: String,
    scopes: Option<Vec<&'static str>>,
    ttl: Option<u64>,
}

fn raw_rule() -> impl Strategy<Value = RawRule> {
    let scopes = prop::option::of(prop::collection::vec(
        prop::sample::select(vec!["r", "w", "x"]),
        0..3,
    ));
    (
        pattern(),
        pattern(),
        scopes,
        prop::option::of(1..=MAX_TOKEN_TTL_SECS),
    )
        .prop_map(|(caller, audience, scopes, ttl)| RawRule {
            caller,
            audience,
            scopes,
            ttl,
        })
}

/// An ID a pattern matches: the ID itself, or the prefix with `tail` appended.
fn instance(pattern: &str, tail: &[&str]) -> String {
    match pattern.strip_suffix("/*") {
        Some(base) => format!("{base}/{}", tail.join("/")),
        None => pattern.to_owned(),
    }
}

/// Rules plus a caller and an audience: half the time both are drawn from one rule,
/// so that decisions exercise grants and scope refusals, not only unknown audiences.
fn rules_and_request() -> impl Strategy<Value = (Vec<RawRule>, String, String)> {
    prop::collection::vec(raw_rule(), 1..8).prop_flat_map(|rules| {
        let n = rules.len();
        let tail =
            || prop::collection::vec(prop::sample::select(vec!["a", "b", "baton", "c"]), 1..3);
        let from_rule = (0..n, tail(), tail()).prop_map({
            let rules = rules.clone();
            move |(i, t1, t2)| {
                (
                    instance(&rules[i].caller, &t1),
                    instance(&rules[i].audience, &t2),
                )
            }
        });
        let request = prop_oneof![from_rule, (id(), id())];
        (Just(rules), request).prop_map(|(rules, (c, a))| (rules, c, a))
    })
}

fn to_toml(rules: &[RawRule]) -> String {
    let mut text = String::new();
    for r in rules {
        text += &format!(
            "[[allow]]\ncaller = {:?}\naudience = {:?}\n",
            r.caller, r.audience
        );
        if let Some(scopes) = &r.scopes {
            text += &format!("scopes = {scopes:?}\n");
        }
        if let Some(ttl) = r.ttl {
            text += &format!("max_ttl_seconds = {ttl}\n");
        }
    }
    text
}

/// SPEC §6 read literally: scan every rule in file order.
fn reference_decide(
    rules: &[RawRule],
    caller: &str,
    audience: &str,
    requested: &[&str],
) -> Result<usize, Denial> {
    if reserved(caller) || reserved(audience) {
        return Err(Denial::AudienceNotAllowed);
    }
    let mut audience_allowed = false;
    for (i, r) in rules.iter().enumerate() {
        if reference_matches(&r.caller, caller) && reference_matches(&r.audience, audience) {
            audience_allowed = true;
            let allowed = r.scopes.as_deref().unwrap_or(&[]);
            if requested.iter().all(|s| allowed.contains(s)) {
                return Ok(i + 1);
            }
        }
    }
    Err(if audience_allowed {
        Denial::ScopeNotAllowed
    } else {
        Denial::AudienceNotAllowed
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn prefix_matching_agrees_with_the_reference(p in pattern(), i in id()) {
        let pattern = IdPattern::new(&p).unwrap();
        prop_assert_eq!(pattern.to_string(), p.clone());
        prop_assert_eq!(
            pattern.matches(&SpiffeId::new(&i).unwrap()),
            reference_matches(&p, &i),
            "{} vs {}", p, i
        );
    }

    #[test]
    fn decide_agrees_with_a_file_order_scan(
        (rules, caller, audience) in rules_and_request(),
        requested in prop::collection::vec(prop::sample::select(vec!["r", "w", "x"]), 0..3),
        default_ttl in 1..1000u64,
    ) {
        // Reserved patterns are refused at load; the rest of the file is what counts.
        let rules: Vec<RawRule> = rules
            .into_iter()
            .filter(|r| {
                let ok = |p: &str| !reserved(&p.replace('*', "x"));
                ok(&r.caller) && ok(&r.audience)
            })
            .collect();
        let policy = Policy::from_toml(&to_toml(&rules), None).unwrap();
        let scope: Option<Scope> = (!requested.is_empty()).then(|| requested.join(" ").parse().unwrap());
        let got = policy.decide(
            &SpiffeId::new(&caller).unwrap(),
            &SpiffeId::new(&audience).unwrap(),
            scope.as_ref(),
            Duration::from_secs(default_ttl),
        );
        let want = reference_decide(&rules, &caller, &audience, &requested);
        prop_assert_eq!(got.as_ref().map(|g| g.rule).map_err(|d| *d), want);
        if let Ok(grant) = got {
            let rule = &rules[grant.rule - 1];
            let ttl = rule.ttl.unwrap_or(default_ttl).min(MAX_TOKEN_TTL_SECS);
            prop_assert_eq!(grant.ttl, Duration::from_secs(ttl));
            prop_assert_eq!(grant.scope, scope.map(|s| s.to_string()));
        }
    }

    #[test]
    fn pattern_parser_never_panics(s in "spiffe://[a-z.*/]{0,12}(/[A-Za-z0-9.*_-]{0,6}){0,4}") {
        if let Ok(p) = IdPattern::new(&s) {
            prop_assert_eq!(p.to_string(), s);
        }
    }

    #[test]
    fn policy_parser_never_panics(s in "\\PC{0,200}") {
        let _ = Policy::from_toml(&s, None);
    }

    #[test]
    fn decide_never_panics_on_random_ids(
        caller in "spiffe://[a-z0-9.-]{1,12}(/[A-Za-z0-9._-]{1,8}){1,6}",
        audience in "spiffe://[a-z0-9.-]{1,12}(/[A-Za-z0-9._-]{1,8}){1,6}",
    ) {
        let policy = Policy::load(Path::new(EXAMPLE_POLICY), None).unwrap();
        if let (Ok(c), Ok(a)) = (SpiffeId::new(&caller), SpiffeId::new(&audience)) {
            let _ = policy.decide(&c, &a, None, Duration::from_secs(60));
        }
    }
}

fn baton(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .env_remove("BATON_DATA_DIR")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn example_policy_passes_policy_check() {
    let (code, stdout, _) = baton(&["policy", "check", EXAMPLE_POLICY]);
    assert_eq!(code, Some(0));
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("policy OK: 2 rules (1 exact callers, 1 prefix callers)")
    );
    assert!(
        lines.next().unwrap().contains("trust domains not checked"),
        "{stdout}"
    );

    let (code, stdout, _) = baton(&[
        "policy",
        "check",
        "--trust-domain",
        "example.org",
        "--json",
        EXAMPLE_POLICY,
    ]);
    assert_eq!(code, Some(0));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["rules"], 2);
    assert_eq!(json["exact_callers"], 1);
    assert_eq!(json["prefix_callers"], 1);
    assert_eq!(json["trust_domain"], "example.org");
    assert_eq!(json["trust_domain_checked"], true);
}

#[test]
fn policy_check_exits_1_with_one_line_naming_rule_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(
        &file,
        "[[allow]]\ncaller = \"spiffe://example.org/a\"\naudience = \"spiffe://example.org/b\"\n\
         [[allow]]\ncaller = \"spiffe://example.org/a\"\naudience = \"spiffe://example.org/fn/../x\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let (code, stdout, stderr) = baton(&["policy", "check", file]);
    assert_eq!(code, Some(1));
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!("baton: {file}: rule 2: audience: SPIFFE ID path has a \".\" or \"..\" segment\n")
    );
}

#[test]
fn policy_check_with_trust_domain_refuses_foreign_rules() {
    let (code, _, stderr) = baton(&[
        "policy",
        "check",
        "--trust-domain",
        "other.org",
        EXAMPLE_POLICY,
    ]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.ends_with(
            "rule 1: caller: trust domain example.org is not this issuer's trust domain other.org\n"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1);
}

#[test]
fn policy_check_of_a_missing_file_names_it() {
    let (code, _, stderr) = baton(&["policy", "check", "/nonexistent/policy.toml"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.starts_with("baton: cannot read policy file /nonexistent/policy.toml: "),
        "{stderr}"
    );
}
