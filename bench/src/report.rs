//! The results: rows of (section, metric, value), each optionally compared
//! with the baseline and checked against a target, plus free-form notes.
//! Printed as an aligned table, or serialized as JSON.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Report {
    pub quick: bool,
    pub cores: usize,
    pub started_at_unix: u64,
    /// The share of the machine's CPU that other processes used during the
    /// run. Above a few percent, they competed with the bench and its
    /// figures are not comparable with a quiet run.
    pub others_cpu_share: Option<f64>,
    #[serde(skip)]
    cpu_at_start: Option<mcp_chat_testkit::sys::CpuSnapshot>,
    pub rows: Vec<Row>,
    /// Anything a reader needs to trust the numbers: limits the OS refused,
    /// counts that were reduced, what a figure includes.
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub section: &'static str,
    pub metric: String,
    pub value: f64,
    /// A unit constant from this module or a rate such as `msg/s`; the
    /// value is already in that unit.
    pub unit: &'static str,
    /// This value divided by the matching baseline figure.
    pub vs_baseline: Option<f64>,
    pub target: Option<Target>,
}

pub const MICROS: &str = "µs";
pub const MILLIS: &str = "ms";
/// Decimal megabytes (10^6 bytes), the unit the targets are written in.
pub const MB: &str = "MB";
pub const BYTES: &str = "bytes";
/// A ratio of two figures of this run.
pub const TIMES: &str = "×";

#[derive(Debug, Serialize)]
pub struct Target {
    pub goal: String,
    pub status: Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Met,
    Missed,
    /// A ratio target, but the baseline section did not run.
    NoBaseline,
}

impl Target {
    pub fn at_most(value: f64, limit: f64, goal: impl Into<String>) -> Self {
        Self::judged(Some(value <= limit), goal)
    }

    pub fn at_least(value: f64, limit: f64, goal: impl Into<String>) -> Self {
        Self::judged(Some(value >= limit), goal)
    }

    /// A latency target: at most `limit` times the baseline.
    pub fn ratio_at_most(ratio: Option<f64>, limit: f64) -> Self {
        Self::judged(ratio.map(|r| r <= limit), format!("≤ {limit}× baseline"))
    }

    /// A throughput target: at least `limit` (a fraction) of the baseline.
    pub fn ratio_at_least(ratio: Option<f64>, limit: f64) -> Self {
        Self::judged(
            ratio.map(|r| r >= limit),
            format!("≥ {:.0}% of baseline", limit * 100.0),
        )
    }

    fn judged(met: Option<bool>, goal: impl Into<String>) -> Self {
        let status = match met {
            Some(true) => Status::Met,
            Some(false) => Status::Missed,
            None => Status::NoBaseline,
        };
        Self {
            goal: goal.into(),
            status,
        }
    }
}

impl Row {
    pub fn new(
        section: &'static str,
        metric: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Self {
            section,
            metric: metric.into(),
            value,
            unit,
            vs_baseline: None,
            target: None,
        }
    }

    pub fn vs_baseline(mut self, ratio: Option<f64>) -> Self {
        self.vs_baseline = ratio;
        self
    }

    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[allow(clippy::cast_precision_loss)]
pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

impl Report {
    pub fn new(quick: bool) -> Self {
        Self {
            quick,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            started_at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            others_cpu_share: None,
            cpu_at_start: mcp_chat_testkit::sys::CpuSnapshot::take(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Closes the run: records how busy the rest of the machine was.
    pub fn finish(&mut self) {
        self.others_cpu_share = self
            .cpu_at_start
            .zip(mcp_chat_testkit::sys::CpuSnapshot::take())
            .and_then(|(start, end)| end.others_since(&start));
        if let Some(share) = self.others_cpu_share
            && share > 0.05
        {
            self.note(format!(
                "other processes used {:.0}% of the CPU during this run; its figures are noisier than a quiet run's",
                share * 100.0
            ));
        }
    }

    pub fn add(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        crate::progress(&format!("note: {note}"));
        self.notes.push(note);
    }

    /// The rows as an aligned plain-text table (Markdown-compatible), then
    /// the notes.
    pub fn table(&self) -> String {
        let header = [
            "Section",
            "Metric",
            "Result",
            "vs baseline",
            "Target",
            "Status",
        ];
        let cells: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|row| {
                let (goal, status) = match &row.target {
                    Some(t) => (
                        t.goal.clone(),
                        match t.status {
                            Status::Met => "met",
                            Status::Missed => "MISSED",
                            Status::NoBaseline => "no baseline",
                        }
                        .to_owned(),
                    ),
                    None => (String::new(), String::new()),
                };
                [
                    row.section.to_owned(),
                    row.metric.clone(),
                    format_value(row.value, row.unit),
                    row.vs_baseline
                        .map(|r| format!("{r:.2}×"))
                        .unwrap_or_default(),
                    goal,
                    status,
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for row in &cells {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "mcp-chat-bench{} on {} cores; other processes used {} of the CPU meanwhile\n",
            if self.quick { " --quick" } else { "" },
            self.cores,
            self.others_cpu_share.map_or_else(
                || "an unknown share".to_owned(),
                |s| format!("{:.0}%", s * 100.0)
            ),
        );
        let line = |out: &mut String, cells: &[String]| {
            out.push('|');
            for (cell, w) in cells.iter().zip(widths) {
                let pad = w - cell.chars().count();
                let _ = write!(out, " {cell}{} |", " ".repeat(pad));
            }
            out.push('\n');
        };
        line(&mut out, &header.map(str::to_owned));
        line(&mut out, &widths.map(|w| "-".repeat(w)));
        for row in &cells {
            line(&mut out, row);
        }
        if !self.notes.is_empty() {
            out.push_str("\nNotes:\n");
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        out
    }
}

fn format_value(value: f64, unit: &str) -> String {
    match unit {
        MICROS => format!("{value:.1} {unit}"),
        MILLIS => format!("{value:.2} {unit}"),
        MB => format!("{value:.1} {unit}"),
        TIMES => format!("{value:.2}{unit}"),
        _ => format!("{} {unit}", thousands(value)),
    }
}

/// `1234567.8` → `1,234,568`.
fn thousands(value: f64) -> String {
    #[allow(clippy::cast_possible_truncation)]
    let digits = (value.round() as i64).unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(format_value(12.345, MICROS), "12.3 µs");
        assert_eq!(format_value(20_000.0, "msg/s"), "20,000 msg/s");
    }

    #[test]
    fn targets_judge_ratios() {
        assert_eq!(Target::ratio_at_most(Some(1.4), 1.5).status, Status::Met);
        assert_eq!(
            Target::ratio_at_least(Some(0.5), 0.6).status,
            Status::Missed
        );
        assert_eq!(Target::ratio_at_most(None, 1.5).status, Status::NoBaseline);
    }
}
