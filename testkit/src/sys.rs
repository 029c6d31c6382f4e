//! The operating system bits, from Linux `/proc` and a few syscalls: memory
//! and CPU figures, zombies and command lines, the open-file limit, and
//! signals to processes that are not our children (a broker a shim started
//! on its own).

use std::fs::{File, TryLockError};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::{Pid, Resource, Rlimit, Signal, getrlimit, kill_process, setrlimit};

/// One reading of a process's resident memory, in bytes, from
/// `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident set size now (`VmRSS`).
    pub rss: u64,
    /// Peak resident set size since the process started (`VmHWM`).
    pub peak: u64,
}

impl Memory {
    /// Reads `pid`'s memory; an error if the process is gone or this is not
    /// Linux.
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let kib =
            |field| field_kib(&status, field).with_context(|| format!("no {field} line in {path}"));
        Ok(Self {
            rss: kib("VmRSS:")? * 1024,
            peak: kib("VmHWM:")? * 1024,
        })
    }
}

/// Resident set size of `pid`, in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    Memory::of(pid).map(|m| m.rss)
}

/// Peak resident set size of `pid`, in bytes (`VmHWM`).
pub fn peak_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    Memory::of(pid).map(|m| m.peak)
}

/// `12.3 MiB`, for messages and reports.
pub fn mib(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let mib = bytes as f64 / (1024.0 * 1024.0);
    format!("{mib:.1} MiB")
}

/// The value of a `Name:   1234 kB` line.
fn field_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Whether `pid` is a zombie (exited, not yet reaped), or gone.
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Whether `pid` is running: it exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

/// Live processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !is_zombie(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// CPU time `pid` has used so far, user plus system, all threads. Tick
/// resolution (10 ms), which is plenty over a run of a second or more.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    /// `USER_HZ`: the unit of `/proc/<pid>/stat` times, 100 on Linux.
    const TICKS_PER_SECOND: u64 = 100;
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may contain spaces; fields are counted after its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("malformed {path}"))
    };
    // utime and stime are fields 14 and 15; `fields[0]` is field 3.
    let ticks = field(11)? + field(12)?;
    Ok(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
}

/// CPU counters, to tell afterwards how much of the machine other processes
/// took while the bench ran: on two shared cores that decides whether a
/// latency or a throughput figure can be trusted.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    /// All CPUs, in ticks: busy, and busy plus idle.
    busy: u64,
    total: u64,
    /// This process and its reaped children, in ticks.
    ours: u64,
}

impl CpuSnapshot {
    pub fn take() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        // "cpu  user nice system idle iowait irq softirq steal ..."
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let total: u64 = ticks.iter().sum();
        let idle = ticks.get(3)? + ticks.get(4)?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        let fields: Vec<u64> = own
            .rsplit_once(')')?
            .1
            .split_whitespace()
            // utime, stime, cutime, cstime: fields 14 to 17.
            .skip(11)
            .take(4)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        Some(Self {
            busy: total - idle,
            total,
            ours: fields.iter().sum(),
        })
    }

    /// The share of all CPUs that processes other than this one and its
    /// children used since `earlier`. Approximate: a broker the shim started
    /// on its own counts as "other", and tick counts are coarse.
    pub fn others_since(&self, earlier: &Self) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        let ours = self.ours.checked_sub(earlier.ours)?;
        #[allow(clippy::cast_precision_loss)]
        let share = busy.saturating_sub(ours) as f64 / total.max(1) as f64;
        Some(share)
    }
}

/// What became of a request for more open files.
pub struct NoFile {
    pub before: u64,
    pub now: u64,
    /// Why the OS gave less than asked, if it did.
    pub refused: Option<String>,
}

/// Raises this process's `RLIMIT_NOFILE` to at least `wanted` if it can.
/// Children inherit the limit, so a broker spawned afterwards gets it too.
pub fn raise_nofile(wanted: u64) -> NoFile {
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current.unwrap_or(u64::MAX);
    if before >= wanted {
        return NoFile {
            before,
            now: before,
            refused: None,
        };
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    // Raising the hard limit needs privilege; try it, then settle for the
    // hard limit as it stands.
    let attempt = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(wanted),
            maximum: Some(hard.max(wanted)),
        },
    );
    let refused = match attempt {
        Ok(()) => None,
        Err(e) => {
            let _ = setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(hard.min(wanted)),
                    maximum: limit.maximum,
                },
            );
            Some(format!(
                "the OS refused RLIMIT_NOFILE {wanted} ({e}); the hard limit is {hard}"
            ))
        }
    };
    NoFile {
        before,
        now: getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX),
        refused,
    }
}

/// The pid a broker wrote into its lock file, while it still holds the lock;
/// `None` once the lock is free, so a stale pid is never signalled.
pub fn lock_holder(lock: &Path) -> anyhow::Result<Option<u32>> {
    let file = match File::open(lock) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", lock.display())),
    };
    match file.try_lock() {
        // We got it, so nobody holds it; dropping the file releases it again.
        Ok(()) => Ok(None),
        Err(TryLockError::WouldBlock) => {
            let text = std::fs::read_to_string(lock)
                .with_context(|| format!("reading {}", lock.display()))?;
            let pid = text
                .trim()
                .parse()
                .with_context(|| format!("{} holds {text:?}, not a pid", lock.display()))?;
            Ok(Some(pid))
        }
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("testing the lock {}", lock.display()))
        }
    }
}

/// Stops the broker holding `lock`: SIGTERM, then SIGKILL if it has not let
/// go of the lock within `grace`. Waits on the lock, not the pid: the broker
/// is not our child, and as an orphan it may linger as a zombie.
pub async fn stop_lock_holder(lock: &Path, grace: Duration) -> anyhow::Result<()> {
    let Some(pid) = lock_holder(lock)? else {
        return Ok(());
    };
    signal(pid, Signal::TERM)?;
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if lock_holder(lock)?.is_none() {
            return Ok(());
        }
        // Another process's exit has no event we can await; poll briefly.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    signal(pid, Signal::KILL)?;
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if lock_holder(lock)?.is_none() {
            bail!("broker {pid} ignored SIGTERM for {grace:?} and was killed");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("broker {pid} still holds {} after SIGKILL", lock.display())
}

/// Last-resort cleanup from a `Drop`: SIGKILL whoever holds `lock`.
pub fn kill_lock_holder(lock: &Path) {
    if let Ok(Some(pid)) = lock_holder(lock) {
        let _ = signal(pid, Signal::KILL);
    }
}

pub fn signal(pid: u32, signal: Signal) -> anyhow::Result<()> {
    let raw = i32::try_from(pid).context("pid out of range")?;
    let pid = Pid::from_raw(raw).context("pid 0")?;
    match kill_process(pid, signal) {
        Ok(()) => Ok(()),
        // Already gone: what we wanted.
        Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("signalling process {pid}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        let status = "Name:\tx\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(field_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(field_kib(status, "VmHWM:"), Some(2048));
        assert_eq!(field_kib(status, "VmSwap:"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let memory = Memory::of(std::process::id()).expect("our own /proc entry");
        assert!(memory.rss > 0 && memory.peak >= memory.rss, "{memory:?}");
        assert!(is_alive(std::process::id()));
    }
}
