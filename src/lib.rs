//! patron: a customer data warehouse pipeline.
//!
//! One run goes through the phases in order, each its own module:
//! [`config`] turns a pipeline file into a validated [`config::Plan`];
//! [`extract`] reads the exports, validates them against their declared schemas and writes
//! good rows to Parquet and bad rows to the quarantine; [`transform`] runs the SQL stages in
//! dependency order on the session [`engine`] builds; [`score`] supplies the scoring
//! settings; [`publish`] moves the finished tables into the warehouse and writes the run
//! manifest. [`pipeline`] wires the phases into one run, [`cli`] is the command line, and
//! [`generate`] makes synthetic exports for tests and demos.

pub mod cli;
pub mod config;
pub mod docs;
pub mod engine;
pub mod error;
pub mod extract;
pub mod failpoint;
pub mod generate;
pub mod names;
pub mod pipeline;
pub mod process_stats;
pub mod progress;
pub mod publish;
pub mod remote;
pub mod report;
pub mod schedule;
pub mod score;
pub mod serve;
pub mod storage;
pub mod transform;
pub mod warehouse;
