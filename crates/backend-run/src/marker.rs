//! The exit-status marker of `heroku run --exit-code` (heroku-protocols.md §4).
//!
//! The command sent to the dyno is wrapped as `<command> ; echo "\u{FFFF} heroku-command-exit-status: $?"`
//! (the space before `;` keeps Procfile process types working). [`MarkerScanner`] finds the
//! marker line in the merged output stream with a line state that persists across reads, strips
//! it with its `\r?\n`, and passes every other byte through unchanged (binary-safe). Only whole
//! lines anchored at a line start match; the last marker wins.

use bytes::{Bytes, BytesMut};

/// The bytes before the status: U+FFFF (UTF-8), a space, the label, a space.
const PREFIX: &[u8] = "\u{FFFF} heroku-command-exit-status: ".as_bytes();
/// More digits than any exit status has; a longer run is not a marker.
const MAX_DIGITS: usize = 10;

/// The epilogue appended to the command.
pub const EPILOGUE: &str = " ; echo \"\u{FFFF} heroku-command-exit-status: $?\"";

/// Wraps a command with the marker epilogue.
pub fn wrap(command: &str) -> String {
    format!("{command}{EPILOGUE}")
}

/// Streaming marker detector. Holds back at most one candidate line (under 64 bytes).
#[derive(Debug)]
pub struct MarkerScanner {
    at_line_start: bool,
    held: Vec<u8>,
    status: Option<i32>,
}

impl Default for MarkerScanner {
    fn default() -> Self {
        MarkerScanner {
            at_line_start: true,
            held: Vec::with_capacity(PREFIX.len() + MAX_DIGITS + 2),
            status: None,
        }
    }
}

enum Candidate {
    /// Still a possible marker.
    Open,
    /// A complete marker line.
    Done(i32),
    /// Not a marker.
    No,
}

impl MarkerScanner {
    /// The last exit status seen so far.
    pub fn status(&self) -> Option<i32> {
        self.status
    }

    /// Feeds one chunk; returns the bytes to forward now.
    pub fn feed(&mut self, chunk: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(chunk.len());
        let mut i = 0;
        while i < chunk.len() {
            if self.held.is_empty() && !self.at_line_start {
                // Fast path: copy up to and including the next newline.
                let rest = chunk.get(i..).unwrap_or_default();
                match rest.iter().position(|&b| b == b'\n') {
                    Some(n) => {
                        out.extend_from_slice(rest.get(..=n).unwrap_or_default());
                        i += n + 1;
                        self.at_line_start = true;
                    }
                    None => {
                        out.extend_from_slice(rest);
                        i = chunk.len();
                    }
                }
                continue;
            }
            let Some(&b) = chunk.get(i) else { break };
            i += 1;
            self.held.push(b);
            match self.classify() {
                Candidate::Open => {}
                Candidate::Done(code) => {
                    self.status = Some(code);
                    self.held.clear();
                    self.at_line_start = true;
                }
                Candidate::No => {
                    out.extend_from_slice(&self.held);
                    self.held.clear();
                    self.at_line_start = b == b'\n';
                }
            }
        }
        out.freeze()
    }

    /// Ends the stream; returns any held bytes (a marker without a final newline counts).
    pub fn finish(&mut self) -> Bytes {
        let held = std::mem::take(&mut self.held);
        if let Some(code) = parse_status(&held) {
            self.status = Some(code);
            return Bytes::new();
        }
        Bytes::from(held)
    }

    fn classify(&self) -> Candidate {
        let held = &self.held;
        if held.len() <= PREFIX.len() {
            return if PREFIX.starts_with(held) {
                Candidate::Open
            } else {
                Candidate::No
            };
        }
        if !held.starts_with(PREFIX) {
            return Candidate::No;
        }
        let tail = held.get(PREFIX.len()..).unwrap_or_default();
        let digits = tail.iter().take_while(|b| b.is_ascii_digit()).count();
        let after = tail.get(digits..).unwrap_or_default();
        if digits == 0 || digits > MAX_DIGITS {
            return if digits == 0 && after.is_empty() {
                Candidate::Open
            } else {
                Candidate::No
            };
        }
        match after {
            [] | [b'\r'] => Candidate::Open,
            [b'\n'] | [b'\r', b'\n'] => parse_status(held).map_or(Candidate::No, Candidate::Done),
            _ => Candidate::No,
        }
    }
}

fn parse_status(line: &[u8]) -> Option<i32> {
    let tail = line.strip_prefix(PREFIX)?;
    let digits: &[u8] = match tail {
        [d @ .., b'\r', b'\n'] | [d @ .., b'\n'] | [d @ .., b'\r'] => d,
        d => d,
    };
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits)
        .ok()?
        .parse::<i64>()
        .ok()
        .map(|n| i32::try_from(n).unwrap_or(i32::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn marker(code: i32, crlf: bool) -> Vec<u8> {
        let mut m = PREFIX.to_vec();
        m.extend_from_slice(code.to_string().as_bytes());
        m.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        m
    }

    /// Feeds `input` split at every possible pair of boundaries and checks the result.
    fn check_all_splits(input: &[u8], want_out: &[u8], want_status: Option<i32>) {
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let mut s = MarkerScanner::default();
                let mut out = Vec::new();
                out.extend_from_slice(&s.feed(&input[..a]));
                out.extend_from_slice(&s.feed(&input[a..b]));
                out.extend_from_slice(&s.feed(&input[b..]));
                out.extend_from_slice(&s.finish());
                assert_eq!(out, want_out, "split at {a},{b}");
                assert_eq!(s.status(), want_status, "split at {a},{b}");
            }
        }
    }

    #[test]
    fn strips_the_marker_line_across_any_read_boundary() {
        let mut input = b"hello\nworld\n".to_vec();
        input.extend(marker(3, false));
        check_all_splits(&input, b"hello\nworld\n", Some(3));
        let mut tty = b"out\r\n".to_vec();
        tty.extend(marker(0, true));
        check_all_splits(&tty, b"out\r\n", Some(0));
    }

    #[test]
    fn binary_output_and_lookalikes_pass_through_unchanged() {
        let mut input: Vec<u8> = (0..=255u8).collect();
        input.extend_from_slice(b"\n\xEF\xBF\xBF heroku-command-exit-status: x\nmid ");
        input.extend(marker(5, false)); // not at a line start: user output, kept
        input.extend_from_slice(b"\n");
        let want = input.clone();
        check_all_splits(&input, &want, None);
    }

    #[test]
    fn the_last_marker_wins_and_output_after_it_is_kept() {
        let mut input = marker(1, false);
        input.extend_from_slice(b"tail\n");
        input.extend(marker(7, false));
        check_all_splits(&input, b"tail\n", Some(7));
    }

    #[test]
    fn a_marker_cut_off_at_end_of_stream_still_counts() {
        let mut input = b"x\n".to_vec();
        input.extend_from_slice(PREFIX);
        input.extend_from_slice(b"42");
        check_all_splits(&input, b"x\n", Some(42));
        let mut partial = b"x\n".to_vec();
        partial.extend_from_slice(&PREFIX[..10]);
        check_all_splits(&partial, &partial.clone(), None);
    }

    #[test]
    fn wraps_with_a_space_before_the_semicolon() {
        assert_eq!(
            wrap("web"),
            "web ; echo \"\u{FFFF} heroku-command-exit-status: $?\""
        );
    }
}
