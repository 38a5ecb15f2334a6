//! `docs/getting-started.md`, run as written: every command of its `console` blocks, in
//! order, and each documented output line must appear in what the command printed, so the
//! page cannot rot.
//!
//! The page is run in a sandbox this test makes and removes: new network, PID and mount
//! namespaces (`unshare --kill-child`: when the test ends, however it ends, the kernel
//! kills everything inside, and the namespaces, bridge, veths and rules go with them), a
//! tmpfs over `/run` (`skein run`'s state) and a directory of the test's own over `/root`
//! (the control plane's data directory is `~/.local/share/skein`). The sandbox's network has
//! only loopback and the bridge `skein run` makes, so nothing can leave it; the workloads'
//! network is moved into 198.18.0.0/15 with `SKEIN_RUN_NETWORK` (an environment variable,
//! not a change to any command), and the Services' virtual IPs are never on a wire (each
//! workload's capture redirects them to its proxy).
//!
//! How the page is compared: lines are normalised (numbers, decimals and dotted addresses
//! included, become `N`, 16-hex-digit request IDs `<id>`, spaces collapse), since addresses, PIDs, uids and figures differ
//! from run to run. The install step (`cargo build … && sudo install …`) is not run: the
//! `skein` this test was built with is first on `PATH`. Commands ending in `&` run in the background until the sandbox ends;
//! the test waits for their documented lines. `skein get` and `skein stat` are repeated for
//! up to 30 s until their output matches, as the page tells its reader to do.
//!
//! Needs root, `unshare` and `nsenter` (util-linux), `ip`, `iptables`, `python3`, `curl`;
//! without them it says why it skipped.

use skein_testkit::control::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PAGE: &str = include_str!("../../../docs/getting-started.md");
const BIN: &str = env!("CARGO_BIN_EXE_skein");
/// Longest any one step may take.
const STEP_WITHIN: Duration = Duration::from_secs(60);

/// One command of the page and the lines it is documented to print.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    command: String,
    expected: Vec<String>,
}

/// The `$ ` commands of the page's `console` blocks, with the lines after each.
fn steps(page: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut in_console = false;
    for line in page.lines() {
        if line.starts_with("```") {
            in_console = line.trim() == "```console";
            continue;
        }
        if !in_console {
            continue;
        }
        match line.strip_prefix("$ ") {
            Some(command) => steps.push(Step {
                command: command.to_string(),
                expected: Vec::new(),
            }),
            None => {
                if let Some(step) = steps.last_mut() {
                    step.expected.push(line.to_string());
                }
            }
        }
    }
    steps
}

/// A line as compared: digit runs `N`, request IDs `<id>`, whitespace collapsed.
fn normal(line: &str) -> String {
    let words: Vec<String> = line
        .split_whitespace()
        .map(|w| {
            if w.len() == 16 && w.chars().all(|c| c.is_ascii_hexdigit()) {
                return "<id>".to_string();
            }
            // A number, dots between digits included (`8.00`, `15`, `10.213.0.2`), is
            // one `N`: figures are printed with as many decimals as their size wants.
            let chars: Vec<char> = w.chars().collect();
            let mut out = String::new();
            let mut i = 0;
            while i < chars.len() {
                if chars[i].is_ascii_digit() {
                    while i < chars.len()
                        && (chars[i].is_ascii_digit()
                            || (chars[i] == '.'
                                && chars.get(i + 1).is_some_and(char::is_ascii_digit)))
                    {
                        i += 1;
                    }
                    out.push('N');
                } else {
                    out.push(chars[i]);
                    i += 1;
                }
            }
            out
        })
        .collect();
    words.join(" ")
}

/// The documented lines missing from `output`.
fn missing(expected: &[String], output: &str) -> Vec<String> {
    let got: Vec<String> = output.lines().map(normal).collect();
    expected
        .iter()
        .filter(|e| !e.trim().is_empty())
        .filter(|e| !got.contains(&normal(e)))
        .cloned()
        .collect()
}

#[test]
fn the_page_parses_into_nine_commands_with_their_output() {
    let steps = steps(PAGE);
    let commands: Vec<&str> = steps.iter().map(|s| s.command.as_str()).collect();
    assert_eq!(commands.len(), 9, "{commands:#?}");
    assert!(
        commands[0].starts_with("cargo build --release"),
        "{}",
        commands[0]
    );
    assert!(commands
        .iter()
        .all(|c| c.starts_with("cargo ") || c.starts_with("skein ")));
    assert!(
        steps[1..].iter().all(|s| !s.expected.is_empty()),
        "{steps:#?}"
    );
    assert_eq!(
        normal("default     kitchen   10.240.235.234   9000/http"),
        "default kitchen N N/http"
    );
    assert_eq!(normal("0.1 8.00ms 15ms 100.00%"), "N Nms Nms N%");
    assert_eq!(normal("request id: 23649850bcc53a80"), "request id: <id>");
    assert_eq!(
        missing(&["a  1".into(), "b 2".into()], "x\na 7\n"),
        vec!["b 2".to_string()]
    );
}

/// The sandbox: the `unshare` process (its child is PID 1 inside).
struct Sandbox {
    unshare: Child,
    init: u32,
    repo: PathBuf,
    _dir: TempDir,
}

impl Sandbox {
    fn start() -> Sandbox {
        let dir = TempDir::new("getting-started").unwrap();
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let setup = format!(
            "ip link set lo up && mount -t tmpfs tmpfs /run && mount --bind '{}' /root && exec sleep infinity",
            root.display()
        );
        let unshare = Command::new("unshare")
            .args([
                "--net",
                "--pid",
                "--mount-proc",
                "--kill-child",
                "--propagation",
                "private",
            ])
            .args(["sh", "-c", &setup])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare runs");
        let pid = unshare.id();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut sandbox = Sandbox {
            unshare,
            init: 0,
            repo: repo.canonicalize().unwrap(),
            _dir: dir,
        };
        // The forked child becomes `sleep` once the mounts are made.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            if let Some(child) = children.split_whitespace().next() {
                let child: u32 = child.parse().unwrap();
                let comm =
                    std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
                if comm.trim() == "sleep" {
                    sandbox.init = child;
                    break;
                }
            }
            if let Ok(Some(status)) = sandbox.unshare.try_wait() {
                panic!("the sandbox could not be made: unshare exited {status}");
            }
            assert!(Instant::now() < deadline, "the sandbox did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        sandbox
    }

    /// `bash -c COMMAND` inside the sandbox, from the checkout, as `sudo -i` by root
    /// would run it there, with stderr joined to stdout as on a terminal.
    fn command(&self, command: &str) -> Command {
        let bin_dir = Path::new(BIN).parent().unwrap();
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.init.to_string())
            .args(["-n", "-p", "-m"])
            .arg(format!("--wd={}", self.repo.display()))
            .args(["bash", "-c"])
            .arg(format!("exec 2>&1\n{command}"))
            .env_clear()
            .env(
                "PATH",
                format!(
                    "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    bin_dir.display()
                ),
            )
            .env("HOME", "/root")
            .env("USER", "root")
            .env("SUDO_UID", "0")
            .env("SUDO_GID", "0")
            .env("SKEIN_RUN_NETWORK", "198.18.21.0/24")
            .stdin(Stdio::null());
        cmd
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // --kill-child: PID 1 inside dies with unshare, and every process with it.
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

/// Why this machine cannot run the page, if it cannot.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("it is not running as root (skein run makes network namespaces)".into());
    }
    for (tool, flag) in [
        ("unshare", "--version"),
        ("nsenter", "--version"),
        ("ip", "-V"),
        ("iptables", "--version"),
        ("python3", "--version"),
        ("curl", "--version"),
    ] {
        if Command::new(tool).arg(flag).output().is_err() {
            return Some(format!("`{tool}` cannot be run; install it"));
        }
    }
    None
}

/// Runs `cmd` to its end (killed after [`STEP_WITHIN`]) and returns its output.
fn run_to_end(mut cmd: Command, what: &str) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut text);
        text
    });
    let deadline = Instant::now() + STEP_WITHIN;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().unwrap())
}

#[test]
fn the_getting_started_page_runs_as_written() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipped: the getting-started page, because {why}");
        return;
    }
    let sandbox = Sandbox::start();
    let logs = TempDir::new("getting-started-logs").unwrap();
    let mut background: Vec<Child> = Vec::new();
    for (i, step) in steps(PAGE).into_iter().enumerate() {
        let command = step.command.trim();
        if command.starts_with("cargo ") {
            eprintln!("step {i}: `{command}`: skipped, this build's skein is on PATH");
            continue;
        }
        eprintln!("step {i}: `{command}`");
        if let Some(command) = command.strip_suffix('&') {
            let log = logs.join(&format!("step-{i}.log"));
            let file = std::fs::File::create(&log).unwrap();
            let mut cmd = sandbox.command(command.trim());
            let child = cmd
                .stdout(file)
                .spawn()
                .unwrap_or_else(|e| panic!("step {i}: {e}"));
            background.push(child);
            let deadline = Instant::now() + STEP_WITHIN;
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let left = missing(&step.expected, &text);
                if left.is_empty() {
                    break;
                }
                let child = background.last_mut().unwrap();
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("step {i}: `{command}` exited ({status}) before printing {left:#?}; it printed:\n{text}");
                }
                assert!(
                    Instant::now() < deadline,
                    "step {i}: `{command}` did not print {left:#?}; it printed:\n{text}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        }
        let retry = command.starts_with("skein get") || command.starts_with("skein stat");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, text) = run_to_end(sandbox.command(command), command);
            let left = missing(&step.expected, &text);
            if code == Some(0) && left.is_empty() {
                break;
            }
            if !retry || Instant::now() > deadline {
                panic!(
                    "step {i}: `{command}` exited {code:?}; missing {left:#?}; it printed:\n{text}"
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    drop(sandbox);
    for mut child in background {
        let _ = child.kill();
        let _ = child.wait();
    }
}
