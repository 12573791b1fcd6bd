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
//! The scanner lives in crate `heroku-args` (pure, fuzzed); this module adds its SSH filter.

use bytes::Bytes;

pub use heroku_args::marker::{MarkerScanner, new_nonce, wrap};

/// The marker as a filter of an SSH channel's stdout (the SSH attach path): the marker line
/// is removed and its code wins over the channel's `exit-status`, which is the status of the
/// marker's own `echo`.
#[derive(Debug)]
pub struct MarkerFilter(MarkerScanner);

impl MarkerFilter {
    pub fn new(nonce: &str) -> MarkerFilter {
        MarkerFilter(MarkerScanner::new(nonce))
    }
}

impl backend_ssh::StdoutFilter for MarkerFilter {
    fn feed(&mut self, chunk: Bytes) -> Bytes {
        self.0.feed(chunk)
    }
    fn finish(&mut self) -> Bytes {
        self.0.finish()
    }
    fn exit_code(&self) -> Option<i32> {
        self.0.status()
    }
}
