//! The syslog sink against a real rsyslog on loopback: UDP, TCP (octet
//! counting and LF), TLS, a Unix socket, hostile values, and a relay
//! restart in the middle of a TCP stream.
//!
//! rsyslog runs as a child process with its own config and work directory
//! (the `Rsyslog` helper below). Without rsyslogd these tests fail in CI
//! (which installs it) and are skipped elsewhere with a message.

mod common;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tracing_audit::{syslog::Format, syslog::Framing, AuditLayer, SyslogSink};
use tracing_subscriber::layer::SubscriberExt;

struct Rsyslog {
    child: Child,
    work: PathBuf,
    conf: PathBuf,
}

/// Whether rsyslogd can be used; in CI its absence is a failure.
fn available() -> bool {
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
fn gtls_available() -> bool {
    plugin_available("lmnsd_gtls.so", "rsyslog-gnutls")
}

/// Whether rsyslog's RELP input (`rsyslog-relp`) is installed.
fn relp_available() -> bool {
    available() && plugin_available("imrelp.so", "rsyslog-relp")
}

/// Whether an rsyslog plugin is installed; without it a test is skipped
/// visibly, or fails at once in CI.
fn plugin_available(file: &str, package: &str) -> bool {
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
const GLOBAL: &str = r#"global(workDirectory="WORK/spool" maxMessageSize="256k")"#;
/// TCP on a port the kernel picks, written to WORK/tcp.port.
const TCP: &str = r#"module(load="imtcp") input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName="WORK/tcp.port")"#;
/// A TCP listener used only to know rsyslog is up (WORK/ready.port).
const READY: &str = r#"module(load="imtcp") input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName="WORK/ready.port")"#;
const UNIX: &str = r#"module(load="imuxsock" SysSock.Use="off") input(type="imuxsock" Socket="WORK/log.sock" UseSpecialParser="off" ParseHostname="on")"#;

fn udp(port: u16) -> String {
    format!(r#"module(load="imudp") input(type="imudp" address="127.0.0.1" port="{port}")"#)
}

const TEMPLATE: &str = r#"template(name="parsed" type="string" string="%app-name%|%msgid%|%structured-data%|%msg%\n")"#;

impl Rsyslog {
    /// Starts rsyslogd with `inputs` (config text where WORK is the work dir).
    fn start(work: &Path, inputs: &str) -> Rsyslog {
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

    fn spawn(work: &Path, conf: PathBuf) -> Rsyslog {
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
    fn port(&self, name: &str) -> u16 {
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
    fn stop(&mut self) {
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

    /// Received lines, once `n` distinct records are there (or a timeout).
    fn wait_for(&self, n: usize) -> Vec<Received> {
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

    fn received(&self) -> Vec<Received> {
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
struct Received {
    app: String,
    msgid: String,
    sd: String,
    record: serde_json::Value,
}

impl Received {
    fn parse(line: &str) -> Option<Received> {
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

    fn seq(&self) -> u64 {
        self.record["seq"].as_u64().unwrap()
    }
}

/// Sends `n` numbered records through a layer whose only sink is `sink`.
fn send(sink: SyslogSink, n: u64, also_file: Option<&Path>) -> tracing_audit::AuditStats {
    send_paced(sink, n, also_file, Duration::ZERO)
}

/// [`send`] with a pause after every record (UDP has no flow control).
fn send_paced(
    sink: SyslogSink,
    n: u64,
    also_file: Option<&Path>,
    pause: Duration,
) -> tracing_audit::AuditStats {
    let mut b = AuditLayer::builder()
        .syslog(sink.app_name("billing-api"))
        .host("test-host");
    if let Some(dir) = also_file {
        b = b.file(dir);
    }
    let (audit, guard) = b.build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        for i in 0..n {
            tracing::info!(
                audit.event = "data_access",
                audit.actor = "alice",
                audit.outcome = "success",
                i
            );
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
    });
    let handle = guard.handle();
    drop(guard);
    handle.stats()
}

/// Every app record 0..n exactly once, SD and MSG intact.
fn check_exactly_once(got: &[Received], n: u64) {
    let mut seen = BTreeMap::new();
    for r in got {
        if r.record["event_type"] != "data_access" {
            continue;
        }
        assert_eq!(r.app, "billing-api");
        assert_eq!(r.msgid, "data_access");
        let seq = r.seq();
        for want in [
            "[audit@32473 ".to_owned(),
            "event=\"data_access\"".into(),
            "actor=\"alice\"".into(),
            "outcome=\"success\"".into(),
            format!("seq=\"{seq}\""),
            format!("id=\"{}\"", r.record["audit_id"].as_str().unwrap()),
            format!("chain=\"{}\"", r.record["chain_id"].as_str().unwrap()),
        ] {
            assert!(r.sd.contains(&want), "SD lacks {want}: {}", r.sd);
        }
        assert_eq!(
            r.record["hash"].as_str().unwrap().len(),
            64,
            "MSG is the whole sealed line"
        );
        *seen
            .entry(r.record["details"]["i"].as_u64().unwrap())
            .or_insert(0) += 1;
    }
    let missing: Vec<u64> = (0..n).filter(|i| !seen.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "{} missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let dups: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dups.is_empty(), "duplicates: {dups:?}");
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn tcp_octet_counting_and_lf_framing() {
    if !available() {
        return;
    }
    let work = common::tempdir();
    let rs = Rsyslog::start(work.path(), &format!("{GLOBAL}\n{TCP}"));
    let port = rs.port("tcp.port");
    let audit_dir = common::tempdir();
    let stats = send(
        SyslogSink::tcp(format!("127.0.0.1:{port}")),
        500,
        Some(audit_dir.path()),
    );
    assert_eq!(stats.syslog_dropped, 0);
    check_exactly_once(&rs.wait_for(502), 500);
    // The same records are in the file, with the same hashes.
    let file = common::read_trail(audit_dir.path());
    let got = rs.received();
    for r in got
        .iter()
        .filter(|r| r.record["event_type"] == "data_access")
    {
        assert_eq!(file[r.seq() as usize]["hash"], r.record["hash"]);
    }

    let work2 = common::tempdir();
    let rs2 = Rsyslog::start(work2.path(), &format!("{GLOBAL}\n{TCP}"));
    let port = rs2.port("tcp.port");
    send(
        SyslogSink::tcp(format!("127.0.0.1:{port}")).framing(Framing::Lf),
        300,
        None,
    );
    check_exactly_once(&rs2.wait_for(302), 300);
}

#[test]
fn udp_datagrams() {
    if !available() {
        return;
    }
    let work = common::tempdir();
    let port = free_udp_port();
    let rs = Rsyslog::start(work.path(), &format!("{GLOBAL}\n{}\n{READY}", udp(port)));
    rs.port("ready.port"); // started
                           // UDP has no flow control: paced so the receiver's socket buffer never fills.
    let stats = send_paced(
        SyslogSink::udp(format!("127.0.0.1:{port}")),
        200,
        None,
        Duration::from_millis(2),
    );
    assert_eq!(stats.syslog_truncated, 0);
    check_exactly_once(&rs.wait_for(202), 200);
}

#[test]
fn unix_datagram_socket() {
    if !available() {
        return;
    }
    let work = common::tempdir();
    let rs = Rsyslog::start(work.path(), &format!("{GLOBAL}\n{UNIX}\n{READY}"));
    rs.port("ready.port");
    let sock = work.path().join("log.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    send(SyslogSink::unix(&sock), 100, None);
    check_exactly_once(&rs.wait_for(102), 100);
}

#[test]
fn hostile_values_never_break_framing() {
    if !available() {
        return;
    }
    let work = common::tempdir();
    let port = free_udp_port();
    let rs = Rsyslog::start(work.path(), &format!("{GLOBAL}\n{TCP}\n{}", udp(port)));
    let tcp = rs.port("tcp.port");
    let hostile = "a]b\"c\\d\r\ne\u{0}f é 日本 \u{1b}[31m";
    let big = "x".repeat(100 * 1024);
    for sink in [
        SyslogSink::tcp(format!("127.0.0.1:{tcp}")),
        SyslogSink::tcp(format!("127.0.0.1:{tcp}")).framing(Framing::Lf),
        SyslogSink::udp(format!("127.0.0.1:{port}")),
    ] {
        let (audit, guard) = AuditLayer::builder()
            .syslog(sink.app_name("hostile"))
            .max_value_len(200 * 1024)
            .build()
            .unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
            tracing::info!(
                audit.event = "inject",
                audit.actor = hostile,
                audit.resource = big.as_str(),
                n = 1
            );
            tracing::info!(audit.event = "after", n = 2);
        });
        let h = guard.handle();
        drop(guard);
        assert_eq!(h.stats().syslog_dropped, 0);
    }
    let got = rs.wait_for(12);
    let injects: Vec<&Received> = got.iter().filter(|r| r.msgid == "inject").collect();
    let afters = got.iter().filter(|r| r.msgid == "after").count();
    assert_eq!(
        afters, 3,
        "the message after a hostile one arrives intact on every transport"
    );
    // TCP: the whole 100 KB record, values intact. UDP: cut to 2048 bytes, so
    // its MSG is not JSON and is not among the parsed lines.
    assert_eq!(injects.len(), 2, "{got:?}");
    for r in injects {
        assert_eq!(r.record["actor"], hostile);
        assert_eq!(r.record["resource"].as_str().unwrap().len(), big.len());
        assert!(r.sd.contains("actor=\"a\\]b\\\"c\\\\d"), "{}", r.sd);
    }
    let raw = std::fs::read_to_string(work.path().join("out.log")).unwrap();
    let udp_line = raw
        .lines()
        .find(|l| l.starts_with("hostile|inject|") && !l.contains("\"hash\""))
        .expect("UDP message");
    assert!(udp_line.len() < 2200, "datagram cut to the cap");
    assert!(
        udp_line.contains("seq=\"") && udp_line.contains("event=\"inject\""),
        "{udp_line}"
    );
}

#[test]
fn rfc3164_format_is_accepted() {
    if !available() {
        return;
    }
    let work = common::tempdir();
    let rs = Rsyslog::start(work.path(), &format!("{GLOBAL}\n{TCP}"));
    let port = rs.port("tcp.port");
    send(
        SyslogSink::tcp(format!("127.0.0.1:{port}"))
            .framing(Framing::Lf)
            .format(Format::Rfc3164),
        50,
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        let raw = std::fs::read_to_string(work.path().join("out.log")).unwrap_or_default();
        lines = raw
            .lines()
            .filter(|l| l.starts_with("billingapi|"))
            .map(str::to_owned)
            .collect();
        if lines.len() >= 52 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lines.len(), 52);
    for l in &lines {
        let json = &l[l.find('{').unwrap()..];
        serde_json::from_str::<serde_json::Value>(json).unwrap();
    }
}

#[test]
fn relay_restart_mid_stream_loses_nothing() {
    if !available() {
        return;
    }
    let work = common::tempdir();
    let mut rs = Rsyslog::start(work.path(), &format!("{GLOBAL}\n{TCP}"));
    let port = rs.port("tcp.port");
    let (audit, guard) = AuditLayer::builder()
        .syslog(
            SyslogSink::tcp(format!("127.0.0.1:{port}"))
                .app_name("billing-api")
                .backoff(Duration::from_millis(20), Duration::from_millis(200)),
        )
        .build()
        .unwrap();
    let handle = guard.handle();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
    let n = 3000u64;
    let sender = std::thread::spawn(move || {
        tracing::dispatcher::with_default(&dispatch, || {
            for i in 0..n {
                tracing::info!(
                    audit.event = "data_access",
                    audit.actor = "alice",
                    audit.outcome = "success",
                    i
                );
                if i.is_multiple_of(10) {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
    });
    // Let part of the stream through, then restart the relay on the same port.
    let deadline = Instant::now() + Duration::from_secs(20);
    while rs.received().len() < 500 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    rs.stop();
    let before = rs.received().len();
    std::thread::sleep(Duration::from_millis(300));
    let conf = std::fs::read_to_string(&rs.conf)
        .unwrap()
        .replace("port=\"0\"", &format!("port=\"{port}\""));
    std::fs::write(&rs.conf, conf).unwrap();
    let rs2 = Rsyslog::spawn(work.path(), rs.conf.clone());
    sender.join().unwrap();
    drop(guard);
    let got = rs2.wait_for(n as usize + 2);
    let stats = handle.stats();
    assert!(
        before < n as usize,
        "the restart happened mid-stream ({before} of {n} before it)"
    );
    assert!(stats.syslog_reconnects >= 1, "{stats:?}");
    let mut seen = std::collections::BTreeSet::new();
    for r in &got {
        if r.record["event_type"] == "data_access" {
            seen.insert(r.record["details"]["i"].as_u64().unwrap());
        }
    }
    let missing: Vec<u64> = (0..n).filter(|i| !seen.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "lost across the restart: {} (first {:?}); stats {stats:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    // Resent messages are the only duplicates, and they are few.
    let dups = got
        .iter()
        .filter(|r| r.record["event_type"] == "data_access")
        .count()
        - seen.len();
    assert!(dups <= 256, "{dups} duplicates");
}

#[cfg(feature = "tls")]
#[test]
fn tls_with_verified_server_certificate() {
    use std::sync::Arc;
    if !available() || !gtls_available() {
        return;
    }
    let work = common::tempdir();
    let config = test_certificates(work.path(), false);
    let rs = Rsyslog::start(
        work.path(),
        "global(workDirectory=\"WORK/spool\" maxMessageSize=\"256k\" DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"WORK/ca.pem\" DefaultNetstreamDriverCertFile=\"WORK/cert.pem\" DefaultNetstreamDriverKeyFile=\"WORK/key.pem\")\nmodule(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")\ninput(type=\"imtcp\" address=\"127.0.0.1\" port=\"0\" listenPortFileName=\"WORK/tls.port\")",
    );
    let port = rs.port("tls.port");
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stats = send(
        SyslogSink::tls(format!("127.0.0.1:{port}"), config.clone(), name),
        300,
        None,
    );
    assert_eq!(stats.syslog_errors, 0, "{stats:?}");
    check_exactly_once(&rs.wait_for(302), 300);

    // A server the client does not trust: nothing is sent, errors are counted.
    let untrusted = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    );
    let (audit, guard) = AuditLayer::builder()
        .syslog(
            SyslogSink::tls(
                format!("127.0.0.1:{port}"),
                untrusted,
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            )
            .backoff(Duration::from_millis(10), Duration::from_millis(50))
            .shutdown_grace(Duration::from_millis(500))
            .queue_mode(tracing_audit::QueueMode::Lossy),
        )
        .build()
        .unwrap();
    let h = guard.handle();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::info!(audit.event = "never_delivered");
    });
    std::thread::sleep(Duration::from_millis(300));
    let stats = h.stats();
    assert!(stats.syslog_errors >= 1, "{stats:?}");
    let err = stats.last_error.unwrap_or_default();
    assert!(
        err.contains("certificate") || err.contains("Certificate"),
        "{err}"
    );
    drop(guard);
    assert!(rs.received().iter().all(|r| r.msgid != "never_delivered"));
}

/// imrelp on `port`; with `Direct` queues the relay writes a message to
/// out.log before it acknowledges it, so an acknowledged message survives
/// a SIGKILL of the relay (the kernel keeps what was written).
fn relp_input(port: u16, tls: &str) -> String {
    format!(
        "{GLOBAL}\nmain_queue(queue.type=\"Direct\")\nmodule(load=\"imrelp\")\ninput(type=\"imrelp\" address=\"127.0.0.1\" port=\"{port}\" maxDataSize=\"256k\"{tls})"
    )
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port` (imrelp writes no
/// port file).
fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Counts the app records received per `i`; returns (missing, duplicates).
fn missing_and_duplicates(got: &[Received], n: u64) -> (Vec<u64>, u64) {
    let mut seen = BTreeMap::new();
    for r in got {
        if r.record["event_type"] == "data_access" {
            *seen
                .entry(r.record["details"]["i"].as_u64().unwrap())
                .or_insert(0u64) += 1;
        }
    }
    let missing = (0..n).filter(|i| !seen.contains_key(i)).collect();
    let dups = seen.values().map(|c| c - 1).sum();
    (missing, dups)
}

#[test]
fn relp_every_record_acknowledged_by_rsyslog() {
    if !relp_available() {
        return;
    }
    let work = common::tempdir();
    let port = free_tcp_port();
    let rs = Rsyslog::start(work.path(), &relp_input(port, ""));
    wait_listening(port);
    let n = 3000;
    let stats = send(
        SyslogSink::relp(format!("127.0.0.1:{port}")).relp_window(64),
        n,
        None,
    );
    let got = rs.wait_for(n as usize + 2);
    check_exactly_once(&got, n);
    assert_eq!(stats.syslog_errors, 0, "{stats:?}");
    assert_eq!(stats.syslog_resent, 0, "{stats:?}");
    // Sent means acknowledged, and the relay acknowledged what it wrote.
    assert_eq!(stats.syslog_sent as usize, got.len(), "{stats:?}");
}

#[test]
fn relp_relay_killed_mid_stream_resends_exactly_the_unacknowledged() {
    if !relp_available() {
        return;
    }
    let work = common::tempdir();
    let port = free_tcp_port();
    let mut rs = Rsyslog::start(work.path(), &relp_input(port, ""));
    wait_listening(port);
    let (audit, guard) = AuditLayer::builder()
        .syslog(
            SyslogSink::relp(format!("127.0.0.1:{port}"))
                .app_name("billing-api")
                .backoff(Duration::from_millis(20), Duration::from_millis(200)),
        )
        .build()
        .unwrap();
    let handle = guard.handle();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
    let n = 4000u64;
    let sender = std::thread::spawn(move || {
        tracing::dispatcher::with_default(&dispatch, || {
            for i in 0..n {
                tracing::info!(
                    audit.event = "data_access",
                    audit.actor = "alice",
                    audit.outcome = "success",
                    i
                );
                if i.is_multiple_of(10) {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while rs.received().len() < 800 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Stopped, the relay takes no more: the sink fills its window and
    // waits for answers. SIGKILL then: it dies with those unacknowledged.
    let pid = rs.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(300));
    rs.child.kill().unwrap();
    rs.child.wait().unwrap();
    let before = rs.received().len();
    std::thread::sleep(Duration::from_millis(300));
    let rs2 = Rsyslog::spawn(work.path(), rs.conf.clone());
    sender.join().unwrap();
    drop(guard);
    let got = rs2.wait_for(n as usize + 2);
    let stats = handle.stats();
    assert!(
        before < n as usize,
        "the kill happened mid-stream ({before} of {n} before it)"
    );
    assert!(stats.syslog_reconnects >= 1, "{stats:?}");
    let (missing, dups) = missing_and_duplicates(&got, n);
    assert!(
        missing.is_empty(),
        "lost across the kill: {} (first {:?}); stats {stats:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    eprintln!(
        "relay killed after {before} records: {} resent, {dups} duplicates received, {} reconnects",
        stats.syslog_resent, stats.syslog_reconnects
    );
    // Only what was unacknowledged at the kill was sent again: at most one
    // window, and every duplicate the relay holds is one of those.
    assert!((1..=128).contains(&stats.syslog_resent), "{stats:?}");
    assert!(
        dups <= stats.syslog_resent,
        "{dups} duplicates, {} resent",
        stats.syslog_resent
    );
    // The relay's file, checked as a collected copy: one chain, intact and
    // gap-free from seq 0, the resent copies counted as duplicates.
    let report = tracing_audit::trail::verify_collected(
        &[work.path().join("out.log")],
        &tracing_audit::trail::CollectedOptions::default(),
    )
    .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.chains.len(), 1);
    let chain = &report.chains[0];
    assert_eq!(chain.first_seq, Some(0));
    assert_eq!(chain.records, n + 2);
    assert_eq!(chain.duplicates, dups);
}

#[cfg(feature = "tls")]
#[test]
fn relp_over_tls_with_verified_server_certificate() {
    if !relp_available() {
        return;
    }
    let work = common::tempdir();
    let config = test_certificates(work.path(), true);
    let port = free_tcp_port();
    let rs = Rsyslog::start(
        work.path(),
        &relp_input(
            port,
            " tls=\"on\" tls.authMode=\"certvalid\" tls.caCert=\"WORK/ca.pem\" tls.myCert=\"WORK/cert.pem\" tls.myPrivKey=\"WORK/key.pem\"",
        ),
    );
    wait_listening(port);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stats = send(
        SyslogSink::relp_tls(format!("127.0.0.1:{port}"), config, name),
        500,
        None,
    );
    let got = rs.wait_for(502);
    check_exactly_once(&got, 500);
    assert_eq!(stats.syslog_errors, 0, "{stats:?}");
    assert_eq!(stats.syslog_sent as usize, got.len(), "{stats:?}");
}

/// A CA and a server certificate for localhost and 127.0.0.1, made here and
/// written as ca.pem, cert.pem and key.pem in `work`; returns a client
/// configuration that trusts the CA and, with `client_auth`, presents a
/// client certificate from the same CA (imrelp's TLS asks for one).
#[cfg(feature = "tls")]
fn test_certificates(work: &Path, client_auth: bool) -> std::sync::Arc<rustls::ClientConfig> {
    use std::sync::Arc;
    // A CA and a server certificate for 127.0.0.1, made here.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tracing-audit test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(work.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(work.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(work.join("key.pem"), key.serialize_pem()).unwrap();

    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    if !client_auth {
        return Arc::new(builder.with_no_client_auth());
    }
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client = rcgen::CertificateParams::new(vec!["audit-client".to_owned()])
        .unwrap()
        .signed_by(&client_key, &ca, &ca_key)
        .unwrap();
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(client_key.serialize_der().into());
    Arc::new(
        builder
            .with_client_auth_cert(vec![client.der().clone()], key_der)
            .unwrap(),
    )
}

#[test]
fn a_mapped_message_schema_reaches_the_relay_naming_its_record() {
    use tracing_audit::record::mapping::Schema;
    if !available() {
        return;
    }
    let work = common::tempdir();
    let rs = Rsyslog::start(work.path(), &format!("{GLOBAL}\n{TCP}"));
    let port = rs.port("tcp.port");
    let n = 50;
    send(
        SyslogSink::tcp(format!("127.0.0.1:{port}")).message_schema(Schema::Ecs),
        n,
        None,
    );
    let got = rs.wait_for(n as usize + 2);
    let app: Vec<_> = got.iter().filter(|r| r.msgid == "data_access").collect();
    assert_eq!(app.len(), n as usize);
    for r in app {
        // MSG is the ECS document; the SD still carries the record's keys.
        assert_eq!(r.record["event"]["action"], "data_access");
        assert_eq!(r.record["user"]["name"], "alice");
        let id = r.record["event"]["id"].as_str().unwrap();
        assert!(r.sd.contains(&format!("id=\"{id}\"")), "{}", r.sd);
        let seq = r.record["event"]["sequence"].as_u64().unwrap();
        assert!(r.sd.contains(&format!("seq=\"{seq}\"")), "{}", r.sd);
    }
}
