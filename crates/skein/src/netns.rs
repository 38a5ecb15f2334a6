//! Network namespaces without names: how `skein run` makes one, runs programs inside it,
//! and finds what is left in it.
//!
//! A namespace lives as long as a process is in it (or a file descriptor or bind mount
//! holds it). `skein run` never mounts one under `/run/netns`: a *holder* process
//! (`sleep infinity`, started in a new namespace and killed when `skein run` dies) keeps
//! it, and the proxy and the application join it with `setns`. When the last of them
//! exits, the kernel removes the namespace and, with it, the veth end and the iptables
//! rules inside: nothing persistent to leak.
//!
//! Every function that forks sets the child up between fork and exec with
//! `pre_exec`, which may only make async-signal-safe calls (plain system calls here).

use anyhow::{bail, Context};
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// The search path for the programs run as root (`ip`, `iptables`, `sleep`, `sh`): the
/// system's directories only, never the caller's `PATH` (a user's `~/.cargo/bin` could
/// hold an `iptables` of anyone's choosing).
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A command for a system program, found on [`SAFE_PATH`] (std looks a program up on the
/// child's `PATH` when it is set).
pub fn system(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", SAFE_PATH);
    cmd
}

/// Makes `cmd` enter the network namespace `ns` before it runs.
pub fn enter_before_exec(cmd: &mut Command, ns: &File) {
    let fd = ns.as_raw_fd();
    // SAFETY: setns is async-signal-safe; `fd` stays open until exec (the parent holds
    // `ns` and close-on-exec applies only at exec).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes the child receive `signal` when the thread that spawned it exits (so: spawn
/// from the main thread), and puts it in a process group of its own so that a terminal's
/// Ctrl-C reaches `skein run` alone, which decides what to forward.
pub fn tie_to_parent(cmd: &mut Command, signal: libc::c_int) {
    // SAFETY: prctl, getppid and setpgid are async-signal-safe.
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Drops from root to `uid`/`gid` with exactly the supplementary groups `groups`, after
/// every other `pre_exec` step (std switches ids itself before `pre_exec` runs, which would
/// leave too few privileges to enter a namespace, so it is done here instead).
pub fn become_user(cmd: &mut Command, uid: u32, gid: u32, groups: Vec<libc::gid_t>) {
    // SAFETY: setgroups, setgid and setuid are async-signal-safe; `groups` is allocated
    // before fork and only read after.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts the holder: `sleep infinity` in a new network namespace, killed when this thread
/// exits. Returns it and its namespace, opened.
pub fn spawn_holder() -> anyhow::Result<(Child, File)> {
    let mut cmd = system("sleep");
    cmd.arg("infinity")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    tie_to_parent(&mut cmd, libc::SIGKILL);
    // SAFETY: unshare is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .context("cannot start a process in a new network namespace (needs root and `sleep`)")?;
    match File::open(format!("/proc/{}/ns/net", child.id())) {
        Ok(ns) => Ok((child, ns)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e).context("cannot open the new network namespace")
        }
    }
}

/// Connects to `addr` from inside `ns` and closes the connection: a thread of its own
/// enters the namespace (sockets belong to the namespace of the thread that makes them),
/// and ends with it.
pub fn connect_from(
    ns: &File,
    addr: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> std::io::Result<()> {
    let fd = ns.try_clone()?;
    std::thread::spawn(move || {
        // SAFETY: setns on a descriptor we own affects this short-lived thread only.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::net::TcpStream::connect_timeout(&addr, timeout).map(drop)
    })
    .join()
    .map_err(|_| std::io::Error::other("the connecting thread panicked"))?
}

/// The inode that identifies a network namespace, from `/proc/PID/ns/net`.
pub fn inode_of(pid: u32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let text = link.to_str()?;
    text.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Every process whose network namespace is `inode`.
pub fn processes_in(inode: u64) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| inode_of(*pid) == Some(inode))
        .collect()
}

/// When a process started (field 22 of `/proc/PID/stat`, in clock ticks since boot): with
/// the PID, it tells a process from a later one that reuses its PID.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` still runs and is the one that started at `started`.
pub fn alive(pid: u32, started: u64) -> bool {
    start_time(pid) == Some(started) && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s[s.rfind(')')? + 2..].starts_with('Z')))
        .unwrap_or(true)
}

/// Sends `signal` to `pid`; a process already gone is not an error.
pub fn kill(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// Runs `ip ARGS`, inside `ns` when given, and fails with its error output.
pub fn ip(args: &[&str], ns: Option<&File>) -> anyhow::Result<()> {
    let mut cmd = system("ip");
    cmd.args(args);
    if let Some(ns) = ns {
        enter_before_exec(&mut cmd, ns);
    }
    let out = cmd
        .output()
        .context("cannot run `ip`; install iproute2 (Debian: apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes `value` to a file under `/proc/sys/net` as seen from inside `ns` (those files
/// belong to the namespace of the process that opens them).
pub fn sysctl(ns: &File, key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let mut cmd = system("sh");
    cmd.args(["-c", "echo \"$1\" > \"$2\"", "sh", value, &path]);
    enter_before_exec(&mut cmd, ns);
    let status = cmd.status().context("cannot run sh")?;
    if !status.success() {
        bail!("cannot set {key} = {value} in the workload's namespace");
    }
    Ok(())
}

/// Who the application runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its groups (the primary one first), from `/etc/group`.
    pub groups: Vec<libc::gid_t>,
    /// Its name, home and shell from `/etc/passwd`, when it has an entry.
    pub passwd: Option<(String, String, String)>,
}

/// The user `skein run` starts the application as: `--user NAME|UID`, else the user who ran
/// `sudo` (`SUDO_UID`, `SUDO_GID`). Without either, refuses to run the application as
/// root (it could undo its own capture) unless `--user root` says so.
pub fn resolve_user(user: Option<&str>) -> anyhow::Result<User> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let entry = |field: usize, value: &str| {
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() > 6 && f[field] == value).then(|| {
                (
                    f[2].parse::<u32>().ok(),
                    f[3].parse::<u32>().ok(),
                    (f[0].to_string(), f[5].to_string(), f[6].to_string()),
                )
            })
        })
    };
    let numeric = |u: &str| !u.is_empty() && u.chars().all(|c| c.is_ascii_digit());
    let (uid, gid, pw) = match user {
        Some(u) => match entry(if numeric(u) { 2 } else { 0 }, u) {
            Some((Some(uid), Some(gid), pw)) => (uid, gid, Some(pw)),
            _ if numeric(u) => {
                let uid: u32 = u.parse().context("--user: not a number")?;
                (uid, uid, None)
            }
            _ => bail!("--user {u}: no such user in /etc/passwd; give a user name or a numeric uid"),
        },
        None => match (std::env::var("SUDO_UID"), std::env::var("SUDO_GID")) {
            (Ok(uid), Ok(gid)) => {
                let uid: u32 = uid.parse().context("SUDO_UID is not a number")?;
                let gid: u32 = gid.parse().context("SUDO_GID is not a number")?;
                (uid, gid, entry(2, &uid.to_string()).map(|e| e.2))
            }
            _ => bail!("skein run was not started through sudo, so it cannot tell whom to run the application as: pass --user NAME (or --user root to accept that the application, as root, could undo its own capture)"),
        },
    };
    let mut groups = vec![gid];
    if let Some((name, _, _)) = &pw {
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        for line in group.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() > 3 && f[3].split(',').any(|m| m == name) {
                if let Ok(g) = f[2].parse() {
                    if !groups.contains(&g) {
                        groups.push(g);
                    }
                }
            }
        }
    }
    Ok(User {
        uid,
        gid,
        groups,
        passwd: pw,
    })
}

/// Whether this process's stdin is a terminal whose foreground process group is ours (so
/// the application may be handed the terminal).
pub fn in_foreground() -> bool {
    // SAFETY: isatty, tcgetpgrp and getpgrp only read.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// Makes the child (already in a process group of its own) the terminal's foreground
/// group, so that it can read the terminal and gets its Ctrl-C and Ctrl-Z.
pub fn take_terminal(cmd: &mut Command) {
    // SAFETY: sigprocmask, tcsetpgrp and getpid are async-signal-safe; the set is built on
    // the stack.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTTOU);
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
            libc::tcsetpgrp(0, libc::getpid());
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// Takes the terminal back for this process's group after the application ended.
pub fn reclaim_terminal() {
    // SAFETY: as in `take_terminal`, in this process.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTTOU);
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        libc::tcsetpgrp(0, libc::getpgrp());
        libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
}

/// Forbids the child and its descendants to gain privileges through set-user-ID files or
/// file capabilities (a cached `sudo` could otherwise undo the capture).
pub fn no_new_privileges(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
