//! The `--status` table, as `heroku ps:exec --status` prints it (heroku-protocols.md §6.3):
//! one row per exec reservation, its dyno's state from the Platform API (`missing!` if the
//! API does not list it), and the proxy status (always `running`).

use heroku_api::{Dyno, ExecReservation};

/// What the CLI prints when no dyno has an exec agent.
pub const NOT_RUNNING: &str = "Heroku Exec is not running. Check dyno status with heroku ps.\n";

/// Renders the table (or [`NOT_RUNNING`]).
pub fn render(reservations: &[ExecReservation], dynos: &[Dyno]) -> String {
    if reservations.is_empty() {
        return NOT_RUNNING.to_owned();
    }
    let rows: Vec<Vec<String>> = reservations
        .iter()
        .map(|r| {
            let state = dynos
                .iter()
                .find(|d| d.name == r.dyno_name)
                .map_or_else(|| "missing!".to_owned(), |d| d.state.clone());
            vec![r.dyno_name.clone(), state, "running".to_owned()]
        })
        .collect();
    table(&["Dyno", "Dyno Status", "Proxy Status"], &rows)
}

/// The `--status` of a Fir app, which has no Heroku Exec: its formation dynos (the ones a
/// session can run inside with `run:inside`) and their states.
pub fn render_fir(app: &str, dynos: &[Dyno]) -> String {
    let mut out = format!(
        "{app} is a Fir app: no Heroku Exec; psexec runs sessions inside these dynos with run:inside (--dyno NAME; default: a running web dyno)\n"
    );
    let rows: Vec<Vec<String>> = dynos
        .iter()
        .filter(|d| !d.name.starts_with("run."))
        .map(|d| vec![d.name.clone(), d.state.clone()])
        .collect();
    if rows.is_empty() {
        out.push_str("No dynos are running.\n");
    } else {
        out.push_str(&table(&["Dyno", "Dyno Status"], &rows));
    }
    out
}

/// A table in the CLI's style: a header, a rule, left-aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let text = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!(" {c:<w$}"))
            .collect::<String>();
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    let rules: Vec<String> = widths.iter().map(|w| "─".repeat(*w)).collect();
    line(&rules.iter().map(String::as_str).collect::<Vec<_>>());
    for row in rows {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dyno(name: &str, state: &str) -> Dyno {
        Dyno {
            name: name.into(),
            state: state.into(),
            ..Dyno::default()
        }
    }

    #[test]
    fn joins_reservations_with_dyno_states() {
        let r = |n: &str| ExecReservation {
            dyno_name: n.into(),
        };
        let text = render(
            &[r("web.1"), r("worker.12")],
            &[dyno("web.1", "up"), dyno("web.2", "up")],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], " Dyno      Dyno Status Proxy Status");
        assert_eq!(lines[2], " web.1     up          running");
        assert_eq!(lines[3], " worker.12 missing!    running");
        assert_eq!(render(&[], &[]), NOT_RUNNING);
    }

    #[test]
    fn fir_status_lists_the_formation_dynos() {
        let text = render_fir(
            "firapp",
            &[
                dyno("web-848cd4f64d-pvpr2", "up"),
                dyno("run.1001", "up"),
                dyno("worker-5d9c7b8f6-x2k9q", "crashed"),
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("firapp is a Fir app"), "{text}");
        assert_eq!(lines[1], " Dyno                   Dyno Status");
        assert_eq!(lines[3], " web-848cd4f64d-pvpr2   up");
        assert_eq!(lines[4], " worker-5d9c7b8f6-x2k9q crashed");
        assert_eq!(lines.len(), 5, "one-off dynos are not listed: {text}");
    }
}
