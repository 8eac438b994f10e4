//! Model benchmark: BG/NBD + Gamma-Gamma fit and per-customer scoring at 100k, 1M and 10M
//! customers, through the same code the pipeline runs (`score::models::fit_and_register`
//! over a `customer_model_input` table, then the model SQL functions). Customer histories
//! are simulated from known parameters at day granularity, as the pipeline's input is.
//! Prints figures; asserts nothing about time.
//!
//! ```sh
//! cargo bench --bench models                           # 100k, 1M, 10M
//! cargo bench --bench models -- --customers 100000,1000000
//! ```

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use patron::score::ScoringSettings;
use patron::score::models::{MODEL_INPUT_STAGE, fit_and_register};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution, Gamma};

const BATCH: usize = 65_536;

/// Simulates `n` customers' (x, t_x, T, mean repeat spend) in weeks, with day granularity,
/// first purchases spread over three years before the as-of day. True parameters: the
/// published CDNOW estimates.
fn simulate(n: usize, seed: u64) -> Vec<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("x", DataType::Float64, false),
        Field::new("t_x", DataType::Float64, false),
        Field::new("t_cal", DataType::Float64, false),
        Field::new("mean_repeat_spend", DataType::Float64, true),
    ]));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (r, alpha, a, b) = (0.243, 4.414, 0.793, 2.426);
    let (p, q, gamma) = (6.25, 3.74, 15.44);
    let lambda = Gamma::new(r, 1.0 / alpha).expect("gamma");
    let dropout = Beta::new(a, b).expect("beta");
    let nu = Gamma::new(q, 1.0 / gamma).expect("gamma");
    let mut batches = Vec::new();
    let mut start = 0;
    while start < n {
        let len = BATCH.min(n - start);
        let (mut ids, mut xs, mut txs, mut ts, mut ms) = (vec![], vec![], vec![], vec![], vec![]);
        for i in start..start + len {
            let t_days: u32 = rng.gen_range(0..1095);
            let (l, pd) = (lambda.sample(&mut rng), dropout.sample(&mut rng));
            let spend = Gamma::new(p, 1.0 / nu.sample(&mut rng)).expect("gamma");
            let (mut t, mut last_day, mut days, mut total) = (0.0_f64, 0u32, 0u32, 0.0);
            loop {
                t += -(1.0 - rng.r#gen::<f64>()).ln() / l;
                let day = (t * 7.0) as u32;
                if day > t_days {
                    break;
                }
                if day != last_day {
                    days += 1;
                    last_day = day;
                    total += spend.sample(&mut rng);
                }
                if rng.r#gen::<f64>() < pd {
                    break;
                }
            }
            ids.push(format!("C{i:08}"));
            xs.push(f64::from(days));
            txs.push(f64::from(last_day) / 7.0);
            ts.push(f64::from(t_days) / 7.0);
            ms.push((days > 0).then(|| total / f64::from(days)));
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(Float64Array::from(xs)),
            Arc::new(Float64Array::from(txs)),
            Arc::new(Float64Array::from(ts)),
            Arc::new(Float64Array::from(ms)),
        ];
        batches.push(RecordBatch::try_new(Arc::clone(&schema), columns).expect("batch"));
        start += len;
    }
    batches
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map_or(0.0, |kib| kib / 1024.0)
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip_while(|a| a != "--customers")
        .nth(1)
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100_000, 1_000_000, 10_000_000]);
    println!(
        "{:>11} {:>9} {:>10} {:>8} {:>8} {:>9} {:>10} {:>11} {:>9}",
        "customers", "sim s", "triples", "fit s", "bgnbd s", "gg s", "score s", "fit+score s", "peak MiB"
    );
    for n in sizes {
        let started = Instant::now();
        let batches = simulate(n, 42);
        let sim_s = started.elapsed().as_secs_f64();
        let ctx = SessionContext::new();
        let schema = batches[0].schema();
        let table = MemTable::try_new(schema, vec![batches]).expect("table");
        ctx.register_table(MODEL_INPUT_STAGE, Arc::new(table))
            .expect("register");

        let started = Instant::now();
        let models = fit_and_register(&ctx, &ScoringSettings::default()).await.expect("fit");
        let fit_s = started.elapsed().as_secs_f64();

        let started = Instant::now();
        let df = ctx
            .sql(&format!(
                "SELECT customer_id, bgnbd_p_alive(x, t_x, t_cal) AS p_alive, \
                 bgnbd_expected_purchases(90.0 / 7, x, t_x, t_cal) AS e90, \
                 bgnbd_expected_purchases(365.0 / 7, x, t_x, t_cal) AS e365, \
                 gg_expected_order_value(x, mean_repeat_spend) AS eov, \
                 bgnbd_discounted_purchases(x, t_x, t_cal, 12, 0.01) AS dp FROM {MODEL_INPUT_STAGE}"
            ))
            .await
            .expect("plan");
        let mut stream = df.execute_stream().await.expect("execute");
        let mut rows = 0;
        while let Some(batch) = stream.next().await {
            rows += batch.expect("batch").num_rows();
        }
        assert_eq!(rows, n);
        let score_s = started.elapsed().as_secs_f64();
        let bgnbd = models.bgnbd.as_ref().map_or(0.0, |m| m.fit_ms as f64 / 1000.0);
        let gg = models.gamma_gamma.as_ref().map_or(0.0, |m| m.fit_ms as f64 / 1000.0);
        let triples = models.bgnbd.as_ref().map_or(0, |m| m.distinct_inputs);
        println!(
            "{n:>11} {sim_s:>9.2} {triples:>10} {fit_s:>8.2} {bgnbd:>8.2} {gg:>9.2} {score_s:>10.2} {:>11.2} {:>9.0}",
            fit_s + score_s,
            peak_rss_mib()
        );
        if let Some(m) = &models.bgnbd {
            println!(
                "             bgnbd {:?} (truth r 0.243 alpha 4.414 a 0.793 b 2.426); {} iterations, LL {}",
                m.params, m.iterations, m.log_likelihood
            );
        }
        if let Some(m) = &models.gamma_gamma {
            println!(
                "             gamma-gamma {:?} (truth p 6.25 q 3.74 gamma 15.44); {} iterations, LL {}",
                m.params, m.iterations, m.log_likelihood
            );
        }
    }
}
