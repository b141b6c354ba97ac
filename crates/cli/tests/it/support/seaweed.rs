//! A throw-away local S3 server: SeaweedFS `weed mini` from the virtualenv.
//!
//! Every component (master, volume, filer, S3, admin) gets its own free
//! HTTP and gRPC port so several servers can run side by side (tests run in
//! parallel); WebDAV, the admin UI, Iceberg and Lance endpoints are off.
//! The server is stopped in `Drop` (also when the test panics) and dies with
//! the test thread if the test process is killed.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::runner::kill_with_parent;
use super::{python_json_env, weed};

/// Serialises port picking + start-up within this process, so two servers
/// never pick the same ports.
static START: Mutex<()> = Mutex::new(());

pub struct SeaweedFs {
    child: Child,
    dir: tempfile::TempDir,
    /// S3, S3 gRPC, master, master gRPC, volume, volume gRPC, filer, filer
    /// gRPC, admin, admin gRPC: kept so a restart binds the same ones.
    ports: Vec<u16>,
    pub s3_port: u16,
    pub access_key: String,
    pub secret_key: String,
}

/// Reserve `n` distinct free ports (all held open until every one is picked).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

impl SeaweedFs {
    /// Start a server with fresh random credentials and wait until S3 answers.
    pub fn start() -> Self {
        let _guard = START.lock().unwrap_or_else(|e| e.into_inner());
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let access_key = format!("verger-it-{}", std::process::id());
        let secret_key = format!("it-secret-{nanos:x}");
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("verger-weed-")
                .tempdir()
                .unwrap();
            let p = free_ports(10);
            let child = spawn_weed(dir.path(), &p, &access_key, &secret_key);
            let mut server = SeaweedFs {
                child,
                dir,
                ports: p.clone(),
                s3_port: p[0],
                access_key: access_key.clone(),
                secret_key: secret_key.clone(),
            };
            // Every port but the admin UI's (disabled) must be taken by weed
            // before the lock is released, so no other server can pick it.
            if server.wait_until_listening(Duration::from_secs(60)) {
                return server;
            }
            last_log = server.log();
            // Port clash or slow start: drop (stops it) and retry with new ports.
        }
        panic!("SeaweedFS did not start; last log:\n{last_log}");
    }

    /// Every port but the admin UI's (disabled) must be taken by weed.
    fn wait_until_listening(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        let mut pending: Vec<SocketAddr> = self
            .ports
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != 8)
            .map(|(_, p)| SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect();
        while start.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            pending.retain(|addr| {
                TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_err()
            });
            if pending.is_empty() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The server's output (after a restart: the first run's, then the current one's).
    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name));
        let mut log = read("weed.log.1").unwrap_or_default();
        log.push_str(&read("weed.log").unwrap_or_default());
        log
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The environment `verger` (and the Python client) need to reach this server.
    pub fn env_with_secret(&self, secret: &str) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), secret.to_string()),
            ("AWS_REGION".into(), "eu-west-1".into()),
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("S3_TEST_ENDPOINT".into(), self.endpoint()),
        ]
    }

    pub fn env(&self) -> Vec<(String, String)> {
        self.env_with_secret(&self.secret_key)
    }

    /// A fresh server holding the whole shared sample under `s3://fruits/images/`.
    pub fn with_sample() -> Self {
        let s3 = Self::start();
        s3.tool(["mb", "fruits"]);
        let sample = super::dataset_dir();
        let up = s3.tool([
            "upload".as_ref(),
            sample.as_os_str(),
            std::ffi::OsStr::new("s3://fruits/images/"),
        ]);
        let images = super::dataset_images().len() as u64;
        assert!(up["uploaded"].as_u64().unwrap() >= images, "upload: {up}");
        s3
    }

    /// Run `tests/python/s3_tool.py ARGS...` against this server.
    pub fn tool<I, S>(&self, args: I) -> Value
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        python_json_env("s3_tool.py", args, &self.env())
    }
}

impl SeaweedFs {
    /// Stop the server (SIGTERM, SIGKILL after `grace`) and reap it.
    fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM first so weed removes its /tmp unix sockets; SIGKILL if it lingers.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child's pid, which has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stop the server, leave it down for `down_for`, start it again on the
    /// same ports with the same data directory and credentials, and return
    /// once every port listens and S3 answers requests again.
    pub fn restart(&mut self, down_for: Duration) {
        // No other server may pick ports while these are free.
        let _guard = START.lock().unwrap_or_else(|e| e.into_inner());
        self.stop(Duration::from_secs(5));
        std::thread::sleep(down_for);
        let d = self.dir.path().to_path_buf();
        for sock in ["s3.sock", "filer.sock"] {
            let _ = std::fs::remove_file(d.join(sock));
        }
        // Keep the earlier output: `spawn_weed` starts a new weed.log.
        let mut log = self.log();
        log.push_str("\n===== restart =====\n");
        std::fs::write(d.join("weed.log.1"), log).unwrap();
        self.child = spawn_weed(&d, &self.ports, &self.access_key, &self.secret_key);
        assert!(
            self.wait_until_listening(Duration::from_secs(60)),
            "SeaweedFS did not come back on the same ports; log:\n{}",
            self.log()
        );
        let start = Instant::now();
        while !self.s3_answers() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "SeaweedFS S3 does not answer after a restart; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the S3 gateway answers an (anonymous) request with anything
    /// but a server error: 403 means it is up and checking signatures.
    fn s3_answers(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.s3_port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!(
            "GET / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.s3_port
        );
        if s.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        if s.read_exact(&mut head).is_err() {
            return false;
        }
        // "HTTP/1.1 403"
        let status = String::from_utf8_lossy(&head[9..12]).into_owned();
        !status.starts_with('5')
    }
}

/// Spawn `weed mini` in `dir` (data, logs, sockets) on `p` (see `SeaweedFs::ports`).
fn spawn_weed(d: &Path, p: &[u16], access_key: &str, secret_key: &str) -> Child {
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::create_dir_all(d.join("logs")).unwrap();
    let log = d.join("weed.log");
    let mut cmd = Command::new(weed());
    cmd.arg(format!("-logdir={}", d.join("logs").display()))
        .arg("mini")
        .arg(format!("-dir={}", d.join("data").display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
        .arg(format!("-s3.port={}", p[0]))
        .arg(format!("-s3.port.grpc={}", p[1]))
        .arg(format!("-master.port={}", p[2]))
        .arg(format!("-master.port.grpc={}", p[3]))
        .arg(format!("-volume.port={}", p[4]))
        .arg(format!("-volume.port.grpc={}", p[5]))
        .arg(format!("-filer.port={}", p[6]))
        .arg(format!("-filer.port.grpc={}", p[7]))
        .arg(format!("-admin.port={}", p[8]))
        .arg(format!("-admin.port.grpc={}", p[9]))
        .arg(format!("-s3.localSocket={}", d.join("s3.sock").display()))
        .arg(format!(
            "-filer.localSocket={}",
            d.join("filer.sock").display()
        ))
        .args([
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ])
        // weed mini creates an admin identity from these.
        .env("AWS_ACCESS_KEY_ID", access_key)
        .env("AWS_SECRET_ACCESS_KEY", secret_key)
        .stdin(Stdio::null())
        .stdout(File::create(&log).unwrap())
        .stderr(File::create(&log).unwrap());
    kill_with_parent(&mut cmd);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", weed().display()))
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}
