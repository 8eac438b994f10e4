//! Synthetic export generator: realistic, messy CRM exports from known true parameters.
//!
//! [`generate`] simulates a customer base in continuous time (unit: weeks) and streams three
//! exports into an output folder, in the fixture layout the pipeline reads:
//!
//! | source    | [`OutputFormat::Csv`]         | [`OutputFormat::Ndjson`]        | [`OutputFormat::Parquet`]        |
//! |-----------|-------------------------------|---------------------------------|----------------------------------|
//! | sales     | `sales/sales_<year>.csv`      | `sales/sales_<year>.ndjson`     | `sales/sales_<year>.parquet`     |
//! | service   | `service/tickets.csv`         | `service/tickets.ndjson`        | `service/tickets.parquet`        |
//! | marketing | `marketing/events.ndjson`     | `marketing/events.ndjson`       | `marketing/events.parquet`       |
//!
//! plus `truth.json` (options, true parameters, mess rates and the [`GenerateReport`]).
//! Sales files are split by the calendar year (UTC) of the order timestamp. The columns are
//! exactly those of `schemas/{sales,service,marketing}.schema.json`, in that order.
//!
//! # Model
//! * Purchases follow BG/NBD (Fader, Hardie, Lee 2005): per customer `lambda ~ Gamma(r,
//!   rate alpha)`, `p ~ Beta(a, b)`; the first purchase is at acquisition, repeat purchases
//!   come as a Poisson process with rate `lambda`, and after each repeat purchase the
//!   customer drops out with probability `p` (as in the model: no dropout right after the
//!   first purchase, which is what `p_alive = 1` for `x = 0` assumes).
//! * Order values follow Gamma-Gamma: per customer `nu ~ Gamma(q, rate gamma)`, each order
//!   value `z ~ Gamma(p, rate nu)`; an order's value is `sum(quantity * unit_price) -
//!   discount` (up to cent rounding).
//! * Service tickets and marketing events are correlated with the same latent dropout
//!   probability and with the customer's alive/dead state.
//!
//! # Determinism and memory
//! Everything is drawn from one `ChaCha8Rng::seed_from_u64(seed)` stream in a fixed order, so
//! the same options give byte-identical files. The draw sequence does not depend on the
//! output format nor on `messy` (mess decisions are always drawn, and only applied when
//! `messy` is set), so the clean run equals the messy run after staging (dedup, quarantine,
//! id and timestamp normalisation). Customers are processed one at a time; state is O(1) per
//! open writer plus a fixed-size reservoir of earlier buyers for referrals.

mod sim;
mod sink;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// File format of the generated exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// Fixture layout: sales and service as CSV (with header), marketing as NDJSON.
    #[default]
    Csv,
    /// Every source as NDJSON (one JSON object per line).
    Ndjson,
    /// Every source as Parquet (all columns nullable UTF-8 text, like the CSV cells).
    Parquet,
}

impl OutputFormat {
    /// The lower-case name (`csv`, `ndjson`, `parquet`).
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Csv => "csv",
            OutputFormat::Ndjson => "ndjson",
            OutputFormat::Parquet => "parquet",
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutputFormat {
    type Err = GenerateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "csv" => Ok(OutputFormat::Csv),
            "ndjson" | "jsonl" => Ok(OutputFormat::Ndjson),
            "parquet" => Ok(OutputFormat::Parquet),
            other => Err(GenerateError::InvalidOptions(format!(
                "unknown output format '{other}' (expected csv, ndjson or parquet)"
            ))),
        }
    }
}

/// The known parameters the synthetic customers are drawn from (time unit: weeks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrueParameters {
    /// BG/NBD: shape of the Gamma distribution of purchase rates `lambda`.
    pub r: f64,
    /// BG/NBD: rate of the Gamma distribution of `lambda` (per week).
    pub alpha: f64,
    /// BG/NBD: first shape of the Beta distribution of the dropout probability `p`.
    pub a: f64,
    /// BG/NBD: second shape of the Beta distribution of `p`.
    pub b: f64,
    /// Gamma-Gamma: shape of each order value `z ~ Gamma(p, rate nu)`.
    pub p: f64,
    /// Gamma-Gamma: shape of the Gamma distribution of `nu`.
    pub q: f64,
    /// Gamma-Gamma: rate of the Gamma distribution of `nu`.
    pub gamma: f64,
    /// Share of customer ids that are prospects: marketing events only, never buy.
    pub prospect_share: f64,
    /// Share of customer ids with service tickets only (no order, no marketing).
    pub service_only_share: f64,
    /// Share of buyers whose first order was referred by an earlier buyer.
    pub referral_share: f64,
    /// Share of orders that carry a discount.
    pub discount_share: f64,
    /// Share of order lines that carry a unit cost.
    pub unit_cost_share: f64,
    /// Per purchase: chance of an extra order placed just after it and cancelled (every
    /// line `status = cancelled`). Not a purchase; the BG/NBD truth is unchanged.
    #[serde(default)]
    pub cancel_share: f64,
    /// Per purchase: chance of an extra order placed just after it and returned in full
    /// (by a credit note of negative lines, or `status = returned`). Not a purchase.
    #[serde(default)]
    pub full_return_share: f64,
    /// Per purchase: chance that one unit of one undiscounted line comes back (a negative
    /// line in the same order, or a credit note naming it in `refund_of`). The purchase
    /// stays a purchase with a lower net value.
    #[serde(default)]
    pub partial_return_share: f64,
}

impl Default for TrueParameters {
    /// BG/NBD and Gamma-Gamma at the published CDNOW estimates (weeks, currency units).
    fn default() -> Self {
        TrueParameters {
            r: 0.243,
            alpha: 4.414,
            a: 0.793,
            b: 2.426,
            p: 6.25,
            q: 3.74,
            gamma: 15.44,
            prospect_share: 0.10,
            service_only_share: 0.02,
            referral_share: 0.08,
            discount_share: 0.20,
            unit_cost_share: 0.70,
            cancel_share: 0.03,
            full_return_share: 0.03,
            partial_return_share: 0.08,
        }
    }
}

impl TrueParameters {
    /// Expected order value `p * gamma / (q - 1)` (infinite when `q <= 1`).
    pub fn expected_order_value(&self) -> f64 {
        if self.q > 1.0 {
            self.p * self.gamma / (self.q - 1.0)
        } else {
            f64::INFINITY
        }
    }
}

/// Options of one generator run.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Number of distinct customer ids (buyers, prospects and service-only customers).
    pub customers: u64,
    /// Seed of the single random stream.
    pub seed: u64,
    /// Output folder (created if missing).
    pub out_dir: PathBuf,
    /// File format of the exports.
    pub format: OutputFormat,
    /// First day of the simulation window (00:00 UTC).
    pub start: NaiveDate,
    /// Length of the window in calendar years.
    pub years: u32,
    /// Inject realistic mess (duplicates, bad rows, id and timestamp variants).
    pub messy: bool,
    /// The true parameters.
    pub truth: TrueParameters,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            customers: 2000,
            seed: 42,
            out_dir: PathBuf::from("fixtures"),
            format: OutputFormat::Csv,
            start: NaiveDate::from_ymd_opt(2023, 1, 1).unwrap_or_default(),
            years: 3,
            messy: true,
            truth: TrueParameters::default(),
        }
    }
}

/// What was written for one source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SourceReport {
    /// Data rows (lines) written, header excluded: `valid_rows + duplicate_rows + bad_rows`.
    pub rows: u64,
    /// Distinct simulated rows (what staging must keep).
    pub valid_rows: u64,
    /// Exact copies of a valid row written a second time.
    pub duplicate_rows: u64,
    /// Extra rows the validator must quarantine (one per line; never duplicated).
    pub bad_rows: u64,
    /// Bad rows by kind (e.g. `bad_timestamp`, `ragged_row`, `not_json`).
    pub bad_by_kind: BTreeMap<String, u64>,
    /// Valid rows whose customer id has mixed case or surrounding spaces.
    pub id_variants: u64,
    /// Valid rows with `YYYY-MM-DD HH:MM:SS` timestamps (no zone, meaning UTC).
    pub naive_timestamps: u64,
    /// Valid rows with timestamps carrying a non-zero UTC offset (same instant).
    pub offset_timestamps: u64,
}

/// Summary of a generator run (also written into `truth.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GenerateReport {
    /// Distinct customer ids.
    pub customers: u64,
    /// Customers with at least one order.
    pub buyers: u64,
    /// Customers with marketing events only.
    pub prospects: u64,
    /// Customers with service tickets only.
    pub service_only: u64,
    /// Buyers whose first order carries `referred_by`.
    pub referred_customers: u64,
    /// Distinct orders that are purchases (the BG/NBD purchases; extra cancelled and fully
    /// returned orders are not counted here).
    pub orders: u64,
    /// Extra orders cancelled in full.
    pub cancelled_orders: u64,
    /// Extra orders returned in full.
    pub returned_orders: u64,
    /// Purchases with one unit returned.
    pub partial_returns: u64,
    /// Revenue taken back by full and partial returns, in cents.
    pub returned_revenue_cents: i64,
    /// Sales rows (order lines).
    pub sales: SourceReport,
    /// Service rows (tickets).
    pub service: SourceReport,
    /// Marketing rows (events).
    pub marketing: SourceReport,
    /// Data files written, relative to the output folder, sorted (`truth.json` not included).
    pub files: Vec<String>,
}

/// Errors of the generator.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The options are not usable.
    #[error("invalid generator options: {0}")]
    InvalidOptions(String),
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a Parquet file failed.
    #[error("Parquet error on {path}: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Writing `truth.json` failed.
    #[error("JSON error on {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
}

/// Mess rates (applied only when `messy`; always drawn so the stream does not depend on it).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MessRates {
    /// Probability that a valid row is written twice.
    pub duplicate: f64,
    /// Probability that a sales order is followed by one bad extra line.
    pub bad_sales_per_order: f64,
    /// Probability that a ticket is followed by one bad extra ticket.
    pub bad_service: f64,
    /// Probability that an event is followed by one bad extra event.
    pub bad_marketing: f64,
    /// Probability that a row's customer id has mixed case or spaces.
    pub id_variant: f64,
    /// Probability of a `YYYY-MM-DD HH:MM:SS` timestamp.
    pub naive_timestamp: f64,
    /// Probability of a timestamp with a UTC offset.
    pub offset_timestamp: f64,
    /// NDJSON only: probability that a row writes nulls as `""`.
    pub empty_string_null: f64,
}

pub(crate) const MESS: MessRates = MessRates {
    duplicate: 0.006,
    bad_sales_per_order: 0.01,
    bad_service: 0.008,
    bad_marketing: 0.003,
    id_variant: 0.02,
    naive_timestamp: 0.08,
    offset_timestamp: 0.05,
    empty_string_null: 0.10,
};

#[derive(Serialize)]
struct TruthOptions {
    seed: u64,
    customers: u64,
    start: String,
    years: u32,
    format: OutputFormat,
    messy: bool,
}

#[derive(Serialize)]
struct TruthWindow {
    start: String,
    end: String,
    weeks: f64,
}

#[derive(Serialize)]
struct Truth<'a> {
    generator: &'static str,
    truth_version: u32,
    time_unit: &'static str,
    options: TruthOptions,
    window: TruthWindow,
    true_parameters: &'a TrueParameters,
    expected_order_value: f64,
    mess_rates: &'a MessRates,
    notes: Vec<&'static str>,
    report: &'a GenerateReport,
}

/// Checks the options before anything is written.
fn validate(opts: &GenerateOptions) -> Result<(), GenerateError> {
    let t = &opts.truth;
    let bad = |m: String| Err(GenerateError::InvalidOptions(m));
    if opts.customers == 0 {
        return bad("customers must be at least 1".into());
    }
    if opts.years == 0 || opts.years > 200 {
        return bad(format!("years must be 1..=200, got {}", opts.years));
    }
    for (name, v) in [
        ("r", t.r),
        ("alpha", t.alpha),
        ("a", t.a),
        ("b", t.b),
        ("p", t.p),
        ("q", t.q),
        ("gamma", t.gamma),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return bad(format!("true parameter {name} must be finite and > 0, got {v}"));
        }
    }
    for (name, v) in [
        ("prospect_share", t.prospect_share),
        ("service_only_share", t.service_only_share),
        ("referral_share", t.referral_share),
        ("discount_share", t.discount_share),
        ("unit_cost_share", t.unit_cost_share),
        ("cancel_share", t.cancel_share),
        ("full_return_share", t.full_return_share),
        ("partial_return_share", t.partial_return_share),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return bad(format!("{name} must be in [0, 1], got {v}"));
        }
    }
    if t.cancel_share + t.full_return_share > 1.0 {
        return bad("cancel_share + full_return_share must be <= 1".into());
    }
    if t.prospect_share + t.service_only_share > 1.0 {
        return bad("prospect_share + service_only_share must be <= 1".into());
    }
    Ok(())
}

/// Removes generator-named files of earlier runs (any format) so the folder holds one run.
fn remove_stale(out_dir: &Path) -> Result<(), GenerateError> {
    let is_ours = |sub: &str, name: &str| -> bool {
        let (stem, ext) = match name.rsplit_once('.') {
            Some(x) => x,
            None => return false,
        };
        if !matches!(ext, "csv" | "ndjson" | "parquet") {
            return false;
        }
        match sub {
            "sales" => stem
                .strip_prefix("sales_")
                .is_some_and(|y| !y.is_empty() && y.bytes().all(|b| b.is_ascii_digit())),
            "service" => stem == "tickets",
            _ => stem == "events",
        }
    };
    for sub in ["sales", "service", "marketing"] {
        let dir = out_dir.join(sub);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(GenerateError::Io { path: dir, source: e });
            }
        };
        let mut stale = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| GenerateError::Io {
                path: dir.clone(),
                source: e,
            })?;
            if let Some(name) = entry.file_name().to_str()
                && is_ours(sub, name)
            {
                stale.push(entry.path());
            }
        }
        stale.sort();
        for path in stale {
            std::fs::remove_file(&path).map_err(|e| GenerateError::Io { path, source: e })?;
        }
    }
    Ok(())
}

/// Each buyer's true state, beside `truth.json`: `customer_id` (canonical), `acquired_at`
/// (first purchase), `purchase_rate_per_week` (lambda), `dropout_probability` (p, per repeat
/// purchase), `purchases`, `dropped_out` (`true` when the customer dropped out before the
/// window end) and `dropout_at` (the purchase after which they dropped out; empty while
/// alive). A customer counts as dropped out as of a day when `dropout_at` is before its end.
pub const TRUTH_CUSTOMERS_FILE: &str = "truth_customers.csv";

/// Generates the synthetic exports and `truth.json` into `opts.out_dir`.
///
/// Earlier generator files in `sales/`, `service/` and `marketing/` (any of the three
/// formats) are removed first, so the folder holds exactly one run. Returns what was
/// written; the same counts are in `truth.json`.
pub fn generate(opts: &GenerateOptions) -> Result<GenerateReport, GenerateError> {
    validate(opts)?;
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| GenerateError::Io {
        path: opts.out_dir.clone(),
        source: e,
    })?;
    remove_stale(&opts.out_dir)?;
    let began = std::time::Instant::now();
    let (report, window) = sim::run(opts)?;

    let truth = Truth {
        generator: "patron generate",
        truth_version: 1,
        time_unit: "weeks",
        options: TruthOptions {
            seed: opts.seed,
            customers: opts.customers,
            start: opts.start.format("%Y-%m-%d").to_string(),
            years: opts.years,
            format: opts.format,
            messy: opts.messy,
        },
        window: TruthWindow {
            start: window.start,
            end: window.end,
            weeks: window.weeks,
        },
        true_parameters: &opts.truth,
        expected_order_value: opts.truth.expected_order_value(),
        mess_rates: &MESS,
        notes: vec![
            "Customer ids C0000001.. are in order of acquisition; canonical id = trim + upper-case.",
            "Modified BG/NBD: first purchase at acquisition, repeat purchases Poisson(lambda), dropout with probability p after every purchase, the first included.",
            "Order value = sum(quantity * unit_price) - discount (up to cent rounding) ~ Gamma(p, rate nu).",
            "Bad rows are extra lines (never duplicated); valid rows are exactly the simulated data.",
            "A bad sales row is an extra line (line_no k+1) of an existing order; bad tickets/events use their own fresh id.",
            "Returns (own random stream): after a purchase O, an extra order O-X cancelled in full (cancel_share), or O-R returned in full by credit note O-RC (refund_of O-R) or by status returned (full_return_share); a partial return of one unit as line 100+n of O or credit note O-C (partial_return_share). Only the BG/NBD purchases are purchases.",
            "Timestamps: YYYY-MM-DDTHH:MM:SSZ, YYYY-MM-DD HH:MM:SS (UTC) or with a UTC offset (same instant).",
            "The random draw sequence does not depend on format or messy: the clean run equals the messy run after staging.",
        ],
        report: &report,
    };
    let path = opts.out_dir.join("truth.json");
    let file = File::create(&path).map_err(|e| GenerateError::Io {
        path: path.clone(),
        source: e,
    })?;
    let mut w = BufWriter::new(file);
    serde_json::to_writer_pretty(&mut w, &truth).map_err(|e| GenerateError::Json {
        path: path.clone(),
        source: e,
    })?;
    w.write_all(b"\n")
        .and_then(|()| w.flush())
        .map_err(|e| GenerateError::Io { path, source: e })?;
    tracing::info!(
        customers = report.customers,
        buyers = report.buyers,
        orders = report.orders,
        sales_rows = report.sales.rows,
        service_rows = report.service.rows,
        marketing_rows = report.marketing.rows,
        elapsed_ms = began.elapsed().as_millis() as u64,
        "synthetic exports generated in {}",
        opts.out_dir.display()
    );
    Ok(report)
}
