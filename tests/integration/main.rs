//! Integration tests through the real `patron` binary, one module per theme.

mod cli_errors;
mod degenerate;
mod generate;
mod run_fixtures;
mod stages;
mod support;
