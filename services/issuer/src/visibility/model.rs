//! What the visibility commands answer over the admin socket: the graph, the identity
//! inventory, the least-privilege report and recent anomalies, as plain serializable
//! views (Unix seconds for times, `None` for "never").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::graph::{DENIAL_REASONS, EdgeKey, EdgeStats};

/// One (caller, audience, scope) edge of the call graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeView {
    /// The attested caller.
    pub caller: String,
    /// The audience asked for.
    pub audience: String,
    /// The scope asked for (scope-tokens sorted, space-separated); `None`: none.
    pub scope: Option<String>,
    /// Tokens issued.
    pub issued: u64,
    /// Refusals by reason (only reasons that occurred).
    pub denied: BTreeMap<String, u64>,
    /// First request, Unix seconds.
    pub first_seen: i64,
    /// Last request, Unix seconds.
    pub last_seen: i64,
    /// Last token issued, Unix seconds.
    pub last_issued: Option<i64>,
    /// Tokens issued in the last 60 seconds (sliding estimate over minute counts).
    pub rate_last_minute: f64,
    /// Tokens issued in the last hour.
    pub issued_last_hour: u64,
}

impl EdgeView {
    /// The view of `stats` at Unix time `now`.
    pub fn new(key: &EdgeKey, stats: &EdgeStats, now: i64) -> Self {
        let denied = DENIAL_REASONS
            .iter()
            .zip(stats.denied)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| ((*r).to_owned(), n))
            .collect();
        Self {
            caller: key.caller.to_string(),
            audience: key.audience.to_string(),
            scope: (!key.scope.is_empty()).then(|| key.scope.to_string()),
            issued: stats.issued,
            denied,
            first_seen: stats.first_seen,
            last_seen: stats.last_seen,
            last_issued: (stats.last_issued > 0).then_some(stats.last_issued),
            rate_last_minute: stats.minutes.last_minute(now),
            issued_last_hour: stats.minutes.last_hour(now),
        }
    }

    /// Every refusal, whatever the reason.
    pub fn denied_total(&self) -> u64 {
        self.denied.values().sum()
    }

    /// The scope-tokens asked for.
    pub fn scope_tokens(&self) -> impl Iterator<Item = &str> {
        self.scope
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .filter(|t| !t.is_empty())
    }
}

/// The live call graph (`graph.list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphView {
    /// When it was read, Unix seconds.
    pub generated_at: i64,
    /// `embedded` or the distributed store's URL (without password).
    pub store: String,
    /// The bound on edges kept.
    pub max_edges: usize,
    /// Edges, sorted by caller, audience, scope.
    pub edges: Vec<EdgeView>,
}

/// One identity: enrolled, attested, or named as an audience.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityView {
    /// The SPIFFE ID.
    pub id: String,
    /// How Baton knows it: any of `enrolled` (a certificate was issued to it),
    /// `attested` (it authenticated), `caller` (it asked for tokens), `audience`
    /// (tokens were asked for it), `join_token` (a join token is outstanding for it).
    pub seen_as: Vec<String>,
    /// End of validity of the newest certificate seen for it, Unix seconds.
    pub cert_not_after: Option<i64>,
    /// Last certificate issued to it, Unix seconds.
    pub enrolled_at: Option<i64>,
    /// Last successful attestation, Unix seconds.
    pub last_attested: Option<i64>,
    /// Last token issued to it (as caller), Unix seconds.
    pub last_token: Option<i64>,
    /// Last token issued for it (as audience), Unix seconds.
    pub last_called: Option<i64>,
    /// Tokens issued to it as caller (over the edges kept).
    pub tokens_issued: u64,
    /// Its requests refused (as caller).
    pub tokens_denied: u64,
    /// Handles of its outstanding join tokens.
    pub join_tokens: Vec<String>,
    /// Whether it is on the deny list.
    pub denied: bool,
}

/// Kinds of least-privilege finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A rule that granted no token in the window.
    UnusedRule,
    /// A prefix rule whose use is narrower than its pattern: one caller, or one
    /// audience, was all it ever served.
    BroaderThanUsed,
    /// A rule allowing scopes that were never granted.
    UnusedScopes,
    /// A caller that keeps getting refused for one audience.
    RepeatedlyDenied,
}

impl FindingKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnusedRule => "unused_rule",
            Self::BroaderThanUsed => "broader_than_used",
            Self::UnusedScopes => "unused_scopes",
            Self::RepeatedlyDenied => "repeatedly_denied",
        }
    }
}

/// One finding of the least-privilege report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// What kind.
    pub kind: FindingKind,
    /// The rule concerned (1-based, file order), when one is.
    pub rule: Option<usize>,
    /// The rule as it stands, TOML, when one is concerned.
    pub current: Option<String>,
    /// One sentence: what was found, with the evidence (counts, identities).
    pub summary: String,
    /// The concrete change: a narrower rule (TOML), an added rule, or `# delete …`.
    pub suggestion: String,
}

/// The least-privilege report (`policy.report`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReport {
    /// When it was made, Unix seconds.
    pub generated_at: i64,
    /// The window judged, seconds: a rule is unused when it granted nothing in it.
    pub window_seconds: u64,
    /// Refusals of one caller for one audience in the window that make it a finding.
    pub min_denials: u64,
    /// The policy file, when there is one.
    pub policy_file: Option<String>,
    /// Rules in force.
    pub rules: usize,
    /// Findings, by rule then kind.
    pub findings: Vec<Finding>,
}

/// Kinds of anomaly signal (the `kind` label of `baton_anomalies_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// A caller with an established history minted for an audience it never used.
    NewAudience,
    /// A caller's token rate rose far above its own moving average.
    RateSpike,
    /// Many attestation failures in a short window.
    AttestationFailures,
    /// Many replayed assertions or tokens in a short window.
    Replays,
}

impl AnomalyKind {
    /// Every kind.
    pub const ALL: [Self; 4] = [
        Self::NewAudience,
        Self::RateSpike,
        Self::AttestationFailures,
        Self::Replays,
    ];

    /// The wire and label name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewAudience => "new_audience",
            Self::RateSpike => "rate_spike",
            Self::AttestationFailures => "attestation_failures",
            Self::Replays => "replays",
        }
    }
}

/// One anomaly signal, as raised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalyView {
    /// What.
    pub kind: AnomalyKind,
    /// When, Unix seconds.
    pub at: i64,
    /// The caller concerned (absent for bursts, whose callers are not authenticated).
    pub caller: Option<String>,
    /// The audience concerned (new audience).
    pub audience: Option<String>,
    /// The count that crossed the threshold (tokens in the window, failures, replays).
    pub observed: f64,
    /// The threshold it crossed.
    pub threshold: f64,
    /// One line for people.
    pub detail: String,
}

/// Everything `baton report --html` draws.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The trust domain.
    pub trust_domain: String,
    /// The graph.
    pub graph: GraphView,
    /// The inventory.
    pub identities: Vec<IdentityView>,
    /// The least-privilege report.
    pub policy: PolicyReport,
    /// Recent anomaly signals of the issuer that answered, newest first.
    pub anomalies: Vec<AnomalyView>,
}
