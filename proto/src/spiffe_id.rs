//! SPIFFE IDs and trust domains (SPEC §2, SPIFFE-ID standard §2).
//!
//! A [`SpiffeId`] is `spiffe://<trust-domain>/<path>`: a lower-case trust domain of
//! `[a-z0-9._-]`, no port, user info, query or fragment, a non-empty path of
//! `[A-Za-z0-9._-]` segments with no empty, `.` or `..` segment, at most 2048 bytes.
//! The parser refuses everything else with a [`SpiffeIdError`] that names the rule.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};

const SCHEME: &str = "spiffe://";
/// Longest SPIFFE ID accepted, in bytes (SPIFFE-ID standard §2.3).
pub const MAX_SPIFFE_ID_BYTES: usize = 2048;
/// Longest trust domain name accepted, in bytes (SPIFFE-ID standard §2.1).
pub const MAX_TRUST_DOMAIN_BYTES: usize = 255;
/// Path prefix reserved for Baton's own identities: no workload is enrolled under it.
pub const RESERVED_PATH: &str = "/baton";
/// Path of the reserved identity every token-signing key certificate carries.
pub const TOKEN_SIGNER_PATH: &str = "/baton/token-signer";

/// Why a string is not a valid SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input is empty.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The input is longer than the standard allows.
    #[error("SPIFFE ID is {len} bytes long; the limit is {MAX_SPIFFE_ID_BYTES}")]
    TooLong {
        /// Length of the rejected input in bytes.
        len: usize,
    },
    /// The scheme is missing or is not `spiffe://` (lower case).
    #[error("SPIFFE ID must start with \"spiffe://\"")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("SPIFFE ID has no trust domain")]
    MissingTrustDomain,
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is {len} bytes long; the limit is {MAX_TRUST_DOMAIN_BYTES}")]
    TrustDomainTooLong {
        /// Length of the rejected trust domain in bytes.
        len: usize,
    },
    /// The trust domain has an upper-case letter.
    #[error("trust domain must be lower case (found {found:?}); write it in lower case")]
    TrustDomainUpperCase {
        /// The offending character.
        found: char,
    },
    /// The trust domain carries a port (`:`).
    #[error("trust domain must not carry a port")]
    Port,
    /// The trust domain carries user info (`@`).
    #[error("trust domain must not carry user info")]
    UserInfo,
    /// The trust domain has a character outside `[a-z0-9._-]`.
    #[error("trust domain has a character outside [a-z0-9._-]: {found:?}")]
    TrustDomainCharacter {
        /// The offending character.
        found: char,
    },
    /// The ID has a query component.
    #[error("SPIFFE ID must not have a query")]
    Query,
    /// The ID has a fragment component.
    #[error("SPIFFE ID must not have a fragment")]
    Fragment,
    /// The ID names only a trust domain; a workload ID needs a path.
    #[error("SPIFFE ID has no path: a workload ID is spiffe://<trust-domain>/<path>")]
    MissingPath,
    /// A path segment is empty (`//` or a trailing `/`).
    #[error("SPIFFE ID path has an empty segment (\"//\" or a trailing \"/\")")]
    EmptySegment,
    /// A path segment is `.` or `..`.
    #[error("SPIFFE ID path has a \".\" or \"..\" segment")]
    DotSegment,
    /// A path has a character outside `[A-Za-z0-9._-]`.
    #[error("SPIFFE ID path has a character outside [A-Za-z0-9._-]: {found:?}")]
    PathCharacter {
        /// The offending character.
        found: char,
    },
}

/// A SPIFFE trust domain name such as `example.org`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`, not `spiffe://example.org`).
    ///
    /// ```
    /// use baton_proto::TrustDomain;
    /// assert_eq!(TrustDomain::new("example.org").unwrap().as_str(), "example.org");
    /// assert!(TrustDomain::new("Example.org").is_err());
    /// ```
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        check_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The trust domain name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own ID, `spiffe://<name>` (carried by its CA certificate).
    pub fn id_uri(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }

    /// The reserved identity of token-signing keys, `spiffe://<name>/baton/token-signer`.
    pub fn token_signer_id(&self) -> SpiffeId {
        SpiffeId {
            full: format!("{SCHEME}{}{TOKEN_SIGNER_PATH}", self.0),
            td_len: self.0.len(),
        }
    }
}

fn check_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_BYTES {
        return Err(SpiffeIdError::TrustDomainTooLong { len: td.len() });
    }
    for c in td.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            'A'..='Z' => return Err(SpiffeIdError::TrustDomainUpperCase { found: c }),
            ':' => return Err(SpiffeIdError::Port),
            '@' => return Err(SpiffeIdError::UserInfo),
            _ => return Err(SpiffeIdError::TrustDomainCharacter { found: c }),
        }
    }
    Ok(())
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for TrustDomain {
    type Error = SpiffeIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        check_trust_domain(&s)?;
        Ok(Self(s))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A validated workload SPIFFE ID, `spiffe://<trust-domain>/<path>`.
///
/// ```
/// use baton_proto::{SpiffeId, SpiffeIdError};
/// let id: SpiffeId = "spiffe://example.org/fn/orders".parse().unwrap();
/// assert_eq!(id.trust_domain_name(), "example.org");
/// assert_eq!(id.path(), "/fn/orders");
/// assert_eq!(
///     "spiffe://example.org/fn/../admin".parse::<SpiffeId>(),
///     Err(SpiffeIdError::DotSegment)
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct SpiffeId {
    full: String,
    /// Length of the trust domain, which starts right after the scheme.
    td_len: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn new(s: &str) -> Result<Self, SpiffeIdError> {
        let td_len = check_id(s)?;
        Ok(Self {
            full: s.to_owned(),
            td_len,
        })
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The trust domain name, e.g. `example.org`.
    pub fn trust_domain_name(&self) -> &str {
        &self.full[SCHEME.len()..SCHEME.len() + self.td_len]
    }

    /// The trust domain as a typed value.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_owned())
    }

    /// Whether this ID belongs to `td`.
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_name() == td.as_str()
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.full[SCHEME.len() + self.td_len..]
    }

    /// Whether the path lies under `/baton/`, which only Baton's own identities use.
    ///
    /// ```
    /// use baton_proto::SpiffeId;
    /// let signer: SpiffeId = "spiffe://example.org/baton/token-signer".parse().unwrap();
    /// assert!(signer.is_reserved());
    /// let fun: SpiffeId = "spiffe://example.org/batonfn".parse().unwrap();
    /// assert!(!fun.is_reserved());
    /// ```
    pub fn is_reserved(&self) -> bool {
        let path = self.path();
        path == RESERVED_PATH
            || path
                .strip_prefix(RESERVED_PATH)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// Validates `s` and returns the byte length of its trust domain.
fn check_id(s: &str) -> Result<usize, SpiffeIdError> {
    if s.is_empty() {
        return Err(SpiffeIdError::Empty);
    }
    if s.len() > MAX_SPIFFE_ID_BYTES {
        return Err(SpiffeIdError::TooLong { len: s.len() });
    }
    let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
    // Query and fragment are named before character errors: they are the likelier mistake.
    if rest.contains('?') {
        return Err(SpiffeIdError::Query);
    }
    if rest.contains('#') {
        return Err(SpiffeIdError::Fragment);
    }
    let (td, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    check_trust_domain(td)?;
    if path.is_empty() {
        return Err(SpiffeIdError::MissingPath);
    }
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err(SpiffeIdError::EmptySegment),
            "." | ".." => return Err(SpiffeIdError::DotSegment),
            _ => {}
        }
        if let Some(found) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(SpiffeIdError::PathCharacter { found });
        }
    }
    Ok(td.len())
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = SpiffeIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let td_len = check_id(&s)?;
        Ok(Self { full: s, td_len })
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = SpiffeIdError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.full
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_is_refused_with_its_own_error() {
        let long = format!("spiffe://example.org/{}", "a".repeat(2048));
        let long_td = format!("spiffe://{}/x", "a".repeat(256));
        let cases: &[(&str, SpiffeIdError)] = &[
            ("", SpiffeIdError::Empty),
            (&long, SpiffeIdError::TooLong { len: long.len() }),
            ("https://example.org/fn", SpiffeIdError::WrongScheme),
            ("SPIFFE://example.org/fn", SpiffeIdError::WrongScheme),
            ("spiffe:/example.org/fn", SpiffeIdError::WrongScheme),
            ("spiffe:///fn", SpiffeIdError::MissingTrustDomain),
            (&long_td, SpiffeIdError::TrustDomainTooLong { len: 256 }),
            (
                "spiffe://Example.org/fn",
                SpiffeIdError::TrustDomainUpperCase { found: 'E' },
            ),
            ("spiffe://example.org:443/fn", SpiffeIdError::Port),
            ("spiffe://user@example.org/fn", SpiffeIdError::UserInfo),
            (
                "spiffe://exa%6dple.org/fn",
                SpiffeIdError::TrustDomainCharacter { found: '%' },
            ),
            ("spiffe://example.org/fn?x=1", SpiffeIdError::Query),
            ("spiffe://example.org/fn#frag", SpiffeIdError::Fragment),
            ("spiffe://example.org", SpiffeIdError::MissingPath),
            ("spiffe://example.org/", SpiffeIdError::EmptySegment),
            (
                "spiffe://example.org/fn//orders",
                SpiffeIdError::EmptySegment,
            ),
            ("spiffe://example.org/fn/", SpiffeIdError::EmptySegment),
            ("spiffe://example.org/fn/./x", SpiffeIdError::DotSegment),
            ("spiffe://example.org/fn/..", SpiffeIdError::DotSegment),
            (
                "spiffe://example.org/fn/%2e%2e",
                SpiffeIdError::PathCharacter { found: '%' },
            ),
            (
                "spiffe://example.org/fn/ü",
                SpiffeIdError::PathCharacter { found: 'ü' },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::new(input).as_ref(), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn accepted_ids_expose_their_parts() {
        let id = SpiffeId::new("spiffe://prod.example-1_x.org/ns/a.b/Fn-9_.x").unwrap();
        assert_eq!(id.trust_domain_name(), "prod.example-1_x.org");
        assert_eq!(id.path(), "/ns/a.b/Fn-9_.x");
        assert_eq!(
            id.to_string(),
            "spiffe://prod.example-1_x.org/ns/a.b/Fn-9_.x"
        );
        assert!(!id.is_reserved());
        let max = format!("spiffe://example.org/{}", "a".repeat(2048 - 21));
        assert_eq!(max.len(), MAX_SPIFFE_ID_BYTES);
        assert!(SpiffeId::new(&max).is_ok());
    }

    #[test]
    fn token_signer_id_is_reserved_and_valid() {
        let td = TrustDomain::new("example.org").unwrap();
        let signer = td.token_signer_id();
        assert_eq!(signer.as_str(), "spiffe://example.org/baton/token-signer");
        assert_eq!(SpiffeId::new(signer.as_str()).unwrap(), signer);
        assert!(signer.is_reserved());
        assert!(
            SpiffeId::new("spiffe://example.org/baton")
                .unwrap()
                .is_reserved()
        );
    }

    #[test]
    fn serde_validates_on_the_way_in() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://example.org/fn\"").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"spiffe://example.org/fn\""
        );
        let err = serde_json::from_str::<SpiffeId>("\"spiffe://example.org/../x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\".\" or \"..\""), "{err}");
        assert!(serde_json::from_str::<TrustDomain>("\"Example.org\"").is_err());
    }
}
