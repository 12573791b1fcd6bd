//! Sessions under input pressure through the whole agent (issue 14, defect 2): a terminal
//! whose process cannot keep up with a 1 MiB paste keeps its output flowing and still ends
//! on close, leaving no process behind.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::Bytes;
use dynoagent_tests::{Params, Tag, setup, sid};
use hoop_wire::{AgentPacket, ClientPacket};

#[tokio::test]
async fn a_big_paste_into_a_terminal_keeps_output_flowing_and_close_works() {
    let tag = Tag::new();
    let (_gw, mut agent, stream) = setup(&[]).await;
    let id = sid();
    let mut replies = stream.watch_session(&id);
    stream
        .send(Params::new(&["cat"], "connect", &tag).open(&id))
        .await;
    assert!(matches!(
        replies.next().await,
        ClientPacket::SessionOpenOk { .. }
    ));
    let write = |data: Bytes| AgentPacket::TerminalWriteStdin {
        session_id: id.clone(),
        data,
    };
    // The first write picks the terminal mode and is discarded.
    stream.send(write(Bytes::from_static(b"\n"))).await;
    let line = [b"p".repeat(63), b"\n".to_vec()].concat();
    stream
        .send(write(Bytes::from(line.repeat(16 * 1024))))
        .await;
    stream
        .send(write(Bytes::from_static(b"after-the-paste\n")))
        .await;
    // The terminal echoes the last line and `cat` prints it: both arrive only if output is
    // read while the paste is being written.
    let needle = b"after-the-paste";
    let mut all: Vec<u8> = Vec::new();
    let mut found = 0usize;
    while found < 2 {
        match replies.next().await {
            ClientPacket::Stdout { data, .. } => {
                // Count across chunk boundaries without counting a match twice.
                let from = all.len().saturating_sub(needle.len() - 1);
                all.extend_from_slice(&data);
                found += all[from..]
                    .windows(needle.len())
                    .filter(|w| w == needle)
                    .count();
            }
            other => panic!("{other:?} after {} bytes of output", all.len()),
        }
    }
    let seen = all.len();
    assert!(seen >= 2 << 20, "only {seen} bytes of output");
    stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    agent.wait_idle().await;
    tag.assert_no_processes();
    agent.shutdown().await;
}
