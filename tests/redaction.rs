//! Secrets never reach the trail in clear: fields whose names match the
//! redaction list are replaced (or HMACed), in the file and in what a
//! syslog receiver gets.

mod common;

use std::io::Read;

use serde_json::Value;
use tracing_audit::record::{redaction_hmac, REDACTED};
use tracing_audit::{AuditLayer, SyslogSink};
use tracing_subscriber::layer::SubscriberExt;

/// Every byte the trail's files hold.
fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    common::audit_files(dir)
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn redacted_names(r: &Value) -> Vec<String> {
    r["details"]["audit.redacted"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// A TCP "syslog server" on loopback that keeps every byte it receives.
fn receiver() -> (String, std::thread::JoinHandle<Vec<u8>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        all
    });
    (addr, t)
}

#[test]
fn every_default_name_and_its_variants_are_redacted_in_the_file_and_in_syslog() {
    let dir = common::tempdir();
    let (addr, rx) = receiver();
    let (audit, guard) = AuditLayer::builder()
        .file(dir.path())
        .syslog(SyslogSink::tcp(addr))
        .build()
        .unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::info!(
            audit.event = "login",
            audit.actor = "alice",
            password = "s3cr3t-password-value",
            passwd = "s3cr3t-passwd-value",
            secret = "s3cr3t-secret-value",
            token = "s3cr3t-token-value",
            authorization = "Bearer s3cr3t-authorization-value",
            cookie = "sid=s3cr3t-cookie-value",
            api_key = "s3cr3t-api_key-value",
            private_key = "s3cr3t-private_key-value",
            user_id = 42u64,
            note = "kept in clear"
        );
        // Nested and differently cased names, and values of other types.
        tracing::info!(
            audit.event = "config_change",
            user.password = "s3cr3t-nested-value",
            http.headers.Authorization = "Basic s3cr3t-cased-value",
            refresh_token = ?"s3cr3t-debug-value",
            db.api_key_id = 987_654_321u64,
            cookie_consent = true,
            reason = "rotation"
        );
    });
    drop(guard);
    let bytes = all_bytes(dir.path());
    let received = rx.join().unwrap();
    assert!(
        contains(&received, REDACTED),
        "syslog got no redacted record"
    );
    for secret in ["s3cr3t", "987654321"] {
        assert!(!contains(&bytes, secret), "{secret} is in the trail");
        assert!(!contains(&received, secret), "{secret} reached syslog");
    }
    let records = common::app_records(dir.path());
    let login = &records[0];
    for name in [
        "password",
        "passwd",
        "secret",
        "token",
        "authorization",
        "cookie",
        "api_key",
        "private_key",
    ] {
        assert_eq!(login["details"][name], REDACTED, "{name}");
    }
    assert_eq!(login["details"]["user_id"], 42);
    assert_eq!(login["details"]["note"], "kept in clear");
    assert_eq!(redacted_names(login).len(), 8, "{login}");
    assert_eq!(
        login["actor"], "alice",
        "convention slots are never redacted"
    );
    let change = &records[1];
    for name in [
        "user.password",
        "http.headers.Authorization",
        "refresh_token",
        "db.api_key_id",
        "cookie_consent",
    ] {
        assert_eq!(change["details"][name], REDACTED, "{name}");
        assert!(redacted_names(change).contains(&name.to_owned()), "{name}");
    }
    assert_eq!(change["details"]["reason"], "rotation");
    let report = tracing_audit::verify(dir.path(), None).unwrap();
    assert!(report.is_ok(), "{report:?}");
}

#[test]
fn hmac_mode_lets_an_auditor_check_a_known_value_and_correlate() {
    let dir = common::tempdir();
    let key = b"0123456789abcdef0123456789abcdef".to_vec();
    let (audit, guard) = AuditLayer::builder()
        .file(dir.path())
        .chain_key(key.clone())
        .redact_with_hmac()
        .build()
        .unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        for (who, token) in [("a", "tok-one"), ("b", "tok-two"), ("c", "tok-one")] {
            tracing::info!(audit.event = "api_call", audit.actor = who, token, n = 7u64);
        }
        tracing::info!(audit.event = "api_call", api_key = 31337u64);
    });
    drop(guard);
    let bytes = all_bytes(dir.path());
    assert!(!contains(&bytes, "tok-one") && !contains(&bytes, "tok-two"));
    let trail = tracing_audit::trail::AuditTrail::open(dir.path())
        .unwrap()
        .with_key(&key);
    let calls: Vec<_> = trail
        .records()
        .map(Result::unwrap)
        .filter(|r| r.event_type.as_deref() == Some("api_call"))
        .collect();
    let token = |i: usize| calls[i].details["token"].as_str().unwrap().to_owned();
    assert_eq!(token(0), redaction_hmac(&key, b"tok-one"));
    assert_eq!(token(1), redaction_hmac(&key, b"tok-two"));
    assert_eq!(token(0), token(2), "equal values correlate");
    assert_ne!(token(0), token(1));
    // A number is hashed as its JSON text.
    assert_eq!(calls[3].details["api_key"], redaction_hmac(&key, b"31337"));
    assert!(!contains(&bytes, "31337"));
    let report = tracing_audit::verify(dir.path(), Some(&key)).unwrap();
    assert!(report.is_ok(), "{report:?}");
}

#[test]
fn hmac_mode_without_a_key_is_a_build_error() {
    let dir = common::tempdir();
    let err = AuditLayer::builder()
        .file(dir.path())
        .redact_with_hmac()
        .build::<tracing_subscriber::Registry>()
        .unwrap_err();
    assert!(matches!(err, tracing_audit::Error::Config(_)), "{err}");
    assert!(err.to_string().contains("chain key"), "{err}");
}

#[test]
fn the_list_can_be_replaced_or_emptied() {
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder()
        .file(dir.path())
        .redact(["ssn"])
        .build()
        .unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::info!(
            audit.event = "kyc",
            customer_ssn = "123-45-6789",
            token = "not-on-the-list"
        );
    });
    drop(guard);
    let r = &common::app_records(dir.path())[0];
    assert_eq!(r["details"]["customer_ssn"], REDACTED);
    assert_eq!(r["details"]["token"], "not-on-the-list");

    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder()
        .file(dir.path())
        .redact(Vec::<String>::new())
        .build()
        .unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::info!(
            audit.event = "debug_dump",
            password = "kept: redaction is off"
        );
    });
    drop(guard);
    let r = &common::app_records(dir.path())[0];
    assert_eq!(r["details"]["password"], "kept: redaction is off");
    assert!(r["details"].get("audit.redacted").is_none());
}

#[test]
fn a_field_named_like_the_list_key_is_renamed_not_taken_for_it() {
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::info!(
            audit.event = "x",
            "audit.redacted" = "forged",
            password = "p"
        );
    });
    drop(guard);
    let r = &common::app_records(dir.path())[0];
    assert_eq!(redacted_names(r), ["password"]);
    assert!(
        r["details"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("audit.redacted#")),
        "{r}"
    );
}
