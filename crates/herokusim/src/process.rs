//! Local processes standing in for dyno processes: spawning `bash -c` with pipes, merged
//! output or a PTY, each in its own process group; the table of live groups; and killing.
//!
//! It owns the invariant "no process outlives the emulator": every spawn returns a
//! [`GroupGuard`] that SIGKILLs the group when dropped, and [`ProcessTable::kill_all`] is the
//! backstop for shutdown and `Drop`. It does not decide when to kill (the dyno lifecycle does).

use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

/// Process groups started by this emulator and not yet reaped.
#[derive(Clone, Debug)]
pub(crate) struct ProcessTable {
    groups: Arc<Mutex<HashSet<i32>>>,
    /// The number of tracked groups, for tests that wait for a count instead of polling.
    count: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Default for ProcessTable {
    fn default() -> Self {
        ProcessTable {
            groups: Arc::default(),
            count: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }
}

impl ProcessTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, groups: &HashSet<i32>) {
        self.count.send_replace(groups.len());
    }

    /// Starts tracking a group; the guard kills and forgets it when dropped.
    pub fn track(&self, pgid: i32) -> GroupGuard {
        let mut groups = self.lock();
        groups.insert(pgid);
        self.publish(&groups);
        drop(groups);
        GroupGuard {
            pgid,
            table: self.clone(),
        }
    }

    /// The number of tracked groups, as it changes.
    pub fn watch_count(&self) -> tokio::sync::watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// The groups (leader pids) currently tracked.
    pub fn snapshot(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self.lock().iter().copied().collect();
        v.sort_unstable();
        v
    }

    /// Sends `sig` to every tracked group.
    pub fn kill_all(&self, sig: Signal) {
        for pgid in self.snapshot() {
            signal_group(pgid, sig);
        }
    }
}

/// Owns one process group: dropping it SIGKILLs whatever is left of the group.
#[derive(Debug)]
pub(crate) struct GroupGuard {
    pgid: i32,
    table: ProcessTable,
}

impl GroupGuard {
    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    pub fn signal(&self, sig: Signal) {
        signal_group(self.pgid, sig);
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(self.pgid, Signal::SIGKILL);
        let mut groups = self.table.lock();
        groups.remove(&self.pgid);
        self.table.publish(&groups);
    }
}

/// Signals a whole process group; a group that is already gone is not an error.
pub(crate) fn signal_group(pgid: i32, sig: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), sig);
    }
}

/// What to run and where.
pub(crate) struct ProcSpec<'a> {
    /// `bash -c <command>`; `None` runs a plain `bash` (a shell reading its input).
    pub command: Option<&'a str>,
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
}

fn bash_args(spec: &ProcSpec<'_>) -> Vec<String> {
    match spec.command {
        Some(cmd) => vec!["-c".to_owned(), cmd.to_owned()],
        None => Vec::new(),
    }
}

fn base_command(spec: &ProcSpec<'_>) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args(bash_args(spec))
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(spec.cwd)
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

fn leader(child: &Child) -> io::Result<i32> {
    child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| io::Error::other("the process exited before it could be tracked"))
}

/// A spawned process and the guard of its group.
pub(crate) struct Spawned {
    pub child: Child,
    pub guard: GroupGuard,
}

/// No input, output discarded (formation dynos, detached one-offs).
pub(crate) fn spawn_null(table: &ProcessTable, spec: &ProcSpec<'_>) -> io::Result<Spawned> {
    let mut cmd = base_command(spec);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn()?;
    let guard = table.track(leader(&child)?);
    Ok(Spawned { child, guard })
}

/// Piped stdin; stdout and stderr merged into one pipe (the no-tty rendezvous stream).
pub(crate) fn spawn_merged(
    table: &ProcessTable,
    spec: &ProcSpec<'_>,
) -> io::Result<(Spawned, ChildStdin, pipe::Receiver)> {
    let (reader, writer) = io::pipe()?;
    let writer2 = writer.try_clone()?;
    let mut cmd = base_command(spec);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2));
    let mut child = cmd.spawn()?;
    // The command holds our copies of the write end; drop it so EOF arrives when the
    // process group closes its copies.
    drop(cmd);
    let guard = table.track(leader(&child)?);
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("no stdin pipe"))?;
    let output = pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
    Ok((Spawned { child, guard }, stdin, output))
}

/// Piped stdin, stdout and stderr kept apart (SSH exec without a PTY).
pub(crate) fn spawn_split(
    table: &ProcessTable,
    spec: &ProcSpec<'_>,
) -> io::Result<(Spawned, ChildStdin, ChildStdout, ChildStderr)> {
    let mut cmd = base_command(spec);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let guard = table.track(leader(&child)?);
    let missing = || io::Error::other("missing pipe");
    let stdin = child.stdin.take().ok_or_else(missing)?;
    let stdout = child.stdout.take().ok_or_else(missing)?;
    let stderr = child.stderr.take().ok_or_else(missing)?;
    Ok((Spawned { child, guard }, stdin, stdout, stderr))
}

/// Under a new PTY of `rows`×`cols`; the process is a session leader with the PTY as its
/// controlling terminal.
pub(crate) fn spawn_pty(
    table: &ProcessTable,
    spec: &ProcSpec<'_>,
    rows: u16,
    cols: u16,
) -> io::Result<(Spawned, pty_process::Pty)> {
    let (pty, pts) = pty_process::open().map_err(pty_err)?;
    pty.resize(pty_process::Size::new(rows, cols))
        .map_err(pty_err)?;
    let cmd = pty_process::Command::new("bash")
        .args(bash_args(spec))
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(spec.cwd)
        .kill_on_drop(true);
    let child = cmd.spawn(pts).map_err(pty_err)?;
    let guard = table.track(leader(&child)?);
    Ok((Spawned { child, guard }, pty))
}

fn pty_err(e: pty_process::Error) -> io::Error {
    match e {
        pty_process::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// Stops a process: `first` to the group, up to `grace` for it to exit, then SIGKILL and a
/// bounded wait. Returns the exit status if it was collected.
pub(crate) async fn terminate(
    spawned: &mut Spawned,
    first: Signal,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    spawned.guard.signal(first);
    if let Ok(Ok(status)) = tokio::time::timeout(grace, spawned.child.wait()).await {
        spawned.guard.signal(Signal::SIGKILL);
        return Some(status);
    }
    spawned.guard.signal(Signal::SIGKILL);
    match tokio::time::timeout(Duration::from_secs(5), spawned.child.wait()).await {
        Ok(Ok(status)) => Some(status),
        _ => None,
    }
}
