//! The audit store: one SQLite file with a `sessions` table, plus one append-only event file
//! per session in a private directory next to it, written while sessions run, and read by
//! `dynoctl sessions` / `dynoctl audit` (directly from the files).
//!
//! Layout (times are Unix seconds as REAL, UTC):
//! * `sessions(id, user, connection, verb, command, start, "end", exit_code, status,
//!   bytes_in, bytes_out)`; `status` is `open` or `done`.
//! * `<audit_db>.events/<session id>.log`: the session's events, in order, each a 13-byte
//!   header (the type byte, `elapsed` as an `f64`, the data length as a `u32`, little-endian)
//!   and the raw data. `elapsed` is seconds since the session start, the type is `i` (client
//!   input: `AgentExecWriteStdin` / `AgentTerminalWriteStdin` / `AgentTCPConnectionWrite`
//!   payloads), `o` (`ClientWriteStdout` **and** `ClientWriteStderr`, as hoop records them) or
//!   `e` (the close error text). A reader stops at an incomplete last record (one being
//!   written, or torn by a crash; the next gateway start cuts it off before appending).
//! * `events(seq, session_id, elapsed, type, data)`: where earlier versions kept events; still
//!   read (before the file) so that older databases keep their history.
//!
//! Why files and not rows: SQLite in WAL mode writes every byte twice (WAL, then checkpoint)
//! and checksums it, which made the audit the development gateway's main cost per byte
//! (docs/performance.md). An append is one `writev` into the page cache. Durability is the
//! same as before: SQLite ran with `synchronous = NORMAL`, which does not sync commits either.
//!
//! Writes go through [`AuditSink`], a bounded queue to one writer task that writes whatever
//! is queued (at most [`BATCH`] operations at a time, session rows in one transaction) as soon
//! as it can, so rows and events appear while the session runs. The database is in WAL mode so
//! readers never block the writer. Connection secret values never reach this module: only the
//! session's input, output and close text do (that is the audit's purpose).
//!
//! This module does not decide what to record; the session task does.

use std::collections::HashMap;
use std::fs::File;
use std::io::{IoSlice, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf as _, Bytes};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot, watch};

/// Operations queued for the writer. Overflow policy: **backpressure**. A full queue makes
/// session relays wait (and so slows the streams they relay) rather than drop audit events;
/// memory stays bounded at this many operations (each at most one 17 MiB packet payload).
pub const QUEUE: usize = 1024;

/// Most operations committed in one transaction.
pub const BATCH: usize = 256;

/// Largest record that consecutive events are coalesced into.
const COALESCE_MAX: usize = 1 << 20;

/// An event record's header: type (1), elapsed (`f64`, 8), data length (`u32`, 4).
const RECORD_HEADER: usize = 13;

/// Event files the writer keeps open at most (closed at session end; beyond this, all are
/// closed and reopened on demand).
const OPEN_FILES: usize = 1024;

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
    #[error("audit event file {path}: {source}")]
    Events {
        path: PathBuf,
        source: std::io::Error,
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

    fn byte(self) -> u8 {
        self.code().as_bytes().first().copied().unwrap_or(b'e')
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
        let events = events_dir(&path);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&events)
            .and_then(|()| {
                std::fs::set_permissions(&events, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|source| AuditError::CreateDir {
                path: events.clone(),
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
    /// why. Called when the gateway starts: those sessions died with the previous process (an
    /// event it was writing when it died is cut off first).
    pub fn recover_open_sessions(&mut self) -> Result<usize, AuditError> {
        let now = unix_now();
        let open: Vec<(String, f64)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id, start FROM sessions WHERE status = 'open'")
                .map_err(self.err())?;
            stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(self.err())?
                .collect::<Result<_, _>>()
                .map_err(self.err())?
        };
        let text = b"gateway restarted before the session ended";
        for (id, start) in &open {
            let path = self.events_path(id);
            let events_err = |source| AuditError::Events {
                path: path.clone(),
                source,
            };
            let mut file = open_event_file(&path).map_err(events_err)?;
            let valid = complete_len_of(&path).map_err(events_err)?;
            file.set_len(valid).map_err(events_err)?;
            let header = record_header(EventKind::Error, (now - start).max(0.0), text.len());
            write_all_vectored(&mut file, &mut [IoSlice::new(&header), IoSlice::new(text)])
                .map_err(events_err)?;
        }
        self.conn
            .execute(
                "UPDATE sessions SET status = 'done', exit_code = ?1, \"end\" = ?2
                 WHERE status = 'open'",
                params![INTERRUPTED_EXIT_CODE, now],
            )
            .map_err(self.err())
    }

    /// Deletes every ended session with its events (benchmarks between runs; retention).
    /// Returns how many were deleted.
    pub fn purge_done(&mut self) -> Result<usize, AuditError> {
        let done: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id FROM sessions WHERE status = 'done'")
                .map_err(self.err())?;
            stmt.query_map([], |row| row.get(0))
                .map_err(self.err())?
                .collect::<Result<_, _>>()
                .map_err(self.err())?
        };
        for id in &done {
            let path = self.events_path(id);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(AuditError::Events { path, source }),
            }
        }
        self.conn
            .execute_batch(
                "DELETE FROM events WHERE session_id IN
                     (SELECT id FROM sessions WHERE status = 'done');
                 DELETE FROM sessions WHERE status = 'done';",
            )
            .map_err(self.err())?;
        // Hand the freed pages back to the main file and truncate the WAL.
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(self.err())?;
        Ok(done.len())
    }

    /// The file that holds session `id`'s events.
    pub fn events_path(&self, id: &str) -> PathBuf {
        event_file(&events_dir(&self.path), id)
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
        // Rows written by earlier versions come first; a session has one or the other.
        let mut stmt = self
            .conn
            .prepare("SELECT elapsed, type, data FROM events WHERE session_id = ?1 ORDER BY seq")
            .map_err(self.err())?;
        let mut events = stmt
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
        let path = self.events_path(id);
        match std::fs::read(&path) {
            Ok(raw) => events.extend(parse_records(&raw)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(AuditError::Events { path, source }),
        }
        Ok(events)
    }
}

/// Where the event files of the database at `db` live: `<db>.events`, a 0700 directory.
fn events_dir(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_owned();
    name.push(".events");
    db.with_file_name(name)
}

/// Session `id`'s event file in `dir`. Gateway session ids are UUIDs and are used as they
/// are; any other id is hex-encoded (with an `x` prefix), so no id can name a path elsewhere.
fn event_file(dir: &Path, id: &str) -> PathBuf {
    let plain = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        return dir.join(format!("{id}.log"));
    }
    let mut name = String::with_capacity(2 * id.len() + 5);
    name.push('x');
    for b in id.bytes() {
        name.push_str(&format!("{b:02x}"));
    }
    name.push_str(".log");
    dir.join(name)
}

/// Opens (creating, 0600) an event file for appending.
fn open_event_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

fn record_header(kind: EventKind, elapsed: f64, len: usize) -> [u8; RECORD_HEADER] {
    let mut h = [0u8; RECORD_HEADER];
    let (k, rest) = h.split_at_mut(1);
    let (e, l) = rest.split_at_mut(8);
    k.copy_from_slice(&[kind.byte()]);
    e.copy_from_slice(&elapsed.to_le_bytes());
    // A record holds one event of at most 17 MiB, or coalesced events of at most 1 MiB.
    l.copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    h
}

/// The complete records at the start of `raw` as (type, elapsed, data); an incomplete last
/// one is left out.
fn records(mut raw: &[u8]) -> impl Iterator<Item = (EventKind, f64, &[u8])> {
    std::iter::from_fn(move || {
        if raw.len() < RECORD_HEADER {
            return None;
        }
        let mut rest = raw;
        let kind = match rest.get_u8() {
            b'i' => EventKind::Input,
            b'o' => EventKind::Output,
            _ => EventKind::Error,
        };
        let elapsed = rest.get_f64_le();
        let len = rest.get_u32_le() as usize;
        let data = rest.get(..len)?;
        raw = rest.get(len..).unwrap_or_default();
        Some((kind, elapsed, data))
    })
}

fn parse_records(raw: &[u8]) -> impl Iterator<Item = EventRecord> {
    records(raw).map(|(kind, elapsed, data)| EventRecord {
        elapsed,
        kind,
        data: data.to_vec(),
    })
}

/// The length of the complete records at the start of the event file at `path`, found by
/// reading their headers only (through a buffer, so that many small records cost few reads): a
/// session's log can be far larger than memory.
fn complete_len_of(path: &Path) -> std::io::Result<u64> {
    use std::io::Read as _;
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut reader = std::io::BufReader::with_capacity(64 * 1024, file);
    let header_len = RECORD_HEADER as u64;
    let mut at = 0u64;
    let mut header = [0u8; RECORD_HEADER];
    while size.saturating_sub(at) >= header_len {
        reader.read_exact(&mut header)?;
        let [.., a, b, c, d] = header;
        let len = u32::from_le_bytes([a, b, c, d]);
        let next = at + header_len + u64::from(len);
        if next > size {
            break;
        }
        reader.seek_relative(i64::from(len))?;
        at = next;
    }
    Ok(at)
}

/// Writes every byte of `bufs` (one `writev` per call; `File` caps the count at `IOV_MAX`).
fn write_all_vectored(file: &mut File, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
        let path = store.path.clone();
        let mut writer = Some(Writer::new(store));
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            batch.clear();
            if rx.recv_many(&mut batch, BATCH).await == 0 {
                break;
            }
            let Some(mut w) = writer.take() else { break };
            let ops = std::mem::take(&mut batch);
            // SQLite and file writes block: run them off the async workers.
            let joined = tokio::task::spawn_blocking(move || {
                let result = w.write_batch(&ops);
                (w, ops, result)
            })
            .await;
            match joined {
                Ok((w, mut ops, result)) => {
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
                    writer = Some(w);
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

/// The writer task's state: the database connection and the open event files.
struct Writer {
    store: AuditStore,
    files: HashMap<String, File>,
    /// Sessions whose event file failed: nothing more is appended to them, so that no record
    /// follows a torn one (the failure closed the sessions already).
    broken: std::collections::HashSet<String>,
}

impl Writer {
    fn new(store: AuditStore) -> Writer {
        Writer {
            store,
            files: HashMap::new(),
            broken: std::collections::HashSet::new(),
        }
    }

    /// Appends one record to session `id`'s event file.
    fn append(&mut self, p: &Pending<'_>) -> Result<(), AuditError> {
        if self.broken.contains(p.id) {
            return Ok(());
        }
        let path = self.store.events_path(p.id);
        let result = (|| {
            if !self.files.contains_key(p.id) {
                if self.files.len() >= OPEN_FILES {
                    self.files.clear();
                }
                self.files.insert(p.id.to_owned(), open_event_file(&path)?);
            }
            let file = self
                .files
                .get_mut(p.id)
                .ok_or_else(|| std::io::Error::other("event file not open"))?;
            let header = record_header(p.kind, p.elapsed, p.len);
            let mut slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&header))
                .chain(p.parts.iter().map(|part| IoSlice::new(part)))
                .collect();
            write_all_vectored(file, &mut slices)
        })();
        result.map_err(|source| {
            self.files.remove(p.id);
            self.broken.insert(p.id.to_owned());
            AuditError::Events { path, source }
        })
    }

    /// Writes one batch: events appended to their sessions' files, session rows and counters in
    /// one transaction. Consecutive events of the same session and kind are coalesced into one
    /// record (`elapsed` of the first), and each session's byte counters are updated once per
    /// batch: a stream of 32 KiB packets costs one `writev` per ~1 MiB and one `UPDATE` per
    /// batch. Every byte is kept, in order; only record boundaries within one batch (events
    /// that were queued together, so milliseconds apart) are lost.
    fn write_batch(&mut self, ops: &[Op]) -> Result<(), AuditError> {
        let path = self.store.path.clone();
        let conn_err = |source| AuditError::Sqlite {
            path: path.clone(),
            source,
        };
        self.store
            .conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(conn_err)?;
        let result = self.write_ops(ops);
        match result {
            Ok(()) => self.store.conn.execute_batch("COMMIT").map_err(conn_err),
            Err(e) => {
                let _ = self.store.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn write_ops(&mut self, ops: &[Op]) -> Result<(), AuditError> {
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
                    self.append(&p)?;
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
                self.append(&p)?;
            }
            let conn = &self.store.conn;
            let sql = |source| AuditError::Sqlite {
                path: self.store.path.clone(),
                source,
            };
            match op {
                Op::Open(s) => {
                    conn.prepare_cached(
                        "INSERT OR REPLACE INTO sessions
                         (id, user, connection, verb, command, start, status)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'open')",
                    )
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            s.id,
                            s.user,
                            s.connection,
                            s.verb,
                            s.command,
                            s.start
                        ])
                    })
                    .map_err(sql)?;
                }
                Op::Close { id, end, exit_code } => {
                    conn.prepare_cached(
                        "UPDATE sessions SET status = 'done', \"end\" = ?1, exit_code = ?2
                         WHERE id = ?3",
                    )
                    .and_then(|mut stmt| stmt.execute(params![end, exit_code, id]))
                    .map_err(sql)?;
                    self.files.remove(id);
                    self.broken.remove(id);
                }
                Op::Event { .. } | Op::Flush(_) => {}
            }
        }
        if let Some(p) = pending.take() {
            self.append(&p)?;
        }
        for (id, bytes_in, bytes_out) in counts {
            if bytes_in != 0 || bytes_out != 0 {
                self.store
                    .conn
                    .prepare_cached(
                        "UPDATE sessions SET bytes_in = bytes_in + ?1, bytes_out = bytes_out + ?2
                         WHERE id = ?3",
                    )
                    .and_then(|mut stmt| stmt.execute(params![bytes_in, bytes_out, id]))
                    .map_err(|source| AuditError::Sqlite {
                        path: self.store.path.clone(),
                        source,
                    })?;
            }
        }
        Ok(())
    }
}

/// Consecutive events of one session and kind, written as one record (at most
/// [`COALESCE_MAX`] bytes, unless one event alone is larger).
struct Pending<'a> {
    id: &'a str,
    elapsed: f64,
    kind: EventKind,
    parts: Vec<&'a Bytes>,
    len: usize,
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
        let mut writer = Writer::new(store);
        writer.write_batch(&ops).unwrap();
        let store = writer.store;

        let rows: Vec<(EventKind, Vec<u8>)> = store
            .events("s1")
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, e.data))
            .collect();
        let want = vec![
            (EventKind::Output, b"ab".to_vec()),
            // s2's event came between: a new record keeps the order across sessions.
            (EventKind::Output, b"c".to_vec()),
            (EventKind::Input, b"i".to_vec()),
            // A record stops at COALESCE_MAX bytes.
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
    fn a_torn_last_record_is_not_read_and_recovery_cuts_it_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let mut writer = Writer::new(AuditStore::create(&path).unwrap());
        let out = Bytes::from_static(b"whole");
        writer
            .write_batch(&[
                Op::Open(new_session("s1")),
                Op::Event {
                    id: "s1".into(),
                    elapsed: 0.5,
                    kind: EventKind::Output,
                    data: out.clone(),
                },
            ])
            .unwrap();
        let file = writer.store.events_path("s1");
        drop(writer);
        // The gateway died in the middle of its next record.
        let mut torn = record_header(EventKind::Output, 0.6, 100).to_vec();
        torn.extend_from_slice(b"part");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap()
            .write_all(&torn)
            .unwrap();

        let mut store = AuditStore::create(&path).unwrap();
        let events = store.events("s1").unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].elapsed, &events[0].data[..]), (0.5, &out[..]));
        assert_eq!(store.recover_open_sessions().unwrap(), 1);
        let events = store.events("s1").unwrap();
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::Output, EventKind::Error]);
        assert_eq!(
            events[1].data,
            b"gateway restarted before the session ended"
        );
    }

    /// Recovery reads record headers, not whole logs: here 32 records of 4 GiB each (a sparse
    /// file of 128 GiB, far more than this machine's memory) and a torn last one.
    #[test]
    fn recovery_of_a_log_larger_than_memory_reads_only_its_headers() {
        use std::os::unix::fs::FileExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let mut writer = Writer::new(AuditStore::create(&path).unwrap());
        writer.write_batch(&[Op::Open(new_session("big"))]).unwrap();
        let file_path = writer.store.events_path("big");
        drop(writer);

        // Not `open_event_file`: Linux appends every `pwrite` to an `O_APPEND` file.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&file_path)
            .unwrap();
        let record = RECORD_HEADER as u64 + u64::from(u32::MAX);
        let whole = 32 * record;
        for k in 0..32 {
            let header = record_header(EventKind::Output, 1.0, u32::MAX as usize);
            file.write_all_at(&header, k * record).unwrap();
        }
        let torn = record_header(EventKind::Output, 2.0, 100);
        file.write_all_at(&torn, whole).unwrap();
        file.set_len(whole + RECORD_HEADER as u64 + 4).unwrap();
        drop(file);

        let mut store = AuditStore::create(&path).unwrap();
        assert_eq!(store.recover_open_sessions().unwrap(), 1);
        let text = b"gateway restarted before the session ended";
        let len = std::fs::metadata(&file_path).unwrap().len();
        assert_eq!(len, whole + (RECORD_HEADER + text.len()) as u64);
        let mut tail = vec![0u8; text.len()];
        File::open(&file_path)
            .unwrap()
            .read_exact_at(&mut tail, whole + RECORD_HEADER as u64)
            .unwrap();
        assert_eq!(tail, text);
        let s = store.session("big").unwrap().unwrap();
        assert_eq!((s.status.as_str(), s.exit_code), ("done", Some(254)));
    }

    #[test]
    fn event_files_stay_in_their_directory_and_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = AuditStore::create(dir.path().join("audit.db")).unwrap();
        let events = dir.path().join("audit.db.events");
        assert_eq!(store.events_path("0f6c-ab_1"), events.join("0f6c-ab_1.log"));
        assert_eq!(store.events_path("../x"), events.join("x2e2e2f78.log"));
        assert_eq!(store.events_path(""), events.join("x.log"));
        let mode = std::fs::metadata(&events).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        let mut writer = Writer::new(store);
        writer
            .write_batch(&[Op::Event {
                id: "s".into(),
                elapsed: 0.0,
                kind: EventKind::Input,
                data: Bytes::from_static(b"x"),
            }])
            .unwrap();
        let mode = std::fs::metadata(events.join("s.log"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn an_event_file_that_cannot_be_written_fails_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let mut writer = Writer::new(AuditStore::create(&path).unwrap());
        // The events directory is replaced by a plain file: no event file can be opened.
        let events = dir.path().join("audit.db.events");
        std::fs::remove_dir(&events).unwrap();
        std::fs::write(&events, b"").unwrap();
        let e = writer
            .write_batch(&[
                Op::Open(new_session("s1")),
                Op::Event {
                    id: "s1".into(),
                    elapsed: 0.0,
                    kind: EventKind::Output,
                    data: Bytes::from_static(b"lost"),
                },
            ])
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("audit event file {}", events.display())),
            "{e}"
        );
        // The transaction was rolled back with it.
        assert_eq!(writer.store.session("s1").unwrap(), None);
    }

    #[test]
    fn purging_removes_ended_sessions_and_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::new(AuditStore::create(dir.path().join("audit.db")).unwrap());
        let ev = |id: &str| Op::Event {
            id: id.into(),
            elapsed: 0.0,
            kind: EventKind::Output,
            data: Bytes::from_static(b"o"),
        };
        writer
            .write_batch(&[
                Op::Open(new_session("done")),
                Op::Open(new_session("live")),
                ev("done"),
                ev("live"),
                Op::Close {
                    id: "done".into(),
                    end: unix_now(),
                    exit_code: 0,
                },
            ])
            .unwrap();
        let mut store = writer.store;
        assert!(store.events_path("done").exists());
        assert_eq!(store.purge_done().unwrap(), 1);
        assert!(!store.events_path("done").exists());
        assert_eq!(store.session("done").unwrap(), None);
        assert_eq!(store.events("live").unwrap().len(), 1);
    }

    #[test]
    fn opening_a_missing_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = AuditStore::open(dir.path().join("nope.db")).unwrap_err();
        assert!(matches!(e, AuditError::Missing(_)));
    }
}
