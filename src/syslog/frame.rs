//! Building syslog messages from sealed audit lines: RFC 5424 (with the
//! record's key fields as structured data and the JSON record, BOM first,
//! as MSG) and RFC 3164 for legacy relays.
//!
//! Written by hand because it is this crate's job: header fields are cut to
//! their RFC 5424 lengths and printable ASCII, PARAM-VALUEs are escaped
//! (`"` `\` `]`) and cleared of control characters so no framing (octet
//! counting or LF) can be broken by a value.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Deserialize;

use crate::encode;
use crate::fields::Risk;

/// Syslog facility (RFC 5424 §6.2.1).
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
pub fn severity(risk: Risk) -> u8 {
    match risk {
        Risk::Low => 6,
        Risk::Medium => 5,
        Risk::High => 4,
        Risk::Critical => 2,
    }
}

/// The fields of a sealed line that the header and SD need.
#[derive(Deserialize, Debug)]
pub(crate) struct Keys {
    audit_id: String,
    seq: u64,
    timestamp: String,
    event_type: Option<String>,
    actor: Option<String>,
    resource: Option<String>,
    action: Option<String>,
    outcome: String,
    risk_level: Risk,
    session_id: Option<String>,
    ip_address: Option<String>,
}

impl Keys {
    pub(crate) fn parse(line: &[u8]) -> Option<Keys> {
        serde_json::from_slice(line).ok()
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
    let mut cut = v.len().min(max);
    while !v.is_char_boundary(cut) {
        cut -= 1;
    }
    for c in v[..cut].chars() {
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
        keys: Option<&Keys>,
        max: Option<usize>,
    ) -> (Vec<u8>, bool) {
        match self.format {
            Format::Rfc5424 => self.build_5424(line, keys, max),
            Format::Rfc3164 => self.build_3164(line, keys, max),
        }
    }

    fn build_5424(&self, line: &[u8], keys: Option<&Keys>, max: Option<usize>) -> (Vec<u8>, bool) {
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
        self.push_sd(&mut out, keys, 256);
        if let Some(max) = max {
            // Keep the structured data within the cap by shortening values.
            if out.len() + 3 > max {
                out.truncate(sd_start);
                self.push_sd(&mut out, keys, 24);
            }
        }
        out.extend_from_slice(b" \xEF\xBB\xBF");
        let room = max.map_or(usize::MAX, |m| m.saturating_sub(out.len()));
        let cut = fit(line, room);
        out.extend_from_slice(&line[..cut]);
        (out, cut < line.len())
    }

    fn push_sd(&self, out: &mut Vec<u8>, keys: Option<&Keys>, value_max: usize) {
        let Some(k) = keys else {
            out.push(b'-');
            return;
        };
        out.push(b'[');
        out.extend_from_slice(sd_name(&self.sd_id).as_bytes());
        let seq = k.seq.to_string();
        let params: [(&str, Option<&str>); 10] = [
            ("event", k.event_type.as_deref()),
            ("actor", k.actor.as_deref()),
            ("resource", k.resource.as_deref()),
            ("action", k.action.as_deref()),
            ("outcome", Some(&k.outcome)),
            ("risk", Some(k.risk_level.as_str())),
            ("session", k.session_id.as_deref()),
            ("ip", k.ip_address.as_deref()),
            ("seq", Some(&seq)),
            ("id", Some(&k.audit_id)),
        ];
        for (name, v) in params {
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

    fn build_3164(&self, line: &[u8], keys: Option<&Keys>, max: Option<usize>) -> (Vec<u8>, bool) {
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

    const LINE: &str = r#"{"schema":1,"audit_id":"0190c0de-0000-7000-8000-000000000000","seq":7,"timestamp":"2026-11-22T10:00:00.000001Z","event_type":"auth_failure","actor":"a\"]\\b","resource":"/login","action":null,"outcome":"failure","risk_level":"high","session_id":null,"ip_address":"10.0.0.1","message":"x"}"#;

    #[test]
    fn rfc5424_parses_with_escaped_sd() {
        let keys = Keys::parse(LINE.as_bytes()).unwrap();
        let (msg, cut) = header(Format::Rfc5424).build(LINE.as_bytes(), Some(&keys), None);
        assert!(!cut);
        let text = String::from_utf8(msg).unwrap();
        assert!(text.starts_with("<188>1 2026-11-22T10:00:00.000001Z host_name_ billing-api 42 auth_failure [audit@32473 "), "{text}");
        let parsed = syslog_rfc5424::parse_message(&text).unwrap();
        assert_eq!(parsed.msgid.as_deref(), Some("auth_failure"));
        let sd = parsed.sd.find_tuple("audit@32473", "actor").unwrap();
        assert_eq!(sd, "a\"]\\b");
        assert_eq!(parsed.msg.trim_start_matches('\u{feff}'), LINE);
    }

    #[test]
    fn udp_cap_cuts_msg_keeps_sd() {
        let keys = Keys::parse(LINE.as_bytes()).unwrap();
        let (msg, cut) = header(Format::Rfc5424).build(LINE.as_bytes(), Some(&keys), Some(300));
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
    fn rfc3164_shape() {
        let keys = Keys::parse(LINE.as_bytes()).unwrap();
        let (msg, _) = header(Format::Rfc3164).build(LINE.as_bytes(), Some(&keys), None);
        let text = String::from_utf8(msg).unwrap();
        assert!(
            text.starts_with("<188>Nov 22 10:00:00 host_name_ billingapi[42]: {"),
            "{text}"
        );
    }
}
