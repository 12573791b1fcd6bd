//! `dynoctl sessions` and `dynoctl audit`: rendering the gateway's audit store as text.
//!
//! Reads through [`dynogw::audit::AuditStore`]; writes to any `io::Write`. Event bytes are
//! shown as text with control characters escaped (`\r`, `\x1b`, …), so a replay is readable
//! and unambiguous; the raw bytes stay in the database.

use std::io::Write;

use dynogw::audit::{AuditStore, EventKind, SessionRecord};

use crate::ClientError;

fn out_err(e: std::io::Error) -> ClientError {
    ClientError::Output(e)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for Unix seconds.
pub fn format_utc(unix: f64) -> String {
    let secs = if unix.is_finite() && unix > 0.0 {
        unix.floor() as i64
    } else {
        0
    };
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn duration(s: &SessionRecord) -> String {
    match s.end {
        Some(end) => format!("{:.1}s", (end - s.start).max(0.0)),
        None => "-".into(),
    }
}

/// Writes the sessions table, oldest first.
pub fn write_sessions(store: &AuditStore, out: &mut impl Write) -> Result<(), ClientError> {
    let sessions = store.list_sessions()?;
    let header = [
        "ID",
        "START (UTC)",
        "DURATION",
        "USER",
        "CONNECTION",
        "VERB",
        "STATUS",
        "EXIT",
        "IN",
        "OUT",
        "COMMAND",
    ];
    let rows: Vec<[String; 11]> = sessions
        .iter()
        .map(|s| {
            [
                field(&s.id),
                format_utc(s.start),
                duration(s),
                field(&s.user),
                field(&s.connection),
                field(&s.verb),
                field(&s.status),
                s.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
                s.bytes_in.to_string(),
                s.bytes_out.to_string(),
                field(&s.command),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.zip(widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            if i + 1 == header.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}"));
            }
        }
        text.trim_end().to_owned()
    };
    writeln!(out, "{}", line(&mut header.iter().copied())).map_err(out_err)?;
    for row in &rows {
        writeln!(out, "{}", line(&mut row.iter().map(String::as_str))).map_err(out_err)?;
    }
    if rows.is_empty() {
        writeln!(out, "(no sessions yet)").map_err(out_err)?;
    }
    Ok(())
}

/// Escapes control characters other than newline and tab; invalid UTF-8 bytes become `\xNN`.
pub fn escape(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len());
    for chunk in data.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' | '\t' => out.push(c),
                '\r' => out.push_str("\\r"),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Escapes one field of a table or header line: every control character, newlines and tabs
/// included, so a user's command, name or connection cannot move the cursor, rewrite the
/// terminal title or forge lines of the report.
pub fn field(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Writes one session's header and its events with their times since the start.
pub fn write_audit(store: &AuditStore, id: &str, out: &mut impl Write) -> Result<(), ClientError> {
    let s = store
        .session(id)?
        .ok_or_else(|| ClientError::NoSuchSession(id.to_owned()))?;
    let w = |out: &mut dyn Write, label: &str, value: String| {
        writeln!(out, "{label:<11}{value}").map_err(out_err)
    };
    w(out, "session", field(&s.id))?;
    w(
        out,
        "connection",
        format!(
            "{} ({}) by {}",
            field(&s.connection),
            field(&s.verb),
            field(&s.user)
        ),
    )?;
    w(out, "command", field(&s.command))?;
    w(out, "start", format!("{} UTC", format_utc(s.start)))?;
    let end = match (s.end, s.exit_code) {
        (Some(end), Some(code)) => format!(
            "{} UTC, exit code {code} ({}, {})",
            format_utc(end),
            field(&s.status),
            duration(&s)
        ),
        (Some(end), None) => format!("{} UTC ({})", format_utc(end), field(&s.status)),
        _ => format!("- ({})", field(&s.status)),
    };
    w(out, "end", end)?;
    w(
        out,
        "bytes",
        format!("in {}, out {}", s.bytes_in, s.bytes_out),
    )?;
    writeln!(out).map_err(out_err)?;
    for e in store.events(id)? {
        let label = match e.kind {
            EventKind::Input => "i",
            EventKind::Output => "o",
            EventKind::Error => "e",
        };
        let prefix = format!("+{:>9.3}s  {label}  ", e.elapsed);
        let text = escape(&e.data);
        let body = text.strip_suffix('\n').unwrap_or(&text);
        for (n, l) in body.split('\n').enumerate() {
            let lead = if n == 0 {
                prefix.clone()
            } else {
                " ".repeat(prefix.len())
            };
            writeln!(out, "{lead}{l}").map_err(out_err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(format_utc(0.0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(951_782_400.5), "2000-02-29 00:00:00");
        assert_eq!(format_utc(1_787_313_600.0), "2026-08-21 12:00:00");
    }

    #[test]
    fn fields_escape_every_control_character() {
        assert_eq!(
            field("ls \x1b]0;pwned\x07\nfake line\tx\\"),
            "ls \\x1b]0;pwned\\x07\\nfake line\\tx\\\\"
        );
        assert_eq!(field("plain élan"), "plain élan");
    }

    #[test]
    fn escapes_control_bytes_but_keeps_lines() {
        assert_eq!(escape(b"a\r\nb\x1b[0m\xff\t"), "a\\r\nb\\x1b[0m\\xff\t");
    }
}
