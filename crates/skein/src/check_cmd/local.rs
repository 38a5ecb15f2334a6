//! Checks of this host's files and namespaces: the control plane's data directory (owner
//! only: it holds the admin token and the CA's keys), and with `--proxy` one workload's
//! capture rules, read inside its network namespace.

use super::kernel::in_netns;
use super::{Check, CAPTURE, CONTROL};
use crate::capture::{Capture, Iptables};
use crate::run_cmd::state::Dir;
use anyhow::{bail, Context};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The data directory and its files are the owner's alone.
pub const DATA_DIR: &str = "data directory permissions";
/// Every capture rule of a workload is in force.
pub const RULES: &str = "capture rules";

/// Where `skein run`'s proxy serves its admin API inside the workload's namespace.
const ADMIN_PORT: u16 = 4191;

/// One file's facts as the data-directory check judges them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    /// Its path.
    pub path: PathBuf,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Whether it is the directory itself.
    pub is_dir: bool,
}

/// The data directory `dir` on this host: `0700`, its `admin.token` and `store.redb`
/// `0600`, all of one owner. Skipped when there is none here (the control plane runs
/// elsewhere).
pub fn data_dir(dir: &Path) -> Check {
    let Ok(meta) = std::fs::metadata(dir) else {
        return Check::skip(
            CONTROL,
            DATA_DIR,
            format!(
                "no data directory {} on this host (--data-dir)",
                dir.display()
            ),
        );
    };
    let mut facts = vec![FileFacts {
        path: dir.to_path_buf(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        is_dir: true,
    }];
    for name in ["admin.token", "store.redb"] {
        if let Ok(m) = std::fs::metadata(dir.join(name)) {
            facts.push(FileFacts {
                path: dir.join(name),
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                is_dir: false,
            });
        }
    }
    judge_data_dir(&facts)
}

/// The verdict on the data directory's `facts` (the directory first).
pub fn judge_data_dir(facts: &[FileFacts]) -> Check {
    let owner = facts[0].uid;
    let (mut problems, mut fixes) = (Vec::new(), Vec::new());
    for f in facts {
        let path = f.path.display();
        let (want, mode) = if f.is_dir {
            (0o700, "700")
        } else {
            (0o600, "600")
        };
        if f.mode & 0o077 != 0 {
            problems.push(format!("{path} is {:04o}, open to others", f.mode));
            fixes.push(format!("chmod {mode} {path}"));
        } else if f.mode & 0o700 != want {
            problems.push(format!("{path} is {:04o}, not {want:04o}", f.mode));
            fixes.push(format!("chmod {mode} {path}"));
        }
        if f.uid != owner {
            problems.push(format!(
                "{path} belongs to uid {}, the directory to uid {owner}",
                f.uid
            ));
            fixes.push(format!("chown {owner} {path}"));
        }
    }
    let dir = facts[0].path.display();
    match problems.is_empty() {
        true => Check::ok(CONTROL, DATA_DIR, format!("{dir}: owner only")),
        false => Check::fail(
            CONTROL,
            DATA_DIR,
            format!(
                "{} (it holds the admin token and the mesh CA's keys)",
                problems.join("; ")
            ),
            fixes.join("; "),
        ),
    }
}

/// Which workload's capture to check, and how to find it.
pub struct CaptureTarget {
    /// Its address, as `skein run` printed it.
    pub address: IpAddr,
    /// Where `skein run` records its workloads (`/run/skein`).
    pub state_dir: PathBuf,
    /// Its namespace as a file, instead of looking it up.
    pub netns: Option<PathBuf>,
    /// Its proxy's admin listener (default ADDRESS:4191).
    pub admin: Option<SocketAddr>,
}

/// Every rule the workload's proxy configuration needs is in force in its namespace.
pub fn capture(target: &CaptureTarget) -> Check {
    let address = target.address;
    let ns = match open_namespace(target) {
        Ok(ns) => ns,
        Err(e) => {
            return Check::fail(
                CAPTURE,
                RULES,
                format!("{e:#}"),
                "give the address `skein run` printed, on the host it runs on, as root",
            )
        }
    };
    let admin = target.admin.unwrap_or(SocketAddr::new(address, ADMIN_PORT));
    let plan = in_netns(&ns, || proxy_config(admin)).and_then(|config| {
        let mut plan = Capture::for_config(&config, crate::capture::DEFAULT_PROXY_GID)?;
        // The ids the proxy runs with are `skein run`'s choice (--proxy-gid, its user):
        // the exemption is checked for being there, with the ids it has.
        if let Some((uid, gid)) = owner_ids(&list_output_chain(&ns)) {
            (plan.proxy_uid, plan.proxy_gid) = (uid, gid);
        }
        Ok(plan)
    });
    let plan = match plan {
        Ok(plan) => plan,
        Err(e) => {
            return Check::fail(
                CAPTURE,
                RULES,
                format!("{address}: cannot learn what to capture from its proxy: {e:#}"),
                "is its proxy running? read its log (`skein run` keeps it beside its state, /run/skein/BRIDGE/ID.proxy.log) and restart the workload",
            )
        }
    };
    let audit = match (Iptables { netns: Some(&ns) }).audit(&plan) {
        Ok(audit) => audit,
        Err(e) => {
            return Check::fail(
                CAPTURE,
                RULES,
                format!("{address}: cannot list the rules in force: {e:#}"),
                "is iptables installed and usable here? `skein check --pre` tries it",
            )
        }
    };
    let total = plan.plan().len();
    let restart = "restart the workload (`skein run` installs the rules afresh); for a namespace someone else made, `skein proxy --intercept -c FILE` inside it (with its --proxy-gid and exclusions)";
    if !audit.missing.is_empty() || !audit.misordered.is_empty() {
        let mut problems = Vec::new();
        if !audit.missing.is_empty() {
            problems.push(format!(
                "{} of {total} rules missing: iptables -t nat {}",
                audit.missing.len(),
                audit.missing.join("; iptables -t nat ")
            ));
        }
        if !audit.misordered.is_empty() {
            problems.push(format!(
                "rules that let traffic past the capture: {}",
                audit.misordered.join("; ")
            ));
        }
        return Check::fail(
            CAPTURE,
            RULES,
            format!("{address}: {}", problems.join("; ")),
            restart,
        );
    }
    // The exemption must name the ids the proxy really runs with.
    if let Some(problem) = proxy_ids_differ(&ns, &plan) {
        return Check::fail(CAPTURE, RULES, format!("{address}: {problem}"), restart);
    }
    if !audit.unplanned.is_empty() {
        return Check::warn(
            CAPTURE,
            RULES,
            format!(
                "{address}: all {total} rules in force, and {} more in Skein's chains: {}",
                audit.unplanned.len(),
                audit.unplanned.join("; ")
            ),
            "exclusions given to `skein run` (--exclude-*) look like this; anything else was added by hand and lets that traffic past the proxy",
        );
    }
    Check::ok(
        CAPTURE,
        RULES,
        format!("{address}: all {total} rules in force, in order"),
    )
}

/// Whether the proxy in `ns` runs with other ids than the exemption in `plan` names: its
/// own connections would then be captured (a loop), and anyone with those ids not.
fn proxy_ids_differ(ns: &File, plan: &Capture) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let inode = ns.metadata().ok()?.ino();
    let proxy = crate::netns::processes_in(inode).into_iter().find(|pid| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let words: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        words.len() > 1 && words[1] == b"proxy"
    })?;
    let status = std::fs::read_to_string(format!("/proc/{proxy}/status")).ok()?;
    let id = |key: &str| -> Option<u32> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(2)?.parse().ok() // effective id
    };
    let (uid, gid) = (id("Uid:")?, id("Gid:")?);
    let uid_ok = plan.proxy_uid.is_none_or(|u| u == uid);
    (!uid_ok || gid != plan.proxy_gid).then(|| {
        format!(
            "the proxy (pid {proxy}) runs as uid {uid} gid {gid}, but the exemption names {}gid {}",
            plan.proxy_uid
                .map(|u| format!("uid {u} "))
                .unwrap_or_default(),
            plan.proxy_gid
        )
    })
}

/// `iptables -t nat -S SKEIN_OUTPUT` in `ns`; empty if it cannot be listed.
fn list_output_chain(ns: &File) -> String {
    let mut cmd = crate::netns::system("iptables");
    cmd.args(["-w", "5", "-t", "nat", "-S", crate::capture::OUTPUT_CHAIN]);
    crate::netns::enter_before_exec(&mut cmd, ns);
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The user and group ids of the proxy's exemption (`-m owner [--uid-owner U] --gid-owner
/// G -j RETURN`) in a listing of the output chain.
pub fn owner_ids(listing: &str) -> Option<(Option<u32>, u32)> {
    listing.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        if !words.windows(2).any(|w| w == ["-m", "owner"]) || !line.ends_with("-j RETURN") {
            return None;
        }
        let after = |flag: &str| {
            let i = words.iter().position(|w| *w == flag)?;
            words.get(i + 1)?.parse::<u32>().ok()
        };
        Some((after("--uid-owner"), after("--gid-owner")?))
    })
}

/// The workload's namespace: the file given, or the one its `skein run` holder keeps.
fn open_namespace(target: &CaptureTarget) -> anyhow::Result<File> {
    if let Some(path) = &target.netns {
        return File::open(path).with_context(|| format!("cannot open {}", path.display()));
    }
    let IpAddr::V4(address) = target.address else {
        bail!(
            "{}: `skein run` gives workloads IPv4 addresses",
            target.address
        );
    };
    let root = &target.state_dir;
    let bridges = std::fs::read_dir(root).with_context(|| {
        format!(
            "no `skein run` workload on this host ({} is unreadable)",
            root.display()
        )
    })?;
    for bridge in bridges.filter_map(|e| e.ok()) {
        let name = bridge.file_name();
        let Some(dir) = Dir::existing(root, &name.to_string_lossy()) else {
            continue;
        };
        let lock = dir
            .lock_within(Some(std::time::Duration::from_secs(5)))
            .with_context(|| format!("cannot read {} (needs root)", dir.path().display()))?;
        let Some(entry) = dir
            .entries(&lock)
            .into_iter()
            .find(|e| e.address == address)
        else {
            continue;
        };
        let Some((pid, _)) = entry.holder.filter(|(p, s)| crate::netns::alive(*p, *s)) else {
            bail!(
                "{address} ({}) has no live network namespace: its `skein run` is starting or gone",
                entry.service
            );
        };
        return File::open(format!("/proc/{pid}/ns/net"))
            .with_context(|| format!("cannot open the namespace of {address} (needs root)"));
    }
    bail!(
        "no `skein run` workload has address {address} on this host (looked under {})",
        root.display()
    )
}

/// The configuration the proxy runs with (`GET /config` on its admin listener). Call it
/// inside the workload's namespace.
fn proxy_config(admin: SocketAddr) -> anyhow::Result<skein_model::ProxyConfig> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(3))
        .with_context(|| format!("cannot connect to its admin listener {admin}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET /config HTTP/1.0\r\nHost: {admin}\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("http://{admin}/config answered no HTTP"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "http://{admin}/config answered {}",
            head.lines().next().unwrap_or_default()
        );
    }
    let mut value: serde_json::Value =
        serde_json::from_str(body).with_context(|| format!("http://{admin}/config is not JSON"))?;
    // What /config adds beside the configuration.
    if let Some(map) = value.as_object_mut() {
        map.remove("identity");
    }
    serde_json::from_value(value).with_context(|| {
        format!("http://{admin}/config is not a proxy configuration this CLI reads")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check_cmd::Status;

    fn facts(dir: u32, token: u32, token_uid: u32) -> Vec<FileFacts> {
        vec![
            FileFacts {
                path: "/var/lib/skein".into(),
                mode: dir,
                uid: 1000,
                is_dir: true,
            },
            FileFacts {
                path: "/var/lib/skein/admin.token".into(),
                mode: token,
                uid: token_uid,
                is_dir: false,
            },
        ]
    }

    #[test]
    fn the_proxy_exemption_is_read_from_the_listing() {
        let listing = "-N SKEIN_OUTPUT\n-A SKEIN_OUTPUT -m owner --uid-owner 65534 --gid-owner 1337 -j RETURN\n-A SKEIN_OUTPUT -d 127.0.0.0/8 -j RETURN\n";
        assert_eq!(owner_ids(listing), Some((Some(65534), 1337)));
        let gid_only = "-A SKEIN_OUTPUT -m owner --gid-owner 2000 -j RETURN";
        assert_eq!(owner_ids(gid_only), Some((None, 2000)));
        assert_eq!(owner_ids("-A SKEIN_OUTPUT -d 127.0.0.0/8 -j RETURN"), None);
    }

    #[test]
    fn the_data_directory_is_the_owners_alone() {
        assert_eq!(
            judge_data_dir(&facts(0o700, 0o600, 1000)).status,
            Status::Ok
        );
        let open = judge_data_dir(&facts(0o755, 0o600, 1000));
        assert_eq!(open.status, Status::Fail);
        assert_eq!(
            open.message,
            "/var/lib/skein is 0755, open to others (it holds the admin token and the mesh CA's keys)"
        );
        assert_eq!(open.hint, "chmod 700 /var/lib/skein");
        let token = judge_data_dir(&facts(0o700, 0o644, 0));
        assert_eq!(
            token.hint,
            "chmod 600 /var/lib/skein/admin.token; chown 1000 /var/lib/skein/admin.token"
        );
        let unreadable = judge_data_dir(&facts(0o500, 0o600, 1000));
        assert_eq!(
            unreadable.status,
            Status::Fail,
            "the control plane cannot write it"
        );
    }
}
