//! Running the `verger` binary with a hermetic environment and a timeout.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{model_path, ort_dylib, repo_root};

/// Builder for one `verger` invocation.
pub struct Verger {
    cmd: Command,
    timeout: Duration,
    shown: Vec<String>,
}

/// Arrange for a child to be SIGKILLed if the thread that spawned it dies
/// (a crashed or killed test process must not leave children behind).
pub fn kill_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

impl Verger {
    /// `verger` with no arguments; cwd = repository root; `ORT_DYLIB_PATH`
    /// set; `VERGER_MODEL`, `RUST_LOG` and every `AWS_*` variable removed.
    pub fn new() -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_verger"));
        cmd.current_dir(repo_root());
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("AWS_") || k == "VERGER_MODEL" || k == "RUST_LOG" {
                cmd.env_remove(&*k);
            }
        }
        cmd.env("ORT_DYLIB_PATH", ort_dylib());
        cmd.env("NO_COLOR", "1");
        kill_with_parent(&mut cmd);
        Verger {
            cmd,
            timeout: Duration::from_secs(900),
            shown: vec!["verger".into()],
        }
    }

    /// `verger run --input IN --output OUT --model <shared model>`.
    pub fn run(input: impl AsRef<OsStr>, output: impl AsRef<OsStr>) -> Self {
        Self::run_without_model(input, output)
            .arg("--model")
            .arg(model_path())
    }

    /// `verger run --input IN --output OUT` (model from env / default lookup).
    pub fn run_without_model(input: impl AsRef<OsStr>, output: impl AsRef<OsStr>) -> Self {
        Self::new()
            .arg("run")
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(output)
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.shown.push(a.as_ref().to_string_lossy().into_owned());
        self.cmd.arg(a);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }

    pub fn envs(mut self, vars: &[(String, String)]) -> Self {
        for (k, v) in vars {
            self.cmd.env(k, v);
        }
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cmd.current_dir(dir);
        self
    }

    /// Start in the background, output captured to files.
    pub fn spawn(mut self) -> Spawned {
        let capture = tempfile::tempdir().expect("temp dir for output capture");
        self.cmd
            .stdin(Stdio::null())
            .stdout(File::create(capture.path().join("stdout")).unwrap())
            .stderr(File::create(capture.path().join("stderr")).unwrap());
        let child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", env!("CARGO_BIN_EXE_verger")));
        Spawned {
            child,
            capture,
            command: self.shown.join(" "),
            started: Instant::now(),
        }
    }

    /// Run to completion (killed after the timeout) and capture everything.
    // The child is reaped by wait4 (for its rusage), which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    pub fn exec(mut self) -> RunOutput {
        let capture = tempfile::tempdir().expect("temp dir for output capture");
        let out_path = capture.path().join("stdout");
        let err_path = capture.path().join("stderr");
        self.cmd
            .stdin(Stdio::null())
            .stdout(File::create(&out_path).unwrap())
            .stderr(File::create(&err_path).unwrap());
        let start = Instant::now();
        let mut child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", env!("CARGO_BIN_EXE_verger")));
        let pid = child.id() as libc::pid_t;
        let (status, max_rss_kib) = loop {
            // wait4 (not Child::try_wait) to get this child's own peak RSS.
            let mut raw = 0;
            // SAFETY: an all-zero rusage is a valid value.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: waiting on our own, not yet reaped, child.
            let r = unsafe { libc::wait4(pid, &mut raw, libc::WNOHANG, &mut usage) };
            if r == pid {
                let rss = u64::try_from(usage.ru_maxrss).ok().filter(|&k| k > 0);
                break (ExitStatus::from_raw(raw), rss);
            }
            assert!(r == 0, "wait4 failed: {}", std::io::Error::last_os_error());
            if start.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`{}` did not finish within {:?}\n--- stdout\n{}\n--- stderr\n{}",
                    self.shown.join(" "),
                    self.timeout,
                    String::from_utf8_lossy(&std::fs::read(&out_path).unwrap_or_default()),
                    String::from_utf8_lossy(&std::fs::read(&err_path).unwrap_or_default()),
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        RunOutput {
            command: self.shown.join(" "),
            status,
            stdout: String::from_utf8_lossy(&std::fs::read(&out_path).unwrap()).into_owned(),
            stderr: String::from_utf8_lossy(&std::fs::read(&err_path).unwrap()).into_owned(),
            elapsed: start.elapsed(),
            max_rss_kib,
        }
    }
}

/// A `verger` started in the background (see [`Verger::spawn`]); killed in
/// `Drop` if still running.
pub struct Spawned {
    child: std::process::Child,
    capture: tempfile::TempDir,
    command: String,
    started: Instant,
}

impl Spawned {
    /// stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(
            &std::fs::read(self.capture.path().join("stderr")).unwrap_or_default(),
        )
        .into_owned()
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited already.
    pub fn finished(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits for it to exit on its own.
    pub fn wait(mut self) -> RunOutput {
        self.collect()
    }

    /// SIGKILL (no chance to clean up, like a power loss) and reap.
    pub fn kill(mut self) -> RunOutput {
        let _ = self.child.kill();
        self.collect()
    }

    fn collect(&mut self) -> RunOutput {
        let status = self.child.wait().expect("wait for verger");
        let read = |name: &str| {
            String::from_utf8_lossy(&std::fs::read(self.capture.path().join(name)).unwrap())
                .into_owned()
        };
        RunOutput {
            command: self.command.clone(),
            status,
            stdout: read("stdout"),
            stderr: read("stderr"),
            elapsed: self.started.elapsed(),
            max_rss_kib: None,
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one `verger` invocation did.
#[derive(Clone)]
pub struct RunOutput {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// Peak resident set size of the verger process (KiB), from wait4.
    pub max_rss_kib: Option<u64>,
}

impl fmt::Debug for RunOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` -> {} in {:.1?} (peak RSS {:?} KiB)\n--- stdout\n{}\n--- stderr\n{}",
            self.command, self.status, self.elapsed, self.max_rss_kib, self.stdout, self.stderr
        )
    }
}

impl RunOutput {
    #[track_caller]
    pub fn assert_success(self) -> Self {
        assert!(self.status.success(), "expected success: {self:?}");
        self
    }

    #[track_caller]
    pub fn assert_failure(self) -> Self {
        assert!(!self.status.success(), "expected a non-zero exit: {self:?}");
        assert!(
            self.status.code().is_some(),
            "expected an orderly exit, not death by signal: {self:?}"
        );
        self
    }

    /// stdout followed by stderr.
    pub fn combined(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// The last non-empty line of stdout and of stderr.
    pub fn last_lines(&self) -> Vec<&str> {
        [&self.stdout, &self.stderr]
            .into_iter()
            .filter_map(|s| s.lines().rev().find(|l| !l.trim().is_empty()))
            .collect()
    }

    /// Assert that stdout or stderr ends with a one-line summary holding the
    /// three counts (as whole numbers; repeated values must repeat).
    #[track_caller]
    pub fn assert_summary(&self, listed: usize, features: usize, errors: usize) {
        let want = {
            let mut w = vec![listed, features, errors];
            w.sort_unstable();
            w
        };
        let ok = self.last_lines().into_iter().any(|line| {
            let mut nums = numbers_in(line);
            want.iter().all(|n| {
                if let Some(i) = nums.iter().position(|m| m == n) {
                    nums.swap_remove(i);
                    true
                } else {
                    false
                }
            })
        });
        assert!(
            ok,
            "no summary line with counts listed={listed} features={features} errors={errors} at the end of stdout/stderr (last lines: {:?})\n{self:?}",
            self.last_lines()
        );
    }
}

/// All unsigned integers appearing as separate tokens in `line`
/// (digits glued to letters, e.g. `s3` or `1.5s`, do not count).
pub fn numbers_in(line: &str) -> Vec<usize> {
    let bytes = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let before = start.checked_sub(1).map(|j| bytes[j]);
            let after = bytes.get(i).copied();
            let glued = |c: Option<u8>| {
                c.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_')
            };
            // `,` as thousands separator is not expected; treat as a delimiter.
            if !glued(before)
                && !glued(after)
                && let Ok(n) = line[start..i].parse()
            {
                out.push(n);
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn numbers_in_finds_whole_tokens() {
    assert_eq!(
        numbers_in("done: 1920 listed, 1919 ok, 1 error (s3) in 3.5s"),
        vec![1920, 1919, 1]
    );
    assert_eq!(numbers_in("listed=3 features=2 errors=1"), vec![3, 2, 1]);
}
