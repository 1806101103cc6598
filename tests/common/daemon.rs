//! The controller binary as the tests run it: a host process under the ServiceAccount of
//! deploy/rbac.yaml, for the images of one suite, that a test can kill with SIGKILL and
//! start again in its place.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::cvi::SUITE_LABEL;
use super::{TestEnv, wait_for};

/// Where a daemon listens; a restarted daemon uses the same addresses, as a restarted pod
/// behind the same Service does.
#[derive(Clone, Copy)]
pub struct Ports {
    pub metrics: u16,
    pub upload: u16,
}

/// The controller binary under a shell that prints its pid and kills it when the pipe this
/// process holds closes (the test ending, however it ends).
pub struct Daemon {
    shell: Child,
    pid: String,
}

impl Daemon {
    /// Runs the daemon as the ServiceAccount of deploy/rbac.yaml, for the images of `suite`.
    pub fn start(env: &TestEnv, dir: &Path, suite: &str, ports: Ports, run: u32) -> Self {
        Self::start_with(env, dir, suite, ports, run, "")
    }

    /// As [`start`](Self::start), with more flags (`extra`, as shell words).
    pub fn start_with(
        env: &TestEnv,
        dir: &Path,
        suite: &str,
        ports: Ports,
        run: u32,
        extra: &str,
    ) -> Self {
        let flags = format!(
            "--max-concurrent-imports 4 --verification=false \
             --leader-election-lease-duration-seconds 8 --leader-election-renew-deadline-seconds 6 \
             --leader-election-retry-period-seconds 2 {extra}"
        );
        Self::launch(env, dir, suite, ports, &format!("controller-{run}"), &flags)
    }

    /// The daemon with only the flags every test needs (its suite, its addresses, no catalog
    /// controller) and `flags`; it logs to `<dir>/<log_name>.log`. Returns once it serves.
    pub fn launch(
        env: &TestEnv,
        dir: &Path,
        suite: &str,
        ports: Ports,
        log_name: &str,
        flags: &str,
    ) -> Self {
        let log = dir.join(format!("{log_name}.log"));
        let kubeconfig = env.daemon_kubeconfig(dir);
        let Ports {
            metrics: metrics_port,
            upload,
        } = ports;
        let command = format!(
            "'{bin}' controller --selector {SUITE_LABEL}={suite} --metrics-addr 127.0.0.1:{metrics_port} \
             --catalog-controller=false \
             --upload-addr 127.0.0.1:{upload} --upload-external-url http://127.0.0.1:{upload} \
             --upload-in-cluster-url http://image-catalog-upload.image-catalog.svc {flags} \
             >'{log}' 2>&1 & pid=$!; echo $pid; read _; kill $pid 2>/dev/null",
            bin = env!("CARGO_BIN_EXE_image-catalog"),
            log = log.display(),
        );
        eprintln!("controller log: {}", log.display());
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(command)
            .envs(&env.vars)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,image_catalog=debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the controller starts");
        let mut pid = String::new();
        BufReader::new(shell.stdout.take().unwrap())
            .read_line(&mut pid)
            .unwrap();
        let pid = pid.trim().to_string();
        assert!(
            pid.parse::<u32>().is_ok(),
            "the shell printed a pid: {pid:?}"
        );
        let daemon = Self { shell, pid };
        wait_for(
            "the daemon to serve metrics",
            Duration::from_secs(60),
            || metrics(ports.metrics).map(|_| ()),
        );
        daemon
    }

    /// SIGKILL: no shutdown, no clean-up, as when a node or a container dies.
    pub fn kill(mut self) {
        let status = Command::new("kill")
            .args(["-KILL", &self.pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -KILL {}", self.pid);
        // Dead (a zombie until the shell reaps it) means its sockets are closed.
        let stat = format!("/proc/{}/stat", self.pid);
        wait_for("the daemon to die", Duration::from_secs(30), || {
            let dead = match std::fs::read_to_string(&stat) {
                Err(_) => true,
                Ok(stat) => stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with(['Z', 'X'])),
            };
            dead.then_some(())
        });
        drop(self.shell.stdin.take());
        let _ = self.shell.wait();
    }
}

/// A scratch directory for one test, kept (and named) when the test fails, for its logs.
pub struct Scratch(Option<tempfile::TempDir>);

impl Scratch {
    pub fn new() -> Self {
        Self(Some(tempfile::tempdir().unwrap()))
    }
    pub fn path(&self) -> &Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.0.take()
        {
            eprintln!("kept {} for its logs", dir.keep().display());
        }
    }
}

pub fn metrics(port: u16) -> Option<String> {
    let output = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .unwrap();
    output
        .status
        .success()
        .then(|| String::from_utf8(output.stdout).unwrap())
}

pub fn metric(port: u16, name: &str) -> Option<f64> {
    metrics(port)?
        .lines()
        .find(|line| line.split(' ').next() == Some(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}
