//! What the bench prints: one row per gmemd figure beside its baseline, the
//! ratio, the target and whether it was met; and per group a short table
//! of the details behind those rows.

use std::fmt::Write as _;

/// A measured quantity and its unit.
#[derive(Debug, Clone, Copy)]
pub enum Figure {
    /// Requests per second (more is better).
    PerSecond(f64),
    /// Milliseconds (less is better).
    Millis(f64),
}

impl Figure {
    fn value(self) -> f64 {
        match self {
            Figure::PerSecond(v) | Figure::Millis(v) => v,
        }
    }
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Figure::PerSecond(v) => write!(f, "{} req/s", thousands(v)),
            Figure::Millis(v) => write!(f, "{} ms", millis(v)),
        }
    }
}

/// Milliseconds with the precision that matters: `1234`, `56.7`, `0.42`.
pub fn millis(ms: f64) -> String {
    if ms >= 100.0 {
        thousands(ms)
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

/// A whole number with thousands separators: `41,234`.
pub fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

/// What the ratio gmemd/baseline must be.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// At least this (rates: gmemd within a factor of the baseline).
    AtLeast(f64),
    /// At most this (times: gmemd this many times faster, or within a factor).
    AtMost(f64),
}

impl Target {
    fn met(self, ratio: f64) -> bool {
        match self {
            Target::AtLeast(t) => ratio >= t,
            Target::AtMost(t) => ratio <= t,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Target::AtLeast(t) => write!(f, "≥ {}x", ratio_text(t)),
            // A time target below 1 is a speed-up: say which.
            Target::AtMost(t) if t < 1.0 => {
                let faster = format!("{:.1}", 1.0 / t);
                let faster = faster.trim_end_matches(".0");
                write!(f, "≤ {}x ({faster}x faster)", ratio_text(t))
            }
            Target::AtMost(t) => write!(f, "≤ {}x", ratio_text(t)),
        }
    }
}

/// A figure, or why there is none (`n/a (…)` in the table).
pub type Measured = Result<Figure, String>;

/// One line of the main table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured, with its parameters.
    pub measurement: String,
    /// gmemd's figure.
    pub gmemd: Measured,
    /// The baseline's figure, measured in the same run.
    pub baseline: Measured,
    /// The target for gmemd/baseline, if there is one.
    pub target: Option<Target>,
}

impl Row {
    /// gmemd/baseline, when both were measured.
    pub fn ratio(&self) -> Option<f64> {
        match (&self.gmemd, &self.baseline) {
            (Ok(g), Ok(b)) => Some(g.value() / b.value()),
            _ => None,
        }
    }

    /// Whether the row failed to measure something.
    pub fn failed(&self) -> bool {
        self.gmemd.is_err() || self.baseline.is_err()
    }

    fn cells(&self) -> [String; 6] {
        let ratio = self.ratio();
        let met = match (self.target, ratio) {
            (Some(t), Some(r)) if t.met(r) => "yes".to_owned(),
            (Some(_), Some(_)) => "**no**".to_owned(),
            (Some(_), None) => "n/a".to_owned(),
            (None, _) => "–".to_owned(),
        };
        [
            self.measurement.clone(),
            cell(&self.gmemd),
            cell(&self.baseline),
            ratio.map_or_else(|| "n/a".to_owned(), |r| format!("{}x", ratio_text(r))),
            self.target
                .map_or_else(|| "–".to_owned(), |t| t.to_string()),
            met,
        ]
    }
}

/// A ratio with two significant decimals where it is small, fewer where large.
pub fn ratio_text(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else if r >= 0.1 {
        format!("{r:.2}")
    } else {
        format!("{r:.3}")
    }
}

fn cell(m: &Measured) -> String {
    match m {
        Ok(f) => f.to_string(),
        Err(why) => format!("n/a ({})", one_line(why)),
    }
}

/// The first line of a message, cut to fit a table cell, without `|`.
pub fn one_line(text: &str) -> String {
    const MAX: usize = 120;
    let line = text.lines().next().unwrap_or("").replace('|', "/");
    if line.chars().count() > MAX {
        let cut: String = line.chars().take(MAX).collect();
        format!("{cut}…")
    } else {
        line
    }
}

/// A small table of details.
#[derive(Debug, Clone)]
pub struct Table {
    /// Printed above it.
    pub title: String,
    /// Column names.
    pub header: Vec<String>,
    /// Cells, row by row.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these columns.
    pub fn new(title: &str, header: &[&str]) -> Table {
        Table {
            title: title.to_owned(),
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn push(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

/// What one group found.
#[derive(Debug, Default)]
pub struct GroupReport {
    /// Lines of the main table.
    pub rows: Vec<Row>,
    /// Detail tables.
    pub details: Vec<Table>,
    /// Facts that qualify the figures (one line each).
    pub notes: Vec<String>,
}

/// The markdown of a table.
pub fn markdown(header: &[String], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let rule: Vec<&str> = header.iter().map(|_| "---").collect();
    let _ = writeln!(out, "|{}|", rule.join("|"));
    for row in rows {
        // A short row (a failure's one cell) still spans every column.
        let padding = header.len().saturating_sub(row.len());
        let cells: Vec<String> = row
            .iter()
            .map(|c| c.replace('|', "/"))
            .chain(std::iter::repeat_n(String::new(), padding))
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

/// The whole report: the main table, then each group's details and notes.
pub fn render(groups: &[(&str, GroupReport)]) -> String {
    let header: Vec<String> = [
        "measurement",
        "gmemd",
        "baseline",
        "gmemd/baseline",
        "target",
        "met",
    ]
    .iter()
    .map(|h| (*h).to_owned())
    .collect();
    let rows: Vec<Vec<String>> = groups
        .iter()
        .flat_map(|(_, g)| g.rows.iter().map(|r| r.cells().to_vec()))
        .collect();
    let mut out = markdown(&header, &rows);
    for (name, group) in groups {
        for table in &group.details {
            let _ = write!(
                out,
                "\n{name}: {}\n\n{}",
                table.title,
                markdown(&table.header, &table.rows)
            );
        }
        if !group.notes.is_empty() {
            out.push('\n');
            for note in &group.notes {
                let _ = writeln!(out, "- {name}: {note}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(41_234.4), "41,234");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(millis(1234.4), "1,234");
        assert_eq!(millis(56.74), "56.7");
        assert_eq!(millis(0.421), "0.42");
    }

    #[test]
    fn rows_say_whether_the_target_was_met() {
        let row = Row {
            measurement: "m".into(),
            gmemd: Ok(Figure::Millis(10.0)),
            baseline: Ok(Figure::Millis(200.0)),
            target: Some(Target::AtMost(1.0 / 15.0)),
        };
        let cells = row.cells();
        assert_eq!(cells[3], "0.050x");
        assert_eq!(cells[4], "≤ 0.067x (15x faster)");
        assert_eq!(cells[5], "yes");
        let row = Row {
            gmemd: Err("gmemctl: unknown flag --prefault\nmore".into()),
            ..row
        };
        assert!(row.failed());
        let cells = row.cells();
        assert_eq!(cells[1], "n/a (gmemctl: unknown flag --prefault)");
        assert_eq!(cells[5], "n/a");
    }

    #[test]
    fn tables_are_markdown() {
        let text = markdown(&["a".into(), "b".into()], &[vec!["1".into(), "x|y".into()]]);
        assert_eq!(text, "| a | b |\n|---|---|\n| 1 | x/y |\n");
        let short = markdown(&["a".into(), "b".into()], &[vec!["n/a".into()]]);
        assert!(short.ends_with("| n/a |  |\n"), "{short}");
    }
}
