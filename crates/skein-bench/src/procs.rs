//! Processes and files the orchestrator owns, and what `/proc` says about them.
//!
//! Every long-running child (backends, sinks, proxies, nginx) is a [`Proc`]: it runs in its
//! own process group, with its output in a log file, and is stopped — the whole group, so
//! nginx workers go with their master — when the handle drops, on success, error or Ctrl-C
//! alike. As a last resort the kernel kills it if the orchestrator itself dies
//! (`PR_SET_PDEATHSIG`). [`TempDir`] removes its directory on drop. [`usage`] reads CPU time
//! and memory of a process and its descendants.

use anyhow::{bail, Context};
use serde::Serialize;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process stopped (with its process group) when dropped, or a process another
/// one owns, watched but left alone ([`Proc::adopt`]).
pub struct Proc {
    /// What it is, for messages (e.g. `skein outbound proxy`).
    pub name: String,
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
    /// How long the group may take to exit after SIGTERM before it is killed.
    grace: Duration,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr going to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
        let out =
            fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_string(),
            pid: child.id(),
            child: Some(child),
            log: log.to_path_buf(),
            grace: Duration::from_millis(1500),
        })
    }

    /// A process some other child started and stops (a proxy under `skein run`): measured
    /// and checked like the others, its output in `log`, never signalled from here.
    pub fn adopt(name: &str, pid: u32, log: &Path) -> Proc {
        Proc {
            name: name.to_string(),
            child: None,
            pid,
            log: log.to_path_buf(),
            grace: Duration::ZERO,
        }
    }

    /// Gives the process group `grace` to exit after SIGTERM (default 1.5 s), for a child
    /// that cleans up after itself, such as `skein run`.
    pub fn with_grace(mut self, grace: Duration) -> Proc {
        self.grace = grace;
        self
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends SIGINT to the process alone, not its group (what Ctrl-C in a terminal does to
    /// a program that stops its own children in order, such as `skein demo`), and waits
    /// at most `within` for it to exit; true if it did. Dropping the handle afterwards
    /// still stops whatever is left of the group.
    pub fn interrupt(&mut self, within: Duration) -> bool {
        let Some(child) = &mut self.child else {
            return false;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        // SAFETY: a plain syscall on a child this handle started and has not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Fails, quoting the end of its log, if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let exited = match &mut self.child {
            Some(child) => child.try_wait()?.map(|s| s.to_string()),
            // Not a child: gone once /proc no longer has it, or it is a zombie.
            None => match fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
                Err(_) => Some("gone".into()),
                Ok(stat) => stat
                    .rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
                    .then(|| "exited".into()),
            },
        };
        if let Some(status) = exited {
            bail!(
                "{} exited ({status}); its output ends with:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines the process wrote.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(child) = &mut self.child else {
            return;
        };
        let pgid = child.id() as libc::pid_t;
        // SAFETY: plain syscalls on a process group this handle created.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Whatever is left of the group (a stuck worker, or a leader ignoring SIGTERM).
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait();
    }
}

/// Runs `cmd` to completion; fails, quoting its stderr, unless it succeeded. `what` names
/// it in messages (`ip link add …`).
pub fn run_checked(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A private directory removed, with everything in it, on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/skein-bench-<pid>` with mode 0700.
    pub fn new() -> anyhow::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("skein-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700))?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// CPU time and memory of a process together with its descendants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    /// User + system CPU seconds so far.
    pub cpu_secs: f64,
    /// Resident memory now (sum of `VmRSS`), KiB. Includes the executable's and libraries'
    /// pages, which every process running the same binary shares.
    pub rss_kib: u64,
    /// The anonymous part of it (sum of `RssAnon`: heap, stacks), KiB: what each further
    /// process of the same binary adds.
    pub anon_kib: u64,
    /// Peak resident memory (sum of each process's `VmHWM`), KiB.
    pub peak_rss_kib: u64,
}

/// Reads [`Usage`] for `pid` and every process below it (nginx's workers).
pub fn usage(pid: u32) -> anyhow::Result<Usage> {
    let ticks = clock_ticks();
    let mut total = Usage::default();
    for p in family(pid) {
        let stat = fs::read_to_string(format!("/proc/{p}/stat"))
            .with_context(|| format!("cannot read /proc/{p}/stat"))?;
        let (_, cpu) = parse_stat(&stat).with_context(|| format!("odd /proc/{p}/stat"))?;
        let status = fs::read_to_string(format!("/proc/{p}/status"))?;
        total.cpu_secs += cpu as f64 / ticks;
        total.rss_kib += status_kib(&status, "VmRSS").unwrap_or(0);
        total.anon_kib += status_kib(&status, "RssAnon").unwrap_or(0);
        total.peak_rss_kib += status_kib(&status, "VmHWM").unwrap_or(0);
    }
    Ok(total)
}

/// `pid` and its descendants, found by scanning `/proc` for parent ids; parents come
/// before their children.
pub(crate) fn family(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) {
                if let Some((ppid, _)) = parse_stat(&stat) {
                    parents.push((p, ppid));
                }
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}

/// Parent pid and utime+stime (clock ticks) from a `/proc/PID/stat` line. The command
/// name may hold spaces and parentheses, so fields are counted from the last `)`.
pub(crate) fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// A `Key:   123 kB` value from `/proc/PID/status`.
pub(crate) fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_last_paren() {
        let line = "4242 (nginx: worker (x)) S 4241 4241 4241 0 -1 4194624 100 0 0 0 \
                    37 12 0 0 20 0 1 0 123 1000 200 18446744073709551615";
        assert_eq!(parse_stat(line), Some((4241, 49)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn status_values_in_kib() {
        let s = "Name:\tskein\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nRssAnon:\t    1364 kB\n";
        assert_eq!(status_kib(s, "VmRSS"), Some(10240));
        assert_eq!(status_kib(s, "RssAnon"), Some(1364));
        assert_eq!(status_kib(s, "VmHWM"), Some(20480));
        assert_eq!(status_kib(s, "VmSwap"), None);
    }

    #[test]
    fn usage_of_this_process() {
        let u = usage(std::process::id()).unwrap();
        assert!(u.rss_kib > 0 && u.peak_rss_kib >= u.rss_kib, "{u:?}");
        assert!(u.anon_kib > 0 && u.anon_kib <= u.rss_kib, "{u:?}");
    }
}
