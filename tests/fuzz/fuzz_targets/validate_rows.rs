//! Arbitrary bytes through extract's reader and validation, as a CSV and as an NDJSON
//! export: no panic, and every record loaded or quarantined with its line
//! (`patron::extract::fuzz::check_input`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    patron::extract::fuzz::check_input(data);
});
