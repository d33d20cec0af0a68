//! Resource use of a server's process tree, read from `/proc` (X3).

use std::path::Path;

/// A sample of one process tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Processes in the tree.
    pub processes: u32,
    /// Resident memory of the tree, bytes.
    pub rss_bytes: u64,
    /// CPU time (user + system) of the live processes and their reaped children, ms.
    pub cpu_ms: u64,
}

/// Bound on the processes walked per sample (a fork bomb must not make the
/// monitor itself expensive).
const MAX_WALK: usize = 4096;

/// Samples the tree rooted at `pid` via `/proc/<pid>/task/*/children`.
pub fn sample(pid: u32) -> Option<Usage> {
    sample_in(Path::new("/proc"), pid)
}

fn sample_in(proc: &Path, pid: u32) -> Option<Usage> {
    let page = page_size();
    let tick_ms = 1000 / clock_ticks().max(1);
    let mut usage = Usage::default();
    let mut stack = vec![pid];
    let mut seen = 0usize;
    let mut root_ok = false;
    while let Some(p) = stack.pop() {
        seen += 1;
        if seen > MAX_WALK {
            break;
        }
        let Some(stat) = read_stat(proc, p) else { continue };
        if p == pid {
            root_ok = true;
        }
        usage.processes += 1;
        usage.rss_bytes = usage.rss_bytes.saturating_add(stat.rss_pages.saturating_mul(page));
        usage.cpu_ms = usage.cpu_ms.saturating_add(stat.ticks.saturating_mul(tick_ms));
        if let Ok(tasks) = std::fs::read_dir(proc.join(p.to_string()).join("task")) {
            for t in tasks.flatten() {
                if let Ok(kids) = std::fs::read_to_string(t.path().join("children")) {
                    stack.extend(kids.split_ascii_whitespace().filter_map(|k| k.parse::<u32>().ok()));
                }
            }
        }
    }
    root_ok.then_some(usage)
}

struct Stat {
    rss_pages: u64,
    ticks: u64,
}

fn read_stat(proc: &Path, pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(proc.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&text)
}

/// Parses `/proc/<pid>/stat`; the command name may contain spaces and parentheses.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14) ... rss(21)
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok()).map(|v| v.max(0) as u64);
    let ticks = n(11)? + n(12)? + n(13)? + n(14)?;
    Some(Stat {
        rss_pages: n(21)?,
        ticks,
    })
}

fn page_size() -> u64 {
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 { v as u64 } else { 4096 }
}

fn clock_ticks() -> u64 {
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 { v as u64 } else { 100 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_hostile_names() {
        let line = "42 (evil) 1 2 3 (x)) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 100 1000000 250 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.ticks, 13);
        assert_eq!(s.rss_pages, 250);
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S").is_none());
    }

    #[test]
    fn samples_this_process() {
        let u = sample(std::process::id()).unwrap();
        assert!(u.processes >= 1);
        assert!(u.rss_bytes > 0);
        assert!(sample(u32::MAX - 1).is_none());
    }
}
