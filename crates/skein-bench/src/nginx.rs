//! The nginx pair, the reference point for what two proxies with mutual TLS cost:
//! load generator → nginx A (127.0.0.153) → HTTPS with client certificates → nginx B
//! (127.0.0.154) → backend (127.0.0.154).
//!
//! Both instances are Debian's `nginx`, run in the foreground as children with one worker,
//! their own configs, pid files, logs and temp paths in the scratch directory. A keeps a
//! pool of TLS connections to B and B one of plain connections to the backend, sized so
//! that no scenario churns them, as a tuned deployment would. A's second port speaks
//! HTTP/2 with prior knowledge (h2c) to clients; upstream hops stay HTTP/1.1, the only
//! version nginx proxies with. Opaque TCP uses the `stream` module (Debian
//! `libnginx-mod-stream`) with the same mutual TLS between A and B; without the module
//! that cell is n/a. A throwaway CA, server and client certificate are made with the
//! `openssl` CLI for every run.

use crate::handshake::{HandshakeTarget, PeerRequest};
use crate::procs::Proc;
use crate::setups::{ip, start_apps, wait_listening, Env, Kind, Setup, APP_PORT, SINK_PORT};
use anyhow::Context;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
const A_HTTP: u16 = 8080;
const A_H2: u16 = 8081;
const A_TCP: u16 = 9000;
const B_HTTPS: u16 = 8443;
const B_TLS_TCP: u16 = 9443;
/// Idle upstream connections each nginx keeps. Sized above the most concurrent requests
/// any scenario makes (64 wrk connections; 4 × 32 HTTP/2 streams, which nginx forwards as
/// 128 HTTP/1.1 requests), so no scenario pays for TLS handshakes a tuned deployment
/// would not.
const UPSTREAM_POOL: u32 = 256;
/// The name B's certificate carries and A verifies.
const B_NAME: &str = "b.bench.local";

/// `nginx -v`'s version string, e.g. `nginx/1.22.1`.
pub fn version(nginx: &Path) -> String {
    Command::new(nginx)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .and_then(|s| s.strip_prefix("nginx version: ").map(str::to_string))
        .unwrap_or_else(|| "nginx (unknown version)".into())
}

/// Starts B, then A, with fresh certificates.
pub async fn start(env: &Env) -> anyhow::Result<Setup> {
    let (a, b) = (ip(153), ip(154));
    let dir = env.dir.path();
    make_certs(dir).context("nginx pair: cannot make certificates with openssl")?;
    let stream = Path::new(STREAM_MODULE).exists();
    let apps = start_apps(env, b, "nginx").await?;
    let pki = Pki::in_dir(dir);
    let b_conf = config_b(dir, &pki, stream);
    let mut nb = spawn(env, "nginx B", "nginx-b", &b_conf)?;
    wait_listening(&mut nb, SocketAddr::new(b, B_HTTPS)).await?;
    let a_conf = config_a(dir, &pki, stream);
    let mut na = spawn(env, "nginx A", "nginx-a", &a_conf)?;
    wait_listening(&mut na, SocketAddr::new(a, A_HTTP)).await?;
    let tcp = if stream {
        wait_listening(&mut na, SocketAddr::new(a, A_TCP)).await?;
        Ok(SocketAddr::new(a, A_TCP))
    } else {
        Err(format!(
            "nginx has no stream module ({STREAM_MODULE} missing; Debian package \
             libnginx-mod-stream)"
        ))
    };
    let handshake = b_client(&pki, SocketAddr::new(b, B_HTTPS))
        .context("nginx pair: cannot load A's client certificate")?;
    Ok(Setup {
        kind: Kind::Nginx,
        description: format!(
            "load generator → nginx A → nginx B → backend; A and B talk HTTPS (TLS 1.3) with \
             client certificates (mutual TLS), upstream keep-alive; {}",
            version(&env.nginx)
        ),
        http: SocketAddr::new(a, A_HTTP),
        h2: Ok(SocketAddr::new(a, A_H2)),
        grpc: Err(
            "the nginx pair proxies HTTP/1.1 between its instances, and gRPC needs HTTP/2 \
             end to end (nginx's grpc_pass), which the pair is not set up for"
                .into(),
        ),
        handshake: Ok(handshake),
        tcp,
        proxies: vec![na, nb],
        apps,
        netns: None,
        holds: None,
    })
}

fn spawn(env: &Env, name: &str, tag: &str, conf: &str) -> anyhow::Result<Proc> {
    let dir = env.dir.path();
    let path = dir.join(format!("{tag}.conf"));
    // nginx creates its temp directories but not their parent.
    let tmp = dir.join(format!("{tag}-tmp"));
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    std::fs::write(&path, conf).with_context(|| format!("cannot write {}", path.display()))?;
    let mut cmd = Command::new(&env.nginx);
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(dir.join(format!("{tag}-error.log")));
    Proc::spawn(name, cmd, &dir.join(format!("{tag}.log")))
}

/// The handshake scenario's client for the nginx pair: what A presents to B.
fn b_client(pki: &Pki, b: SocketAddr) -> anyhow::Result<HandshakeTarget> {
    let read = |p: &str| std::fs::read_to_string(p).with_context(|| format!("cannot read {p}"));
    Ok(HandshakeTarget {
        addr: b,
        tls: crate::handshake::nginx_client_config(
            &read(&pki.ca)?,
            &read(&pki.client_crt)?,
            &read(&pki.client_key)?,
        )?,
        server_name: rustls::pki_types::ServerName::try_from(B_NAME)?,
        request: PeerRequest::Http1,
    })
}

/// Paths of the throwaway PKI.
struct Pki {
    ca: String,
    server_crt: String,
    server_key: String,
    client_crt: String,
    client_key: String,
}

impl Pki {
    fn in_dir(dir: &Path) -> Pki {
        let p = |f: &str| dir.join(f).display().to_string();
        Pki {
            ca: p("ca.crt"),
            server_crt: p("server.crt"),
            server_key: p("server.key"),
            client_crt: p("client.crt"),
            client_key: p("client.key"),
        }
    }
}

/// CA, server certificate for [`B_NAME`] and client certificate, all ECDSA P-256 and valid
/// for two days; private keys are mode 0600.
fn make_certs(dir: &Path) -> anyhow::Result<()> {
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"],
            &key[..],
            &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2"],
            &["-subj", "/CN=skein-bench CA"],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat(),
    )?;
    for (who, cn, usage) in [
        ("server", B_NAME, "serverAuth"),
        ("client", "a.bench.local", "clientAuth"),
    ] {
        let ext = format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage={usage}\nsubjectAltName=DNS:{cn}\n"
        );
        std::fs::write(dir.join(format!("{who}.ext")), ext)?;
        let (k, csr, crt, extf) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.crt"),
            format!("{who}.ext"),
        );
        let subj = format!("/CN={cn}");
        openssl(
            dir,
            &[
                &["req"],
                &key[..],
                &["-keyout", &k, "-out", &csr, "-subj", &subj],
            ]
            .concat(),
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &extf,
            ],
        )?;
    }
    for k in ["ca.key", "server.key", "client.key"] {
        std::fs::set_permissions(dir.join(k), std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let what = format!("openssl {} (Debian package openssl)", args.join(" "));
    crate::procs::run_checked(Command::new("openssl").args(args).current_dir(dir), &what)
}

/// What both configs share: foreground, one worker, everything in the scratch directory.
fn preamble(dir: &Path, tag: &str, stream: bool) -> String {
    let d = dir.display();
    let mut c = String::new();
    if stream {
        let _ = writeln!(c, "load_module {STREAM_MODULE};");
    }
    let _ = write!(
        c,
        "daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 65536;
pid {d}/{tag}.pid;
error_log {d}/{tag}-error.log warn;
events {{ worker_connections 16384; }}
"
    );
    c
}

fn http_common(dir: &Path, tag: &str) -> String {
    let d = dir.display();
    format!(
        "    access_log off;
    client_body_temp_path {d}/{tag}-tmp/body;
    proxy_temp_path {d}/{tag}-tmp/proxy;
    fastcgi_temp_path {d}/{tag}-tmp/fastcgi;
    uwsgi_temp_path {d}/{tag}-tmp/uwsgi;
    scgi_temp_path {d}/{tag}-tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
"
    )
}

/// nginx A: clients in (HTTP/1.1, h2c, TCP), mutual TLS out to B.
fn config_a(dir: &Path, pki: &Pki, stream: bool) -> String {
    let (a, b) = (ip(153), ip(154));
    let tls_out = |indent: &str| {
        [
            format!("proxy_ssl_certificate {};", pki.client_crt),
            format!("proxy_ssl_certificate_key {};", pki.client_key),
            format!("proxy_ssl_trusted_certificate {};", pki.ca),
            "proxy_ssl_verify on;".to_string(),
            format!("proxy_ssl_name {B_NAME};"),
            "proxy_ssl_protocols TLSv1.3;".to_string(),
            "proxy_ssl_session_reuse on;".to_string(),
        ]
        .iter()
        .map(|l| format!("{indent}{l}\n"))
        .collect::<String>()
    };
    let mut c = preamble(dir, "nginx-a", stream);
    let _ = write!(
        c,
        "http {{
{common}    upstream b {{
        server {b}:{B_HTTPS};
        keepalive {UPSTREAM_POOL};
        keepalive_requests 1000000;
    }}
    server {{
        listen {a}:{A_HTTP};
        listen {a}:{A_H2} http2;
        location / {{
            proxy_pass https://b;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
{tls}        }}
    }}
}}
",
        common = http_common(dir, "nginx-a"),
        tls = tls_out("            "),
    );
    if stream {
        let _ = write!(
            c,
            "stream {{
    server {{
        listen {a}:{A_TCP};
        proxy_pass {b}:{B_TLS_TCP};
        proxy_ssl on;
{tls}    }}
}}
",
            tls = tls_out("        "),
        );
    }
    c
}

/// nginx B: mutual TLS in (HTTP and TCP), plain out to the backend and the sink.
fn config_b(dir: &Path, pki: &Pki, stream: bool) -> String {
    let b = ip(154);
    let tls_in = format!(
        "        ssl_certificate {};
        ssl_certificate_key {};
        ssl_protocols TLSv1.3;
        ssl_client_certificate {};
        ssl_verify_client on;
",
        pki.server_crt, pki.server_key, pki.ca
    );
    let mut c = preamble(dir, "nginx-b", stream);
    let _ = write!(
        c,
        "http {{
{common}    upstream app {{
        server {b}:{APP_PORT};
        keepalive {UPSTREAM_POOL};
        keepalive_requests 1000000;
    }}
    server {{
        listen {b}:{B_HTTPS} ssl;
{tls_in}        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
",
        common = http_common(dir, "nginx-b"),
    );
    if stream {
        let _ = write!(
            c,
            "stream {{
    server {{
        listen {b}:{B_TLS_TCP} ssl;
{tls_in}        proxy_pass {b}:{SINK_PORT};
    }}
}}
"
        );
    }
    c
}

/// nginx as the application of [`crate::deployed`]: on every address, HTTP/1.1 on
/// `http` and HTTP/2 with prior knowledge on `h2`, answering every request `200` with the
/// backend's 1024-byte body; one worker, everything in the scratch directory.
pub(crate) fn app_config(dir: &Path, tag: &str, http: u16, h2: u16) -> String {
    let body = "x".repeat(crate::backend::BODY_LEN);
    format!(
        "{}http {{
{}    server {{
        listen 0.0.0.0:{http} backlog=4096;
        listen 0.0.0.0:{h2} http2 backlog=4096;
        http2_max_concurrent_streams 1024;
        location / {{ return 200 \"{body}\"; }}
    }}
}}
",
        preamble(dir, tag, false),
        http_common(dir, tag)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_name_every_file_in_the_scratch_dir() {
        let dir = Path::new("/tmp/x");
        let pki = Pki::in_dir(dir);
        let a = config_a(dir, &pki, true);
        assert!(a.contains("load_module"), "{a}");
        assert!(
            a.contains("proxy_ssl_certificate /tmp/x/client.crt;"),
            "{a}"
        );
        assert!(a.contains("listen 127.0.0.153:8081 http2;"), "{a}");
        assert!(a.contains("proxy_pass 127.0.0.154:9443;"), "{a}");
        let b = config_b(dir, &pki, false);
        assert!(!b.contains("stream {") && !b.contains("load_module"), "{b}");
        assert!(b.contains("ssl_verify_client on;"), "{b}");
        assert!(b.contains("pid /tmp/x/nginx-b.pid;"), "{b}");
    }
}
