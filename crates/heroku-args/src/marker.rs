//! The exit-status marker of `heroku run --exit-code` (heroku-protocols.md §4).
//!
//! The command sent to the dyno is wrapped as
//! `<command> ; echo "\u{FFFF} heroku-command-exit-status <nonce>: $?"` (the space before `;`
//! keeps Procfile process types working). The nonce is fresh per session, which the spec allows
//! since dynoagent both writes and reads the marker.
//!
//! [`MarkerScanner`] finds the marker in the merged output stream with state that persists
//! across reads, strips exactly the marker text and its `\r?\n`, and passes every other byte
//! through unchanged (binary-safe). The marker is matched wherever it starts, not only at a
//! line start: a command whose output does not end in a newline (`printf abc`, binary data)
//! puts the marker mid-line, and the nonce keeps user output from matching by accident. The
//! last marker wins.
//!
//! Every output byte of a run session goes through [`MarkerScanner::feed`], so its common case
//! is cheap: a SIMD substring search (`memchr::memmem`) over the chunk, and the chunk itself
//! handed back (no copy) when it holds no marker and does not end in a marker's first bytes.

use bytes::{Bytes, BytesMut};
use memchr::memmem;

/// More digits than any exit status has; a longer run is not a marker.
const MAX_DIGITS: usize = 10;

/// Wraps a command with the marker epilogue for `nonce`. The command runs in a subshell, so
/// `exit N` (or `exec`) ends the subshell, not the shell that prints the marker; the newlines
/// keep a trailing `# comment` or `&` from swallowing the closing parenthesis.
pub fn wrap(command: &str, nonce: &str) -> String {
    format!("(\n{command}\n) ; echo \"\u{FFFF} heroku-command-exit-status {nonce}: $?\"")
}

/// A fresh nonce: 16 hex digits.
pub fn new_nonce() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id.get(..16).unwrap_or(&id).to_owned()
}

/// Streaming marker detector. Holds back at most one possible marker (under 80 bytes).
#[derive(Debug)]
pub struct MarkerScanner {
    prefix: Vec<u8>,
    finder: memmem::Finder<'static>,
    pending: Vec<u8>,
    status: Option<i32>,
}

enum Tail {
    /// A complete marker of `len` bytes with this status.
    Marker { len: usize, status: i32 },
    /// Could still become a marker with more input.
    Incomplete,
    /// Not a marker.
    No,
}

impl MarkerScanner {
    /// A scanner for the marker with `nonce`.
    pub fn new(nonce: &str) -> MarkerScanner {
        let prefix = format!("\u{FFFF} heroku-command-exit-status {nonce}: ").into_bytes();
        MarkerScanner {
            finder: memmem::Finder::new(&prefix).into_owned(),
            prefix,
            pending: Vec::new(),
            status: None,
        }
    }

    /// The last exit status seen so far.
    pub fn status(&self) -> Option<i32> {
        self.status
    }

    /// Feeds one chunk; returns the bytes to forward now (`chunk` itself, uncopied, when it
    /// holds nothing of a marker).
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        if self.pending.is_empty() && self.finder.find(&chunk).is_none() {
            let hold = partial_suffix(&chunk, &self.prefix);
            if hold == 0 {
                return chunk;
            }
            self.pending = chunk.get(chunk.len() - hold..).unwrap_or_default().to_vec();
            return chunk.slice(..chunk.len() - hold);
        }
        let mut data = std::mem::take(&mut self.pending);
        data.extend_from_slice(&chunk);
        let mut out = BytesMut::with_capacity(data.len());
        let mut pos = 0;
        loop {
            let rest = data.get(pos..).unwrap_or_default();
            match self.finder.find(rest) {
                Some(i) => {
                    out.extend_from_slice(rest.get(..i).unwrap_or_default());
                    let at = pos + i;
                    match self.tail(data.get(at..).unwrap_or_default(), false) {
                        Tail::Marker { len, status } => {
                            self.status = Some(status);
                            pos = at + len;
                        }
                        Tail::Incomplete => {
                            self.pending = data.get(at..).unwrap_or_default().to_vec();
                            return out.freeze();
                        }
                        Tail::No => {
                            out.extend_from_slice(data.get(at..=at).unwrap_or_default());
                            pos = at + 1;
                        }
                    }
                }
                None => {
                    // Keep a suffix that may be the start of a marker split across reads.
                    let hold = partial_suffix(rest, &self.prefix);
                    out.extend_from_slice(rest.get(..rest.len() - hold).unwrap_or_default());
                    self.pending = rest.get(rest.len() - hold..).unwrap_or_default().to_vec();
                    return out.freeze();
                }
            }
        }
    }

    /// Ends the stream; returns any held bytes (a marker without its newline still counts).
    pub fn finish(&mut self) -> Bytes {
        let held = std::mem::take(&mut self.pending);
        if let Tail::Marker { len, status } = self.tail(&held, true) {
            self.status = Some(status);
            return Bytes::copy_from_slice(held.get(len..).unwrap_or_default());
        }
        Bytes::from(held)
    }

    /// Classifies `data`, which starts with the prefix (or a part of it).
    fn tail(&self, data: &[u8], at_end: bool) -> Tail {
        let Some(after) = data.strip_prefix(self.prefix.as_slice()) else {
            return if self.prefix.starts_with(data) && !at_end {
                Tail::Incomplete
            } else {
                Tail::No
            };
        };
        let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > MAX_DIGITS {
            return Tail::No;
        }
        let rest = after.get(digits..).unwrap_or_default();
        let status = || {
            std::str::from_utf8(after.get(..digits).unwrap_or_default())
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .map(|n| i32::try_from(n).unwrap_or(i32::MAX))
        };
        let newline = match rest {
            [b'\n', ..] => Some(1),
            [b'\r', b'\n', ..] => Some(2),
            [] | [b'\r'] if !at_end => return Tail::Incomplete,
            [] | [b'\r'] => Some(rest.len()),
            _ => None,
        };
        match (digits, newline, status()) {
            (1.., Some(nl), Some(status)) => Tail::Marker {
                len: self.prefix.len() + digits + nl,
                status,
            },
            _ => Tail::No,
        }
    }
}

/// The length of the longest suffix of `hay` that is a proper prefix of `needle`.
fn partial_suffix(hay: &[u8], needle: &[u8]) -> usize {
    let max = hay.len().min(needle.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&k| {
            hay.get(hay.len() - k..)
                .is_some_and(|s| needle.starts_with(s))
        })
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const NONCE: &str = "0123456789abcdef";

    fn marker(code: i32, crlf: bool) -> Vec<u8> {
        let mut m = format!("\u{FFFF} heroku-command-exit-status {NONCE}: {code}").into_bytes();
        m.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        m
    }

    /// Feeds `input` split at every possible pair of boundaries and checks the result.
    fn check_all_splits(input: &[u8], want_out: &[u8], want_status: Option<i32>) {
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let mut s = MarkerScanner::new(NONCE);
                let mut out = Vec::new();
                for part in [&input[..a], &input[a..b], &input[b..]] {
                    out.extend_from_slice(&s.feed(Bytes::copy_from_slice(part)));
                }
                out.extend_from_slice(&s.finish());
                assert_eq!(out, want_out, "split at {a},{b}");
                assert_eq!(s.status(), want_status, "split at {a},{b}");
            }
        }
    }

    #[test]
    fn a_chunk_without_a_marker_is_handed_back_uncopied() {
        let mut s = MarkerScanner::new(NONCE);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let out = s.feed(chunk.clone());
        assert_eq!(out.as_ptr(), chunk.as_ptr());
        assert_eq!(out.len(), chunk.len());
        // A chunk that ends in a marker's first bytes is handed back short of them, still
        // uncopied; they come out with the next chunk.
        let mut split = b"abc".to_vec();
        split.extend_from_slice(&marker(0, false)[..4]);
        let chunk = Bytes::from(split);
        let out = s.feed(chunk.clone());
        assert_eq!((out.as_ptr(), &out[..]), (chunk.as_ptr(), &b"abc"[..]));
        let out = s.feed(Bytes::from_static(b"no marker after all"));
        assert_eq!(&out[..4], &marker(0, false)[..4]);
        assert_eq!(s.status(), None);
    }

    #[test]
    fn strips_the_marker_across_any_read_boundary() {
        let mut input = b"hello\nworld\n".to_vec();
        input.extend(marker(3, false));
        check_all_splits(&input, b"hello\nworld\n", Some(3));
        let mut tty = b"out\r\n".to_vec();
        tty.extend(marker(0, true));
        check_all_splits(&tty, b"out\r\n", Some(0));
    }

    #[test]
    fn finds_the_marker_after_output_without_a_final_newline() {
        let mut input = b"abc".to_vec();
        input.extend(marker(4, false));
        check_all_splits(&input, b"abc", Some(4));
    }

    #[test]
    fn binary_output_and_lookalikes_pass_through_unchanged() {
        let mut input: Vec<u8> = (0..=255u8).collect();
        input.extend_from_slice(b"\n\xEF\xBF\xBF heroku-command-exit-status: 1\n");
        input.extend_from_slice(
            format!("\u{FFFF} heroku-command-exit-status {NONCE}: x\n").as_bytes(),
        );
        input.extend_from_slice(
            format!("+ echo '\u{FFFF} heroku-command-exit-status {NONCE}: 0'\n").as_bytes(),
        );
        input.extend_from_slice(b"\xEF\xBF");
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
        input.extend_from_slice(
            format!("\u{FFFF} heroku-command-exit-status {NONCE}: 42").as_bytes(),
        );
        check_all_splits(&input, b"x\n", Some(42));
        let mut partial = b"x\n".to_vec();
        partial.extend_from_slice(&marker(0, false)[..10]);
        check_all_splits(&partial, &partial.clone(), None);
    }

    #[test]
    fn wraps_the_command_in_a_subshell() {
        assert_eq!(
            wrap("web", NONCE),
            format!("(\nweb\n) ; echo \"\u{FFFF} heroku-command-exit-status {NONCE}: $?\"")
        );
        assert_ne!(new_nonce(), new_nonce());
        assert_eq!(new_nonce().len(), 16);
    }
}
