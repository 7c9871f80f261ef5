//! How many one-time inputs (assertions, tokens) a run needs: given on the command line,
//! or estimated by a short calibration run at the run's own concurrency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::run::{self, Measured, Plan, Pool};

/// More inputs than this are not made (a token is ~0.7 kB, an assertion ~1.5 kB).
pub(crate) const MAX_INPUTS: usize = 1_500_000;

/// One calibration round: a short run whose rate is one estimate.
const ROUND: Duration = Duration::from_millis(500);
/// The most calibration rounds (a JIT-compiled peer may take a few seconds to warm).
const ROUNDS: u32 = 8;

/// The supply made for a run, and how it was sized.
pub(crate) struct Supply {
    pub(crate) pool: Arc<Pool>,
    /// Calibration throughput (requests/s), when calibrated.
    pub(crate) calibrated_rate: Option<f64>,
    /// The estimate was above [`MAX_INPUTS`] and was cut to it.
    pub(crate) capped: bool,
    /// Time spent making the run's inputs (signing or minting).
    pub(crate) made_in: Duration,
}

impl Supply {
    /// Sizes and makes the inputs of `plan`: `fixed` of them when given, else a
    /// calibration first (see [`calibrate`]), then enough for the whole run at the
    /// calibrated rate with half again to spare.
    pub(crate) async fn prepare(
        plan: &Plan,
        fixed: Option<usize>,
        first: usize,
        mut make: impl AsyncFnMut(usize) -> anyhow::Result<Vec<String>>,
        mut spend: impl AsyncFnMut(Arc<Pool>, Plan) -> anyhow::Result<Measured>,
    ) -> anyhow::Result<Supply> {
        let (wanted, calibrated_rate) = match fixed {
            Some(n) => (n, None),
            None => {
                let rate = calibrate(plan, first, &mut make, &mut spend).await?;
                (run::inputs_needed(plan, rate), Some(rate))
            }
        };
        let capped = wanted > MAX_INPUTS;
        let n = wanted.min(MAX_INPUTS);
        note(plan, &format!("making {n} one-time inputs"));
        let t = Instant::now();
        let items = make(n).await?;
        let made_in = t.elapsed();
        note(
            plan,
            &format!("made {} in {:.1} s", items.len(), made_in.as_secs_f64()),
        );
        Ok(Supply {
            pool: Arc::new(Pool::new(items)),
            calibrated_rate,
            capped,
            made_in,
        })
    }

    /// The report's fields about the supply.
    pub(crate) fn fields(&self, out: &mut serde_json::Map<String, Value>) {
        out.insert("prepared".into(), json!(self.pool.len()));
        out.insert(
            "prepare_s".into(),
            json!(run::round3(self.made_in.as_secs_f64())),
        );
        if let Some(rate) = self.calibrated_rate {
            out.insert("calibration_per_s".into(), json!(run::round1(rate)));
        }
        if self.capped {
            out.insert("prepared_capped".into(), json!(true));
        }
    }
}

/// Half-second rounds, each spending a fresh batch from `make` through `spend`, until
/// the rate stops climbing (less than 10 % above the round before; a server warming
/// up, a JIT-compiled peer above all, climbs for a while). A round whose batch ran out
/// before half its time is not an estimate: the next batch is larger. Returns the
/// highest rate seen.
async fn calibrate(
    plan: &Plan,
    first: usize,
    make: &mut impl AsyncFnMut(usize) -> anyhow::Result<Vec<String>>,
    spend: &mut impl AsyncFnMut(Arc<Pool>, Plan) -> anyhow::Result<Measured>,
) -> anyhow::Result<f64> {
    let mut n = first.max(plan.concurrency * 4);
    let mut best: Option<f64> = None;
    let mut spent = Duration::ZERO;
    for _ in 0..ROUNDS {
        let pool = Arc::new(Pool::new(make(n).await?));
        let m = spend(pool, run::calibration_plan(plan, Duration::ZERO, ROUND)).await?;
        spent += m.ran;
        // Every request failing is a setup problem (policy, trust, rate limit): say so
        // now rather than sign or mint more.
        if m.total_ok == 0 {
            bail!(
                "calibration: no request succeeded ({})",
                serde_json::to_string(&m.total_error_kinds).unwrap_or_default()
            );
        }
        let seen = m.total_requests as f64 / m.ran.as_secs_f64().max(1e-3);
        // Next batch: a round and a half at the rate seen, at least twice this one.
        n = n
            .saturating_mul(2)
            .max((seen * ROUND.as_secs_f64() * 1.5) as usize)
            .min(MAX_INPUTS);
        if m.exhausted && m.window < ROUND / 2 {
            continue;
        }
        let rate = m.request_rate();
        let climbing = best.is_none_or(|b| rate > b * 1.1);
        best = Some(best.map_or(rate, |b| b.max(rate)));
        if !climbing {
            break;
        }
    }
    let rate = best.context("calibration: every batch ran out too fast to measure")?;
    note(
        plan,
        &format!(
            "calibration: {rate:.0} requests/s ({:.1} s of rounds)",
            spent.as_secs_f64()
        ),
    );
    Ok(rate)
}

/// A line on stderr, unless the run is quiet.
pub(crate) fn note(plan: &Plan, message: &str) {
    if plan.progress {
        eprintln!("{}: {message}", plan.label);
    }
}
