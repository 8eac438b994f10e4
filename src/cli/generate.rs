//! `patron generate`: synthetic exports for demos, tests and benchmarks.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::CliError;
use crate::generate::{GenerateOptions, OutputFormat, TrueParameters, generate};

/// File format of the generated exports.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// Sales and service as CSV, marketing as NDJSON (the fixture layout).
    Csv,
    /// Every source as NDJSON.
    Ndjson,
    /// Every source as Parquet.
    Parquet,
}

/// Arguments of `patron generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of customers to simulate.
    #[arg(long, default_value_t = 2000)]
    pub customers: u64,
    /// Random seed; the same seed gives byte-identical files.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output folder (sales/, service/, marketing/, truth.json).
    #[arg(long)]
    pub out: PathBuf,
    /// File format.
    #[arg(long, value_enum, default_value = "csv")]
    pub format: FormatArg,
    /// First day of the simulated window (YYYY-MM-DD).
    #[arg(long, default_value = "2023-01-01")]
    pub start: chrono::NaiveDate,
    /// Length of the window in years.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub years: u32,
    /// Write clean data only (no duplicates, no unparseable rows).
    #[arg(long)]
    pub clean: bool,
    /// No cancelled, returned or refunded orders (docs/returns.md, The generator): every
    /// order value is then exactly a Gamma-Gamma draw, as model-recovery checks need.
    #[arg(long)]
    pub no_returns: bool,
}

/// Generates the exports and prints what was written.
pub fn run(args: GenerateArgs) -> Result<(), CliError> {
    let opts = GenerateOptions {
        customers: args.customers,
        seed: args.seed,
        out_dir: args.out,
        format: match args.format {
            FormatArg::Csv => OutputFormat::Csv,
            FormatArg::Ndjson => OutputFormat::Ndjson,
            FormatArg::Parquet => OutputFormat::Parquet,
        },
        start: args.start,
        years: args.years,
        messy: !args.clean,
        truth: if args.no_returns {
            TrueParameters {
                cancel_share: 0.0,
                full_return_share: 0.0,
                partial_return_share: 0.0,
                ..TrueParameters::default()
            }
        } else {
            TrueParameters::default()
        },
    };
    let report = generate(&opts)?;
    outln!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    Ok(())
}
