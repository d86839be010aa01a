//! A real rsyslog on loopback for the tests: a child process with its own
//! config and work directory, and what it wrote, parsed. Without rsyslogd
//! (or a plugin a test needs) a test fails in CI, which installs them, and
//! is skipped elsewhere with a message.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Rsyslog {
    pub child: Child,
    pub work: PathBuf,
    pub conf: PathBuf,
}

/// Whether rsyslogd can be used; in CI its absence is a failure.
pub fn available() -> bool {
    let ok = Command::new("rsyslogd")
        .arg("-v")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("rsyslogd is not installed: .ci/run installs it with apt-get (rsyslog rsyslog-gnutls)");
        }
        eprintln!("SKIPPED: rsyslogd not installed (apt-get install rsyslog rsyslog-gnutls)");
    }
    ok
}

/// Whether rsyslog's TLS driver (`rsyslog-gnutls`) is installed; without
/// it the TLS test is skipped visibly, or fails at once in CI.
#[cfg(feature = "tls")]
pub fn gtls_available() -> bool {
    plugin_available("lmnsd_gtls.so", "rsyslog-gnutls")
}

/// Whether rsyslog's RELP input (`rsyslog-relp`) is installed.
pub fn relp_available() -> bool {
    available() && plugin_available("imrelp.so", "rsyslog-relp")
}

/// Whether an rsyslog plugin is installed; without it a test is skipped
/// visibly, or fails at once in CI.
pub fn plugin_available(file: &str, package: &str) -> bool {
    let ok = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .any(|d| d.path().join("rsyslog").join(file).exists())
        || Path::new("/usr/lib/rsyslog").join(file).exists();
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("rsyslog's {file} is not installed: apt-get install {package} (.ci/run does)");
        }
        eprintln!("SKIPPED: {package} not installed (apt-get install {package})");
    }
    ok
}

/// rsyslog config pieces (WORK is replaced by the work directory).
pub const GLOBAL: &str = r#"global(workDirectory="WORK/spool" maxMessageSize="256k")"#;
/// TCP on a port the kernel picks, written to WORK/tcp.port.
pub const TCP: &str = r#"module(load="imtcp") input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName="WORK/tcp.port")"#;
/// A TCP listener used only to know rsyslog is up (WORK/ready.port).
pub const READY: &str = r#"module(load="imtcp") input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName="WORK/ready.port")"#;
pub const UNIX: &str = r#"module(load="imuxsock" SysSock.Use="off") input(type="imuxsock" Socket="WORK/log.sock" UseSpecialParser="off" ParseHostname="on")"#;

pub fn udp(port: u16) -> String {
    format!(r#"module(load="imudp") input(type="imudp" address="127.0.0.1" port="{port}")"#)
}

pub const TEMPLATE: &str = r#"template(name="parsed" type="string" string="%app-name%|%msgid%|%structured-data%|%msg%\n")"#;

impl Rsyslog {
    /// Starts rsyslogd with `inputs` (config text where WORK is the work dir).
    pub fn start(work: &Path, inputs: &str) -> Rsyslog {
        std::fs::create_dir_all(work.join("spool")).unwrap();
        let conf = work.join("rsyslog.conf");
        let text = format!(
            "{}\n{TEMPLATE}\naction(type=\"omfile\" file=\"WORK/out.log\" template=\"parsed\")\n",
            inputs
        )
        .replace("WORK", work.to_str().unwrap());
        std::fs::write(&conf, text).unwrap();
        let check = Command::new("rsyslogd")
            .args(["-N1", "-f"])
            .arg(&conf)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "rsyslog config invalid: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        Self::spawn(work, conf)
    }

    pub fn spawn(work: &Path, conf: PathBuf) -> Rsyslog {
        let child = Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(work.join("pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Rsyslog {
            child,
            work: work.to_path_buf(),
            conf,
        }
    }

    /// Waits for a port file written by imtcp.
    pub fn port(&self, name: &str) -> u16 {
        let path = self.work.join(name);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = std::fs::read_to_string(&path) {
                if let Ok(p) = s.trim().parse() {
                    return p;
                }
            }
            assert!(Instant::now() < deadline, "rsyslog did not write {name}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait for exit (rsyslog drains before it exits).
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.wait();
    }

    /// Kills it mid-stream without cutting a write: SIGSTOP (it takes
    /// nothing more, and a write in progress completes first), a pause in
    /// which senders fill their windows, then SIGKILL.
    pub fn stop_and_kill(&mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success());
        std::thread::sleep(Duration::from_millis(300));
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Received lines, once `n` distinct records are there (or a timeout).
    pub fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.received();
            let distinct: std::collections::BTreeSet<&str> = got
                .iter()
                .filter_map(|r| {
                    // A record, or an ECS document naming one.
                    r.record["audit_id"]
                        .as_str()
                        .or_else(|| r.record["event"]["id"].as_str())
                })
                .collect();
            if distinct.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn received(&self) -> Vec<Received> {
        let text = std::fs::read_to_string(self.work.join("out.log")).unwrap_or_default();
        text.lines().filter_map(Received::parse).collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message as rsyslog parsed it.
#[derive(Debug)]
pub struct Received {
    pub app: String,
    pub msgid: String,
    pub sd: String,
    pub record: serde_json::Value,
}

impl Received {
    pub fn parse(line: &str) -> Option<Received> {
        let mut parts = line.splitn(4, '|');
        let app = parts.next()?.to_owned();
        let msgid = parts.next()?.to_owned();
        let mut rest = parts.next()?.to_owned();
        let mut msg = parts.next()?.to_owned();
        // A `|` inside the SD moves the split; the JSON starts at BOM or `{`.
        while !(msg.starts_with('\u{feff}') || msg.starts_with('{')) {
            let (a, b) = msg.split_once('|')?;
            rest = format!("{rest}|{a}");
            msg = b.to_owned();
        }
        let record = serde_json::from_str(msg.trim_start_matches('\u{feff}')).ok()?;
        Some(Received {
            app,
            msgid,
            sd: rest,
            record,
        })
    }

    pub fn seq(&self) -> u64 {
        self.record["seq"].as_u64().unwrap()
    }
}

/// imrelp on `port`; with `Direct` queues the relay writes a message to
/// out.log before it acknowledges it, so an acknowledged message survives
/// a SIGKILL of the relay (the kernel keeps what was written).
pub fn relp_input(port: u16, tls: &str) -> String {
    format!(
        "{GLOBAL}\nmain_queue(queue.type=\"Direct\")\nmodule(load=\"imrelp\")\ninput(type=\"imrelp\" address=\"127.0.0.1\" port=\"{port}\" maxDataSize=\"256k\"{tls})"
    )
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port` (imrelp writes no
/// port file).
pub fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
