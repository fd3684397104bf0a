//! Helpers shared by the in-crate property tests.

use proptest::prelude::*;

use crate::openai::tokens::TokenCounter;
use proptest::sample::Index;
use proptest::test_runner::RngSeed;

/// Property-test settings: `cases` runs, nothing persisted between runs (CI starts clean).
/// Local runs draw new inputs each time; under `CI` the seed is fixed, so a landing is judged
/// on the same inputs every time.
pub fn cases(cases: u32) -> ProptestConfig {
    let rng_seed = if std::env::var_os("CI").is_some() {
        RngSeed::Fixed(0x51u64 << 32 | 0x1ce_6a7e)
    } else {
        RngSeed::Random
    };
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed,
        ..ProptestConfig::default()
    }
}

/// `bytes` cut at the points `cuts` pick, in order.
pub fn split_at<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut parts = Vec::with_capacity(points.len() + 1);
    let mut at = 0;
    for point in points {
        parts.push(&bytes[at..point]);
        at = point;
    }
    parts.push(&bytes[at..]);
    parts
}

/// Byte strings made mostly of `pieces` (the grammar's tokens), sometimes of anything at all.
pub fn mostly(pieces: Vec<&'static [u8]>, count: usize) -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        3 => prop::sample::select(pieces).prop_map(<[u8]>::to_vec),
        1 => prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(piece, 0..count).prop_map(|pieces| pieces.concat())
}

/// The bytes of a golden transcript in `proto/`.
pub fn golden(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/proto/{name}", env!("CARGO_MANIFEST_DIR")))
        .expect("golden transcript exists")
}

/// The tokenizer the tests count with.
pub fn o200k() -> TokenCounter {
    TokenCounter::new(crate::config::Tokenizer::O200kBase)
}
