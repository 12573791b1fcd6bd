//! Child processes and what the bench reads about processes from `/proc`.
//!
//! Every process the bench starts is in its own process group and is killed (the whole group)
//! when its owner is dropped, so no exit path (error, panic, Ctrl-C) leaves one behind. The
//! agent is the exception that proves the rule: it is stopped with SIGTERM first, because its
//! own drain is what kills its sessions' processes. This module does not decide what to run.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// A short-lived child in its own process group; the group is killed when this is dropped.
#[derive(Debug)]
pub struct GroupChild {
    pub child: tokio::process::Child,
    pgid: Option<Pid>,
}

impl GroupChild {
    /// Spawns `cmd` in a new process group, killed on drop. stdin is /dev/null unless set.
    pub fn spawn(cmd: &mut tokio::process::Command) -> anyhow::Result<GroupChild> {
        cmd.process_group(0).kill_on_drop(true);
        let child = cmd.spawn().context("cannot start a child process")?;
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        Ok(GroupChild { child, pgid })
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// A long-lived child (sshd, the agent) managed synchronously, in its own process group so
/// that a Ctrl-C on the terminal reaches only the bench, which then stops it in order.
#[derive(Debug)]
pub struct Daemon {
    name: &'static str,
    child: Option<std::process::Child>,
    /// Whether SIGTERM (and a wait) comes before SIGKILL.
    graceful: Option<Duration>,
}

impl Daemon {
    /// Starts `cmd` (stdin /dev/null). `graceful`: how long a SIGTERM may take before SIGKILL;
    /// `None` kills the group at once.
    pub fn spawn(
        name: &'static str,
        cmd: &mut std::process::Command,
        graceful: Option<Duration>,
    ) -> anyhow::Result<Daemon> {
        use std::os::unix::process::CommandExt as _;
        cmd.stdin(Stdio::null()).process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Daemon {
            name,
            child: Some(child),
            graceful,
        })
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    pub fn child_mut(&mut self) -> Option<&mut std::process::Child> {
        self.child.as_mut()
    }

    /// Whether the process has exited (and its status, reaped).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Stops the process: SIGTERM and a bounded wait when graceful, then SIGKILL to the group.
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = i32::try_from(child.id()).ok().map(Pid::from_raw);
        if let (Some(grace), Some(pid)) = (self.graceful, pid) {
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        kill_and_reap(self.name, &mut child, pid);
    }
}

fn kill_and_reap(name: &str, child: &mut std::process::Child, pid: Option<Pid>) {
    if let Some(pid) = pid {
        let _ = killpg(pid, Signal::SIGKILL);
    }
    let _ = child.kill();
    if child.wait().is_err() {
        crate::note(&format!("could not reap {name}"));
    }
}

impl Drop for Daemon {
    /// The backstop for abnormal exits; the normal path is [`Daemon::stop`].
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = i32::try_from(child.id()).ok().map(Pid::from_raw);
        if let (Some(grace), Some(pid)) = (self.graceful, pid) {
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                // Not a synchronisation sleep: a bounded poll for the child's exit in a
                // destructor, where no runtime may be available.
                std::thread::park_timeout(Duration::from_millis(20));
            }
        }
        kill_and_reap(self.name, &mut child, pid);
    }
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// CPU time (user + system) in seconds that `pid` has used so far, and that its reaped
/// descendants have used (`cutime + cstime`: a parent that waits for its children inherits
/// their time, recursively).
pub fn cpu_seconds(pid: i32) -> Option<(f64, f64)> {
    use nix::unistd::{SysconfVar, sysconf};
    let ticks = sysconf(SysconfVar::CLK_TCK).ok().flatten()? as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 1..)?;
    // Fields after the name start at field 3 (state); utime, stime, cutime and cstime are
    // fields 14 to 17.
    let f: Vec<f64> = after
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    match f.as_slice() {
        [u, s, cu, cs] => Some(((u + s) / ticks, (cu + cs) / ticks)),
        _ => None,
    }
}

/// Processes whose parent is `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| parent_of(*child) == Some(pid))
        .collect()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Waits (at most `limit`) until `pid` has no child processes; false on timeout.
pub async fn wait_no_children(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if children_of(pid).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Raises the soft limit on open files to the hard limit (children inherit it). Returns the
/// new soft limit.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

/// The user name the bench runs as (sshd lets only that user in).
pub fn user_name() -> anyhow::Result<String> {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .context("cannot run id -un")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Whether `path` is an executable file.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
