//! Integration tests through the real `patron` binary, one module per theme.

mod cli_errors;
mod crash;
mod degenerate;
mod generate;
mod publish;
mod run_fixtures;
mod stages;
mod support;
