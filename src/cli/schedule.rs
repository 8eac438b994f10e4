//! `patron schedule`: the scheduler daemon (see [`crate::schedule`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::config::{Overrides, Plan};
use crate::names::DEFAULT_HEALTH_ADDR;

/// Arguments of `patron schedule`.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Pipeline file with a `[schedule]` section; repeat for several pipelines.
    #[arg(long = "pipeline", default_value = "pipelines/default.toml")]
    pub pipelines: Vec<PathBuf>,
    /// Address of the health endpoint (`/healthz`, `/metrics`); port 0 picks a free one.
    #[arg(long, default_value = DEFAULT_HEALTH_ADDR)]
    pub listen: SocketAddr,
}

/// Loads every pipeline (each must have a schedule) and runs the daemon until
/// SIGTERM/SIGINT.
pub async fn run(args: ScheduleArgs) -> Result<(), CliError> {
    let mut plans = Vec::with_capacity(args.pipelines.len());
    for file in &args.pipelines {
        let mut plan = Plan::load(file, &Overrides::default())?;
        let Some(schedule) = plan.schedule.take() else {
            return Err(CliError::usage(format!(
                "{}: no [schedule] section: add one with at least `cron = \"...\"` (see docs/guide.md, Scheduling)",
                file.display()
            )));
        };
        if plans.iter().any(|(p, _): &(Plan, _)| p.name == plan.name) {
            return Err(CliError::usage(format!(
                "{}: pipeline `{}` is scheduled twice",
                file.display(),
                plan.name
            )));
        }
        plans.push((plan, schedule));
    }
    Ok(crate::schedule::run(plans, args.listen).await?)
}
