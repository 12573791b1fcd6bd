//! The audit store: one SQLite file with a `sessions` table and an `events` table, written
//! while sessions run, and read by `dynoctl sessions` / `dynoctl audit` (directly from the file).
//!
//! Schema (times are Unix seconds as REAL, UTC):
//! * `sessions(id, user, connection, verb, command, start, "end", exit_code, status,
//!   bytes_in, bytes_out)`; `status` is `open` or `done`.
//! * `events(seq, session_id, elapsed, type, data)`; `elapsed` is seconds since the session
//!   start, `type` is `i` (client input: `AgentExecWriteStdin` / `AgentTerminalWriteStdin`
//!   payloads), `o` (`ClientWriteStdout` **and** `ClientWriteStderr`, as hoop records them) or
//!   `e` (the close error text), `data` the raw bytes.
//!
//! Writes go through [`AuditSink`], a bounded queue to one writer task that commits whatever
//! is queued (at most [`BATCH`] operations per transaction) as soon as it can, so rows and
//! events appear while the session runs. The database is in WAL mode so readers never block
//! the writer. Connection secret values never reach this module: only the session's input,
//! output and close text do (that is the audit's purpose).
//!
//! This module does not decide what to record; the session task does.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot, watch};

/// Operations queued for the writer. Overflow policy: **backpressure**. A full queue makes
/// session relays wait (and so slows the streams they relay) rather than drop audit events;
/// memory stays bounded at this many operations (each at most one 17 MiB packet payload).
pub const QUEUE: usize = 1024;

/// Most operations committed in one transaction.
pub const BATCH: usize = 256;

/// Largest row that consecutive events are coalesced into.
const COALESCE_MAX: usize = 1 << 20;

/// The exit code recorded for sessions that were open when the gateway stopped.
pub const INTERRUPTED_EXIT_CODE: i32 = 254;

/// How long SQLite waits on a lock held by another connection (e.g. a reader checkpointing).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS sessions (
    id         TEXT PRIMARY KEY,
    user       TEXT NOT NULL,
    connection TEXT NOT NULL,
    verb       TEXT NOT NULL,
    command    TEXT NOT NULL,
    start      REAL NOT NULL,
    "end"      REAL,
    exit_code  INTEGER,
    status     TEXT NOT NULL,
    bytes_in   INTEGER NOT NULL DEFAULT 0,
    bytes_out  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    elapsed    REAL NOT NULL,
    type       TEXT NOT NULL CHECK (type IN ('i', 'o', 'e')),
    data       BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_session ON events (session_id, seq);
"#;

/// Why the audit store failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("no audit database at {0} (start the gateway first, or pass its audit_db path)")]
    Missing(PathBuf),
    #[error("cannot create the audit directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// What an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Client input (`i`).
    Input,
    /// Process output, stdout or stderr (`o`).
    Output,
    /// The close error text (`e`).
    Error,
}

impl EventKind {
    /// The one-letter code stored in `events.type`.
    pub fn code(self) -> &'static str {
        match self {
            EventKind::Input => "i",
            EventKind::Output => "o",
            EventKind::Error => "e",
        }
    }

    fn from_code(s: &str) -> Option<EventKind> {
        match s {
            "i" => Some(EventKind::Input),
            "o" => Some(EventKind::Output),
            "e" => Some(EventKind::Error),
            _ => None,
        }
    }
}

/// One row of `sessions`.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRecord {
    pub id: String,
    pub user: String,
    pub connection: String,
    pub verb: String,
    /// `CmdList ++ ClientArgs`, joined with spaces.
    pub command: String,
    /// Unix seconds.
    pub start: f64,
    /// Unix seconds; `None` while open.
    pub end: Option<f64>,
    pub exit_code: Option<i32>,
    /// `open` or `done`.
    pub status: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// One row of `events`.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRecord {
    /// Seconds since the session started.
    pub elapsed: f64,
    pub kind: EventKind,
    pub data: Vec<u8>,
}

/// A connection to the audit database, for reading (and, in the gateway, for setup).
#[derive(Debug)]
pub struct AuditStore {
    conn: Connection,
    path: PathBuf,
}

impl AuditStore {
    /// Opens an existing audit database (what `dynoctl` does). Fails if it does not exist.
    pub fn open(path: impl AsRef<Path>) -> Result<AuditStore, AuditError> {
        let path = path.as_ref().to_owned();
        if !path.exists() {
            return Err(AuditError::Missing(path));
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| AuditError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let store = AuditStore { conn, path };
        store.setup(false)?;
        Ok(store)
    }

    /// Opens or creates the database (and its directory) with the schema (what the gateway does).
    pub fn create(path: impl AsRef<Path>) -> Result<AuditStore, AuditError> {
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
        let path = path.as_ref().to_owned();
        // The audit holds every session's input and output: private to this user (a 0700
        // directory, a 0600 file; SQLite gives its -wal and -shm files the database's mode).
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let create_dir = |source| AuditError::CreateDir {
                path: dir.to_owned(),
                source,
            };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(create_dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(create_dir)?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)))
            .map_err(|source| AuditError::CreateDir {
                path: path.clone(),
                source,
            })?;
        let conn = Connection::open(&path).map_err(|source| AuditError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let store = AuditStore { conn, path };
        store.setup(true)?;
        Ok(store)
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> AuditError + '_ {
        |source| AuditError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn setup(&self, create: bool) -> Result<(), AuditError> {
        self.conn.busy_timeout(BUSY_TIMEOUT).map_err(self.err())?;
        if create {
            // 64 KiB pages (a new file only; an existing one keeps its size): a 1 MiB event row
            // spans 16 overflow pages instead of 256, each with its own WAL frame and checksum.
            self.conn
                .pragma_update(None, "page_size", 65536)
                .map_err(self.err())?;
            self.conn
                .pragma_update(None, "journal_mode", "WAL")
                .map_err(self.err())?;
            self.conn
                .pragma_update(None, "synchronous", "NORMAL")
                .map_err(self.err())?;
            self.conn.execute_batch(SCHEMA).map_err(self.err())?;
        }
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks every session still `open` as ended with exit code 254, with an `e` event saying
    /// why. Called when the gateway starts: those sessions died with the previous process.
    pub fn recover_open_sessions(&mut self) -> Result<usize, AuditError> {
        let now = unix_now();
        let path = self.path.clone();
        let err = |source| AuditError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute(
            "INSERT INTO events (session_id, elapsed, type, data)
             SELECT id, MAX(?1 - start, 0), 'e', ?2 FROM sessions WHERE status = 'open'",
            params![
                now,
                b"gateway restarted before the session ended".as_slice()
            ],
        )
        .map_err(err)?;
        let n = tx
            .execute(
                "UPDATE sessions SET status = 'done', exit_code = ?1, \"end\" = ?2
                 WHERE status = 'open'",
                params![INTERRUPTED_EXIT_CODE, now],
            )
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(n)
    }

    /// Every session, oldest first.
    pub fn list_sessions(&self) -> Result<Vec<SessionRecord>, AuditError> {
        let mut stmt = self
            .conn
            .prepare(&format!("{SESSION_COLUMNS} ORDER BY start, id"))
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], session_row)
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())?;
        Ok(rows)
    }

    /// One session.
    pub fn session(&self, id: &str) -> Result<Option<SessionRecord>, AuditError> {
        self.conn
            .query_row(
                &format!("{SESSION_COLUMNS} WHERE id = ?1"),
                [id],
                session_row,
            )
            .optional()
            .map_err(self.err())
    }

    /// A session's events, in the order they were recorded.
    pub fn events(&self, id: &str) -> Result<Vec<EventRecord>, AuditError> {
        let mut stmt = self
            .conn
            .prepare("SELECT elapsed, type, data FROM events WHERE session_id = ?1 ORDER BY seq")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([id], |row| {
                let kind: String = row.get(1)?;
                Ok(EventRecord {
                    elapsed: row.get(0)?,
                    kind: EventKind::from_code(&kind).unwrap_or(EventKind::Error),
                    data: row.get(2)?,
                })
            })
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())?;
        Ok(rows)
    }
}

const SESSION_COLUMNS: &str = "SELECT id, user, connection, verb, command, start, \"end\", \
     exit_code, status, bytes_in, bytes_out FROM sessions";

fn session_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: row.get(0)?,
        user: row.get(1)?,
        connection: row.get(2)?,
        verb: row.get(3)?,
        command: row.get(4)?,
        start: row.get(5)?,
        end: row.get(6)?,
        exit_code: row.get(7)?,
        status: row.get(8)?,
        bytes_in: row.get::<_, i64>(9)?.max(0).cast_unsigned(),
        bytes_out: row.get::<_, i64>(10)?.max(0).cast_unsigned(),
    })
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A new session row.
#[derive(Clone, Debug)]
pub(crate) struct NewSession {
    pub id: String,
    pub user: String,
    pub connection: String,
    pub verb: String,
    pub command: String,
    pub start: f64,
}

#[derive(Debug)]
enum Op {
    Open(NewSession),
    Event {
        id: String,
        elapsed: f64,
        kind: EventKind,
        data: Bytes,
    },
    Close {
        id: String,
        end: f64,
        exit_code: i32,
    },
    Flush(oneshot::Sender<()>),
}

/// The writer is gone (the gateway is shutting down); nothing more can be recorded.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the audit writer has stopped")]
pub(crate) struct WriterGone;

/// The sending side of the audit writer. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct AuditSink {
    tx: mpsc::Sender<Op>,
    /// Becomes `true` for good when a batch could not be written: from then on sessions would
    /// run unrecorded, so the gateway closes them (issue 13).
    failed: watch::Receiver<bool>,
}

impl AuditSink {
    /// Resolves when the audit store has failed (at once if it already has).
    pub async fn failed(&self) {
        let mut failed = self.failed.clone();
        if failed.wait_for(|f| *f).await.is_err() {
            // The writer is gone without a failure mark (shutdown): never resolve.
            std::future::pending::<()>().await;
        }
    }

    pub async fn open(&self, s: NewSession) -> Result<(), WriterGone> {
        self.tx.send(Op::Open(s)).await.map_err(|_| WriterGone)
    }

    pub async fn event(
        &self,
        id: &str,
        elapsed: f64,
        kind: EventKind,
        data: Bytes,
    ) -> Result<(), WriterGone> {
        self.tx
            .send(Op::Event {
                id: id.to_owned(),
                elapsed,
                kind,
                data,
            })
            .await
            .map_err(|_| WriterGone)
    }

    pub async fn close(&self, id: &str, end: f64, exit_code: i32) -> Result<(), WriterGone> {
        self.tx
            .send(Op::Close {
                id: id.to_owned(),
                end,
                exit_code,
            })
            .await
            .map_err(|_| WriterGone)
    }

    /// Waits until everything queued before this call is committed.
    pub async fn flush(&self) -> Result<(), WriterGone> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Op::Flush(tx)).await.map_err(|_| WriterGone)?;
        rx.await.map_err(|_| WriterGone)
    }
}

/// Starts the writer task on `store`'s connection. It ends once every [`AuditSink`] clone is
/// dropped and the queue is drained.
pub(crate) fn spawn_writer(store: AuditStore) -> (AuditSink, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Op>(QUEUE);
    let (failed_tx, failed) = watch::channel(false);
    let task = tokio::spawn(async move {
        let AuditStore { conn, path } = store;
        let mut conn = Some(conn);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            batch.clear();
            if rx.recv_many(&mut batch, BATCH).await == 0 {
                break;
            }
            let Some(c) = conn.take() else { break };
            let ops = std::mem::take(&mut batch);
            // SQLite calls block: run them off the async workers.
            let joined = tokio::task::spawn_blocking(move || {
                let result = write_batch(&c, &ops);
                (c, ops, result)
            })
            .await;
            match joined {
                Ok((c, mut ops, result)) => {
                    if let Err(e) = result {
                        tracing::error!(path = %path.display(), error = %e, ops = ops.len(),
                            "audit batch could not be written; those events are lost and live sessions are closed");
                        failed_tx.send_replace(true);
                    }
                    for op in ops.drain(..) {
                        if let Op::Flush(ack) = op {
                            let _ = ack.send(());
                        }
                    }
                    batch = ops;
                    conn = Some(c);
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit writer crashed; auditing stopped");
                    failed_tx.send_replace(true);
                    break;
                }
            }
        }
    });
    (AuditSink { tx, failed }, task)
}

/// Consecutive events of one session and kind, written as one row (at most
/// [`COALESCE_MAX`] bytes, unless one event alone is larger).
struct Pending<'a> {
    id: &'a str,
    elapsed: f64,
    kind: EventKind,
    parts: Vec<&'a Bytes>,
    len: usize,
}

impl Pending<'_> {
    /// Inserts the row with a `zeroblob` and writes the parts into it in place (incremental
    /// BLOB I/O): no joined copy, and no copy into a bound parameter.
    fn write(&self, conn: &Connection) -> rusqlite::Result<()> {
        let len = i64::try_from(self.len).unwrap_or(i64::MAX);
        conn.prepare_cached(
            "INSERT INTO events (session_id, elapsed, type, data)
             VALUES (?1, ?2, ?3, zeroblob(?4))",
        )?
        .execute(params![self.id, self.elapsed, self.kind.code(), len])?;
        let mut blob = conn.blob_open(
            rusqlite::MAIN_DB,
            "events",
            "data",
            conn.last_insert_rowid(),
            false,
        )?;
        let mut at = 0;
        for part in &self.parts {
            blob.write_at(part, at)?;
            at += part.len();
        }
        Ok(())
    }
}

/// Writes one batch in one transaction. Consecutive events of the same session and kind are
/// coalesced into one row (`elapsed` of the first), and each session's byte counters are
/// updated once per batch: a stream of 32 KiB packets costs one row per ~1 MiB instead of
/// one row and one `UPDATE` per packet. Every byte is kept, in order; only row boundaries
/// within one batch (events that were queued together, so milliseconds apart) are lost.
fn write_batch(conn: &Connection, ops: &[Op]) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| -> rusqlite::Result<()> {
        let mut pending: Option<Pending<'_>> = None;
        // (session, bytes_in, bytes_out), in first-seen order; a batch has few sessions.
        let mut counts: Vec<(&str, i64, i64)> = Vec::new();
        for op in ops {
            if let Op::Event {
                id,
                elapsed,
                kind,
                data,
            } = op
            {
                let len = i64::try_from(data.len()).unwrap_or(i64::MAX);
                let (add_in, add_out) = match kind {
                    EventKind::Input => (len, 0),
                    EventKind::Output => (0, len),
                    EventKind::Error => (0, 0),
                };
                match counts.iter_mut().find(|(s, _, _)| *s == id.as_str()) {
                    Some(c) => {
                        c.1 = c.1.saturating_add(add_in);
                        c.2 = c.2.saturating_add(add_out);
                    }
                    None => counts.push((id.as_str(), add_in, add_out)),
                }
                if let Some(p) = pending.as_mut()
                    && p.id == id.as_str()
                    && p.kind == *kind
                    && p.len + data.len() <= COALESCE_MAX
                {
                    p.parts.push(data);
                    p.len += data.len();
                    continue;
                }
                if let Some(p) = pending.take() {
                    p.write(conn)?;
                }
                pending = Some(Pending {
                    id,
                    elapsed: *elapsed,
                    kind: *kind,
                    parts: vec![data],
                    len: data.len(),
                });
                continue;
            }
            if let Some(p) = pending.take() {
                p.write(conn)?;
            }
            match op {
                Op::Open(s) => {
                    conn.prepare_cached(
                        "INSERT OR REPLACE INTO sessions
                         (id, user, connection, verb, command, start, status)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'open')",
                    )?
                    .execute(params![
                        s.id,
                        s.user,
                        s.connection,
                        s.verb,
                        s.command,
                        s.start
                    ])?;
                }
                Op::Close { id, end, exit_code } => {
                    conn.prepare_cached(
                        "UPDATE sessions SET status = 'done', \"end\" = ?1, exit_code = ?2
                         WHERE id = ?3",
                    )?
                    .execute(params![end, exit_code, id])?;
                }
                Op::Event { .. } | Op::Flush(_) => {}
            }
        }
        if let Some(p) = pending.take() {
            p.write(conn)?;
        }
        for (id, bytes_in, bytes_out) in counts {
            if bytes_in != 0 || bytes_out != 0 {
                conn.prepare_cached(
                    "UPDATE sessions SET bytes_in = bytes_in + ?1, bytes_out = bytes_out + ?2
                     WHERE id = ?3",
                )?
                .execute(params![bytes_in, bytes_out, id])?;
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn new_session(id: &str) -> NewSession {
        NewSession {
            id: id.into(),
            user: "dev".into(),
            connection: "local".into(),
            verb: "exec".into(),
            command: "bash".into(),
            start: unix_now(),
        }
    }

    #[test]
    fn a_batch_coalesces_consecutive_events_of_one_session_and_kind_and_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let store = AuditStore::create(&path).unwrap();
        let ev = |id: &str, elapsed: f64, kind, data: Vec<u8>| Op::Event {
            id: id.into(),
            elapsed,
            kind,
            data: Bytes::from(data),
        };
        let big = vec![7u8; COALESCE_MAX];
        let ops = vec![
            Op::Open(new_session("s1")),
            Op::Open(new_session("s2")),
            ev("s1", 0.1, EventKind::Output, b"a".to_vec()),
            ev("s1", 0.2, EventKind::Output, b"b".to_vec()),
            ev("s2", 0.3, EventKind::Output, b"x".to_vec()),
            ev("s1", 0.4, EventKind::Output, b"c".to_vec()),
            ev("s1", 0.5, EventKind::Input, b"i".to_vec()),
            ev("s1", 0.6, EventKind::Output, big.clone()),
            ev("s1", 0.7, EventKind::Output, b"d".to_vec()),
            Op::Close {
                id: "s1".into(),
                end: unix_now(),
                exit_code: 0,
            },
        ];
        write_batch(&store.conn, &ops).unwrap();

        let rows: Vec<(EventKind, Vec<u8>)> = store
            .events("s1")
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, e.data))
            .collect();
        let want = vec![
            (EventKind::Output, b"ab".to_vec()),
            // s2's event came between: a new row keeps the order across sessions.
            (EventKind::Output, b"c".to_vec()),
            (EventKind::Input, b"i".to_vec()),
            // A row stops at COALESCE_MAX bytes.
            (EventKind::Output, big.clone()),
            (EventKind::Output, b"d".to_vec()),
        ];
        assert!(
            rows == want,
            "rows: {:?}",
            rows.iter().map(|(k, d)| (k, d.len())).collect::<Vec<_>>()
        );
        let s1 = store.session("s1").unwrap().unwrap();
        assert_eq!((s1.bytes_in, s1.bytes_out), (1, 4 + big.len() as u64));
        assert_eq!((s1.status.as_str(), s1.exit_code), ("done", Some(0)));
        let s2 = store.session("s2").unwrap().unwrap();
        assert_eq!(
            (s2.bytes_in, s2.bytes_out, s2.status.as_str()),
            (0, 1, "open")
        );
    }

    #[tokio::test]
    async fn writes_while_open_and_recovers_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.db");
        let (sink, task) = spawn_writer(AuditStore::create(&path).unwrap());
        sink.open(new_session("s1")).await.unwrap();
        sink.event("s1", 0.1, EventKind::Input, Bytes::from_static(b"\x00in"))
            .await
            .unwrap();
        sink.event("s1", 0.2, EventKind::Output, Bytes::from_static(b"out\xff"))
            .await
            .unwrap();
        sink.flush().await.unwrap();

        let reader = AuditStore::open(&path).unwrap();
        let s = reader.session("s1").unwrap().unwrap();
        assert_eq!((s.status.as_str(), s.exit_code), ("open", None));
        assert_eq!((s.bytes_in, s.bytes_out), (3, 4));
        let events = reader.events("s1").unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].kind, EventKind::Input);
        assert_eq!(events[1].data, b"out\xff");

        // The "gateway" dies with s1 open; the next one marks it 254.
        drop(sink);
        task.await.unwrap();
        let mut again = AuditStore::create(&path).unwrap();
        assert_eq!(again.recover_open_sessions().unwrap(), 1);
        let s = again.session("s1").unwrap().unwrap();
        assert_eq!((s.status.as_str(), s.exit_code), ("done", Some(254)));
        assert!(s.end.is_some());
        let last = again.events("s1").unwrap().pop().unwrap();
        assert_eq!(last.kind, EventKind::Error);
        assert_eq!(again.list_sessions().unwrap().len(), 1);
    }

    #[test]
    fn opening_a_missing_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = AuditStore::open(dir.path().join("nope.db")).unwrap_err();
        assert!(matches!(e, AuditError::Missing(_)));
    }
}
