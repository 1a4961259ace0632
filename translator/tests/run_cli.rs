//! `serval-translator run` as a process: it starts, logs what it serves, reloads on SIGHUP
//! (keeping the running policy when the new one is invalid), drains on SIGTERM and exits 0.
//! The test waits on log lines, never on time.

#![allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING.md)

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Hang guard per expected line.
const LINE_WAIT: Duration = Duration::from_secs(60);

struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    fn start(policy: &std::path::Path) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_serval-translator"));
        for (k, _) in std::env::vars() {
            if k.starts_with("SERVAL_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .args(["run", "--config"])
            .arg(policy)
            .env("SERVAL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing `text`; returns it.
    fn expect(&mut self, text: &str) -> String {
        loop {
            match self.lines.recv_timeout(LINE_WAIT) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!("no log line with {text:?}; saw:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn run_serves_reloads_on_sighup_and_drains_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("serval-run-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (common::reserve(), common::reserve());
    let policy = |listeners: &str| {
        format!(
            "serval: {{bind: 127.0.0.1:0}}\nadmin: {{listen: ~}}\nrouter: {{routes: [{{prefix: default, forward: \"127.0.0.1:9\"}}]}}\nclient:\n  connect_timeout: 1s\n  listeners:\n{listeners}drain: {{grace_period: 10s}}\n"
        )
    };
    let one = format!(
        "    - {{name: a, listen: \"{}\", service: \"name:a.example\"}}\n",
        a.addr()
    );
    let two = format!(
        "{one}    - {{name: b, listen: \"{}\", service: \"name:b.example\"}}\n",
        b.addr()
    );
    let path = dir.join("policy.yaml");
    std::fs::write(&path, policy(&one)).unwrap();

    let mut p = Process::start(&path);
    let line = p.expect("client listener open");
    assert!(line.contains(&a.addr().to_string()), "{line}");
    p.expect("translator started");

    // A valid new policy: listener b opens.
    std::fs::write(&path, policy(&two)).unwrap();
    p.signal("-HUP");
    let line = p.expect("client listener open");
    assert!(line.contains(&b.addr().to_string()), "{line}");
    p.expect("policy reloaded");
    assert!(std::net::TcpStream::connect(b.addr()).is_ok());

    // An invalid one: refused with file:line, the running policy stays.
    std::fs::write(&path, "client: {listeners: 7}\n").unwrap();
    p.signal("-HUP");
    p.expect("reload refused");
    p.expect("policy.yaml:1:");
    assert!(std::net::TcpStream::connect(b.addr()).is_ok());

    p.signal("-TERM");
    p.expect("draining");
    p.expect("drained");
    let status = p.child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status.code(), Some(0), "{}", p.seen.join("\n"));
}
