//! Statistics (median, nearest-rank percentiles) and the result table.
//!
//! A [`Row`] holds every run of one figure and of its anchor; the table shows medians, the
//! ratio of the two medians, the target and PASS/MISS. It does not measure anything.

use std::fmt::Write as _;

/// Units of a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    MibPerS,
    Ms,
    KiB,
    MiB,
    SecPerGiB,
}

impl Unit {
    pub fn format(self, v: f64) -> String {
        match self {
            Unit::MibPerS if v >= 100.0 => format!("{v:.0} MiB/s"),
            Unit::MibPerS => format!("{v:.1} MiB/s"),
            Unit::Ms if v >= 100.0 => format!("{v:.0} ms"),
            Unit::Ms => format!("{v:.2} ms"),
            Unit::KiB => format!("{v:.1} KiB"),
            Unit::MiB => format!("{v:.1} MiB"),
            Unit::SecPerGiB => format!("{v:.2} s/GiB"),
        }
    }
}

/// What a figure should meet.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// value / anchor ≥ this.
    RatioAtLeast(f64),
    /// value ≤ this (in the row's unit).
    AtMost(f64),
    /// value / anchor ≤ this.
    RatioAtMost(f64),
}

/// Every run of one measurement, or why it could not be measured.
pub type Runs = Result<Vec<f64>, String>;

/// One line of the table.
#[derive(Debug)]
pub struct Row {
    pub figure: String,
    pub unit: Unit,
    pub value: Runs,
    pub anchor: Option<(String, Runs)>,
    pub target: Option<Target>,
    /// Anything worth a footnote (sizes, counts).
    pub note: String,
}

/// The median (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v.get(mid).copied()
    } else {
        Some((v.get(mid - 1)? + v.get(mid)?) / 2.0)
    }
}

/// The nearest-rank percentile `p` (0 < p ≤ 100).
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v.get(rank - 1).copied()
}

fn med(runs: &Runs) -> Option<f64> {
    runs.as_ref().ok().and_then(|r| median(r))
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        let v = med(&self.value)?;
        let a = med(&self.anchor.as_ref()?.1)?;
        (a > 0.0).then_some(v / a)
    }

    fn result(&self) -> &'static str {
        let Some(target) = self.target else {
            return if self.value.is_err() { "ERR" } else { "-" };
        };
        match target {
            Target::RatioAtLeast(min) => match self.ratio() {
                Some(r) if r >= min => "PASS",
                Some(_) => "MISS",
                None => "ERR",
            },
            Target::AtMost(max) => match med(&self.value) {
                Some(v) if v <= max => "PASS",
                Some(_) => "MISS",
                None => "ERR",
            },
            Target::RatioAtMost(max) => match self.ratio() {
                Some(r) if r <= max => "PASS",
                Some(_) => "MISS",
                None => "ERR",
            },
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            None => "-".into(),
            Some(Target::RatioAtLeast(r)) => format!(">= {r}x anchor"),
            Some(Target::AtMost(v)) => format!("<= {}", self.unit.format(v)),
            Some(Target::RatioAtMost(r)) => format!("<= {r:.3}x anchor"),
        }
    }
}

fn cell(runs: &Runs, unit: Unit) -> String {
    match runs {
        Ok(r) => median(r).map_or_else(|| "n/a".into(), |m| unit.format(m)),
        Err(_) => "error".into(),
    }
}

/// The table of medians, then every run and every error.
pub fn render(rows: &[Row]) -> String {
    let header = [
        "figure",
        "dynoagent",
        "anchor",
        "anchor value",
        "ratio",
        "target",
        "result",
    ];
    let lines: Vec<[String; 7]> = rows
        .iter()
        .map(|row| {
            let (anchor, anchor_value) = match &row.anchor {
                Some((name, runs)) => (name.clone(), cell(runs, row.unit)),
                None => ("-".into(), "-".into()),
            };
            [
                row.figure.clone(),
                cell(&row.value, row.unit),
                anchor,
                anchor_value,
                row.ratio()
                    .map_or_else(|| "-".into(), |r| format!("{r:.2}x")),
                row.target_text(),
                row.result().into(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for line in &lines {
        for (w, c) in widths.iter_mut().zip(line) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut put = |cells: &[String]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "| {} |", text.join(" | "));
    };
    put(&header.map(String::from));
    put(&widths.map(|w| "-".repeat(w)));
    for line in &lines {
        put(line);
    }
    out.push('\n');
    for row in rows {
        let runs = |runs: &Runs| match runs {
            Ok(r) => r
                .iter()
                .map(|v| row.unit.format(*v))
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => format!("error: {e}"),
        };
        let _ = write!(out, "- {}: runs [{}]", row.figure, runs(&row.value));
        if let Some((name, a)) = &row.anchor {
            let _ = write!(out, "; {name}: [{}]", runs(a));
        }
        if !row.note.is_empty() {
            let _ = write!(out, "; {}", row.note);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(100.0));
        assert_eq!(percentile(&v, 99.0), Some(198.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    }

    #[test]
    fn each_target_compares_the_medians_the_right_way() {
        let row = |value: Vec<f64>, anchor: Vec<f64>, target| Row {
            figure: "f".into(),
            unit: Unit::SecPerGiB,
            value: Ok(value),
            anchor: Some(("a".into(), Ok(anchor))),
            target: Some(target),
            note: String::new(),
        };
        // Ratio 0.5 (medians 1 and 2).
        let (v, a) = (vec![1.0, 9.0, 0.5], vec![2.0, 2.0, 2.0]);
        for (target, want) in [
            (Target::RatioAtMost(0.5), "PASS"),
            (Target::RatioAtMost(0.4), "MISS"),
            (Target::RatioAtLeast(0.5), "PASS"),
            (Target::RatioAtLeast(0.6), "MISS"),
            (Target::AtMost(1.0), "PASS"),
            (Target::AtMost(0.9), "MISS"),
        ] {
            assert_eq!(
                row(v.clone(), a.clone(), target).result(),
                want,
                "{target:?}"
            );
        }
        assert_eq!(
            row(vec![1.0], vec![], Target::RatioAtMost(1.0)).result(),
            "ERR"
        );
        assert_eq!(
            row(vec![1.0], vec![1.0], Target::RatioAtMost(0.1275)).target_text(),
            "<= 0.128x anchor"
        );
    }
}
