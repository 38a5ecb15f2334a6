//! What `skein run` leaves on the host while a workload runs, written down so that the
//! next start, or the reaper, can remove it when `skein run` itself could not.
//!
//! Per bridge there is a directory `/run/skein/<bridge>/` (`/run` is a tmpfs: a reboot
//! empties it, as it empties what it records) holding:
//!
//! - (beside it, `<bridge>.lock`): every change to the bridge or the entries happens under
//!   `flock` on it;
//! - `bridge`: present when Skein created the bridge (so Skein deletes it after its last
//!   workload, and never deletes one it did not make);
//! - `<id>.json`: one entry per workload: its address, veth, namespace (by inode) and the
//!   processes that must be alive for it to be in use (`skein run` and the holder, each
//!   by PID and start time, so a reused PID is not mistaken for them);
//! - `<id>.netns`: the workload's network namespace, bind-mounted as `ip netns` does. The
//!   pin keeps the namespace (and so its inode number) alive until the entry is forgotten:
//!   processes are stopped by namespace, and without the pin a namespace made later could
//!   reuse a dead one's inode number and have its processes killed in its place.
//!
//! An entry whose `skein run` is gone is stale: [`Dir::cleanup`] stops what still runs in
//! its namespace, deletes its veth and forgets it.

use crate::netns;
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the bridges' directories are.
pub const ROOT: &str = "/run/skein";

/// One workload started by `skein run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Unique among this bridge's entries: `skein run`'s PID.
    pub id: u32,
    /// `namespace/service`, for messages.
    pub service: String,
    /// The workload's address on the bridge.
    pub address: Ipv4Addr,
    /// The host end of its veth pair.
    pub veth: String,
    /// `skein run` (PID, start time).
    pub run: (u32, u64),
    /// The holder (PID, start time), once started.
    pub holder: Option<(u32, u64)>,
    /// The network namespace's inode, once made.
    pub netns: Option<u64>,
}

impl Entry {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "service": self.service,
            "address": self.address.to_string(),
            "veth": self.veth,
            "run": [self.run.0, self.run.1],
            "holder": self.holder.map(|(p, s)| json!([p, s])),
            "netns": self.netns,
        })
    }

    fn from_json(v: &Value) -> Option<Entry> {
        let pair = |v: &Value| Some((v.get(0)?.as_u64()? as u32, v.get(1)?.as_u64()?));
        Some(Entry {
            id: v["id"].as_u64()? as u32,
            service: v["service"].as_str()?.to_string(),
            address: v["address"].as_str()?.parse().ok()?,
            veth: v["veth"].as_str()?.to_string(),
            run: pair(&v["run"])?,
            holder: pair(&v["holder"]),
            netns: v["netns"].as_u64(),
        })
    }

    /// Whether its `skein run` still runs.
    pub fn in_use(&self) -> bool {
        netns::alive(self.run.0, self.run.1)
    }
}

/// A bridge's state directory.
pub struct Dir {
    path: PathBuf,
}

/// Holds the directory's lock until dropped.
pub struct Locked {
    _file: File,
}

impl Dir {
    /// The directory for `bridge` under `root`, created 0700.
    pub fn open(root: &Path, bridge: &str) -> anyhow::Result<Dir> {
        let path = root.join(bridge);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        Ok(Dir { path })
    }

    /// The directory for `bridge` if it exists.
    pub fn existing(root: &Path, bridge: &str) -> Option<Dir> {
        let path = root.join(bridge);
        path.is_dir().then_some(Dir { path })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the bridge's lock: `<root>/<bridge>.lock`, beside the directory and never
    /// removed, so that every run locks the same file even while another removes the
    /// directory.
    pub fn lock(&self) -> anyhow::Result<Locked> {
        self.lock_within(None)
    }

    /// As [`Dir::lock`], giving up after `limit` (a reader that must not hang behind a
    /// wedged `skein run`).
    pub fn lock_within(&self, limit: Option<Duration>) -> anyhow::Result<Locked> {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path.with_file_name(name))?;
        let deadline = limit.map(|l| Instant::now() + l);
        loop {
            let mode = match deadline {
                Some(_) => libc::LOCK_EX | libc::LOCK_NB,
                None => libc::LOCK_EX,
            };
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), mode) } == 0 {
                return Ok(Locked { _file: file });
            }
            let e = std::io::Error::last_os_error();
            match deadline {
                Some(d) if e.raw_os_error() == Some(libc::EWOULDBLOCK) && Instant::now() < d => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Some(_) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                    bail!(
                        "{} stayed locked by a `skein run` for {:?}",
                        self.path.display(),
                        limit.unwrap_or_default()
                    )
                }
                _ => return Err(e).context("cannot lock the state directory"),
            }
        }
    }

    /// Every entry (unreadable ones are skipped).
    pub fn entries(&self, _lock: &Locked) -> Vec<Entry> {
        let Ok(dir) = std::fs::read_dir(&self.path) else {
            return Vec::new();
        };
        let mut entries: Vec<Entry> = dir
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| {
                let text = std::fs::read_to_string(e.path()).ok()?;
                Entry::from_json(&serde_json::from_str(&text).ok()?)
            })
            .collect();
        entries.sort_by_key(|e| e.id);
        entries
    }

    /// Records `entry` (replacing an earlier record of the same id).
    pub fn write(&self, _lock: &Locked, entry: &Entry) -> anyhow::Result<()> {
        let path = self.path.join(format!("{}.json", entry.id));
        let tmp = self.path.join(format!("{}.json.tmp", entry.id));
        std::fs::write(&tmp, entry.to_json().to_string())?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Whether `id` is still recorded.
    pub fn has(&self, _lock: &Locked, id: u32) -> bool {
        self.path.join(format!("{id}.json")).exists()
    }

    /// Deletes the entry's veth (if the kernel has not already) and forgets it. Call
    /// [`stop_processes`] first, without the lock: it may wait.
    pub fn forget(&self, _lock: &Locked, entry: &Entry) {
        // Only a veth on this bridge: another bridge's run may have the same PID now.
        let bridge = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if master_of(&entry.veth).as_deref() == Some(bridge) {
            let _ = netns::ip(&["link", "del", &entry.veth], None);
        }
        self.unpin(entry.id);
        let _ = std::fs::remove_file(self.path.join(format!("{}.proxy.log", entry.id)));
        let _ = std::fs::remove_file(self.path.join(format!("{}.json", entry.id)));
    }

    /// Pins the namespace of process `holder` at `<id>.netns` and returns its inode.
    pub fn pin(&self, _lock: &Locked, id: u32, holder: u32) -> anyhow::Result<u64> {
        let path = self.pin_path(id);
        File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let source = std::ffi::CString::new(format!("/proc/{holder}/ns/net"))?;
        let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: both strings are valid and NUL-terminated; a bind mount has no data.
        let done = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if done != 0 {
            let e = std::io::Error::last_os_error();
            let _ = std::fs::remove_file(&path);
            return Err(e).context("cannot pin the workload's network namespace (bind mount)");
        }
        self.pinned(id)
            .context("the pinned network namespace cannot be read back")
    }

    /// The inode of the namespace pinned for `id`, if one is.
    pub fn pinned(&self, id: u32) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let pin = std::fs::metadata(self.pin_path(id)).ok()?;
        let any_ns = std::fs::metadata("/proc/self/ns/net").ok()?;
        // A namespace file lives on nsfs; an unmounted placeholder on this tmpfs does not.
        (pin.dev() == any_ns.dev()).then_some(pin.ino())
    }

    fn unpin(&self, id: u32) {
        let path = self.pin_path(id);
        if let Ok(target) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid NUL-terminated path; detaching a mount that is not there fails
            // harmlessly.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_file(&path);
    }

    fn pin_path(&self, id: u32) -> PathBuf {
        self.path.join(format!("{id}.netns"))
    }

    /// Whether Skein made `bridge` (and so may delete it).
    pub fn made_bridge(&self) -> bool {
        self.path.join("bridge").exists()
    }

    /// Makes `bridge` with `gateway/prefix` unless it exists; refuses one that exists
    /// without that address. Allows traffic between its ports when the host's firewall
    /// would drop bridged traffic (`br_netfilter` with a `FORWARD` policy of `DROP`, as
    /// Docker sets), with a rule tagged so that [`Dir::remove_bridge`] finds it.
    pub fn ensure_bridge(
        &self,
        _lock: &Locked,
        bridge: &str,
        gateway: Ipv4Addr,
        prefix: u8,
    ) -> anyhow::Result<()> {
        let cidr = format!("{gateway}/{prefix}");
        if link_exists(bridge) && !self.made_bridge() {
            bail!("the interface {bridge} exists and skein run did not make it; pass --bridge with a name of its own (skein run makes and removes its bridge)");
        }
        if !link_exists(bridge) {
            let out = crate::netns::system("ip")
                .args(["-4", "-o", "addr", "show"])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(line) = text.lines().find(|l| l.contains(&format!(" {gateway}/"))) {
                let on = line.split_whitespace().nth(1).unwrap_or("?");
                bail!("{gateway} (the first address of --network {}/{prefix}) is already on {on}; pass a --network no interface of this host uses", Ipv4Addr::from(u32::from(gateway) - 1));
            }
        }
        if link_exists(bridge) {
            let out = crate::netns::system("ip")
                .args(["-4", "-o", "addr", "show", "dev", bridge])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !text.contains(&format!(" {cidr} ")) {
                bail!("the bridge {bridge} exists without the address {cidr} (it has: {}); pass --bridge with another name, or --network matching it", text.split_whitespace().filter(|w| w.contains('/')).collect::<Vec<_>>().join(", "));
            }
            pin_bridge_address(bridge)?;
            return Ok(());
        }
        let mac = bridge_mac(gateway);
        netns::ip(
            &["link", "add", bridge, "address", &mac, "type", "bridge"],
            None,
        )?;
        std::fs::write(self.path.join("bridge"), "")?;
        netns::ip(&["addr", "add", &cidr, "dev", bridge], None)?;
        netns::ip(&["link", "set", bridge, "up"], None)?;
        if forward_drops_bridged() {
            let rule = forward_rule(bridge);
            let mut args = vec!["-w", "5", "-I", "FORWARD"];
            args.extend(rule.iter().map(String::as_str));
            let status = crate::netns::system("iptables").args(&args).status()?;
            if !status.success() {
                bail!("cannot allow traffic across {bridge} in the host's FORWARD chain");
            }
            std::fs::write(self.path.join("forward-rule"), "")?;
        }
        Ok(())
    }

    /// Deletes the bridge (and Skein's FORWARD rule for it) when Skein made it and no
    /// entry is left, and the directory with them.
    pub fn remove_bridge_if_unused(&self, lock: &Locked, bridge: &str) {
        if !self.entries(lock).is_empty() || !self.made_bridge() {
            return;
        }
        if self.path.join("forward-rule").exists() {
            let rule = forward_rule(bridge);
            let mut args = vec!["-w", "5", "-D", "FORWARD"];
            args.extend(rule.iter().map(String::as_str));
            let _ = crate::netns::system("iptables")
                .args(&args)
                .stderr(std::process::Stdio::null())
                .status();
            let _ = std::fs::remove_file(self.path.join("forward-rule"));
        }
        if link_exists(bridge) {
            let _ = netns::ip(&["link", "del", bridge], None);
        }
        let _ = std::fs::remove_file(self.path.join("bridge"));
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Stops every process in the entry's namespace: SIGTERM (the proxy drains, the
/// application ends), then SIGKILL for what is left after `grace`. Returns once none is
/// left, or after a further 5 s.
pub fn stop_processes(dir: &Dir, entry: &Entry, grace: Duration) {
    // Only a namespace still pinned as recorded: an unpinned inode number may belong to
    // someone else's namespace by now.
    let pinned = entry.netns.filter(|n| dir.pinned(entry.id) == Some(*n));
    let Some(inode) = pinned else {
        if let Some((pid, start)) = entry.holder {
            if netns::alive(pid, start) {
                netns::kill(pid, libc::SIGKILL);
            }
        }
        return;
    };
    let left = || netns::processes_in(inode);
    for pid in left() {
        netns::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while !left().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = left();
        if pids.is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in pids {
            netns::kill(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The lowest free address in `network/prefix` after the gateway (its first address),
/// leaving out the broadcast address and every address in use.
pub fn free_address(network: Ipv4Addr, prefix: u8, taken: &[Ipv4Addr]) -> anyhow::Result<Ipv4Addr> {
    let base = u32::from(network);
    let size = 1u64 << (32 - prefix as u64);
    (2..size.saturating_sub(1))
        .map(|i| Ipv4Addr::from(base + i as u32))
        .find(|a| !taken.contains(a))
        .with_context(|| {
            format!("every address of {network}/{prefix} is in use by a workload; stop one, or pass a larger --network")
        })
}

/// `ip -o link show dev NAME`, if there is such a link. Asked of the kernel rather than
/// read from `/sys/class/net`, which shows the namespace sysfs was mounted in, not ours.
fn link(name: &str) -> Option<String> {
    let out = crate::netns::system("ip")
        .args(["-o", "link", "show", "dev", name])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn link_exists(name: &str) -> bool {
    link(name).is_some()
}

/// The MAC address `skein run` gives the bridge whose address is `gateway`: locally
/// administered, unicast, `02:73:6b` ("sk") then the gateway's last three octets.
///
/// A Linux bridge whose address nobody set takes the lowest of its ports' addresses, so
/// it changes whenever a workload's veth joins or leaves. Every workload's neighbour entry
/// for the gateway then names an address the bridge no longer answers to, and what it
/// sends to the host (its proxy's control-plane stream, DNS through the relay) is lost,
/// retransmissions too, until that entry expires many seconds later. A bridge with a set
/// address keeps it.
pub fn bridge_mac(gateway: Ipv4Addr) -> String {
    let [_, b, c, d] = gateway.octets();
    format!("02:73:6b:{b:02x}:{c:02x}:{d:02x}")
}

/// Pins the address a bridge `skein run` made has now (one made by an older `skein run`
/// follows its ports): setting it to its current value changes nothing for the workloads
/// on it and keeps it from moving again. Read with `ip`, since `/sys/class/net` shows the
/// namespace sysfs was mounted in.
fn pin_bridge_address(bridge: &str) -> anyhow::Result<()> {
    let text = link(bridge).with_context(|| format!("the bridge {bridge} is gone"))?;
    let mut words = text.split_whitespace();
    words.find(|w| *w == "link/ether");
    let Some(current) = words.next() else {
        bail!("the bridge {bridge} has no Ethernet address (`ip link show` printed: {text})");
    };
    netns::ip(&["link", "set", bridge, "address", current], None)
}

/// The bridge a link is attached to.
fn master_of(name: &str) -> Option<String> {
    let text = link(name)?;
    let mut words = text.split_whitespace();
    words.find(|w| *w == "master")?;
    words.next().map(String::from)
}

/// Whether bridged traffic passes the host's iptables and its FORWARD policy drops it.
fn forward_drops_bridged() -> bool {
    let bridged = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .map(|v| v.trim() == "1")
        .unwrap_or(false);
    bridged
        && crate::netns::system("iptables")
            .args(["-w", "5", "-S", "FORWARD"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("-P FORWARD DROP"))
            .unwrap_or(false)
}

fn forward_rule(bridge: &str) -> Vec<String> {
    let comment = format!("skein run: traffic between workloads on {bridge}");
    [
        "-i",
        bridge,
        "-o",
        bridge,
        "-m",
        "comment",
        "--comment",
        &comment,
        "-j",
        "ACCEPT",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_the_gateway_the_broadcast_and_those_taken() {
        let net = Ipv4Addr::new(198, 18, 7, 0);
        assert_eq!(
            free_address(net, 24, &[]).unwrap(),
            Ipv4Addr::new(198, 18, 7, 2)
        );
        let taken = [Ipv4Addr::new(198, 18, 7, 2), Ipv4Addr::new(198, 18, 7, 4)];
        assert_eq!(
            free_address(net, 24, &taken).unwrap(),
            Ipv4Addr::new(198, 18, 7, 3)
        );
        // A /30 has the gateway .1 and one workload .2; .3 is the broadcast address.
        let e = free_address(net, 30, &[Ipv4Addr::new(198, 18, 7, 2)]).unwrap_err();
        assert!(e.to_string().contains("pass a larger --network"), "{e}");
    }

    #[test]
    fn the_bridge_address_is_local_unicast_and_follows_the_gateway() {
        let mac = bridge_mac(Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(mac, "02:73:6b:d5:00:01");
        let first = u8::from_str_radix(&mac[..2], 16).unwrap();
        assert_eq!(first & 0b11, 0b10, "locally administered, not multicast");
        assert_ne!(bridge_mac(Ipv4Addr::new(198, 18, 21, 1)), mac);
    }

    #[test]
    fn entries_round_trip_through_json() {
        let e = Entry {
            id: 42,
            service: "default/menu".into(),
            address: Ipv4Addr::new(198, 18, 7, 2),
            veth: "skr42".into(),
            run: (42, 1000),
            holder: Some((43, 1001)),
            netns: Some(4026532000),
        };
        assert_eq!(Entry::from_json(&e.to_json()), Some(e.clone()));
        let bare = Entry {
            holder: None,
            netns: None,
            ..e
        };
        assert_eq!(Entry::from_json(&bare.to_json()), Some(bare));
    }
}
