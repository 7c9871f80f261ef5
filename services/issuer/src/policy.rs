//! Token policy (SPEC §6): which callers may obtain tokens for which audiences, with
//! which scopes and which lifetime. Default deny.
//!
//! A policy file is a list of `[[allow]]` rules:
//!
//! ```toml
//! [[allow]]
//! caller = "spiffe://example.org/fn/orders"       # exact ID, or a prefix ".../*"
//! audience = "spiffe://example.org/fn/payments"
//! scopes = ["payments:charge"]                    # omitted: no scope may be requested
//! max_ttl_seconds = 60                            # omitted: the issuer's token_ttl
//! ```
//!
//! A pattern `spiffe://example.org/fn/billing/*` matches every ID strictly below
//! `/fn/billing/` (not `/fn/billing` itself, not `/fn/billing-evil/x`);
//! `spiffe://example.org/*` matches the whole trust domain. Nothing matches an ID under
//! the reserved `/baton/` path, whatever the pattern.
//!
//! The file is checked whole before use: every error is one line naming the rule and
//! the field, and a [`PolicyStore`] keeps the previous policy when a reload fails.
//! [`Policy::decide`] runs on every mint, so rules are indexed by caller at load time
//! and a decision allocates nothing but the granted scope string.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use baton_proto::claims::{MAX_SCOPE_TOKEN_BYTES, MAX_TOKEN_TTL_SECS, Scope, ScopeError};
use baton_proto::error::ErrorCode;
use baton_proto::{SpiffeId, SpiffeIdError, TrustDomain};
use serde::{Deserialize, Serialize};

use crate::shared::{SharedStore, SharedStoreError};

/// Largest policy file accepted, in bytes.
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;
/// Most rules one policy may hold.
pub const MAX_RULES: usize = 10_000;

const SCHEME: &str = "spiffe://";
/// Longest TOML error message kept, in characters.
const MAX_SYNTAX_MESSAGE_CHARS: usize = 200;
/// Longest unknown key quoted back in an error, in characters.
const MAX_FIELD_NAME_CHARS: usize = 64;
/// The only keys an `[[allow]]` rule may have, in the order they are checked.
const RULE_FIELDS: [&str; 4] = ["caller", "audience", "scopes", "max_ttl_seconds"];

/// Why a policy was refused. Each renders as one line; rule problems name the rule
/// (1-based, in file order) and the field.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}")]
    Read {
        /// The policy file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is larger than [`MAX_POLICY_BYTES`].
    #[error("policy is larger than {MAX_POLICY_BYTES} bytes")]
    TooLarge,
    /// The file is not UTF-8 text.
    #[error("policy is not UTF-8 text")]
    NotUtf8,
    /// The file is not TOML, or its top level holds something other than `[[allow]]`.
    #[error("invalid policy{}: {message}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Syntax {
        /// 1-based line of the problem, when known.
        line: Option<usize>,
        /// What is wrong (never a copy of the file's text).
        message: String,
    },
    /// The policy has more than [`MAX_RULES`] rules.
    #[error("policy has {count} rules; the limit is {MAX_RULES}")]
    TooManyRules {
        /// How many rules the file has.
        count: usize,
    },
    /// One field of one rule is wrong.
    #[error("rule {index}: {field}: {problem}")]
    Rule {
        /// 1-based position of the rule in the file.
        index: usize,
        /// The field, as written in the file.
        field: String,
        /// What is wrong with it.
        problem: RuleProblem,
    },
    /// [`PolicyStore::reload`] was called on a store that has no policy file.
    #[error(
        "no policy file is configured, so there is nothing to reload; set `policy` in the configuration or pass --policy"
    )]
    NoSource,
    /// The shared store could not be read or written; the policy in force stays.
    #[error("shared policy: {0}")]
    Shared(#[from] SharedStoreError),
}

/// What is wrong with one field of a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleProblem {
    /// A required field (`caller` or `audience`) is absent.
    #[error("missing; every rule names a caller and an audience")]
    Missing,
    /// The rule has a key Baton does not know.
    #[error("unknown field; a rule has only caller, audience, scopes and max_ttl_seconds")]
    UnknownField,
    /// The value has the wrong TOML type.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What the field holds.
        expected: &'static str,
        /// The TOML type found.
        found: &'static str,
    },
    /// The caller or audience is not a valid SPIFFE ID or pattern.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// The caller or audience names another trust domain than the issuer's.
    #[error("trust domain {found} is not this issuer's trust domain {expected}")]
    ForeignTrustDomain {
        /// The trust domain the rule names.
        found: String,
        /// The issuer's trust domain.
        expected: TrustDomain,
    },
    /// The caller or audience lies under `/baton/`, reserved for Baton's own identities.
    #[error("{0} lies under /baton/, which is reserved for Baton's own identities")]
    Reserved(String),
    /// An entry of `scopes` is not one RFC 6749 §3.3 scope-token.
    #[error("entry {position} {reason}")]
    ScopeToken {
        /// 1-based position in the `scopes` array.
        position: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// `max_ttl_seconds` is outside 1..=300.
    #[error(
        "{found} is outside 1..={MAX_TOKEN_TTL_SECS} (no token lives longer than {MAX_TOKEN_TTL_SECS} s)"
    )]
    TtlOutOfRange {
        /// The value found.
        found: i64,
    },
}

/// Why a string is not a valid caller or audience pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The ID (or the part before `/*`) is not a valid SPIFFE ID.
    #[error(transparent)]
    Id(#[from] SpiffeIdError),
    /// A `*` somewhere other than as the whole last path segment.
    #[error(
        "\"*\" may only be the whole last path segment, as in spiffe://example.org/fn/* (and never the trust domain)"
    )]
    Wildcard,
}

/// A caller or audience of a rule: one exact SPIFFE ID, or every ID below a path.
///
/// ```
/// use baton_issuer::policy::IdPattern;
/// use baton_proto::SpiffeId;
/// let billing: IdPattern = "spiffe://example.org/fn/billing/*".parse().unwrap();
/// let id = |s: &str| SpiffeId::new(s).unwrap();
/// assert!(billing.matches(&id("spiffe://example.org/fn/billing/invoices")));
/// assert!(!billing.matches(&id("spiffe://example.org/fn/billing")));
/// assert!(!billing.matches(&id("spiffe://example.org/fn/billing-evil/x")));
/// assert!("spiffe://example.org/fn/*/x".parse::<IdPattern>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdPattern {
    kind: PatternKind,
    /// The ID, or for a prefix `spiffe://<td>` followed by a path ending in `/`.
    text: Box<str>,
    td_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PatternKind {
    Exact,
    Prefix,
}

impl IdPattern {
    /// Parses an exact SPIFFE ID or a prefix pattern `spiffe://<td>/<path>/*`
    /// (`spiffe://<td>/*`: the whole trust domain).
    pub fn new(s: &str) -> Result<Self, PatternError> {
        let Some(wild) = s.find('*') else {
            let id = SpiffeId::new(s)?;
            return Ok(Self {
                kind: PatternKind::Exact,
                td_len: id.trust_domain_name().len(),
                text: s.into(),
            });
        };
        let base = s.strip_suffix("/*").ok_or(PatternError::Wildcard)?;
        if wild != base.len() + 1 || base.len() <= SCHEME.len() {
            return Err(PatternError::Wildcard);
        }
        // Validate `<base>/x`, which has the same length as `<base>/*`, as an ID: the
        // prefix obeys every SPIFFE ID rule and can only match IDs below it.
        let probe = SpiffeId::new(&format!("{base}/x"))?;
        Ok(Self {
            kind: PatternKind::Prefix,
            td_len: probe.trust_domain_name().len(),
            text: format!("{base}/").into(),
        })
    }

    /// Whether `id` is this ID, or lies strictly below this prefix.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self.kind {
            PatternKind::Exact => id.as_str() == &*self.text,
            // The prefix ends in `/` and a valid ID never does, so a match has at least
            // one more segment, and `/fn/billing/` never matches `/fn/billing-evil/…`.
            PatternKind::Prefix => id.as_str().starts_with(&*self.text),
        }
    }

    /// Whether this is a prefix pattern (`…/*`) rather than one exact ID.
    pub fn is_prefix(&self) -> bool {
        self.kind == PatternKind::Prefix
    }

    /// The trust domain name the pattern lies in.
    pub fn trust_domain_name(&self) -> &str {
        &self.text[SCHEME.len()..SCHEME.len() + self.td_len]
    }

    /// Whether anything this pattern matches lies under the reserved `/baton/` path.
    fn is_reserved(&self) -> bool {
        let path = &self.text[SCHEME.len() + self.td_len..];
        let rest = path.strip_prefix(baton_proto::spiffe_id::RESERVED_PATH);
        rest.is_some_and(|r| r.is_empty() || r.starts_with('/'))
    }
}

impl FromStr for IdPattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        if self.is_prefix() {
            f.write_str("*")?;
        }
        Ok(())
    }
}

/// One `[[allow]]` rule, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    caller: IdPattern,
    audience: IdPattern,
    /// Sorted and deduplicated, for binary search.
    scopes: Box<[Box<str>]>,
    max_ttl: Option<Duration>,
}

impl Rule {
    /// Who may ask.
    pub fn caller(&self) -> &IdPattern {
        &self.caller
    }

    /// For whom.
    pub fn audience(&self) -> &IdPattern {
        &self.audience
    }

    /// The scope-tokens a request may ask for (sorted); empty: none.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().map(|s| &**s)
    }

    /// The token lifetime this rule sets; `None`: the issuer's default.
    pub fn max_ttl(&self) -> Option<Duration> {
        self.max_ttl
    }

    /// Whether every requested scope-token is one of this rule's.
    fn permits(&self, requested: Option<&Scope>) -> bool {
        requested.is_none_or(|scope| {
            scope
                .iter()
                .all(|t| self.scopes.binary_search_by(|s| (**s).cmp(t)).is_ok())
        })
    }
}

/// A validated policy, indexed by caller for [`decide`](Self::decide).
#[derive(Debug, Clone)]
pub struct Policy {
    /// In file order.
    rules: Box<[Rule]>,
    /// Exact caller ID → indices (ascending) of the rules naming it.
    exact: HashMap<Box<str>, Box<[usize]>>,
    /// Prefix (`spiffe://td/path/`, with the trailing slash) → indices (ascending).
    prefixes: HashMap<Box<str>, Box<[usize]>>,
    /// Length of the longest prefix key: deeper ancestors of a caller need no lookup,
    /// which bounds the work a long caller ID can cause.
    longest_prefix: usize,
}

/// A policy's size, for logs and `baton policy check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PolicySummary {
    /// Number of rules.
    pub rules: usize,
    /// Number of distinct exact caller IDs.
    pub exact_callers: usize,
    /// Number of distinct caller prefixes (`…/*`).
    pub prefix_callers: usize,
}

impl fmt::Display for PolicySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rules ({} exact callers, {} prefix callers)",
            self.rules, self.exact_callers, self.prefix_callers
        )
    }
}

/// What the policy allows for one token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The requested scopes, normalized (deduplicated, single spaces); `None` when none
    /// were requested. Never more than was requested.
    pub scope: Option<String>,
    /// Token lifetime: the rule's `max_ttl_seconds` or the issuer default, at most 300 s.
    pub ttl: Duration,
    /// 1-based position of the granting rule in the file, as error messages count (for
    /// audit logs and metrics).
    pub rule: usize,
}

/// Why the policy refused a token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// No rule lets this caller obtain tokens for this audience.
    #[error("audience not allowed by policy")]
    AudienceNotAllowed,
    /// Rules allow the audience, but none grants every requested scope.
    #[error("requested scope not allowed by policy for this audience")]
    ScopeNotAllowed,
}

impl Denial {
    /// Stable label for the `denied` metric and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::AudienceNotAllowed => "audience_not_allowed",
            Self::ScopeNotAllowed => "scope_not_allowed",
        }
    }

    /// The RFC error code the token endpoint answers with.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            // RFC 8707 §2: the requested resource is not one the client may reach.
            Self::AudienceNotAllowed => ErrorCode::InvalidTarget,
            // RFC 6749 §5.2: the requested scope exceeds what the client was granted.
            Self::ScopeNotAllowed => ErrorCode::InvalidScope,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    allow: Vec<toml::Table>,
}

impl Policy {
    /// The policy with no rules: every request is denied.
    pub fn deny_all() -> Self {
        Self {
            rules: Box::new([]),
            exact: HashMap::new(),
            prefixes: HashMap::new(),
            longest_prefix: 0,
        }
    }

    /// Parses and validates a policy. With `trust_domain`, rules naming another trust
    /// domain are refused. An empty file is the deny-all policy.
    pub fn from_toml(text: &str, trust_domain: Option<&TrustDomain>) -> Result<Self, PolicyError> {
        if text.len() as u64 > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge);
        }
        let raw: RawPolicy = toml::from_str(text).map_err(|e| syntax(&e, text))?;
        if raw.allow.len() > MAX_RULES {
            return Err(PolicyError::TooManyRules {
                count: raw.allow.len(),
            });
        }
        let rules = raw
            .allow
            .into_iter()
            .enumerate()
            .map(|(i, table)| parse_rule(i + 1, &table, trust_domain))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::index(rules))
    }

    /// Reads and validates a policy file (at most [`MAX_POLICY_BYTES`]). Blocking I/O.
    pub fn load(path: &Path, trust_domain: Option<&TrustDomain>) -> Result<Self, PolicyError> {
        Self::from_toml(&read_text(path)?, trust_domain)
    }

    fn index(rules: Vec<Rule>) -> Self {
        let mut exact: HashMap<Box<str>, Vec<usize>> = HashMap::new();
        let mut prefixes: HashMap<Box<str>, Vec<usize>> = HashMap::new();
        for (i, rule) in rules.iter().enumerate() {
            let map = if rule.caller.is_prefix() {
                &mut prefixes
            } else {
                &mut exact
            };
            map.entry(rule.caller.text.clone()).or_default().push(i);
        }
        let freeze = |m: HashMap<Box<str>, Vec<usize>>| {
            m.into_iter()
                .map(|(k, v)| (k, v.into_boxed_slice()))
                .collect()
        };
        let longest_prefix = prefixes.keys().map(|k| k.len()).max().unwrap_or(0);
        Self {
            rules: rules.into_boxed_slice(),
            exact: freeze(exact),
            prefixes: freeze(prefixes),
            longest_prefix,
        }
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Counts of rules and caller keys.
    pub fn summary(&self) -> PolicySummary {
        PolicySummary {
            rules: self.rules.len(),
            exact_callers: self.exact.len(),
            prefix_callers: self.prefixes.len(),
        }
    }

    /// Decides a token request. Among the rules whose caller and audience match, the
    /// first in file order that includes every requested scope grants; if rules match
    /// but none covers the scopes, the answer is [`Denial::ScopeNotAllowed`]; if none
    /// matches, [`Denial::AudienceNotAllowed`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use baton_issuer::policy::{Denial, Policy};
    /// use baton_proto::SpiffeId;
    /// let policy = Policy::from_toml(r#"
    ///     [[allow]]
    ///     caller = "spiffe://example.org/fn/orders"
    ///     audience = "spiffe://example.org/fn/payments"
    ///     scopes = ["payments:charge"]
    /// "#, None).unwrap();
    /// let id = |s: &str| SpiffeId::new(s).unwrap();
    /// let orders = id("spiffe://example.org/fn/orders");
    /// let scope = "payments:charge".parse().unwrap();
    /// let grant = policy
    ///     .decide(&orders, &id("spiffe://example.org/fn/payments"), Some(&scope), Duration::from_secs(60))
    ///     .unwrap();
    /// assert_eq!(grant.scope.as_deref(), Some("payments:charge"));
    /// assert_eq!(
    ///     policy.decide(&orders, &id("spiffe://example.org/fn/ledger"), None, Duration::from_secs(60)),
    ///     Err(Denial::AudienceNotAllowed)
    /// );
    /// ```
    pub fn decide(
        &self,
        caller: &SpiffeId,
        audience: &SpiffeId,
        requested: Option<&Scope>,
        default_ttl: Duration,
    ) -> Result<Grant, Denial> {
        // Baton's own identities are never parties to a workload token, whatever a
        // pattern as broad as `spiffe://td/*` would otherwise match.
        if caller.is_reserved() || audience.is_reserved() {
            return Err(Denial::AudienceNotAllowed);
        }
        let mut best: Option<usize> = None;
        let mut audience_allowed = false;
        // Each candidate list is ascending, so its first granting rule is its best one;
        // the overall answer is the smallest index across lists.
        let mut consider = |indices: &[usize]| {
            for &i in indices {
                if best.is_some_and(|b| i >= b) {
                    break;
                }
                let rule = &self.rules[i];
                if !rule.audience.matches(audience) {
                    continue;
                }
                audience_allowed = true;
                if rule.permits(requested) {
                    best = Some(i);
                    break;
                }
            }
        };
        if let Some(indices) = self.exact.get(caller.as_str()) {
            consider(indices);
        }
        for prefix in ancestors(caller).take_while(|p| p.len() <= self.longest_prefix) {
            if let Some(indices) = self.prefixes.get(prefix) {
                consider(indices);
            }
        }
        match best {
            Some(i) => {
                let max = Duration::from_secs(MAX_TOKEN_TTL_SECS);
                let ttl = self.rules[i].max_ttl.unwrap_or(default_ttl).min(max);
                Ok(Grant {
                    scope: requested.map(Scope::to_string),
                    ttl,
                    rule: i + 1,
                })
            }
            None if audience_allowed => Err(Denial::ScopeNotAllowed),
            None => Err(Denial::AudienceNotAllowed),
        }
    }
}

/// Every proper prefix of `id` that ends in `/`, from `spiffe://<td>/` down to the
/// parent of the last segment: the keys a prefix rule matching `id` is stored under.
fn ancestors(id: &SpiffeId) -> impl Iterator<Item = &str> {
    let s = id.as_str();
    s[SCHEME.len()..]
        .match_indices('/')
        .map(move |(i, _)| &s[..SCHEME.len() + i + 1])
}

/// A TOML or top-level shape error as one line with its line number, without quoting
/// the file (policies are logged on reload).
fn syntax(e: &toml::de::Error, text: &str) -> PolicyError {
    let line = e.span().map(|span| {
        let before = &text.as_bytes()[..span.start.min(text.len())];
        before.iter().filter(|&&b| b == b'\n').count() + 1
    });
    let mut message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    // serde quotes the offending value, which may be any size.
    if let Some((cut, _)) = message.char_indices().nth(MAX_SYNTAX_MESSAGE_CHARS) {
        message.truncate(cut);
        message.push('…');
    }
    PolicyError::Syntax { line, message }
}

fn parse_rule(
    index: usize,
    table: &toml::Table,
    trust_domain: Option<&TrustDomain>,
) -> Result<Rule, PolicyError> {
    let err = |field: &str, problem: RuleProblem| PolicyError::Rule {
        index,
        field: field.to_owned(),
        problem,
    };
    // Unknown keys first: a misspelt `caller` should be named as such, not reported
    // as a missing caller.
    if let Some(key) = table.keys().find(|k| !RULE_FIELDS.contains(&k.as_str())) {
        // A quoted TOML key may hold anything: keep the error one short line.
        let shown: String = key.escape_debug().take(MAX_FIELD_NAME_CHARS).collect();
        return Err(err(&shown, RuleProblem::UnknownField));
    }
    let required = |field: &str| {
        let value = table
            .get(field)
            .ok_or_else(|| err(field, RuleProblem::Missing))?;
        pattern(value, trust_domain).map_err(|p| err(field, p))
    };
    let caller = required("caller")?;
    let audience = required("audience")?;
    let scopes = match table.get("scopes") {
        Some(value) => scope_tokens(value).map_err(|p| err("scopes", p))?,
        None => Vec::new(),
    };
    let max_ttl = match table.get("max_ttl_seconds") {
        Some(value) => Some(ttl(value).map_err(|p| err("max_ttl_seconds", p))?),
        None => None,
    };
    Ok(Rule {
        caller,
        audience,
        scopes: scopes.into_boxed_slice(),
        max_ttl,
    })
}

fn wrong_type(expected: &'static str, found: &toml::Value) -> RuleProblem {
    RuleProblem::WrongType {
        expected,
        found: found.type_str(),
    }
}

fn pattern(
    value: &toml::Value,
    trust_domain: Option<&TrustDomain>,
) -> Result<IdPattern, RuleProblem> {
    let s = value
        .as_str()
        .ok_or_else(|| wrong_type("a SPIFFE ID string", value))?;
    let pattern = IdPattern::new(s)?;
    if let Some(td) = trust_domain
        && pattern.trust_domain_name() != td.as_str()
    {
        return Err(RuleProblem::ForeignTrustDomain {
            found: pattern.trust_domain_name().to_owned(),
            expected: td.clone(),
        });
    }
    if pattern.is_reserved() {
        return Err(RuleProblem::Reserved(pattern.to_string()));
    }
    Ok(pattern)
}

fn scope_tokens(value: &toml::Value) -> Result<Vec<Box<str>>, RuleProblem> {
    let array = value
        .as_array()
        .ok_or_else(|| wrong_type("an array of scope-token strings", value))?;
    let mut tokens = Vec::with_capacity(array.len());
    for (i, item) in array.iter().enumerate() {
        let bad = |reason: String| RuleProblem::ScopeToken {
            position: i + 1,
            reason,
        };
        let token = item
            .as_str()
            .ok_or_else(|| bad(format!("is not a string (found {})", item.type_str())))?;
        // A space would make one entry two scope-tokens on the wire.
        if token.contains(' ') {
            return Err(bad(
                "has a space; list each scope-token as its own string".to_owned()
            ));
        }
        token.parse::<Scope>().map_err(|e| {
            bad(match e {
                ScopeError::Empty | ScopeError::EmptyToken { .. } => "is empty".to_owned(),
                ScopeError::TokenTooLong { .. } => {
                    format!("is longer than {MAX_SCOPE_TOKEN_BYTES} bytes")
                }
                ScopeError::InvalidCharacter { byte, .. } => {
                    format!("has a character RFC 6749 §3.3 forbids (byte 0x{byte:02x})")
                }
                ScopeError::TooManyTokens => "is not one scope-token".to_owned(),
            })
        })?;
        tokens.push(Box::from(token));
    }
    tokens.sort_unstable();
    tokens.dedup();
    Ok(tokens)
}

fn ttl(value: &toml::Value) -> Result<Duration, RuleProblem> {
    let secs = value
        .as_integer()
        .ok_or_else(|| wrong_type("an integer number of seconds", value))?;
    match u64::try_from(secs) {
        Ok(s) if (1..=MAX_TOKEN_TTL_SECS).contains(&s) => Ok(Duration::from_secs(s)),
        _ => Err(RuleProblem::TtlOutOfRange { found: secs }),
    }
}

/// Reads a policy file's text (at most [`MAX_POLICY_BYTES`]). Blocking I/O.
fn read_text(path: &Path) -> Result<String, PolicyError> {
    let read_err = |source| PolicyError::Read {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_POLICY_BYTES + 1).read_to_end(&mut bytes))
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge);
    }
    String::from_utf8(bytes).map_err(|_| PolicyError::NotUtf8)
}

/// The version of a policy text: the first 16 hex digits of its SHA-256.
pub fn version_of(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    crate::fsio::hex(&digest.as_ref()[..8])
}

/// Publishes ARGV[1] (text) with version ARGV[2] unless KEYS[2] already holds a version
/// and ARGV[3] is "if-absent". Returns the version in force afterwards.
const PUBLISH_POLICY_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[2])
if current and ARGV[3] == 'if-absent' then return current end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
return ARGV[2]
";

/// The policy in force, swapped atomically on reload (SPEC §6: "a policy that fails to
/// parse is refused and the old one stays").
#[derive(Debug)]
pub struct PolicyStore {
    current: ArcSwap<Policy>,
    source: Option<PathBuf>,
    trust_domain: Option<TrustDomain>,
    /// The distributed store every replica takes the policy from, when there is one:
    /// `{baton}:policy` (the text) and `{baton}:policy:version`.
    shared: Option<SharedStore>,
    /// The version and text of the policy in force, when shared.
    in_force: Mutex<Option<(String, String)>>,
    /// Serializes reloads, so a slow reload of an older file cannot overwrite a newer one.
    reloading: Mutex<()>,
}

impl PolicyStore {
    /// A store holding `policy`; [`reload`](Self::reload) rereads `source` and checks
    /// it against `trust_domain`.
    pub fn new(policy: Policy, source: Option<PathBuf>, trust_domain: Option<TrustDomain>) -> Self {
        Self {
            current: ArcSwap::from_pointee(policy),
            source,
            trust_domain,
            shared: None,
            in_force: Mutex::new(None),
            reloading: Mutex::new(()),
        }
    }

    /// A store whose policy is shared by every replica through `shared`. If the store
    /// holds no policy yet, this replica's (from `source`, or deny-all) is published;
    /// otherwise the shared one is put in force — `baton policy reload` on any replica
    /// publishes its file to all. Blocking I/O: call it at start-up.
    pub fn open_shared(
        source: Option<PathBuf>,
        trust_domain: Option<TrustDomain>,
        shared: SharedStore,
    ) -> Result<Self, PolicyError> {
        let text = match &source {
            Some(path) => read_text(path)?,
            None => String::new(),
        };
        let policy = Policy::from_toml(&text, trust_domain.as_ref())?;
        let mut store = Self::new(policy, source, trust_domain);
        let version = version_of(&text);
        let in_force = publish(&shared, &text, &version, true)?;
        store.shared = Some(shared);
        if in_force == version {
            *store.in_force.get_mut().unwrap_or_else(|e| e.into_inner()) = Some((version, text));
        } else {
            tracing::warn!(
                local = %version,
                shared = %in_force,
                "the shared policy differs from this replica's file and stays in force; `baton policy reload` publishes this file to every replica"
            );
            store.refresh()?;
        }
        Ok(store)
    }

    /// The version of the policy in force, when it came from (or went to) the shared
    /// store.
    pub fn version(&self) -> Option<String> {
        self.in_force
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(version, _)| version.clone())
    }

    /// The text of the shared policy in force here.
    fn text(&self) -> Option<String> {
        self.in_force
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, text)| text.clone())
    }

    /// Puts the shared policy in force if another replica published a new one; returns
    /// whether it did. A no-op without a shared store. Blocking I/O.
    pub fn refresh(&self) -> Result<bool, PolicyError> {
        let Some(shared) = &self.shared else {
            return Ok(false);
        };
        let mut conn = shared.connection()?;
        let version: Option<String> = redis::cmd("GET")
            .arg(SharedStore::key("policy:version"))
            .query(&mut *conn)
            .map_err(|e| shared.unavailable(&e))?;
        let Some(version) = version else {
            // The store lost its data: publish the policy in force here again.
            if let Some(text) = self.text() {
                let ours = version_of(&text);
                drop(conn);
                publish(shared, &text, &ours, true)?;
                tracing::warn!(version = %ours, "the shared store held no policy; restored this replica's");
            }
            return Ok(false);
        };
        if self.version().as_deref() == Some(version.as_str()) {
            return Ok(false);
        }
        let _serial = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let text: Option<String> = redis::cmd("GET")
            .arg(SharedStore::key("policy"))
            .query(&mut *conn)
            .map_err(|e| shared.unavailable(&e))?;
        let text = text.unwrap_or_default();
        // Whatever is stored, this replica checks it as if it were its own file.
        let policy = Policy::from_toml(&text, self.trust_domain.as_ref())?;
        let summary = policy.summary();
        self.current.store(Arc::new(policy));
        let version = version_of(&text);
        tracing::info!(
            version = %version,
            rules = summary.rules,
            "policy published by another replica is now in force"
        );
        *self.in_force.lock().unwrap_or_else(|e| e.into_inner()) = Some((version, text));
        Ok(true)
    }

    /// Loads the policy file at `path` (blocking I/O); the issuer refuses to start on an
    /// invalid policy rather than run with none.
    pub fn load(path: PathBuf, trust_domain: Option<TrustDomain>) -> Result<Self, PolicyError> {
        let policy = Policy::load(&path, trust_domain.as_ref())?;
        let summary = policy.summary();
        tracing::info!(
            path = %path.display(),
            rules = summary.rules,
            exact_callers = summary.exact_callers,
            prefix_callers = summary.prefix_callers,
            "policy loaded"
        );
        Ok(Self::new(policy, Some(path), trust_domain))
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    /// [`Policy::decide`] on the policy in force, without touching its reference count.
    pub fn decide(
        &self,
        caller: &SpiffeId,
        audience: &SpiffeId,
        requested: Option<&Scope>,
        default_ttl: Duration,
    ) -> Result<Grant, Denial> {
        self.current
            .load()
            .decide(caller, audience, requested, default_ttl)
    }

    /// The policy file, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Rereads the policy file and puts it in force if, and only if, it is valid; on any
    /// error the previous policy stays. Blocking I/O: call it off the async runtime.
    pub fn reload(&self) -> Result<PolicySummary, PolicyError> {
        let Some(path) = &self.source else {
            return Err(PolicyError::NoSource);
        };
        let _serial = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let checked = read_text(path).and_then(|text| {
            let policy = Policy::from_toml(&text, self.trust_domain.as_ref())?;
            // Shared first: a policy every replica will not see is not put in force here.
            if let Some(shared) = &self.shared {
                let version = version_of(&text);
                publish(shared, &text, &version, false)?;
                *self.in_force.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((version, text.clone()));
            }
            Ok(policy)
        });
        match checked {
            Ok(policy) => {
                let summary = policy.summary();
                self.current.store(Arc::new(policy));
                tracing::info!(
                    path = %path.display(),
                    rules = summary.rules,
                    exact_callers = summary.exact_callers,
                    prefix_callers = summary.prefix_callers,
                    "policy reloaded"
                );
                Ok(summary)
            }
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %OneLine(&e),
                    rules_in_force = self.current.load().rules.len(),
                    "policy reload refused; the previous policy stays in force"
                );
                Err(e)
            }
        }
    }
}

/// Writes `text` as the shared policy (only if none is there, with `if_absent`) and
/// returns the version in force in the store afterwards.
fn publish(
    shared: &SharedStore,
    text: &str,
    version: &str,
    if_absent: bool,
) -> Result<String, PolicyError> {
    let mut conn = shared.connection()?;
    redis::Script::new(PUBLISH_POLICY_SCRIPT)
        .key(SharedStore::key("policy"))
        .key(SharedStore::key("policy:version"))
        .arg(text)
        .arg(version)
        .arg(if if_absent { "if-absent" } else { "always" })
        .invoke(&mut *conn)
        .map_err(|e| PolicyError::Shared(shared.unavailable(&e)))
}

/// An error and its sources on one line, `a: b: c`.
struct OneLine<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(s).unwrap()
    }

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn policy(text: &str) -> Policy {
        Policy::from_toml(text, Some(&td())).unwrap()
    }

    fn refused(text: &str) -> String {
        Policy::from_toml(text, Some(&td()))
            .unwrap_err()
            .to_string()
    }

    fn scope(s: &str) -> Scope {
        s.parse().unwrap()
    }

    fn decide(
        p: &Policy,
        caller: &str,
        audience: &str,
        scope_req: Option<&str>,
    ) -> Result<Grant, Denial> {
        let requested = scope_req.map(scope);
        p.decide(&id(caller), &id(audience), requested.as_ref(), TTL)
    }

    const ORDERS: &str = "spiffe://example.org/fn/orders";
    const PAYMENTS: &str = "spiffe://example.org/fn/payments";

    const EXAMPLE: &str = r#"
        [[allow]]
        caller = "spiffe://example.org/fn/orders"
        audience = "spiffe://example.org/fn/payments"
        scopes = ["payments:charge", "payments:refund"]
        max_ttl_seconds = 30

        [[allow]]
        caller = "spiffe://example.org/fn/billing/*"
        audience = "spiffe://example.org/fn/ledger"
    "#;

    #[test]
    fn listed_caller_and_audience_get_a_grant() {
        let p = policy(EXAMPLE);
        let grant = decide(
            &p,
            ORDERS,
            PAYMENTS,
            Some("payments:refund payments:charge payments:refund"),
        )
        .unwrap();
        assert_eq!(
            grant,
            Grant {
                scope: Some("payments:refund payments:charge".to_owned()),
                ttl: Duration::from_secs(30),
                rule: 1,
            }
        );
    }

    #[test]
    fn unlisted_audience_is_invalid_target() {
        let p = policy(EXAMPLE);
        let denial = decide(&p, ORDERS, "spiffe://example.org/fn/ledger", None).unwrap_err();
        assert_eq!(denial, Denial::AudienceNotAllowed);
        assert_eq!(denial.error_code(), ErrorCode::InvalidTarget);
        assert_eq!(denial.reason(), "audience_not_allowed");
        // An unlisted caller is refused the same way: nothing reveals which rules exist.
        assert_eq!(
            decide(&p, "spiffe://example.org/fn/stranger", PAYMENTS, None),
            Err(Denial::AudienceNotAllowed)
        );
    }

    #[test]
    fn empty_policy_denies_everything() {
        for p in [
            policy(""),
            policy("# nothing allowed yet\n"),
            Policy::deny_all(),
        ] {
            assert_eq!(
                decide(&p, ORDERS, PAYMENTS, None),
                Err(Denial::AudienceNotAllowed)
            );
            assert_eq!(p.summary().rules, 0);
        }
    }

    #[test]
    fn prefix_rule_matches_ids_below_it() {
        let p = policy(EXAMPLE);
        for caller in [
            "spiffe://example.org/fn/billing/invoices",
            "spiffe://example.org/fn/billing/eu/invoices",
        ] {
            let grant = decide(&p, caller, "spiffe://example.org/fn/ledger", None).unwrap();
            assert_eq!(grant.rule, 2);
        }
    }

    #[test]
    fn prefix_rule_does_not_match_sibling_path() {
        let p = policy(EXAMPLE);
        for caller in [
            "spiffe://example.org/fn/billing",
            "spiffe://example.org/fn/billing-evil/x",
            "spiffe://example.org/fn/billingx",
            "spiffe://example.org/fn/Billing/x",
            "spiffe://example.org.evil/fn/billing/x",
            "spiffe://example.orgx/fn/billing/x",
        ] {
            assert_eq!(
                decide(&p, caller, "spiffe://example.org/fn/ledger", None),
                Err(Denial::AudienceNotAllowed),
                "{caller}"
            );
        }
    }

    #[test]
    fn whole_trust_domain_pattern_matches_every_workload_but_not_reserved_ids() {
        let p = policy(
            r#"[[allow]]
               caller = "spiffe://example.org/*"
               audience = "spiffe://example.org/*""#,
        );
        assert_eq!(decide(&p, ORDERS, PAYMENTS, None).unwrap().rule, 1);
        assert_eq!(
            decide(
                &p,
                "spiffe://example.org/x",
                "spiffe://example.org/a/b/c",
                None
            )
            .unwrap()
            .rule,
            1
        );
        for (caller, audience) in [
            (ORDERS, "spiffe://example.org/baton/token-signer"),
            (ORDERS, "spiffe://example.org/baton"),
            ("spiffe://example.org/baton/token-signer", PAYMENTS),
            (ORDERS, "spiffe://other.org/fn/payments"),
        ] {
            assert_eq!(
                decide(&p, caller, audience, None),
                Err(Denial::AudienceNotAllowed),
                "{caller} -> {audience}"
            );
        }
        assert_eq!(
            decide(&p, ORDERS, "spiffe://example.org/batonfn", None)
                .unwrap()
                .rule,
            1
        );
    }

    #[test]
    fn scope_outside_rule_is_invalid_scope() {
        let p = policy(EXAMPLE);
        for requested in [
            "payments:delete",
            "payments:charge payments:delete",
            "PAYMENTS:CHARGE",
        ] {
            let denial = decide(&p, ORDERS, PAYMENTS, Some(requested)).unwrap_err();
            assert_eq!(denial, Denial::ScopeNotAllowed, "{requested}");
            assert_eq!(denial.error_code(), ErrorCode::InvalidScope);
            assert_eq!(denial.reason(), "scope_not_allowed");
        }
    }

    #[test]
    fn rule_without_scopes_grants_no_scope_request_only() {
        let p = policy(EXAMPLE);
        let caller = "spiffe://example.org/fn/billing/a";
        let ledger = "spiffe://example.org/fn/ledger";
        let grant = decide(&p, caller, ledger, None).unwrap();
        assert_eq!(grant.scope, None);
        assert_eq!(
            decide(&p, caller, ledger, Some("ledger:read")),
            Err(Denial::ScopeNotAllowed)
        );
        let empty = policy(
            r#"[[allow]]
               caller = "spiffe://example.org/fn/a"
               audience = "spiffe://example.org/fn/b"
               scopes = []"#,
        );
        assert!(
            decide(
                &empty,
                "spiffe://example.org/fn/a",
                "spiffe://example.org/fn/b",
                None
            )
            .is_ok()
        );
        assert_eq!(
            decide(
                &empty,
                "spiffe://example.org/fn/a",
                "spiffe://example.org/fn/b",
                Some("x")
            ),
            Err(Denial::ScopeNotAllowed)
        );
    }

    #[test]
    fn first_rule_in_file_order_covering_the_scopes_grants() {
        let p = policy(
            r#"
            [[allow]]
            caller = "spiffe://example.org/fn/*"
            audience = "spiffe://example.org/fn/ledger"
            scopes = ["ledger:read"]
            max_ttl_seconds = 10

            [[allow]]
            caller = "spiffe://example.org/fn/billing"
            audience = "spiffe://example.org/fn/ledger"
            scopes = ["ledger:read", "ledger:write"]
            max_ttl_seconds = 20

            [[allow]]
            caller = "spiffe://example.org/fn/billing"
            audience = "spiffe://example.org/fn/ledger"
            scopes = ["ledger:write"]
            max_ttl_seconds = 30
            "#,
        );
        let billing = "spiffe://example.org/fn/billing";
        let ledger = "spiffe://example.org/fn/ledger";
        assert_eq!(decide(&p, billing, ledger, None).unwrap().rule, 1);
        assert_eq!(
            decide(&p, billing, ledger, Some("ledger:read"))
                .unwrap()
                .rule,
            1
        );
        let write = decide(&p, billing, ledger, Some("ledger:write")).unwrap();
        assert_eq!((write.rule, write.ttl), (2, Duration::from_secs(20)));
        assert_eq!(
            decide(&p, billing, ledger, Some("ledger:read ledger:write"))
                .unwrap()
                .rule,
            2
        );
        // Scopes are never pooled across rules.
        assert_eq!(
            decide(
                &p,
                "spiffe://example.org/fn/other",
                ledger,
                Some("ledger:write")
            ),
            Err(Denial::ScopeNotAllowed)
        );
    }

    #[test]
    fn ttl_capped_by_rule_and_by_300s() {
        let p = policy(EXAMPLE);
        let rule_ttl = decide(&p, ORDERS, PAYMENTS, None).unwrap().ttl;
        assert_eq!(rule_ttl, Duration::from_secs(30));
        let caller = id("spiffe://example.org/fn/billing/a");
        let ledger = id("spiffe://example.org/fn/ledger");
        let default = p
            .decide(&caller, &ledger, None, Duration::from_secs(45))
            .unwrap();
        assert_eq!(default.ttl, Duration::from_secs(45));
        let capped = p
            .decide(&caller, &ledger, None, Duration::from_secs(3600))
            .unwrap();
        assert_eq!(capped.ttl, Duration::from_secs(MAX_TOKEN_TTL_SECS));
        for bad in ["0", "301", "-5", "100000000000"] {
            let err = refused(&format!(
                "[[allow]]\ncaller = \"{ORDERS}\"\naudience = \"{PAYMENTS}\"\nmax_ttl_seconds = {bad}\n"
            ));
            assert!(err.starts_with("rule 1: max_ttl_seconds: "), "{err}");
        }
        let max = policy(&format!(
            "[[allow]]\ncaller = \"{ORDERS}\"\naudience = \"{PAYMENTS}\"\nmax_ttl_seconds = 300\n"
        ));
        assert_eq!(
            decide(&max, ORDERS, PAYMENTS, None).unwrap().ttl,
            Duration::from_secs(300)
        );
    }

    #[test]
    fn invalid_reload_keeps_old_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, EXAMPLE).unwrap();
        let store = PolicyStore::load(path.clone(), Some(td())).unwrap();
        let before = store.current();
        assert!(store.decide(&id(ORDERS), &id(PAYMENTS), None, TTL).is_ok());

        for bad in [
            "[[allow]\n",
            "[[allow]]\ncaller = \"spiffe://example.org/fn/orders\"\n",
            "[[allow]]\ncaller = \"spiffe://other.org/fn/a\"\naudience = \"spiffe://example.org/fn/b\"\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(store.reload().is_err(), "{bad}");
            assert!(Arc::ptr_eq(&before, &store.current()));
            assert!(store.decide(&id(ORDERS), &id(PAYMENTS), None, TTL).is_ok());
        }
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(store.reload(), Err(PolicyError::Read { .. })));
        assert!(Arc::ptr_eq(&before, &store.current()));

        std::fs::write(&path, "").unwrap();
        assert_eq!(store.reload().unwrap().rules, 0);
        assert_eq!(
            store.decide(&id(ORDERS), &id(PAYMENTS), None, TTL),
            Err(Denial::AudienceNotAllowed)
        );
        // The old policy stays valid for whoever still holds it.
        assert!(before.decide(&id(ORDERS), &id(PAYMENTS), None, TTL).is_ok());
    }

    #[test]
    fn reload_without_a_policy_file_is_refused() {
        let store = PolicyStore::new(Policy::deny_all(), None, None);
        assert!(matches!(store.reload(), Err(PolicyError::NoSource)));
    }

    #[test]
    fn foreign_trust_domain_rule_is_refused() {
        let err = refused(&format!(
            "[[allow]]\ncaller = \"{ORDERS}\"\naudience = \"{PAYMENTS}\"\n\n\
             [[allow]]\ncaller = \"spiffe://other.org/*\"\naudience = \"{PAYMENTS}\"\n"
        ));
        assert_eq!(
            err,
            "rule 2: caller: trust domain other.org is not this issuer's trust domain example.org"
        );
        // Without a trust domain to check against, the same file is accepted.
        let text =
            format!("[[allow]]\ncaller = \"{ORDERS}\"\naudience = \"spiffe://other.org/fn/x\"\n");
        assert!(refused(&text).starts_with("rule 1: audience: trust domain other.org"));
        assert!(Policy::from_toml(&text, None).is_ok());
    }

    #[test]
    fn reserved_audience_is_refused() {
        for (field, pattern) in [
            ("audience", "spiffe://example.org/baton/token-signer"),
            ("audience", "spiffe://example.org/baton"),
            ("audience", "spiffe://example.org/baton/*"),
            ("caller", "spiffe://example.org/baton/x/*"),
        ] {
            let (caller, audience) = if field == "caller" {
                (pattern, PAYMENTS)
            } else {
                (ORDERS, pattern)
            };
            let err = refused(&format!(
                "[[allow]]\ncaller = \"{caller}\"\naudience = \"{audience}\"\n"
            ));
            assert_eq!(
                err,
                format!(
                    "rule 1: {field}: {pattern} lies under /baton/, which is reserved for Baton's own identities"
                )
            );
        }
        // Only the /baton path itself is reserved, not names that start with it.
        policy(&format!(
            "[[allow]]\ncaller = \"{ORDERS}\"\naudience = \"spiffe://example.org/batonic/*\"\n"
        ));
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let err = refused(&format!(
            "[[allow]]\ncaller = \"{ORDERS}\"\naudience = \"{PAYMENTS}\"\n\n\
             [[allow]]\ncaller = \"{ORDERS}\"\naudience = \"{PAYMENTS}\"\nscope = [\"a\"]\n"
        ));
        assert_eq!(
            err,
            "rule 2: scope: unknown field; a rule has only caller, audience, scopes and max_ttl_seconds"
        );
        // A misspelt key is named as such, not reported as a missing field.
        let typo = refused(&format!(
            "[[allow]]\ncalller = \"{ORDERS}\"\naudience = \"{PAYMENTS}\"\n"
        ));
        assert!(typo.starts_with("rule 1: calller: unknown field"), "{typo}");
        let odd = refused(&format!(
            "[[allow]]\ncaller = \"{ORDERS}\"\naudience = \"{PAYMENTS}\"\n\"a\\nb{}\" = 1\n",
            "c".repeat(1000)
        ));
        assert!(odd.starts_with("rule 1: a\\nbccc"), "{odd}");
        assert!(!odd.contains('\n') && odd.len() < 200, "{odd}");
        let top = refused("[[alow]]\ncaller = \"spiffe://example.org/a\"\n");
        assert!(top.starts_with("invalid policy at line 1: "), "{top}");
        assert!(top.contains("`alow`"), "{top}");
        let stray = refused("default = \"allow\"\n");
        assert!(stray.contains("`default`"), "{stray}");
    }

    #[test]
    fn every_rule_error_is_one_line_naming_rule_and_field() {
        const A: &str = r#"caller = "spiffe://example.org/fn/a""#;
        const B: &str = r#"audience = "spiffe://example.org/fn/b""#;
        const WILDCARD: &str = "\"*\" may only be the whole last path segment, as in spiffe://example.org/fn/* (and never the trust domain)";
        let cases: &[(&str, &str, String)] = &[
            (
                "",
                B,
                "caller: missing; every rule names a caller and an audience".into(),
            ),
            (
                A,
                "",
                "audience: missing; every rule names a caller and an audience".into(),
            ),
            (
                A,
                r#"audience = "spiffe://example.org/fn/../admin""#,
                r#"audience: SPIFFE ID path has a "." or ".." segment"#.into(),
            ),
            (
                r#"caller = "spiffe://example.org/fn/*/x""#,
                B,
                format!("caller: {WILDCARD}"),
            ),
            (
                r#"caller = "spiffe://example.org/fn/*/*""#,
                B,
                format!("caller: {WILDCARD}"),
            ),
            (
                r#"caller = "spiffe://example.org/fn*""#,
                B,
                format!("caller: {WILDCARD}"),
            ),
            (r#"caller = "spiffe://*""#, B, format!("caller: {WILDCARD}")),
            (
                r#"caller = "spiffe://Example.org/*""#,
                B,
                "caller: trust domain must be lower case (found 'E'); write it in lower case"
                    .into(),
            ),
            (
                "caller = 7",
                B,
                "caller: expected a SPIFFE ID string, found integer".into(),
            ),
            (
                A,
                "audience = \"spiffe://example.org/fn/b\"\nscopes = \"x y\"",
                "scopes: expected an array of scope-token strings, found string".into(),
            ),
            (
                A,
                "audience = \"spiffe://example.org/fn/b\"\nscopes = [\"x\", \"y z\"]",
                "scopes: entry 2 has a space; list each scope-token as its own string".into(),
            ),
            (
                A,
                "audience = \"spiffe://example.org/fn/b\"\nscopes = [\"\"]",
                "scopes: entry 1 is empty".into(),
            ),
            (
                A,
                "audience = \"spiffe://example.org/fn/b\"\nscopes = ['a\"b']",
                "scopes: entry 1 has a character RFC 6749 §3.3 forbids (byte 0x22)".into(),
            ),
            (
                A,
                "audience = \"spiffe://example.org/fn/b\"\nscopes = [1]",
                "scopes: entry 1 is not a string (found integer)".into(),
            ),
            (
                A,
                &format!(
                    "{B}\nscopes = [\"{}\"]",
                    "a".repeat(MAX_SCOPE_TOKEN_BYTES + 1)
                ),
                "scopes: entry 1 is longer than 128 bytes".into(),
            ),
            (
                A,
                "audience = \"spiffe://example.org/fn/b\"\nmax_ttl_seconds = \"60\"",
                "max_ttl_seconds: expected an integer number of seconds, found string".into(),
            ),
            (
                A,
                "audience = \"spiffe://example.org/fn/b\"\nmax_ttl_seconds = 301",
                "max_ttl_seconds: 301 is outside 1..=300 (no token lives longer than 300 s)".into(),
            ),
        ];
        for (caller, audience, want) in cases {
            let text = format!("[[allow]]\n{A}\n{B}\n\n[[allow]]\n{caller}\n{audience}\n");
            assert_eq!(refused(&text), format!("rule 2: {want}"), "{text}");
        }
    }

    #[test]
    fn syntax_errors_name_the_line_without_quoting_it() {
        let err = refused("# ok\n\n[[allow]]\ncaller = spiffe://secret.example/fn\n");
        assert!(err.starts_with("invalid policy at line 4: "), "{err}");
        assert!(!err.contains("secret"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn syntax_errors_do_not_echo_long_values() {
        let err = refused(&format!("allow = [\"{}\"]\n", "v".repeat(10_000)));
        assert!(
            err.starts_with("invalid policy at line 1: invalid type: string"),
            "{err}"
        );
        assert!(err.len() < 300, "{err}");
    }

    #[test]
    fn oversized_policies_are_refused() {
        let big = format!("# {}\n", "x".repeat(MAX_POLICY_BYTES as usize));
        assert!(matches!(
            Policy::from_toml(&big, None),
            Err(PolicyError::TooLarge)
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, &big).unwrap();
        assert!(matches!(
            Policy::load(&path, None),
            Err(PolicyError::TooLarge)
        ));

        let rule = "[[allow]]\ncaller=\"spiffe://a/b\"\naudience=\"spiffe://a/c\"\n";
        let many = rule.repeat(MAX_RULES + 1);
        assert!(many.len() as u64 <= MAX_POLICY_BYTES);
        assert_eq!(
            Policy::from_toml(&many, None).unwrap_err().to_string(),
            format!(
                "policy has {} rules; the limit is {MAX_RULES}",
                MAX_RULES + 1
            )
        );
        let at_limit = Policy::from_toml(&rule.repeat(MAX_RULES), None).unwrap();
        assert_eq!(at_limit.summary().rules, MAX_RULES);

        std::fs::write(&path, b"\xff\xfe").unwrap();
        assert!(matches!(
            Policy::load(&path, None),
            Err(PolicyError::NotUtf8)
        ));
    }

    #[test]
    fn summary_counts_distinct_callers() {
        let p = policy(&format!(
            "{EXAMPLE}\n[[allow]]\ncaller = \"{ORDERS}\"\naudience = \"spiffe://example.org/fn/ledger\"\n"
        ));
        assert_eq!(
            p.summary().to_string(),
            "3 rules (1 exact callers, 1 prefix callers)"
        );
    }

    #[test]
    fn patterns_display_as_written() {
        for s in [
            ORDERS,
            "spiffe://example.org/fn/billing/*",
            "spiffe://example.org/*",
        ] {
            assert_eq!(IdPattern::new(s).unwrap().to_string(), s);
        }
        let p = policy(EXAMPLE);
        let rule = &p.rules()[0];
        assert_eq!(
            rule.scopes().collect::<Vec<_>>(),
            ["payments:charge", "payments:refund"]
        );
        assert_eq!(rule.max_ttl(), Some(Duration::from_secs(30)));
        assert!(p.rules()[1].caller().is_prefix());
    }
}

/// The policy shared through Redis, against a real `redis-server`.
#[cfg(test)]
mod shared_tests {
    use super::*;
    use crate::shared::DEFAULT_TIMEOUT;

    const ONE: &str =
        "[[allow]]\ncaller = \"spiffe://example.org/a\"\naudience = \"spiffe://example.org/b\"\n";

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    fn allows(store: &PolicyStore, caller: &str, audience: &str) -> bool {
        store
            .decide(&id(caller), &id(audience), None, Duration::from_secs(60))
            .is_ok()
    }

    #[test]
    fn a_reload_on_one_replica_is_put_in_force_on_the_others() {
        let redis = baton_tests::RedisServer::start();
        let shared = || SharedStore::connect(&redis.url(), DEFAULT_TIMEOUT).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let file_a = dir.path().join("a.toml");
        let file_b = dir.path().join("b.toml");
        std::fs::write(&file_a, ONE).unwrap();
        std::fs::write(&file_b, "").unwrap();

        let a = PolicyStore::open_shared(Some(file_a.clone()), Some(td.clone()), shared()).unwrap();
        // b starts later with another file: the shared policy (a's) is in force.
        let b = PolicyStore::open_shared(Some(file_b), Some(td.clone()), shared()).unwrap();
        assert!(allows(
            &b,
            "spiffe://example.org/a",
            "spiffe://example.org/b"
        ));
        assert_eq!(a.version(), b.version());

        let two = format!(
            "{ONE}[[allow]]\ncaller = \"spiffe://example.org/c\"\naudience = \"spiffe://example.org/b\"\n"
        );
        std::fs::write(&file_a, &two).unwrap();
        assert_eq!(a.reload().unwrap().rules, 2);
        assert!(!allows(
            &b,
            "spiffe://example.org/c",
            "spiffe://example.org/b"
        ));
        assert!(b.refresh().unwrap());
        assert!(allows(
            &b,
            "spiffe://example.org/c",
            "spiffe://example.org/b"
        ));
        assert!(!b.refresh().unwrap(), "nothing new");
        assert_eq!(b.version(), Some(version_of(&two)));

        // An invalid file is refused and not published.
        std::fs::write(&file_a, "[[allow]]\ncaller = \"nonsense\"\n").unwrap();
        assert!(a.reload().is_err());
        assert!(!b.refresh().unwrap());
        assert_eq!(
            redis.cli(&["GET", "{baton}:policy:version"]),
            version_of(&two)
        );

        // The store loses its data: the next refresh publishes the policy in force.
        assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
        assert!(!b.refresh().unwrap());
        assert_eq!(
            redis.cli(&["GET", "{baton}:policy:version"]),
            version_of(&two)
        );
        assert!(allows(
            &b,
            "spiffe://example.org/c",
            "spiffe://example.org/b"
        ));
    }

    #[test]
    fn a_reload_the_store_cannot_take_stays_out_of_force() {
        let mut redis = baton_tests::RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "").unwrap();
        let shared = SharedStore::connect(&redis.url(), DEFAULT_TIMEOUT).unwrap();
        let store = PolicyStore::open_shared(Some(file.clone()), None, shared).unwrap();
        std::fs::write(&file, ONE).unwrap();
        redis.kill();
        assert!(matches!(store.reload(), Err(PolicyError::Shared(_))));
        assert!(!allows(
            &store,
            "spiffe://example.org/a",
            "spiffe://example.org/b"
        ));
        assert!(matches!(store.refresh(), Err(PolicyError::Shared(_))));
    }
}
