//! An axum service adopting `tracing-audit` with one `.with(..)`: request
//! spans from tower-http's `TraceLayer` that declare the audit fields, an
//! authentication middleware that records the caller on the request span
//! once it knows it, a login route that emits `auth_failure`, a data route
//! that emits `data_access`, a readiness route that fails closed when the
//! audit trail cannot keep records, and a graceful shutdown that drops the
//! guard. The stack: `EnvFilter` on the fmt layer only, the audit layer, the
//! policy layer.
//!
//! Run it: `cargo run --example axum_service`, then
//! `curl -i -X POST localhost:3000/login -d 'alice:wrong'`,
//! `curl -i -H 'authorization: Bearer key-alice' localhost:3000/data/42`,
//! `curl -i localhost:3000/ready`; Ctrl-C stops it; the trail is in
//! `./audit-axum`. `tests/axum_service.rs` drives the same code.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

use axum::extract::{ConnectInfo, Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::trace::TraceLayer;
use tracing_audit::{AuditGuard, AuditHandle, AuditLayer, Policy, PolicyLayer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Registry};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    audit: AuditHandle,
}

/// The audit and policy layers on the stack a service already has, and the
/// guard to keep until shutdown.
pub fn subscriber(
    dir: &Path,
) -> Result<(impl tracing::Subscriber + Send + Sync, AuditGuard), tracing_audit::Error> {
    let (audit, guard) = AuditLayer::builder()
        .service("axum-example")
        .file(dir)
        .build()?;
    let (policies, _compliance) = PolicyLayer::builder()
        .policy(
            Policy::new("failed_logins")
                .require(["auth_failure"])
                .threshold(5),
        )
        .build();
    let subscriber = Registry::default()
        // The log filter belongs to the console layer alone: a global one
        // would discard INFO audit events before the audit layer saw them.
        .with(tracing_subscriber::fmt::layer().with_filter(EnvFilter::new("info")))
        .with(audit)
        .with(policies);
    Ok((subscriber, guard))
}

/// The routes, with request spans that declare the audit fields up front
/// (`Span::record` only sets fields a span declared).
pub fn app(audit: AuditHandle) -> Router {
    Router::new()
        .route("/login", post(login))
        .route("/data/{id}", get(data))
        .route("/ready", get(ready))
        .layer(middleware::from_fn(authenticate))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let ip = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string());
            tracing::info_span!(
                "request",
                audit.action = %format!("{} {}", req.method(), req.uri().path()),
                audit.ip = ip.as_deref(),
                audit.actor = tracing::field::Empty,
            )
        }))
        .with_state(AppState { audit })
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    audit: AuditHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app(audit).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Bearer keys look like `key-<user>`; a real service checks a store.
async fn authenticate(req: Request, next: Next) -> Response {
    let key = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|k| k.starts_with("key-"))
        .map(str::to_owned);
    if let Some(key) = &key {
        // Known only now: recorded late on the request span, inherited by
        // every audit event inside it.
        tracing::Span::current().record("audit.actor", key.as_str());
    }
    next.run(req).await
}

async fn login(body: String) -> Response {
    let (user, password) = body.split_once(':').unwrap_or((body.as_str(), ""));
    if password == "correct horse" {
        tracing::info!(
            audit.event = "login",
            audit.actor = user,
            audit.outcome = "success"
        );
        (StatusCode::OK, "welcome\n").into_response()
    } else {
        tracing::warn!(
            audit.event = "auth_failure",
            audit.actor = user,
            audit.resource = "/login",
            audit.outcome = "failure",
            reason = "bad password",
            "authentication failed"
        );
        (StatusCode::UNAUTHORIZED, "no\n").into_response()
    }
}

async fn data(UrlPath(id): UrlPath<String>, req_span: RequestHasActor) -> Response {
    if !req_span.0 {
        tracing::warn!(
            audit.event = "auth_failure",
            audit.resource = format!("/data/{id}").as_str(),
            audit.outcome = "failure",
            reason = "no key"
        );
        return (StatusCode::UNAUTHORIZED, "no key\n").into_response();
    }
    tracing::info!(
        audit.event = "data_access",
        audit.resource = format!("customers/{id}").as_str(),
        audit.outcome = "success",
        rows = 1u64
    );
    (StatusCode::OK, format!("customer {id}\n")).into_response()
}

/// Readiness fails closed: an instance that cannot audit stops taking
/// traffic (the runtime stays responsive even while the disk is full).
async fn ready(State(state): State<AppState>) -> Response {
    let h = state.audit.health();
    if h.healthy {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", h.reasons.join("; ")),
        )
            .into_response()
    }
}

/// Whether the request carried a key (the middleware saw one).
pub struct RequestHasActor(bool);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestHasActor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let has = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer key-"));
        Ok(RequestHasActor(has))
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (subscriber, guard) = subscriber(Path::new("./audit-axum"))?;
    tracing::subscriber::set_global_default(subscriber)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve(listener, guard.handle(), shutdown).await?;
    // Writes what is queued and audit_stopped, and syncs.
    drop(guard);
    Ok(())
}
