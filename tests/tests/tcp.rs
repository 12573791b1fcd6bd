//! `tcp` connections (issue 16, hoop-gateway-protocol.md §3.7): a hoop gateway (in-process
//! fake) drives the real agent with hoop's TCP packets; the upstreams are real TCP servers on
//! 127.0.0.1 that record what they see (an echo server, a server that speaks first).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use dynoagent_tests::{AgentStream, SessionReplies, WAIT, b64, setup, sid};
use hoop_gob::AgentConnectionParams;
use hoop_wire::{AgentPacket, ClientPacket, SessionId, SessionOpen};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What an upstream server saw of one connection.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Accepted,
    /// The agent closed its side (EOF), after sending this many bytes.
    Closed(usize),
}

/// An upstream on 127.0.0.1: echoes (or first sends `banner`), and reports each connection's
/// accept and close.
async fn upstream(banner: Option<&'static [u8]>) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            let _ = tx.send(Seen::Accepted);
            tokio::spawn(async move {
                if let Some(b) = banner {
                    let _ = sock.write_all(b).await;
                }
                let mut total = 0;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            total += n;
                            if sock.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = tx.send(Seen::Closed(total));
            });
        }
    });
    (addr, rx)
}

/// The `AgentSessionOpen` of a `tcp` connection with `vars` (connection) and `client_env`.
fn open_tcp(id: &SessionId, vars: &[(&str, &str)], client_env: &[(&str, &str)]) -> AgentPacket {
    let env_vars: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (format!("envvar:{k}"), b64(v)))
        .collect();
    AgentPacket::SessionOpen(Box::new(SessionOpen {
        session_id: id.clone(),
        connection_type: "tcp".into(),
        params: AgentConnectionParams {
            connection_name: "pg".into(),
            connection_type: "tcp".into(),
            user_email: "dev@example.com".into(),
            env_vars,
            client_verb: "connect".into(),
            ..Default::default()
        },
        client_env: client_env
            .iter()
            .map(|(k, v)| (format!("envvar:{k}"), b64(v)))
            .collect(),
        request_port: None,
        jit_timeout: None,
    }))
}

async fn opened(stream: &AgentStream, vars: &[(&str, &str)]) -> (SessionId, SessionReplies) {
    let id = sid();
    let mut replies = stream.watch_session(&id);
    stream.send(open_tcp(&id, vars, &[])).await;
    match replies.next().await {
        ClientPacket::SessionOpenOk {
            connection_type, ..
        } => assert_eq!(connection_type, "tcp"),
        other => panic!("{other:?}"),
    }
    (id, replies)
}

fn write(id: &SessionId, conn: &str, server_connect: bool, data: &[u8]) -> AgentPacket {
    AgentPacket::TcpWrite {
        session_id: id.clone(),
        connection_id: conn.into(),
        server_connect,
        data: Bytes::copy_from_slice(data),
    }
}

/// Reads `ClientTCPConnectionWrite`s of `conn` until `want` bytes arrived.
async fn read_tcp(replies: &mut SessionReplies, conn: &str, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < want {
        match replies.next().await {
            ClientPacket::TcpWrite {
                connection_id,
                data,
                ..
            } if connection_id == conn => {
                assert!(
                    data.len() <= 32 * 1024,
                    "{} bytes in one packet",
                    data.len()
                );
                got.extend_from_slice(&data);
            }
            ClientPacket::TcpWrite { .. } => {}
            other => panic!("{other:?} after {} of {want} bytes", got.len()),
        }
    }
    got
}

async fn seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the upstream saw nothing in time")
        .expect("upstream gone")
}

#[tokio::test]
async fn relays_bytes_both_ways_and_closes_each_upstream_with_its_client() {
    let (addr, mut ups) = upstream(None).await;
    let (_gw, mut agent, stream) = setup(&[]).await;
    let port = addr.port().to_string();
    let (id, mut replies) = opened(&stream, &[("HOST", "127.0.0.1"), ("PORT", &port)]).await;
    // The liveness dial at open.
    assert_eq!(seen(&mut ups).await, Seen::Accepted);
    assert_eq!(seen(&mut ups).await, Seen::Closed(0));

    // Connection 1 dials on `tcp.server_connect`, then relays 1 MiB byte-exact.
    stream.send(write(&id, "1", true, b"")).await;
    assert_eq!(seen(&mut ups).await, Seen::Accepted);
    let data: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i * 7 + i / 256) as u8)
        .collect();
    for chunk in data.chunks(32 * 1024) {
        stream.send(write(&id, "1", false, chunk)).await;
    }
    let echoed = read_tcp(&mut replies, "1", data.len()).await;
    assert!(echoed == data, "the relayed bytes differ");

    // A second connection at the same time, with its first bytes in its first packet.
    stream.send(write(&id, "2", false, b"second")).await;
    assert_eq!(seen(&mut ups).await, Seen::Accepted);
    assert_eq!(read_tcp(&mut replies, "2", 6).await, b"second");

    // The client closes 1: its upstream socket is closed (hoop leaves it open).
    stream
        .send(AgentPacket::TcpClose {
            session_id: id.clone(),
            connection_id: "1".into(),
        })
        .await;
    assert_eq!(seen(&mut ups).await, Seen::Closed(data.len()));
    // Idempotent: a second close (and one for an unknown id) changes nothing.
    for conn in ["1", "9"] {
        stream
            .send(AgentPacket::TcpClose {
                session_id: id.clone(),
                connection_id: conn.into(),
            })
            .await;
    }
    // Closing the session closes every socket it still has.
    stream
        .send(AgentPacket::SessionClose {
            session_id: id.clone(),
        })
        .await;
    assert_eq!(seen(&mut ups).await, Seen::Closed(6));
    agent.wait_idle().await;
    agent.shutdown().await;
}

#[tokio::test]
async fn a_server_that_speaks_first_is_heard_and_its_close_reaches_the_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    // Greets, then closes: like an SMTP server refusing service.
    tokio::spawn(async move {
        for _ in 0..2 {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let _ = sock.write_all(b"220 upstream ready\r\n").await;
        }
    });
    let (_gw, mut agent, stream) = setup(&[]).await;
    let (id, mut replies) = opened(&stream, &[("HOST", "127.0.0.1"), ("PORT", &port)]).await;
    stream.send(write(&id, "1", true, b"")).await;
    assert_eq!(
        read_tcp(&mut replies, "1", 20).await,
        b"220 upstream ready\r\n"
    );
    // The upstream closed: the client hears of it (hoop sends nothing on a clean EOF).
    match replies.next().await {
        ClientPacket::TcpClose { connection_id, .. } => assert_eq!(connection_id, "1"),
        other => panic!("{other:?}"),
    }
    stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    agent.wait_idle().await;
    agent.shutdown().await;
}

#[tokio::test]
async fn unreachable_refused_and_redirected_targets_end_with_clear_errors() {
    let (_gw, mut agent, stream) = setup(&[]).await;
    // A port nothing listens on.
    let free = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    let id = sid();
    let mut replies = stream.watch_session(&id);
    stream
        .send(open_tcp(
            &id,
            &[("HOST", "127.0.0.1"), ("PORT", &free)],
            &[],
        ))
        .await;
    let out = replies.until_close().await;
    assert_eq!(out.exit_code, Some(254));
    assert!(
        out.message.starts_with(&format!(
            "failed connecting to remote host=127.0.0.1, port={free}, reason="
        )),
        "{}",
        out.message
    );
    assert!(out.open_ok.is_none());

    // The connection's allowlist refuses a target outside it.
    let (addr, _ups) = upstream(None).await;
    let port = addr.port().to_string();
    let id = sid();
    let mut replies = stream.watch_session(&id);
    stream
        .send(open_tcp(
            &id,
            &[
                ("HOST", "127.0.0.1"),
                ("PORT", &port),
                ("TCP_ALLOW", "db.internal:5432"),
            ],
            &[],
        ))
        .await;
    let out = replies.until_close().await;
    assert_eq!(out.exit_code, Some(254));
    assert!(out.message.contains("TCP_ALLOW"), "{}", out.message);

    // A client's -e HOST/PORT neither fills a missing target nor moves the connection's.
    let id = sid();
    let mut replies = stream.watch_session(&id);
    stream
        .send(open_tcp(
            &id,
            &[],
            &[("HOST", "127.0.0.1"), ("PORT", &port)],
        ))
        .await;
    let out = replies.until_close().await;
    assert_eq!(out.exit_code, Some(254));
    assert!(out.message.contains("HOST, PORT"), "{}", out.message);
    let id = sid();
    let mut replies = stream.watch_session(&id);
    stream
        .send(open_tcp(
            &id,
            &[("HOST", "127.0.0.1"), ("PORT", &free)],
            &[("HOST", "127.0.0.1"), ("PORT", &port)],
        ))
        .await;
    let out = replies.until_close().await;
    assert_eq!(
        out.exit_code,
        Some(254),
        "the client's -e PORT redirected it"
    );
    assert!(
        out.message.contains(&format!("port={free}")),
        "{}",
        out.message
    );
    agent.wait_idle().await;
    agent.shutdown().await;
}

/// Into a dyno (as `heroku ps:forward`): the connection names an app, a dyno and a port; the
/// agent reaches `127.0.0.1:PORT` inside the dyno through Heroku Exec on the Heroku emulator
/// (exec-manager key exchange, SSH to its proxy, one `direct-tcpip` channel per connection).
#[tokio::test]
async fn a_port_inside_a_dyno_is_reached_through_heroku_exec() {
    let mut config = herokusim::SimConfig {
        ssh_port: Some(0),
        ..herokusim::SimConfig::demo()
    };
    // The demo app's web.1 serves HTTP on its own PORT, on the dyno's loopback.
    config.apps[0].formation[0].command =
        Some("exec python3 -m http.server \"$PORT\" --bind 127.0.0.1".into());
    config.apps.push(herokusim::AppConfig {
        name: "firapp".into(),
        generation: herokusim::Generation::Fir,
        space: Some(herokusim::SpaceKind::Private),
        ..herokusim::AppConfig::default()
    });
    let sim = herokusim::Sim::start(config).await.unwrap();
    let port = sim.dyno_port("demo", "web.1").expect("web.1 has a port");
    // python3 needs a moment to listen: wait (bounded) until it does.
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "web.1 never listened"
        );
        tokio::task::yield_now().await;
    }
    let ca = format!("file://{}", sim.ca_file().display());
    let ssh_port = sim.ssh_port().to_string();
    let (_gw, mut agent, stream) = setup(&[
        ("DYNOAGENT_HEROKU_API_URL", sim.api_url()),
        ("DYNOAGENT_HEROKU_EXEC_URL", sim.exec_url()),
        ("DYNOAGENT_HEROKU_CA", &ca),
        ("DYNOAGENT_HEROKU_EXEC_SSH_PORT", &ssh_port),
    ])
    .await;
    let port_text = port.to_string();
    let vars = [
        ("HEROKU_APP", "demo"),
        ("HEROKU_DYNO", "web.1"),
        ("PORT", port_text.as_str()),
        ("HEROKU_API_KEY", sim.api_key()),
    ];
    let (id, mut replies) = opened(&stream, &vars).await;
    for conn in ["1", "2"] {
        stream.send(write(&id, conn, true, b"")).await;
        stream
            .send(write(&id, conn, false, b"GET / HTTP/1.0\r\n\r\n"))
            .await;
        let mut answer = Vec::new();
        loop {
            match replies.next().await {
                ClientPacket::TcpWrite {
                    connection_id,
                    data,
                    ..
                } if connection_id == conn => answer.extend_from_slice(&data),
                ClientPacket::TcpClose { connection_id, .. } if connection_id == conn => break,
                other => panic!("{other:?}"),
            }
        }
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.0 200"), "{text}");
        assert!(text.contains("Directory listing"), "{text}");
        stream
            .send(AgentPacket::TcpClose {
                session_id: id.clone(),
                connection_id: conn.into(),
            })
            .await;
    }
    stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;

    // A Fir app has no Heroku Exec: refused with the reason.
    let id = sid();
    let mut replies = stream.watch_session(&id);
    stream
        .send(open_tcp(
            &id,
            &[
                ("HEROKU_APP", "firapp"),
                ("PORT", "5000"),
                ("HEROKU_API_KEY", sim.api_key()),
            ],
            &[],
        ))
        .await;
    let out = replies.until_close().await;
    assert_eq!(out.exit_code, Some(1), "{}", out.message);
    assert!(out.message.contains("is a Fir app"), "{}", out.message);
    agent.wait_idle().await;
    agent.shutdown().await;
    sim.shutdown().await;
}

/// STYLE rule 16: one connection whose upstream stops reading must not hold up the session's
/// other connections. Connection "slow" goes to a server that reads its first 4 bytes and then
/// never again (with a 4 KiB receive buffer), and gets 6 MiB: more than the kernel buffers
/// hold, less than the session's 8 MiB input budget. Connection "fast" must still echo, and
/// the session must still close on request.
#[tokio::test]
async fn a_stalled_upstream_does_not_hold_up_the_sessions_other_connections() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let (held_tx, mut held) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // At most the liveness dial and the two connections (bounded).
        for _ in 0..3 {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let held_tx = held_tx.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 4];
                if sock.read_exact(&mut first).await.is_err() {
                    return;
                }
                if &first == b"STOP" {
                    // Never reads again; keeps the socket until the test ends.
                    let _ = held_tx.send(sock);
                    return;
                }
                let _ = sock.write_all(&first).await;
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = sock.read(&mut buf).await {
                    if sock.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let (_gw, mut agent, stream) = setup(&[]).await;
    let (id, mut replies) = opened(&stream, &[("HOST", "127.0.0.1"), ("PORT", &port)]).await;
    stream.send(write(&id, "slow", false, b"STOP")).await;
    let held_sock = tokio::time::timeout(WAIT, held.recv())
        .await
        .expect("the stalled connection was not dialled in time")
        .unwrap();
    let chunk = vec![0x5a_u8; 32 * 1024];
    let relayed = async {
        for _ in 0..(6 * 1024 * 1024 / chunk.len()) {
            stream.send(write(&id, "slow", false, &chunk)).await;
        }
        stream.send(write(&id, "fast", false, b"ping")).await;
        read_tcp(&mut replies, "fast", 4).await
    };
    let echoed = tokio::time::timeout(WAIT, relayed)
        .await
        .expect("a stalled connection held up the session's other connection");
    assert_eq!(echoed, b"ping");
    stream
        .send(AgentPacket::SessionClose {
            session_id: id.clone(),
        })
        .await;
    agent.wait_idle().await;
    drop(held_sock);
    agent.shutdown().await;
}
