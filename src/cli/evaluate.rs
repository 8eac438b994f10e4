//! `patron evaluate`: a backtest of the purchase and churn models (docs/scoring.md): the
//! arguments, the call to [`crate::evaluate`] and the printed summary.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, PipelineArgs, WarehouseArgs};
use crate::config::AsOf;
use crate::evaluate::{EvaluateOptions, EvaluationReport, evaluate};
use crate::score::backtest::HoldoutSpec;

/// Arguments of `patron evaluate`.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// The pipeline to evaluate.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Holdout length before the end of the data: `90d`, `12w`, `6m` (months of 365.25 / 12
    /// days) or a number of days.
    #[arg(long, default_value = "90d", value_parser = HoldoutSpec::parse)]
    pub holdout: HoldoutSpec,
    /// End of the data YYYY-MM-DD (or `latest`, the latest event date): the holdout ends here.
    #[arg(long, value_parser = AsOf::parse)]
    pub as_of: Option<AsOf>,
    /// The warehouse (a local folder); unless `--out` says otherwise, the evaluation goes to
    /// `<warehouse>/evaluations/<evaluation_id>/`.
    #[command(flatten)]
    pub warehouse: WarehouseArgs,
    /// The folder the evaluation goes to (its scratch runs, `tables/evaluation` and
    /// `evaluation.json`): a new or empty folder.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The true state of each customer (`truth_customers.csv` of `patron generate`): also
    /// report how well the end-of-data run's churn scores find the customers who truly
    /// dropped out by its as-of day.
    #[arg(long)]
    pub truth: Option<PathBuf>,
}

/// Runs the evaluation and prints a short summary.
pub async fn run(args: EvaluateArgs) -> Result<(), CliError> {
    let options = EvaluateOptions {
        pipeline: args.pipeline.pipeline,
        holdout: args.holdout,
        as_of: args.as_of,
        warehouse: args.warehouse.warehouse,
        out: args.out,
        truth: args.truth,
    };
    let (report, report_path) = evaluate(&options).await?;
    print_summary(&report, &report_path);
    Ok(())
}

fn print_summary(r: &EvaluationReport, report_path: &Path) {
    let num = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}"));
    outln!("evaluation {}", r.evaluation_id);
    outln!("  calibration  to {} (run {})", r.calibration_end, r.calibration_run_id);
    outln!("  holdout      {} ({} days), to {}", r.holdout, r.holdout_days, r.end);
    outln!(
        "  customers    {} calibration buyers, {} purchased in the holdout",
        r.customers,
        r.purchased_in_holdout
    );
    outln!("  MAE          {} purchases per customer", num(r.mae));
    outln!(
        "  purchases    {:.1} predicted, {} actual (ratio {})",
        r.total_predicted,
        r.total_actual,
        num(r.ratio)
    );
    outln!(
        "  AUC          {} p_no_purchase_90d for no purchase in the holdout{}",
        num(r.auc),
        r.auc_note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
    );
    outln!(
        "               {} among the {} repeat buyers ({} of the {} one-time buyers purchased)",
        num(r.auc_repeat_buyers),
        r.auc_repeat_buyers_customers,
        r.one_time_buyers_purchased,
        r.one_time_buyers
    );
    outln!(
        "               {} expected purchases, reversed",
        num(r.auc_predicted_purchases)
    );
    for c in &r.churn_comparison {
        outln!(
            "  {:<20} ({:<8}) AUC {}  precision@10% {}  Brier {}  ({} customers, {} without a purchase)",
            c.score,
            c.model,
            num(c.auc),
            num(c.precision_at_top_10pct),
            num(c.brier),
            c.customers,
            num(c.churn_rate)
        );
        let bins: Vec<String> = c
            .calibration
            .iter()
            .map(|b| {
                format!(
                    "{:.1}-{:.1}: {:.2} vs {:.2} (n={})",
                    b.from, b.to, b.mean_predicted, b.observed_rate, b.customers
                )
            })
            .collect();
        outln!(
            "    calibration (score bin: mean score vs observed) {}",
            bins.join("; ")
        );
    }
    if let Some(t) = &r.truth {
        outln!(
            "  truth        {} buyers as of {}, {} truly dropped out ({} unknown to {})",
            t.customers,
            t.as_of,
            t.dropped_out,
            t.unknown_customers,
            t.file
        );
        for s in &t.scores {
            outln!(
                "  {:<18} AUC {}  Brier {}  for dropped out ({} customers)",
                s.score,
                num(s.auc),
                num(s.brier),
                s.customers
            );
        }
    }
    outln!("table:  {}", r.table);
    outln!("report: {}", report_path.display());
}
