//! Pre-flight: what transparent capture needs from this host's kernel, tried for real in
//! a throwaway network namespace: making one, installing and listing the capture rules in
//! its nat table, and reading a redirected connection's original destination
//! (`SO_ORIGINAL_DST`). The namespace is held by a `sleep` that is killed at the end, so
//! the kernel removes it, with its rules, when the checks are done: nothing is left.

use super::{Check, KERNEL};
use crate::capture::{Capture, Iptables};
use crate::netns;
use anyhow::Context;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Child;
use std::time::Duration;

/// A network namespace can be made.
pub const NAMESPACES: &str = "network namespaces";
/// iptables runs and its nat table holds the capture rules.
pub const IPTABLES: &str = "iptables nat table";
/// A redirected connection's original destination can be read.
pub const ORIGINAL_DST: &str = "SO_ORIGINAL_DST";

/// The port the test connection dials; iptables sends it to the listener instead.
const DIALLED_PORT: u16 = 9;

/// The kernel checks. Without root they are skipped, unless `pre` asked for them (then
/// they fail: the operator wants the answer).
pub fn checks(pre: bool) -> Vec<Check> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        let why = "needs root (a network namespace and iptables)";
        // The binary's own path: sudo's PATH does not have ~/.cargo/bin.
        let me = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "skein".into());
        return [NAMESPACES, IPTABLES, ORIGINAL_DST]
            .into_iter()
            .map(|name| match pre {
                true => Check::fail(KERNEL, name, why, format!("run `sudo {me} check --pre`")),
                false => Check::skip(
                    KERNEL,
                    name,
                    format!("{why}; `sudo {me} check --pre` runs it"),
                ),
            })
            .collect();
    }
    let holder = match netns::spawn_holder() {
        Ok((child, ns)) => Holder { child, ns },
        Err(e) => {
            let why = "no network namespace to try it in";
            return vec![
                Check::fail(
                    KERNEL,
                    NAMESPACES,
                    format!("{e:#}"),
                    "use a kernel with network namespaces (CONFIG_NET_NS) and run as root (CAP_SYS_ADMIN); in a container, give it --privileged",
                ),
                Check::skip(KERNEL, IPTABLES, why),
                Check::skip(KERNEL, ORIGINAL_DST, why),
            ];
        }
    };
    let mut out = vec![Check::ok(KERNEL, NAMESPACES, "")];
    match nat_table(&holder.ns) {
        Ok(version) => out.push(Check::ok(KERNEL, IPTABLES, version)),
        Err(e) => {
            out.push(Check::fail(
                KERNEL,
                IPTABLES,
                format!("{e:#}"),
                "install iptables (Debian: apt-get install iptables) and load NAT: nf_tables with nft_nat and xt_REDIRECT (or, with iptables-legacy, iptable_nat): `modprobe iptable_nat xt_REDIRECT xt_owner`",
            ));
            out.push(Check::skip(KERNEL, ORIGINAL_DST, "needs the nat table"));
            return out;
        }
    }
    out.push(match original_dst(&holder.ns) {
        Ok(dst) => Check::ok(KERNEL, ORIGINAL_DST, format!("a redirected connection to {dst} reports it")),
        Err(e) => Check::fail(
            KERNEL,
            ORIGINAL_DST,
            format!("{e:#}"),
            "load connection tracking for IPv4 (`modprobe nf_conntrack`): the transparent listener reads each connection's original destination from it",
        ),
    });
    out
}

/// The throwaway namespace and the process that holds it; killing it removes both.
struct Holder {
    child: Child,
    ns: File,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Installs a capture plan in `ns` and checks that iptables lists every rule; returns
/// iptables' version (with its backend: nf_tables or legacy).
fn nat_table(ns: &File) -> anyhow::Result<String> {
    netns::ip(&["link", "set", "lo", "up"], Some(ns))?;
    // What `skein run` gives a workload's proxy.
    let config = skein_model::ProxyConfig::from_yaml(
        "workload: {name: check-1, service: check}\n\
         inbound: {listen: '0.0.0.0:4143', ports: []}\n\
         outbound: {listen: '127.0.0.1:4140'}\n\
         admin: {listen: '0.0.0.0:4191'}\n\
         dns: {listen: '127.0.0.1:15053'}\n",
        "the pre-flight check",
    )?;
    let capture = Capture::for_config(&config, crate::capture::DEFAULT_PROXY_GID)?;
    let iptables = Iptables { netns: Some(ns) };
    iptables.install(&capture)?;
    let missing = iptables.missing(&capture)?;
    anyhow::ensure!(
        missing.is_empty(),
        "iptables accepted the capture rules but does not list {}",
        missing.join("; ")
    );
    let out = crate::netns::system("iptables").arg("--version").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// In `ns`: redirects connections to 127.0.0.1:9 onto a listener, connects, and reads
/// the original destination of the accepted connection; returns it.
fn original_dst(ns: &File) -> anyhow::Result<SocketAddr> {
    in_netns(ns, || {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        let dialled = SocketAddr::from((Ipv4Addr::LOCALHOST, DIALLED_PORT));
        let rule = format!(
            "-w 5 -t nat -I OUTPUT 1 -p tcp -d 127.0.0.1 --dport {DIALLED_PORT} -j REDIRECT --to-ports {port}"
        );
        // This thread is in the namespace, and a child starts in its parent thread's.
        let out = crate::netns::system("iptables")
            .args(rule.split(' '))
            .output()
            .context("cannot run iptables")?;
        anyhow::ensure!(
            out.status.success(),
            "iptables {rule} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let mut client = TcpStream::connect_timeout(&dialled, Duration::from_secs(2))
            .with_context(|| {
                format!("a connection to {dialled}, redirected to port {port}, failed")
            })?;
        client.write_all(b"x")?;
        let (accepted, _) = listener.accept()?;
        let mut byte = [0u8; 1];
        (&accepted).read_exact(&mut byte)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let found = runtime.block_on(async {
            accepted.set_nonblocking(true)?;
            let stream = tokio::net::TcpStream::from_std(accepted)?;
            anyhow::Ok(skein_proxy::transport::original_dst(&stream))
        })?;
        match found {
            Some(dst) if dst == dialled => Ok(dst),
            Some(dst) => anyhow::bail!("the kernel reports {dst} as the original destination of a connection to {dialled}"),
            None => anyhow::bail!("the kernel reports no original destination for a connection to {dialled} redirected to port {port}"),
        }
    })
}

/// Runs `f` on a thread that entered `ns` first: sockets it makes live in `ns`, and so do
/// processes it starts. The thread, and with it its place in `ns`, ends with `f`.
pub fn in_netns<T: Send>(
    ns: &File,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    let fd = ns.as_raw_fd();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns on a descriptor the caller keeps open for the scope.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .context("cannot enter the network namespace (needs root)");
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| anyhow::bail!("the check's thread panicked"))
    })
}
