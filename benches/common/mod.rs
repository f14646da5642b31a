//! Pieces shared by the root crate's bench binaries (included with `mod common;`).

/// The CPU's model name from /proc/cpuinfo ("unknown CPU" elsewhere): every absolute time a
/// bench prints names the CPU it was measured on.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
