//! Judging what the control plane answered: its version and store, the mesh CA, and every
//! proxy (connected, configuration acknowledged, certificate, clock). Pure: the API's JSON
//! and the time in, checks out, so that each verdict is unit-tested.

use super::{Check, CONTROL, IDENTITY, PROXIES};
use serde_json::Value;

/// `/healthz` answers.
pub const REACHABLE: &str = "control plane reachable";
/// The admin token is accepted.
pub const TOKEN: &str = "admin token accepted";
/// The control plane's version, compared with this CLI's.
pub const VERSION: &str = "control plane version";
/// The store answers.
pub const STORE: &str = "store healthy";
/// The mesh CA is valid now and not about to expire.
pub const CA: &str = "mesh CA valid";
/// Every proxy that registered is connected.
pub const CONNECTED: &str = "proxies connected";
/// Every connected proxy applied the configuration it was last sent.
pub const ACKNOWLEDGED: &str = "configuration acknowledged";
/// Every connected proxy's certificate is valid and renewed in time.
pub const CERTIFICATES: &str = "proxy certificates";
/// Every connected proxy's clock agrees with the control plane's.
pub const CLOCK: &str = "clock skew";

/// A CA expiring sooner than this is a warning.
const CA_WARN_SECS: i64 = 30 * 24 * 3600;
/// Clock skew above this is a warning (milliseconds).
const SKEW_WARN_MS: i64 = 1_000;
/// Clock skew above this fails (milliseconds). A running proxy checks certificates by the
/// control plane's clock, whatever its host's says; but a proxy that starts checks the
/// control plane's certificate (backdated 60 s) by its host's clock, and stamps its spans
/// and logs with it.
const SKEW_FAIL_MS: i64 = 30_000;

/// What the proxies' checks look at.
pub struct View<'a> {
    /// `GET /api/v1/resources/workloads`.
    pub workloads: &'a Value,
    /// `GET /api/v1/connections`.
    pub connections: &'a Value,
    /// `GET /api/v1/status`.
    pub status: &'a Value,
    /// Now, Unix seconds.
    pub now: i64,
}

/// The control plane's version against this CLI's: a difference is a warning.
pub fn version(status: &Value, cli: &str) -> Check {
    match status["version"].as_str() {
        Some(v) if v == cli => Check::ok(CONTROL, VERSION, v),
        Some(v) => Check::warn(
            CONTROL,
            VERSION,
            format!("the control plane runs {v}, this CLI is {cli}"),
            "run the same version of skein everywhere: upgrade the older one",
        ),
        None => Check::warn(
            CONTROL,
            VERSION,
            "the control plane does not say its version (older than this CLI)",
            "upgrade the control plane",
        ),
    }
}

/// Whether the store answered the control plane's probe.
pub fn store(status: &Value) -> Check {
    let store = &status["store"];
    let kind = store["kind"].as_str().unwrap_or("unknown");
    match store["healthy"].as_bool() {
        Some(true) => Check::ok(CONTROL, STORE, kind),
        Some(false) => {
            let error = store["error"].as_str().unwrap_or("no reason given");
            let hint = match kind.starts_with("etcd://") {
                true => "check etcd (`etcdctl endpoint health`) and the control plane's log; proxies keep their last configuration, but nothing can be applied meanwhile",
                false => "look at the control plane's log (disk full? the data directory's file system?)",
            };
            Check::fail(CONTROL, STORE, format!("{kind}: {error}"), hint)
        }
        None => Check::warn(
            CONTROL,
            STORE,
            "the control plane does not report its store's health (older than this CLI)",
            "upgrade the control plane",
        ),
    }
}

/// The mesh CA (`GET /api/v1/ca`): valid now; a warning within 30 days of its end.
pub fn ca(ca: &Value, now: i64) -> Check {
    let window = |v: &Value| Some((v["notBeforeUnix"].as_i64()?, v["notAfterUnix"].as_i64()?));
    let (Some(root), Some(int)) = (window(&ca["root"]), window(&ca["intermediate"])) else {
        return Check::warn(
            IDENTITY,
            CA,
            "the control plane does not report the CA's validity (older than this CLI)",
            "upgrade the control plane",
        );
    };
    let start = root.0.max(int.0);
    let (end, which) = match root.1 < int.1 {
        true => (root.1, "root"),
        false => (int.1, "intermediate"),
    };
    let rotate = "`skein ca rotate`: a new root and intermediate, every proxy moved to them while traffic flows";
    if now < start {
        return Check::fail(
            IDENTITY,
            CA,
            format!("the CA is not valid until {} (in {})", when(start), human(start - now)),
            "set this host's clock right (chrony, systemd-timesyncd): the CA's dates come from the control plane's",
        );
    }
    if now >= end {
        return Check::fail(
            IDENTITY,
            CA,
            format!(
                "the CA's {which} certificate expired {} ago ({})",
                human(now - end),
                when(end)
            ),
            format!("proxies can no longer renew their certificates: {rotate}"),
        );
    }
    let domain = ca["trustDomain"].as_str().unwrap_or("?");
    let facts = format!(
        "trust domain {domain}, generation {}; the {which} certificate expires in {} ({})",
        ca["generation"],
        human(end - now),
        when(end)
    );
    match end - now < CA_WARN_SECS {
        true => Check::warn(IDENTITY, CA, facts, format!("rotate before then: {rotate}")),
        false => Check::ok(IDENTITY, CA, facts),
    }
}

/// Connections that have not applied what they were last sent, without having refused it
/// (still working on it, or stuck): `namespace/workload`.
pub fn behind(connections: &Value) -> Vec<String> {
    items(connections)
        .filter(|c| c["lastError"].is_null() && acked(c) < sent(c))
        .map(name)
        .collect()
}

/// The proxies' four checks.
pub fn proxies(view: &View) -> Vec<Check> {
    vec![
        connected(view.workloads, view.connections, view.status),
        acknowledged(view.connections),
        certificates(view.connections, view.status, view.now),
        clock(view.connections),
    ]
}

fn items(list: &Value) -> impl Iterator<Item = &Value> {
    list["items"].as_array().into_iter().flatten()
}

fn name(c: &Value) -> String {
    format!(
        "{}/{}",
        c["namespace"].as_str().unwrap_or("?"),
        c["workload"].as_str().unwrap_or("?")
    )
}

fn acked(c: &Value) -> u64 {
    c["ackedVersion"].as_u64().unwrap_or(0)
}

fn sent(c: &Value) -> u64 {
    c["sentVersion"].as_u64().unwrap_or(0)
}

/// Every Workload a proxy registered (those declared by hand have no status) is
/// connected, to this replica or another.
fn connected(workloads: &Value, connections: &Value, status: &Value) -> Check {
    let replica = status["replica"].as_str().unwrap_or_default();
    let registered: Vec<&Value> = items(workloads)
        .filter(|w| w["status"]["controlPlane"].is_string())
        .collect();
    let down: Vec<String> = registered
        .iter()
        .filter(|w| w["status"]["connected"] != true)
        .map(|w| {
            let m = &w["metadata"];
            let since = w["status"]["since"].as_str().unwrap_or("?");
            format!(
                "{}/{} (since {since})",
                m["namespace"].as_str().unwrap_or("?"),
                m["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let elsewhere = registered
        .iter()
        .filter(|w| w["status"]["connected"] == true && w["status"]["controlPlane"] != replica)
        .count();
    if !down.is_empty() {
        // A warning: a workload that stopped on purpose (a `skein run` that ended) stays
        // registered, disconnected, until --workload-grace has passed, and the control
        // plane cannot tell it from one that lost its way.
        return Check::warn(
            PROXIES,
            CONNECTED,
            format!(
                "{} of {} registered proxies disconnected: {}",
                down.len(),
                registered.len(),
                down.join(", ")
            ),
            "if it should be running, start the proxy or read its log for why it cannot reach the control plane's proxy API; a workload that left for good is removed --workload-grace after it disconnected",
        );
    }
    let here = items(connections).count();
    let mut message = format!("{} registered, all connected", registered.len());
    if registered.is_empty() {
        message = format!("no proxy registered ({here} connected)");
    }
    if elsewhere > 0 {
        message.push_str(&format!(
            "; {elsewhere} through another replica (run skein check against it for their details)"
        ));
    }
    Check::ok(PROXIES, CONNECTED, message)
}

/// Every proxy on this replica applied the last snapshot it was sent, and refused none.
fn acknowledged(connections: &Value) -> Check {
    let refused: Vec<String> = items(connections)
        .filter_map(|c| Some(format!("{} refused {}", name(c), c["lastError"].as_str()?)))
        .collect();
    let stuck: Vec<String> = items(connections)
        .filter(|c| c["lastError"].is_null() && acked(c) < sent(c))
        .map(|c| {
            format!(
                "{} has not acknowledged version {} (it applied {})",
                name(c),
                sent(c),
                acked(c)
            )
        })
        .collect();
    let mut hints = Vec::new();
    if !refused.is_empty() {
        hints.push("fix what the refusal names and apply again (a change to a workload or a listener needs the proxy restarted)");
    }
    if !stuck.is_empty() {
        hints.push(
            "the proxy is stuck or overloaded: read its log and its admin /ready, and restart it",
        );
    }
    if !hints.is_empty() {
        let problems: Vec<String> = refused.into_iter().chain(stuck).collect();
        return Check::fail(PROXIES, ACKNOWLEDGED, problems.join("; "), hints.join("; "));
    }
    let n = items(connections).count();
    let versions: std::collections::BTreeSet<u64> = items(connections).map(acked).collect();
    let versions: Vec<String> = versions.iter().map(u64::to_string).collect();
    match n {
        0 => Check::skip(PROXIES, ACKNOWLEDGED, "no proxy connected to this replica"),
        n => Check::ok(
            PROXIES,
            ACKNOWLEDGED,
            format!(
                "{n} {} applied the latest {} sent (version {})",
                if n == 1 { "proxy" } else { "proxies" },
                if n == 1 { "it was" } else { "they were" },
                versions.join(", ")
            ),
        ),
    }
}

/// Every proxy's certificate is unexpired; one past 90 % of its life (renewal is due at
/// 70 %) is a warning.
fn certificates(connections: &Value, status: &Value, now: i64) -> Check {
    let ttl = status["workloadCertTtlSeconds"]
        .as_i64()
        .unwrap_or(3600)
        .max(1);
    let (mut expired, mut late, mut unreported) = (Vec::new(), Vec::new(), Vec::new());
    let mut soonest: Option<i64> = None;
    for c in items(connections) {
        let cert = &c["certificate"];
        let Some(end) = cert["notAfter"].as_i64() else {
            unreported.push(name(c));
            continue;
        };
        let expires = cert["expires"].as_str().unwrap_or("?");
        let left = end - now;
        if left <= 0 {
            expired.push(format!(
                "{}'s certificate expired {} ago ({expires})",
                name(c),
                human(-left)
            ));
        } else if left * 10 < ttl {
            late.push(format!(
                "{}'s certificate expires in {} ({expires}), past 90 % of its {} life: its renewal (due at 70 %) is late",
                name(c),
                human(left),
                human(ttl)
            ));
        }
        soonest = Some(soonest.map_or(left, |s| s.min(left)));
    }
    if !expired.is_empty() {
        return Check::fail(
            PROXIES,
            CERTIFICATES,
            expired.join("; "),
            "its proxy is not renewing: check that it runs and reaches the control plane's proxy API (its log says why), or restart it; peers refuse an expired certificate",
        );
    }
    if !late.is_empty() {
        return Check::warn(
            PROXIES,
            CERTIFICATES,
            late.join("; "),
            "check that the proxy reaches the control plane's proxy API (its log says why)",
        );
    }
    if !unreported.is_empty() {
        return Check::warn(
            PROXIES,
            CERTIFICATES,
            format!("no certificate reported yet by {}", unreported.join(", ")),
            "a proxy reports its certificate right after registering; if this stays, read its log",
        );
    }
    match soonest {
        None => Check::skip(PROXIES, CERTIFICATES, "no proxy connected to this replica"),
        Some(s) => Check::ok(
            PROXIES,
            CERTIFICATES,
            format!(
                "{} valid, the soonest expires in {}",
                items(connections).count(),
                human(s)
            ),
        ),
    }
}

/// Every proxy's clock within a second of the control plane's; more than 30 s fails.
fn clock(connections: &Value) -> Check {
    let mut worst: Option<(i64, String)> = None;
    let mut unmeasured = Vec::new();
    for c in items(connections) {
        match c["clockSkewMs"].as_i64() {
            Some(ms) if worst.as_ref().is_none_or(|(w, _)| ms.abs() > w.abs()) => {
                worst = Some((ms, name(c)))
            }
            Some(_) => {}
            None => unmeasured.push(name(c)),
        }
    }
    let describe = |ms: i64, who: &str| {
        let side = if ms >= 0 { "ahead of" } else { "behind" };
        format!(
            "{who}'s clock is {:.1} s {side} the control plane's",
            ms.abs() as f64 / 1000.0
        )
    };
    let sync = "synchronise the clocks of the proxy's and the control plane's hosts (chrony, systemd-timesyncd)";
    match worst {
        Some((ms, who)) if ms.abs() > SKEW_FAIL_MS => Check::fail(
            PROXIES,
            CLOCK,
            describe(ms, &who),
            format!("{sync}: a running proxy checks certificates by the control plane's clock, but one that starts checks the control plane's certificate (backdated only 60 s) by its host's clock, so a clock this far off may fail to join; spans and logs carry the host's time"),
        ),
        Some((ms, who)) if ms.abs() > SKEW_WARN_MS => {
            Check::warn(PROXIES, CLOCK, describe(ms, &who), sync)
        }
        _ if !unmeasured.is_empty() => Check::warn(
            PROXIES,
            CLOCK,
            format!("not measured yet for {}", unmeasured.join(", ")),
            "it is measured from each proxy's telemetry summaries (every telemetry.summaryInterval, 5 s by default); check again shortly",
        ),
        Some((ms, who)) => Check::ok(
            PROXIES,
            CLOCK,
            format!("at most {} ms ({who})", ms.abs()),
        ),
        None => Check::skip(PROXIES, CLOCK, "no proxy connected to this replica"),
    }
}

/// A duration in words: `42s`, `5m 3s`, `7h 12m`, `364 days`.
pub fn human(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..172_800 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{} days", s / 86_400),
    }
}

fn when(unix: i64) -> String {
    skein_model::time::UtcTime::from_unix(unix.max(0) as u64).rfc3339()
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn conn(name: &str, sent: u64, acked: u64) -> Value {
        json!({"workload": name, "namespace": "default", "sentVersion": sent, "ackedVersion": acked,
               "lastError": null, "certificate": {"notAfter": NOW + 3000, "expires": "later"},
               "clockSkewMs": 3})
    }

    fn workload(name: &str, connected: bool, replica: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default"},
               "status": {"connected": connected, "since": "2027-01-15T08:00:00Z", "controlPlane": replica}})
    }

    fn status() -> Value {
        json!({"replica": "cp-1", "version": "0.1.0", "workloadCertTtlSeconds": 3600,
               "store": {"kind": "embedded", "healthy": true, "error": null}})
    }

    fn run(workloads: Vec<Value>, conns: Vec<Value>) -> Vec<Check> {
        let (w, c, s) = (
            json!({"items": workloads}),
            json!({"items": conns}),
            status(),
        );
        proxies(&View {
            workloads: &w,
            connections: &c,
            status: &s,
            now: NOW,
        })
    }

    fn verdicts(checks: &[Check]) -> Vec<(&str, Status)> {
        checks.iter().map(|c| (c.name, c.status)).collect()
    }

    #[test]
    fn a_healthy_mesh_passes_every_proxy_check() {
        let checks = run(
            vec![
                workload("web-1", true, "cp-1"),
                json!({"metadata": {"name": "by-hand"}}),
            ],
            vec![conn("web-1", 7, 7)],
        );
        assert!(checks.iter().all(|c| c.status == Status::Ok), "{checks:#?}");
        assert_eq!(checks[0].message, "1 registered, all connected");
        assert_eq!(checks[2].message, "1 valid, the soonest expires in 50m 0s");
    }

    #[test]
    fn each_proxy_fault_fails_its_own_line() {
        let down = run(vec![workload("web-1", false, "cp-1")], vec![]);
        assert_eq!(down[0].status, Status::Warn);
        assert_eq!(
            down[1].status,
            Status::Skip,
            "nothing to judge is not a pass"
        );
        assert!(down[0]
            .message
            .contains("default/web-1 (since 2027-01-15T08:00:00Z)"));

        let mut refused = conn("web-2", 9, 8);
        refused["lastError"] = json!("version 9: destination x: address \"y\" is not an IP");
        let checks = run(vec![], vec![conn("web-1", 9, 8), refused]);
        assert_eq!(checks[1].status, Status::Fail);
        assert!(
            checks[1]
                .message
                .contains("default/web-2 refused version 9"),
            "{}",
            checks[1].message
        );
        assert!(checks[1]
            .message
            .contains("default/web-1 has not acknowledged version 9 (it applied 8)"));
        assert_eq!(
            behind(&json!({"items": [conn("web-1", 9, 8)]})),
            ["default/web-1"]
        );

        let mut expired = conn("web-1", 1, 1);
        expired["certificate"]["notAfter"] = json!(NOW - 7);
        let checks = run(vec![], vec![expired]);
        assert_eq!(
            verdicts(&checks),
            [
                (CONNECTED, Status::Ok),
                (ACKNOWLEDGED, Status::Ok),
                (CERTIFICATES, Status::Fail),
                (CLOCK, Status::Ok)
            ]
        );
        assert!(checks[2].message.contains("expired 7s ago"));

        let mut late = conn("web-1", 1, 1);
        late["certificate"]["notAfter"] = json!(NOW + 300);
        assert_eq!(run(vec![], vec![late])[2].status, Status::Warn);
    }

    #[test]
    fn clock_skew_warns_above_a_second_and_fails_above_thirty() {
        let skewed = |ms: i64| {
            let mut c = conn("web-1", 1, 1);
            c["clockSkewMs"] = json!(ms);
            run(vec![], vec![conn("web-2", 1, 1), c]).remove(3)
        };
        assert_eq!(skewed(900).status, Status::Ok);
        assert_eq!(skewed(-1500).status, Status::Warn);
        let failed = skewed(-42_100);
        assert_eq!(failed.status, Status::Fail);
        assert_eq!(
            failed.message,
            "default/web-1's clock is 42.1 s behind the control plane's"
        );
        let mut unmeasured = conn("web-1", 1, 1);
        unmeasured["clockSkewMs"] = Value::Null;
        assert_eq!(run(vec![], vec![unmeasured])[3].status, Status::Warn);
    }

    #[test]
    fn the_ca_must_be_valid_now_and_warns_within_thirty_days() {
        let ca = |from: i64, to: i64| {
            json!({"trustDomain": "skein.local", "generation": 1,
                   "root": {"notBeforeUnix": NOW - 100, "notAfterUnix": NOW + 3650 * 86_400},
                   "intermediate": {"notBeforeUnix": from, "notAfterUnix": to}})
        };
        let ok = super::ca(&ca(NOW - 100, NOW + 364 * 86_400), NOW);
        assert_eq!(ok.status, Status::Ok);
        assert!(ok
            .message
            .contains("intermediate certificate expires in 364 days"));
        assert_eq!(
            super::ca(&ca(NOW - 100, NOW + 12 * 86_400), NOW).status,
            Status::Warn
        );
        let expired = super::ca(&ca(NOW - 100, NOW - 60), NOW);
        assert_eq!(expired.status, Status::Fail);
        assert!(expired.message.contains("expired 1m 0s ago"));
        assert_eq!(
            super::ca(&ca(NOW + 600, NOW + 86_400 * 365), NOW).status,
            Status::Fail
        );
        assert_eq!(super::ca(&json!({}), NOW).status, Status::Warn);
    }

    #[test]
    fn version_and_store() {
        assert_eq!(version(&status(), "0.1.0").status, Status::Ok);
        assert_eq!(version(&status(), "0.2.0").status, Status::Warn);
        assert_eq!(store(&status()).status, Status::Ok);
        let down = json!({"store": {"kind": "etcd://10.0.0.5:2379", "healthy": false, "error": "connection refused"}});
        let check = store(&down);
        assert_eq!(check.status, Status::Fail);
        assert_eq!(check.message, "etcd://10.0.0.5:2379: connection refused");
        assert!(check.hint.contains("etcdctl endpoint health"));
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human(42), "42s");
        assert_eq!(human(303), "5m 3s");
        assert_eq!(human(7 * 3600 + 720), "7h 12m");
        assert_eq!(human(364 * 86_400 + 5), "364 days");
    }
}
