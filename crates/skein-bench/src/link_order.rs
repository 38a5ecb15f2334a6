//! `skein-bench link-order`: the list of functions the `skein` binary's linker places
//! first (`crates/skein/link-order.txt`, read by `crates/skein/build.rs`), from callgrind
//! profiles of proxies at work.
//!
//! Why: the kernel maps code into a process in 64 KiB windows around each page touched,
//! so a proxy's RSS holds every window its functions fall in. Placed together, the
//! functions a proxy runs take a quarter of the windows (docs/ARCHITECTURE.md, "Binary
//! size and memory").
//!
//! Input: profiles written with `--demangle=no` (symbol names as the binary has them),
//! from `bench/link-order`: a standalone pair idle after one request
//! (`bench/idle-rss`), and the mesh's pair under its control plane from start-up through
//! HTTP/1.1, HTTP/2, gRPC and TCP (`bench/run --only callgrind`); each argument is one such
//! scenario. Output: every function those profiles saw run that the binary defines, one
//! name a line, grouped by the scenarios that ran it, those that every scenario ran
//! first, so that a proxy running one of them maps few windows: its code is one or two
//! runs of the list, not the whole of it. Within a group, the most instructions first
//! (the hot path together).

use anyhow::{bail, Context};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;

/// Instructions each function executed itself (not in its callees), from one callgrind
/// profile, added to `into`. Functions that ran appear even with no cost of their own.
///
/// The format (callgrind's "Callgrind Format Specification"): `positions:` says how many
/// position columns start a cost line (`line`, or `instr line` with `--dump-instr=yes`),
/// `events:` which event each following column counts (`Ir` is read); `fn=` starts a
/// function's cost lines, with its name given once and then referred to by `(id)`
/// (`cfn=` and `jfn=` name functions the same way); a `calls=` line means the next cost
/// line is a call's inclusive cost, which is the callee's, not this function's. A cost
/// line starts with a position: a number, or `+N`, `-N`, `*` relative to the last.
/// Names carry no context suffix (`'2` for a recursion depth, `'caller`): those are cut.
/// Fails on a profile without `Ir`, or cut short (no `totals:` or `summary:`).
pub fn self_costs(profile: &str, into: &mut HashMap<String, u64>) -> anyhow::Result<()> {
    let mut names: HashMap<String, String> = HashMap::new();
    // Resolves `(id) name` (defines id) or `(id)` (refers to it) or a bare name.
    let mut resolve = |spec: &str| -> String {
        let spec = spec.trim();
        let name = match spec.strip_prefix('(').and_then(|r| r.split_once(')')) {
            Some((id, rest)) => {
                let rest = rest.trim();
                if rest.is_empty() {
                    names.get(id).cloned().unwrap_or_default()
                } else {
                    names.insert(id.to_string(), rest.to_string());
                    rest.to_string()
                }
            }
            None => spec.to_string(),
        };
        match name.split_once('\'') {
            Some((bare, _)) => bare.to_string(),
            None => name,
        }
    };
    let mut positions = 1;
    let mut ir: Option<usize> = None;
    let mut complete = false;
    let mut current: Option<String> = None;
    let mut call_cost_next = false;
    for line in profile.lines() {
        if let Some(cols) = line.strip_prefix("positions:") {
            positions = cols.split_whitespace().count().max(1);
        } else if let Some(events) = line.strip_prefix("events:") {
            ir = events.split_whitespace().position(|e| e == "Ir");
        } else if line.starts_with("totals:") || line.starts_with("summary:") {
            complete = true;
        } else if let Some(spec) = line.strip_prefix("fn=") {
            let name = resolve(spec);
            into.entry(name.clone()).or_insert(0);
            current = Some(name);
            call_cost_next = false;
        } else if let Some(spec) = line
            .strip_prefix("cfn=")
            .or_else(|| line.strip_prefix("jfn="))
        {
            let name = resolve(spec);
            into.entry(name).or_insert(0);
        } else if line.starts_with("calls=") {
            call_cost_next = true;
        } else if line
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'+' || b == b'-' || b == b'*')
        {
            if std::mem::take(&mut call_cost_next) {
                continue;
            }
            let Some(ir) = ir else {
                bail!("a cost line before an `events:` line that counts Ir");
            };
            let cost = line
                .split_whitespace()
                .nth(positions + ir)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if let Some(f) = &current {
                *into.entry(f.clone()).or_insert(0) += cost;
            }
        }
    }
    if ir.is_none() {
        bail!("no Ir event in the profile (callgrind's default event set counts it)");
    }
    if !complete {
        bail!("the profile has no totals: cut short (written while the process ran?)");
    }
    into.remove("");
    Ok(())
}

/// The names of the functions `binary` defines (`nm`'s text symbols).
fn defined(binary: &Path) -> anyhow::Result<HashSet<String>> {
    let out = Command::new("nm")
        .arg(binary)
        .output()
        .context("cannot run nm (Debian package binutils)")?;
    if !out.status.success() {
        bail!(
            "nm {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (_, kind, name) = (w.next()?, w.next()?, w.next()?);
            matches!(kind, "t" | "T").then(|| name.to_string())
        })
        .collect())
}

/// What each scenario ran: each function's instructions in it (`self_costs`).
pub type Scenarios = Vec<HashMap<String, u64>>;

/// The order: functions `binary` defines, grouped by the set of scenarios that ran them
/// (the groups of more scenarios first, then by which), within a group the most
/// instructions first, ties by name.
pub fn order(scenarios: &Scenarios, defined: &HashSet<String>) -> Vec<String> {
    // name → (which scenarios ran it, as bits; instructions in all).
    let mut seen: HashMap<&String, (u64, u64)> = HashMap::new();
    for (i, costs) in scenarios.iter().enumerate() {
        for (name, ir) in costs {
            if defined.contains(name) {
                let e = seen.entry(name).or_default();
                e.0 |= 1 << i.min(63);
                e.1 += ir;
            }
        }
    }
    let mut list: Vec<(&String, (u64, u64))> = seen.into_iter().collect();
    list.sort_by(|(a, (sa, ia)), (b, (sb, ib))| {
        sb.count_ones()
            .cmp(&sa.count_ones())
            .then(sa.cmp(sb))
            .then(ib.cmp(ia))
            .then_with(|| a.cmp(b))
    });
    list.into_iter().map(|(name, _)| name.clone()).collect()
}

/// Whether a profile is a proxy's: its `cmd:` line runs the `proxy` subcommand (`skein
/// proxy …`, or `/proc/self/fd/N proxy …` as `skein run` starts it). Profiles of whatever
/// else ran under a wrapper tracing children (`skein run` itself, the application) are
/// left out; a profile without a `cmd:` line is kept.
fn of_a_proxy(profile: &str) -> bool {
    match profile.lines().find_map(|l| l.strip_prefix("cmd:")) {
        Some(cmd) => cmd.split_whitespace().nth(1) == Some("proxy"),
        None => true,
    }
}

/// Reads every profile (each argument a scenario: a profile, or a directory of them read
/// recursively), writes the order to `out`.
pub fn run(profiles: &[std::path::PathBuf], binary: &Path, out: &Path) -> anyhow::Result<()> {
    let mut scenarios: Scenarios = Vec::new();
    let mut files = 0;
    for scenario in profiles {
        let mut costs = HashMap::new();
        let mut stack = vec![scenario.clone()];
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                for entry in std::fs::read_dir(&path).with_context(|| path.display().to_string())? {
                    stack.push(entry?.path());
                }
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if !text.contains("\nevents:") && !text.starts_with("events:") {
                continue;
            }
            if !of_a_proxy(&text) {
                continue;
            }
            files += 1;
            self_costs(&text, &mut costs).with_context(|| path.display().to_string())?;
        }
        if costs.is_empty() {
            bail!("no callgrind profiles found in {}", scenario.display());
        }
        scenarios.push(costs);
    }
    let defined = defined(binary)?;
    for (scenario, costs) in profiles.iter().zip(&scenarios) {
        let found = costs.keys().filter(|n| defined.contains(*n)).count();
        // Most of what a proxy runs is its own binary's; libc and the loader are the rest.
        if found * 2 < costs.len() {
            bail!(
                "{}: only {found} of the {} functions that ran are defined by {}: profiles of another build, or written without --demangle=no?",
                scenario.display(),
                costs.len(),
                binary.display()
            );
        }
    }
    let list = order(&scenarios, &defined);
    let ran: HashSet<&String> = scenarios.iter().flat_map(|c| c.keys()).collect();
    if list.is_empty() {
        bail!(
            "none of the {} functions in the profiles is defined by {}: were they written with --demangle=no, by this binary?",
            ran.len(),
            binary.display()
        );
    }
    let mut text = list.join("\n");
    text.push('\n');
    std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "link-order: {} functions from {files} profiles of {} scenarios ({} ran, {} of them outside {}) → {}",
        list.len(),
        scenarios.len(),
        ran.len(),
        ran.len() - list.len(),
        binary.display(),
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = "# callgrind format
version: 1
creator: callgrind-3.19.0
events: Ir
ob=(1) /bin/skein
fl=(1) ???
fn=(1) _RNvCs1_4main4main
0 10
cfn=(2) _RNvCs1_4main5hot_a
calls=5 0
0 900
0 5
fn=(2)
0 300
+2 100
cfn=(3) memcpy
calls=1 0
* 50
fn=(3)
0 50
fn=(4) _RNvCs1_4main10only_calls
cfn=(2)
calls=1 0
0 400
totals: 1015
";

    #[test]
    fn self_cost_leaves_out_what_calls_cost() {
        let mut costs = HashMap::new();
        self_costs(PROFILE, &mut costs).unwrap();
        assert_eq!(costs["_RNvCs1_4main4main"], 15);
        assert_eq!(costs["_RNvCs1_4main5hot_a"], 400);
        assert_eq!(costs["memcpy"], 50);
        // Ran, but spent nothing of its own.
        assert_eq!(costs["_RNvCs1_4main10only_calls"], 0);
        // Two profiles add up.
        self_costs(PROFILE, &mut costs).unwrap();
        assert_eq!(costs["_RNvCs1_4main5hot_a"], 800);
    }

    #[test]
    fn instruction_positions_other_events_jumps_and_contexts_are_read() {
        // `--dump-instr=yes --collect-jumps=yes --cache-sim=yes --separate-recs=2`.
        let profile = "version: 1
positions: instr line
events: Dr Ir
fn=(1) _RNvCs1_4main4main
0x10 3 1000 7
jfn=(2) _RNvCs1_4main4loop'2
jump=4 +3 *
+2 * 9 5
cfn=(2)
calls=1 0x40 9
* * 2 500
fn=(2)
0x40 9 1 40
totals: 1003 552
";
        let mut costs = HashMap::new();
        self_costs(profile, &mut costs).unwrap();
        assert_eq!(costs["_RNvCs1_4main4main"], 12, "{costs:?}");
        assert_eq!(costs["_RNvCs1_4main4loop"], 40, "{costs:?}");
        assert_eq!(costs.len(), 2, "{costs:?}");
        // No Ir, or cut short: refused.
        let no_ir = profile.replace("events: Dr Ir", "events: Dr");
        assert!(self_costs(&no_ir, &mut HashMap::new()).is_err());
        let cut = profile.replace("totals: 1003 552\n", "");
        assert!(self_costs(&cut, &mut HashMap::new()).is_err());
    }

    #[test]
    fn only_proxies_profiles_count() {
        assert!(of_a_proxy(PROFILE), "no cmd: line");
        let of = |cmd: &str| of_a_proxy(&format!("version: 1\ncmd: {cmd}\nevents: Ir\n"));
        assert!(of("/work/target/release/skein proxy --config p.yaml"));
        assert!(of(
            "/proc/self/fd/3 proxy --config - --control 198.18.121.1:9981"
        ));
        assert!(!of(
            "/work/target/release/skein run --service bench -- nginx"
        ));
        assert!(!of(
            "/work/target/release/skein-bench backend --listen 198.18.121.3:8082"
        ));
        assert!(
            !of("/usr/sbin/nginx -g daemon off; proxy"),
            "only the subcommand's place"
        );
    }

    #[test]
    fn order_is_hot_first_and_only_what_the_binary_defines() {
        let mut costs = HashMap::new();
        self_costs(PROFILE, &mut costs).unwrap();
        let defined: HashSet<String> = [
            "_RNvCs1_4main4main",
            "_RNvCs1_4main5hot_a",
            "_RNvCs1_4main10only_calls",
            "_RNvCs1_4main9never_ran",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(
            order(&vec![costs], &defined),
            vec![
                "_RNvCs1_4main5hot_a",
                "_RNvCs1_4main4main",
                "_RNvCs1_4main10only_calls"
            ]
        );
    }

    #[test]
    fn what_every_scenario_ran_comes_first_then_each_scenarios_own() {
        let scenario = |pairs: &[(&str, u64)]| -> HashMap<String, u64> {
            pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
        };
        let idle = scenario(&[("start", 10), ("idle_only", 5), ("serve", 100)]);
        let pair = scenario(&[("start", 20), ("serve", 9_000), ("tls", 700), ("h2", 800)]);
        let defined: HashSet<String> = ["start", "idle_only", "serve", "tls", "h2"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(
            order(&vec![idle, pair], &defined),
            vec!["serve", "start", "idle_only", "h2", "tls"]
        );
    }
}
