//! Real inference servers for the end-to-end tests: Triton Inference Server (python backend,
//! `EXECUTION_ENV_PATH`) and MLServer (per-model `environment_tarball`, and the image-level
//! `MLSERVER_ENV_TARBALL` flow), started as child processes on 127.0.0.1.
//!
//! The servers are installed once by `.ci/install-servers DIR`; the tests find them through the
//! `ENVPACK_E2E_SERVERS=DIR` environment variable (see `tests/e2e/README.md`). Only `std` and
//! `serde_json` are used: no async runtime, no HTTP crate (a minimal HTTP/1.1 client is below).
//!
//! # Pitfalls handled here (sources: the project's `consumers.md` notes, and the smoke runs)
//!
//! - **A stub that cannot start makes Triton hang forever** while loading the model (wrong Python
//!   minor version, `bin/activate` that does not put `<env>/bin` first on `PATH`, missing
//!   `libpython`): Triton opens its HTTP port only after the model load finished, so
//!   [`Triton::wait_model_ready`] has a timeout, checks whether the process died, and scans the log
//!   for stub failures while waiting ([`TRITON_FAILURE_MARKERS`]); every error carries the log tail.
//!   A stub whose `bin/activate` fails logs nothing at all: the only trace is the launcher (`bash -c
//!   "source <env>/bin/activate && exec ... stub"`) left as an unreaped zombie child of
//!   tritonserver, so a zombie child that persists 3 s also ends the wait with an error.
//! - **An environment without a usable libpython can run the machine's Python silently**: on a
//!   host with a system `libpython3.11.so.1.0` in the ld cache (Debian's `libpython3.11`), a stub
//!   started from an archive with no `lib/libpython3.11.so.1.0` loads the system one and runs
//!   with the system stdlib (seen here as "No module named 'numpy'", but with numpy installed
//!   system-wide it would have worked). Tests must check the mapped libpython is in the
//!   extraction.
//! - **A SIGTERMed Triton whose model load hangs does not clean up**: `/tmp/python_env_*` and the
//!   shm regions stay; the cleanup below does not depend on Triton's own.
//! - **Harmless error lines on a machine without GPU**: Triton logs CUDA warnings and
//!   `E... "CudaDriverHelper has not been initialized."`. Lines that mention CUDA/GPU are not
//!   treated as failures ([`TRITON_IGNORED_LINES`]).
//! - **Leftovers of a killed Triton**: extractions in `/tmp/python_env_XXXXXX` (the path is fixed
//!   in the backend, `TMPDIR` does not move it) and shared-memory regions `/dev/shm/<prefix>*`.
//!   Each server gets a unique `shm-region-prefix-name`; `Drop` (or [`Triton::stop`]) stops the
//!   server with SIGTERM, waits up to 10 s, SIGKILLs the process group, then removes the
//!   `/tmp/python_env_*` folders that did not exist at start and `/dev/shm/<prefix>*`. Because
//!   "did not exist at start" is only exact when one server runs at a time, a Triton started by
//!   this module holds an exclusive lock (`/tmp/envpack-e2e-triton.lock`, `flock`) for its whole
//!   life: Triton tests are serialised, across threads (cargo test) and processes (nextest).
//! - **A model can silently run from the wrong Python**: an empty `bin/activate` or a staging path
//!   that still exists lets the stub use the build environment instead of the extracted one. The
//!   harness cannot see this by itself: tests must return `sys.prefix` and the mapped libpython
//!   from the model and check they are under `/tmp/python_env_` ([`Triton::extraction_dirs`]).
//!   The same holds for MLServer: without `mlserver` in the environment the worker imports it from
//!   the host's site-packages and still works; check `mlserver.__file__`.
//! - **numpy 2 in a Triton 24.10 environment**: the model runs but outputs arrive empty. Not
//!   caught here: tests must compare output values, not only the status code.
//! - **Triton and MLServer spawn children** (Python stubs, MLServer workers). Both servers are
//!   started in their own process group (`process_group(0)`) and the whole group is killed on
//!   stop, so no worker outlives the test. Consequence: interrupting the test binary (Ctrl-C)
//!   does not reach the servers; they keep running until killed by hand (their pid is in the
//!   panic/log messages; never `pkill` by name).
//! - **The test runner's environment leaks into the servers**: `PYTHONPATH`, `PYTHONHOME`,
//!   `VIRTUAL_ENV`, `CONDA_*` and every `MLSERVER_*` variable (MLServer reads its settings from
//!   `MLSERVER_*` env vars, which override `settings.json`) are removed from the servers'
//!   environment, and `PYTHONNOUSERSITE=1` keeps `~/.local` site-packages out.
//! - **MLServer writes `.envs` and `.metrics` into its working directory** by default: the harness
//!   sets `environments_dir` and `metrics_dir` explicitly and runs the server in a directory
//!   next to the models folder, never in the crate directory.
//! - **MLServer reuses `<environments_dir>/<sha256>` blindly** (a leftover empty folder makes the
//!   workers crash-loop): the environments dir is created fresh (deleted first) on every start.
//! - **`parallel_workers: 0` silently ignores `environment_tarball`**: the harness writes
//!   `parallel_workers: 1` by default.
//! - **uvloop 0.22+ crashes every MLServer worker** ("There is no current event loop"): pinned
//!   `<0.22` by the installer; the message is one of [`MLSERVER_FAILURE_MARKERS`].
//! - **MLServer workers crash-loop instead of failing** (bad environment, import error): the model
//!   never becomes ready, so [`MlServer::wait_model_ready`] scans the log for tracebacks and
//!   returns early with the log tail.
//! - **The image-level flow must run MLServer from the environment**: [`MlServer::start_image_flow`]
//!   does what the MLServer image does (`tar -zxf`, `source bin/activate`, `conda-unpack`,
//!   `PYTHONNOUSERSITE=True`, `exec mlserver start`). Like in the image, another `mlserver` is on
//!   `PATH` after the environment's (the installed venv plays the image's own one), so an
//!   environment without `mlserver` silently falls back to it: tests must check where `mlserver`
//!   was imported from.
//! - **Free ports**: found by binding port 0 on 127.0.0.1 and releasing it; a port taken in between
//!   makes the server exit, which `wait_model_ready` reports (`Address already in use` in the log).
// Not every test binary uses every helper; "MLServer" is a name, not code.
#![allow(dead_code, clippy::doc_markdown)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Environment variable naming the directory `.ci/install-servers DIR` installed into.
pub const SERVERS_ENV: &str = "ENVPACK_E2E_SERVERS";
/// When set (to anything but `0`/empty), a missing `ENVPACK_E2E_SERVERS` fails the tests instead
/// of skipping them ([`ServersDir::from_env_or_skip`]). CI sets it.
pub const REQUIRE_ENV: &str = "ENVPACK_E2E_REQUIRE";

/// Where Triton's python backend extracts `EXECUTION_ENV_PATH` archives (fixed in the backend).
pub const TRITON_EXTRACT_PREFIX: &str = "/tmp/python_env_";
/// The Python minor version of the stub installed in `backends/python` (the host Python's).
pub const TRITON_STUB_PYTHON: &str = "3.11";
/// The Triton version `nvidia-pytriton` 0.7.0 ships (release 24.10: bash-based activation,
/// numpy<2 in the environment, libstdc++ from the environment first on `LD_LIBRARY_PATH`).
pub const TRITON_VERSION: &str = "2.51.0";
pub const MLSERVER_VERSION: &str = "1.7.1";

/// Substrings of a Triton log line that mean a model (or its stub) failed.
pub const TRITON_FAILURE_MARKERS: &[&str] = &[
    "Stub process",
    "Failed to",
    "failed to",
    "Traceback (most recent call last)",
    "ModuleNotFoundError",
    "ImportError",
    "Error:",
    "error:",
    "error while loading shared libraries",
    "GLIBCXX",
    "Unrecognized archive format",
    "should contain an 'activate' script",
    "Segmentation fault",
    "Address already in use",
];
/// Triton log lines containing one of these are never failures (CPU-only machine noise).
pub const TRITON_IGNORED_LINES: &[&str] = &["CUDA", "Cuda", "cuda", "GPU", "pinned memory"];
/// Substrings of an MLServer log line that mean a model or worker failed.
pub const MLSERVER_FAILURE_MARKERS: &[&str] = &[
    "Traceback (most recent call last)",
    "ModuleNotFoundError",
    "ImportError",
    "There is no current event loop",
    "error while loading shared libraries",
    "Address already in use",
    "conda-unpack: command not found",
    "mlserver: command not found",
];

const TRITON_LOCK: &str = "/tmp/envpack-e2e-triton.lock";
const LOG_TAIL_LINES: usize = 60;
const STOP_GRACE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(200);
/// How long a zombie child of tritonserver must persist before it counts as a dead stub.
const ZOMBIE_GRACE: Duration = Duration::from_secs(3);
/// Longest wait for another Triton of this harness to finish (see the module docs).
const LOCK_WAIT: Duration = Duration::from_mins(30);

static SERVER_COUNTER: AtomicUsize = AtomicUsize::new(0);
/// The thread that holds the Triton lock in this process, to fail fast instead of deadlocking
/// when one test starts a second Triton while its first one is alive.
static TRITON_HOLDER: Mutex<Option<thread::ThreadId>> = Mutex::new(None);

// ------------------------------------------------------------------------------------------------
// ServersDir
// ------------------------------------------------------------------------------------------------

/// The directory `.ci/install-servers DIR` filled: `triton/`, `mlserver/` (a venv), `wheels/`.
#[derive(Debug, Clone)]
pub struct ServersDir {
    pub root: PathBuf,
}

impl ServersDir {
    /// Reads `ENVPACK_E2E_SERVERS` and checks that every component is installed. The error names
    /// what is missing and the command that installs it.
    pub fn from_env() -> Result<ServersDir, String> {
        match std::env::var_os(SERVERS_ENV) {
            Some(v) if !v.is_empty() => ServersDir::open(PathBuf::from(v)),
            _ => Err(format!(
                "{SERVERS_ENV} is not set: it must name the directory the end-to-end servers are \
                 installed in. Install them with `.ci/install-servers DIR` (about 1 min and \
                 ~560 MB the first time) and run the tests with {SERVERS_ENV}=DIR"
            )),
        }
    }

    /// `Some(dir)` when `ENVPACK_E2E_SERVERS` is set and complete. When it is not set: prints why
    /// `test` is skipped and returns `None`, or panics if `ENVPACK_E2E_REQUIRE` is set. An
    /// incomplete installation always panics (it is a broken setup, not an absent one).
    #[must_use]
    pub fn from_env_or_skip(test: &str) -> Option<ServersDir> {
        let set = std::env::var_os(SERVERS_ENV).is_some_and(|v| !v.is_empty());
        let required = std::env::var(REQUIRE_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
        match ServersDir::from_env() {
            Ok(s) => Some(s),
            Err(e) if !set && !required => {
                eprintln!("skipping {test}: {e}");
                None
            }
            Err(e) => panic!("{test}: {e}"),
        }
    }

    /// Checks an installation directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<ServersDir, String> {
        let root = root.into();
        let root = fs::canonicalize(&root).map_err(|e| {
            format!(
                "{SERVERS_ENV}={}: {e}. Install the servers with `.ci/install-servers {}`",
                root.display(),
                root.display()
            )
        })?;
        let s = ServersDir { root };
        let mut missing = Vec::new();
        for (what, path) in [
            ("Triton (triton/STAMP)", s.root.join("triton/STAMP")),
            ("tritonserver", s.tritonserver()),
            (
                "the Python 3.11 stub in backends/python",
                s.triton_backend_stub(),
            ),
            (
                "MLServer venv (mlserver/STAMP)",
                s.root.join("mlserver/STAMP"),
            ),
            ("mlserver", s.mlserver_bin()),
            ("wheelhouse (wheels/STAMP)", s.wheels().join("STAMP")),
        ] {
            if !path.exists() {
                missing.push(format!("  {what}: {} is missing", path.display()));
            }
        }
        if missing.is_empty() {
            Ok(s)
        } else {
            Err(format!(
                "{SERVERS_ENV}={} is incomplete:\n{}\nRun `.ci/install-servers {}` (idempotent).",
                s.root.display(),
                missing.join("\n"),
                s.root.display()
            ))
        }
    }

    /// `triton/pytriton/tritonserver`: `bin/`, `backends/`, `python_backend_stubs/<X.Y>/`.
    #[must_use]
    pub fn triton_home(&self) -> PathBuf {
        self.root.join("triton/pytriton/tritonserver")
    }
    #[must_use]
    pub fn tritonserver(&self) -> PathBuf {
        self.triton_home().join("bin/tritonserver")
    }
    #[must_use]
    pub fn triton_backends(&self) -> PathBuf {
        self.triton_home().join("backends")
    }
    #[must_use]
    pub fn triton_backend_stub(&self) -> PathBuf {
        self.triton_backends()
            .join("python/triton_python_backend_stub")
    }
    /// The stub for another Python minor version (`"3.8"` to `"3.13"`); copy it to
    /// `<model dir>/triton_python_backend_stub` to serve an environment of that version.
    #[must_use]
    pub fn triton_stub_for(&self, python_minor: &str) -> PathBuf {
        self.triton_home().join(format!(
            "python_backend_stubs/{python_minor}/triton_python_backend_stub"
        ))
    }
    /// Shared libraries of the wheel (`nvidia_pytriton.libs`), put on `LD_LIBRARY_PATH`.
    #[must_use]
    pub fn triton_libs(&self) -> PathBuf {
        self.root.join("triton/nvidia_pytriton.libs")
    }
    #[must_use]
    pub fn mlserver_venv(&self) -> PathBuf {
        self.root.join("mlserver")
    }
    #[must_use]
    pub fn mlserver_bin(&self) -> PathBuf {
        self.mlserver_venv().join("bin/mlserver")
    }
    /// Offline wheelhouse: `pip install --no-index --find-links <this>` (mlserver 1.7.1,
    /// uvloop<0.22, numpy 1.26 and 2.x, cowsay 6.1).
    #[must_use]
    pub fn wheels(&self) -> PathBuf {
        self.root.join("wheels")
    }
    /// conda-pack 0.9.2 (with zstandard), or what is missing.
    pub fn conda_pack(&self) -> Result<PathBuf, String> {
        let bin = self.root.join("condapack/bin/conda-pack");
        if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!(
                "{} is missing: run `.ci/install-servers {}` again (it installs conda-pack)",
                bin.display(),
                self.root.display()
            ))
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Shared process handling
// ------------------------------------------------------------------------------------------------

/// A server child process in its own process group, with its log file and its HTTP port on
/// 127.0.0.1: what [`Triton`] and [`MlServer`] share (both dereference to it).
#[derive(Debug)]
pub struct Server {
    child: Mutex<Child>,
    pid: u32,
    log: PathBuf,
    started: Instant,
    what: &'static str,
    stopped: bool,
    /// HTTP port on 127.0.0.1.
    pub http_port: u16,
    /// Timeout of [`Server::infer`] and [`Server::http`] requests.
    pub request_timeout: Duration,
}

/// How a server ended, from [`Triton::stop`] / [`MlServer::stop`].
#[derive(Debug, Clone)]
pub struct StopReport {
    /// Exit status of the server process (`None` if it could not be reaped).
    pub status: Option<ExitStatus>,
    /// Whether the process group had to be SIGKILLed after the 10 s grace period.
    pub killed: bool,
    /// Leftover paths removed after the stop (`/tmp/python_env_*`, `/dev/shm/<prefix>*`, ...).
    pub removed: Vec<PathBuf>,
}

impl Server {
    fn spawn(
        mut cmd: Command,
        log: &Path,
        what: &'static str,
        http_port: u16,
    ) -> Result<Server, String> {
        if let Some(parent) = log.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        let out = File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        scrub_env(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {what} ({cmd:?}): {e}"))?;
        Ok(Server {
            pid: child.id(),
            child: Mutex::new(child),
            log: log.to_path_buf(),
            started,
            what,
            stopped: false,
            http_port,
            request_timeout: Duration::from_mins(1),
        })
    }

    /// `POST /v2/models/<model>/infer` with a KServe v2 JSON request; the parsed response.
    pub fn infer(&self, model: &str, request_json: &Value) -> Result<Value, String> {
        post_json(
            self.http_port,
            &format!("/v2/models/{model}/infer"),
            request_json,
            self.request_timeout,
        )
        .map_err(|e| self.failure(&e))
    }

    /// Any request to this server.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        http(method, self.http_port, path, body, self.request_timeout)
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log
    }
    #[must_use]
    pub fn log(&self) -> String {
        self.log_text()
    }
    #[must_use]
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_text(), LOG_TAIL_LINES)
    }
    /// Time since the process was spawned.
    #[must_use]
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until the server and `model` are ready (`GET /v2/health/ready`,
    /// `GET /v2/models/<model>/ready`); fails early when the process exits, when `stuck` says
    /// why the model never will be, or when the log shows one of `markers` on a line without
    /// any of `ignored`; fails at `timeout` otherwise. Returns the time from start to ready.
    fn wait_model(
        &self,
        model: &str,
        timeout: Duration,
        markers: &[&str],
        ignored: &[&str],
        stuck: impl FnMut() -> Option<String>,
    ) -> Result<Duration, String> {
        let model_path = format!("/v2/models/{model}/ready");
        wait_until(
            self,
            timeout,
            markers,
            ignored,
            &format!("model {model}"),
            || get_ok(self.http_port, "/v2/health/ready") && get_ok(self.http_port, &model_path),
            stuck,
        )
    }

    /// `Some(status)` once the process has exited.
    fn exited(&self) -> Option<ExitStatus> {
        let mut child = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        child.try_wait().ok().flatten()
    }

    fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    fn failure(&self, msg: &str) -> String {
        format!(
            "{} (pid {}, {:.1} s after start): {msg}\n--- last lines of {} ---\n{}",
            self.what,
            self.pid,
            self.started.elapsed().as_secs_f64(),
            self.log.display(),
            self.log_tail()
        )
    }

    /// SIGTERM to the server, up to 10 s for it to exit, then SIGKILL to its process group (the
    /// group is killed in any case, for children left behind).
    fn terminate(&mut self) -> (Option<ExitStatus>, bool) {
        if self.stopped {
            return (None, false);
        }
        self.stopped = true;
        let mut child = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut status = child.try_wait().ok().flatten();
        if status.is_none() {
            signal(&self.pid.to_string(), "TERM");
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if let Ok(Some(s)) = child.try_wait() {
                    status = Some(s);
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        let killed = status.is_none();
        // Negative pid: the whole process group (workers, stubs, bash wrappers). Children still
        // shutting down after the server exited get the SIGKILL too.
        signal(&format!("-{}", self.pid), "KILL");
        if status.is_none() {
            let _ = child.kill();
            status = child.wait().ok();
        }
        // SIGKILL is asynchronous: return only once the group is empty (zombies aside).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !live_group_members(self.pid).is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        (status, killed)
    }
}

fn signal(target: &str, sig: &str) {
    // `kill` from procps: std has no way to send SIGTERM, and the crate denies unsafe code.
    let _ = Command::new("kill")
        .args([format!("-{sig}").as_str(), "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Removes the test runner's Python/conda/MLServer settings from a server's environment.
fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if matches!(
            k,
            "PYTHONPATH" | "PYTHONHOME" | "PYTHONSTARTUP" | "VIRTUAL_ENV" | "PYTHONSAFEPATH"
        ) || k.starts_with("CONDA_")
            || k.starts_with("MLSERVER_")
            || k.starts_with("_CE_")
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("PYTHONNOUSERSITE", "1");
    cmd.env("PYTHONUNBUFFERED", "1");
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of `text`.
#[must_use]
pub fn log_tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The first line of `log` that contains one of `markers` and none of `ignored`.
#[must_use]
pub fn find_failure<'a>(log: &'a str, markers: &[&str], ignored: &[&str]) -> Option<&'a str> {
    log.lines()
        .find(|l| markers.iter().any(|m| l.contains(m)) && !ignored.iter().any(|i| l.contains(i)))
}

/// For a `Traceback` line, the exception line that ends the traceback (the first later line that
/// is not indented); `line` itself otherwise.
fn explain_failure(log: &str, line: &str) -> String {
    if !line.contains("Traceback") {
        return line.trim().to_owned();
    }
    let after = log.lines().skip_while(|l| !std::ptr::eq(*l, line)).skip(1);
    match after
        .into_iter()
        .find(|l| !l.is_empty() && !l.starts_with(char::is_whitespace))
    {
        Some(exc) => format!("{} ... {}", line.trim(), exc.trim()),
        None => line.trim().to_owned(),
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("binding 127.0.0.1:0: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// `n` distinct free ports (all listeners held until every port is known).
pub fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..n)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .map_err(|e| format!("binding 127.0.0.1:0: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string()))
        .collect()
}

fn unique_tag() -> String {
    format!(
        "{}_{}",
        std::process::id(),
        SERVER_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls until `ready()` is true, the process exits, a failure marker shows up in the log, or the
/// timeout passes. Returns the time since the server was started.
fn wait_until(
    server: &Server,
    timeout: Duration,
    markers: &[&str],
    ignored: &[&str],
    what: &str,
    mut ready: impl FnMut() -> bool,
    mut stuck: impl FnMut() -> Option<String>,
) -> Result<Duration, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(server.started.elapsed());
        }
        if let Some(status) = server.exited() {
            return Err(server.failure(&format!("exited with {status} before {what} was ready")));
        }
        if let Some(why) = stuck() {
            return Err(server.failure(&format!("{what} will never be ready: {why}")));
        }
        if find_failure(&server.log_text(), markers, ignored).is_some() {
            // Let the rest of the traceback reach the log before quoting it.
            thread::sleep(Duration::from_millis(500));
            let log = server.log_text();
            let line = find_failure(&log, markers, ignored)
                .map(|l| explain_failure(&log, l))
                .unwrap_or_default();
            return Err(server.failure(&format!("failure while waiting for {what}: {line}")));
        }
        if Instant::now() >= deadline {
            return Err(server.failure(&format!("{what} not ready after {} s", timeout.as_secs())));
        }
        thread::sleep(POLL);
    }
}

fn get_ok(port: u16, path: &str) -> bool {
    matches!(
        http("GET", port, path, None, Duration::from_secs(2)),
        Ok((200, _))
    )
}

fn post_json(port: u16, path: &str, body: &Value, timeout: Duration) -> Result<Value, String> {
    let (status, text) = http("POST", port, path, Some(&body.to_string()), timeout)?;
    if status != 200 {
        return Err(format!("POST {path}: HTTP {status}: {text}"));
    }
    serde_json::from_str(&text)
        .map_err(|e| format!("POST {path}: response is not JSON ({e}): {text}"))
}

// ------------------------------------------------------------------------------------------------
// Triton
// ------------------------------------------------------------------------------------------------

/// Extra settings for [`Triton::start_with`].
#[derive(Debug, Clone, Default)]
pub struct TritonOptions {
    /// Extra command-line arguments (e.g. `--log-verbose=1`, `--model-control-mode=explicit`).
    pub extra_args: Vec<String>,
    /// Extra environment variables for the server (and, inherited, its stubs).
    pub env: Vec<(String, String)>,
}

/// A running `tritonserver` (HTTP only, on 127.0.0.1). Stopped and cleaned up on drop.
#[derive(Debug)]
pub struct Triton {
    server: Server,
    /// The python backend's `shm-region-prefix-name`: `/dev/shm/<prefix>*` belongs to this server.
    pub shm_prefix: String,
    pub model_repository: PathBuf,
    preexisting_envs: BTreeSet<PathBuf>,
    lock: Option<File>,
}

impl Triton {
    /// Starts `tritonserver` on `model_repository` (all models loaded at start), logging to `log`.
    /// Blocks while another Triton of this harness runs (see the module docs), but returns before
    /// the models are loaded: call [`Triton::wait_model_ready`].
    pub fn start(
        servers: &ServersDir,
        model_repository: &Path,
        log: &Path,
    ) -> Result<Triton, String> {
        Triton::start_with(servers, model_repository, log, &TritonOptions::default())
    }

    pub fn start_with(
        servers: &ServersDir,
        model_repository: &Path,
        log: &Path,
        options: &TritonOptions,
    ) -> Result<Triton, String> {
        let model_repository = fs::canonicalize(model_repository)
            .map_err(|e| format!("model repository {}: {e}", model_repository.display()))?;
        let lock = acquire_triton_lock()?;
        let release = |lock: File| {
            release_triton_lock(&lock);
        };
        let preexisting_envs = list_python_envs();
        let http_port = match free_port() {
            Ok(p) => p,
            Err(e) => {
                release(lock);
                return Err(e);
            }
        };
        let shm_prefix = format!("envpack_e2e_{}_", unique_tag());
        let libs = servers.triton_libs();
        let ld = match std::env::var_os("LD_LIBRARY_PATH") {
            Some(old) if !old.is_empty() => format!("{}:{}", libs.display(), old.to_string_lossy()),
            _ => libs.display().to_string(),
        };
        let mut cmd = Command::new(servers.tritonserver());
        cmd.arg(format!("--model-repository={}", model_repository.display()))
            .arg(format!(
                "--backend-directory={}",
                servers.triton_backends().display()
            ))
            .args(["--allow-http=true", "--http-address=127.0.0.1"])
            .arg(format!("--http-port={http_port}"))
            .args([
                "--allow-grpc=false",
                "--allow-metrics=false",
                "--allow-gpu-metrics=false",
            ])
            .arg(format!(
                "--backend-config=python,shm-region-prefix-name={shm_prefix}"
            ))
            .args(["--disable-auto-complete-config", "--exit-timeout-secs=5"])
            .args(&options.extra_args)
            .env("LD_LIBRARY_PATH", ld)
            .current_dir(&model_repository);
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let server = match Server::spawn(cmd, log, "tritonserver", http_port) {
            Ok(p) => p,
            Err(e) => {
                release(lock);
                return Err(e);
            }
        };
        Ok(Triton {
            server,
            shm_prefix,
            model_repository,
            preexisting_envs,
            lock: Some(lock),
        })
    }

    /// Waits until the server and `model` are ready (`GET /v2/health/ready`,
    /// `GET /v2/models/<model>/ready`). Fails early, with the log tail, when the server exits or
    /// the log shows a stub or load failure; fails at `timeout` otherwise (a stub that cannot start
    /// hangs the server). Returns the time from start to ready.
    pub fn wait_model_ready(&self, model: &str, timeout: Duration) -> Result<Duration, String> {
        let mut zombie_since: Option<(u32, Instant)> = None;
        let stub_died = || {
            // The stub is started as `bash -c "source activate && exec ... stub"`, a child of the
            // server. If it exits during the load (activate fails, stub cannot start), Triton
            // 24.10 never notices and hangs; the only sign is the unreaped (zombie) child.
            match (zombie_children(self.pid).first(), zombie_since) {
                (None, _) => zombie_since = None,
                (Some(&z), Some((pid, since))) if z == pid => {
                    if since.elapsed() >= ZOMBIE_GRACE {
                        return Some(format!(
                            "a child of tritonserver (pid {z}, the python backend stub or the bash \
                             that sources bin/activate) exited during the model load and Triton waits \
                             for it forever. Typical causes: bin/activate fails or does not put \
                             <env>/bin first on PATH, the stub cannot load libpython (Python \
                             version other than {TRITON_STUB_PYTHON}), a missing shared library"
                        ));
                    }
                }
                (Some(&z), _) => zombie_since = Some((z, Instant::now())),
            }
            None
        };
        self.server.wait_model(
            model,
            timeout,
            TRITON_FAILURE_MARKERS,
            TRITON_IGNORED_LINES,
            stub_died,
        )
    }

    /// `GET /v2` → `version` (e.g. `"2.51.0"`).
    pub fn version(&self) -> Result<String, String> {
        let (status, body) = self.http("GET", "/v2", None)?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("GET /v2: HTTP {status}: {e}: {body}"))?;
        v["version"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("GET /v2: no version in {body}"))
    }

    /// `/tmp/python_env_*` folders created since this server started (its extractions, given
    /// that one harness Triton runs at a time). Inside each, `<n>/` is an extracted environment.
    #[must_use]
    pub fn extraction_dirs(&self) -> Vec<PathBuf> {
        list_python_envs()
            .difference(&self.preexisting_envs)
            .cloned()
            .collect()
    }

    /// `/dev/shm/<shm_prefix>*` entries of this server.
    #[must_use]
    pub fn shm_regions(&self) -> Vec<PathBuf> {
        list_prefixed(Path::new("/dev/shm"), &self.shm_prefix)
    }

    /// Stops the server like `Drop` does, and reports. Fails if a leftover could not be removed.
    pub fn stop(mut self) -> Result<StopReport, String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<StopReport, String> {
        let Some(lock) = self.lock.take() else {
            return Ok(StopReport {
                status: None,
                killed: false,
                removed: Vec::new(),
            });
        };
        let (status, killed) = self.server.terminate();
        // A stub may still be writing into its extraction for a moment after the group kill.
        let mut leftovers: Vec<PathBuf> = self.extraction_dirs();
        leftovers.extend(self.shm_regions());
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for path in leftovers {
            let r = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match r {
                Ok(()) => removed.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("{}: {e}", path.display())),
            }
        }
        release_triton_lock(&lock);
        if errors.is_empty() {
            Ok(StopReport {
                status,
                killed,
                removed,
            })
        } else {
            Err(format!(
                "tritonserver stopped, but leftovers could not be removed: {}",
                errors.join("; ")
            ))
        }
    }
}

impl Deref for Triton {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl DerefMut for Triton {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.server
    }
}

impl Drop for Triton {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("{e}");
        }
    }
}

fn acquire_triton_lock() -> Result<File, String> {
    {
        let holder = TRITON_HOLDER
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *holder == Some(thread::current().id()) {
            return Err(
                "this thread already runs a Triton of the e2e harness: stop it first (one \
                        harness Triton at a time, so that its /tmp/python_env_* can be told apart)"
                    .into(),
            );
        }
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(TRITON_LOCK)
        .map_err(|e| format!("opening {TRITON_LOCK}: {e}"))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => thread::sleep(POLL),
            Err(fs::TryLockError::WouldBlock) => {
                return Err(format!(
                    "another e2e Triton held {TRITON_LOCK} for {} min",
                    LOCK_WAIT.as_secs() / 60
                ));
            }
            Err(fs::TryLockError::Error(e)) => return Err(format!("locking {TRITON_LOCK}: {e}")),
        }
    }
    *TRITON_HOLDER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(thread::current().id());
    Ok(file)
}

fn release_triton_lock(lock: &File) {
    let mut holder = TRITON_HOLDER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *holder == Some(thread::current().id()) {
        *holder = None;
    }
    drop(holder);
    let _ = lock.unlock();
}

/// `(pid, state, ppid, pgrp)` of every process, from `/proc/*/stat`.
fn processes() -> Vec<(u32, char, u32, u32)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().take(3).collect();
        if let [state_text, ppid_text, pgrp_text] = f[..] {
            let (Some(state), Ok(parent), Ok(group)) = (
                state_text.chars().next(),
                ppid_text.parse(),
                pgrp_text.parse(),
            ) else {
                continue;
            };
            out.push((pid, state, parent, group));
        }
    }
    out.sort_unstable();
    out
}

/// Pids of zombie (exited, not reaped) children of `parent`.
fn zombie_children(parent: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| p.1 == 'Z' && p.2 == parent)
        .map(|p| p.0)
        .collect()
}

/// Pids of the non-zombie processes of process group `pgid` (a server's pid is its group id):
/// empty once a stopped server left nothing behind.
#[must_use]
pub fn live_group_members(pgid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| p.3 == pgid && p.1 != 'Z')
        .map(|p| p.0)
        .collect()
}

fn list_python_envs() -> BTreeSet<PathBuf> {
    let prefix = Path::new(TRITON_EXTRACT_PREFIX);
    let dir = prefix.parent().unwrap_or(Path::new("/tmp"));
    let name = prefix
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("python_env_");
    list_prefixed(dir, name).into_iter().collect()
}

fn list_prefixed(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(prefix))
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

// ------------------------------------------------------------------------------------------------
// MLServer
// ------------------------------------------------------------------------------------------------

/// Extra settings for [`MlServer::start_with`] / [`MlServer::start_image_flow_with`].
#[derive(Debug, Clone)]
pub struct MlServerOptions {
    /// `parallel_workers` (default 1; 0 makes MLServer ignore `environment_tarball`).
    pub parallel_workers: u32,
    /// `environments_dir`; default `<models_dir>.mlserver/envs`. Deleted and recreated at start.
    pub environments_dir: Option<PathBuf>,
    /// More keys for `settings.json` (override the harness's).
    pub extra_settings: serde_json::Map<String, Value>,
    /// Extra environment variables for the server.
    pub env: Vec<(String, String)>,
}

impl Default for MlServerOptions {
    fn default() -> Self {
        MlServerOptions {
            parallel_workers: 1,
            environments_dir: None,
            extra_settings: serde_json::Map::new(),
            env: Vec::new(),
        }
    }
}

/// A running `mlserver start` (HTTP on 127.0.0.1). Its whole process group is killed on drop.
#[derive(Debug)]
pub struct MlServer {
    server: Server,
    pub grpc_port: u16,
    pub metrics_port: u16,
    pub models_dir: PathBuf,
    /// Where per-model environments are extracted: `<environments_dir>/<sha256 of tarball>`.
    pub environments_dir: PathBuf,
    /// `<models_dir>.mlserver/`: working directory, `settings.json` backup, metrics dir.
    pub work_dir: PathBuf,
    /// The extracted environment of the image-level flow.
    pub image_env: Option<PathBuf>,
}

impl MlServer {
    /// Writes `<models_dir>/settings.json` (127.0.0.1, free ports, `parallel_workers: 1`,
    /// `environments_dir`, `metrics_dir`) and starts the installed venv's `mlserver start
    /// <models_dir>`. The test writes the model folders (`model-settings.json`, see
    /// [`model_settings`]) beforehand.
    pub fn start(servers: &ServersDir, models_dir: &Path, log: &Path) -> Result<MlServer, String> {
        MlServer::start_with(servers, models_dir, log, &MlServerOptions::default())
    }

    pub fn start_with(
        servers: &ServersDir,
        models_dir: &Path,
        log: &Path,
        options: &MlServerOptions,
    ) -> Result<MlServer, String> {
        let prepared = prepare_mlserver(models_dir, options)?;
        let mut cmd = Command::new(servers.mlserver_bin());
        cmd.arg("start")
            .arg(&prepared.models_dir)
            .current_dir(&prepared.work_dir);
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let server = Server::spawn(cmd, log, "mlserver", prepared.ports[0])?;
        Ok(prepared.into_server(server, None))
    }

    /// The MLServer image's start-up with `MLSERVER_ENV_TARBALL`: `tar -zxf <tarball>` into
    /// `extract_dir`, then `bash -c 'source <env>/bin/activate && conda-unpack && export
    /// PYTHONNOUSERSITE=True && exec mlserver start <models_dir>'`. The installed venv's `bin/` is
    /// on `PATH` after the environment's, as the image's own `mlserver` is: an environment without
    /// `mlserver` silently runs that one (tests must check `mlserver.__file__`).
    pub fn start_image_flow(
        servers: &ServersDir,
        tarball: &Path,
        extract_dir: &Path,
        models_dir: &Path,
        log: &Path,
    ) -> Result<MlServer, String> {
        MlServer::start_image_flow_with(
            servers,
            tarball,
            extract_dir,
            models_dir,
            log,
            &MlServerOptions::default(),
        )
    }

    pub fn start_image_flow_with(
        servers: &ServersDir,
        tarball: &Path,
        extract_dir: &Path,
        models_dir: &Path,
        log: &Path,
        options: &MlServerOptions,
    ) -> Result<MlServer, String> {
        fs::create_dir_all(extract_dir)
            .map_err(|e| format!("creating {}: {e}", extract_dir.display()))?;
        let env =
            fs::canonicalize(extract_dir).map_err(|e| format!("{}: {e}", extract_dir.display()))?;
        let out = Command::new("tar")
            .arg("-zxf")
            .arg(tarball)
            .arg("-C")
            .arg(&env)
            .output()
            .map_err(|e| format!("running tar: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tar -zxf {} -C {} failed ({}): {}",
                tarball.display(),
                env.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let prepared = prepare_mlserver(models_dir, options)?;
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(
                "source \"$1/bin/activate\" && conda-unpack && export PYTHONNOUSERSITE=True \
                 && exec mlserver start \"$2\"",
            )
            .arg("mlserver-image-flow")
            .arg(&env)
            .arg(&prepared.models_dir)
            .env(
                "PATH",
                format!("{path}:{}", servers.mlserver_venv().join("bin").display()),
            )
            .current_dir(&prepared.work_dir);
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let server = Server::spawn(cmd, log, "mlserver (image flow)", prepared.ports[0])?;
        Ok(prepared.into_server(server, Some(env)))
    }

    /// Waits until the server and `model` are ready (`GET /v2/health/ready`,
    /// `GET /v2/models/<model>/ready`); fails early when the process exits or the log shows a
    /// traceback (workers crash-loop rather than fail). Returns the time from start to ready.
    pub fn wait_model_ready(&self, model: &str, timeout: Duration) -> Result<Duration, String> {
        self.server
            .wait_model(model, timeout, MLSERVER_FAILURE_MARKERS, &[], || None)
    }

    /// `<environments_dir>/<sha256>` folders (per-model flow extractions).
    #[must_use]
    pub fn extracted_envs(&self) -> Vec<PathBuf> {
        list_prefixed(&self.environments_dir, "")
    }

    /// Stops the server (SIGTERM, 10 s, SIGKILL to the process group) and removes the
    /// environments dir. `Drop` does the same but keeps the environments when the thread panics.
    pub fn stop(mut self) -> Result<StopReport, String> {
        self.shutdown(true)
    }

    fn shutdown(&mut self, clean: bool) -> Result<StopReport, String> {
        if self.server.stopped {
            return Ok(StopReport {
                status: None,
                killed: false,
                removed: Vec::new(),
            });
        }
        let (status, killed) = self.server.terminate();
        let mut removed = Vec::new();
        if clean && self.environments_dir.exists() {
            fs::remove_dir_all(&self.environments_dir)
                .map_err(|e| format!("removing {}: {e}", self.environments_dir.display()))?;
            removed.push(self.environments_dir.clone());
        }
        Ok(StopReport {
            status,
            killed,
            removed,
        })
    }
}

impl Deref for MlServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl DerefMut for MlServer {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.server
    }
}

impl Drop for MlServer {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown(!thread::panicking()) {
            eprintln!("{e}");
        }
    }
}

struct PreparedMlServer {
    models_dir: PathBuf,
    work_dir: PathBuf,
    environments_dir: PathBuf,
    ports: [u16; 3],
}

impl PreparedMlServer {
    fn into_server(self, server: Server, image_env: Option<PathBuf>) -> MlServer {
        MlServer {
            server,
            grpc_port: self.ports[1],
            metrics_port: self.ports[2],
            models_dir: self.models_dir,
            environments_dir: self.environments_dir,
            work_dir: self.work_dir,
            image_env,
        }
    }
}

fn prepare_mlserver(
    models_dir: &Path,
    options: &MlServerOptions,
) -> Result<PreparedMlServer, String> {
    let models_dir = fs::canonicalize(models_dir)
        .map_err(|e| format!("models dir {}: {e}", models_dir.display()))?;
    let mut work = models_dir.clone().into_os_string();
    work.push(".mlserver");
    let work_dir = PathBuf::from(work);
    let environments_dir = options
        .environments_dir
        .clone()
        .unwrap_or_else(|| work_dir.join("envs"));
    // A leftover `<environments_dir>/<sha256>` would be reused without checks.
    if environments_dir.exists() {
        fs::remove_dir_all(&environments_dir)
            .map_err(|e| format!("removing {}: {e}", environments_dir.display()))?;
    }
    let metrics_dir = work_dir.join("metrics");
    for d in [&work_dir, &environments_dir, &metrics_dir] {
        fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let ports = free_ports(3)?;
    let settings = mlserver_settings(
        [ports[0], ports[1], ports[2]],
        options.parallel_workers,
        &environments_dir,
        &metrics_dir,
        &options.extra_settings,
    );
    let text = serde_json::to_string_pretty(&settings).map_err(|e| e.to_string())?;
    let path = models_dir.join("settings.json");
    fs::write(&path, &text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(PreparedMlServer {
        models_dir,
        work_dir,
        environments_dir,
        ports: [ports[0], ports[1], ports[2]],
    })
}

/// The `settings.json` the harness writes: `[http, grpc, metrics]` ports on 127.0.0.1.
#[must_use]
pub fn mlserver_settings(
    ports: [u16; 3],
    parallel_workers: u32,
    environments_dir: &Path,
    metrics_dir: &Path,
    extra: &serde_json::Map<String, Value>,
) -> Value {
    let mut s = json!({
        "debug": false,
        "host": "127.0.0.1",
        "http_port": ports[0],
        "grpc_port": ports[1],
        "metrics_port": ports[2],
        "parallel_workers": parallel_workers,
        "environments_dir": environments_dir,
        "metrics_dir": metrics_dir,
        "load_models_at_startup": true,
    });
    if let Value::Object(map) = &mut s {
        for (k, v) in extra {
            map.insert(k.clone(), v.clone());
        }
    }
    s
}

/// A `model-settings.json` for a custom runtime: `implementation` is `module.Class` relative to
/// the model folder; `environment_tarball` is relative to the model folder too.
#[must_use]
pub fn model_settings(
    name: &str,
    implementation: &str,
    environment_tarball: Option<&str>,
) -> Value {
    let mut v = json!({ "name": name, "implementation": implementation });
    if let Some(t) = environment_tarball {
        v["parameters"] = json!({ "environment_tarball": t });
    }
    v
}

// ------------------------------------------------------------------------------------------------
// KServe v2 helpers
// ------------------------------------------------------------------------------------------------

/// A v2 inference request with one input.
#[must_use]
pub fn v2_request(name: &str, datatype: &str, shape: &[usize], data: Value) -> Value {
    let mut input = json!({ "name": name, "datatype": datatype, "shape": shape });
    input["data"] = data;
    json!({ "inputs": [input] })
}

/// The `data` of output `name` in a v2 response.
pub fn v2_output<'a>(response: &'a Value, name: &str) -> Result<&'a Value, String> {
    response["outputs"]
        .as_array()
        .and_then(|outs| outs.iter().find(|o| o["name"] == name))
        .map(|o| &o["data"])
        .ok_or_else(|| format!("no output {name} in {response}"))
}

/// Output `name` as `f64`s.
pub fn v2_output_f64(response: &Value, name: &str) -> Result<Vec<f64>, String> {
    let data = v2_output(response, name)?;
    data.as_array()
        .ok_or_else(|| format!("output {name}: data is not an array: {data}"))?
        .iter()
        .map(|x| {
            x.as_f64()
                .ok_or_else(|| format!("output {name}: {x} is not a number"))
        })
        .collect()
}

/// Output `name` (BYTES) as strings.
pub fn v2_output_strings(response: &Value, name: &str) -> Result<Vec<String>, String> {
    let data = v2_output(response, name)?;
    data.as_array()
        .ok_or_else(|| format!("output {name}: data is not an array: {data}"))?
        .iter()
        .map(|x| {
            x.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("output {name}: {x} is not a string"))
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// HTTP
// ------------------------------------------------------------------------------------------------

/// One HTTP/1.1 request to `127.0.0.1:port` (`Connection: close`, JSON body if any). Returns the
/// status code and the body (chunked transfer decoded; invalid UTF-8 replaced). `timeout` bounds
/// the whole exchange.
pub fn http(
    method: &str,
    port: u16,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let deadline = Instant::now() + timeout;
    let what = || format!("{method} http://127.0.0.1:{port}{path}");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{}: {e}", what()))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nAccept: */*\r\n"
    );
    if let Some(b) = body {
        let _ = write!(
            req,
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        );
    } else if matches!(method, "POST" | "PUT") {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    let remaining = |deadline: Instant| {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    stream
        .set_write_timeout(Some(remaining(deadline)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(req.as_bytes())
        .map_err(|e| format!("{}: sending: {e}", what()))?;
    if let Some(b) = body {
        stream
            .write_all(b.as_bytes())
            .map_err(|e| format!("{}: sending: {e}", what()))?;
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "{}: no complete response within {} s",
                what(),
                timeout.as_secs_f64()
            ));
        }
        stream
            .set_read_timeout(Some(remaining(deadline)))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if response_complete(&raw) {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{}: reading: {e}", what())),
        }
    }
    parse_response(&raw).map_err(|e| format!("{}: {e}", what()))
}

fn split_head(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    raw.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (&raw[..i], &raw[i + 4..]))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// With `Connection: close` the server closes after the response; this only lets a response with
/// `Content-Length` finish early if the server keeps the socket open anyway.
fn response_complete(raw: &[u8]) -> bool {
    let Some((head, body)) = split_head(raw) else {
        return false;
    };
    let head = String::from_utf8_lossy(head);
    header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| body.len() >= n)
}

fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let (head, body) = split_head(raw).ok_or_else(|| {
        format!(
            "incomplete response ({} bytes): {}",
            raw.len(),
            String::from_utf8_lossy(raw)
        )
    })?;
    let head = String::from_utf8_lossy(head);
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let body: Vec<u8> = if header(&head, "transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(body)?
    } else if let Some(n) = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        if body.len() < n {
            return Err(format!("body truncated: {} of {n} bytes", body.len()));
        }
        body[..n].to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunked body")?;
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|e| format!("bad chunk size {size_hex:?}: {e}"))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err("chunked body truncated".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}
