//! Automatic renewal of a certificate obtained with a join token (SPEC §8).
//!
//! A background task renews at 45–55 % of the validity the certificate had left when it
//! arrived (jittered, so clients that started together do not renew together), each
//! time with a new key — the issuer refuses a request for the current key — proving
//! itself with the current certificate, over mTLS or with a signed assertion, as the
//! client mints tokens. The new certificate is checked (`svid`) before anything changes;
//! then the parts that depend on the certificate are swapped whole, so a mint in flight
//! finishes with the credentials it started with.
//!
//! A failed attempt is retried with jittered exponential backoff, honouring the issuer's
//! `Retry-After`; the current certificate stays in use meanwhile, and the client keeps
//! trying until it succeeds or is dropped. Every outcome is recorded for
//! [`TokenClient::certificate`](crate::TokenClient::certificate) and reported to the
//! [`on_renewal`](crate::JoinBuilder::on_renewal) callback.
//!
//! The task holds only a `Weak` reference to the client, and the client holds the
//! sending half of a channel the task watches: dropping every clone of the client ends
//! the task at once, even in the middle of a long wait.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_proto::SpiffeId;
use baton_proto::claims::CLIENT_ASSERTION_TYPE;
use baton_proto::requests::SvidRequest;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::oneshot;

use super::error::TokenError;
use super::key::{self, KeyType};
use super::{Credentials, Inner, Transport, csr, svid, unix_now};

/// Renewal happens between these two fractions (parts per million) of the validity a
/// certificate had left when it arrived.
const RENEW_FROM_PPM: u64 = 450_000;
const RENEW_SPAN_PPM: u64 = 100_000;
/// Shortest wait before a renewal: a certificate that arrives (nearly) expired, for
/// instance because of clock skew, must not make the client hammer the issuer.
const MIN_RENEWAL_DELAY: Duration = Duration::from_secs(1);
/// Backoff after the first failed attempt; it doubles with each further failure…
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// …up to this bound.
const MAX_RETRY: Duration = Duration::from_secs(60);
/// The longest `Retry-After` honoured: a larger one is read as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The certificate a [`TokenClient`](crate::TokenClient) attests with, and how its
/// renewal is going; from [`TokenClient::certificate`](crate::TokenClient::certificate).
///
/// ```no_run
/// # fn run(client: baton_sdk::TokenClient) {
/// let status = client.certificate();
/// println!("{} serial {} valid until {}", status.id, status.serial, status.not_after);
/// if let Some(reason) = &status.last_error {
///     eprintln!("certificate renewal failing ({} attempts): {reason}", status.consecutive_failures);
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertificateStatus {
    /// The SPIFFE ID the certificate carries; renewal never changes it.
    pub id: SpiffeId,
    /// The serial number of the certificate in use, lowercase hex.
    pub serial: String,
    /// The `notAfter` of the certificate in use, Unix seconds.
    pub not_after: i64,
    /// Whether the client renews its certificate: built with
    /// [`TokenClient::join`](crate::TokenClient::join). A client built from files
    /// uses its certificate until it expires.
    pub auto_renew: bool,
    /// Certificates obtained by renewal so far (the first one, from the join token,
    /// not counted).
    pub renewals: u64,
    /// Renewal attempts that failed since the last success (or since the start).
    pub consecutive_failures: u32,
    /// Why the last attempt failed, while `consecutive_failures` is not zero: the error
    /// and its sources, one line.
    pub last_error: Option<String>,
    /// When the next renewal attempt is due, Unix seconds; `None` without
    /// `auto_renew`.
    pub next_attempt: Option<i64>,
}

/// What the [`on_renewal`](crate::JoinBuilder::on_renewal) callback is told after each
/// renewal attempt.
///
/// ```
/// use baton_sdk::RenewalEvent;
/// fn log(event: &RenewalEvent<'_>) {
///     match event {
///         RenewalEvent::Renewed(status) => println!("renewed: serial {}", status.serial),
///         RenewalEvent::Failed { error, retry_in, .. } => {
///             eprintln!("renewal failed, retrying in {retry_in:?}: {error}")
///         }
///         _ => {}
///     }
/// }
/// # let _ = log;
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum RenewalEvent<'a> {
    /// A renewed certificate passed every check and is now in use.
    Renewed(&'a CertificateStatus),
    /// An attempt failed; the current certificate stays in use, and the client tries
    /// again after `retry_in`.
    Failed {
        /// Why: for instance [`TokenError::Refused`] with `invalid_client` once the
        /// identity is revoked, or a [`TokenError::Transport`] error.
        error: &'a TokenError,
        /// The wait before the next attempt.
        retry_in: Duration,
        /// The status after this failure.
        status: &'a CertificateStatus,
    },
}

/// The renewal callback, as stored.
pub(crate) type Callback = Box<dyn Fn(&RenewalEvent<'_>) + Send + Sync>;

/// The renewal side of a client built from a join token.
pub(crate) struct Renewal {
    key_type: KeyType,
    /// Roots, URLs and timeout, for the HTTPS client of each new mTLS certificate and
    /// for checking each new certificate.
    transport: Transport,
    state: Mutex<State>,
    /// Dropped with the client: tells the task to stop.
    _stop: oneshot::Sender<()>,
}

#[derive(Debug, Default)]
struct State {
    renewals: u64,
    consecutive_failures: u32,
    last_error: Option<String>,
    next_attempt: i64,
}

impl std::fmt::Debug for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewal")
            .field("key_type", &self.key_type)
            .field("state", &*lock(&self.state))
            .finish_non_exhaustive()
    }
}

impl Renewal {
    /// The renewal state of a client whose certificate `not_after` just arrived, and
    /// the task that will renew it, to be started with [`start`] once the client
    /// exists.
    pub(crate) fn new(key_type: KeyType, transport: Transport, not_after: i64) -> (Self, Task) {
        let (stop_tx, stop_rx) = oneshot::channel();
        let rng = SystemRandom::new();
        let first = renewal_delay(remaining(not_after), random(&rng));
        let renewal = Self {
            key_type,
            transport,
            state: Mutex::new(State {
                next_attempt: unix_after(first),
                ..State::default()
            }),
            _stop: stop_tx,
        };
        let task = Task {
            stop: stop_rx,
            first,
            rng,
        };
        (renewal, task)
    }

    /// Fills the renewal fields of `status`.
    pub(crate) fn describe(&self, status: &mut CertificateStatus) {
        let state = lock(&self.state);
        status.auto_renew = true;
        status.renewals = state.renewals;
        status.consecutive_failures = state.consecutive_failures;
        status.last_error.clone_from(&state.last_error);
        status.next_attempt = Some(state.next_attempt);
    }
}

/// The not-yet-started renewal task of one client.
pub(crate) struct Task {
    stop: oneshot::Receiver<()>,
    first: Duration,
    rng: SystemRandom,
}

/// Starts renewing `client`'s certificate on the current tokio runtime, reporting to
/// `on_renewal`. The task ends when the client is dropped.
pub(crate) fn start(
    client: &Arc<Inner>,
    task: Task,
    on_renewal: Option<Callback>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(Arc::downgrade(client), task, on_renewal))
}

async fn run(client: Weak<Inner>, task: Task, on_renewal: Option<Callback>) {
    let Task {
        mut stop,
        first,
        rng,
    } = task;
    let mut delay = first;
    let mut failures: u32 = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            // The client is gone (the sender was dropped with it).
            _ = &mut stop => return,
        }
        // Strong only for the attempt: the client may be dropped while this task sleeps.
        let Some(inner) = client.upgrade() else {
            return;
        };
        let Some(renewal) = inner.renewal.as_ref() else {
            return;
        };
        let outcome = renew_once(&inner, renewal, &rng).await;
        let mut state = lock(&renewal.state);
        let error = match outcome {
            Ok(credentials) => {
                let not_after = credentials.not_after;
                inner.swap(credentials);
                failures = 0;
                delay = renewal_delay(remaining(not_after), random(&rng));
                state.renewals = state.renewals.saturating_add(1);
                state.consecutive_failures = 0;
                state.last_error = None;
                None
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let not_after = inner.credentials().not_after;
                delay = retry_delay(
                    failures,
                    error.retry_after(),
                    remaining(not_after),
                    random(&rng),
                );
                state.consecutive_failures = failures;
                state.last_error = Some(one_line(&error));
                Some(error)
            }
        };
        state.next_attempt = unix_after(delay);
        drop(state);
        if let Some(callback) = &on_renewal {
            let status = inner.status();
            let event = match &error {
                None => RenewalEvent::Renewed(&status),
                Some(error) => RenewalEvent::Failed {
                    error,
                    retry_in: delay,
                    status: &status,
                },
            };
            // A panicking callback must not end renewal: the client would then fail
            // for good once its certificate expires.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| callback(&event)));
        }
    }
}

/// One renewal: a new key, a request proven with the current certificate, and the
/// checked certificate made into credentials ready to swap in.
async fn renew_once(
    inner: &Inner,
    renewal: &Renewal,
    rng: &SystemRandom,
) -> Result<Credentials, TokenError> {
    let current = inner.credentials();
    let (key, key_der) = key::generate(renewal.key_type, rng)?;
    let csr = csr::request_pem(&key_der, renewal.key_type)?;
    // mTLS: the current HTTPS client presents the current certificate. Assertion: the
    // form carries one, signed with the current key, `aud` the issuer identifier.
    let assertion = current
        .signer
        .as_ref()
        .map(|signer| signer.sign(unix_now()))
        .transpose()?;
    let form = SvidRequest {
        csr,
        join_token: None,
        client_assertion_type: assertion.as_ref().map(|_| CLIENT_ASSERTION_TYPE.to_owned()),
        client_assertion: assertion,
    };
    let answer = current.endpoints.svid(&form).await?;
    let identity = svid::check(
        &answer.svid,
        key,
        key_der,
        &renewal.transport.roots.roots,
        Some(&inner.id),
        unix_now(),
    )?;
    Credentials::new(
        inner.auth,
        identity,
        &inner.issuer,
        &renewal.transport,
        Some(current.endpoints.http().clone()),
    )
}

/// How long after its arrival to renew a certificate that had `remaining` validity
/// left: 45 % to 55 % of it, placed by `random`, and never less than
/// [`MIN_RENEWAL_DELAY`].
pub(crate) fn renewal_delay(remaining: Duration, random: u32) -> Duration {
    let ppm = RENEW_FROM_PPM + ((u64::from(random) * RENEW_SPAN_PPM) >> 32);
    scale(remaining, ppm).max(MIN_RENEWAL_DELAY)
}

/// How long to wait after the `failures`-th failed attempt in a row, when the current
/// certificate has `remaining` validity left and the issuer asked for `retry_after`.
///
/// Exponential from [`FIRST_RETRY`] up to [`MAX_RETRY`], and, while the certificate is
/// still valid, at most a quarter of what is left of it, so that several attempts fit
/// before it expires; then 50–100 % of that, placed by `random`. A `Retry-After`
/// (bounded by [`MAX_RETRY_AFTER`]) is waited out in full.
pub(crate) fn retry_delay(
    failures: u32,
    retry_after: Option<Duration>,
    remaining: Duration,
    random: u32,
) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let mut backoff = FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY);
    if !remaining.is_zero() {
        backoff = backoff.min((remaining / 4).max(FIRST_RETRY));
    }
    let half = backoff / 2;
    let jittered = half + scale(half, (u64::from(random) * 1_000_000) >> 32);
    match retry_after {
        Some(wait) => jittered.max(wait.min(MAX_RETRY_AFTER)),
        None => jittered,
    }
}

/// `duration` × `ppm` / 1 000 000, saturating.
fn scale(duration: Duration, ppm: u64) -> Duration {
    let nanos = duration.as_nanos().saturating_mul(u128::from(ppm)) / 1_000_000;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Validity left, from now, of a certificate expiring at `not_after` (Unix seconds).
fn remaining(not_after: i64) -> Duration {
    let not_after = UNIX_EPOCH + Duration::from_secs(u64::try_from(not_after).unwrap_or_default());
    not_after
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

/// Unix seconds `delay` from now, rounded up.
fn unix_after(delay: Duration) -> i64 {
    let secs = delay
        .as_secs()
        .saturating_add(u64::from(delay.subsec_nanos() > 0));
    unix_now().saturating_add(i64::try_from(secs).unwrap_or(i64::MAX))
}

/// Jitter from the system RNG; the midpoint if it fails (renewal must go on).
fn random(rng: &SystemRandom) -> u32 {
    let mut bytes = [0u8; 4];
    match rng.fill(&mut bytes) {
        Ok(()) => u32::from_le_bytes(bytes),
        Err(_) => u32::MAX / 2,
    }
}

/// An error and its sources on one line, for [`CertificateStatus::last_error`]; a
/// source whose text the line already ends with (errors that print their source) is
/// not repeated.
fn one_line(error: &TokenError) -> String {
    let mut line = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

/// The state stays consistent across a panic elsewhere: every update is a few plain
/// stores.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::identity::WorkloadIdentity;
    use crate::client::{Auth, Options, issuer_urls, transport};

    const RANDOMS: [u32; 6] = [0, 1, 0x7fff_ffff, 0x8000_0000, u32::MAX - 1, u32::MAX];

    #[test]
    fn renewal_falls_between_45_and_55_percent_of_the_remaining_validity() {
        for remaining in [
            Duration::from_secs(6),
            Duration::from_secs(60),
            Duration::from_secs(24 * 3600),
            Duration::from_secs(7 * 24 * 3600),
        ] {
            for random in RANDOMS {
                let delay = renewal_delay(remaining, random);
                assert!(delay >= remaining * 45 / 100, "{remaining:?} {random}");
                assert!(delay < remaining * 55 / 100, "{remaining:?} {random}");
            }
            // The ends of the window are reached, and the middle is the middle.
            assert_eq!(renewal_delay(remaining, 0), remaining * 45 / 100);
            assert_eq!(renewal_delay(remaining, 1 << 31), remaining / 2);
            assert!(renewal_delay(remaining, u32::MAX) > remaining * 5499 / 10_000);
        }
    }

    #[test]
    fn renewal_is_never_due_now_or_in_the_past() {
        for remaining in [
            Duration::ZERO,
            Duration::from_millis(1),
            Duration::from_secs(1),
        ] {
            for random in RANDOMS {
                assert_eq!(renewal_delay(remaining, random), MIN_RENEWAL_DELAY);
            }
        }
        assert_eq!(remaining(0), Duration::ZERO);
        assert_eq!(remaining(-1), Duration::ZERO);
        assert!(remaining(unix_now() + 100) <= Duration::from_secs(100));
        assert!(remaining(unix_now() + 100) > Duration::from_secs(98));
        assert!(unix_after(Duration::from_millis(1)) > unix_now() - 1);
    }

    #[test]
    fn renewal_schedule_does_not_overflow() {
        for random in RANDOMS {
            assert!(renewal_delay(Duration::MAX, random) > Duration::from_secs(100 * 365 * 86_400));
        }
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_a_minute_with_jitter() {
        let valid = Duration::from_secs(24 * 3600);
        for failures in 1..=40u32 {
            let full = FIRST_RETRY
                .saturating_mul(1 << (failures - 1).min(16))
                .min(MAX_RETRY);
            for random in RANDOMS {
                let delay = retry_delay(failures, None, valid, random);
                assert!(delay >= full / 2, "{failures} {random}: {delay:?}");
                assert!(delay <= full, "{failures} {random}: {delay:?}");
            }
        }
        assert_eq!(retry_delay(1, None, valid, 0), Duration::from_millis(500));
        assert_eq!(retry_delay(3, None, valid, 0), Duration::from_secs(2));
        assert_eq!(retry_delay(u32::MAX, None, valid, 0), MAX_RETRY / 2);
        assert!(retry_delay(u32::MAX, None, valid, u32::MAX) <= MAX_RETRY);
    }

    #[test]
    fn backoff_leaves_room_for_several_attempts_before_expiry() {
        // 8 s left: never wait more than 2 s, however many failures.
        for failures in 1..=20 {
            for random in RANDOMS {
                let delay = retry_delay(failures, None, Duration::from_secs(8), random);
                assert!(delay <= Duration::from_secs(2), "{failures}: {delay:?}");
                assert!(delay >= FIRST_RETRY / 2);
            }
        }
        // Almost nothing left: still at least half a second between attempts.
        let delay = retry_delay(9, None, Duration::from_millis(10), 0);
        assert_eq!(delay, FIRST_RETRY / 2);
        // Expired: the certificate no longer bounds the wait, the cap does.
        assert!(retry_delay(30, None, Duration::ZERO, u32::MAX) <= MAX_RETRY);
        assert!(retry_delay(30, None, Duration::ZERO, 0) >= MAX_RETRY / 2);
    }

    #[test]
    fn retry_after_is_honoured_up_to_a_bound() {
        let valid = Duration::from_secs(6);
        let wait = Duration::from_secs(30);
        for random in RANDOMS {
            assert_eq!(retry_delay(1, Some(wait), valid, random), wait);
            assert_eq!(
                retry_delay(1, Some(Duration::from_secs(u64::MAX)), valid, random),
                MAX_RETRY_AFTER
            );
            // A Retry-After shorter than the backoff does not shorten it.
            let delay = retry_delay(7, Some(Duration::from_secs(1)), Duration::ZERO, random);
            assert!(delay >= MAX_RETRY / 2);
        }
    }

    #[test]
    fn errors_are_reported_on_one_line_with_their_sources() {
        let cause = SpiffeId::new("https://x").unwrap_err().to_string();
        let error = TokenError::Svid(crate::client::error::SvidError::SpiffeId(
            SpiffeId::new("https://x").unwrap_err(),
        ));
        let line = one_line(&error);
        assert!(line.starts_with("refused the certificate the issuer sent: "));
        assert!(line.ends_with(&cause), "{line}");
        assert_eq!(line.matches(&cause).count(), 1, "{line}");
        assert!(!line.contains('\n'));
    }

    /// A client renewing a self-signed certificate valid for `lifetime` from an issuer
    /// that cannot be reached (nothing listens on port 1), and its renewal task.
    fn unreachable_client(
        lifetime: i64,
        on_renewal: Option<Callback>,
    ) -> (Arc<Inner>, tokio::task::JoinHandle<()>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://example.org/fn/orders".try_into().unwrap(),
        )];
        params.not_after =
            time::OffsetDateTime::from_unix_timestamp(unix_now() + lifetime).unwrap();
        let cert = params.self_signed(&key).unwrap().pem();
        let identity = WorkloadIdentity::from_pem(
            cert.as_bytes(),
            key.serialize_pem().as_bytes(),
            &SystemRandom::new(),
        )
        .unwrap();
        let (issuer, urls) = issuer_urls("https://127.0.0.1:1").unwrap();
        let transport = Transport {
            roots: transport::trust_roots(cert.as_bytes()).unwrap(),
            urls,
            timeout: Duration::from_secs(2),
        };
        let id = identity.id.clone();
        let credentials =
            Credentials::new(Auth::Assertion, identity, &issuer, &transport, None).unwrap();
        let (renewal, task) = Renewal::new(KeyType::EcP256, transport, credentials.not_after);
        let inner = Arc::new(Inner::new(
            id,
            issuer,
            Auth::Assertion,
            credentials,
            &Options::default(),
            Some(renewal),
        ));
        let handle = start(&inner, task, on_renewal);
        (inner, handle)
    }

    #[tokio::test]
    async fn dropping_the_client_ends_its_renewal_task_at_once() {
        // Renewal is hours away; the task must not wait for it to notice.
        let (inner, task) = unreachable_client(24 * 3600, None);
        let status = inner.status();
        assert!(status.auto_renew);
        assert!(status.next_attempt.unwrap() > unix_now() + 3600);
        drop(inner);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the renewal task outlived its client")
            .unwrap();
    }

    #[tokio::test]
    async fn a_failed_renewal_is_reported_retried_and_keeps_the_current_certificate() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let callback: Callback = Box::new(move |event| {
            let seen = match event {
                RenewalEvent::Failed {
                    error,
                    retry_in,
                    status,
                } => Some((
                    matches!(error, TokenError::Transport(_)),
                    *retry_in,
                    (*status).clone(),
                )),
                _ => None,
            };
            let _ = tx.send(seen);
            // A panicking callback does not end renewal.
            panic!("callback panics");
        });
        // 2 s left: the first attempt comes after the 1 s floor.
        let (inner, task) = unreachable_client(2, Some(callback));
        let before = inner.status();
        for attempt in 1..=2u32 {
            let seen = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("no renewal attempt reported")
                .unwrap();
            let (transport, retry_in, status) = seen.expect("a Failed event");
            assert!(transport, "an unreachable issuer is a transport error");
            assert!(
                retry_in >= FIRST_RETRY / 2 && retry_in <= MAX_RETRY,
                "{retry_in:?}"
            );
            assert_eq!(status.consecutive_failures, attempt);
            assert_eq!(status.renewals, 0);
            assert_eq!(status.serial, before.serial, "the certificate stays in use");
            let reason = status.last_error.unwrap();
            assert!(
                reason.contains("HTTPS request to the issuer failed"),
                "{reason}"
            );
            assert!(!reason.contains("127.0.0.1"), "no URL in errors: {reason}");
        }
        assert_eq!(inner.status().consecutive_failures, 2);
        drop(inner);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
