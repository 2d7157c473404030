//! What this process costs: CPU time (`getrusage`), one thread's CPU time (by name, from
//! `/proc/self/task/*/schedstat`) and peak resident memory (`VmHWM`).

use std::time::Duration;

/// User plus system CPU time of the whole process (every thread) so far.
pub fn process_cpu() -> Duration {
    // SAFETY: `getrusage` only writes the struct it is given.
    let ru = unsafe {
        let mut ru = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time of the calling thread so far (`CLOCK_THREAD_CPUTIME_ID`).
pub fn current_thread_cpu() -> Duration {
    // SAFETY: `clock_gettime` only writes the struct it is given.
    let ts = unsafe {
        let mut ts = std::mem::zeroed::<libc::timespec>();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        ts
    };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time so far of this process's threads named `name` (`comm`, at most 15 bytes), or
/// `None` when there is none or the kernel has no schedstat.
pub fn thread_cpu(name: &str) -> Option<Duration> {
    let mut total = None;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("schedstat")).ok()?;
        let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
        *total.get_or_insert(Duration::ZERO) += Duration::from_nanos(ns);
    }
    total
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident set size so far (`VmHWM`), in bytes.
pub fn peak_rss() -> Option<u64> {
    status_kb("VmHWM:")
}

/// Current resident set size (`VmRSS`), in bytes.
pub fn rss() -> Option<u64> {
    status_kb("VmRSS:")
}

/// Resets `VmHWM` to the current RSS (Linux `clear_refs` value 5), so a later
/// [`peak_rss`] covers only what follows. Returns whether it worked.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
