//! Facts about this process that benchmarks and evaluations report (peak resident memory), and
//! the one process-wide setting a GPU build makes (how malloc keeps freed memory).

/// Returns the process's peak resident set size in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Returns the 1-minute load average (Linux): on a shared machine it says how much a
/// benchmark's number can be trusted.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resets the peak resident set size to the current one (Linux `clear_refs`), so that
/// [`peak_rss_bytes`] measures from now on; false where the kernel does not allow it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Largest block glibc's malloc serves from its heap (above it, a mapping of its own, faulted
/// in afresh each time): the setting measured in run 19, above a batch of 8 Llama-3-8B-shape
/// windows' taps of one layer (19 MiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HEAP_BLOCK_MAX: i32 = 32 << 20;

/// Free memory at the top of the heap that glibc keeps before giving it back to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HEAP_KEEP: i32 = 1 << 30;

/// Makes glibc's malloc keep and reuse freed memory: one arena for all threads, blocks up to
/// 32 MiB served from the heap, and the heap trimmed only past 1 GiB free. Call it first thing,
/// before any thread starts (glibc reads the arena limit once). Returns whether every setting
/// took (false where the C library is not glibc).
///
/// Why (docs/gpu.md, run 19): a GPU scan that copies each batch's key taps to the host (SAE
/// training, `bench scan --taps host`) allocates tens of MiB per batch on its model thread.
/// In glibc's per-thread arenas those blocks came from heaps that were unmapped once empty,
/// so every batch faulted its pages in afresh: 3.55M page faults and 6-7 s of kernel time on
/// the thread that launches the GPU's work, and the 1M-token Llama-3-8B-shape scan at 41-43%
/// MFU instead of 54-55% in every process but a machine's first. With these settings (the
/// `GLIBC_TUNABLES` equivalent measured there) the same scan faulted 1,039 times and ran at
/// 54.2-54.3%. Builds with the `cuda` feature call it; CPU builds keep glibc's defaults.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let settings = [
            (libc::M_ARENA_MAX, 1),
            (libc::M_MMAP_THRESHOLD, HEAP_BLOCK_MAX),
            (libc::M_TRIM_THRESHOLD, HEAP_KEEP),
        ];
        settings.iter().all(|&(param, value)| mallopt(param, value))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(
    unsafe_code,
    reason = "glibc's mallopt; the SAFETY comment says why it is sound"
)]
fn mallopt(param: i32, value: i32) -> bool {
    // SAFETY: mallopt takes two integers, touches only malloc's own settings under its lock and
    // reports a value it refuses by returning 0; no pointer crosses.
    unsafe { libc::mallopt(param, value) == 1 }
}
