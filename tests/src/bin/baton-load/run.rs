//! The timed run: a fixed number of workers, each doing one operation at a time, for a
//! warm-up (not counted) and then a measured window; per-request latencies recorded
//! exactly and reduced to percentiles at the end; a progress line on stderr each second.
//!
//! A request counts in the window when it *completes* inside it (as wrk counts). When
//! the pre-generated inputs run out, every worker stops and the window ends there.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long, and how wide, one run is.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Label of the progress line.
    pub(crate) label: String,
    /// Concurrent workers (tasks or threads), each with one operation in flight.
    pub(crate) concurrency: usize,
    /// Not counted: connections open, caches fill, the server's allocator settles.
    pub(crate) warmup: Duration,
    /// The measured window.
    pub(crate) duration: Duration,
    /// Whether to print a progress line each second.
    pub(crate) progress: bool,
    /// Whether to keep every runtime worker busy during an async run (`--spin`).
    pub(crate) spin: bool,
}

impl Plan {
    fn total(&self) -> Duration {
        self.warmup + self.duration
    }
}

/// What one operation came to.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Succeeded, yielding `units` tokens (1, or the batch size).
    Ok(u32),
    /// Failed; the kind is a short label (`http_401_invalid_client`, `timeout`, …).
    Err(String),
    /// No pre-generated input left: the run stops.
    Exhausted,
}

/// Pre-generated inputs (assertions or tokens), each handed out exactly once.
#[derive(Debug)]
pub(crate) struct Pool {
    items: Vec<String>,
    next: AtomicUsize,
}

impl Pool {
    pub(crate) fn new(items: Vec<String>) -> Self {
        Self {
            items,
            next: AtomicUsize::new(0),
        }
    }

    /// The next unused item, or `None` when all are spent.
    pub(crate) fn take(&self) -> Option<&str> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.items.get(i).map(String::as_str)
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }
}

/// One completed request: when it ended (since the run's start) and how long it took.
#[derive(Debug, Clone, Copy)]
struct Sample {
    end: Duration,
    latency: Duration,
    units: u32,
}

/// What one worker saw.
#[derive(Debug, Default)]
struct WorkerLog {
    ok: Vec<Sample>,
    errors: Vec<(Duration, String)>,
}

impl WorkerLog {
    fn record(&mut self, start: Instant, begin: Instant, end: Instant, outcome: Outcome) {
        let at = end.duration_since(start);
        match outcome {
            Outcome::Ok(units) => self.ok.push(Sample {
                end: at,
                latency: end.duration_since(begin),
                units,
            }),
            Outcome::Err(kind) => self.errors.push((at, kind)),
            Outcome::Exhausted => {}
        }
    }
}

/// Counters the progress line reads while the workers run.
#[derive(Debug, Default)]
struct Live {
    ok: AtomicU64,
    errors: AtomicU64,
    /// Nanoseconds since the start at which the inputs ran out (0: not yet).
    exhausted_at: AtomicU64,
    done: AtomicBool,
}

impl Live {
    fn count(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Outcome::Err(_) => self.errors.fetch_add(1, Ordering::Relaxed),
            Outcome::Exhausted => 0,
        };
    }

    fn exhaust(&self, at: Duration) {
        let nanos = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .exhausted_at
            .compare_exchange(0, nanos, Ordering::AcqRel, Ordering::Acquire);
    }

    fn exhausted(&self) -> Option<Duration> {
        match self.exhausted_at.load(Ordering::Acquire) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }
}

/// The reduced result of a run.
#[derive(Debug)]
pub(crate) struct Measured {
    /// Length of the measured window (shorter than planned when inputs ran out).
    pub(crate) window: Duration,
    pub(crate) ok: u64,
    pub(crate) units: u64,
    pub(crate) errors: u64,
    pub(crate) error_kinds: BTreeMap<String, u64>,
    /// Latencies of the successful requests in the window, sorted.
    latencies: Vec<Duration>,
    /// The inputs ran out (the window ended early).
    pub(crate) exhausted: bool,
    /// Successes over the whole run, warm-up included.
    pub(crate) total_ok: u64,
    /// Requests answered over the whole run, warm-up included.
    pub(crate) total_requests: u64,
    /// How long the workers ran, warm-up included.
    pub(crate) ran: Duration,
    /// Error kinds over the whole run, warm-up included.
    pub(crate) total_error_kinds: BTreeMap<String, u64>,
}

impl Measured {
    fn reduce(plan: &Plan, logs: Vec<WorkerLog>, exhausted_at: Option<Duration>) -> Self {
        let from = plan.warmup;
        let to = exhausted_at.map_or(plan.total(), |at| at.min(plan.total()));
        let window = to.saturating_sub(from);
        if let Some(at) = exhausted_at.filter(|_| plan.progress) {
            eprintln!(
                "{}: the one-time inputs ran out {:.2} s in; the window was cut to {:.2} s \
                 (ask for more with --assertions or --tokens)",
                plan.label,
                at.as_secs_f64(),
                window.as_secs_f64()
            );
        }
        let inside = |at: Duration| at >= from && at < to;
        let mut latencies = Vec::new();
        let (mut ok, mut units, mut errors) = (0, 0, 0);
        let mut error_kinds = BTreeMap::new();
        let mut total_ok = 0;
        let mut total_error_kinds = BTreeMap::new();
        let mut total_requests = 0;
        for log in logs {
            total_ok += log.ok.len() as u64;
            total_requests += (log.ok.len() + log.errors.len()) as u64;
            for (_, kind) in &log.errors {
                *total_error_kinds.entry(kind.clone()).or_insert(0) += 1;
            }
            for s in log.ok.into_iter().filter(|s| inside(s.end)) {
                ok += 1;
                units += u64::from(s.units);
                latencies.push(s.latency);
            }
            for (_, kind) in log.errors.into_iter().filter(|(at, _)| inside(*at)) {
                errors += 1;
                *error_kinds.entry(kind).or_insert(0) += 1;
            }
        }
        latencies.sort_unstable();
        Self {
            window,
            ok,
            units,
            errors,
            error_kinds,
            latencies,
            exhausted: exhausted_at.is_some(),
            total_ok,
            total_requests,
            ran: to,
            total_error_kinds,
        }
    }

    /// Requests answered in the window, successful or not.
    pub(crate) fn requests(&self) -> u64 {
        self.ok + self.errors
    }

    /// Requests per second of the window, successful or not (0 for an empty window).
    pub(crate) fn request_rate(&self) -> f64 {
        per_second(self.requests(), self.window)
    }

    /// The fields every mode reports (SPEC of the load generator, issue 9).
    pub(crate) fn fields(&self, plan: &Plan, out: &mut serde_json::Map<String, Value>) {
        out.insert("concurrency".into(), json!(plan.concurrency));
        out.insert("spin".into(), json!(plan.spin));
        out.insert("warmup_s".into(), json!(round3(plan.warmup.as_secs_f64())));
        out.insert(
            "duration_s".into(),
            json!(round3(self.window.as_secs_f64())),
        );
        out.insert("requests".into(), json!(self.requests()));
        out.insert("ok".into(), json!(self.ok));
        out.insert("errors".into(), json!(self.errors));
        out.insert("error_kinds".into(), json!(self.error_kinds));
        out.insert(
            "throughput_per_s".into(),
            json!(round1(per_second(self.ok, self.window))),
        );
        out.insert("latency_us".into(), self.latency_json());
        out.insert("exhausted".into(), json!(self.exhausted));
    }

    /// Tokens per second of the window (batch mints yield many per request).
    pub(crate) fn units_per_second(&self) -> f64 {
        round1(per_second(self.units, self.window))
    }

    fn latency_json(&self) -> Value {
        let us = |d: Duration| round1(d.as_secs_f64() * 1e6);
        let mean = if self.latencies.is_empty() {
            Duration::ZERO
        } else {
            self.latencies.iter().sum::<Duration>()
                / u32::try_from(self.latencies.len()).unwrap_or(u32::MAX)
        };
        json!({
            "p50": us(percentile(&self.latencies, 500)),
            "p90": us(percentile(&self.latencies, 900)),
            "p99": us(percentile(&self.latencies, 990)),
            "p999": us(percentile(&self.latencies, 999)),
            "max": us(self.latencies.last().copied().unwrap_or_default()),
            "mean": us(mean),
        })
    }
}

/// Nearest-rank percentile of sorted samples, `per_mille` of 1000 (999 for p99.9), in
/// integers so that no rounding moves a rank (0 when there are no samples).
fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (per_mille * sorted.len()).div_ceil(1000);
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn per_second(n: u64, window: Duration) -> f64 {
    let secs = window.as_secs_f64();
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

pub(crate) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Prints `label: 3s/11s measuring ok=… errors=… rate/s` each second until `live.done`.
fn progress(plan: &Plan, start: Instant, live: Arc<Live>) -> Option<std::thread::JoinHandle<()>> {
    if !plan.progress {
        return None;
    }
    let plan = plan.clone();
    Some(std::thread::spawn(move || {
        let mut last = 0;
        let mut tick = start;
        loop {
            tick += Duration::from_secs(1);
            // Sleep in short steps so the line stops promptly when the run ends.
            while Instant::now() < tick {
                if live.done.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50).min(tick - Instant::now()));
            }
            let elapsed = start.elapsed();
            let phase = if elapsed < plan.warmup {
                "warm-up"
            } else {
                "measuring"
            };
            let ok = live.ok.load(Ordering::Relaxed);
            let errors = live.errors.load(Ordering::Relaxed);
            eprintln!(
                "{}: {:>4.0}s/{:.0}s {phase:<9} ok={ok} errors={errors} {}/s",
                plan.label,
                elapsed.as_secs_f64(),
                plan.total().as_secs_f64(),
                ok + errors - last,
            );
            last = ok + errors;
        }
    }))
}

/// Runs `op(worker)` on `plan.concurrency` Tokio tasks, each in a loop, until the plan's
/// time is up or an operation reports [`Outcome::Exhausted`].
/// One task per runtime worker that only yields: each worker then always has work, so
/// it polls for I/O without blocking in `epoll_wait`, and a server's answer finds no
/// sleeping thread to wake (see `--spin`).
fn spin() -> Vec<tokio::task::JoinHandle<()>> {
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    (0..workers)
        .map(|_| {
            tokio::spawn(async {
                loop {
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect()
}

pub(crate) async fn run_async<F, Fut>(plan: &Plan, op: F) -> anyhow::Result<Measured>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    let start = Instant::now();
    let stop_at = start + plan.total();
    let live = Arc::new(Live::default());
    let ticker = progress(plan, start, Arc::clone(&live));
    let spinners = if plan.spin { spin() } else { Vec::new() };
    let mut workers = Vec::with_capacity(plan.concurrency);
    for worker in 0..plan.concurrency {
        let op = op.clone();
        let live = Arc::clone(&live);
        workers.push(tokio::spawn(async move {
            let mut log = WorkerLog::default();
            while Instant::now() < stop_at && live.exhausted().is_none() {
                let begin = Instant::now();
                let outcome = op(worker).await;
                let end = Instant::now();
                if matches!(outcome, Outcome::Exhausted) {
                    live.exhaust(end.duration_since(start));
                    break;
                }
                live.count(&outcome);
                log.record(start, begin, end, outcome);
            }
            log
        }));
    }
    let mut logs = Vec::with_capacity(workers.len());
    let mut failure = None;
    for worker in workers {
        match worker.await {
            Ok(log) => logs.push(log),
            Err(e) => failure = Some(e),
        }
    }
    for spinner in spinners {
        spinner.abort();
    }
    live.done.store(true, Ordering::Release);
    if let Some(ticker) = ticker {
        let _ = ticker.join();
    }
    if let Some(e) = failure {
        anyhow::bail!("a worker failed: {e}");
    }
    Ok(Measured::reduce(plan, logs, live.exhausted()))
}

/// Runs `op(worker)` on `plan.concurrency` OS threads (for synchronous, CPU-bound
/// operations such as the SDK's `verify`), like [`run_async`]. Blocks the caller.
pub(crate) fn run_threads<F>(plan: &Plan, op: F) -> anyhow::Result<Measured>
where
    F: Fn(usize) -> Outcome + Sync,
{
    let start = Instant::now();
    let stop_at = start + plan.total();
    let live = Arc::new(Live::default());
    let ticker = progress(plan, start, Arc::clone(&live));
    let logs = Mutex::new(Vec::with_capacity(plan.concurrency));
    let spawned = std::thread::scope(|scope| -> std::io::Result<()> {
        for worker in 0..plan.concurrency {
            let (op, live, logs) = (&op, &live, &logs);
            std::thread::Builder::new()
                .name(format!("verify-{worker}"))
                .spawn_scoped(scope, move || {
                    let mut log = WorkerLog::default();
                    while Instant::now() < stop_at && live.exhausted().is_none() {
                        let begin = Instant::now();
                        let outcome = op(worker);
                        let end = Instant::now();
                        if matches!(outcome, Outcome::Exhausted) {
                            live.exhaust(end.duration_since(start));
                            break;
                        }
                        live.count(&outcome);
                        log.record(start, begin, end, outcome);
                    }
                    if let Ok(mut logs) = logs.lock() {
                        logs.push(log);
                    }
                })?;
        }
        Ok(())
    });
    live.done.store(true, Ordering::Release);
    if let Some(ticker) = ticker {
        let _ = ticker.join();
    }
    spawned?;
    let logs = logs
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a verify thread panicked"))?;
    Ok(Measured::reduce(plan, logs, live.exhausted()))
}

/// How many inputs a run of `plan` needs at `rate` operations per second: the whole
/// warm-up and window with half again to spare (a noisy machine, a server still
/// warming up during calibration), plus two per worker in flight.
pub(crate) fn inputs_needed(plan: &Plan, rate: f64) -> usize {
    let want = rate * plan.total().as_secs_f64() * 1.5;
    (want.ceil() as usize).saturating_add(2 * plan.concurrency)
}

/// A calibration run: same workers, a warm-up (a JIT-compiled peer, for one, is far
/// slower cold), then a window of `window`; no progress line.
pub(crate) fn calibration_plan(plan: &Plan, warmup: Duration, window: Duration) -> Plan {
    Plan {
        label: format!("{} (calibration)", plan.label),
        concurrency: plan.concurrency,
        warmup,
        duration: window,
        progress: false,
        spin: plan.spin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        assert_eq!(percentile(&samples, 500), Duration::from_micros(500));
        assert_eq!(percentile(&samples, 999), Duration::from_micros(999));
        assert_eq!(percentile(&samples, 1000), Duration::from_micros(1000));
        assert_eq!(percentile(&samples[..1], 500), Duration::from_micros(1));
        assert_eq!(percentile(&[], 500), Duration::ZERO);
    }

    #[test]
    fn only_requests_completing_inside_the_window_count() {
        let plan = Plan {
            label: "t".into(),
            concurrency: 1,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(2),
            progress: false,
            spin: false,
        };
        let at = |ms| Sample {
            end: Duration::from_millis(ms),
            latency: Duration::from_millis(1),
            units: 2,
        };
        let log = WorkerLog {
            ok: vec![at(500), at(1000), at(2999), at(3000)],
            errors: vec![(Duration::from_millis(1500), "timeout".into())],
        };
        let m = Measured::reduce(&plan, vec![log], None);
        assert_eq!((m.ok, m.units, m.errors), (2, 4, 1));
        assert_eq!(m.window, Duration::from_secs(2));

        let log = WorkerLog {
            ok: vec![at(1200), at(1600)],
            errors: vec![],
        };
        let m = Measured::reduce(&plan, vec![log], Some(Duration::from_millis(1500)));
        assert_eq!((m.ok, m.window), (1, Duration::from_millis(500)));
        assert!(m.exhausted);
    }
}
