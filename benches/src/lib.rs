//! Shared by the benchmarks in `benches/`: the quick mode CI uses.
//!
//! `BENCH_QUICK=1` makes every benchmark run on tiny inputs, so that
//! `BENCH_QUICK=1 cargo test --benches` (criterion's test mode: each
//! benchmark runs once) checks in a few seconds that none has rotted.
//! Figures from a quick run mean nothing.

/// Whether `BENCH_QUICK` asks for the quick mode.
pub fn quick() -> bool {
    std::env::var_os("BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0")
}

/// `full` normally, `small` in quick mode; an explicit `var` overrides
/// both.
pub fn size(var: &str, full: u64, small: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick() { small } else { full })
}
