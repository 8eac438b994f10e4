//! `patron test`: runs the data tests of the selected stages against the published
//! warehouse ([`crate::transform::checks::test_published`]) and prints a line per test,
//! then the failures with their first rows and reproducing query.

use clap::Args;

use super::{CliError, OutAlias, PipelineArgs, SelectionArgs, WarehouseArgs};
use crate::config::Overrides;
use crate::transform::checks::{describe_failures, test_published};

/// Arguments of `patron test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The pipeline whose tests run.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// The stages whose tests run.
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// The warehouse whose published tables are tested.
    #[command(flatten)]
    pub warehouse: WarehouseArgs,
    /// `--out`, the hidden alias of `--warehouse`.
    #[command(flatten)]
    pub out: OutAlias,
}

/// Runs the tests and prints a line per test.
pub async fn run(args: TestArgs) -> Result<(), CliError> {
    let overrides = Overrides {
        warehouse: args.warehouse.or_out(args.out),
        ..Overrides::default()
    };
    let plan = args.pipeline.load(&overrides)?;
    let project = crate::pipeline::project(&plan).map_err(CliError::Stages)?;
    let outcomes = test_published(
        &plan,
        &project,
        &crate::score::step::providers(),
        &args.selection.select,
        &args.selection.exclude,
    )
    .await?;
    for o in &outcomes {
        let status = if o.passed() {
            "PASS"
        } else if o.blocks() {
            "FAIL"
        } else {
            "WARN"
        };
        outln!(
            "{status} {:<22} {}",
            if o.table.is_empty() { "(singular)" } else { &o.table },
            o.name
        );
    }
    let failed = outcomes.iter().filter(|o| o.blocks()).count();
    let passed = outcomes.iter().filter(|o| o.passed()).count();
    outln!(
        "{} tests: {passed} passed, {failed} failed, {} warned",
        outcomes.len(),
        outcomes.len() - passed - failed
    );
    if outcomes.iter().any(|o| !o.passed()) {
        eprint!("{}", describe_failures(&outcomes));
    }
    if failed > 0 {
        return Err(CliError::TestsFailed { failed });
    }
    Ok(())
}
