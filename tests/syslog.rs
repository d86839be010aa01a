//! The syslog sink against a real rsyslog on loopback: UDP, TCP (octet
//! counting and LF), TLS, a Unix socket, hostile values, and a relay
//! restart in the middle of a TCP stream.
//!
//! rsyslog runs as a child process with its own config and work directory
//! (`common::rsyslog`). Without rsyslogd these tests fail in CI
//! (which installs it) and are skipped elsewhere with a message.

mod common;

use common::rsyslog::*;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use tracing_audit::{syslog::Format, syslog::Framing, AuditLayer, SyslogSink};
use tracing_subscriber::layer::SubscriberExt;

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
    rs.stop_and_kill();
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
    // Each record counted sent once, when the relay acknowledged it (a
    // resent copy is counted as resent, not sent again).
    assert_eq!(stats.syslog_sent, n + 2, "{stats:?}");
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
