//! `skein canary status|promote|abort|pause|resume NAME`: a rollout as an operator reads
//! it (phase, a bar of the weight, the steps, the last checks with their metric values,
//! the events, when the next check comes) and the operator's four requests, which the API
//! records in the Canary's status for the controller.

use crate::cli::{align, Client, Target};
use crate::signals::encode;
use crate::trace_cmd::printable;
use http::Method;
use skein_model::resource::{Canary, CanaryPhase, CanaryStatus, CheckResult, Resource};
use std::time::Duration;

/// Width of the weight bar, in characters.
const BAR: usize = 40;

/// Checks and events `status` shows (the newest).
const SHOWN: usize = 8;

async fn fetch(client: &Client, namespace: &str, name: &str) -> anyhow::Result<Canary> {
    let (name, namespace) = (encode(name), encode(namespace));
    let path = format!("/api/v1/resources/canaries/{name}?namespace={namespace}");
    let value = client.call(Method::GET, &path, String::new()).await?;
    match serde_json::from_value::<Resource>(value)? {
        Resource::Canary(c) => Ok(*c),
        other => anyhow::bail!("expected a Canary, got {}", other.describe()),
    }
}

/// `skein canary status NAME`; with `watch`, then each new event as it happens until the
/// rollout ends.
pub async fn status(
    target: &Target,
    namespace: &str,
    name: &str,
    watch: bool,
) -> anyhow::Result<()> {
    let client = Client::new(target)?;
    let canary = fetch(&client, namespace, name).await?;
    print!("{}", render(&canary, now_unix()));
    if !watch {
        return Ok(());
    }
    let mut last = canary.status.clone().unwrap_or_default();
    loop {
        let status = fetch(&client, namespace, name)
            .await?
            .status
            .unwrap_or_default();
        // New events, new checks that are not events (inconclusive ones, checks while
        // waiting for approval), and what the controller now says it is doing.
        for e in status.events.iter().filter(|e| !last.events.contains(e)) {
            let phase = format!("{:?}", e.phase);
            let message = printable(&e.message);
            println!("{}  {phase:<12} {:>3}%  {message}", e.time, e.weight);
        }
        for k in status.checks.iter().filter(|k| !last.checks.contains(k)) {
            if !status.events.iter().any(|e| e.time == k.time) {
                let words = printable(&check_words(k));
                println!("{}  check        {:>3}%  {words}", k.time, k.weight);
            }
        }
        let told = status.events.iter().any(|e| e.message == status.message);
        if status.message != last.message && !told {
            let w = status.canary_weight;
            let message = printable(&status.message);
            println!("{:<20}  now          {w:>3}%  {message}", "");
        }
        if status.phase.is_final() {
            return Ok(());
        }
        last = status;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A check in words: its result, requests and values.
fn check_words(k: &skein_model::resource::CheckRecord) -> String {
    let result = match k.result {
        CheckResult::Passed => "passed",
        CheckResult::Failed => "FAILED",
        CheckResult::Inconclusive => "inconclusive",
    };
    let rate = k.success_rate.map_or("-".into(), |r| format!("{r:.2}%"));
    let p99 = k.p99_ms.map_or("-".into(), |p| format!("{p:.1}ms"));
    let why = if k.message.is_empty() {
        String::new()
    } else {
        format!(": {}", k.message)
    };
    format!(
        "{result} ({} requests, success {rate}, p99 {p99}){why}",
        k.requests
    )
}

/// `skein canary promote|abort|pause|resume NAME`.
pub async fn act(target: &Target, namespace: &str, name: &str, action: &str) -> anyhow::Result<()> {
    let client = Client::new(target)?;
    let path = format!(
        "/api/v1/canaries/{}/{}/{action}",
        encode(namespace),
        encode(name)
    );
    client.call(Method::POST, &path, String::new()).await?;
    let what = match action {
        "promote" => "promotion requested: the canary receives 100% at the controller's next pass",
        "abort" => "abort requested: the canary is rolled back to 0% at the controller's next pass",
        "pause" => "paused: no checks and no weight changes until `skein canary resume`",
        _ => "resumed: the next check comes after a full interval",
    };
    println!("canary {namespace}/{name}: {what}");
    Ok(())
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch of an RFC 3339 UTC time as the control plane writes it
/// (`2026-12-03T21:55:00Z`).
fn parse_time(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() != 20 || b[19] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

fn bar(weight: u32) -> String {
    let filled = (weight.min(100) as usize * BAR).div_ceil(100);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(BAR - filled))
}

/// The status as text, at `now` (unix seconds).
fn render(c: &Canary, now: i64) -> String {
    let s: CanaryStatus = c.status.clone().unwrap_or_default();
    let spec = &c.spec;
    let mut out = format!(
        "Canary {}/{}: Service {} from {} (stable) to {} (canary)\n",
        c.metadata.namespace, c.metadata.name, spec.target_ref.name, spec.stable, spec.canary
    );
    let since = s
        .last_transition_time
        .as_deref()
        .map_or(String::new(), |t| format!("  since {t}"));
    let paused = if s.paused { "  (paused)" } else { "" };
    out += &format!("Phase:    {:?}{paused}{since}\n", s.phase);
    let a = &spec.analysis;
    let steps = match a.iterations {
        Some(n) => format!("A/B: {} of {n} checks passed", s.iterations.min(n)),
        None => {
            let list: Vec<String> = a
                .steps()
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let current = s.phase == CanaryPhase::Progressing
                        && i as u32 + u32::from(a.mirror) == s.iterations;
                    if current {
                        format!("[{w}%]")
                    } else {
                        format!("{w}%")
                    }
                })
                .collect();
            let mirror = if a.mirror { "mirror → " } else { "" };
            format!("steps {mirror}{} → promote", list.join(" → "))
        }
    };
    out += &format!(
        "Weight:   {} {:>3}%   {steps}\n",
        bar(s.canary_weight),
        s.canary_weight
    );
    out += &format!(
        "Checks:   every {}, {} failed (rolled back at {}), at least {} requests each\n",
        skein_model::duration::format(a.interval),
        s.failed_checks,
        a.threshold,
        a.min_requests
    );
    if let Some(next) = s.next_check_time.as_deref().and_then(parse_time) {
        if !s.phase.is_final() && !s.paused {
            let next = if next >= now {
                format!("in {}s", next - now)
            } else {
                format!(
                    "overdue by {}s: is a control-plane replica leading? (its log, or /api/v1/status)",
                    now - next
                )
            };
            out += &format!("Next:     {next}\n");
        }
    }
    if !s.message.is_empty() {
        out += &format!("Now:      {}\n", printable(&s.message));
    }
    if !s.checks.is_empty() {
        out += "\nLast checks:\n";
        let rows: Vec<Vec<String>> = s.checks[s.checks.len().saturating_sub(SHOWN)..]
            .iter()
            .map(|k| {
                let result = match k.result {
                    CheckResult::Passed => "passed",
                    CheckResult::Failed => "FAILED",
                    CheckResult::Inconclusive => "inconclusive",
                };
                vec![
                    k.time.clone(),
                    format!("{}%", k.weight),
                    result.into(),
                    k.requests.to_string(),
                    k.success_rate.map_or("-".into(), |r| format!("{r:.2}%")),
                    k.p99_ms.map_or("-".into(), |p| format!("{p:.1}ms")),
                    printable(&k.message),
                ]
            })
            .collect();
        out += &align(
            &[
                "TIME", "WEIGHT", "RESULT", "REQUESTS", "SUCCESS", "P99", "WHY",
            ],
            &rows,
        );
    }
    if !s.events.is_empty() {
        out += "\nEvents:\n";
        let rows: Vec<Vec<String>> = s.events[s.events.len().saturating_sub(SHOWN)..]
            .iter()
            .map(|e| {
                vec![
                    e.time.clone(),
                    format!("{:?}", e.phase),
                    format!("{}%", e.weight),
                    printable(&e.message),
                ]
            })
            .collect();
        out += &align(&["TIME", "PHASE", "WEIGHT", "MESSAGE"], &rows);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_bars() {
        assert_eq!(parse_time("1970-01-01T00:00:10Z"), Some(10));
        assert_eq!(parse_time("2026-12-03T21:55:00Z"), Some(1_796_334_900));
        assert_eq!(parse_time("2026-12-03"), None);
        assert_eq!(bar(0), format!("[{}]", "-".repeat(40)));
        assert_eq!(bar(25), format!("[{}{}]", "#".repeat(10), "-".repeat(30)));
        assert_eq!(bar(100), format!("[{}]", "#".repeat(40)));
    }

    #[test]
    fn status_shows_steps_checks_and_next() {
        let yaml = "apiVersion: skein.dev/v1alpha1\nkind: Canary\nmetadata: {name: web}\n\
             spec: {targetRef: {name: web}, stable: web-v1, canary: web-v2, analysis: {interval: 10s, stepWeights: [5, 25, 50]}}\n\
             status: {phase: Progressing, canaryWeight: 25, iterations: 1, failedChecks: 1, \
             nextCheckTime: '1970-01-01T00:00:30Z', message: 'check passed', \
             checks: [{time: '1970-01-01T00:00:05Z', weight: 5, result: passed, requests: 120, successRate: 100.0, p99Ms: 3.2}]}\n";
        let Resource::Canary(c) = skein_model::parse_documents(yaml, "t").unwrap().remove(0) else {
            unreachable!()
        };
        let text = render(&c, 12);
        assert!(text.contains("Phase:    Progressing"), "{text}");
        assert!(
            text.contains(&format!(
                "{}  25%   steps 5% → [25%] → 50% → promote",
                bar(25)
            )),
            "{text}"
        );
        assert!(
            text.contains(
                "Checks:   every 10s, 1 failed (rolled back at 5), at least 20 requests each"
            ),
            "{text}"
        );
        assert!(text.contains("Next:     in 18s"), "{text}");
        assert!(
            text.contains("passed   120        100.00%   3.2ms"),
            "{text}"
        );
    }
}
