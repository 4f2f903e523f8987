//! The site-agent's `ledger` command: a plain-text table for a person, JSON for a program.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::{Charge, Ledger};

/// `"-"` for a job-level stage, else the round number.
pub(crate) fn round_str(round: Option<u32>) -> String {
    round.map_or_else(|| "-".to_owned(), |r| r.to_string())
}

/// `2023-11-14 22:13:20Z` (UTC) for milliseconds since the Unix epoch.
pub(crate) fn utc(time_ms: u64) -> String {
    let secs = time_ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant, "chrono-Compatible Low-Level Date
    // Algorithms").
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The charge's parameters as `name=value` pairs (alphabetical), without the mechanism.
pub(crate) fn parameters(charge: &Charge) -> String {
    match serde_json::to_value(charge) {
        Ok(Value::Object(map)) => map
            .iter()
            .filter(|(k, _)| k.as_str() != "mechanism")
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// A small number (a delta) in short scientific notation, to 6 significant digits:
/// `1e-5`, `1.1e-5` (where `{:e}` of a sum of deltas may print `1.1000000000000001e-5`).
pub(crate) fn sci(x: f64) -> String {
    let s = format!("{x:.5e}");
    match s.split_once('e') {
        Some((mantissa, exp)) if mantissa.contains('.') => {
            format!(
                "{}e{exp}",
                mantissa.trim_end_matches('0').trim_end_matches('.')
            )
        }
        _ => s,
    }
}

/// Left-aligned columns separated by two spaces, each row on its own line, indented by two.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::from(" ");
        for (cell, w) in cells.zip(&widths) {
            let _ = write!(s, " {cell:<w$} ");
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

impl Ledger {
    /// A plain-text report: the jobs (unit, delta, epsilon spent, rounds charged), then every
    /// entry (time, job, round, stage, mechanism, parameters, epsilon after), then the total.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Privacy ledger {}", self.path().display());
        for note in self.notes() {
            let _ = writeln!(out, "warning: {note}");
        }
        let jobs = self.jobs();
        if jobs.is_empty() {
            out.push_str("\nNo privacy spent: the ledger has no entries.\n");
            return out;
        }
        out.push_str("\nJobs (epsilon: the job's charges composed in RDP, at the job's delta)\n");
        let rows: Vec<Vec<String>> = jobs
            .iter()
            .map(|j| {
                vec![
                    j.job.clone(),
                    j.unit.as_str().to_owned(),
                    sci(j.delta),
                    format!("{:.6}", j.epsilon),
                    j.rounds_charged.to_string(),
                    j.entries.to_string(),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "job",
                "unit",
                "delta",
                "epsilon spent",
                "rounds charged",
                "entries",
            ],
            &rows,
        );

        out.push_str("\nEntries (in the order recorded)\n");
        let rows: Vec<Vec<String>> = self
            .entries()
            .iter()
            .map(|e| {
                vec![
                    e.seq.to_string(),
                    utc(e.time_ms),
                    e.job.clone(),
                    round_str(e.round),
                    e.stage.clone(),
                    e.charge.mechanism().to_owned(),
                    parameters(&e.charge),
                    format!("{:.6}", e.job_epsilon_after),
                    format!("{:.6}", e.total_epsilon_after),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "seq",
                "time (UTC)",
                "job",
                "round",
                "stage",
                "mechanism",
                "parameters",
                "job epsilon after",
                "total epsilon after",
            ],
            &rows,
        );

        let _ = writeln!(
            out,
            "\nTotal: epsilon {:.6}, delta {}, over {} job{} (sum over jobs: basic composition)",
            self.total_epsilon(),
            sci(self.total_delta()),
            jobs.len(),
            if jobs.len() == 1 { "" } else { "s" }
        );
        out
    }

    /// The same report as JSON (for `--output json`): `ledger` (path), `notes` (warnings),
    /// `jobs` (as [`crate::JobSpend`]), `entries` (as stored, [`crate::Entry`]) and `total`
    /// (`epsilon`, `delta`, `jobs`, `composition`).
    pub fn to_json(&self) -> Value {
        let jobs = self.jobs();
        json!({
            "ledger": self.path().display().to_string(),
            "notes": self.notes().iter().map(|n| json!({"level": "warning", "message": n.to_string()})).collect::<Vec<_>>(),
            "jobs": jobs,
            "entries": self.entries(),
            "total": {
                "epsilon": self.total_epsilon(),
                "delta": self.total_delta(),
                "jobs": jobs.len(),
                "composition": "basic (sum of per-job epsilons and deltas)",
            },
        })
    }
}
