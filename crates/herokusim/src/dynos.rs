//! Dyno lifecycle: booting formation dynos as real processes, restarting them, creating and
//! expiring one-off dynos, the env each kind of process gets, and which dynos can be exec'd.
//!
//! It owns the state transitions (`starting` → `up` → gone for one-offs; `up`/`crashed` for
//! formation dynos), the rule that a dyno's exec agent exists only if the feature was on
//! when it booted, and each dyno's `PORT`. It does not speak HTTP, TLS or SSH; the servers call
//! in here.
//!
//! **Ports.** Heroku gives every dyno `PORT` inside its own network namespace, so all of them
//! can use the same number. herokusim's dynos share the machine's loopback (it does not isolate
//! network namespaces), so each dyno gets its own real port instead: a free `127.0.0.1` port
//! chosen when it first boots, kept across restarts of a formation dyno. A `direct-tcpip`
//! channel of the SSH proxy to `127.0.0.1:PORT` therefore reaches that dyno's listener (and,
//! since nothing is isolated, any other loopback port reaches whatever listens there). The port
//! is free when chosen; something else on the machine may take it before the dyno binds it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::DynoConfig;
use crate::process::{ProcSpec, spawn_null, terminate};
use crate::state::{App, Dyno, DynoKind, Shared, SharedRef, State};

/// Env every dyno process starts from: never the emulator's own env (which may hold secrets),
/// only `PATH` from it.
fn base_env(app: &App, dyno: &Dyno) -> Vec<(String, String)> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned());
    vec![
        ("PATH".to_owned(), path),
        ("HOME".to_owned(), app.home.display().to_string()),
        ("DYNO".to_owned(), dyno.name.clone()),
        ("PORT".to_owned(), dyno.port.to_string()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
    ]
}

fn merge(env: &mut Vec<(String, String)>, extra: &BTreeMap<String, String>) {
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v.clone()));
    }
}

/// A free port on 127.0.0.1 for a dyno's `PORT`: the kernel picks one for a socket that is
/// closed at once. Without one (no loopback at all), Heroku's usual 5000.
fn free_port() -> u16 {
    match std::net::TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot find a free port for a dyno: using 5000");
            5000
        }
    }
}

/// The port of a formation dyno: the one it had before a restart, else a new free one.
fn formation_port(app: &mut App, dyno: &str) -> u16 {
    *app.ports.entry(dyno.to_owned()).or_insert_with(free_port)
}

/// The `PORT` a dyno's own process sees (its config vars or env may override the platform's).
pub(crate) fn effective_port(app: &App, dyno: &Dyno) -> Option<u16> {
    process_env(app, dyno, &dyno.env)
        .iter()
        .rev()
        .find(|(k, _)| k == "PORT")
        .and_then(|(_, v)| v.parse().ok())
}

/// Env of a dyno's own process (formation or one-off): base, config vars, the dyno's env.
pub(crate) fn process_env(
    app: &App,
    dyno: &Dyno,
    own: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut env = base_env(app, dyno);
    merge(&mut env, &app.config_vars);
    merge(&mut env, own);
    env
}

/// Env of an exec session on a dyno: like Heroku, without the app's config vars.
pub(crate) fn exec_env(app: &App, dyno: &Dyno) -> Vec<(String, String)> {
    let mut env = base_env(app, dyno);
    merge(&mut env, &dyno.env);
    env
}

/// The command a one-off dyno runs: on a Cloud Native Buildpack app (stack `cnb`) a leading
/// `launcher ` is the CNB launcher, which sets up the buildpacks' environment and runs the rest
/// (a process type or a shell command); elsewhere `launcher` is an ordinary word, and so a
/// command that is not found, as on Cedar (heroku-protocols.md §8.1).
pub(crate) fn resolve_command(app: &crate::state::App, command: &str) -> String {
    match command.strip_prefix("launcher ") {
        Some(rest) if app.stack == "cnb" => resolve_process_type(&app.formation, rest.trim_start()),
        _ => resolve_process_type(&app.formation, command),
    }
}

/// Resolves a leading Procfile process type, as the runtime does: only when the first token
/// is a process type and is followed by whitespace or ends the command (so `web;` is not).
pub(crate) fn resolve_process_type(formation: &[DynoConfig], command: &str) -> String {
    let (first, rest) = match command.find(char::is_whitespace) {
        Some(i) => command.split_at(i),
        None => (command, ""),
    };
    for d in formation {
        if d.process_type() == first
            && let Some(cmd) = &d.command
        {
            return format!("{cmd}{rest}");
        }
    }
    command.to_owned()
}

/// Boots one formation dyno: spawns its process (if it has a command) and a supervisor that
/// kills it when the dyno's token fires, or marks the dyno `crashed` if it exits on its own.
pub(crate) fn boot_formation(
    shared: &SharedRef,
    state: &mut State,
    app_name: &str,
    cfg: &DynoConfig,
) {
    state.next_boot += 1;
    let boot = state.next_boot;
    let Some(app) = state.apps.get_mut(app_name) else {
        return;
    };
    let cancel = shared.cancel.child_token();
    let now = SystemTime::now();
    let port = formation_port(app, &cfg.name);
    let mut dyno = Dyno {
        id: Uuid::new_v4(),
        name: cfg.name.clone(),
        kind: DynoKind::Formation,
        process_type: cfg.process_type().to_owned(),
        command: cfg.command.clone().unwrap_or_default(),
        size: cfg.size.clone(),
        state: "up",
        attach_url: None,
        created_at: now,
        updated_at: now,
        env: cfg.env.clone(),
        force_no_tty: false,
        exec_agent: app.exec_enabled,
        boot,
        port,
        cancel: cancel.clone(),
        stopped: None,
    };
    if let Some(command) = &cfg.command {
        let env = process_env(app, &dyno, &cfg.env);
        let spec = ProcSpec {
            command: Some(command),
            env: &env,
            cwd: &app.home,
        };
        match spawn_null(&shared.procs, &spec) {
            Ok(mut spawned) => {
                let (tx, rx) = tokio::sync::watch::channel(false);
                dyno.stopped = Some(rx);
                let shared2 = shared.clone();
                let app_name = app_name.to_owned();
                let dyno_name = cfg.name.clone();
                tracing::info!(app = %app_name, dyno = %dyno_name, pid = spawned.guard.pgid(), port, "dyno up");
                shared.tracker.spawn(async move {
                    tokio::select! {
                        status = spawned.child.wait() => {
                            tracing::warn!(app = %app_name, dyno = %dyno_name, status = ?status.ok(), "dyno process exited: crashed");
                            let mut st = shared2.state();
                            if let Some(d) = st.apps.get_mut(&app_name).and_then(|a| a.dynos.get_mut(&dyno_name))
                                && d.boot == boot
                            {
                                d.set_state("crashed");
                                d.exec_agent = false;
                            }
                        }
                        () = cancel.cancelled() => {
                            let grace = shared2.kill_grace();
                            terminate(&mut spawned, Signal::SIGTERM, grace).await;
                        }
                    }
                    drop(spawned);
                    let _ = tx.send(true);
                });
            }
            Err(e) => {
                tracing::warn!(app = %app_name, dyno = %cfg.name, error = %e, "cannot start the dyno's process: crashed");
                dyno.state = "crashed";
                dyno.exec_agent = false;
            }
        }
    }
    app.dynos.insert(cfg.name.clone(), dyno);
}

/// Which dynos a restart covers.
#[derive(Clone, Debug)]
pub(crate) enum RestartScope {
    All,
    Dyno(String),
    Type(String),
}

/// Restarts (formation) or stops (one-off) the dynos in scope, waiting until the old processes
/// are gone and the new ones started. Returns false if nothing matched.
pub(crate) async fn restart(shared: &SharedRef, app_name: &str, scope: &RestartScope) -> bool {
    let mut stopping = Vec::new();
    let mut reboot = Vec::new();
    {
        let mut st = shared.state();
        let Some(app) = st.apps.get_mut(app_name) else {
            return false;
        };
        let names: Vec<String> = app
            .dynos
            .values()
            .filter(|d| match scope {
                RestartScope::All => true,
                RestartScope::Dyno(n) => &d.name == n || d.id.to_string() == *n,
                RestartScope::Type(t) => d.kind == DynoKind::Formation && &d.process_type == t,
            })
            .map(|d| d.name.clone())
            .collect();
        for name in names {
            if let Some(d) = app.dynos.remove(&name) {
                d.cancel.cancel();
                stopping.push(d.stopped);
                if d.kind == DynoKind::Formation
                    && let Some(cfg) = app.formation.iter().find(|c| c.name == name)
                {
                    reboot.push(cfg.clone());
                }
            }
        }
        // Reservations for the old boots and secrets of removed one-offs are void.
        let live: Vec<(String, u64)> = app
            .dynos
            .values()
            .map(|d| (d.name.clone(), d.boot))
            .collect();
        let live_ids: Vec<Uuid> = app.dynos.values().map(|d| d.id).collect();
        st.reservations.retain(|r| {
            r.app != app_name || live.iter().any(|(n, b)| *n == r.dyno && *b == r.boot)
        });
        st.secrets
            .retain(|_, (a, id)| a != app_name || live_ids.contains(id));
    }
    let matched = !stopping.is_empty();
    let bound = shared.kill_grace() + Duration::from_secs(6);
    for rx in stopping.into_iter().flatten() {
        let mut rx = rx;
        let _ = tokio::time::timeout(bound, rx.wait_for(|stopped| *stopped)).await;
    }
    let mut st = shared.state();
    for cfg in reboot {
        let exists = st
            .apps
            .get(app_name)
            .is_some_and(|a| a.dynos.contains_key(&cfg.name));
        if !exists {
            boot_formation(shared, &mut st, app_name, &cfg);
        }
    }
    matched
}

/// What `POST /apps/{app}/dynos` asked for, validated.
#[derive(Debug)]
pub(crate) struct OneOffRequest {
    pub command: String,
    pub attach: bool,
    pub env: BTreeMap<String, String>,
    pub force_no_tty: bool,
    pub size: Option<String>,
    pub process_type: String,
    pub time_to_live: Option<Duration>,
}

/// Creates a one-off dyno in state `starting` and returns its JSON. With `attach` it waits for
/// the rendezvous client; without, its process starts now with output discarded.
pub(crate) fn create_one_off(
    shared: &SharedRef,
    app_name: &str,
    req: OneOffRequest,
) -> Option<serde_json::Value> {
    let cancel = shared.cancel.child_token();
    let (json, id, name) = {
        let mut st = shared.state();
        st.next_run += 1;
        let n = st.next_run;
        let rendezvous_port = shared.rendezvous_port;
        let https_port = shared.https_port;
        let secret = Uuid::new_v4().simple().to_string();
        let https = st.apps.get(app_name)?.https_attach();
        // Fir and Shield apps attach over HTTPS (`Upgrade: tcp`, then SSH; heroku-protocols.md
        // §3.9, `attach.rs`); the others over rendezvous.
        let id = Uuid::new_v4();
        let attach_url = if !req.attach {
            None
        } else if https {
            let g = crate::attach::Grant {
                app: app_name.to_owned(),
                dyno_id: id,
                command: req.command.clone(),
                env: req.env.clone(),
                one_off: true,
                expires: std::time::Instant::now() + shared.attach_secret_ttl(),
            };
            Some(crate::attach::grant(&mut st, https_port, g))
        } else {
            Some(format!("rendezvous://127.0.0.1:{rendezvous_port}/{secret}"))
        };
        let app = st.apps.get_mut(app_name)?;
        let now = SystemTime::now();
        let name = format!("{}.{n}", req.process_type);
        let dyno = Dyno {
            id,
            name: name.clone(),
            kind: DynoKind::OneOff,
            process_type: req.process_type.clone(),
            command: req.command.clone(),
            size: req.size.clone().unwrap_or_else(|| "Basic".to_owned()),
            state: "starting",
            attach_url,
            created_at: now,
            updated_at: now,
            env: req.env.clone(),
            force_no_tty: req.force_no_tty,
            exec_agent: false,
            boot: 0,
            port: free_port(),
            cancel: cancel.clone(),
            stopped: None,
        };
        let json = dyno.to_json(app);
        app.dynos.insert(name.clone(), dyno);
        if req.attach && !https {
            st.secrets.insert(secret, (app_name.to_owned(), id));
        }
        (json, id, name)
    };
    tracing::info!(app = %app_name, dyno = %name, attach = req.attach, "one-off dyno created");
    if let Some(ttl) = req.time_to_live {
        let shared2 = shared.clone();
        let app_name = app_name.to_owned();
        let cancel = cancel.clone();
        shared.tracker.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(ttl) => {
                    tracing::info!(app = %app_name, dyno = %id, "time_to_live expired: stopping the dyno");
                    cancel.cancel();
                    remove_dyno(&shared2, &app_name, id);
                }
                () = cancel.cancelled() => {}
            }
        });
    }
    if !req.attach {
        start_detached(shared, app_name, id, &cancel);
    }
    Some(json)
}

fn start_detached(shared: &SharedRef, app_name: &str, id: Uuid, cancel: &CancellationToken) {
    let spawned = {
        let mut st = shared.state();
        let Some(app) = st.apps.get_mut(app_name) else {
            return;
        };
        let Some(dyno) = app.dynos.values().find(|d| d.id == id) else {
            return;
        };
        let command = resolve_command(app, &dyno.command);
        let env = process_env(app, dyno, &dyno.env);
        let spec = ProcSpec {
            command: Some(&command),
            env: &env,
            cwd: &app.home,
        };
        let spawned = spawn_null(&shared.procs, &spec);
        if let Some(d) = app.dynos.values_mut().find(|d| d.id == id) {
            d.set_state(if spawned.is_ok() { "up" } else { "crashed" });
        }
        spawned
    };
    let Ok(mut spawned) = spawned else {
        remove_dyno(shared, app_name, id);
        return;
    };
    let shared2 = shared.clone();
    let app_name = app_name.to_owned();
    let cancel = cancel.clone();
    shared.tracker.spawn(async move {
        tokio::select! {
            _ = spawned.child.wait() => {}
            () = cancel.cancelled() => {
                let grace = shared2.kill_grace();
                terminate(&mut spawned, Signal::SIGTERM, grace).await;
            }
        }
        drop(spawned);
        remove_dyno(&shared2, &app_name, id);
    });
}

/// Removes a dyno (by id) and any unused rendezvous secret pointing at it.
pub(crate) fn remove_dyno(shared: &Shared, app_name: &str, id: Uuid) {
    let mut st = shared.state();
    if let Some(app) = st.apps.get_mut(app_name) {
        app.dynos.retain(|_, d| d.id != id);
    }
    st.secrets.retain(|_, (_, dyno)| *dyno != id);
    st.attach_grants.retain(|_, g| g.dyno_id != id);
}

/// `run:inside`: grants an attach secret that runs `command` inside the formation dyno
/// `dyno_name`, and returns that dyno's JSON with the `https://` `attach_url`. `None` when the
/// dyno does not exist or is not `up` (Heroku answers 422 then).
pub(crate) fn run_inside(
    shared: &SharedRef,
    app_name: &str,
    dyno_name: &str,
    command: String,
    env: BTreeMap<String, String>,
) -> Option<serde_json::Value> {
    let mut st = shared.state();
    let app = st.apps.get(app_name)?;
    let dyno = app.dynos.get(dyno_name)?;
    if dyno.kind != DynoKind::Formation || dyno.state != "up" {
        return None;
    }
    let mut json = dyno.to_json(app);
    let g = crate::attach::Grant {
        app: app_name.to_owned(),
        dyno_id: dyno.id,
        command,
        env,
        one_off: false,
        expires: std::time::Instant::now() + shared.attach_secret_ttl(),
    };
    let url = crate::attach::grant(&mut st, shared.https_port, g);
    json["attach_url"] = serde_json::Value::String(url);
    tracing::info!(app = %app_name, dyno = %dyno_name, "run:inside granted");
    Some(json)
}

/// Sets a one-off dyno's state if it still exists.
pub(crate) fn set_one_off_state(shared: &Shared, app_name: &str, id: Uuid, state: &'static str) {
    let mut st = shared.state();
    if let Some(d) = st
        .apps
        .get_mut(app_name)
        .and_then(|a| a.dynos.values_mut().find(|d| d.id == id))
    {
        d.set_state(state);
    }
}

/// Why a dyno has no exec agent (the exec-manager answers 404 with this).
pub(crate) fn no_agent_reason(state: &State, app_name: &str, dyno_name: &str) -> Option<String> {
    let Some(app) = state.apps.get(app_name) else {
        return Some(format!("app {app_name} not found"));
    };
    if !app.exec_enabled {
        return Some(format!(
            "no exec agent for {dyno_name}: the runtime-heroku-exec feature is disabled for {app_name}"
        ));
    }
    let Some(dyno) = app.dynos.get(dyno_name) else {
        return Some(format!("no exec agent for {dyno_name}: no such dyno"));
    };
    if dyno.kind == DynoKind::OneOff
        || dyno_name.starts_with("run.")
        || dyno_name.starts_with("release.")
    {
        return Some(format!(
            "no exec agent for {dyno_name}: one-off dynos do not run an exec agent"
        ));
    }
    if dyno.state != "up" {
        return Some(format!(
            "no exec agent for {dyno_name}: the dyno is {}",
            dyno.state
        ));
    }
    if !dyno.exec_agent {
        return Some(format!(
            "no exec agent for {dyno_name}: the dyno has not restarted since the feature was enabled"
        ));
    }
    None
}

/// Everything an exec session needs about its dyno.
#[derive(Clone, Debug)]
pub(crate) struct ExecTarget {
    /// For logs.
    pub app: String,
    pub dyno: String,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub cancel: CancellationToken,
}

/// The exec target for a reservation, if the dyno is still the boot it was made for.
pub(crate) fn exec_target(
    state: &State,
    app_name: &str,
    dyno_name: &str,
    boot: u64,
) -> Option<ExecTarget> {
    if no_agent_reason(state, app_name, dyno_name).is_some() {
        return None;
    }
    let app = state.apps.get(app_name)?;
    let dyno = app.dynos.get(dyno_name)?;
    (dyno.boot == boot).then(|| ExecTarget {
        app: app_name.to_owned(),
        dyno: dyno_name.to_owned(),
        env: exec_env(app, dyno),
        cwd: app.home.clone(),
        cancel: dyno.cancel.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_process_types_only_before_whitespace() {
        let formation = vec![DynoConfig {
            name: "web.1".to_owned(),
            command: Some("serve --port 1".to_owned()),
            ..DynoConfig::default()
        }];
        assert_eq!(resolve_process_type(&formation, "web"), "serve --port 1");
        assert_eq!(
            resolve_process_type(&formation, "web ; echo x"),
            "serve --port 1 ; echo x"
        );
        assert_eq!(
            resolve_process_type(&formation, "web; echo x"),
            "web; echo x"
        );
        assert_eq!(resolve_process_type(&formation, "echo web"), "echo web");
    }
}
