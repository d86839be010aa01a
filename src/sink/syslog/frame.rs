//! Building syslog messages from sealed audit lines: RFC 5424 (with the
//! record's key fields as structured data and the JSON record, BOM first,
//! as MSG) and RFC 3164 for legacy relays.
//!
//! Written by hand because it is this crate's job: header fields are cut to
//! their RFC 5424 lengths and printable ASCII, PARAM-VALUEs are escaped
//! (`"` `\` `]`) and cleared of control characters so no framing (octet
//! counting or LF) can be broken by a value.

use std::borrow::Cow;

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::record::encode;
use crate::record::fields::Risk;
use crate::record::layout::Key;
use crate::record::AuditRecord;
use crate::sink::SealedLine;

/// Syslog facility (RFC 5424 §6.2.1).
///
/// ```
/// use tracing_audit::{syslog::Facility, SyslogSink};
/// let sink = SyslogSink::udp("127.0.0.1:514").facility(Facility::Auth);
/// # let _ = sink;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Facility {
    Kern = 0,
    User = 1,
    Mail = 2,
    Daemon = 3,
    Auth = 4,
    Syslog = 5,
    Lpr = 6,
    News = 7,
    Uucp = 8,
    Cron = 9,
    AuthPriv = 10,
    Ftp = 11,
    Local0 = 16,
    Local1 = 17,
    Local2 = 18,
    Local3 = 19,
    Local4 = 20,
    Local5 = 21,
    Local6 = 22,
    Local7 = 23,
}

/// Which syslog message format to send.
///
/// ```
/// use tracing_audit::{syslog::Format, SyslogSink};
/// let sink = SyslogSink::udp("127.0.0.1:514").format(Format::Rfc3164);
/// # let _ = sink;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// RFC 5424 with structured data (default).
    #[default]
    Rfc5424,
    /// The BSD format of RFC 3164, for relays that know nothing newer.
    Rfc3164,
}

/// The severity a record is sent with.
///
/// | risk | severity |
/// |---|---|
/// | low | 6 informational |
/// | medium | 5 notice |
/// | high | 4 warning |
/// | critical | 2 critical |
///
/// ```
/// use tracing_audit::{syslog::severity, Risk};
/// assert_eq!(severity(Risk::Critical), 2);
/// assert_eq!(severity(Risk::Low), 6);
/// ```
pub fn severity(risk: Risk) -> u8 {
    match risk {
        Risk::Low => 6,
        Risk::Medium => 5,
        Risk::High => 4,
        Risk::Critical => 2,
    }
}

/// The fields of a sealed line that the header and SD need, read from
/// where the line's layout says they are (no JSON parsing).
#[derive(Debug)]
pub(crate) struct SdFields<'a> {
    audit_id: &'a str,
    chain_id: Option<&'a str>,
    seq: u64,
    timestamp: Cow<'a, str>,
    event_type: Option<Cow<'a, str>>,
    actor: Option<Cow<'a, str>>,
    resource: Option<Cow<'a, str>>,
    action: Option<Cow<'a, str>>,
    outcome: &'static str,
    risk_level: Risk,
    session_id: Option<Cow<'a, str>>,
    ip_address: Option<Cow<'a, str>>,
}

impl<'a> SdFields<'a> {
    pub(crate) fn from_line(line: &SealedLine<'a>) -> SdFields<'a> {
        SdFields {
            audit_id: line.audit_id(),
            chain_id: line.chain_id(),
            seq: line.seq,
            timestamp: line.get(Key::Timestamp).unwrap_or(Cow::Borrowed("-")),
            event_type: line.get(Key::EventType),
            actor: line.get(Key::Actor),
            resource: line.get(Key::Resource),
            action: line.get(Key::Action),
            outcome: line.keys.outcome.as_str(),
            risk_level: line.keys.risk,
            session_id: line.get(Key::Session),
            ip_address: line.get(Key::Ip),
        }
    }

    /// The same fields from a parsed record (a line read back from the
    /// trail), the timestamp written as the line has it.
    pub(crate) fn from_record(r: &'a AuditRecord) -> SdFields<'a> {
        let opt = |v: &'a Option<String>| v.as_deref().map(Cow::Borrowed);
        SdFields {
            audit_id: &r.audit_id,
            chain_id: r.chain_id.as_deref(),
            seq: r.seq,
            timestamp: Cow::Owned(r.timestamp.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()),
            event_type: opt(&r.event_type),
            actor: opt(&r.actor),
            resource: opt(&r.resource),
            action: opt(&r.action),
            outcome: r.outcome.as_str(),
            risk_level: r.risk_level,
            session_id: opt(&r.session_id),
            ip_address: opt(&r.ip_address),
        }
    }
}

/// Per-sink constants for building frames.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub(crate) facility: Facility,
    pub(crate) format: Format,
    pub(crate) hostname: String,
    pub(crate) app_name: String,
    pub(crate) procid: String,
    pub(crate) sd_id: String,
}

/// Keeps printable US-ASCII (33..=126), cut to `max`; `-` when empty.
pub(crate) fn header_field(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .map(|c| if ('!'..='~').contains(&c) { c } else { '_' })
        .take(max)
        .collect();
    if out.is_empty() {
        "-".into()
    } else {
        out
    }
}

/// An SD-NAME (SD-ID or PARAM-NAME): printable ASCII except `=`, space, `]`, `"`; ≤ 32.
pub(crate) fn sd_name(s: &str) -> String {
    let out: String = s
        .chars()
        .filter(|c| ('!'..='~').contains(c) && !matches!(c, '=' | ']' | '"'))
        .take(32)
        .collect();
    if out.is_empty() {
        "audit".into()
    } else {
        out
    }
}

fn push_param_value(out: &mut Vec<u8>, v: &str, max: usize) {
    for c in crate::record::encode::cut_str(v, max).chars() {
        match c {
            '"' | '\\' | ']' => {
                out.push(b'\\');
                out.push(c as u8);
            }
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                out.extend_from_slice("\u{FFFD}".as_bytes())
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
}

impl Header {
    fn pri(&self, risk: Risk) -> u8 {
        (self.facility as u8) * 8 + severity(risk)
    }

    /// Builds one message (no transport framing). `line` is the sealed line
    /// without `\n`; `max` caps the message length (UDP), cutting MSG at a
    /// character boundary while keeping the header and structured data.
    /// Returns the message and whether it was cut.
    pub(crate) fn build(
        &self,
        line: &[u8],
        keys: Option<&SdFields<'_>>,
        max: Option<usize>,
    ) -> (Vec<u8>, bool) {
        match self.format {
            Format::Rfc5424 => self.build_5424(line, keys, max),
            Format::Rfc3164 => self.build_3164(line, keys, max),
        }
    }

    fn build_5424(
        &self,
        line: &[u8],
        keys: Option<&SdFields<'_>>,
        max: Option<usize>,
    ) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(line.len() + 400);
        let risk = keys.map_or(Risk::Medium, |k| k.risk_level);
        out.push(b'<');
        encode::write_u64(&mut out, self.pri(risk) as u64);
        out.extend_from_slice(b">1 ");
        match keys {
            Some(k) => out.extend_from_slice(header_field(&k.timestamp, 32).as_bytes()),
            None => out.push(b'-'),
        }
        for (v, n) in [
            (&self.hostname, 255),
            (&self.app_name, 48),
            (&self.procid, 128),
        ] {
            out.push(b' ');
            out.extend_from_slice(header_field(v, n).as_bytes());
        }
        out.push(b' ');
        let msgid = keys.and_then(|k| k.event_type.as_deref()).unwrap_or("-");
        out.extend_from_slice(header_field(msgid, 32).as_bytes());
        out.push(b' ');
        let sd_start = out.len();
        self.push_sd(&mut out, keys, 256, false);
        if let Some(max) = max {
            // Within the cap: shorter values, then only the key params, then
            // no structured data at all; MSG gets what room is left.
            for (value_max, key_only, none) in
                [(24, false, false), (24, true, false), (0, false, true)]
            {
                if out.len() + 3 <= max {
                    break;
                }
                out.truncate(sd_start);
                self.push_sd(
                    &mut out,
                    if none { None } else { keys },
                    value_max,
                    key_only,
                );
            }
        }
        out.extend_from_slice(b" \xEF\xBB\xBF");
        let room = max.map_or(usize::MAX, |m| m.saturating_sub(out.len()));
        let cut = fit(line, room);
        out.extend_from_slice(&line[..cut]);
        if let Some(m) = max {
            // A header longer than the cap (an absurd host name): never send
            // an oversize datagram.
            let end = fit(&out, m);
            out.truncate(end);
        }
        (out, cut < line.len())
    }

    /// Writes the SD element; `value_max` caps each value (bytes of input),
    /// `key_only` keeps just `event`, `seq` and `id`. `None` keys: `-`.
    fn push_sd(
        &self,
        out: &mut Vec<u8>,
        keys: Option<&SdFields<'_>>,
        value_max: usize,
        key_only: bool,
    ) {
        let Some(k) = keys else {
            out.push(b'-');
            return;
        };
        out.push(b'[');
        out.extend_from_slice(sd_name(&self.sd_id).as_bytes());
        let seq = k.seq.to_string();
        let params: [(&str, Option<&str>); 11] = [
            ("event", k.event_type.as_deref()),
            ("actor", k.actor.as_deref()),
            ("resource", k.resource.as_deref()),
            ("action", k.action.as_deref()),
            ("outcome", Some(k.outcome)),
            ("risk", Some(k.risk_level.as_str())),
            ("session", k.session_id.as_deref()),
            ("ip", k.ip_address.as_deref()),
            ("seq", Some(&seq)),
            ("id", Some(k.audit_id)),
            ("chain", k.chain_id),
        ];
        for (name, v) in params {
            if key_only && !matches!(name, "event" | "seq" | "id" | "chain") {
                continue;
            }
            if let Some(v) = v {
                out.push(b' ');
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"=\"");
                push_param_value(out, v, value_max);
                out.push(b'"');
            }
        }
        out.push(b']');
    }

    fn build_3164(
        &self,
        line: &[u8],
        keys: Option<&SdFields<'_>>,
        max: Option<usize>,
    ) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(line.len() + 100);
        let risk = keys.map_or(Risk::Medium, |k| k.risk_level);
        out.push(b'<');
        encode::write_u64(&mut out, self.pri(risk) as u64);
        out.push(b'>');
        let ts = keys
            .and_then(|k| DateTime::parse_from_rfc3339(&k.timestamp).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(Utc::now);
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let stamp = format!(
            "{} {:>2} {:02}:{:02}:{:02} ",
            MONTHS[ts.month0() as usize],
            ts.day(),
            ts.hour(),
            ts.minute(),
            ts.second()
        );
        out.extend_from_slice(stamp.as_bytes());
        out.extend_from_slice(header_field(&self.hostname, 255).as_bytes());
        out.push(b' ');
        let tag: String = self
            .app_name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(32)
            .collect();
        out.extend_from_slice(if tag.is_empty() {
            b"audit"
        } else {
            tag.as_bytes()
        });
        out.push(b'[');
        out.extend_from_slice(header_field(&self.procid, 16).as_bytes());
        out.extend_from_slice(b"]: ");
        let room = max.map_or(usize::MAX, |m| m.saturating_sub(out.len()));
        let cut = fit(line, room);
        out.extend_from_slice(&line[..cut]);
        (out, cut < line.len())
    }
}

/// The longest prefix of `s` within `room` bytes that ends on a UTF-8 boundary.
fn fit(s: &[u8], room: usize) -> usize {
    if s.len() <= room {
        return s.len();
    }
    let mut cut = room;
    while cut > 0 && (s[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::layout::OwnedLine;

    fn header(format: Format) -> Header {
        Header {
            facility: Facility::Local7,
            format,
            hostname: "host name\n".into(),
            app_name: "billing-api".into(),
            procid: "42".into(),
            sd_id: "audit@32473".into(),
        }
    }

    /// A line sealed the way the pipeline seals one: the body encoded by
    /// `encode_body` (which locates the key fields), then chained.
    fn sealed(
        event: &str,
        actor: &str,
        resource: &str,
        session: Option<&str>,
        seq: u64,
    ) -> OwnedLine {
        use crate::record::chain::{Chain, Hasher};
        use crate::record::draft::Draft;
        use crate::record::fields::ContextField as F;
        let mut d = Draft::new(usize::MAX);
        d.set_event_type(event);
        d.set_context_if_absent(F::Actor, actor);
        d.set_context_if_absent(F::Resource, resource);
        d.set_context_if_absent(F::Ip, "10.0.0.1");
        d.set_context_if_absent(F::Outcome, "failure");
        d.set_context_if_absent(F::Risk, "high");
        if let Some(s) = session {
            d.set_context_if_absent(F::Session, s);
        }
        d.set_message("x");
        let at: DateTime<Utc> = "2026-11-22T10:00:00.000001Z".parse().unwrap();
        let mut body = Vec::new();
        let keys = crate::record::encode_body(
            &mut body,
            &mut d,
            at.into(),
            &crate::record::RecordConstants::new(None, None, None, None),
            crate::record::Source {
                target: "t",
                level: &tracing_core::Level::WARN,
                spans: &[],
            },
            usize::MAX,
        );
        let mut chain = match seq.checked_sub(1) {
            Some(last) => Chain::resume(
                Hasher::Plain,
                &uuid::Uuid::nil(),
                last,
                crate::record::GENESIS,
            ),
            None => Chain::new(Hasher::Plain, &uuid::Uuid::nil()),
        };
        let mut bytes = Vec::new();
        let id = uuid::Uuid::parse_str("0190c0de-0000-7000-8000-000000000000").unwrap();
        let s = chain.seal(&mut bytes, &id, &body, None);
        bytes.pop(); // the newline
        OwnedLine {
            bytes,
            seq: s.seq,
            body_at: s.body_at,
            keys,
        }
    }

    fn line() -> OwnedLine {
        sealed("auth_failure", "a\"]\\b", "/login", None, 7)
    }

    #[test]
    fn rfc5424_parses_with_escaped_sd() {
        let line = line();
        let keys = SdFields::from_line(&line.as_line());
        let (msg, cut) = header(Format::Rfc5424).build(&line.bytes, Some(&keys), None);
        assert!(!cut);
        let text = String::from_utf8(msg).unwrap();
        assert!(text.starts_with("<188>1 2026-11-22T10:00:00.000001Z host_name_ billing-api 42 auth_failure [audit@32473 "), "{text}");
        let parsed = syslog_rfc5424::parse_message(&text).unwrap();
        assert_eq!(parsed.msgid.as_deref(), Some("auth_failure"));
        let sd = parsed.sd.find_tuple("audit@32473", "actor").unwrap();
        assert_eq!(sd, "a\"]\\b");
        assert_eq!(
            parsed.msg.trim_start_matches('\u{feff}').as_bytes(),
            &line.bytes[..]
        );
        for (name, want) in [
            ("resource", "/login"),
            ("outcome", "failure"),
            ("risk", "high"),
            ("ip", "10.0.0.1"),
            ("seq", "7"),
            ("id", "0190c0de-0000-7000-8000-000000000000"),
            ("chain", "00000000-0000-0000-0000-000000000000"),
        ] {
            assert_eq!(
                parsed
                    .sd
                    .find_tuple("audit@32473", name)
                    .map(String::as_str),
                Some(want),
                "{name}"
            );
        }
        assert_eq!(parsed.sd.find_tuple("audit@32473", "session"), None);
    }

    #[test]
    fn udp_cap_cuts_msg_keeps_sd() {
        let line = line();
        let keys = SdFields::from_line(&line.as_line());
        let (msg, cut) = header(Format::Rfc5424).build(&line.bytes, Some(&keys), Some(300));
        assert!(cut && msg.len() <= 300);
        let text = String::from_utf8(msg).unwrap();
        let parsed = syslog_rfc5424::parse_message(&text).unwrap();
        assert_eq!(
            parsed
                .sd
                .find_tuple("audit@32473", "seq")
                .map(|s| s.as_str()),
            Some("7")
        );
    }

    #[test]
    fn random_hostile_values_always_parse_and_round_trip() {
        let alphabet: Vec<char> = "ab ]\"\\=\n\r\t\u{0}\u{1b}é日\u{2028}\u{85}[@-_.:/"
            .chars()
            .collect();
        fn rnd(x: &mut u64) -> u64 {
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            *x
        }
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..2000 {
            let field = |x: &mut u64, max: u64| -> String {
                let n = rnd(x) % max;
                (0..n)
                    .map(|_| alphabet[(rnd(x) % alphabet.len() as u64) as usize])
                    .collect()
            };
            let (event, actor, resource) =
                (field(&mut x, 40), field(&mut x, 300), field(&mut x, 80));
            let session = field(&mut x, 20);
            let seq = rnd(&mut x) % 1000;
            let sealed = sealed(&event, &actor, &resource, Some(&session), seq);
            let line = &sealed.bytes;
            let keys = SdFields::from_line(&sealed.as_line());
            for max in [None, Some(2048), Some(600)] {
                let (msg, _) = header(Format::Rfc5424).build(line, Some(&keys), max);
                if let Some(m) = max {
                    assert!(msg.len() <= m, "{} > {m}", msg.len());
                }
                let text = String::from_utf8(msg).expect("frame is UTF-8");
                assert!(
                    !text.contains('\n') && !text.contains('\r'),
                    "raw line break in {text:?}"
                );
                let parsed = syslog_rfc5424::parse_message(&text)
                    .unwrap_or_else(|e| panic!("{e:?}: {text:?}"));
                let sd_actor = parsed
                    .sd
                    .find_tuple("audit@32473", "actor")
                    .map(String::as_str)
                    .unwrap_or("");
                if max.is_none() {
                    // Cut at 256 bytes of the value, then controls replaced.
                    let cleaned: String = crate::record::encode::cut_str(&actor, 256)
                        .chars()
                        .map(|c| {
                            if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
                                '\u{FFFD}'
                            } else {
                                c
                            }
                        })
                        .collect();
                    assert_eq!(sd_actor, cleaned);
                }
            }
        }
    }

    #[test]
    fn rfc3164_shape() {
        let line = line();
        let keys = SdFields::from_line(&line.as_line());
        let (msg, _) = header(Format::Rfc3164).build(&line.bytes, Some(&keys), None);
        let text = String::from_utf8(msg).unwrap();
        assert!(
            text.starts_with("<188>Nov 22 10:00:00 host_name_ billingapi[42]: {"),
            "{text}"
        );
    }
}
