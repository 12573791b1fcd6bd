//! Fuzz target `marker`: the run backend's exit-marker scanner (`MarkerScanner`) on arbitrary
//! output split into arbitrary reads.
//!
//! Input layout: byte 0 gives the number of explicit reads (0-7), the next that many bytes
//! their lengths (the rest is one last read); then 4 control bytes (where to insert a marker,
//! its status, its line ending); the remaining bytes are the output. Checked:
//! - the output and the status are the same whatever the read boundaries (the chosen ones,
//!   one single read, one byte per read);
//! - output that does not contain the marker prefix passes through unchanged, status `None`;
//! - that same output with a well-formed marker inserted anywhere comes out without the
//!   marker, with the marker's status.

#![no_main]

use heroku_args::marker::MarkerScanner;
use libfuzzer_sys::fuzz_target;

const NONCE: &str = "0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8);
    if rest.len() < n + 4 {
        return;
    }
    let (lens, rest) = rest.split_at(n);
    let (ctl, input) = rest.split_at(4);
    let reads: Vec<usize> = lens.iter().map(|&l| usize::from(l)).collect();

    let whole = scan(input, &[]);
    assert_eq!(
        scan(input, &reads),
        whole,
        "result depends on read boundaries"
    );
    assert_eq!(
        scan(input, &vec![1; input.len()]),
        whole,
        "byte-per-read result differs"
    );

    let prefix = format!("\u{FFFF} heroku-command-exit-status {NONCE}: ");
    if contains(input, prefix.as_bytes()) {
        return;
    }
    assert_eq!(
        whole,
        (input.to_vec(), None),
        "output without a marker was changed"
    );

    // Insert a marker: at `at`, status from two bytes, `\n`, `\r\n`, or none at the very end.
    let at = usize::from(ctl[0]) * input.len() / 255;
    let status = u16::from_le_bytes([ctl[1], ctl[2]]);
    let ending: &[u8] = match ctl[3] % 3 {
        0 => b"\n",
        1 => b"\r\n",
        _ if at == input.len() => b"",
        _ => b"\n",
    };
    let mut marked = input[..at].to_vec();
    marked.extend_from_slice(prefix.as_bytes());
    marked.extend_from_slice(status.to_string().as_bytes());
    marked.extend_from_slice(ending);
    marked.extend_from_slice(&input[at..]);
    let want = (input.to_vec(), Some(i32::from(status)));
    assert_eq!(scan(&marked, &reads), want, "marker not stripped");
    assert_eq!(
        scan(&marked, &vec![1; marked.len()]),
        want,
        "marker not stripped byte-wise"
    );
});

/// Feeds `input` in reads of the given lengths (then the rest) and returns output and status.
fn scan(input: &[u8], reads: &[usize]) -> (Vec<u8>, Option<i32>) {
    let mut s = MarkerScanner::new(NONCE);
    let mut out = Vec::new();
    let mut pos = 0;
    for &len in reads {
        let end = (pos + len).min(input.len());
        out.extend_from_slice(&s.feed(bytes::Bytes::copy_from_slice(&input[pos..end])));
        pos = end;
    }
    out.extend_from_slice(&s.feed(bytes::Bytes::copy_from_slice(&input[pos..])));
    out.extend_from_slice(&s.finish());
    (out, s.status())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
