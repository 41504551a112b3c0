//! Facts about this process that benchmarks and evaluations report (peak resident memory), and
//! how it ends when its output is closed.

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

/// Makes a write to a closed pipe end the process as it ends `cat` or `grep` (SIGPIPE's default
/// action) instead of a panic: Rust starts programs with SIGPIPE ignored, so `s3mem stats |
/// head -1` made `println!` fail and panic. Sockets are unaffected (the standard library writes
/// them with `MSG_NOSIGNAL`, so the gRPC client still sees a closed peer as an error). Call it
/// in `main` before any thread starts; the daemon does not (a closed log pipe must not end it).
pub fn end_quietly_on_closed_pipe() {
    #[cfg(unix)]
    default_sigpipe();
}

#[cfg(unix)]
#[expect(
    unsafe_code,
    reason = "setting SIGPIPE's disposition; the SAFETY comment says why it is sound"
)]
fn default_sigpipe() {
    // SAFETY: `signal` with SIG_DFL installs no handler (no code runs on the signal); it is
    // called once from `main` before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
