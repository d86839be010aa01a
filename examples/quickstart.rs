//! Quick start: an audit trail for a small service, written, verified and
//! reported in `./audit-demo/`.
//!
//! It adds `AuditLayer` and `PolicyLayer` to an ordinary subscriber stack
//! (fmt + EnvFilter), plays a realistic morning of traffic — logins, a burst
//! of failed logins from one address, data access, a high-risk export, all
//! with request context from spans — then reads the trail back, verifies its
//! hash chain and prints a compliance report.
//!
//! Run it twice: the second run continues the same chain.

use std::time::Duration;

use tracing_audit::{
    trail::AuditTrail, trail::Query, AuditLayer, FileSink, Policy, PolicyLayer, Risk,
};
use tracing_subscriber::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::Path::new("./audit-demo");

    // 1. The subscriber stack the service already has, plus two layers.
    let (audit, guard) = AuditLayer::builder()
        .service("billing-api")
        .version(env!("CARGO_PKG_VERSION"))
        .environment("demo")
        .file(
            FileSink::new(dir)
                .rotation(tracing_audit::file::Rotation::DAILY)
                .max_files(90),
        )
        .durable_at(Risk::High)
        .build()?;
    let (policies, compliance) = PolicyLayer::builder()
        .policies(Policy::defaults())
        .policy(
            Policy::new("failed_logins")
                .title("Brute force detection")
                .description("Five failed logins within five minutes")
                .require(["auth_failure"])
                .threshold(5)
                .window(Duration::from_secs(300))
                .retention(Duration::from_secs(30 * 86_400)),
        )
        .on_alert(|a| {
            eprintln!(
                "ALERT: policy {} reached {} events (last actor {:?})",
                a.policy, a.count, a.actor
            )
        })
        .build();
    // The EnvFilter is the fmt layer's own (a per-layer filter): added to the
    // stack with `.with(..)` it would be global and hide INFO audit events too.
    let console = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(tracing_subscriber::EnvFilter::new("warn"));
    let stack = tracing_subscriber::registry()
        .with(console)
        .with(audit)
        .with(policies);
    tracing::subscriber::set_global_default(stack)?;

    // 2. Traffic, written with ordinary tracing macros.
    for (user, ip) in [("alice", "198.51.100.7"), ("bob", "198.51.100.8")] {
        let span = tracing::info_span!("request", audit.actor = user, audit.ip = ip, audit.session = %uuid_like(user));
        let _e = span.enter();
        tracing::info!(
            audit.event = "login",
            audit.resource = "/login",
            audit.outcome = "success",
            method = "password"
        );
        tracing::info!(
            audit.event = "data_access",
            audit.resource = "invoice/2026-0042",
            audit.action = "read",
            audit.outcome = "success",
            rows = 12u64,
            "invoice viewed"
        );
    }
    // A failed-login burst from one address: the brute-force policy alerts once.
    for attempt in 1..=6u64 {
        let span = tracing::info_span!(
            "request",
            audit.ip = "203.0.113.66",
            audit.actor = "unknown"
        );
        let _e = span.enter();
        tracing::warn!(
            audit.event = "auth_failure",
            audit.resource = "/login",
            audit.outcome = "failure",
            attempt,
            reason = "bad password",
            "authentication failed"
        );
    }
    // A high-risk export: on disk and synced before the macro returns.
    {
        let span = tracing::info_span!("request", audit.actor = "bob", audit.ip = "198.51.100.8");
        let _e = span.enter();
        tracing::info!(
            audit.event = "data_export",
            audit.resource = "customers.csv",
            audit.action = "export",
            audit.outcome = "success",
            audit.risk = "high",
            records = 1520u64,
            "customer list exported"
        );
        tracing::info!(audit.event = "logout", audit.outcome = "success");
    }
    std::thread::sleep(Duration::from_millis(200)); // let the alert record land
                                                    // Dropping the guard flushes, syncs and writes audit_stopped; read the
                                                    // counters through a handle afterwards, so they include that record.
    let handle = guard.handle();
    drop(guard);
    let stats = handle.stats();

    // 3. Read it back.
    let trail = AuditTrail::open(dir)?;
    let summary = trail.stats(&Query::default());
    println!(
        "Audit trail in {}: {} records in {} file(s)",
        dir.display(),
        summary.total,
        trail.files().len()
    );
    println!(
        "  written {} records, {} bytes, {} syncs, {} dropped",
        stats.records_written, stats.bytes_written, stats.syncs, stats.records_dropped
    );
    for (kind, n) in &summary.by_event_type {
        println!("  {n:>5}  {kind}");
    }
    let failures = Query {
        outcome: Some(tracing_audit::Outcome::Failure),
        ..Query::default()
    };
    let (recent, _) = trail.recent(3, &failures);
    println!("\nLatest failures:");
    for r in &recent {
        println!(
            "  seq {:>4}  {}  {:<14} ip={}",
            r.seq,
            r.timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            r.event_type.as_deref().unwrap_or("-"),
            r.ip_address.as_deref().unwrap_or("-")
        );
    }

    // 4. Prove it was not edited.
    let report = tracing_audit::verify(dir, None)?;
    match &report.failure {
        None => println!(
            "\nVerified: {} records, seq {}..{}, chain intact ({}).",
            report.records,
            report.first_seq.unwrap_or(0),
            report.last_seq.unwrap_or(0),
            report.algorithm
        ),
        Some(f) => println!(
            "\nVERIFY FAILED at {}:{}: {:?}: {}",
            f.file.display(),
            f.line,
            f.kind,
            f.detail
        ),
    }
    println!(
        "Check it yourself:  cargo run --features cli --bin tracing-audit -- verify {}",
        dir.display()
    );

    // 5. Compliance.
    println!("\nCompliance:");
    for r in compliance.reports() {
        println!(
            "  {:<28} {:<9} {} event(s){}",
            r.policy_name,
            format!("{:?}", r.status),
            r.total_events,
            if r.violations.is_empty() {
                String::new()
            } else {
                format!("  [{}]", r.violations.join("; "))
            } + &if r.coverage.is_empty() {
                String::new()
            } else {
                format!(
                    "  (coverage: {} required kind(s) not seen)",
                    r.coverage.len()
                )
            }
        );
    }
    if !report.is_ok() {
        std::process::exit(1);
    }
    Ok(())
}

/// A stable, fake session id for the demo.
fn uuid_like(user: &str) -> String {
    format!(
        "sess-{:08x}",
        user.bytes()
            .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619))
    )
}
