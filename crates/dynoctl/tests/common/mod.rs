//! Helpers shared by the dynoctl binary's tests.

#![allow(dead_code, clippy::panic, clippy::indexing_slicing)]

use std::time::Duration;

use tokio::io::AsyncReadExt as _;

/// Bound on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(20);

/// Reads the PTY until `needle` appears; returns (and forgets) everything up to and including it.
pub async fn read_until(
    pty: &mut pty_process::OwnedReadPty,
    seen: &mut Vec<u8>,
    needle: &str,
) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    loop {
        if let Some(pos) = seen
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
        {
            let upto: Vec<u8> = seen.drain(..pos + needle.len()).collect();
            return String::from_utf8_lossy(&upto).into_owned();
        }
        match tokio::time::timeout_at(deadline, pty.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            other => panic!(
                "{needle:?} did not appear ({other:?}); got {:?}",
                String::from_utf8_lossy(seen)
            ),
        }
    }
}
