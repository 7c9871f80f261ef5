//! The admin socket (SPEC §9): a Unix socket `<data-dir>/admin.sock`, mode 0600 in a
//! 0700 directory, through which `baton identities revoke` and `baton policy reload`
//! (and the `keys` and `join-tokens` commands) reach the running issuer. The file
//! system is the authentication: whoever can open the socket is the issuer's own user
//! (or root). It is also the only way to the visibility views (`baton graph`,
//! `identities list`, `policy report`, `report --html`): they reveal the system's
//! shape, so no HTTP listener serves them.
//!
//! Protocol: the client sends one JSON object on one line (at most
//! [`MAX_LINE_BYTES`]), the issuer answers one JSON object on one line (a client reads
//! at most [`MAX_REPLY_BYTES`]: a whole call graph) and closes the connection.
//!
//! ```text
//! → {"command":"identities.revoke","id":"spiffe://example.org/fn/orders"}
//! ← {"ok":true,"id":"spiffe://example.org/fn/orders","already_revoked":false,"denied_identities":1}
//! → {"command":"policy.reload"}
//! ← {"ok":false,"reloaded":false,"error":"policy reload refused; the previous policy stays in force: …"}
//! ```

use std::io::{self, BufRead as _, Write as _};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baton_proto::{SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::deny::DenyStore;
use crate::join_token::{JoinTokens, Selector};
use crate::lifecycle::KeyLifecycle;
use crate::metrics as m;
use crate::policy::{PolicyError, PolicyStore, PolicySummary};
use crate::visibility::{self, Visibility};

/// The socket's file name in the data directory.
pub const SOCKET_FILE: &str = "admin.sock";
/// Longest request line, newline included.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Longest reply line a client reads: a whole call graph at its largest bound fits.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024 * 1024;
/// How long the issuer waits for a request line, and for its reply to be taken.
const SERVER_IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most request bytes read and dropped after an oversized request line.
const DRAIN_BYTES: u64 = 1024 * 1024;
/// How long the issuer waits for a client that sent too much to stop sending.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a client waits for the issuer (a policy reload reads and checks a file).
const CLIENT_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One admin command.
///
/// ```
/// use baton_issuer::admin::Request;
/// let line = r#"{"command":"identities.revoke","id":"spiffe://example.org/fn/a"}"#;
/// let request: Request = serde_json::from_str(line).unwrap();
/// assert_eq!(request, Request::RevokeIdentity { id: "spiffe://example.org/fn/a".into() });
/// assert_eq!(serde_json::to_string(&Request::ReloadPolicy {}).unwrap(), r#"{"command":"policy.reload"}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", deny_unknown_fields)]
pub enum Request {
    /// `identities.revoke`: deny the identity (persisted), so it gets no new token and
    /// its outstanding tokens introspect inactive.
    #[serde(rename = "identities.revoke")]
    RevokeIdentity {
        /// The SPIFFE ID to deny.
        id: String,
    },
    /// `policy.reload`: reread the policy file, as SIGHUP does.
    #[serde(rename = "policy.reload")]
    ReloadPolicy {},
    /// `keys.list`: every signing key with its state and times.
    #[serde(rename = "keys.list")]
    ListKeys {},
    /// `keys.rotate`: promote `next`, retire `active`, create a new `next`; answered
    /// once persisted.
    #[serde(rename = "keys.rotate")]
    RotateKeys {},
    /// `keys.revoke`: withdraw a key at once (emergency). The active key needs `force`.
    #[serde(rename = "keys.revoke")]
    RevokeKey {
        /// The key.
        kid: String,
        /// Allow revoking the active key (the next one is promoted at once).
        #[serde(default)]
        force: bool,
    },
    /// `join-tokens.list`: outstanding join tokens by handle, never the tokens.
    #[serde(rename = "join-tokens.list")]
    ListJoinTokens {},
    /// `join-tokens.revoke`: make outstanding join tokens unusable, by handle (prefix)
    /// or every one bound to an identity; exactly one of the two.
    #[serde(rename = "join-tokens.revoke")]
    RevokeJoinTokens {
        /// A handle or its first 8+ hex digits, as `join-tokens.list` shows it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handle: Option<String>,
        /// Every token bound to this SPIFFE ID.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// `graph.list`: the live call graph, every (caller, audience, scope) edge.
    #[serde(rename = "graph.list")]
    Graph {},
    /// `identities.list`: every enrolled or seen identity.
    #[serde(rename = "identities.list")]
    ListIdentities {},
    /// `identities.enrolled`: a certificate was issued to `id` outside the issuer
    /// (`baton enroll --out`), valid until `not_after` (Unix seconds).
    #[serde(rename = "identities.enrolled")]
    Enrolled {
        /// The identity.
        id: String,
        /// End of the certificate's validity.
        not_after: i64,
    },
    /// `policy.report`: the least-privilege report over a window (default: the
    /// configuration's `policy_report_window`).
    #[serde(rename = "policy.report")]
    PolicyReport {
        /// The window, seconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window_seconds: Option<u64>,
        /// Refusals that make a finding.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_denials: Option<u64>,
    },
    /// `report`: graph, inventory, least-privilege report and recent anomalies at once
    /// (what `baton report --html` draws).
    #[serde(rename = "report")]
    Report {
        /// As for `policy.report`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window_seconds: Option<u64>,
    },
}

impl Request {
    /// The command name, for metrics and messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RevokeIdentity { .. } => "identities.revoke",
            Self::ReloadPolicy {} => "policy.reload",
            Self::ListKeys {} => "keys.list",
            Self::RotateKeys {} => "keys.rotate",
            Self::RevokeKey { .. } => "keys.revoke",
            Self::ListJoinTokens {} => "join-tokens.list",
            Self::RevokeJoinTokens { .. } => "join-tokens.revoke",
            Self::Graph {} => "graph.list",
            Self::ListIdentities {} => "identities.list",
            Self::Enrolled { .. } => "identities.enrolled",
            Self::PolicyReport { .. } => "policy.report",
            Self::Report { .. } => "report",
        }
    }
}

/// One reply: a JSON object with `ok` and, on failure, `error`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply(Map<String, Value>);

impl Reply {
    /// A success carrying the members of `fields` (a JSON object) beside `"ok": true`.
    pub fn ok(fields: Value) -> Self {
        Self::with(true, fields)
    }

    /// A failure with a one-line message.
    pub fn error(message: impl Into<String>) -> Self {
        Self::with(false, json!({ "error": message.into() }))
    }

    fn with(ok: bool, fields: Value) -> Self {
        let mut map = Map::new();
        map.insert("ok".into(), Value::Bool(ok));
        if let Value::Object(fields) = fields {
            map.extend(fields);
        }
        Self(map)
    }

    /// Whether the command succeeded.
    pub fn is_ok(&self) -> bool {
        self.0.get("ok") == Some(&Value::Bool(true))
    }

    /// The failure message, if the command failed.
    pub fn error_message(&self) -> Option<&str> {
        self.0.get("error").and_then(Value::as_str)
    }

    /// A member of the reply.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// The whole reply as JSON.
    pub fn to_value(&self) -> Value {
        Value::Object(self.0.clone())
    }

    fn from_line(line: &[u8]) -> Option<Self> {
        match serde_json::from_slice::<Value>(line).ok()? {
            Value::Object(map) if matches!(map.get("ok"), Some(Value::Bool(_))) => Some(Self(map)),
            _ => None,
        }
    }

    fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(&self.0).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        line.push(b'\n');
        line
    }
}

/// Reloads the policy and records the outcome in metrics: what SIGHUP and
/// `policy.reload` share. Blocking I/O: call it off the async runtime.
pub fn reload_policy(policy: &PolicyStore) -> Result<PolicySummary, PolicyError> {
    match policy.reload() {
        Ok(summary) => {
            metrics::counter!(m::POLICY_RELOADS, "result" => "ok").increment(1);
            metrics::gauge!(m::POLICY_RULES).set(summary.rules as f64);
            Ok(summary)
        }
        Err(e) => {
            metrics::counter!(m::POLICY_RELOADS, "result" => "refused").increment(1);
            Err(e)
        }
    }
}

/// What the admin commands act on.
#[derive(Debug)]
pub struct AdminOps {
    deny: Arc<DenyStore>,
    policy: Arc<PolicyStore>,
    trust_domain: TrustDomain,
    keys: Option<Arc<KeyLifecycle>>,
    join_tokens: Option<JoinTokens>,
    visibility: Option<VisibilityOps>,
}

/// What the visibility commands read.
#[derive(Debug)]
struct VisibilityOps {
    records: Arc<Visibility>,
    /// `embedded` or the store URL without password.
    store: String,
    window: Duration,
    min_denials: u64,
}

impl AdminOps {
    /// Commands over this issuer's deny list and policy, for workloads of `trust_domain`.
    pub fn new(deny: Arc<DenyStore>, policy: Arc<PolicyStore>, trust_domain: TrustDomain) -> Self {
        Self {
            deny,
            policy,
            trust_domain,
            keys: None,
            join_tokens: None,
            visibility: None,
        }
    }

    /// Also serves the visibility commands (`graph.list`, `identities.list`,
    /// `identities.enrolled`, `policy.report`, `report`) over these records; `store`
    /// names where they are kept, `window` and `min_denials` are the report's defaults.
    pub fn with_visibility(
        mut self,
        records: Arc<Visibility>,
        store: String,
        window: Duration,
        min_denials: u64,
    ) -> Self {
        self.visibility = Some(VisibilityOps {
            records,
            store,
            window,
            min_denials,
        });
        self
    }

    /// Also serves the `join-tokens.*` commands over this store.
    pub fn with_join_tokens(mut self, join_tokens: JoinTokens) -> Self {
        self.join_tokens = Some(join_tokens);
        self
    }

    /// Also serves the `keys.*` commands over this key lifecycle.
    pub fn with_keys(mut self, keys: Arc<KeyLifecycle>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Runs one command.
    pub async fn handle(&self, request: Request) -> Reply {
        let name = request.name();
        let reply = match request {
            Request::RevokeIdentity { id } => self.revoke_identity(&id).await,
            Request::ReloadPolicy {} => self.reload_policy().await,
            Request::ListKeys {} => self.list_keys(),
            Request::RotateKeys {} => self.rotate_keys().await,
            Request::RevokeKey { kid, force } => self.revoke_key(kid, force).await,
            Request::ListJoinTokens {} => self.list_join_tokens().await,
            Request::RevokeJoinTokens { handle, id } => self.revoke_join_tokens(handle, id).await,
            Request::Graph {} => self.visibility_view(View::Graph).await,
            Request::ListIdentities {} => self.visibility_view(View::Identities).await,
            Request::Enrolled { id, not_after } => self.enrolled(&id, not_after),
            Request::PolicyReport {
                window_seconds,
                min_denials,
            } => {
                self.visibility_view(View::Policy {
                    window_seconds,
                    min_denials,
                })
                .await
            }
            Request::Report { window_seconds } => {
                self.visibility_view(View::Report { window_seconds }).await
            }
        };
        let result = if reply.is_ok() { "ok" } else { "error" };
        metrics::counter!(m::ADMIN_COMMANDS, "command" => name, "result" => result).increment(1);
        reply
    }

    async fn revoke_identity(&self, id: &str) -> Reply {
        let id: SpiffeId = match id.parse() {
            Ok(id) => id,
            Err(e) => return Reply::error(format!("not a SPIFFE ID: {e}")),
        };
        if !id.is_member_of(&self.trust_domain) {
            return Reply::error(format!(
                "{id} is not in this issuer's trust domain {}; nothing to revoke",
                self.trust_domain
            ));
        }
        if id.is_reserved() {
            return Reply::error(format!(
                "{id} is reserved for Baton itself and is never a workload; to withdraw a signing key use `baton keys revoke`"
            ));
        }
        let deny = Arc::clone(&self.deny);
        let denied = id.clone();
        match tokio::task::spawn_blocking(move || deny.deny(&denied)).await {
            Ok(Ok(newly)) => {
                if newly {
                    metrics::counter!(m::IDENTITIES_REVOKED).increment(1);
                }
                let count = self.deny.list().len();
                metrics::gauge!(m::DENIED_IDENTITIES).set(count as f64);
                crate::audit::identity_revoked(&id, newly);
                Reply::ok(json!({
                    "id": id,
                    "already_revoked": !newly,
                    "denied_identities": count,
                }))
            }
            Ok(Err(e)) => Reply::error(one_line(&e)),
            Err(_) => Reply::error("internal error while revoking; see the issuer's log"),
        }
    }

    fn lifecycle(&self) -> Result<Arc<KeyLifecycle>, Reply> {
        self.keys
            .clone()
            .ok_or_else(|| Reply::error("this issuer does not manage signing keys"))
    }

    fn list_keys(&self) -> Reply {
        let keys = match self.lifecycle() {
            Ok(keys) => keys,
            Err(reply) => return reply,
        };
        let unix = |t: Option<time::OffsetDateTime>| t.map(time::OffsetDateTime::unix_timestamp);
        let keys: Vec<Value> = keys
            .list()
            .into_iter()
            .map(|k| {
                json!({
                    "kid": k.kid,
                    "state": k.state,
                    "alg": k.alg,
                    "created_at": k.created_at.unix_timestamp(),
                    "activated_at": unix(k.activated_at),
                    "retires_at": unix(k.retires_at),
                })
            })
            .collect();
        Reply::ok(json!({ "keys": keys }))
    }

    async fn rotate_keys(&self) -> Reply {
        let keys = match self.lifecycle() {
            Ok(keys) => keys,
            Err(reply) => return reply,
        };
        let task = Arc::clone(&keys);
        match tokio::task::spawn_blocking(move || task.rotate(time::OffsetDateTime::now_utc()))
            .await
        {
            Ok(Ok(())) => {
                metrics::counter!(m::KEY_ROTATIONS, "trigger" => "command").increment(1);
                self.list_keys()
            }
            Ok(Err(e)) => Reply::error(format!(
                "rotation refused; the keys in force stay: {}",
                one_line(&e)
            )),
            Err(_) => Reply::error("internal error while rotating; see the issuer's log"),
        }
    }

    async fn revoke_key(&self, kid: String, force: bool) -> Reply {
        let keys = match self.lifecycle() {
            Ok(keys) => keys,
            Err(reply) => return reply,
        };
        let task = Arc::clone(&keys);
        match tokio::task::spawn_blocking(move || {
            task.revoke(&kid, force, time::OffsetDateTime::now_utc())
        })
        .await
        {
            Ok(Ok(())) => self.list_keys(),
            Ok(Err(e)) => Reply::error(one_line(&e)),
            Err(_) => Reply::error("internal error while revoking; see the issuer's log"),
        }
    }

    fn join_token_store(&self) -> Result<JoinTokens, Reply> {
        self.join_tokens
            .clone()
            .ok_or_else(|| Reply::error("this issuer does not manage join tokens"))
    }

    async fn list_join_tokens(&self) -> Reply {
        let store = match self.join_token_store() {
            Ok(store) => store,
            Err(reply) => return reply,
        };
        match tokio::task::spawn_blocking(move || store.list(time::OffsetDateTime::now_utc())).await
        {
            Ok(Ok(tokens)) => Reply::ok(json!({ "join_tokens": tokens })),
            Ok(Err(e)) => Reply::error(one_line(&e)),
            Err(_) => Reply::error("internal error while listing; see the issuer's log"),
        }
    }

    async fn revoke_join_tokens(&self, handle: Option<String>, id: Option<String>) -> Reply {
        let store = match self.join_token_store() {
            Ok(store) => store,
            Err(reply) => return reply,
        };
        let selector = match (handle, id) {
            (Some(handle), None) => Selector::Handle(handle),
            (None, Some(id)) => match id.parse::<SpiffeId>() {
                Ok(id) => Selector::Id(id),
                Err(e) => return Reply::error(format!("not a SPIFFE ID: {e}")),
            },
            _ => return Reply::error("give exactly one of a handle or an identity"),
        };
        match tokio::task::spawn_blocking(move || {
            store.revoke(&selector, time::OffsetDateTime::now_utc())
        })
        .await
        {
            Ok(Ok(revoked)) => {
                metrics::counter!(m::JOIN_TOKENS_REVOKED).increment(revoked.len() as u64);
                for token in &revoked {
                    crate::audit::join_token_revoked(&token.handle, &token.id);
                }
                Reply::ok(json!({ "revoked": revoked }))
            }
            Ok(Err(e)) => Reply::error(one_line(&e)),
            Err(_) => Reply::error("internal error while revoking; see the issuer's log"),
        }
    }

    fn enrolled(&self, id: &str, not_after: i64) -> Reply {
        let Some(vis) = &self.visibility else {
            return Reply::error("this issuer does not record visibility");
        };
        match id.parse::<SpiffeId>() {
            Ok(id) if id.is_member_of(&self.trust_domain) && !id.is_reserved() => {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                vis.records.enrolled(&id, not_after, now);
                Reply::ok(json!({ "id": id }))
            }
            Ok(id) => Reply::error(format!(
                "{id} is not a workload of this issuer's trust domain {}",
                self.trust_domain
            )),
            Err(e) => Reply::error(format!("not a SPIFFE ID: {e}")),
        }
    }

    /// Reads the records (a store read in distributed mode: off the runtime) and
    /// answers one of the views.
    async fn visibility_view(&self, view: View) -> Reply {
        let Some(vis) = &self.visibility else {
            return Reply::error("this issuer does not record visibility");
        };
        let records = Arc::clone(&vis.records);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let graph = match tokio::task::spawn_blocking(move || records.snapshot(now)).await {
            Ok(Ok(graph)) => graph,
            Ok(Err(e)) => return Reply::error(one_line(&e)),
            Err(_) => return Reply::error("internal error while reading; see the issuer's log"),
        };
        let graph_view =
            || visibility::inventory::graph_view(&graph, &vis.store, vis.records.max_edges(), now);
        let policy_report = |window_seconds: Option<u64>, min_denials: Option<u64>| {
            let window = window_seconds.map_or(vis.window, Duration::from_secs);
            let edges = graph_view().edges;
            visibility::least_privilege::analyze(
                &self.policy.current(),
                self.policy.source().map(|p| p.display().to_string()),
                &edges,
                now,
                window,
                min_denials.unwrap_or(vis.min_denials).max(1),
            )
        };
        match view {
            View::Graph => Reply::ok(json!({ "graph": graph_view() })),
            View::Identities => match self.identities(&graph).await {
                Ok(ids) => Reply::ok(json!({ "identities": ids })),
                Err(reply) => reply,
            },
            View::Policy {
                window_seconds,
                min_denials,
            } => Reply::ok(json!({ "report": policy_report(window_seconds, min_denials) })),
            View::Report { window_seconds } => {
                let identities = match self.identities(&graph).await {
                    Ok(ids) => ids,
                    Err(reply) => return reply,
                };
                let report = visibility::model::Report {
                    trust_domain: self.trust_domain.to_string(),
                    graph: graph_view(),
                    identities,
                    policy: policy_report(window_seconds, None),
                    anomalies: vis.records.recent_anomalies(),
                };
                Reply::ok(json!({ "report": report }))
            }
        }
    }

    async fn identities(
        &self,
        graph: &visibility::graph::Graph,
    ) -> Result<Vec<visibility::model::IdentityView>, Reply> {
        let tokens = match &self.join_tokens {
            Some(store) => {
                let store = store.clone();
                match tokio::task::spawn_blocking(move || {
                    store.list(time::OffsetDateTime::now_utc())
                })
                .await
                {
                    Ok(Ok(tokens)) => tokens,
                    Ok(Err(e)) => return Err(Reply::error(one_line(&e))),
                    Err(_) => {
                        return Err(Reply::error(
                            "internal error while listing; see the issuer's log",
                        ));
                    }
                }
            }
            None => Vec::new(),
        };
        let denied = self.deny.list().snapshot();
        Ok(visibility::inventory::identities(graph, &denied, &tokens))
    }

    async fn reload_policy(&self) -> Reply {
        let policy = Arc::clone(&self.policy);
        match tokio::task::spawn_blocking(move || reload_policy(&policy)).await {
            Ok(Ok(summary)) => Reply::ok(json!({
                "reloaded": true,
                "file": self.policy.source(),
                "rules": summary.rules,
                "exact_callers": summary.exact_callers,
                "prefix_callers": summary.prefix_callers,
            })),
            Ok(Err(e)) => Reply::with(
                false,
                json!({
                    "reloaded": false,
                    "error": format!(
                        "policy reload refused; the previous policy stays in force: {}",
                        one_line(&e)
                    ),
                    "rules_in_force": self.policy.current().summary().rules,
                }),
            ),
            Err(_) => Reply::error("internal error while reloading; see the issuer's log"),
        }
    }
}

/// Which visibility view a command asks for.
enum View {
    Graph,
    Identities,
    Policy {
        window_seconds: Option<u64>,
        min_denials: Option<u64>,
    },
    Report {
        window_seconds: Option<u64>,
    },
}

/// An error and its sources on one line, `a: b: c`.
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Why the admin socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Another process answers on the socket: an issuer already runs on this data dir.
    #[error(
        "another issuer is already running for this data directory (it answers on {path}); stop it first"
    )]
    AlreadyRunning {
        /// The socket.
        path: PathBuf,
    },
    /// Something other than a socket sits where the socket goes; it is left alone.
    #[error("{path} exists and is not a socket; move it aside")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Creating the socket failed.
    #[error("cannot create the admin socket {path}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// The issuer's end of the admin socket; the socket file is removed when it is dropped.
#[derive(Debug)]
pub struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl AdminSocket {
    /// Creates the socket at `path` with mode 0600. A socket file left by an issuer
    /// that died (nobody answers on it) is replaced; a live one means another issuer
    /// runs on this data directory, and that is refused. Must run inside a Tokio
    /// runtime.
    pub fn bind(path: PathBuf) -> Result<Self, AdminError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| AdminError::Io { path, source }
        };
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => {
                match std::os::unix::net::UnixStream::connect(&path) {
                    Ok(_) => return Err(AdminError::AlreadyRunning { path }),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        std::fs::remove_file(&path).map_err(io_err(&path))?;
                        tracing::info!(path = %path.display(), "replaced a stale admin socket left by an earlier issuer");
                    }
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
            Ok(_) => return Err(AdminError::NotASocket { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        let listener = std::os::unix::net::UnixListener::bind(&path).map_err(io_err(&path))?;
        // Bind, then chmod: between the two the socket is guarded by the data
        // directory's own 0700.
        let setup = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| listener.set_nonblocking(true))
            .and_then(|()| UnixListener::from_std(listener));
        match setup {
            Ok(listener) => Ok(Self { listener, path }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(io_err(&path)(e))
            }
        }
    }

    /// The socket file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers connections until `stop` turns true (or its sender is dropped), then
    /// removes the socket file.
    pub async fn serve(self, ops: Arc<AdminOps>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(connection(stream, Arc::clone(&ops)));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        // Only our own socket: a newer issuer may have replaced the file since, but then
        // this one could not have started (bind refuses a live socket).
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn connection(stream: UnixStream, ops: Arc<AdminOps>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_LINE_BYTES as u64 + 1));
    let mut line = Vec::new();
    let reply = match tokio::time::timeout(SERVER_IO_TIMEOUT, reader.read_until(b'\n', &mut line))
        .await
    {
        Err(_) => Reply::error("timed out waiting for the request line"),
        Ok(Err(e)) => Reply::error(format!("cannot read the request: {e}")),
        Ok(Ok(_)) if line.len() > MAX_LINE_BYTES => Reply::error(format!(
            "request line is longer than {MAX_LINE_BYTES} bytes"
        )),
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(line.trim_ascii()) {
            Ok(request) => ops.handle(request).await,
            Err(e) => Reply::error(format!(
                "malformed request ({e}); send one JSON object on one line, e.g. {{\"command\":\"policy.reload\"}}"
            )),
        },
    };
    let _ = tokio::time::timeout(SERVER_IO_TIMEOUT, async {
        write.write_all(&reply.to_line()).await?;
        write.shutdown().await
    })
    .await;
    // A Unix socket closed with unread input resets its peer, which can destroy the
    // reply before the client reads it (an oversized request): take in, boundedly,
    // what the client still sends.
    let mut rest = reader.into_inner().into_inner().take(DRAIN_BYTES);
    let _ = tokio::time::timeout(
        DRAIN_TIMEOUT,
        tokio::io::copy(&mut rest, &mut tokio::io::sink()),
    )
    .await;
}

/// Why an admin command could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket: no issuer runs on this data directory.
    #[error("no issuer is listening on {socket}")]
    NotRunning {
        /// The socket.
        socket: PathBuf,
        /// Why the connection failed.
        source: io::Error,
    },
    /// The socket exists but this user may not open it.
    #[error("permission denied on {socket}: run the command as the user the issuer runs as")]
    PermissionDenied {
        /// The socket.
        socket: PathBuf,
    },
    /// Talking to the issuer failed midway.
    #[error("cannot talk to the issuer on {socket}")]
    Io {
        /// The socket.
        socket: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The issuer's answer is not one JSON reply line.
    #[error("the issuer's reply on {socket} is not a JSON reply line")]
    BadReply {
        /// The socket.
        socket: PathBuf,
    },
}

/// Sends `request` to the issuer listening on `socket` and returns its reply
/// (blocking; for the command line).
pub fn call(socket: &Path, request: &Request) -> Result<Reply, ClientError> {
    let stream =
        std::os::unix::net::UnixStream::connect(socket).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                socket: socket.to_owned(),
                source,
            },
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                socket: socket.to_owned(),
            },
            _ => ClientError::Io {
                socket: socket.to_owned(),
                source,
            },
        })?;
    let io_err = |source| ClientError::Io {
        socket: socket.to_owned(),
        source,
    };
    stream
        .set_read_timeout(Some(CLIENT_IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(CLIENT_IO_TIMEOUT)))
        .map_err(io_err)?;
    let mut line = serde_json::to_vec(request).map_err(|e| io_err(io::Error::other(e)))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io_err)?;
    let mut reply = Vec::new();
    io::BufReader::new(io::Read::take(&stream, MAX_REPLY_BYTES as u64 + 1))
        .read_until(b'\n', &mut reply)
        .map_err(io_err)?;
    if reply.len() > MAX_REPLY_BYTES {
        return Err(ClientError::BadReply {
            socket: socket.to_owned(),
        });
    }
    Reply::from_line(reply.trim_ascii()).ok_or_else(|| ClientError::BadReply {
        socket: socket.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    const POLICY: &str =
        "[[allow]]\ncaller = \"spiffe://example.org/a\"\naudience = \"spiffe://example.org/b\"\n";

    struct Fixture {
        dir: tempfile::TempDir,
        deny: Arc<DenyStore>,
        ops: Arc<AdminOps>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let policy_path = dir.path().join("policy.toml");
        std::fs::write(&policy_path, POLICY).unwrap();
        let policy = Arc::new(PolicyStore::load(policy_path, Some(td.clone())).unwrap());
        let deny = Arc::new(DenyStore::open(dir.path().join("denylist.json")).unwrap());
        let ops = Arc::new(AdminOps::new(Arc::clone(&deny), policy, td));
        Fixture { dir, deny, ops }
    }

    fn revoke(id: &str) -> Request {
        Request::RevokeIdentity { id: id.into() }
    }

    #[tokio::test]
    async fn identity_revocation_is_persisted_and_applied() {
        let f = fixture();
        let reply = f.ops.handle(revoke("spiffe://example.org/fn/orders")).await;
        assert!(reply.is_ok(), "{reply:?}");
        assert_eq!(reply.get("already_revoked"), Some(&json!(false)));
        let id: SpiffeId = "spiffe://example.org/fn/orders".parse().unwrap();
        assert!(f.deny.list().contains(&id));
        assert!(f.dir.path().join("denylist.json").is_file());
        let again = f.ops.handle(revoke("spiffe://example.org/fn/orders")).await;
        assert_eq!(again.get("already_revoked"), Some(&json!(true)));
    }

    #[tokio::test]
    async fn identity_revocation_refuses_what_is_not_a_workload_of_this_trust_domain() {
        let f = fixture();
        for (id, needle) in [
            ("nonsense", "not a SPIFFE ID"),
            (
                "spiffe://other.org/fn/a",
                "not in this issuer's trust domain",
            ),
            ("spiffe://example.org/baton/token-signer", "reserved"),
        ] {
            let reply = f.ops.handle(revoke(id)).await;
            assert!(!reply.is_ok());
            assert!(reply.error_message().unwrap().contains(needle), "{reply:?}");
        }
        assert!(f.deny.list().is_empty());
    }

    #[tokio::test]
    async fn policy_reload_applies_a_valid_policy_and_refuses_an_invalid_one() {
        let f = fixture();
        let path = f.dir.path().join("policy.toml");
        std::fs::write(&path, format!("{POLICY}{POLICY}")).unwrap();
        let reply = f.ops.handle(Request::ReloadPolicy {}).await;
        assert!(reply.is_ok(), "{reply:?}");
        assert_eq!(reply.get("rules"), Some(&json!(2)));

        std::fs::write(&path, "[[allow]]\ncaller = \"nonsense\"\n").unwrap();
        let reply = f.ops.handle(Request::ReloadPolicy {}).await;
        assert!(!reply.is_ok());
        assert_eq!(reply.get("reloaded"), Some(&json!(false)));
        assert_eq!(reply.get("rules_in_force"), Some(&json!(2)));
        assert!(
            reply
                .error_message()
                .unwrap()
                .contains("previous policy stays")
        );
    }

    #[tokio::test]
    async fn join_tokens_are_listed_by_handle_and_revoked_by_handle_or_identity() {
        let f = fixture();
        let store = JoinTokens::new(f.dir.path().join("join-tokens"));
        let ops = AdminOps::new(
            Arc::clone(&f.deny),
            Arc::new(PolicyStore::new(Policy::deny_all(), None, None)),
            TrustDomain::new("example.org").unwrap(),
        )
        .with_join_tokens(store.clone());
        let td = TrustDomain::new("example.org").unwrap();
        let now = time::OffsetDateTime::now_utc();
        let ttl = Duration::from_secs(600);
        let orders: SpiffeId = "spiffe://example.org/fn/orders".parse().unwrap();
        let payments: SpiffeId = "spiffe://example.org/fn/payments".parse().unwrap();
        let a = store.create(&td, &orders, ttl, now).unwrap();
        store.create(&td, &orders, ttl, now).unwrap();
        store.create(&td, &payments, ttl, now).unwrap();

        let reply = ops.handle(Request::ListJoinTokens {}).await;
        let listed = reply
            .get("join_tokens")
            .unwrap()
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(listed.len(), 3, "{reply:?}");
        assert!(!reply.to_value().to_string().contains(a.token.as_str()));
        assert!(listed.iter().any(|t| t["handle"] == json!(a.handle)));

        let by_handle = Request::RevokeJoinTokens {
            handle: Some(a.handle[..10].to_owned()),
            id: None,
        };
        let reply = ops.handle(by_handle).await;
        assert_eq!(
            reply.get("revoked").unwrap().as_array().unwrap().len(),
            1,
            "{reply:?}"
        );
        let by_id = Request::RevokeJoinTokens {
            handle: None,
            id: Some(orders.to_string()),
        };
        let reply = ops.handle(by_id).await;
        let revoked = reply.get("revoked").unwrap().as_array().unwrap();
        assert_eq!(revoked.len(), 1, "{reply:?}");
        assert_eq!(revoked[0]["id"], json!(orders));
        let left = store.list(now).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, payments);

        for bad in [
            Request::RevokeJoinTokens {
                handle: None,
                id: None,
            },
            Request::RevokeJoinTokens {
                handle: Some("zz".into()),
                id: None,
            },
            Request::RevokeJoinTokens {
                handle: None,
                id: Some("nonsense".into()),
            },
        ] {
            assert!(!ops.handle(bad).await.is_ok());
        }
        assert_eq!(
            store.list(now).unwrap().len(),
            1,
            "refused commands change nothing"
        );
    }

    #[test]
    fn policy_reload_without_a_policy_file_says_so() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let policy = Arc::new(PolicyStore::new(Policy::deny_all(), None, Some(td.clone())));
        let deny = Arc::new(DenyStore::open(dir.path().join("d.json")).unwrap());
        let ops = AdminOps::new(deny, policy, td);
        let reply = rt.block_on(ops.handle(Request::ReloadPolicy {}));
        assert!(
            reply.error_message().unwrap().contains("no policy file"),
            "{reply:?}"
        );
    }

    /// Runs the socket server on a separate runtime thread and returns its path.
    fn serve(
        f: &Fixture,
    ) -> (
        PathBuf,
        tokio::sync::watch::Sender<bool>,
        std::thread::JoinHandle<()>,
    ) {
        let path = f.dir.path().join(SOCKET_FILE);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let ops = Arc::clone(&f.ops);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let socket_path = path.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let socket = AdminSocket::bind(socket_path).unwrap();
                ready_tx.send(()).unwrap();
                socket.serve(ops, rx).await;
            });
        });
        ready_rx.recv().unwrap();
        (path, tx, handle)
    }

    #[test]
    fn socket_round_trip_is_owner_only_and_removed_on_shutdown() {
        let f = fixture();
        let (path, stop, handle) = serve(&f);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);

        let reply = call(&path, &revoke("spiffe://example.org/fn/x")).unwrap();
        assert!(reply.is_ok(), "{reply:?}");
        let reply = call(&path, &Request::ReloadPolicy {}).unwrap();
        assert!(reply.is_ok(), "{reply:?}");

        stop.send(true).unwrap();
        handle.join().unwrap();
        assert!(!path.exists(), "socket removed on shutdown");
        match call(&path, &Request::ReloadPolicy {}) {
            Err(ClientError::NotRunning { .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_and_oversized_requests_get_an_error_reply() {
        use std::io::Read as _;
        let f = fixture();
        let (path, stop, handle) = serve(&f);
        let exchange = |bytes: &[u8]| {
            let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            // The server may answer and close before the whole request is written.
            let _ = s.write_all(bytes);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            Reply::from_line(out.trim().as_bytes()).unwrap()
        };
        for (bytes, needle) in [
            (b"not json\n".to_vec(), "malformed request"),
            (
                b"{\"command\":\"keys.burn\"}\n".to_vec(),
                "malformed request",
            ),
            (
                b"{\"command\":\"policy.reload\",\"extra\":1}\n".to_vec(),
                "malformed request",
            ),
            (vec![b'x'; MAX_LINE_BYTES + 10], "longer than"),
        ] {
            let reply = exchange(&bytes);
            assert!(!reply.is_ok());
            assert!(reply.error_message().unwrap().contains(needle), "{reply:?}");
        }
        stop.send(true).unwrap();
        handle.join().unwrap();
    }

    #[test]
    fn stale_socket_is_replaced_and_a_live_one_refused() {
        let f = fixture();
        let path = f.dir.path().join(SOCKET_FILE);
        // A socket file nobody listens on, as a killed issuer leaves behind.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (path, stop, handle) = serve(&f);
        assert!(call(&path, &Request::ReloadPolicy {}).unwrap().is_ok());

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let second = rt.block_on(async { AdminSocket::bind(path.clone()) });
        assert!(
            matches!(second, Err(AdminError::AlreadyRunning { .. })),
            "{second:?}"
        );
        assert!(path.exists(), "the live socket is left alone");
        stop.send(true).unwrap();
        handle.join().unwrap();

        std::fs::write(&path, b"not a socket").unwrap();
        let third = rt.block_on(async { AdminSocket::bind(path.clone()) });
        assert!(
            matches!(third, Err(AdminError::NotASocket { .. })),
            "{third:?}"
        );
        assert!(path.is_file(), "a regular file is never deleted");
    }
}
