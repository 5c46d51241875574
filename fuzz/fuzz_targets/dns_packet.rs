//! cargo-fuzz target: arbitrary bytes as a DNS request, into both answer paths.
//! Run: `cargo +nightly fuzz run dns_packet -- -max_total_time=60` (from the repository root).
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

static HARNESS: OnceLock<harness::Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let harness = HARNESS.get_or_init(|| {
        harness::Harness::new(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../zones"))
    });
    harness.run(data);
});
