//! A throw-away Ballista cluster on loopback: `verger scheduler` and N
//! `verger executor` processes on free ports, each logging to its own file.
//! Every process is killed in `Drop` (also when a test panics) and dies
//! with the test thread if the test process is killed.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::runner::kill_with_parent;
use super::seaweed::free_ports;
use super::{model_path, ort_dylib, repo_root};

pub struct TestCluster {
    dir: tempfile::TempDir,
    pub port: u16,
    scheduler: Child,
    executors: Vec<(String, Child)>,
}

/// `verger` with a clean environment plus `env`, logging to `log`.
fn verger(log: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_verger"));
    cmd.current_dir(repo_root());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("AWS_") || k == "VERGER_MODEL" || k == "RUST_LOG" || k == "VERGER_LOG" {
            cmd.env_remove(&*k);
        }
    }
    cmd.env("ORT_DYLIB_PATH", ort_dylib())
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(File::create(log).unwrap())
        .stderr(File::create(log.with_extension("err")).unwrap());
    kill_with_parent(&mut cmd);
    cmd
}

/// A minimal HTTP GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((status, body))
}

impl TestCluster {
    /// A scheduler and one executor per id (`--concurrent-tasks 2
    /// --threads 1`: two executors share this machine's cores), ready to
    /// take work. `env` (S3 settings) goes to every executor.
    pub fn start(executor_ids: &[&str], env: &[(String, String)], executor_timeout_s: u64) -> Self {
        Self::start_with_model(executor_ids, env, executor_timeout_s, &model_path())
    }

    /// Like [`TestCluster::start`], with the executors loading `model`.
    pub fn start_with_model(
        executor_ids: &[&str],
        env: &[(String, String)],
        executor_timeout_s: u64,
        model: &Path,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("verger-ballista-")
            .tempdir()
            .unwrap();
        let ports = free_ports(1 + executor_ids.len());
        let port = ports[0];
        std::fs::create_dir_all(dir.path().join("events")).unwrap();
        let scheduler = verger(&dir.path().join("scheduler.log"), &[])
            .args(["scheduler", "--bind"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--executor-timeout", &executor_timeout_s.to_string()])
            .args(["--expire-interval", "1"])
            .args(["--min-executors", &executor_ids.len().to_string()])
            .arg("--event-log-dir")
            .arg(dir.path().join("events"))
            .spawn()
            .expect("spawn verger scheduler");
        let mut cluster = TestCluster {
            dir,
            port,
            scheduler,
            executors: Vec::new(),
        };
        for (id, flight_port) in executor_ids.iter().zip(&ports[1..]) {
            let work_dir = cluster.dir.path().join(format!("work-{id}"));
            let child = verger(&cluster.log_path(id), env)
                .args(["executor", "--id", id, "--scheduler"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["--flight-port", &flight_port.to_string()])
                .args(["--concurrent-tasks", "2", "--threads", "1"])
                .arg("--model")
                .arg(model)
                .arg("--work-dir")
                .arg(work_dir)
                .spawn()
                .expect("spawn verger executor");
            cluster.executors.push((id.to_string(), child));
        }
        cluster.wait_ready(Duration::from_secs(120));
        cluster
    }

    /// `df://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("df://127.0.0.1:{}", self.port)
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.log"))
    }

    /// Everything an executor (or "scheduler") wrote so far.
    pub fn log(&self, id: &str) -> String {
        let path = self.log_path(id);
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        text.push_str(&std::fs::read_to_string(path.with_extension("err")).unwrap_or_default());
        text
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some((200, _)) = http_get(self.port, "/readyz") {
                return;
            }
            for (id, child) in &mut self.executors {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "executor {id} exited early ({status}):\n{}",
                        self_log(&self.dir, id)
                    );
                }
            }
            if let Ok(Some(status)) = self.scheduler.try_wait() {
                panic!(
                    "scheduler exited early ({status}):\n{}",
                    self_log(&self.dir, "scheduler")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "cluster not ready within {timeout:?}\n--- scheduler\n{}\n{}",
            self.log("scheduler"),
            self.executors
                .iter()
                .map(|(id, _)| format!("--- {id}\n{}", self.log(id)))
                .collect::<String>()
        );
    }

    /// SIGKILL one executor (no goodbye to the scheduler).
    pub fn kill_executor(&mut self, id: &str) {
        let (_, child) = self
            .executors
            .iter_mut()
            .find(|(name, _)| name == id)
            .unwrap_or_else(|| panic!("no executor {id}"));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The scheduler's event log, one list of events (JSON lines) per job.
    pub fn job_events(&self) -> Vec<Vec<Value>> {
        let mut jobs = Vec::new();
        for entry in std::fs::read_dir(self.dir.path().join("events")).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            jobs.push(
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| serde_json::from_str::<Value>(l).unwrap())
                    .collect(),
            );
        }
        jobs
    }

    /// Dumps every log (for failure messages).
    pub fn all_logs(&self) -> String {
        let mut text = format!("--- scheduler\n{}", self.log("scheduler"));
        for (id, _) in &self.executors {
            text.push_str(&format!("--- {id}\n{}", self.log(id)));
        }
        text
    }
}

fn self_log(dir: &tempfile::TempDir, id: &str) -> String {
    let path = dir.path().join(format!("{id}.log"));
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text.push_str(&std::fs::read_to_string(path.with_extension("err")).unwrap_or_default());
    text
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.executors {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.scheduler.kill();
        let _ = self.scheduler.wait();
    }
}
