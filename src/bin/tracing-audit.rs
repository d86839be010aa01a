//! `tracing-audit`: verify, query, summarise and follow an audit trail.
//!
//! Exit codes: 0 success (for `verify`: the trail is intact), 1 `verify`
//! found a failure, 2 usage or I/O error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use tracing_audit::{
    AuditRecord, AuditTrail, Compliance, FileSink, Follower, Outcome, Policy, Query, Risk,
};

#[derive(Parser, Debug)]
#[command(
    name = "tracing-audit",
    version,
    about = "Verify, query and report on a tracing-audit trail"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Debug)]
struct Trail {
    /// The audit directory.
    dir: PathBuf,
    /// File name prefix the trail was written with.
    #[arg(long, default_value = "audit")]
    prefix: String,
    /// File name suffix the trail was written with.
    #[arg(long, default_value = "jsonl")]
    suffix: String,
    /// Environment variable holding the chain key (for HMAC trails):
    /// without it, a keyed trail's records cannot be authenticated.
    #[arg(long)]
    key_env: Option<String>,
}

impl Trail {
    fn sink(&self) -> FileSink {
        FileSink::new(&self.dir)
            .prefix(self.prefix.clone())
            .suffix(self.suffix.clone())
    }

    fn key(&self) -> Result<Option<Vec<u8>>, Box<dyn std::error::Error>> {
        Ok(match &self.key_env {
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.is_empty() => Some(k.into_bytes()),
                _ => return Err(format!("environment variable {var} is unset or empty").into()),
            },
            None => None,
        })
    }

    /// The trail opened for reading, keyed when a key was given; warns on
    /// stderr when a keyed trail is read without its key.
    fn open(&self) -> Result<AuditTrail, Box<dyn std::error::Error>> {
        let mut t = AuditTrail::open_with(&self.sink())?;
        if let Some(k) = self.key()? {
            t = t.with_key(&k);
        }
        if t.unverified() {
            eprintln!("warning: this trail is keyed (HMAC) and no --key-env was given: records are shown UNVERIFIED; anyone who can write the files could have forged them");
        }
        Ok(t)
    }
}

#[derive(Args, Debug, Default)]
struct Filters {
    /// Only this event type.
    #[arg(long)]
    event_type: Option<String>,
    /// Only this actor.
    #[arg(long)]
    actor: Option<String>,
    /// Only this session id.
    #[arg(long)]
    session: Option<String>,
    /// Only this resource.
    #[arg(long)]
    resource: Option<String>,
    /// Only this outcome (success, failure, unknown).
    #[arg(long)]
    outcome: Option<Outcome>,
    /// Only this risk or higher (low, medium, high, critical).
    #[arg(long)]
    min_risk: Option<Risk>,
    /// Only at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only at or before this time (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
}

impl Filters {
    fn query(&self) -> Query {
        Query {
            event_type: self.event_type.clone(),
            actor: self.actor.clone(),
            session: self.session.clone(),
            resource: self.resource.clone(),
            outcome: self.outcome,
            min_risk: self.min_risk,
            since: self.since,
            until: self.until,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check every hash, link and sequence number; exit 1 naming the first failure.
    Verify {
        #[command(flatten)]
        trail: Trail,
        /// Fail unless every record is from this service (catches a trail
        /// replaced by another service's written under the same key).
        #[arg(long)]
        expect_service: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print matching records (a table, or JSON lines for a SIEM with --json).
    Query {
        #[command(flatten)]
        trail: Trail,
        #[command(flatten)]
        filters: Filters,
        /// Only the newest N matches.
        #[arg(long)]
        limit: Option<usize>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Totals by event type, actor, outcome, risk and day.
    Stats {
        #[command(flatten)]
        trail: Trail,
        #[command(flatten)]
        filters: Filters,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compliance reports computed from the trail's files.
    Report {
        #[command(flatten)]
        trail: Trail,
        /// Policies from a TOML or JSON file.
        #[arg(long, required_unless_present = "defaults")]
        policies: Option<PathBuf>,
        /// The three default policies (added to --policies if both are given).
        #[arg(long)]
        defaults: bool,
        /// Only this policy.
        #[arg(long)]
        policy: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The newest records; with -f, keep printing new ones.
    Tail {
        #[command(flatten)]
        trail: Trail,
        /// How many to show first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
        /// Follow new records (across rotation) until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tracing-audit: {e}");
            ExitCode::from(2)
        }
    }
}

type Res = Result<ExitCode, Box<dyn std::error::Error>>;

fn run(cli: Cli) -> Res {
    match cli.cmd {
        Cmd::Verify {
            trail,
            expect_service,
            json,
        } => verify(&trail, expect_service, json),
        Cmd::Query {
            trail,
            filters,
            limit,
            json,
        } => query(&trail, &filters, limit, json),
        Cmd::Stats {
            trail,
            filters,
            json,
        } => stats(&trail, &filters, json),
        Cmd::Tail {
            trail,
            lines,
            follow,
            json,
        } => tail(&trail, lines, follow, json),
        Cmd::Report {
            trail,
            policies,
            defaults,
            policy,
            json,
        } => report(
            &trail,
            policies.as_deref(),
            defaults,
            policy.as_deref(),
            json,
        ),
    }
}

fn verify(trail: &Trail, expect_service: Option<String>, json: bool) -> Res {
    if !trail.dir.is_dir() {
        return Err(format!("{} is not a directory", trail.dir.display()).into());
    }
    let key = trail.key()?;
    let mut opts = tracing_audit::VerifyOptions::default();
    if let Some(s) = expect_service {
        opts = opts.expect_service(s);
    }
    let report = tracing_audit::verify_opts(&trail.sink(), key.as_deref(), &opts)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for n in &report.notes {
            println!("note: {n}");
        }
        match &report.failure {
            None => println!(
                "OK: {} records in {} files, seq {}..{}, {} .. {} ({})",
                report.records,
                report.files,
                report.first_seq.map_or("-".into(), |s| s.to_string()),
                report.last_seq.map_or("-".into(), |s| s.to_string()),
                report.first_time.as_deref().unwrap_or("-"),
                report.last_time.as_deref().unwrap_or("-"),
                report.algorithm,
            ),
            Some(f) => println!(
                "FAILED: {}:{}: {:?}{}: {}",
                f.file.display(),
                f.line,
                f.kind,
                if f.kind.is_tampering() {
                    ""
                } else {
                    " (not tampering)"
                },
                f.detail
            ),
        }
    }
    Ok(match &report.failure {
        None => ExitCode::SUCCESS,
        Some(f) if !f.kind.is_tampering() && f.kind != tracing_audit::FailureKind::TornTail => {
            ExitCode::from(2)
        }
        Some(_) => ExitCode::from(1),
    })
}

fn query(trail: &Trail, filters: &Filters, limit: Option<usize>, json: bool) -> Res {
    let t = trail.open()?;
    let q = filters.query();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut table = Table::new(json);
    match limit {
        Some(n) => {
            let (records, errors) = t.recent(n, &q);
            for e in errors {
                eprintln!("warning: {e}");
            }
            for r in &records {
                table.row(&mut out, r)?;
            }
        }
        None => {
            for r in t.query(&q) {
                match r {
                    Ok(r) => table.row(&mut out, &r)?,
                    Err(e) => eprintln!("warning: {e}"),
                }
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn stats(trail: &Trail, filters: &Filters, json: bool) -> Res {
    let t = trail.open()?;
    let s = t.stats(&filters.query());
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("records: {}  (unreadable lines: {})", s.total, s.unreadable);
    if let (Some(a), Some(b)) = (s.first, s.last) {
        println!("from {a} to {b}");
    }
    let section = |title: &str, rows: Vec<(&str, u64)>| {
        println!("\n{title}:");
        for (k, n) in rows {
            println!("  {n:>10}  {k}");
        }
    };
    section("by event type", sorted(&s.by_event_type));
    section("by actor (top 20)", s.top_actors(20));
    section("by outcome", sorted(&s.by_outcome));
    section("by risk", sorted(&s.by_risk));
    section(
        "by day",
        s.by_day.iter().map(|(k, n)| (k.as_str(), *n)).collect(),
    );
    Ok(ExitCode::SUCCESS)
}

fn report(
    trail: &Trail,
    file: Option<&std::path::Path>,
    defaults: bool,
    only: Option<&str>,
    json: bool,
) -> Res {
    let mut policies = if defaults {
        Policy::defaults()
    } else {
        Vec::new()
    };
    if let Some(f) = file {
        policies.extend(Policy::load(f)?);
    }
    let t = trail.open()?;
    let (compliance, unreadable) = Compliance::from_trail(&t, policies);
    if unreadable > 0 {
        eprintln!("warning: {unreadable} unreadable lines skipped (run `tracing-audit verify`)");
    }
    let reports = match only {
        Some(name) => vec![compliance.report(name)?],
        None => compliance.reports(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(ExitCode::SUCCESS);
    }
    for r in &reports {
        println!("{} ({}): {:?}", r.policy_name, r.policy, r.status);
        println!("  {}", r.description);
        println!(
            "  events within {:.0} days: {}",
            r.retention_days, r.total_events
        );
        for (kind, n) in &r.events_by_type {
            println!("    {n:>8}  {kind}");
        }
        for v in &r.violations {
            println!("  violation: {v}");
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

/// Rows of a count map, most frequent first.
fn sorted(m: &std::collections::BTreeMap<String, u64>) -> Vec<(&str, u64)> {
    let mut v: Vec<(&str, u64)> = m.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v
}

fn tail(trail: &Trail, lines: usize, follow: bool, json: bool) -> Res {
    let sink = trail.sink();
    let mut follower = if follow {
        Some(Follower::from_end_keyed(
            sink.clone(),
            trail.key()?.as_deref(),
        )?)
    } else {
        None
    };
    let t = trail.open()?;
    let (records, _) = t.recent(lines, &Query::default());
    let mut table = Table::new(json);
    let mut out = std::io::stdout().lock();
    for r in &records {
        table.row(&mut out, r)?;
    }
    out.flush()?;
    let Some(f) = follower.as_mut() else {
        return Ok(ExitCode::SUCCESS);
    };
    loop {
        for r in f.poll()? {
            match r {
                Ok(r) => table.row(&mut out, &r)?,
                Err(e) => eprintln!("warning: unreadable line: {e}"),
            }
        }
        out.flush()?;
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Prints records as an aligned table or as JSON lines.
struct Table {
    json: bool,
    header_done: bool,
}

impl Table {
    fn new(json: bool) -> Self {
        Table {
            json,
            header_done: false,
        }
    }

    fn row(&mut self, out: &mut impl Write, r: &AuditRecord) -> std::io::Result<()> {
        if self.json {
            let line = serde_json::to_string(r).map_err(std::io::Error::other)?;
            return writeln!(out, "{line}");
        }
        if !self.header_done {
            writeln!(
                out,
                "{:>8}  {:<27}  {:<24}  {:<20}  {:<24}  {:<7}  {:<8}",
                "SEQ", "TIMESTAMP", "EVENT", "ACTOR", "RESOURCE", "OUTCOME", "RISK"
            )?;
            self.header_done = true;
        }
        let cell = |s: &Option<String>, w: usize| {
            let s = s.as_deref().unwrap_or("-");
            if s.chars().count() > w {
                format!("{}…", s.chars().take(w - 1).collect::<String>())
            } else {
                s.to_owned()
            }
        };
        writeln!(
            out,
            "{:>8}  {:<27}  {:<24}  {:<20}  {:<24}  {:<7}  {:<8}",
            r.seq,
            r.timestamp.format("%Y-%m-%dT%H:%M:%S%.6fZ"),
            cell(&r.event_type, 24),
            cell(&r.actor, 20),
            cell(&r.resource, 24),
            r.outcome.as_str(),
            r.risk_level.as_str()
        )
    }
}
