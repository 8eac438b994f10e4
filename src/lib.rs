//! patron: a customer data warehouse pipeline.
//!
//! One run goes through the phases in order, each its own module with one entry point:
//! [`config`] turns a pipeline file into a validated [`config::Plan`];
//! [`extract`] reads the exports, validates them against their declared schemas and writes
//! good rows to Parquet and bad rows to the quarantine ([`extract::run_sources`]);
//! [`transform`] runs the SQL stages wave by wave in dependency order on the session
//! [`engine`] builds ([`transform::run_wave`]); [`score`] fits the models after the waves
//! that feed them ([`score::step`]); [`publish`] commits the finished tables into the
//! warehouse ([`publish::commit`]) and writes the run manifest. [`pipeline`] wires the phases
//! into one run, [`schedule`] and [`evaluate`] run pipelines, [`cli`] is the command line, and
//! [`generate`] makes synthetic exports for tests and demos.
//!
//! Imports run one way, from the command line down: `cli` -> `schedule`/`evaluate` ->
//! `pipeline` -> the phases -> `engine`, `storage`, `warehouse`, and the small shared pieces
//! at the bottom ([`problems`], [`quote`], [`names`], [`exit_codes`], [`key_filter`]).

pub mod cli;
pub mod config;
pub mod docs;
pub mod engine;
pub mod error;
pub mod evaluate;
pub mod exit_codes;
pub mod extract;
pub mod failpoint;
pub mod generate;
pub mod key_filter;
pub mod names;
pub mod pipeline;
pub mod problems;
pub mod process_stats;
pub mod progress;
pub mod publish;
pub mod quote;
pub mod remote;
pub mod report;
pub mod schedule;
pub mod score;
pub mod serve;
pub mod storage;
pub mod transform;
pub mod warehouse;
