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
use tracing_audit::{trail::AuditTrail, trail::Follower, trail::Query, FileSink, Policy};

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
    #[command(flatten)]
    naming: Naming,
}

/// How a trail's files are named and keyed.
#[derive(Args, Debug, Clone)]
struct Naming {
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

impl Naming {
    fn key(&self) -> Result<Option<Vec<u8>>, Box<dyn std::error::Error>> {
        Ok(match &self.key_env {
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.is_empty() => Some(k.into_bytes()),
                _ => return Err(format!("environment variable {var} is unset or empty").into()),
            },
            None => None,
        })
    }
}

impl Trail {
    fn sink(&self) -> FileSink {
        FileSink::new(&self.dir)
            .prefix(self.naming.prefix.clone())
            .suffix(self.naming.suffix.clone())
    }

    fn key(&self) -> Result<Option<Vec<u8>>, Box<dyn std::error::Error>> {
        self.naming.key()
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

/// The one time format of every human output: RFC 3339, microseconds, Z.
fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// `1 record`, `2 records`.
fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check every hash, link and sequence number; exit 1 naming the first failure.
    /// With --collected, check a central store's copy instead (many chains,
    /// any order, duplicates): exit 0 only if every chain is intact and gap-free.
    Verify {
        /// The audit directory (not with --collected).
        #[arg(required_unless_present = "collected")]
        dir: Option<PathBuf>,
        #[command(flatten)]
        naming: Naming,
        /// Records exported from a central store (`-` for standard input):
        /// one record per line, anything before its first `{` ignored.
        #[arg(long, num_args = 1.., value_name = "FILE", conflicts_with = "dir")]
        collected: Vec<PathBuf>,
        /// With --collected: the local trail to compare with (which of its
        /// records the central copy lacks).
        #[arg(long, value_name = "DIR", requires = "collected")]
        against: Option<PathBuf>,
        /// With --collected: how far out of order a record may arrive, in
        /// records of its chain.
        #[arg(long, default_value_t = tracing_audit::trail::DEFAULT_WINDOW)]
        window: usize,
        /// Check every signed checkpoint against this public key (as
        /// `keygen` writes it; repeat for every key the trail was signed
        /// with), and report the records after the last one.
        #[arg(long, value_name = "FILE")]
        pubkey: Vec<PathBuf>,
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
        filters: Query,
        /// Only the newest N matches.
        #[arg(long)]
        limit: Option<usize>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        /// JSON lines mapped to a SIEM schema: `ecs` (Elastic Common
        /// Schema) or `ocsf`; each names its record (id, seq, hash).
        #[arg(long, value_name = "SCHEMA", conflicts_with = "json")]
        format: Option<tracing_audit::record::mapping::Schema>,
    },
    /// Totals by event type, actor, outcome, risk and day.
    Stats {
        #[command(flatten)]
        trail: Trail,
        #[command(flatten)]
        filters: Query,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compliance reports computed from the trail's files.
    Report {
        #[command(flatten)]
        trail: Trail,
        /// Policies from a TOML or JSON file.
        #[arg(long)]
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
    /// Write a checkpoint signing key pair: PREFIX.key (PKCS#8 PEM, mode
    /// 0600, for `signing_key_file`) and PREFIX.pub (for `verify --pubkey`).
    Keygen {
        /// Path prefix of the two files (neither may exist).
        prefix: PathBuf,
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
    // Like other Unix tools, end quietly when the reader of our output goes
    // away (`stats | head -1`), instead of panicking on a write error.
    // SAFETY: restoring the default disposition of a signal at start-up.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
            dir,
            naming,
            collected,
            against,
            window,
            pubkey,
            expect_service,
            json,
        } => match dir {
            Some(dir) => verify(&Trail { dir, naming }, expect_service, &pubkey, json),
            None => verify_collected(&collected, &naming, against, window, &pubkey, json),
        },
        Cmd::Query {
            trail,
            filters,
            limit,
            json,
            format,
        } => query(&trail, &filters, limit, json, format),
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
        Cmd::Keygen { prefix } => {
            let (key, public) = tracing_audit::record::checkpoint::keygen(&prefix)?;
            println!(
                "wrote {} (private, mode 0600: give it to the service, never to verifiers) and {} (public: for verify --pubkey)",
                key.display(),
                public.display()
            );
            Ok(ExitCode::SUCCESS)
        }
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

fn verify(trail: &Trail, expect_service: Option<String>, pubkeys: &[PathBuf], json: bool) -> Res {
    if !trail.dir.is_dir() {
        return Err(format!("{} is not a directory", trail.dir.display()).into());
    }
    let key = trail.key()?;
    let mut opts = tracing_audit::trail::VerifyOptions::default();
    if let Some(s) = expect_service {
        opts = opts.expect_service(s);
    }
    for p in pubkeys {
        opts =
            opts.checkpoint_key(tracing_audit::record::checkpoint::CheckpointPublicKey::read(p)?);
    }
    let report = tracing_audit::trail::verify_opts(&trail.sink(), key.as_deref(), &opts)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for n in &report.notes {
            println!("note: {n}");
        }
        match (report.unverified_tail, report.last_checkpoint_seq) {
            (Some(0), Some(c)) => println!(
                "checkpoints: {} verified; the last, at seq {c}, covers the whole trail",
                report.checkpoints
            ),
            (Some(k), Some(c)) => println!(
                "checkpoints: {} verified, the last at seq {c}; UNVERIFIED TAIL of {} after it (nothing vouches for them: a trail cut or extended there looks the same)",
                report.checkpoints,
                count(k, "record")
            ),
            (Some(k), None) => println!(
                "checkpoints: none verified; UNVERIFIED TAIL of {}",
                count(k, "record")
            ),
            (None, _) if report.checkpoints > 0 => println!(
                "checkpoints: {} present, not checked (give --pubkey)",
                report.checkpoints
            ),
            (None, _) => {}
        }
        match &report.failure {
            None => println!(
                "OK: {} in {}, seq {}..{}, {} .. {} ({}, chain {})",
                count(report.records, "record"),
                count(report.files as u64, "file"),
                report.first_seq.map_or("-".into(), |s| s.to_string()),
                report.last_seq.map_or("-".into(), |s| s.to_string()),
                report.first_time.as_deref().unwrap_or("-"),
                report.last_time.as_deref().unwrap_or("-"),
                report.algorithm,
                report.chain_id.as_deref().unwrap_or("- (schema 1)"),
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
        Some(f)
            if matches!(
                f.kind,
                tracing_audit::trail::FailureKind::KeyRequired
                    | tracing_audit::trail::FailureKind::WrongKey
            ) =>
        {
            ExitCode::from(2)
        }
        Some(_) => ExitCode::from(1),
    })
}

/// `verify --collected`: per chain, its range, gaps, duplicates, conflicts
/// and first mismatch; with `--against`, what the central copy lacks of the
/// local trail.
fn verify_collected(
    files: &[PathBuf],
    naming: &Naming,
    against: Option<PathBuf>,
    window: usize,
    pubkeys: &[PathBuf],
    json: bool,
) -> Res {
    use tracing_audit::trail::{verify_collected, CollectedOptions};
    let key = naming.key()?;
    let mut opts = CollectedOptions::default().window(window);
    for p in pubkeys {
        opts =
            opts.checkpoint_key(tracing_audit::record::checkpoint::CheckpointPublicKey::read(p)?);
    }
    if let Some(k) = &key {
        opts = opts.key(k);
    }
    let report = verify_collected(files, &opts)?;
    let lacking = match &against {
        Some(dir) => {
            let local = Trail {
                dir: dir.clone(),
                naming: naming.clone(),
            };
            let r = tracing_audit::trail::verify_opts(
                &local.sink(),
                key.as_deref(),
                &tracing_audit::trail::VerifyOptions::default(),
            )?;
            Some(lacking_locally(&report, &r))
        }
        None => None,
    };
    let lacks = lacking.as_ref().is_some_and(|l| !l.missing.is_empty());
    if json {
        let out = serde_json::json!({ "report": report, "against": lacking });
        println!("{out}");
    } else {
        print_collected(&report, lacking.as_ref());
    }
    Ok(if report.is_ok() && !lacks {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What the central copy lacks of a local trail.
#[derive(serde::Serialize, Debug)]
struct Lacking {
    chain_id: Option<String>,
    local_first: Option<u64>,
    local_last: Option<u64>,
    /// Inclusive `seq` ranges of the local trail not in the central copy.
    missing: Vec<(u64, u64)>,
}

fn lacking_locally(
    central: &tracing_audit::trail::CollectedReport,
    local: &tracing_audit::trail::VerifyReport,
) -> Lacking {
    let id = local.chain_id.clone().unwrap_or_else(|| "-".to_owned());
    let mut missing = Vec::new();
    if let (Some(lo), Some(hi)) = (local.first_seq, local.last_seq) {
        match central.chains.iter().find(|c| c.chain_id == id) {
            None => missing.push((lo, hi)),
            Some(c) => {
                let (cf, cl) = (c.first_seq.unwrap_or(u64::MAX), c.last_seq.unwrap_or(0));
                if lo < cf {
                    missing.push((lo, cf.saturating_sub(1).min(hi)));
                }
                for &(a, b) in &c.gaps {
                    if b >= lo && a <= hi {
                        missing.push((a.max(lo), b.min(hi)));
                    }
                }
                if hi > cl && cl >= lo {
                    missing.push((cl + 1, hi));
                }
            }
        }
    }
    Lacking {
        chain_id: local.chain_id.clone(),
        local_first: local.first_seq,
        local_last: local.last_seq,
        missing,
    }
}

fn print_collected(r: &tracing_audit::trail::CollectedReport, lacking: Option<&Lacking>) {
    let ranges = |v: &[(u64, u64)]| {
        v.iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "{} read, {}, {} not records",
        count(r.lines, "line"),
        count(r.chains.len() as u64, "chain"),
        r.not_records
    );
    for c in &r.chains {
        println!(
            "{} chain {}: {} seq {}..{}, {} duplicate(s){}",
            if c.is_ok() { "OK    " } else { "FAILED" },
            c.chain_id,
            count(c.records, "record"),
            c.first_seq.map_or("-".into(), |s| s.to_string()),
            c.last_seq.map_or("-".into(), |s| s.to_string()),
            c.duplicates,
            if c.late > 0 {
                format!(", {} late (beyond the window)", c.late)
            } else {
                String::new()
            }
        );
        if !c.gaps.is_empty() {
            println!("  gaps: {}", ranges(&c.gaps));
        }
        for f in &c.conflicts {
            println!(
                "  conflict: {}:{}: seq {}: {}",
                f.at.file.display(),
                f.at.line,
                f.seq,
                f.detail
            );
        }
        if let Some(f) = &c.first_mismatch {
            println!(
                "  mismatch: {}:{}: seq {}: {}",
                f.at.file.display(),
                f.at.line,
                f.seq,
                f.detail
            );
        }
        if let Some(f) = &c.bad_checkpoint {
            println!(
                "  bad checkpoint: {}:{}: {}",
                f.at.file.display(),
                f.at.line,
                f.detail
            );
        }
        match (c.unverified_tail, c.last_checkpoint_seq) {
            (Some(k), Some(s)) => println!(
                "  checkpoints: last verified at seq {s}; unverified tail of {}",
                count(k, "record")
            ),
            (Some(k), None) => println!(
                "  checkpoints: none verified; unverified tail of {}",
                count(k, "record")
            ),
            (None, _) if c.checkpoints > 0 => {
                println!(
                    "  checkpoints: {} present, not checked (give --pubkey)",
                    c.checkpoints
                )
            }
            (None, _) => {}
        }
    }
    if let Some(l) = lacking {
        if l.missing.is_empty() {
            println!("the central copy holds every record of the local trail");
        } else {
            println!(
                "the central copy lacks local records of chain {}: {}",
                l.chain_id.as_deref().unwrap_or("-"),
                ranges(&l.missing)
            );
        }
    }
}

fn query(
    trail: &Trail,
    q: &Query,
    limit: Option<usize>,
    json: bool,
    format: Option<tracing_audit::record::mapping::Schema>,
) -> Res {
    let t = trail.open()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut table = Table::new(json);
    table.schema = format;
    let matching = t
        .sealed()
        .filter(|r| r.as_ref().map_or(true, |s| q.matches(&s.record)));
    let mut shown = 0u64;
    match limit {
        Some(n) => {
            let mut ring = std::collections::VecDeque::with_capacity(n.min(4096));
            for r in matching {
                match r {
                    Ok(s) if n > 0 => {
                        if ring.len() == n {
                            ring.pop_front();
                        }
                        ring.push_back(s);
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("warning: {e}"),
                }
            }
            for s in &ring {
                table.row(&mut out, s)?;
                shown += 1;
            }
        }
        None => {
            for r in matching {
                match r {
                    Ok(s) => {
                        table.row(&mut out, &s)?;
                        shown += 1;
                    }
                    Err(e) => eprintln!("warning: {e}"),
                }
            }
        }
    }
    table.finish(&mut out, shown)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn stats(trail: &Trail, filters: &Query, json: bool) -> Res {
    let t = trail.open()?;
    let s = t.stats(filters);
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("records: {}  (unreadable lines: {})", s.total, s.unreadable);
    if let (Some(a), Some(b)) = (s.first, s.last) {
        println!("from {} to {}", rfc3339(&a), rfc3339(&b));
    }
    let section = |title: &str, rows: Vec<(&str, u64)>| {
        println!("\n{title}:");
        for (k, n) in rows {
            println!("  {n:>10}  {}", printable(k, usize::MAX));
        }
    };
    section("by event type", sorted(&s.by_event_type));
    let mut actors = s.top_actors(20);
    let shown: u64 = actors.iter().map(|(_, n)| n).sum();
    let rest = s.by_actor.values().sum::<u64>() + s.other_actors - shown;
    if rest > 0 {
        actors.push(("(all other actors)", rest));
    }
    section("by actor (top 20)", actors);
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
    if !defaults && file.is_none() {
        return Err("report needs policies: give --defaults (the three default policies), --policies FILE (TOML or JSON), or both".into());
    }
    let mut policies = if defaults {
        Policy::defaults()
    } else {
        Vec::new()
    };
    if let Some(f) = file {
        policies.extend(Policy::load(f)?);
    }
    let t = trail.open()?;
    let (compliance, unreadable) = t.compliance(policies);
    if unreadable > 0 {
        eprintln!("warning: {unreadable} unreadable lines skipped (run `tracing-audit verify`)");
    }
    let reports = match only {
        Some(name) => vec![compliance.report(name)?],
        None => compliance.reports(),
    };
    // Exit 1 when any selected policy has a violation, so CI and cron can
    // gate on it; the JSON carries the same findings.
    let code = if reports
        .iter()
        .any(|r| r.status == tracing_audit::policy::Status::Violation)
    {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(code);
    }
    for r in &reports {
        print_report(r);
    }
    Ok(code)
}

/// One policy's report, for a person.
fn print_report(r: &tracing_audit::policy::ComplianceReport) {
    println!("{} ({}): {:?}", r.policy_name, r.policy, r.status);
    println!("  {}", r.description);
    println!(
        "  events within {} days: {} (counted in buckets of {}s)",
        r.retention_days, r.total_events, r.counts_precision_secs
    );
    match r.group_by {
        Some(by) => println!(
            "  threshold {} within {} per {}",
            r.threshold,
            r.window,
            by.as_str()
        ),
        None => println!("  threshold {} within {}", r.threshold, r.window),
    }
    if r.groups_evicted > 0 {
        println!(
            "  note: {} forgotten to stay within the bound",
            count(r.groups_evicted, "group")
        );
    }
    if r.inexact_events > 0 {
        println!(
            "  note: {} arrived after part of their window was forgotten; their alerts were judged on what was kept",
            count(r.inexact_events, "event")
        );
    }
    for (kind, n) in &r.events_by_type {
        println!("    {n:>8}  {}", printable(kind, usize::MAX));
    }
    for v in &r.violations {
        println!("  violation: {}", printable(v, usize::MAX));
    }
    for c in &r.coverage {
        println!("  coverage: {c}");
    }
    println!();
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
    let mut ring = std::collections::VecDeque::with_capacity(lines.min(4096));
    for s in t.sealed().flatten() {
        if lines == 0 {
            break;
        }
        if ring.len() == lines {
            ring.pop_front();
        }
        ring.push_back(s);
    }
    let mut table = Table::new(json);
    let mut out = std::io::stdout().lock();
    for s in &ring {
        table.row(&mut out, s)?;
    }
    out.flush()?;
    let Some(f) = follower.as_mut() else {
        return Ok(ExitCode::SUCCESS);
    };
    loop {
        for r in f.poll_sealed()? {
            match r {
                Ok(s) => table.row(&mut out, &s)?,
                Err(e) => eprintln!(
                    "warning: unreadable line: {}",
                    printable(&e.to_string(), usize::MAX)
                ),
            }
        }
        out.flush()?;
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Whether `c` must not reach a terminal raw: controls (C0, DEL, C1),
/// bidirectional overrides and isolates, and other invisible format
/// characters that can reorder or hide what an operator reads.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// `s` with every unsafe character shown as a visible escape (`\x1b`,
/// `\u{202e}`), cut to `width` characters with `…`.
fn printable(s: &str, width: usize) -> String {
    let mut out = String::with_capacity(s.len());
    let mut n = 0;
    for c in s.chars() {
        let shown = if unsafe_char(c) {
            if (c as u32) < 0x80 {
                format!("\\x{:02x}", c as u32)
            } else {
                format!("\\u{{{:x}}}", c as u32)
            }
        } else {
            c.to_string()
        };
        let k = shown.chars().count();
        if n + k > width {
            if width > 0 {
                // Make room for the ellipsis.
                while n >= width && out.pop().is_some() {
                    n -= 1;
                }
                out.push('…');
            }
            return out;
        }
        out.push_str(&shown);
        n += k;
    }
    out
}

/// Prints records as an aligned table or, with `--json`, as the exact
/// stored lines (they hash to their own `hash`).
struct Table {
    json: bool,
    header_done: bool,
    /// JSON lines mapped to a SIEM schema instead.
    schema: Option<tracing_audit::record::mapping::Schema>,
}

const COLUMNS: [(&str, usize); 9] = [
    ("SEQ", 8),
    ("TIMESTAMP", 27),
    ("EVENT", 24),
    ("ACTOR", 20),
    ("RESOURCE", 24),
    ("OUTCOME", 7),
    ("RISK", 8),
    ("SESSION", 16),
    ("IP", 15),
];

impl Table {
    fn new(json: bool) -> Self {
        Table {
            json,
            header_done: false,
            schema: None,
        }
    }

    fn line(out: &mut impl Write, cells: &[String]) -> std::io::Result<()> {
        let mut line = String::new();
        for (i, (cell, (_, w))) in cells.iter().zip(COLUMNS).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = w.saturating_sub(cell.chars().count());
            if i == 0 {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        writeln!(out, "{}", line.trim_end())
    }

    fn header(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        if !self.header_done && !self.json {
            let cells: Vec<String> = COLUMNS.iter().map(|(h, _)| h.to_string()).collect();
            Self::line(out, &cells)?;
        }
        self.header_done = true;
        Ok(())
    }

    fn row(
        &mut self,
        out: &mut impl Write,
        s: &tracing_audit::trail::Sealed,
    ) -> std::io::Result<()> {
        if let Some(schema) = self.schema {
            serde_json::to_writer(&mut *out, &s.record.to_schema(schema))?;
            return out.write_all(b"\n");
        }
        if self.json {
            out.write_all(&s.line)?;
            return out.write_all(b"\n");
        }
        self.header(out)?;
        let r = &s.record;
        let cell = |v: &Option<String>, w: usize| printable(v.as_deref().unwrap_or("-"), w);
        let cells = [
            r.seq.to_string(),
            rfc3339(&r.timestamp),
            cell(&r.event_type, COLUMNS[2].1),
            cell(&r.actor, COLUMNS[3].1),
            cell(&r.resource, COLUMNS[4].1),
            r.outcome.as_str().to_owned(),
            r.risk_level.as_str().to_owned(),
            cell(&r.session_id, COLUMNS[7].1),
            cell(&r.ip_address, COLUMNS[8].1),
        ];
        Self::line(out, &cells)
    }

    /// After a query: the header even when nothing matched, and the count.
    fn finish(&mut self, out: &mut impl Write, shown: u64) -> std::io::Result<()> {
        if self.json || self.schema.is_some() {
            return Ok(());
        }
        self.header(out)?;
        writeln!(out, "{}", count(shown, "record"))
    }
}
