//! `skein-bench run`: the orchestrator behind `bench/run`.
//!
//! Finds the binaries and tools, starts every setup (direct, skein, nginx pair, skein with
//! telemetry off) on its own loopback addresses, probes each end to end, runs the
//! interleaved scenarios, stops them, runs the slow-endpoint and overload scenarios
//! ([`crate::slow`], [`crate::overload`], each with its own processes), then reports: Markdown on stdout (appended to `docs/BENCHMARKS.md` unless `--no-append`) and
//! every figure as JSON. Whatever happens — success, a failed setup, Ctrl-C — every process
//! started is stopped and the scratch directory removed, because they are all owned by
//! values dropped on the way out.

use crate::callgrind::Callgrind;
use crate::nginx;
use crate::overload;
use crate::procs::TempDir;
use crate::report::{self, Extras, Meta};
use crate::scenarios::{self, Plan, SetupResults, Tools};
use crate::setups::{self, find_tool, Env, Kind, Setup};
use crate::slow;
use anyhow::{bail, Context};
use serde::Serialize;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

/// What `run` was asked for.
#[derive(Debug, Clone)]
pub struct RunArgs {
    /// Short measurements, one repetition (CI).
    pub quick: bool,
    /// Where to write the JSON (default `target/bench/results-<timestamp>.json`).
    pub out: Option<PathBuf>,
    /// Do not append to `docs/BENCHMARKS.md`.
    pub no_append: bool,
    /// Run only this scenario.
    pub only: Option<Only>,
}

/// A scenario that can run alone (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// Peak-EWMA against round robin with one endpoint 10× slower ([`crate::slow`]); no
    /// other setup starts.
    SlowEndpoint,
    /// 200 callers against `maxConcurrentRequests: 10` ([`crate::overload`]); no other
    /// setup starts.
    Overload,
    /// The deployed shape alone ([`crate::deployed`]: direct and skein, each side in a
    /// network namespace), three repetitions in a full run; root only.
    Deployed,
    /// The deployed shape started, probed (a request of each kind, a second of TCP) and
    /// left idle, its proxies' idle memory read; no load. Root only. With
    /// [`crate::deployed::RUN_WRAP_ENV`] set, how `bench/link-order` records what deployed
    /// proxies run.
    DeployedIdle,
    /// Instructions per request through each proxy under callgrind
    /// ([`crate::callgrind`]); no other setup starts.
    Callgrind,
    /// Full against resumed mutual-TLS handshakes, in this process
    /// ([`crate::resumption`]); nothing starts.
    Resumption,
    /// The dashboard's API for a mesh of 200 services, against a control plane in this
    /// process ([`crate::dashboard`]); nothing else starts.
    DashboardApi,
}

#[derive(Serialize)]
struct Document<'a> {
    meta: &'a Meta,
    summary: &'a report::Summary,
    setups: &'a [SetupResults],
    #[serde(flatten)]
    extras: Extras<'a>,
}

/// Runs the whole benchmark.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = workspace_root()?;
    let tool = |name: &str, package: &str| {
        find_tool(name).with_context(|| {
            format!("{name} not found: install Debian's {package} (bench/run does when root)")
        })
    };
    if args.only == Some(Only::Resumption) {
        let measured = resumption(args.quick)?;
        let report = Report {
            plan: Plan::new(args.quick),
            results: &[],
            extras: Extras {
                resumption: Some(&measured),
                ..Extras::default()
            },
            deployed_na: None,
        };
        return write_report(&root, &args, report, started);
    }
    if args.only == Some(Only::DashboardApi) {
        let measured = dashboard_api(args.quick).await?;
        let report = Report {
            plan: Plan::new(args.quick),
            results: &[],
            extras: Extras {
                dashboard_api: Some(&measured),
                ..Extras::default()
            },
            deployed_na: None,
        };
        return write_report(&root, &args, report, started);
    }
    let me = std::env::current_exe().context("cannot find this binary's path")?;
    let skein = skein_binary(&root)?;
    let mut plan = Plan::new(args.quick);
    let only_deployed = matches!(args.only, Some(Only::Deployed | Only::DeployedIdle));
    if only_deployed && !args.quick {
        // Two setups instead of seven: room for the third run the tail's spread needs.
        plan.repetitions = 3;
    }
    if args.only == Some(Only::Callgrind) {
        if let Err(why) = crate::callgrind::supported() {
            bail!("callgrind cannot run here: {why}");
        }
        let counted = count_instructions(&me, &skein, args.quick).await?;
        let report = Report {
            plan,
            results: &[],
            extras: Extras {
                callgrind: Some(&counted),
                ..Extras::default()
            },
            deployed_na: None,
        };
        return write_report(&root, &args, report, started);
    }
    let deployed = match args.only {
        None | Some(Only::Deployed | Only::DeployedIdle) => deployed_shape(only_deployed)?,
        Some(_) => Err("not asked for".to_string()),
    };
    let results = match args.only {
        Some(Only::Deployed | Only::DeployedIdle) | None => {
            let which = Which {
                loopback: !only_deployed,
                deployed: deployed.is_ok(),
                load: args.only != Some(Only::DeployedIdle),
            };
            interleaved(&plan, which, me.clone(), skein.clone(), tool).await?
        }
        Some(_) => Vec::new(),
    };
    let slow = if matches!(
        args.only,
        Some(Only::Overload | Only::Deployed | Only::DeployedIdle)
    ) {
        None
    } else if slow::skipped() && args.only.is_none() {
        eprintln!(
            "skein-bench: {} is set: skipping the slow-endpoint scenario",
            slow::SKIP_ENV
        );
        None
    } else {
        eprintln!(
            "skein-bench: slow-endpoint scenario ({:?} RPS, {} s per measurement, {} repetition(s))",
            slow::RATES,
            slow::secs(args.quick),
            plan.repetitions
        );
        let dir = TempDir::new()?;
        Some(slow::run(&dir, &me, &skein, args.quick, plan.repetitions).await?)
    };
    let overload = if matches!(
        args.only,
        Some(Only::SlowEndpoint | Only::Deployed | Only::DeployedIdle)
    ) {
        None
    } else if overload::skipped() && args.only.is_none() {
        eprintln!(
            "skein-bench: {} is set: skipping the overload scenario",
            overload::SKIP_ENV
        );
        None
    } else {
        eprintln!(
            "skein-bench: overload scenario ({} callers, maxConcurrentRequests {}, {} s)",
            overload::CALLERS,
            overload::LIMIT,
            overload::secs(args.quick)
        );
        let dir = TempDir::new()?;
        Some(overload::run(&dir, &me, &skein, args.quick).await?)
    };
    // A full run ends with the instruction counts, when valgrind is here.
    let callgrind = if args.only.is_some() || args.quick {
        None
    } else if let Err(why) = crate::callgrind::supported() {
        eprintln!("skein-bench: leaving out the instruction counts: {why}");
        None
    } else {
        Some(count_instructions(&me, &skein, false).await?)
    };
    let resumption = match args.only {
        None => Some(resumption(args.quick)?),
        Some(_) => None,
    };
    let dashboard_api = match args.only {
        None => Some(dashboard_api(args.quick).await?),
        Some(_) => None,
    };
    let deployed_na = match (args.only, deployed) {
        (None, Err(why)) => Some(why),
        _ => None,
    };
    let report = Report {
        plan,
        results: &results,
        extras: Extras {
            slow_endpoint: slow.as_ref(),
            overload: overload.as_ref(),
            callgrind: callgrind.as_ref(),
            resumption: resumption.as_ref(),
            dashboard_api: dashboard_api.as_ref(),
        },
        deployed_na,
    };
    write_report(&root, &args, report, started)
}

/// The `skein` binary measured: `SKEIN_BIN`, or the workspace's release build.
pub fn skein_binary(root: &Path) -> anyhow::Result<PathBuf> {
    let skein = match std::env::var_os("SKEIN_BIN") {
        Some(p) => PathBuf::from(p),
        None => root.join("target/release/skein"),
    };
    if !skein.is_file() {
        bail!(
            "{} does not exist: build it with `cargo build --release -p skein` (bench/run does), \
             or point SKEIN_BIN at a skein binary",
            skein.display()
        );
    }
    Ok(skein)
}

/// Full against resumed handshakes: 200 of each kind in a quick run, 3,000 otherwise.
fn resumption(quick: bool) -> anyhow::Result<crate::resumption::Resumption> {
    let n = if quick { 200 } else { 3_000 };
    eprintln!("skein-bench: session resumption ({n} handshakes of each kind, in process)");
    crate::resumption::run(n)
}

/// The dashboard's API for a mesh of 200 services.
async fn dashboard_api(quick: bool) -> anyhow::Result<crate::dashboard::DashboardApi> {
    eprintln!(
        "skein-bench: the dashboard's API for {} services (control plane in process, 127.0.0.177)",
        crate::dashboard::SERVICES
    );
    crate::dashboard::run(quick).await
}

/// Instructions per request through each proxy, in a scratch directory of its own.
async fn count_instructions(me: &Path, skein: &Path, quick: bool) -> anyhow::Result<Callgrind> {
    crate::callgrind::run(&Env::scratch(me, skein)?, quick).await
}

/// Whether the deployed shape runs: `Err` with the reason it does not (an error when it
/// is all that was asked for).
fn deployed_shape(only: bool) -> anyhow::Result<Result<(), String>> {
    let why = if crate::deployed::skipped() {
        Err(format!("{} is set", crate::deployed::SKIP_ENV))
    } else {
        crate::deployed::supported()
    };
    match &why {
        Err(why) if only => bail!("the deployed shape cannot run here: {why}"),
        Err(why) => eprintln!(
            "skein-bench: leaving out the deployed shape (setups \"{}\" and \"{}\"): {why}",
            Kind::DirectNs.name(),
            Kind::SkeinNs.name()
        ),
        Ok(()) => {}
    }
    Ok(why)
}

/// Which setups run.
#[derive(Debug, Clone, Copy)]
struct Which {
    /// direct, skein, nginx pair, and the telemetry-off and tracing-off pairs.
    loopback: bool,
    /// direct (namespaces) and skein (namespaces).
    deployed: bool,
    /// Whether the scenarios run; without, the setups are only probed and their idle
    /// memory read.
    load: bool,
}

/// Starts every setup, runs the interleaved scenarios on them and stops them; returns
/// what each setup measured.
async fn interleaved(
    plan: &Plan,
    which: Which,
    me: PathBuf,
    skein: PathBuf,
    tool: impl Fn(&str, &str) -> anyhow::Result<PathBuf>,
) -> anyhow::Result<Vec<SetupResults>> {
    let (wrk, h2load) = (tool("wrk", "wrk")?, tool("h2load", "nghttp2-client")?);
    tool("openssl", "openssl")?;
    let env = Env {
        dir: TempDir::new()?,
        me: me.clone(),
        skein,
        nginx: tool("nginx", "nginx-light")?,
    };
    let grpc_message = env.dir.path().join("grpc-request.bin");
    std::fs::write(
        &grpc_message,
        crate::grpc::message(crate::grpc::REQUEST_LEN),
    )
    .with_context(|| format!("cannot write {}", grpc_message.display()))?;
    let tools = Tools {
        me,
        wrk,
        h2load,
        grpc_message,
    };
    eprintln!(
        "skein-bench: starting setups with skein binary {} (scratch dir {})",
        env.skein.display(),
        env.dir.path().display()
    );
    let mut setups = start_setups(&env, which).await?;
    let mut results = Vec::new();
    let measured = async {
        for s in &mut setups {
            s.probe(&tools.me).await?;
        }
        eprintln!(
            "skein-bench: every setup answered; reading the proxies' idle memory after {} s without traffic",
            IDLE_SETTLE.as_secs()
        );
        tokio::time::sleep(IDLE_SETTLE).await;
        for s in &setups {
            results.push(SetupResults::start(s)?);
        }
        if !which.load {
            return Ok(());
        }
        for s in &mut setups {
            scenarios::warm_up(&tools, plan, s).await?;
        }
        eprintln!(
            "skein-bench: measuring ({} s each, {} repetition(s), setups interleaved)",
            plan.secs, plan.repetitions
        );
        scenarios::run_all(&tools, plan, &mut setups, &mut results).await
    };
    if let Err(e) = measured.await {
        if let Some(tails) = log_tails(&setups) {
            eprintln!("{tails}");
        }
        return Err(e);
    }
    for (s, r) in setups.iter().zip(results.iter_mut()) {
        r.finish(s)?;
    }
    Ok(results)
}

/// How long the setups stay without traffic, after their probes, before their proxies'
/// idle memory is read: longer than the 5 s after which the proxies' allocator (jemalloc,
/// `dirty_decay_ms`) hands freed pages back, so that the figure is what an idle proxy
/// holds rather than what the probes (a second of opaque TCP among them) left to return.
const IDLE_SETTLE: Duration = Duration::from_secs(8);

/// Set to `1` to leave out the "skein, telemetry off" setup, e.g. to measure a `skein`
/// binary older than the `telemetry` setting, which refuses that pair's config.
pub const NO_TELEMETRY_SETUP_ENV: &str = "SKEIN_BENCH_NO_TELEMETRY_SETUP";

/// Whether [`NO_TELEMETRY_SETUP_ENV`] asks to skip the telemetry-off setup.
fn skip_telemetry_setup() -> bool {
    std::env::var(NO_TELEMETRY_SETUP_ENV).is_ok_and(|v| !matches!(v.trim(), "" | "0"))
}

/// Starts every setup asked for; a failure names the setup.
async fn start_setups(env: &Env, which: Which) -> anyhow::Result<Vec<Setup>> {
    let mut all = Vec::new();
    if which.loopback {
        all = loopback_setups(env).await?;
    }
    if which.deployed {
        eprintln!(
            "skein-bench: starting the deployed shape (network namespaces, skein run; see \
             bench/README.md)"
        );
        let direct = crate::deployed::direct(env)
            .await
            .with_context(|| format!("setup {} could not start", Kind::DirectNs.name()))?;
        all.push(direct);
        let skein = crate::deployed::skein(env)
            .await
            .with_context(|| format!("setup {} could not start", Kind::SkeinNs.name()))?;
        all.push(skein);
    }
    Ok(all)
}

/// The setups on loopback addresses.
async fn loopback_setups(env: &Env) -> anyhow::Result<Vec<Setup>> {
    let direct = setups::direct(env)
        .await
        .context("setup direct could not start")?;
    let skein = setups::skein(env, setups::SKEIN)
        .await
        .context("setup skein could not start")?;
    let nginx = nginx::start(env)
        .await
        .context("setup nginx pair could not start")?;
    // Last, so that the columns of the other setups stay where earlier reports had them.
    let mut all = vec![direct, skein, nginx];
    let off = setups::SKEIN_TELEMETRY_OFF.kind.name();
    if skip_telemetry_setup() {
        eprintln!(
            "skein-bench: {NO_TELEMETRY_SETUP_ENV} is set: skipping setup \"{off}\" \
             (the report will have no telemetry cost)"
        );
    } else {
        let skein_off = setups::skein(env, setups::SKEIN_TELEMETRY_OFF)
            .await
            .with_context(|| {
                format!(
                    "setup {off} could not start (a skein binary without the `telemetry` \
                     setting refuses its config: set {NO_TELEMETRY_SETUP_ENV}=1 to skip it)"
                )
            })?;
        all.push(skein_off);
        let tracing_off = setups::SKEIN_TRACING_OFF.kind.name();
        let skein_tracing_off = setups::skein(env, setups::SKEIN_TRACING_OFF)
            .await
            .with_context(|| format!("setup {tracing_off} could not start"))?;
        all.push(skein_tracing_off);
    }
    Ok(all)
}

/// The last lines each proxy logged, to go with an error; `None` when they logged nothing.
fn log_tails(setups: &[Setup]) -> Option<String> {
    let mut out = String::from("skein-bench: the run failed; the proxies' last log lines:");
    let mut any = false;
    for p in setups.iter().flat_map(|s| &s.proxies) {
        let tail = p.log_tail();
        if !tail.trim().is_empty() {
            out.push_str(&format!("\n--- {} ---\n{tail}", p.name));
            any = true;
        }
    }
    any.then_some(out)
}

/// What a run measured, for the report.
struct Report<'a> {
    plan: Plan,
    results: &'a [SetupResults],
    extras: Extras<'a>,
    /// Why the deployed shape did not run, when it was meant to.
    deployed_na: Option<String>,
}

fn write_report(
    root: &Path,
    args: &RunArgs,
    report: Report<'_>,
    started: Instant,
) -> anyhow::Result<()> {
    let Report {
        plan,
        results,
        extras,
        deployed_na,
    } = report;
    let (date, stamp) = report::utc_now();
    let meta = Meta {
        date,
        commit: git_commit(root),
        cpu_model: cpu_model(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        command: command(args),
        skein_mtls: setups::SKEIN_MTLS,
        plan,
        run_secs: started.elapsed().as_secs_f64(),
        deployed_na,
        proxy_workers: std::env::var("SKEIN_PROXY_WORKERS").ok(),
    };
    let summary = report::summarize(results);
    let json_path = args
        .out
        .clone()
        .unwrap_or_else(|| root.join(format!("target/bench/results-{stamp}.json")));
    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let doc = Document {
        meta: &meta,
        summary: &summary,
        setups: results,
        extras,
    };
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let shown = json_path.strip_prefix(root).unwrap_or(&json_path);
    let shown = shown.display().to_string();
    let md = report::markdown(&meta, &summary, results, extras, &shown);
    println!("{md}");
    if !args.no_append {
        let path = root.join("docs/BENCHMARKS.md");
        append(&path, &md)?;
        eprintln!("skein-bench: appended to {}", path.display());
    }
    eprintln!("skein-bench: JSON in {}", json_path.display());
    Ok(())
}

/// The command as a user would type it (what changes the figures, not where they go).
fn command(args: &RunArgs) -> String {
    let mut c = String::from("bench/run");
    if args.quick {
        c.push_str(" --quick");
    }
    match args.only {
        Some(Only::SlowEndpoint) => c.push_str(" --only slow-endpoint"),
        Some(Only::Overload) => c.push_str(" --only overload"),
        Some(Only::Deployed) => c.push_str(" --only deployed"),
        Some(Only::DeployedIdle) => c.push_str(" --only deployed-idle"),
        Some(Only::Callgrind) => c.push_str(" --only callgrind"),
        Some(Only::Resumption) => c.push_str(" --only resumption"),
        Some(Only::DashboardApi) => c.push_str(" --only dashboard-api"),
        None => {}
    }
    c
}

const HEADER: &str = "# Benchmarks

Sections are appended by `bench/run` (see [bench/README.md](../bench/README.md)), newest
last; each names its date, commit and machine. Absolute figures depend on the machine:
compare the ratios to direct and the added latency. Do not edit by hand.

";

fn append(path: &Path, section: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let fresh = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if fresh {
        f.write_all(HEADER.as_bytes())?;
    } else if !std::fs::read_to_string(path)?.ends_with("\n\n") {
        // Hand-written sections may end without a blank line; a heading needs one.
        f.write_all(b"\n")?;
    }
    f.write_all(section.as_bytes())
        .with_context(|| format!("cannot append to {}", path.display()))
}

/// The workspace root: three levels above `target/release/skein-bench`, else the current
/// directory, whichever holds the workspace's `Cargo.toml` and `crates/`.
pub fn workspace_root() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let candidates = [
        exe.ancestors().nth(3).map(Path::to_path_buf),
        std::env::current_dir().ok(),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("Cargo.toml").is_file() && d.join("crates/skein-bench").is_dir())
        .context("cannot find the workspace root: run from it, or via bench/run")
}

/// The short commit of the work tree at `root`, `+dirty` when tracked files changed.
pub(crate) fn git_commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown commit".into();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) if !s.is_empty() => format!("{commit}+dirty"),
        _ => commit,
    }
}

/// The CPU model, from /proc/cpuinfo.
pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
