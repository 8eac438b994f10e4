//! Integration tests through the real `patron` binary, one module per theme.

mod ballista;
mod cdnow;
mod churn;
mod cli_errors;
mod crash;
mod data_tests;
mod degenerate;
mod docs;
mod evaluate;
mod generate;
mod golden;
mod history;
mod incremental;
mod malformed;
mod memory;
mod publish;
mod quarantine_cli;
mod recovery;
mod remote_sources;
mod remote_warehouse;
mod report;
mod run_fixtures;
mod schedule;
mod serve;
mod stages;
mod support;
