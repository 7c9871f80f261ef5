//! HTTP for the workers: rustls on ring, one kept-alive HTTP/1.1 connection per worker
//! (hyper's connection API: no pool, so no spare connection is ever opened), and a count
//! of the connections opened, so the report shows that none was re-established per
//! request. Preparation (discovery, minting) uses an ordinary pooled reqwest client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::run::Outcome;

const FORM: &str = "application/x-www-form-urlencoded";

/// A client certificate chain and its PKCS#8 key, both PEM.
pub(crate) struct Identity<'a> {
    pub(crate) chain_pem: &'a str,
    pub(crate) key_pem: &'a str,
}

/// Connections opened by every [`Conn`] sharing one counter.
#[derive(Debug, Default, Clone)]
pub(crate) struct Connections(Arc<AtomicU64>);

impl Connections {
    pub(crate) fn opened(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// DER blocks of a PEM document, in order.
pub(crate) fn pem_blocks(pem: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    baton_tests::try_pem_blocks(pem).context("bad base64 in PEM")
}

/// A rustls configuration (ring) trusting `bundle_pem` (or nothing, for plain-HTTP
/// peers) and presenting `identity` for mTLS when given.
pub(crate) fn tls_config(
    bundle_pem: Option<&str>,
    identity: Option<&Identity<'_>>,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = bundle_pem {
        for der in pem_blocks(pem)? {
            roots
                .add(CertificateDer::from(der))
                .context("trust bundle")?;
        }
        if roots.is_empty() {
            bail!("the trust bundle holds no certificate");
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    Ok(match identity {
        Some(id) => {
            let chain: Vec<_> = pem_blocks(id.chain_pem)?
                .into_iter()
                .map(CertificateDer::from)
                .collect();
            if chain.is_empty() {
                bail!("the certificate file holds no certificate");
            }
            let key = pem_blocks(id.key_pem)?
                .pop()
                .context("the key file holds no PEM block")?;
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
                .context("client certificate and key")?
        }
        None => builder.with_no_client_auth(),
    })
}

/// A pooled client for the preparation around a run (discovery, minting): not in the
/// measured path.
pub(crate) fn client(tls: &rustls::ClientConfig) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls.clone())
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("cannot build an HTTP client")
}

/// Longest wait for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One URL every request of a run goes to, and how to reach it.
pub(crate) struct Endpoint {
    /// `host:port`, to connect to.
    addr: String,
    /// The `Host` header.
    authority: String,
    path: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl Endpoint {
    /// `url` (http or https); an https URL needs `tls`.
    pub(crate) fn new(url: &str, tls: Option<&rustls::ClientConfig>) -> anyhow::Result<Arc<Self>> {
        let url = reqwest::Url::parse(url).with_context(|| format!("{url} is not a URL"))?;
        let host = url.host_str().context("the URL has no host")?;
        let port = url.port_or_known_default().context("the URL has no port")?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let tls = match (url.scheme(), tls) {
            ("https", Some(config)) => {
                // An IPv6 literal is bracketed in URLs, bare in a server name.
                let name = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                let name =
                    ServerName::try_from(name).context("the URL's host is no TLS server name")?;
                Some((
                    tokio_rustls::TlsConnector::from(Arc::new(config.clone())),
                    name,
                ))
            }
            ("https", None) => bail!("an https URL needs a TLS configuration"),
            ("http", _) => None,
            (other, _) => bail!("unsupported URL scheme {other}"),
        };
        let mut path = url.path().to_owned();
        if let Some(query) = url.query() {
            path = format!("{path}?{query}");
        }
        Ok(Arc::new(Self {
            addr: format!("{host}:{port}"),
            authority,
            path,
            tls,
        }))
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A worker's own HTTP/1.1 connection, opened on first use and kept alive; reopened
/// only when the server closed it.
pub(crate) struct Conn {
    endpoint: Arc<Endpoint>,
    sender: Option<Sender>,
    opened: Connections,
}

impl Conn {
    pub(crate) fn new(endpoint: &Arc<Endpoint>, opened: &Connections) -> Self {
        Self {
            endpoint: Arc::clone(endpoint),
            sender: None,
            opened: opened.clone(),
        }
    }

    /// One connection per worker, for `n` workers.
    pub(crate) fn per_worker(
        endpoint: &Arc<Endpoint>,
        opened: &Connections,
        n: usize,
    ) -> Arc<[Mutex<Conn>]> {
        (0..n)
            .map(|_| Mutex::new(Conn::new(endpoint, opened)))
            .collect()
    }

    async fn open(&mut self) -> Result<Sender, String> {
        self.opened.0.fetch_add(1, Ordering::Relaxed);
        let tcp = TcpStream::connect(&self.endpoint.addr)
            .await
            .map_err(|_| "connect".to_owned())?;
        let _ = tcp.set_nodelay(true);
        match &self.endpoint.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|_| "tls_handshake".to_owned())?;
                handshake(tls).await
            }
            None => handshake(tcp).await,
        }
    }

    /// POSTs a form body and reads the whole answer (the latency covers both).
    pub(crate) async fn post_form(&mut self, body: String) -> Result<Answer, String> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(body)).await {
            Ok(answer) => answer,
            Err(_) => {
                // The connection is in an unknown state: start afresh next time.
                self.sender = None;
                Err("timeout".to_owned())
            }
        }
    }

    async fn exchange(&mut self, body: String) -> Result<Answer, String> {
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.open().await?,
        };
        if sender.ready().await.is_err() {
            // Closed by the server while idle (keep-alive timeout, restart): one fresh try.
            sender = self.open().await?;
            sender.ready().await.map_err(|e| hyper_kind(&e))?;
        }
        let request = hyper::Request::post(self.endpoint.path.as_str())
            .header(HOST, self.endpoint.authority.as_str())
            .header(CONTENT_TYPE, FORM)
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| "request".to_owned())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| hyper_kind(&e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|_| "body".to_owned())?
            .to_bytes()
            .to_vec();
        self.sender = Some(sender);
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }
}

/// HTTP/1.1 over `io`; the connection is driven by its own task until it closes.
async fn handshake<S>(io: S) -> Result<Sender, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| hyper_kind(&e))?;
    tokio::spawn(connection);
    Ok(sender)
}

fn hyper_kind(e: &hyper::Error) -> String {
    if e.is_closed() || e.is_incomplete_message() || e.is_canceled() {
        "closed"
    } else if e.is_timeout() {
        "timeout"
    } else {
        "request"
    }
    .to_owned()
}

/// `application/x-www-form-urlencoded` encoding of one value (WHATWG URL §5.2).
pub(crate) fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A form body from name/value pairs.
pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// What a POST came back with: the status and the whole body, or a transport failure
/// already classified as an error kind.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<u64>,
    pub(crate) body: Vec<u8>,
}

/// POSTs a form body with a pooled client (preparation only), reading the whole answer.
pub(crate) async fn post_form(
    client: &reqwest::Client,
    url: &str,
    body: String,
) -> Result<Answer, String> {
    let response = client
        .post(url)
        .header(CONTENT_TYPE, FORM)
        .body(body)
        .send()
        .await
        .map_err(|e| transport_kind(&e))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = response.bytes().await.map_err(|e| transport_kind(&e))?;
    Ok(Answer {
        status,
        retry_after,
        body: body.to_vec(),
    })
}

fn transport_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    }
    .to_owned()
}

/// An error kind for a non-success answer: `http_<status>` plus the RFC 6749 `error`
/// code when the body carries one (only `[a-z_]`, so a hostile peer cannot fill the
/// report).
pub(crate) fn status_kind(answer: &Answer) -> String {
    let code = serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
        .filter(|c| {
            !c.is_empty() && c.len() <= 40 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        });
    match code {
        Some(code) => format!("http_{}_{code}", answer.status),
        None => format!("http_{}", answer.status),
    }
}

/// Outcome of a token request: 200 with the expected number of tokens, or an error.
pub(crate) fn token_outcome(answer: Result<Answer, String>, count: u8) -> Outcome {
    let answer = match answer {
        Ok(a) => a,
        Err(kind) => return Outcome::Err(kind),
    };
    if answer.status != 200 {
        return Outcome::Err(status_kind(&answer));
    }
    match tokens_in(&answer.body) {
        Some(n) if n == usize::from(count) => Outcome::Ok(u32::from(count)),
        Some(_) => Outcome::Err("wrong_token_count".to_owned()),
        None => Outcome::Err("malformed_token_response".to_owned()),
    }
}

/// The tokens of a `/v1/token` (or any RFC 6749 §5.1) answer.
pub(crate) fn tokens(body: &[u8]) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    match v.get("access_tokens").and_then(|t| t.as_array()) {
        Some(all) => all.iter().map(|t| t.as_str().map(str::to_owned)).collect(),
        None => Some(vec![v.get("access_token")?.as_str()?.to_owned()]),
    }
}

fn tokens_in(body: &[u8]) -> Option<usize> {
    tokens(body).map(|t| t.len()).filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_escapes_everything_but_unreserved() {
        assert_eq!(
            form(&[("audience", "spiffe://example.org/fn/a b"), ("count", "64")]),
            "audience=spiffe%3A%2F%2Fexample.org%2Ffn%2Fa+b&count=64"
        );
    }

    #[test]
    fn status_kinds_keep_only_plain_error_codes() {
        let answer = |body: &str| Answer {
            status: 400,
            retry_after: None,
            body: body.as_bytes().to_vec(),
        };
        assert_eq!(
            status_kind(&answer(r#"{"error":"invalid_target"}"#)),
            "http_400_invalid_target"
        );
        assert_eq!(status_kind(&answer(r#"{"error":"<script>"}"#)), "http_400");
        assert_eq!(status_kind(&answer("not json")), "http_400");
    }
}
