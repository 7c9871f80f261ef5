//! Authorization server metadata: `GET /.well-known/oauth-authorization-server` (RFC 8414),
//! and the issuer's endpoint paths (SPEC §5).

use serde::{Deserialize, Serialize};

use crate::claims::{GRANT_TYPE_CLIENT_CREDENTIALS, JwsAlgorithm};

/// Path of the JWKS (RFC 7517).
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// Path of this metadata document (RFC 8414 §3).
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
/// Path of the token endpoint.
pub const TOKEN_PATH: &str = "/v1/token";
/// Path of the SVID (certificate enrollment) endpoint.
pub const SVID_PATH: &str = "/v1/svid";
/// Path of the introspection endpoint (RFC 7662).
pub const INTROSPECT_PATH: &str = "/v1/introspect";
/// Path of the revocation endpoint (RFC 7009).
pub const REVOKE_PATH: &str = "/v1/revoke";

/// How a caller authenticates to an endpoint (SPEC §3). The set is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// `tls_client_auth`: mTLS with the workload certificate (RFC 8705 §2.1).
    TlsClientAuth,
    /// `private_key_jwt`: signed client assertion (RFC 7523 §2.2, OIDC Core §9).
    PrivateKeyJwt,
}

/// RFC 8414 §2 metadata of a Baton issuer.
///
/// ```
/// use baton_proto::claims::JwsAlgorithm;
/// use baton_proto::metadata::AuthorizationServerMetadata;
/// let m = AuthorizationServerMetadata::for_issuer("https://baton.example.org/", &[JwsAlgorithm::Es256]);
/// assert_eq!(m.issuer, "https://baton.example.org/");
/// assert_eq!(m.token_endpoint, "https://baton.example.org/v1/token");
/// assert_eq!(m.jwks_uri, "https://baton.example.org/.well-known/jwks.json");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationServerMetadata {
    /// Issuer identifier; equals the `iss` of every token.
    pub issuer: String,
    /// URL of `POST /v1/token`.
    pub token_endpoint: String,
    /// URL of the JWKS.
    pub jwks_uri: String,
    /// URL of `POST /v1/introspect` (RFC 8414 §2 via RFC 7662).
    pub introspection_endpoint: String,
    /// URL of `POST /v1/revoke` (RFC 8414 §2 via RFC 7009).
    pub revocation_endpoint: String,
    /// URL of `POST /v1/svid`. Baton extension (RFC 8414 §2 allows additional members).
    pub svid_endpoint: String,
    /// Grant types: `client_credentials` only.
    pub grant_types_supported: Vec<String>,
    /// Required by RFC 8414 §2; empty, as Baton has no authorization endpoint.
    pub response_types_supported: Vec<String>,
    /// Scopes the policy can grant, when the issuer chooses to advertise them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes_supported: Option<Vec<String>>,
    /// Authentication methods of the token endpoint.
    pub token_endpoint_auth_methods_supported: Vec<ClientAuthMethod>,
    /// Algorithms accepted on client assertions at the token endpoint.
    pub token_endpoint_auth_signing_alg_values_supported: Vec<JwsAlgorithm>,
    /// Authentication methods of the introspection endpoint.
    pub introspection_endpoint_auth_methods_supported: Vec<ClientAuthMethod>,
    /// Algorithms accepted on client assertions at the introspection endpoint
    /// (RFC 8414 §2: required when `private_key_jwt` is listed).
    pub introspection_endpoint_auth_signing_alg_values_supported: Vec<JwsAlgorithm>,
    /// Authentication methods of the revocation endpoint.
    pub revocation_endpoint_auth_methods_supported: Vec<ClientAuthMethod>,
    /// Algorithms accepted on client assertions at the revocation endpoint
    /// (RFC 8414 §2: required when `private_key_jwt` is listed).
    pub revocation_endpoint_auth_signing_alg_values_supported: Vec<JwsAlgorithm>,
    /// Tokens minted over mTLS are bound to the certificate (RFC 8705 §3.3).
    pub tls_client_certificate_bound_access_tokens: bool,
}

impl AuthorizationServerMetadata {
    /// The metadata of an issuer reachable at `issuer_url`, accepting assertions
    /// signed with `algs`. Endpoint URLs are `issuer_url` (without a trailing `/`)
    /// followed by the SPEC §5 paths; `issuer` keeps `issuer_url` exactly, since it
    /// must match the tokens' `iss` byte for byte (RFC 8414 §3.3).
    pub fn for_issuer(issuer_url: &str, algs: &[JwsAlgorithm]) -> Self {
        let base = issuer_url.trim_end_matches('/');
        let methods = vec![
            ClientAuthMethod::TlsClientAuth,
            ClientAuthMethod::PrivateKeyJwt,
        ];
        Self {
            issuer: issuer_url.to_owned(),
            token_endpoint: format!("{base}{TOKEN_PATH}"),
            jwks_uri: format!("{base}{JWKS_PATH}"),
            introspection_endpoint: format!("{base}{INTROSPECT_PATH}"),
            revocation_endpoint: format!("{base}{REVOKE_PATH}"),
            svid_endpoint: format!("{base}{SVID_PATH}"),
            grant_types_supported: vec![GRANT_TYPE_CLIENT_CREDENTIALS.to_owned()],
            response_types_supported: Vec::new(),
            scopes_supported: None,
            token_endpoint_auth_methods_supported: methods.clone(),
            token_endpoint_auth_signing_alg_values_supported: algs.to_vec(),
            introspection_endpoint_auth_methods_supported: methods.clone(),
            introspection_endpoint_auth_signing_alg_values_supported: algs.to_vec(),
            revocation_endpoint_auth_methods_supported: methods,
            revocation_endpoint_auth_signing_alg_values_supported: algs.to_vec(),
            tls_client_certificate_bound_access_tokens: true,
        }
    }
}
