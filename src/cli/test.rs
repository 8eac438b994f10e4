//! `patron test`: run the data tests of the selected stages against the published
//! warehouse, print failures with their first rows and reproducing query.

use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::config::{AsOf, Overrides, Plan};
use crate::engine::build_context;
use crate::error::EXIT_TESTS_FAILED;
use crate::publish::read::{latest_manifest, register_published};
use crate::score::models;
use crate::transform::checks::{describe_failures, run_tests};
use crate::transform::discover::references;
use crate::transform::{discover, runner, select};

/// Arguments of `patron test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Pipeline file.
    #[arg(long, default_value = "pipelines/default.toml")]
    pub pipeline: PathBuf,
    /// Stages whose tests run (dbt syntax: `name`, `+name`, `name+`, `tag:x`, `layer:x`).
    #[arg(long, num_args = 1..)]
    pub select: Vec<String>,
    /// Stages to leave out (same syntax).
    #[arg(long, num_args = 1..)]
    pub exclude: Vec<String>,
    /// Warehouse folder or object store URL (overrides `run.warehouse`). `--out` is a hidden
    /// alias kept for one release.
    #[arg(long, alias = "out")]
    pub warehouse: Option<String>,
}

/// Runs the tests and prints a line per test.
pub async fn run(args: TestArgs) -> Result<(), CliError> {
    let overrides = Overrides {
        as_of: None,
        warehouse: args.warehouse,
        ..Overrides::default()
    };
    let plan = Plan::load(&args.pipeline, &overrides).map_err(|e| CliError::usage(e.to_string()))?;
    let project = discover(&plan.sql_dir).map_err(|e| CliError::usage(e.to_string()))?;
    let chosen = select::select(&project, &models::providers(), &args.select, &args.exclude)
        .map_err(|e| CliError::usage(e.to_string()))?;
    let manifest = latest_manifest(&plan.warehouse).await.map_err(|e| {
        CliError::usage(format!(
            "{e}\nno published run to test in {}; run `patron run` first",
            plan.warehouse
        ))
    })?;
    let as_of = manifest["as_of"]
        .as_str()
        .and_then(|d| AsOf::parse(d).ok())
        .and_then(|a| match a {
            AsOf::Date(d) => Some(d),
            AsOf::Latest => None,
        })
        .ok_or_else(|| CliError::failed("the latest manifest has no as_of date"))?;
    let spill = std::env::temp_dir();
    let ctx = build_context(&plan.engine, &spill, None)
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    let published = register_published(&ctx, &plan.warehouse)
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    runner::register_seeds(&ctx, project.seeds.values())
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    let mut tests: Vec<_> = project
        .stages
        .values()
        .filter(|s| chosen.contains(&s.name))
        .flat_map(|s| s.spec.tests.iter().cloned())
        .collect();
    for t in &project.singular_tests {
        if let crate::transform::spec::TestKind::Singular { sql } = &t.kind {
            let reads = references(&t.file, sql)
                .map_err(|e| CliError::usage(e.to_string()))?
                .tables;
            if reads.iter().any(|r| chosen.contains(r)) {
                tests.push(t.clone());
            }
        }
    }
    let missing: Vec<_> = tests
        .iter()
        .filter(|t| !t.table.is_empty() && !published.contains(&t.table))
        .map(|t| t.table.clone())
        .collect();
    if !missing.is_empty() {
        return Err(CliError::usage(format!(
            "not published in {}: {}; run `patron run` first",
            plan.warehouse,
            missing.join(", ")
        )));
    }
    let params = plan.scoring.sql_params(as_of);
    let outcomes = run_tests(&ctx, &tests, &params)
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    for o in &outcomes {
        let status = if o.passed() {
            "PASS"
        } else if o.blocks() {
            "FAIL"
        } else {
            "WARN"
        };
        println!(
            "{status} {:<22} {}",
            if o.table.is_empty() { "(singular)" } else { &o.table },
            o.name
        );
    }
    let failed = outcomes.iter().filter(|o| o.blocks()).count();
    let passed = outcomes.iter().filter(|o| o.passed()).count();
    println!(
        "{} tests: {passed} passed, {failed} failed, {} warned",
        outcomes.len(),
        outcomes.len() - passed - failed
    );
    if outcomes.iter().any(|o| !o.passed()) {
        eprint!("{}", describe_failures(&outcomes));
    }
    if failed > 0 {
        return Err(CliError {
            message: format!("{failed} data test(s) failed"),
            code: EXIT_TESTS_FAILED,
        });
    }
    Ok(())
}
