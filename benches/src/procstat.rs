//! CPU time and peak memory of a proxy, read from `/proc`: a process and its children (nginx's
//! workers), so a multi-process proxy is measured whole.

use std::fs;

/// Clock ticks per second for `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// `pid` and every process whose parent is `pid`.
fn family(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if stat_fields(child).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(pid) {
                pids.push(child);
            }
        }
    }
    pids
}

/// The fields of `/proc/<pid>/stat` after the command name (so index 0 is `state`).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is parenthesised and may hold spaces; everything after it splits cleanly.
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// User plus system CPU seconds used so far by `pid` and its children.
pub fn cpu_seconds(pid: u32) -> f64 {
    family(pid)
        .into_iter()
        .filter_map(stat_fields)
        .map(|f| {
            // utime and stime are fields 14 and 15 of stat, 11 and 12 after the name.
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (ticks(11) + ticks(12)) / TICKS_PER_SECOND
        })
        .sum()
}

/// CPU time used so far by every thread of `pid`, to the nanosecond (the scheduler's
/// account, `/proc/<pid>/task/*/schedstat`), for costs far below a clock tick.
pub fn cpu_nanos(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Resident memory now (`VmRSS`) of `pid`, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    status_kib(pid, "VmRSS:") / 1024.0
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// Peak resident memory (`VmHWM`) of `pid` and its children, in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    family(pid)
        .into_iter()
        .map(|p| status_kib(p, "VmHWM:"))
        .sum::<f64>()
        / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        // Burn a little CPU so the counter is above zero.
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(cpu_seconds(me) > 0.0);
        assert!(cpu_nanos(me) > 0);
        assert!(peak_rss_mib(me) > 1.0);
        assert!(rss_mib(me) > 1.0);
    }
}
