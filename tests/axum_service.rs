//! The axum example as a service: started on 127.0.0.1, driven with plain
//! HTTP requests, stopped, and its trail checked. As root, its readiness
//! route answers (503) while the audit disk is full and requests that emit
//! durable events wait.

mod common;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/axum_service.rs"]
mod axum_service;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One HTTP/1.1 request on a fresh connection; the status and body.
fn http(addr: SocketAddr, req: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> (u16, String) {
    let auth = key.map_or(String::new(), |k| format!("authorization: Bearer {k}\r\n"));
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nhost: t\r\n{auth}connection: close\r\n\r\n"),
    )
}

fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// The example served on 127.0.0.1 by a 2-worker multi-thread runtime;
/// the server task ends when the returned sender fires or is dropped.
fn start(
    rt: &tokio::runtime::Runtime,
    audit: tracing_audit::AuditHandle,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(axum_service::serve(listener, audit, async {
        let _ = stop_rx.await;
    }));
    (addr, stop_tx, server)
}

#[test]
fn the_example_service_keeps_a_verifiable_trail() {
    let dir = common::tempdir();
    let (subscriber, guard) = axum_service::subscriber(dir.path()).unwrap();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (addr, stop_tx, server) = start(&rt, guard.handle());

    assert_eq!(get(addr, "/ready", None).0, 200);
    assert_eq!(post(addr, "/login", "mallory:guess").0, 401);
    assert_eq!(post(addr, "/login", "alice:correct horse").0, 200);
    let (status, body) = get(addr, "/data/42", Some("key-alice"));
    assert_eq!((status, body.as_str()), (200, "customer 42\n"));
    assert_eq!(get(addr, "/data/43", None).0, 401);

    let _ = stop_tx.send(());
    rt.block_on(server).unwrap().unwrap();
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(guard);

    let trail = common::app_records(dir.path());
    let of = |t: &str| -> Vec<&serde_json::Value> {
        trail.iter().filter(|r| r["event_type"] == t).collect()
    };
    let failures = of("auth_failure");
    assert_eq!(failures.len(), 2, "{trail:?}");
    assert_eq!(failures[0]["actor"], "mallory");
    assert_eq!(
        failures[0]["action"], "POST /login",
        "span context from TraceLayer"
    );
    assert_eq!(failures[0]["ip_address"], "127.0.0.1");
    let access = of("data_access");
    assert_eq!(access.len(), 1);
    assert_eq!(
        access[0]["actor"], "key-alice",
        "recorded late by the middleware"
    );
    assert_eq!(access[0]["resource"], "customers/42");
    assert_eq!(of("login").len(), 1);
    let r = tracing_audit::verify(dir.path(), None).unwrap();
    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn readiness_fails_closed_while_the_audit_disk_is_full() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (mounts a full tmpfs); CI runs it as root");
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let mnt = base.path().join("t");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(ok.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let dir = mnt.join("audit");
    let (subscriber, guard) = axum_service::subscriber(&dir).unwrap();
    let dispatch = tracing::Dispatch::new(subscriber);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start({
            let d = dispatch.clone();
            move || {
                // Each runtime thread emits into this test's subscriber.
                std::mem::forget(tracing::dispatcher::set_default(&d));
            }
        })
        .build()
        .unwrap();
    let (addr, stop_tx, server) = start(&rt, guard.handle());
    assert_eq!(get(addr, "/ready", None).0, 200);
    let filler = mnt.join("filler");
    let _ = std::process::Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", filler.display()),
            "bs=64k",
        ])
        .stderr(std::process::Stdio::null())
        .status();
    // Requests whose audit events cannot be written: their tasks wait
    // (block_in_place), the runtime keeps serving.
    let clients: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                for _ in 0..50 {
                    post(addr, "/login", &format!("user{i}:wrong"));
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    let mut answered = None;
    while t0.elapsed() < Duration::from_secs(10) {
        let asked = Instant::now();
        let (status, body) = get(addr, "/ready", None);
        if status == 503 {
            answered = Some((asked.elapsed(), body));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (took, body) = answered.expect("readiness never failed closed");
    eprintln!("readiness with a full audit disk: 503 in {took:?}: {body}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert!(
        body.contains("failing since 20"),
        "the reason says since when: {body}"
    );
    std::fs::remove_file(&filler).unwrap();
    for c in clients {
        c.join().unwrap();
    }
    // The worker retries with a backoff of at most 1 s.
    let t0 = Instant::now();
    while get(addr, "/ready", None).0 != 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "healthy again once space returns"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = stop_tx.send(());
    rt.block_on(server).unwrap().unwrap();
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(guard);
    let r = tracing_audit::verify(&dir, None).unwrap();
    assert!(r.is_ok(), "{r:?}");
}
