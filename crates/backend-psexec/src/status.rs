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
    let header = ["Dyno", "Dyno Status", "Proxy Status"];
    let rows: Vec<[String; 3]> = reservations
        .iter()
        .map(|r| {
            let state = dynos
                .iter()
                .find(|d| d.name == r.dyno_name)
                .map_or_else(|| "missing!".to_owned(), |d| d.state.clone());
            [r.dyno_name.clone(), state, "running".to_owned()]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 3]| {
        let text = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!(" {c:<w$}"))
            .collect::<String>();
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    let rules = widths.map(|w| "─".repeat(w));
    line([&rules[0], &rules[1], &rules[2]]);
    for row in &rows {
        line([&row[0], &row[1], &row[2]]);
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
}
