//! `skein`: one binary for the whole mesh: the sidecar proxy, the control plane, the
//! kubectl-like CLI, `skein run` and the demo.

mod allocator;
mod canary_cmd;
mod capture;
mod check_cmd;
mod cli;
mod control_cmd;
mod demo;
mod demo_ns;
mod netns;
mod proxy_cmd;
mod run_cmd;
mod signals;
mod trace_cmd;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Skein: a service mesh in one binary.
#[derive(Parser)]
#[command(name = "skein", version, about, long_about = None)]
struct Cli {
    /// Log filter, e.g. `info`, `debug`, `skein_proxy=debug` (also read from RUST_LOG).
    #[arg(long, global = true, env = "SKEIN_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar proxy beside one workload.
    ///
    /// The proxy intercepts the workload's outbound connections (transparently via iptables
    /// REDIRECT, as an HTTP proxy, or on local upstream listeners), sends them to the peer
    /// proxies of the destination service over HTTP/2, and forwards inbound traffic from
    /// peers to the local application. SIGTERM or SIGINT drains in-flight requests, then
    /// exits 0. See docs/proxy-config.md for the configuration file.
    Proxy {
        /// The proxy's YAML configuration file (`-`: stdin).
        #[arg(long, short = 'c', required_unless_present = "uninstall")]
        config: Option<PathBuf>,
        /// Validate the configuration, print it with defaults applied, and exit.
        #[arg(long)]
        check: bool,
        /// Take identity, destinations and application ports from this control plane
        /// (gRPC address, e.g. 127.0.0.1:9991; always TLS), or from any of several replicas
        /// (`a:9991,b:9991`; a name may also resolve to several addresses): the proxy fails
        /// over to the next when one stops answering. The file still sets workload and
        /// listeners. Needs --join-token.
        #[arg(long, requires = "join_token")]
        control: Option<String>,
        /// The join token from `skein token create` for this workload's service: the
        /// proxy uses it once to obtain its certificate, and checks the control plane
        /// against the CA it pins. Prefer the environment variable, which `ps` does not show.
        #[arg(long, env = "SKEIN_JOIN_TOKEN", hide_env_values = true)]
        join_token: Option<String>,
        /// The address peers reach this proxy's inbound listener on (default: the inbound
        /// listen address; required when that is 0.0.0.0).
        #[arg(long)]
        advertise: Option<std::net::SocketAddr>,
        /// Threads that serve connections. 1 (the default) runs the whole proxy on one
        /// thread: no work stealing, no wake-ups across threads, and memory that does not
        /// grow with the host's cores (measured against 2 in docs/ARCHITECTURE.md, Threads).
        /// N > 1: a work-stealing pool of N, for a proxy that needs more than one core;
        /// 0: one per core.
        #[arg(long, env = "SKEIN_PROXY_WORKERS", default_value_t = 1)]
        workers: usize,
        #[command(flatten)]
        intercept: proxy_cmd::InterceptArgs,
    },
    /// Run an application meshed, in a network namespace of its own (needs root).
    ///
    /// `skein run --service NAME [--port 8080/http] -- COMMAND ARGS…` wires a namespace to
    /// the host bridge (--bridge, --network), captures its traffic in and out, starts its
    /// proxy joined to the control plane, and runs COMMAND inside as you: it calls other
    /// services by name (`http://menu:8080`), and no TCP connection reaches it but through
    /// its proxy (UDP other than DNS is not captured).
    /// Signals are forwarded; when COMMAND exits, everything is removed and its exit status
    /// is returned (125 when skein run itself failed). See docs/getting-started.md.
    Run(run_cmd::RunArgs),
    /// Internal: removes what a `skein run` left when it exits (started by `skein run`).
    #[command(hide = true)]
    RunReaper {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        bridge: String,
        #[arg(long)]
        id: u32,
    },
    /// Run the control plane: resource store, HTTP API (9990) and proxy API (9991).
    ///
    /// Resources live in an embedded store in --data-dir (nothing to install), or in etcd
    /// with --store etcd://HOST:PORT[,HOST:PORT…] so several replicas can serve one mesh.
    /// The admin token is created at first start in DATA_DIR/admin.token (mode 0600).
    Control(control_cmd::ControlArgs),
    /// Create or update resources from YAML files, a directory, or `-` (stdin).
    ///
    /// All documents are validated first and applied atomically: one invalid document
    /// refuses the whole apply and leaves the state in force unchanged.
    Apply {
        /// File, directory or `-`; repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        target: cli::Target,
    },
    /// List resources of a kind, or show one (`skein get services`, `skein get workloads`).
    Get {
        /// Kind: mesh, service(s)/svc, workload(s)/wl, httproute(s)/route(s),
        /// authorizationpolicies/authz, backendpolicies, faultinjections/faults, canaries.
        kind: String,
        /// A resource name (omit to list).
        name: Option<String>,
        /// Namespace (default: all namespaces when listing, `default` for one resource).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: cli::Output,
        #[command(flatten)]
        target: cli::Target,
    },
    /// Delete one resource.
    Delete {
        /// Kind (as for `get`).
        kind: String,
        /// Resource name.
        name: String,
        /// Namespace (default `default`).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[command(flatten)]
        target: cli::Target,
    },
    /// Manage join tokens: how proxies prove which service they run for.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Workloads: take one out of the mesh.
    #[command(subcommand)]
    Workload(WorkloadCommand),
    /// The mesh certificate authority: show it, or roll it to a new root.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Authorization: ask whether a caller may reach a service, without sending traffic.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Golden signals per service, workload, route or route rule, from every proxy's
    /// reports.
    ///
    /// Success rate, requests per second and latency percentiles (to response headers)
    /// over a window, merged across all replicas; TCP connections. Services and
    /// workloads as their own proxies saw them, routes and rules as their callers did.
    Stat {
        /// services, workloads, routes or rules.
        kind: String,
        /// Only this service, workload or route (`namespace/name` for routes).
        name: Option<String>,
        /// How far back to look: 10s to 1h.
        #[arg(long, short = 'w', default_value = "1m")]
        window: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: signals::Output,
        #[command(flatten)]
        target: cli::Target,
    },
    /// What the mesh decided about a request it failed or retried, hop by hop, in words:
    /// which proxy, which resource and field (a denial's policy, a timeout's route and
    /// rule, an overloaded or unreachable endpoint).
    ///
    /// REQUEST_ID is the request's `skein-request-id` (every response carries it, and
    /// every error the mesh answers with names it); `--to SVC` explains the latest such
    /// request to a service instead.
    Why {
        /// The request's `skein-request-id`.
        #[arg(required_unless_present = "to")]
        request_id: Option<String>,
        /// The latest request to this service the mesh failed or retried.
        #[arg(long, conflicts_with = "request_id")]
        to: Option<String>,
        /// Accepted for readability: `skein why --last --to SVC`.
        #[arg(long, requires = "to")]
        last: bool,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: cli::Target,
    },
    /// Recent traces from the control plane's store (proxies' spans and applications'
    /// own, received over OTLP), and one trace as a waterfall.
    #[command(subcommand)]
    Trace(TraceCommand),
    /// Progressive delivery: a Canary's rollout (phase, weight, checks with their metric
    /// values, events, next check) and an operator's requests to it.
    #[command(subcommand)]
    Canary(CanaryCommand),
    /// Caller → service pairs with their signals, and whether each is mutual TLS.
    ///
    /// Callers are the accounts their certificates prove, as the callee's proxy saw them;
    /// calls that authorization denied are counted as DENIED.
    Edges {
        /// Only edges into or out of this service.
        service: Option<String>,
        /// How far back to look: 10s to 1h.
        #[arg(long, short = 'w', default_value = "1m")]
        window: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: signals::Output,
        #[command(flatten)]
        target: cli::Target,
    },
    /// Live request metadata as proxies see requests end: method, path, status, latency,
    /// caller and callee. Never bodies, query strings or header values. Rate-bounded; the
    /// proxies stop tapping as soon as this command ends.
    Tap {
        #[command(flatten)]
        filter: signals::TapFilter,
        /// Print each event as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: cli::Target,
    },
    /// The busiest paths, live, from `skein tap`: count, best, worst and last latency,
    /// success rate.
    Top {
        #[command(flatten)]
        filter: signals::TapFilter,
        #[command(flatten)]
        target: cli::Target,
    },
    /// The network map: every service with its signals, every observed caller → service
    /// edge with its protocol, rate, success, p99, mutual TLS and authorization denials.
    Map {
        /// table, dot (Graphviz), mermaid or json.
        #[arg(long, short = 'f', value_enum, default_value = "table")]
        format: signals::MapFormat,
        /// How far back to look: 10s to 1h.
        #[arg(long, short = 'w', default_value = "1m")]
        window: String,
        #[command(flatten)]
        target: cli::Target,
    },
    /// Pre-flight and health in one command: each check a line with ✔ (passed), ‼ (near a
    /// limit), ✘ (failed, with what to do) or ○ (skipped, with why).
    ///
    /// Kernel features for transparent capture (as root), the control plane (reachable,
    /// admin token, version, store), its data directory's permissions, the mesh CA, every
    /// proxy (connected, configuration acknowledged, certificate, clock skew) and, with
    /// --proxy, one `skein run` workload's capture rules. Exits 1 when a check failed.
    Check(check_cmd::CheckArgs),
    /// Run a meshed sample application on loopback with traffic flowing through proxies.
    ///
    /// Starts four proxies (one per workload, each a real `skein proxy` process), three
    /// sample services (frontend → restaurant over HTTP, frontend → ledger over TCP) and a
    /// bounded traffic generator; prints where to look and live request counts. Stops on
    /// Ctrl-C or after --duration, leaving nothing running.
    Demo {
        /// How long to run.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        duration: std::time::Duration,
        /// Requests per second the traffic generator sends (1 to 500).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
        rps: u32,
        /// Loopback network 127.0.N.0/24 the demo's workloads use.
        #[arg(long, default_value_t = 77)]
        net: u8,
        /// Also run restaurant v2 and v3 and release each as a Canary: v2 is promoted
        /// step by step, v3 (one answer in ten a 500) is rolled back. Runs on loopback.
        #[arg(long)]
        canary: bool,
        /// Run on loopback even as root (by default root runs each application in a
        /// network namespace of its own with `skein run`, on 198.18.N.0/24).
        #[arg(long)]
        loopback: bool,
    },
    /// Internal: one of the demo's applications, as `skein demo` starts it under `skein run`.
    #[command(hide = true)]
    DemoApp {
        /// frontend, restaurant, ledger or traffic.
        name: String,
        /// traffic: requests per second.
        #[arg(long, default_value_t = 20)]
        rps: u32,
        /// traffic: how long.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        duration: std::time::Duration,
    },
}

/// A Canary named on the command line.
#[derive(clap::Args)]
struct CanaryName {
    /// The Canary's name.
    name: String,
    /// Its namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    #[command(flatten)]
    target: cli::Target,
}

#[derive(Subcommand)]
enum CanaryCommand {
    /// The rollout: phase, a bar of the canary's weight with the steps, failed checks,
    /// the next check, the last checks with their metric values, and the events.
    Status {
        #[command(flatten)]
        canary: CanaryName,
        /// Then print each new event until the rollout ends.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Promote now: skip the remaining steps (and confirm-promotion webhooks).
    Promote(CanaryName),
    /// Roll back now: the stable gets all traffic, the rollout is Failed.
    Abort(CanaryName),
    /// Hold: no checks and no weight changes until resumed.
    Pause(CanaryName),
    /// Go on after a pause; the next check comes after a full interval.
    Resume(CanaryName),
}

#[derive(Subcommand)]
enum TraceCommand {
    /// Recent traces, newest first: trace ID, start, duration, spans, errors, root span.
    List {
        /// Only traces with a span of this service (NAME or NAMESPACE/NAME).
        #[arg(long)]
        service: Option<String>,
        /// Only traces with a failed span.
        #[arg(long)]
        errors: bool,
        /// Only traces at least this long (e.g. 100ms, 2s).
        #[arg(long)]
        min_duration: Option<String>,
        /// At most this many (up to 1000).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: cli::Target,
    },
    /// One trace as a waterfall: each span under its parent, with its duration and a bar
    /// where it ran, and what went wrong.
    Show {
        /// The trace ID: 32 hex digits (`skein trace list`, or a `traceparent` header's
        /// second field).
        trace_id: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: cli::Target,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a join token for one service's workloads, or a read-only dashboard token;
    /// prints it once.
    ///
    /// A proxy started with a join token (`skein proxy --join-token`) receives a
    /// certificate for spiffe://<trust-domain>/ns/<namespace>/sa/<service> and nothing
    /// else. A dashboard token (`--dashboard --read-only`) logs a browser in at /ui/ to see
    /// everything and change nothing.
    Create {
        /// The service the workloads run for (join tokens).
        #[arg(
            long,
            required_unless_present = "dashboard",
            conflicts_with = "dashboard"
        )]
        service: Option<String>,
        /// Its namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// How long the token is accepted (e.g. 30m, 24h); join tokens 1h by default,
        /// dashboard tokens 720h.
        #[arg(long)]
        ttl: Option<String>,
        /// How many proxies may join with it (a fleet of replicas); by default one.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000), conflicts_with = "dashboard")]
        uses: u32,
        /// A token for the dashboard instead of a join token (needs --read-only).
        #[arg(long, requires = "read_only")]
        dashboard: bool,
        /// The dashboard token sees and changes nothing (the only kind: changes need the
        /// admin token).
        #[arg(long, requires = "dashboard")]
        read_only: bool,
        #[command(flatten)]
        target: cli::Target,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        target: cli::Target,
    },
    /// Revoke a token: no proxy joins with it again, and every workload that joined with
    /// it is out of the mesh (renewals refused; peers refuse its certificate at the next
    /// handshake).
    Revoke {
        /// The token id (second part of the token, or from `skein token list`).
        id: String,
        #[command(flatten)]
        target: cli::Target,
    },
}

#[derive(Subcommand)]
enum WorkloadCommand {
    /// Take one workload out of the mesh: its proxy can no longer renew its certificate or
    /// receive configuration (it exits), and every proxy refuses its certificate at the
    /// next handshake and drops connections to it. Other workloads that joined with the
    /// same token are not affected; `skein token revoke` takes them all.
    Revoke {
        /// The workload's name (`skein get workloads`).
        name: String,
        /// Its namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        target: cli::Target,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Show the trust domain, CA generation, rotation phase and root pins.
    Show {
        #[command(flatten)]
        target: cli::Target,
    },
    /// Roll to a new root while traffic flows: the new root joins the trust bundle, then
    /// signs (every proxy renews), then the old root leaves the bundle. Prints progress.
    Rotate {
        /// Longest wait for proxies to catch up at each phase.
        #[arg(long, default_value = "5m")]
        timeout: String,
        #[command(flatten)]
        target: cli::Target,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Would `--from` be let through to `--to`? Prints allowed / denied / audited and the
    /// policy or default that decided, from the same evaluation the proxies run.
    ///
    /// Without --method/--path an HTTP port is checked with GET /; paths are normalised
    /// as the proxy does (`/menu/../admin` is judged as `/admin`). Exits as
    /// `kubectl auth can-i` does: 0 when the request would reach the application
    /// (allowed or audited), 1 when denied, 2 when the question cannot be answered.
    Check(cli::PolicyCheck),
    /// Write the least-privilege AuthorizationPolicies that allow exactly the traffic the
    /// proxies observed: callers per service, with their ports, methods and path prefixes.
    ///
    /// The safe road from an open mesh to deny-by-default: set the Mesh's defaultPolicy
    /// to audit, let traffic flow, `skein policy suggest > observed.yaml`, review and
    /// apply it, check that audited decisions stay at zero, then set deny.
    Suggest {
        /// Only services in this namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// How far back to look: 10s to 1h.
        #[arg(long, short = 'w', default_value = "1h")]
        window: String,
        /// yaml (apply it as it is) or json.
        #[arg(short = 'o', long, value_enum, default_value = "yaml")]
        output: signals::SuggestOutput,
        #[command(flatten)]
        target: cli::Target,
    },
}

pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    skein_model::duration::parse(s)
        .ok_or_else(|| format!("{s:?} is not a duration; write e.g. 30s, 5m or 1h"))
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    allocator::install_heap_stats();
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Apply { .. }
            | Command::Get { .. }
            | Command::Delete { .. }
            | Command::Token(_)
            | Command::Workload(_)
            | Command::Ca(_)
            | Command::Policy(_)
            | Command::Stat { .. }
            | Command::Edges { .. }
            | Command::Why { .. }
            | Command::Trace(_)
            | Command::Canary(_)
            | Command::Map { .. }
            | Command::Tap { .. }
            | Command::Top { .. }
            | Command::Check(_)
    ) {
        // Client commands end quietly when their output pipe closes (`skein get … | head`),
        // like other command-line tools. Servers keep Rust's default of ignoring SIGPIPE.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // The demo prints its own progress; its in-process control plane logs only problems.
    let default = match (&cli.command, cli.log.as_str()) {
        (Command::Demo { .. }, "info") => "warn".to_string(),
        _ => cli.log.clone(),
    };
    let filter = std::env::var("RUST_LOG").unwrap_or(default);
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match &cli.command {
        Command::Proxy { workers: 1, .. } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Command::Proxy { workers, .. } if *workers > 1 => {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(*workers)
                .enable_all()
                .build()?
        }
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Proxy {
                config,
                check,
                control,
                join_token,
                advertise,
                intercept,
                workers: _,
            } => {
                let config = config.unwrap_or_default();
                if intercept.intercept {
                    proxy_cmd::intercept(&config, &intercept)
                } else {
                    proxy_cmd::run(&config, check, control, join_token, advertise).await
                }
            }
            // The application's exit status, or 125 when skein run itself failed (as
            // `docker run` does), so that the two cannot be confused.
            Command::Run(args) => match run_cmd::run(args).await {
                Ok(code) => std::process::exit(code),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    std::process::exit(125)
                }
            },
            Command::RunReaper {
                state_dir,
                bridge,
                id,
            } => run_cmd::reap(&state_dir, &bridge, id),
            Command::Token(TokenCommand::Create {
                service,
                namespace,
                ttl,
                uses,
                dashboard,
                read_only: _,
                target,
            }) => match service {
                Some(service) if !dashboard => {
                    let ttl = ttl.as_deref().unwrap_or("1h");
                    cli::token_create(&target, &service, &namespace, ttl, uses).await
                }
                _ => cli::dashboard_token_create(&target, ttl.as_deref()).await,
            },
            Command::Token(TokenCommand::List { target }) => cli::token_list(&target).await,
            Command::Token(TokenCommand::Revoke { id, target }) => {
                cli::token_revoke(&target, &id).await
            }
            Command::Workload(WorkloadCommand::Revoke {
                name,
                namespace,
                target,
            }) => cli::workload_revoke(&target, &namespace, &name).await,
            Command::Ca(CaCommand::Show { target }) => cli::ca_show(&target).await,
            // Exit 0 allowed (or audited), 1 denied, 2 when it could not be answered.
            Command::Policy(PolicyCommand::Check(q)) => match cli::policy_check(&q).await {
                Ok(true) => Ok(()),
                Ok(false) => std::process::exit(1),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    std::process::exit(2)
                }
            },
            Command::Policy(PolicyCommand::Suggest {
                namespace,
                window,
                output,
                target,
            }) => signals::suggest(&target, namespace.as_deref(), &window, output).await,
            Command::Ca(CaCommand::Rotate { timeout, target }) => {
                cli::ca_rotate(&target, &timeout).await
            }
            Command::Control(args) => control_cmd::run(args).await,
            Command::Apply { files, target } => cli::apply(&target, &files).await,
            Command::Get {
                kind,
                name,
                namespace,
                output,
                target,
            } => {
                cli::get(
                    &target,
                    &kind,
                    name.as_deref(),
                    namespace.as_deref(),
                    output,
                )
                .await
            }
            Command::Delete {
                kind,
                name,
                namespace,
                target,
            } => cli::delete(&target, &kind, &name, namespace.as_deref()).await,
            Command::Stat {
                kind,
                name,
                window,
                output,
                target,
            } => signals::stat(&target, &kind, name.as_deref(), &window, output).await,
            Command::Edges {
                service,
                window,
                output,
                target,
            } => signals::edges(&target, service.as_deref(), &window, output).await,
            Command::Why {
                request_id,
                to,
                last: _,
                json,
                target,
            } => signals::why(&target, request_id.as_deref(), to.as_deref(), json).await,
            Command::Trace(TraceCommand::List {
                service,
                errors,
                min_duration,
                limit,
                json,
                target,
            }) => {
                let min = min_duration.as_deref();
                trace_cmd::list(&target, service.as_deref(), errors, min, limit, json).await
            }
            Command::Trace(TraceCommand::Show {
                trace_id,
                json,
                target,
            }) => trace_cmd::show(&target, &trace_id, json).await,
            Command::Canary(CanaryCommand::Status { canary: c, watch }) => {
                canary_cmd::status(&c.target, &c.namespace, &c.name, watch).await
            }
            Command::Canary(command) => {
                let (c, action) = match command {
                    CanaryCommand::Promote(c) => (c, "promote"),
                    CanaryCommand::Abort(c) => (c, "abort"),
                    CanaryCommand::Pause(c) => (c, "pause"),
                    CanaryCommand::Resume(c) => (c, "resume"),
                    CanaryCommand::Status { .. } => unreachable!("matched above"),
                };
                canary_cmd::act(&c.target, &c.namespace, &c.name, action).await
            }
            Command::Tap {
                filter,
                json,
                target,
            } => signals::tap(&target, &filter, json).await,
            Command::Top { filter, target } => signals::top(&target, &filter).await,
            Command::Map {
                format,
                window,
                target,
            } => signals::map(&target, &window, format).await,
            Command::Check(args) => match check_cmd::run(args).await? {
                true => Ok(()),
                false => std::process::exit(1),
            },
            Command::Demo {
                duration,
                rps,
                net,
                canary,
                loopback,
            } => demo::run(duration, rps, net, canary, loopback).await,
            Command::DemoApp {
                name,
                rps,
                duration,
            } => demo_ns::app(&name, rps, duration).await,
        }
    })
}
