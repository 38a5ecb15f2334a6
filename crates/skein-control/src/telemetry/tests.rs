use super::query::StatKind;
use super::*;
use std::time::Duration;

fn reporter(workload: &str, account: &str) -> Reporter {
    Reporter {
        namespace: "default".into(),
        workload: workload.into(),
        account: account.into(),
    }
}

fn account(name: &str) -> Option<pb::Account> {
    Some(pb::Account {
        namespace: "default".into(),
        name: name.into(),
    })
}

/// `n` requests of `ms` each from `src` to `dst` with `status`.
fn requests(inbound: bool, src: &str, dst: &str, status: u32, n: u64, ms: u64) -> pb::RequestStats {
    let bucket = skein_model::latency::bucket_of(ms * 1000) as u32;
    pb::RequestStats {
        inbound,
        protocol: "http1".into(),
        tls: true,
        src: account(src),
        dst: account(dst),
        status_code: status,
        count: n,
        latency: Some(pb::Histogram {
            buckets: vec![bucket],
            counts: vec![n],
            sum_us: n * ms * 1000,
        }),
        ..Default::default()
    }
}

fn summary(sequence: u64, requests: Vec<pb::RequestStats>) -> pb::Summary {
    pb::Summary {
        sequence,
        bucket_layout: BUCKET_LAYOUT,
        requests,
        ..Default::default()
    }
}

const MIN: Duration = Duration::from_secs(60);

#[test]
fn services_merge_their_replicas_and_count_exactly() {
    let c = Central::default();
    let now = 1_000_000;
    c.ingest(
        &reporter("api-1", "api"),
        &summary(1, vec![requests(true, "web", "api", 200, 30, 51)]),
        now,
    )
    .unwrap();
    c.ingest(
        &reporter("api-2", "api"),
        &summary(1, vec![requests(true, "web", "api", 200, 10, 52)]),
        now + 3,
    )
    .unwrap();
    c.ingest(
        &reporter("api-2", "api"),
        &summary(2, vec![requests(true, "web", "api", 503, 2, 1)]),
        now + 5,
    )
    .unwrap();
    let rows = c.stat(StatKind::Services, None, MIN, now + 5);
    assert_eq!(rows.len(), 1);
    let api = &rows[0].signals;
    assert_eq!((rows[0].id.name.as_str(), api.requests), ("api", 42));
    assert_eq!(api.success_rate, Some(40.0 / 42.0));
    let p50 = api.p50_ms.unwrap();
    let p99 = api.p99_ms.unwrap();
    assert!(
        (50.0..=60.0).contains(&p50) && (50.0..=60.0).contains(&p99),
        "{p50} {p99}"
    );
    assert_eq!(api.mtls, Some(true));
    let workloads = c.stat(StatKind::Workloads, None, MIN, now + 5);
    let names: Vec<_> = workloads
        .iter()
        .map(|r| (r.id.name.as_str(), r.signals.requests))
        .collect();
    assert_eq!(names, [("api-1", 30), ("api-2", 12)]);
    assert_eq!(workloads[0].id.service.as_deref(), Some("api"));
    assert_eq!(c.stat(StatKind::Services, Some("web"), MIN, now + 5), []);
}

#[test]
fn a_proxy_cannot_report_traffic_for_another_service_or_account() {
    let c = Central::default();
    let now = 2_000_000;
    // api-1's proxy claims inbound calls to `payments` and outbound calls from `admin`.
    let lies = summary(
        1,
        vec![
            requests(true, "web", "payments", 200, 5, 1),
            requests(false, "admin", "db", 200, 7, 1),
        ],
    );
    c.ingest(&reporter("api-1", "api"), &lies, now).unwrap();
    let services: Vec<_> = c
        .stat(StatKind::Services, None, MIN, now)
        .into_iter()
        .map(|r| r.id.name)
        .collect();
    assert_eq!(services, ["api"], "recorded as calls to its own service");
    let edges = c.edges(None, MIN, now);
    assert_eq!(
        (edges[0].src.as_str(), edges[0].dst.as_str()),
        ("web", "api")
    );
    let mut seen_admin = false;
    c.each_slot(0, |_, slot| {
        seen_admin |= slot.requests.keys().any(|k| &*k.src.name == "admin");
    });
    assert!(!seen_admin, "outbound calls are from its own account");
}

#[test]
fn edges_show_denials_and_tcp_and_routes_show_callers_traffic() {
    let c = Central::default();
    let now = 3_000_000;
    let mut denied = requests(true, "intruder", "api", 403, 4, 1);
    denied.error = "denied".into();
    let mut routed = requests(false, "web", "api", 200, 9, 1);
    routed.route = "default/api-split".into();
    routed.rule = Some(0);
    routed.retries = 2;
    let tcp = pb::TcpStats {
        inbound: true,
        tls: false,
        src: account("web"),
        dst: account("db"),
        opened: 1,
        closed: 1,
        sent_bytes: 1000,
        received_bytes: 1000,
        duration: None,
    };
    c.ingest(
        &reporter("api-1", "api"),
        &summary(1, vec![denied, requests(true, "web", "api", 200, 6, 1)]),
        now,
    )
    .unwrap();
    c.ingest(&reporter("web-1", "web"), &summary(1, vec![routed]), now)
        .unwrap();
    let mut with_tcp = summary(1, vec![]);
    with_tcp.tcp = vec![tcp];
    c.ingest(&reporter("db-1", "db"), &with_tcp, now).unwrap();
    let edges = c.edges(None, MIN, now);
    let pairs: Vec<_> = edges
        .iter()
        .map(|e| {
            (
                e.src.as_str(),
                e.dst.as_str(),
                e.signals.requests,
                e.signals.denied,
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("intruder", "api", 4, 4),
            ("web", "api", 6, 0),
            ("web", "db", 0, 0)
        ]
    );
    let db = &edges[2].signals;
    assert_eq!(
        (db.tcp_connections, db.tcp_sent_bytes, db.mtls),
        (1, 1000, Some(false))
    );
    assert_eq!(
        edges[0].signals.success_rate,
        Some(1.0),
        "a denial is not a failure"
    );
    assert_eq!(c.edges(Some("db"), MIN, now).len(), 1);
    let map = c.map(MIN, now);
    let nodes: Vec<_> = map
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.signals.is_some()))
        .collect();
    assert_eq!(
        nodes,
        [
            ("api", true),
            ("db", true),
            ("intruder", false),
            ("web", false)
        ],
        "callers nobody calls are nodes too"
    );
    // The map's one pass gives what `stat services` and `edges` give.
    let services = c.stat(StatKind::Services, None, MIN, now);
    let drawn: Vec<_> = map.nodes.iter().filter_map(|n| n.signals.clone()).collect();
    let stated: Vec<_> = services.into_iter().map(|r| r.signals).collect();
    assert_eq!(drawn, stated);
    let edge_rows: Vec<_> = map.edges.iter().map(|e| e.edge.clone()).collect();
    assert_eq!(edge_rows, c.edges(None, MIN, now));
    let kinds: Vec<_> = map
        .edges
        .iter()
        .map(|e| {
            (
                e.edge.src.as_str(),
                e.edge.dst.as_str(),
                e.protocol,
                e.authorization,
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("intruder", "api", "http", "denied"),
            ("web", "api", "http", "allowed"),
            ("web", "db", "tcp", "allowed")
        ]
    );
    let routes = c.stat(StatKind::Routes, None, MIN, now);
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].id.name, "default/api-split");
    assert_eq!(routes[0].id.service.as_deref(), Some("api"));
    assert_eq!(
        (routes[0].signals.requests, routes[0].signals.retries),
        (9, 2)
    );
}

#[test]
fn windows_keep_only_their_slots_and_an_hour_at_most() {
    let c = Central::default();
    let start = 4_000_000;
    for i in 0..400 {
        let s = summary(i + 1, vec![requests(true, "web", "api", 200, 1, 1)]);
        c.ingest(&reporter("api-1", "api"), &s, start + i as i64 * SLOT_SECS)
            .unwrap();
    }
    let now = start + 399 * SLOT_SECS;
    let count = |w: Duration| c.stat(StatKind::Services, None, w, now)[0].signals.requests;
    assert_eq!(count(MIN), 6);
    assert_eq!(
        count(Duration::from_secs(3600)),
        360,
        "an hour at 10 s resolution"
    );
    assert_eq!(
        count(Duration::from_secs(86_400)),
        360,
        "never more than the hour held"
    );
    let rps = c.stat(StatKind::Services, None, MIN, now)[0].signals.rps;
    assert!((rps - 0.1).abs() < 1e-9, "{rps}");
    // A proxy silent for longer than the window is forgotten.
    c.ingest(
        &reporter("other-1", "other"),
        &summary(1, vec![]),
        now + 3601,
    )
    .unwrap();
    assert_eq!(c.held().0, 1);
}

#[test]
fn an_unknown_bucket_layout_is_refused() {
    let c = Central::default();
    let mut s = summary(1, vec![]);
    s.bucket_layout = 2;
    let e = c.ingest(&reporter("a-1", "a"), &s, 0).unwrap_err();
    assert!(e.to_string().contains("upgrade the control plane"), "{e}");
}

#[test]
fn two_hundred_proxies_with_a_thousand_callers_each_stay_under_the_ceiling() {
    let c = Central::default();
    let start = 5_000_000;
    for slot in 0..20 {
        for proxy in 0..200 {
            let callers = (0..1000)
                .map(|i| requests(true, &format!("caller-{proxy}-{i}"), "x", 200, 1, 1))
                .collect();
            let r = reporter(&format!("svc-{proxy}-1"), &format!("svc-{proxy}"));
            c.ingest(
                &r,
                &summary(slot + 1, callers),
                start + slot as i64 * SLOT_SECS,
            )
            .unwrap();
        }
    }
    let (proxies, entries, values) = c.held();
    assert_eq!(proxies, 200);
    assert!(
        entries <= 200 * MAX_ENTRIES_PER_PROXY,
        "{entries} series-slots"
    );
    assert!(values <= MAX_VALUES + 1, "{values} interned values");
    // Nothing counted was lost, only labels: the last minute still sums every request.
    let rows = c.stat(StatKind::Services, None, MIN, start + 19 * SLOT_SECS);
    let total: u64 = rows.iter().map(|r| r.signals.requests).sum();
    assert_eq!(total, 200 * 1000 * 6);
}

fn pathway(
    src_ns: &str,
    src: &str,
    port: u32,
    method: &str,
    prefix: &str,
    count: u64,
) -> pb::PathwayStats {
    pb::PathwayStats {
        src: Some(pb::Account {
            namespace: src_ns.into(),
            name: src.into(),
        }),
        port,
        method: method.into(),
        prefix: prefix.into(),
        count,
        audited: 0,
    }
}

#[test]
fn suggestions_allow_exactly_the_observed_pathways_and_apply() {
    let c = Central::default();
    let now = 6_000_000;
    let mut s = summary(1, vec![]);
    s.pathways = vec![
        pathway("default", "web", 8080, "GET", "/menu/*", 10),
        pathway("default", "web", 8080, "GET", "/about", 2),
        pathway("default", "web", 8080, "HEAD", "/about", 1),
        pathway("default", "web", 8080, "HEAD", "/menu/*", 1),
        pathway("default", "web", 8080, "POST", "/orders/*", 3),
        pathway("shop", "cart", 8080, "PURGE", "/", 1),
        pathway("", "unauthenticated", 8080, "GET", "/healthz", 4),
        pathway(OTHER, OTHER, 8080, "GET", "/", 7),
    ];
    c.ingest(&reporter("api-1", "api"), &s, now).unwrap();
    let mut tcp = summary(1, vec![]);
    tcp.pathways = vec![pathway("default", "web", 9000, "", "", 3)];
    c.ingest(&reporter("db-1", "db"), &tcp, now).unwrap();
    let many: Vec<_> = (0..12)
        .map(|i| pathway("default", "crawler", 8080, "GET", &format!("/p{i}/*"), 1))
        .collect();
    let mut wide = summary(2, vec![]);
    wide.pathways = many;
    c.ingest(&reporter("api-1", "api"), &wide, now).unwrap();

    let all = c.suggest(None, MIN, now);
    let services: Vec<_> = all.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(services, ["api", "db"]);
    let api = &all[0];
    assert_eq!(
        api.unattributed, 7,
        "callers folded into `other` are never allowed"
    );
    let rule = |from: &str| api.rules.iter().find(|r| r.from == from).unwrap();
    let web = rule("web");
    assert_eq!((web.requests, web.prefixes), (17, 3));
    let to: Vec<_> = web
        .to
        .iter()
        .map(|t| (t.methods.join(","), t.paths.join(",")))
        .collect();
    assert_eq!(
        to,
        [
            ("GET,HEAD".to_string(), "/about,/menu/*".to_string()),
            ("POST".to_string(), "/orders/*".to_string())
        ],
        "methods reaching the same paths share an entry"
    );
    assert_eq!(
        rule("crawler").to[0].paths,
        ["/*"],
        "more than 8 prefixes: every path"
    );
    assert!(
        rule("cart").to[0].methods.is_empty(),
        "a non-standard method: any method"
    );
    let db = &all[1];
    assert_eq!(db.rules[0].to[0].ports, [9000]);
    assert!(db.rules[0].to[0].paths.is_empty(), "TCP: the port alone");
    assert_eq!(c.suggest(Some("shop"), MIN, now), []);

    let yaml = suggest::to_yaml(&all, Duration::from_secs(3600), now);
    assert!(
        yaml.contains("# default/web: 17 requests under 3 path prefixes"),
        "{yaml}"
    );
    assert!(yaml.contains("- service: cart.shop"), "{yaml}");
    assert!(yaml.contains("- unauthenticated: true"), "{yaml}");
    assert!(
        yaml.contains("# 7 requests or connections came from callers"),
        "{yaml}"
    );
    let docs =
        skein_model::parse_documents(&yaml, "suggestion").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(docs.len(), 2, "one policy per service, each valid");
}

#[test]
fn a_young_mesh_shows_its_real_rate_not_a_share_of_the_window() {
    let c = Central::default();
    let t0 = 7_000_000;
    // Six summaries two seconds apart, 40 requests each: 20 requests per second.
    for i in 0..6u64 {
        let mut s = summary(i + 1, vec![requests(true, "web", "api", 200, 40, 1)]);
        s.interval_ms = 2000;
        c.ingest(&reporter("api-1", "api"), &s, t0 + 2 * i as i64)
            .unwrap();
    }
    let rps = c.stat(StatKind::Services, None, MIN, t0 + 10)[0]
        .signals
        .rps;
    assert!(
        (rps - 20.0).abs() < 0.01,
        "{rps} rps over the 12 s the reports cover"
    );
    let edge = c.edges(None, MIN, t0 + 10)[0].signals.rps;
    assert!((edge - 20.0).abs() < 0.01, "{edge}");
}

#[test]
fn history_grows_for_the_window_then_stays() {
    let c = Central::default();
    let now = 1_000_000;
    assert_eq!(
        c.history(now),
        History {
            window_seconds: 3600,
            seconds: 0,
            series_slots: 0
        }
    );
    let who = reporter("api-1", "api");
    // A summary every 10 s for two hours: one series a slot.
    let mut at = now;
    for seq in 1..=720 {
        c.ingest(
            &who,
            &summary(seq, vec![requests(true, "web", "api", 200, 1, 1)]),
            at,
        )
        .unwrap();
        if seq == 180 {
            let half = c.history(at);
            assert_eq!(half.series_slots, 180);
            assert!((1790..=1800).contains(&half.seconds), "{half:?}");
        }
        at += SLOT_SECS;
    }
    let full = c.history(at);
    assert_eq!(full.series_slots, WINDOW_SLOTS as usize);
    assert!(
        (3600..=3610).contains(&full.seconds),
        "the oldest slot is an hour back: {full:?}"
    );
}

#[test]
fn a_series_cuts_the_window_into_steps_that_add_up_to_the_stat() {
    let c = Central::default();
    // Slot-aligned: a summary every 10 s for two minutes, web → api: 20 requests each,
    // of which (from the seventh on) 5 fail; and db, called once a slot.
    let t0 = 9_000_000;
    for i in 0..12u64 {
        let failed = if i >= 6 { 5 } else { 0 };
        let s = summary(
            i + 1,
            vec![
                requests(true, "web", "api", 200, 20 - failed, 2),
                requests(true, "web", "api", 503, failed, 2),
            ],
        );
        let at = t0 + i as i64 * SLOT_SECS;
        c.ingest(&reporter("api-1", "api"), &s, at).unwrap();
        let db = summary(i + 1, vec![requests(true, "api", "db", 200, 1, 1)]);
        c.ingest(&reporter("db-1", "db"), &db, at).unwrap();
    }
    // Five seconds into the twelfth slot: the window is the six whole slots before it.
    let now = t0 + 11 * SLOT_SECS + 5;
    let window = Duration::from_secs(60);
    let s = c.series(
        StatKind::Services,
        (None, None),
        window,
        Duration::from_secs(20),
        now,
    );
    assert_eq!(s.step_seconds, 20);
    assert_eq!(
        s.t,
        [t0 + 50, t0 + 70, t0 + 90],
        "60 s of whole slots in 20 s steps, ending where the slot under way begins"
    );
    assert!(!s.truncated);
    let names: Vec<&str> = s.rows.iter().map(|r| r.id.name.as_str()).collect();
    assert_eq!(names, ["api", "db"], "sorted");
    let api = &s.rows[0];
    // 40 requests in each 20 s step; failures from the seventh slot (t0 + 60) on.
    assert_eq!(api.rps, [2.0, 2.0, 2.0]);
    assert_eq!(api.success_rate, [Some(0.875), Some(0.75), Some(0.75)]);
    assert!(api.p99_ms.iter().all(|p| p.is_some()));
    assert_eq!(api.tcp_connections, [0, 0, 0]);
    // The slot under way is not in it: what its summaries said so far would read low.
    let summed: f64 = api.rps.iter().map(|r| r * 20.0).sum();
    assert_eq!(summed as u64, 6 * 20, "six whole slots of 20 requests");

    // One row, asked for by name; a step is never finer than the slot.
    let one = c.series(
        StatKind::Services,
        (Some("default"), Some("db")),
        window,
        Duration::from_secs(1),
        now,
    );
    assert_eq!(one.step_seconds, SLOT_SECS);
    assert_eq!(one.rows.len(), 1);
    assert_eq!(one.rows[0].id.name, "db");
    assert_eq!(one.t.len(), 6);
    assert_eq!(one.rows[0].rps, [0.1; 6], "one request a slot");
    assert!(c
        .series(
            StatKind::Services,
            (Some("other"), None),
            window,
            window,
            now
        )
        .rows
        .is_empty());
    // Workloads carry their service.
    let workloads = c.series(
        StatKind::Workloads,
        (None, Some("api-1")),
        window,
        window,
        now,
    );
    assert_eq!(workloads.rows[0].id.service.as_deref(), Some("api"));
}

#[test]
fn a_series_answers_a_bounded_number_of_rows() {
    use super::query::MAX_SERIES_ROWS;
    let c = Central::default();
    let t0 = 9_500_000;
    for i in 0..=MAX_SERIES_ROWS {
        let name = format!("svc-{i}");
        let s = summary(1, vec![requests(true, "web", &name, 200, 1, 1)]);
        c.ingest(&reporter(&format!("{name}-1"), &name), &s, t0)
            .unwrap();
    }
    let s = c.series(StatKind::Services, (None, None), MIN, MIN, t0 + SLOT_SECS);
    assert_eq!(s.rows.len(), MAX_SERIES_ROWS);
    assert!(s.truncated, "says that rows were left out");
    let one = c.series(
        StatKind::Services,
        (None, Some("svc-77")),
        MIN,
        MIN,
        t0 + SLOT_SECS,
    );
    assert_eq!(one.rows.len(), 1, "one asked for by name is always there");
    assert!(!one.truncated);
}

#[test]
fn rules_split_a_routes_traffic_and_drop_indexes_no_route_has() {
    let c = Central::default();
    let now = 7_000_000;
    let through = |route: &str, rule: Option<u32>, n: u64| pb::RequestStats {
        route: route.into(),
        rule,
        ..requests(false, "web", "api", 200, n, 1)
    };
    let routed = |rule, n| through("default/api-split", rule, n);
    let s = summary(
        1,
        vec![
            through("default/a-first", Some(10), 1),
            through("default/a-first", Some(2), 1),
            routed(Some(0), 5),
            routed(Some(1), 3),
            routed(Some(MAX_RULES as u32), 2),
            pb::RequestStats {
                rule: Some(0),
                ..requests(true, "web", "api", 200, 10, 1)
            },
        ],
    );
    c.ingest(&reporter("web-1", "web"), &s, now).unwrap();
    let rules: Vec<_> = c
        .stat(StatKind::Rules, None, MIN, now)
        .into_iter()
        .map(|r| (r.id.namespace, r.id.name, r.id.rule, r.signals.requests))
        .collect();
    let row = |route: &str, rule, n| ("default".to_string(), route.to_string(), rule, n);
    let split = |rule, n| row("default/api-split", rule, n);
    assert_eq!(
        rules,
        [
            row("default/a-first", Some(2), 1),
            row("default/a-first", Some(10), 1),
            split(None, 2),
            split(Some(0), 5),
            split(Some(1), 3)
        ],
        "by route, then rule by number; a rule past the last a route may have counts, \
         unnamed; inbound series are no rule's"
    );
    let routes = c.stat(StatKind::Routes, None, MIN, now);
    assert_eq!((routes[1].id.rule, routes[1].signals.requests), (None, 10));
    // The JSON names the rule only on rules rows.
    let json = serde_json::to_value(c.stat(StatKind::Rules, None, MIN, now)).unwrap();
    assert_eq!(json[3]["rule"], 0);
    assert!(json[2].get("rule").is_none());
    let series = c.series(StatKind::Rules, (None, None), MIN, MIN, now + SLOT_SECS);
    let named: Vec<_> = series.rows.iter().map(|r| r.id.rule).collect();
    assert_eq!(named, [Some(2), Some(10), None, Some(0), Some(1)]);
    assert_eq!("rules".parse::<StatKind>(), Ok(StatKind::Rules));
}

#[test]
fn audited_pathways_count_per_caller_and_service_and_never_exceed_the_traffic() {
    let c = Central::default();
    let now = 8_000_000;
    let audited = |src: &str, method: &str, count: u64, audited: u64| pb::PathwayStats {
        audited,
        ..pathway(
            "default",
            src,
            9000,
            method,
            if method.is_empty() { "" } else { "/" },
            count,
        )
    };
    let mut s = summary(1, vec![requests(true, "web", "ledger", 200, 4, 1)]);
    s.tcp = vec![pb::TcpStats {
        inbound: true,
        tls: true,
        src: account("web"),
        dst: account("ledger"),
        opened: 3,
        ..Default::default()
    }];
    s.pathways = vec![
        audited("web", "", 3, 3),
        audited("web", "GET", 4, 1),
        // A proxy claiming more audited than requests is believed up to its count.
        audited("batch", "GET", 2, 9),
    ];
    c.ingest(&reporter("ledger-1", "ledger"), &s, now).unwrap();
    let edges: Vec<_> = c
        .edges(None, MIN, now)
        .into_iter()
        .map(|e| (e.src, e.signals.audited))
        .collect();
    assert_eq!(edges, [("batch".to_string(), 2), ("web".to_string(), 4)]);
    let services = c.stat(StatKind::Services, None, MIN, now);
    assert_eq!(services[0].signals.audited, 6);
    let workloads = c.stat(StatKind::Workloads, None, MIN, now);
    assert_eq!(
        (workloads[0].id.name.as_str(), workloads[0].signals.audited),
        ("ledger-1", 6)
    );
    let map = c.map(MIN, now);
    assert_eq!(
        map.nodes
            .iter()
            .filter_map(|n| n.signals.as_ref())
            .map(|s| s.audited)
            .sum::<u64>(),
        6
    );
    // Suggestions still count every request along a pathway, audited or not.
    let suggested = c.suggest(None, MIN, now);
    let web = suggested[0].rules.iter().find(|r| r.from == "web").unwrap();
    assert_eq!(web.requests, 4);
}

#[test]
fn a_pass_split_over_threads_answers_exactly_what_one_pass_does() {
    let c = Central::default();
    let start = 9_000_000;
    // 30 proxies of 10 services, an hour of slots, some proxies younger than others.
    for slot in 0..WINDOW_SLOTS {
        for p in 0..30 {
            if slot < p {
                continue;
            }
            let service = format!("svc{}", p % 10);
            let mut s = summary(
                slot as u64 + 1,
                vec![
                    requests(
                        true,
                        "web",
                        &service,
                        200,
                        1 + p as u64,
                        1 + (slot % 7) as u64,
                    ),
                    requests(true, &format!("c{}", p % 4), &service, 503, 1, 30),
                ],
            );
            s.pathways = vec![pb::PathwayStats {
                audited: 1,
                ..pathway("default", "web", 80, "GET", "/", 1 + p as u64)
            }];
            let from = reporter(&format!("{service}-{p}"), &service);
            c.ingest(&from, &s, start + slot * SLOT_SECS).unwrap();
        }
    }
    let now = start + WINDOW_SLOTS * SLOT_SECS - 1;
    let hour = Duration::from_secs(3600);
    let one = c.edges_split(hour, now, 1);
    assert_eq!(
        one.len(),
        30,
        "web and two of c0..c3 into each service: {one:?}"
    );
    for threads in [2, 3, 4, 64] {
        assert_eq!(c.edges_split(hour, now, threads), one, "{threads} threads");
    }
    let series = c.series_split(StatKind::Services, (None, None), hour, MIN, now, 1);
    assert_eq!(series.rows.len(), 10);
    for threads in [2, 3, 64] {
        let split = c.series_split(StatKind::Services, (None, None), hour, MIN, now, threads);
        assert_eq!(split, series, "{threads} threads");
    }
    // The map's services (split) are what `stat services` (one pass) says.
    let drawn: Vec<_> = c
        .map(hour, now)
        .nodes
        .into_iter()
        .filter_map(|n| n.signals)
        .collect();
    let stated: Vec<_> = c
        .stat(StatKind::Services, None, hour, now)
        .into_iter()
        .map(|r| r.signals)
        .collect();
    assert_eq!(drawn, stated);
}

#[test]
fn a_split_series_keeps_its_row_bound_and_says_it_was_cut() {
    let c = Central::default();
    let t0 = 10_000_000;
    for i in 0..query::MAX_SERIES_ROWS + 10 {
        let name = format!("s{i:04}");
        let s = summary(1, vec![requests(true, "web", &name, 200, 1, 1)]);
        c.ingest(&reporter(&format!("{name}-1"), &name), &s, t0)
            .unwrap();
    }
    let hour = Duration::from_secs(3600);
    let series = |threads| {
        c.series_split(
            StatKind::Services,
            (None, None),
            hour,
            MIN,
            t0 + SLOT_SECS,
            threads,
        )
    };
    let one = series(1);
    assert_eq!(one.rows.len(), query::MAX_SERIES_ROWS);
    assert!(one.truncated);
    for threads in [2, 4] {
        assert_eq!(
            series(threads),
            one,
            "{threads} threads: the same rows and values"
        );
    }
}
