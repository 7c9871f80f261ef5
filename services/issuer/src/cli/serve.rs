//! `baton serve`: the issuer (SPEC §9).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use baton_issuer::admin::{self, AdminOps, AdminSocket};
use baton_issuer::attest::Attestor;
use baton_issuer::config::{Config, LogFormat};
use baton_issuer::datadir::DataDir;
use baton_issuer::deny::DenyStore;
use baton_issuer::introspect::Introspector;
use baton_issuer::join_token::JoinTokens;
use baton_issuer::keyring::{Home, Keyring};
use baton_issuer::ledger::{MemoryLedger, RedisLedger, ReplayLedger};
use baton_issuer::lifecycle::{FAILPOINT_ROTATE_AFTER_SEAL, KeyLifecycle};
use baton_issuer::metrics as m;
use baton_issuer::pki::{self, DEFAULT_CA_TTL};
use baton_issuer::policy::{Policy, PolicyStore};
use baton_issuer::replica::{POLL_INTERVAL, ReplicaSync, StoreHealth};
use baton_issuer::server::listener::Connections;
use baton_issuer::server::{self, Issuer, RateLimiter};
use baton_issuer::shared::{self, SharedStore};
use baton_issuer::svid::SvidIssuer;
use baton_issuer::visibility::redis::RedisGraph;
use baton_issuer::visibility::{Backend, GRAPH_FILE, Visibility};
use baton_proto::TrustDomain;
use baton_proto::metadata::TOKEN_PATH;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use super::{Context, now};

/// Trust domain of the dev setup `serve` creates on a fresh machine.
const DEV_TRUST_DOMAIN: &str = "example.org";
/// Entries the in-memory ledger holds at most: consumed assertion and token `jti`s and
/// revoked sessions, each kept until its expiry. About 45 bytes each, so the full
/// ledger takes some 45 MiB (measured by `tests/ledger_memory.rs`).
const LEDGER_CAPACITY: usize = 1_000_000;
/// How long in-flight requests may finish after SIGTERM.
const GRACE: Duration = Duration::from_secs(10);
/// How often the call graph is written to its store (and, distributed, how stale the
/// graph other replicas read may be).
const VISIBILITY_FLUSH: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Configuration file [default: <data-dir>/config.toml].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Policy file (SPEC §6); reloaded on SIGHUP.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// HTTPS listen address [default: 127.0.0.1:8443].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Plain-HTTP listen address, only behind a TLS-terminating gateway.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Issuer identifier (`iss`) [default: https://localhost:<port>].
    #[arg(long)]
    issuer_url: Option<String>,
    /// State store [default: embedded].
    #[arg(long)]
    store: Option<String>,
    /// Log format [default: auto: text on a terminal, json otherwise].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// When the data directory does not exist, make it a replica of this one (as
    /// `baton init --from` does) instead of a dev trust domain: for containers whose
    /// data directory is a fresh tmpfs or emptyDir at every start.
    #[arg(long, value_name = "SEED", env = "BATON_INIT_FROM")]
    init_from: Option<PathBuf>,
    /// Check the configuration (file, BATON_* variables, flags), the policy file, and
    /// that the data directory opens under the KEK; print every setting in force and
    /// exit 0, or exit 1 naming what is wrong. Starts nothing, contacts no store.
    #[arg(long)]
    check_config: bool,
}

pub(super) fn run(ctx: &Context, args: ServeArgs) -> anyhow::Result<()> {
    if args.check_config {
        return check_config(ctx, &args);
    }
    let seed = args.init_from.as_ref().filter(|_| !ctx.data_dir.exists());
    if let Some(seed) = seed {
        ctx.data_dir
            .init_from(&DataDir::new(seed), &ctx.kek)
            .with_context(|| {
                format!(
                    "cannot make {} a replica of {}",
                    ctx.data_dir.root().display(),
                    seed.display()
                )
            })?;
    }
    let config = load_config(&args, &ctx.data_dir)?;
    init_logging(config.log_format);
    if let Some(seed) = seed {
        info!(data_dir = %ctx.data_dir.root().display(), seed = %seed.display(), "data directory made from the seed");
    }
    for name in Config::unknown_env(std::env::vars()) {
        warn!(variable = %name, "environment variable is not a Baton setting; ignored");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(ctx, config))
}

/// `serve --check-config`: everything `serve` reads before it binds, checked the same
/// way, with nothing started and no state changed.
fn check_config(ctx: &Context, args: &ServeArgs) -> anyhow::Result<()> {
    let seed = args.init_from.as_ref().filter(|_| !ctx.data_dir.exists());
    let data_dir = match seed {
        // What `serve` would copy, configuration included: it must open under this KEK.
        Some(seed) => DataDir::new(seed),
        None => ctx.data_dir.clone(),
    };
    let config = load_config(args, &data_dir)?;
    let root = data_dir.root();
    if !data_dir.exists() {
        bail!(
            "{} is not a Baton data directory: `baton init --trust-domain TD` (or `--from SEED`) makes one",
            root.display()
        );
    }
    let store = data_dir
        .open(&ctx.kek)
        .with_context(|| format!("cannot open {}", root.display()))?;
    let td = store.ca().trust_domain().clone();
    let rules = match &config.policy {
        Some(path) => {
            PolicyStore::load(path.clone(), Some(td.clone()))
                .with_context(|| format!("policy {}", path.display()))?
                .current()
                .summary()
                .rules
        }
        None => 0,
    };
    let keys = match config.redis_url() {
        Some(_) => "in the shared store (not contacted)".to_owned(),
        None => {
            match Keyring::current(Home::Files(&store)).context("the data directory's keyring")? {
                Some(keyring) => format!("{} sealed, all open", keyring.keys().len()),
                None => "none yet (the first `serve` makes them)".to_owned(),
            }
        }
    };
    let kek = match &ctx.kek {
        baton_issuer::datadir::KekSource::File(path) => {
            format!("{} (BATON_KEK_FILE)", path.display())
        }
        baton_issuer::datadir::KekSource::Dev => format!("{}/kek (dev)", root.display()),
    };
    let mut report = format!(
        "# baton serve --check-config: OK\n# data directory {} (trust domain {td}), KEK {kek}\n# signing keys: {keys}\n",
        root.display()
    );
    match &config.policy {
        Some(path) => report += &format!("# policy {}: {rules} rules\n", path.display()),
        None => report += "# no policy: every token request will be denied\n",
    }
    for name in Config::unknown_env(std::env::vars()) {
        report += &format!("# warning: {name} is not a Baton setting; ignored\n");
    }
    report += &config.to_toml();
    // A closed pipe (`| head`) is an error to report, not a panic.
    std::io::Write::write_all(&mut std::io::stdout().lock(), report.as_bytes())
        .context("cannot write the report")
}

async fn serve(ctx: &Context, mut config: Config) -> anyhow::Result<()> {
    // Before any metric is recorded: values set while no recorder is installed are lost.
    let prometheus = m::handle();
    let fresh = !ctx.data_dir.exists();
    if fresh {
        let td = TrustDomain::new(DEV_TRUST_DOMAIN)?;
        ctx.data_dir
            .init(&td, &ctx.kek, DEFAULT_CA_TTL, now())
            .with_context(|| format!("cannot initialize {}", ctx.data_dir.root().display()))?;
        warn!(
            data_dir = %ctx.data_dir.root().display(),
            trust_domain = DEV_TRUST_DOMAIN,
            "no data directory: initialized a DEV trust domain (dev KEK beside the data; use `baton init` and BATON_KEK_FILE in production)"
        );
    }
    // Held for the issuer's whole life: no `baton kek rotate` starts under it.
    let _data_lock = ctx.data_dir.lock_shared()?;
    let store = Arc::new(ctx.data_dir.open(&ctx.kek)?);
    // First, so a second issuer on the same data directory stops here, before it
    // touches the keyring.
    let admin_socket = AdminSocket::bind(ctx.data_dir.admin_socket_path())?;

    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    listener.set_nonblocking(true)?;
    config.listen = listener.local_addr()?;
    let issuer = config.issuer();
    let ca = store.ca();
    let td = ca.trust_domain().clone();

    // Distributed mode: keyring, deny list, policy, join tokens and the replay ledger
    // live in Redis, shared by every replica (docs/distributed.md).
    let shared = match config.redis_url() {
        Some(url) => {
            let shared = SharedStore::connect(url, shared::DEFAULT_TIMEOUT)
                .context("cannot use the distributed store")?;
            info!(store = %shared.url(), "distributed mode: state is shared through Redis");
            Some(shared)
        }
        None => None,
    };
    let home = match &shared {
        Some(shared) => Home::Shared(&store, shared),
        None => Home::Files(&store),
    };
    let keyring = Keyring::load_or_init(home, config.token_alg, now())?;
    let policy_path = config.policy.clone();
    let policy = Arc::new(match (&shared, &policy_path) {
        (Some(shared), _) => {
            PolicyStore::open_shared(policy_path.clone(), Some(td.clone()), shared.clone())
                .context("policy")?
        }
        (None, Some(path)) => PolicyStore::load(path.clone(), Some(td.clone()))
            .with_context(|| format!("policy {}", path.display()))?,
        (None, None) => PolicyStore::new(Policy::deny_all(), None, Some(td.clone())),
    });
    metrics::gauge!(m::POLICY_RULES).set(policy.current().summary().rules as f64);

    let bundle = pki::pem_certificates(store.bundle_pem().as_bytes())
        .map_err(|e| anyhow::anyhow!("trust bundle: {e}"))?;
    let deny = Arc::new(match &shared {
        Some(shared) => DenyStore::open_shared(ctx.data_dir.deny_list_path(), shared.clone())?,
        None => DenyStore::open(ctx.data_dir.deny_list_path())?,
    });
    metrics::gauge!(m::DENIED_IDENTITIES).set(deny.list().len() as f64);
    // SPEC §7: the ledger starts empty, so it answers inactive for every token issued
    // up to this second (see `wait_until_after` below).
    let started_at = now().unix_timestamp();
    let (ledger, memory_ledger): (Arc<dyn ReplayLedger>, _) = match config.redis_url() {
        // Distributed: one ledger in Redis for every replica, with its own epoch.
        Some(url) => (
            Arc::new(
                RedisLedger::connect(url)
                    .await
                    .context("cannot use the distributed store's replay ledger")?,
            ),
            None,
        ),
        None => {
            let memory = Arc::new(MemoryLedger::new(LEDGER_CAPACITY, started_at));
            metrics::gauge!(m::LEDGER_CAPACITY).set(LEDGER_CAPACITY as f64);
            (memory.clone(), Some(memory))
        }
    };
    let attestor = Attestor::new(
        bundle,
        td.clone(),
        vec![issuer.clone(), format!("{issuer}{TOKEN_PATH}")],
        Arc::clone(deny.list()),
        Arc::clone(&ledger),
    )?;
    let introspector =
        Introspector::new(issuer.clone(), Arc::clone(deny.list()), Arc::clone(&ledger));
    let mut join_tokens = JoinTokens::new(ctx.data_dir.join_tokens_path());
    if let Some(shared) = &shared {
        join_tokens = join_tokens.with_shared_store(shared.clone());
    }
    let svids = SvidIssuer::new(Arc::clone(&store), ledger, config.svid_ttl)
        .with_join_tokens(join_tokens.clone());
    let health = Arc::new(StoreHealth::new(now().unix_timestamp()));
    let visibility = open_visibility(&config, &ctx.data_dir, shared.as_ref()).await;
    let mut issuer_state = Issuer::new(
        issuer.clone(),
        keyring,
        attestor,
        introspector,
        policy.clone(),
        config.token_ttl,
        RateLimiter::new(config.rate_limit, config.rate_burst),
        config.jwks_max_age,
        prometheus,
    )
    .with_enrollment(svids, config.svid_rate_limit)
    .with_introspect_rate_limit(config.introspect_rate_limit)
    .with_max_body_bytes(config.max_body_bytes)
    .with_visibility(Arc::clone(&visibility));
    if shared.is_some() {
        issuer_state = issuer_state.with_store_health(Arc::clone(&health));
    }
    let state = Arc::new(issuer_state);
    let app = server::app(state.clone(), config.request_timeout);
    let mut lifecycle = KeyLifecycle::new(
        Arc::clone(&store),
        config.token_alg,
        config.jwks_max_age,
        config.rotation_period,
        Arc::clone(&state),
    )
    .crash_after_seal(
        std::env::var("BATON_FAILPOINT").is_ok_and(|v| v == FAILPOINT_ROTATE_AFTER_SEAL),
    );
    if let Some(shared) = &shared {
        lifecycle = lifecycle.with_shared_store(shared.clone());
    }
    let keys = Arc::new(lifecycle);
    if let Some(shared) = &shared {
        let sync = ReplicaSync::new(
            Arc::clone(&store),
            shared.clone(),
            Arc::clone(&state),
            Arc::clone(&deny),
            Arc::clone(&policy),
            Arc::clone(&health),
        );
        tokio::spawn(replica_sync(Arc::new(sync)));
    }

    let (dns_names, ips) = server_names(&config, &issuer);
    let tls = server::tls::server_config(ca, &dns_names, &ips, now())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_path = admin_socket.path().to_owned();
    let admin_task = tokio::spawn(
        admin_socket.serve(
            Arc::new(
                AdminOps::new(deny, policy.clone(), td.clone())
                    .with_keys(Arc::clone(&keys))
                    .with_join_tokens(join_tokens)
                    .with_visibility(
                        Arc::clone(&visibility),
                        shared
                            .as_ref()
                            .map_or_else(|| "embedded".to_owned(), |s| s.url().to_owned()),
                        config.policy_report_window,
                        config.policy_report_min_denials,
                    ),
            ),
            stop_rx.clone(),
        ),
    );
    // One set of connection slots for both listeners: `max_connections` bounds what
    // the process holds, whichever way the connections came.
    let connections = Connections::new(config.connection_limits(), stop_rx.clone());
    let https_listener = tokio::net::TcpListener::from_std(listener)?;
    let http_listener = match config.http_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        ),
        None => None,
    };
    let http_addr = match &http_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };

    // Before either listener serves. Tokens carry whole-second `iat`s and introspection
    // accepts only those after the ledger's start second: wait that second out, so this
    // issuer never mints a token that is inactive from birth.
    wait_until_after(started_at).await;

    let https = tokio::spawn(connections.clone().serve(
        https_listener,
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls))),
        app.clone(),
    ));
    let http = http_listener.map(|l| tokio::spawn(connections.clone().serve(l, None, app)));

    // Before "listening": a SIGTERM sent as soon as the issuer says it is up must find
    // the handler installed, not the default action (death without a graceful stop).
    let handlers = Signals {
        term: signal(SignalKind::terminate()).context("cannot install signal handlers")?,
        int: signal(SignalKind::interrupt()).context("cannot install signal handlers")?,
        hup: signal(SignalKind::hangup()).context("cannot install signal handlers")?,
    };
    if let Some(addr) = http_addr {
        warn!(%addr, "plain HTTP listener on: only for use behind a TLS-terminating gateway (no mTLS there)");
    }
    info!(
        https_addr = %config.listen,
        http_addr = http_addr.map(|a| a.to_string()),
        issuer = %issuer,
        trust_domain = %td,
        policy_rules = policy.current().summary().rules,
        admin_socket = %admin_path.display(),
        ledger_started_at = started_at,
        "listening"
    );
    if fresh || policy_path.is_none() {
        info!(
            "next: `baton enroll --id spiffe://{td}/fn/hello --out ./hello`, write a policy (see infra/config/policy.toml) and restart with --policy, then fetch {issuer}/.well-known/jwks.json"
        );
    }

    let visibility_task = tokio::spawn(visibility_upkeep(visibility, stop_rx.clone()));
    tokio::spawn(signals(
        handlers,
        stop_tx,
        policy,
        state,
        memory_ledger,
        keys,
    ));
    // The accept loops end on the stop signal; then the connections finish what they
    // have in progress, for at most GRACE.
    https.await.context("HTTPS listener failed")?;
    if let Some(http) = http {
        http.await.context("HTTP listener failed")?;
    }
    if !connections.drain(GRACE).await {
        warn!(
            open = connections.open(),
            "connections still open after the grace period; closing them"
        );
    }
    // SIGTERM already stopped the admin task; should the listeners have ended some
    // other way, stop it here. Either way it removes its socket file as it ends.
    admin_task.abort();
    let _ = admin_task.await;
    // Its last flush: what was recorded since the previous one is kept.
    let _ = visibility_task.await;
    info!("stopped");
    Ok(())
}

/// Pulls other replicas' changes every [`POLL_INTERVAL`] for as long as the issuer runs.
async fn replica_sync(sync: Arc<ReplicaSync>) {
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let task = Arc::clone(&sync);
        match tokio::task::spawn_blocking(move || task.tick(now().unix_timestamp())).await {
            Ok(Ok(_)) => {}
            // Reachability is logged by the sync itself, on each change of state.
            Ok(Err(e)) if e.is_unreachable() => {}
            Ok(Err(e)) => {
                warn!(error = %e, "could not take a change from the shared store; serving what this replica has")
            }
            Err(e) => warn!(error = %e, "replica sync panicked"),
        }
    }
}

/// Sleeps until the wall clock reads a Unix second later than `second`.
async fn wait_until_after(second: i64) {
    loop {
        let now = time::OffsetDateTime::now_utc();
        if now.unix_timestamp() > second {
            return;
        }
        let rest = 1_000_000_000u64.saturating_sub(u64::from(now.nanosecond()));
        tokio::time::sleep(Duration::from_nanos(rest) + Duration::from_millis(1)).await;
    }
}

/// SIGTERM / SIGINT: stop accepting, let in-flight requests finish. SIGHUP: reload
/// the policy, keeping the old one if the new one is invalid. Every minute: forget idle
/// rate-limit state and expired ledger entries. Every JWKS max-age (at most a minute):
/// rotate the signing key when it is due and drop retired keys whose time has passed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// The call graph's records, in the data directory or the distributed store, loaded
/// with what the store holds. A store that cannot be read leaves the graph empty (it
/// records use; it decides nothing), with a warning.
async fn open_visibility(
    config: &Config,
    data_dir: &DataDir,
    shared: Option<&SharedStore>,
) -> Arc<Visibility> {
    let backend = match shared {
        Some(shared) => Backend::Redis(RedisGraph::new(
            shared.clone(),
            config.graph_max_edges,
            config.graph_retention,
        )),
        None => Backend::Embedded {
            path: data_dir.root().join(GRAPH_FILE),
        },
    };
    let visibility = Arc::new(Visibility::new(
        backend,
        config.graph_max_edges,
        config.graph_retention,
        config.anomaly_thresholds(),
    ));
    let task = Arc::clone(&visibility);
    match tokio::task::spawn_blocking(move || task.load(now().unix_timestamp())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "cannot read the call graph; it starts empty"),
        Err(e) => warn!(error = %e, "reading the call graph panicked; it starts empty"),
    }
    visibility
}

/// Flushes the call graph to its store every few seconds, relearns the anomaly
/// baselines from it every minute (distributed: what the other replicas saw), and
/// flushes once more on the stop signal.
async fn visibility_upkeep(
    visibility: Arc<Visibility>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut flushes = tokio::time::interval(VISIBILITY_FLUSH);
    let mut refreshes = tokio::time::interval(Duration::from_secs(60));
    refreshes.tick().await;
    loop {
        tokio::select! {
            _ = flushes.tick() => {
                let task = Arc::clone(&visibility);
                match tokio::task::spawn_blocking(move || task.flush(now().unix_timestamp())).await {
                    Ok(Ok(())) => {}
                    // Kept in memory within its bound; the next flush tries again.
                    Ok(Err(e)) => warn!(error = %e, "cannot flush the call graph"),
                    Err(e) => warn!(error = %e, "flushing the call graph panicked"),
                }
            }
            _ = refreshes.tick() => {
                let task = Arc::clone(&visibility);
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || task.refresh(now().unix_timestamp())).await {
                    warn!(error = %e, "cannot read the call graph from the store");
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    let task = Arc::clone(&visibility);
    if let Ok(Err(e)) =
        tokio::task::spawn_blocking(move || task.flush(now().unix_timestamp())).await
    {
        warn!(error = %e, "cannot flush the call graph at shutdown");
    }
}

async fn signals(
    handlers: Signals,
    stop: tokio::sync::watch::Sender<bool>,
    policy: Arc<PolicyStore>,
    state: Arc<Issuer>,
    ledger: Option<Arc<MemoryLedger>>,
    keys: Arc<KeyLifecycle>,
) {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = handlers;
    let mut housekeeping = tokio::time::interval(Duration::from_secs(60));
    let mut metrics_upkeep = tokio::time::interval(Duration::from_secs(5));
    let mut key_ticks = tokio::time::interval(keys.tick_interval());
    loop {
        tokio::select! {
            _ = metrics_upkeep.tick() => state.metrics_upkeep(),
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                // PolicyStore logs the outcome; a refused policy leaves the old one.
                let policy = Arc::clone(&policy);
                let _ = tokio::task::spawn_blocking(move || admin::reload_policy(&policy)).await;
            }
            _ = housekeeping.tick() => {
                state.housekeeping();
                // Redis expires its ledger entries by itself.
                if let Some(ledger) = &ledger {
                    ledger.purge_expired(now().unix_timestamp());
                    metrics::gauge!(m::LEDGER_ENTRIES).set(ledger.len() as f64);
                }
            }
            _ = key_ticks.tick() => {
                let keys = Arc::clone(&keys);
                match tokio::task::spawn_blocking(move || keys.tick(time::OffsetDateTime::now_utc())).await {
                    Ok(Ok(true)) => {
                        metrics::counter!(m::KEY_ROTATIONS, "trigger" => "schedule").increment(1);
                    }
                    Ok(Ok(false)) => {}
                    // The keyring in force stays; the next tick tries again.
                    Ok(Err(e)) => warn!(error = %e, "scheduled key rotation failed"),
                    Err(e) => warn!(error = %e, "scheduled key rotation panicked"),
                }
            }
        }
    }
    info!("shutting down");
    let _ = stop.send(true);
}

/// The configuration: `--config`, or the configuration file of `data_dir`.
fn load_config(args: &ServeArgs, data_dir: &DataDir) -> anyhow::Result<Config> {
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| data_dir.config_path());
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && args.config.is_none() => {
            String::new()
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    // Flags beat BATON_* variables, which beat the file: flags go last.
    let mut flags: Vec<(String, String)> = Vec::new();
    let mut flag = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            flags.push((format!("BATON_{}", key.to_ascii_uppercase()), v));
        }
    };
    flag("listen", args.listen.map(|a| a.to_string()));
    flag("http_listen", args.http_listen.map(|a| a.to_string()));
    flag("issuer_url", args.issuer_url.clone());
    flag("store", args.store.clone());
    flag(
        "policy",
        args.policy.as_ref().map(|p| p.display().to_string()),
    );
    flag("log_format", args.log_format.map(|f| f.as_str().to_owned()));
    let config = Config::from_toml(&text, std::env::vars().chain(flags))
        .with_context(|| format!("{}", path.display()))?;
    if let Some(p) = &config.policy
        && !p.is_file()
    {
        bail!("policy file {} does not exist", p.display());
    }
    Ok(config)
}

/// Names the listener's certificate must carry: `localhost`, the listen address when
/// it is a specific one, and the issuer URL's host.
fn server_names(config: &Config, issuer: &str) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = vec!["localhost".to_owned()];
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
    ];
    let listen_ip = config.listen.ip();
    if !listen_ip.is_unspecified() && !ips.contains(&listen_ip) {
        ips.push(listen_ip);
    }
    if let Ok(url) = url::Url::parse(issuer) {
        match url.host() {
            Some(url::Host::Domain(d)) if !dns.iter().any(|x| x == d) => dns.push(d.to_owned()),
            Some(url::Host::Ipv4(ip)) if !ips.contains(&IpAddr::V4(ip)) => ips.push(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) if !ips.contains(&IpAddr::V6(ip)) => ips.push(IpAddr::V6(ip)),
            _ => {}
        }
    }
    (dns, ips)
}

pub(super) fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
