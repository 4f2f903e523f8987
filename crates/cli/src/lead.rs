//! How the research lead's read commands print: jobs, one job's rounds and results, sites and
//! live events, each as aligned plain text (for people) and as JSON (for scripts). Kept apart
//! from the binaries so the exact output is tested (golden files under `tests/golden/`).
//!
//! Figures computed over fewer than [`MIN_REPORTED_N`] test patients are never printed, as in
//! the model card: small counts could identify patients.

use std::fmt::Write;

use fedcare_proto::v1 as pb;
use fedcare_server::report::{MIN_REPORTED_N, Metrics, Report};
use serde_json::{Value, json};

pub use fedcare_server::report::utc;

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "-".to_owned(),
    }
}

/// A finite float as JSON, else null (JSON has no NaN).
fn num(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}

/// `jobs list`: one line per job, newest first.
pub fn jobs_table(jobs: &[pb::JobSummary]) -> String {
    let mut out = String::new();
    if jobs.is_empty() {
        out.push_str("no jobs yet (submit one with `coordinator submit JOB.toml`)\n");
        return out;
    }
    let _ = writeln!(out, "{:<12}  {:<24}  {:<9}  {:>7}  {:>8}  {:<20}  DETAIL", "JOB", "NAME", "STATE", "ROUNDS", "ACCURACY", "SUBMITTED");
    for j in jobs {
        let detail = if !j.reason.is_empty() {
            j.reason.clone()
        } else if !j.stage.is_empty() {
            format!("stage: {}", j.stage)
        } else {
            String::new()
        };
        let name: String = if j.name.chars().count() > 24 { j.name.chars().take(23).chain(['…']).collect() } else { j.name.clone() };
        let line = format!(
            "{:<12}  {:<24}  {:<9}  {:>7}  {:>8}  {:<20}  {}",
            short(&j.job_id),
            name,
            j.state,
            format!("{}/{}", j.rounds_done, j.rounds_total),
            opt(j.accuracy, 3),
            utc(j.submitted_unix_ms),
            detail
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

pub fn summary_json(j: &pb::JobSummary) -> Value {
    json!({
        "job_id": j.job_id,
        "name": j.name,
        "state": j.state,
        "reason": (!j.reason.is_empty()).then_some(&j.reason),
        "stage": (!j.stage.is_empty()).then_some(&j.stage),
        "rounds_done": j.rounds_done,
        "rounds_total": j.rounds_total,
        "accuracy": j.accuracy.map(num),
        "submitted": utc(j.submitted_unix_ms),
        "submitted_unix_ms": j.submitted_unix_ms,
    })
}

pub fn jobs_json(jobs: &[pb::JobSummary]) -> Value {
    Value::Array(jobs.iter().map(summary_json).collect())
}

fn round_json(r: &pb::RoundDone) -> Value {
    json!({
        "round": r.round,
        "sites": r.sites,
        "train_loss": num(r.train_loss),
        "test_loss": num(r.eval_loss),
        "test_accuracy": num(r.eval_accuracy),
        "test_auc": r.eval_auc.map(num),
        "test_n": r.eval_n,
        "duration_ms": r.round_ms,
    })
}

/// Parses the report a finished job carries (`None` before it has finished).
pub fn report_of(job: &pb::GetJobResponse) -> Result<Option<Report>, serde_json::Error> {
    if job.report_json.is_empty() { Ok(None) } else { serde_json::from_str(&job.report_json).map(Some) }
}

/// `jobs show`: the job, its rounds, and once finished each site's results and any warning.
pub fn job_text(job: &pb::GetJobResponse, report: Option<&Report>) -> String {
    let mut out = String::new();
    let Some(s) = &job.summary else { return "the coordinator sent no summary\n".to_owned() };
    let _ = writeln!(out, "job        {}", s.job_id);
    let _ = writeln!(out, "name       {}", s.name);
    let state = match (s.reason.is_empty(), s.stage.is_empty()) {
        (false, _) => format!("{} ({})", s.state, s.reason),
        (true, false) => format!("{} (stage: {})", s.state, s.stage),
        _ => s.state.clone(),
    };
    let _ = writeln!(out, "state      {state}");
    let _ = writeln!(out, "rounds     {} of {}", s.rounds_done, s.rounds_total);
    let _ = writeln!(out, "submitted  {}", utc(s.submitted_unix_ms));
    if let Some(r) = report {
        let _ = writeln!(out, "model      {} ({} parameters)", r.model, r.parameters);
        let _ = writeln!(out, "privacy    {}", r.privacy.statement);
        let _ = writeln!(out, "protection {}", r.protection);
    }
    if !job.rounds.is_empty() {
        let _ = writeln!(out, "\nROUND  SITES  TRAIN LOSS  TEST LOSS  ACCURACY    AUC  TEST N  DURATION");
        for r in &job.rounds {
            let small = r.eval_n < MIN_REPORTED_N;
            let fig = |v: Option<f64>, d: usize| if small { "supp.".to_owned() } else { opt(v, d) };
            let _ = writeln!(
                out,
                "{:>5}  {:>5}  {:>10}  {:>9}  {:>8}  {:>5}  {:>6}  {:>6} ms",
                r.round,
                r.sites,
                if r.train_loss.is_nan() { "n/r".to_owned() } else { opt(Some(r.train_loss), 4) },
                fig(Some(r.eval_loss), 4),
                fig(Some(r.eval_accuracy), 3),
                fig(r.eval_auc, 3),
                if small { format!("<{MIN_REPORTED_N}") } else { r.eval_n.to_string() },
                r.round_ms
            );
        }
        if job.rounds.iter().any(|r| r.train_loss.is_nan()) {
            let _ = writeln!(out, "(n/r: training loss not released under differential privacy)");
        }
    }
    if let Some(r) = report {
        let _ = writeln!(out, "\nfinal model, held-out evaluation at each site:");
        out.push_str(&sites_results_table(r));
        let warnings = r.site_warnings();
        if !warnings.is_empty() {
            let _ = writeln!(out);
            for w in warnings {
                let _ = writeln!(out, "WARNING: {w}");
            }
        }
    }
    out
}

/// Site, train n, test n, accuracy, AUC, Brier, confusion; small figures suppressed.
pub fn sites_results_table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<14}  {:>6}  {:>6}  {:>8}  {:>5}  {:>6}  {:>5} {:>5} {:>5} {:>5}", "SITE", "TRAIN", "TEST N", "ACCURACY", "AUC", "BRIER", "TP", "FP", "TN", "FN");
    let mut row = |name: &str, train: u64, m: Option<&Metrics>| {
        let _ = match m {
            None => writeln!(out, "{name:<14}  {train:>6}  (did not evaluate the final model)"),
            Some(m) if m.n < MIN_REPORTED_N => writeln!(out, "{name:<14}  {train:>6}  (fewer than {MIN_REPORTED_N} test patients: suppressed)"),
            Some(m) => {
                let cells = match m.confusion {
                    Some(c) if [c.true_pos, c.false_pos, c.true_neg, c.false_neg].iter().all(|&x| x == 0 || x >= MIN_REPORTED_N) => {
                        format!("{:>5} {:>5} {:>5} {:>5}", c.true_pos, c.false_pos, c.true_neg, c.false_neg)
                    }
                    Some(c) => {
                        let cell = |x: u64| if x > 0 && x < MIN_REPORTED_N { format!("<{MIN_REPORTED_N}") } else { x.to_string() };
                        format!("{:>5} {:>5} {:>5} {:>5}", cell(c.true_pos), cell(c.false_pos), cell(c.true_neg), cell(c.false_neg))
                    }
                    None => format!("{:>5} {:>5} {:>5} {:>5}", "-", "-", "-", "-"),
                };
                writeln!(out, "{name:<14}  {train:>6}  {:>6}  {:>8.3}  {:>5}  {:>6}  {cells}", m.n, m.accuracy, opt(m.auc, 3), opt(m.brier, 4))
            }
        };
    };
    for s in &r.sites {
        row(&s.site, s.train_examples, s.test.as_ref());
    }
    let train_total: u64 = r.sites.iter().map(|s| s.train_examples).sum();
    row("federated", train_total, r.federated.as_ref());
    if let Some(p) = &r.pooled_reference {
        row("pooled (ref.)", train_total, Some(&p.test));
    }
    out
}

pub fn job_json(job: &pb::GetJobResponse, report: Option<&Report>) -> Value {
    json!({
        "summary": job.summary.as_ref().map(summary_json),
        "rounds": job.rounds.iter().map(round_json).collect::<Vec<_>>(),
        "warnings": report.map(|r| r.site_warnings()).unwrap_or_default(),
        "report": report,
    })
}

/// `sites`: one line per site, connected first.
pub fn sites_table(sites: &[pb::SiteInfo]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<16}  {:<28}  STATE", "SITE", "AGENT");
    for s in sites {
        let state = if !s.connected {
            format!("LOST {} s ago (no heartbeat answer or stream closed)", s.lost_ms_ago / 1000)
        } else if s.job_id.is_empty() {
            "idle".to_owned()
        } else {
            format!("in job {}", short(&s.job_id))
        };
        let _ = writeln!(out, "{:<16}  {:<28}  {state}", s.site_id, s.agent_version);
    }
    out
}

pub fn sites_json(sites: &[pb::SiteInfo]) -> Value {
    Value::Array(
        sites
            .iter()
            .map(|s| {
                json!({
                    "site": s.site_id,
                    "agent_version": s.agent_version,
                    "connected": s.connected,
                    "job_id": (!s.job_id.is_empty()).then_some(&s.job_id),
                    "lost_ms_ago": (!s.connected).then_some(s.lost_ms_ago),
                })
            })
            .collect(),
    )
}

/// One watched event as a JSON object (`watch --output json` prints one per line).
pub fn event_json(e: &pb::JobEvent) -> Value {
    use pb::job_event::Kind;
    let (kind, body) = match &e.kind {
        Some(Kind::Joined(j)) => ("sites_joined", json!({ "sites": j.sites })),
        Some(Kind::StatsDone(s)) => ("stats_done", json!({ "total_examples": s.total_examples })),
        Some(Kind::Progress(p)) => (
            "progress",
            json!({ "round": p.round, "stage": p.stage, "sites_done": p.sites_done, "sites_total": p.sites_total, "waiting": p.waiting }),
        ),
        Some(Kind::RoundDone(r)) => ("round_done", round_json(r)),
        Some(Kind::Refused(r)) => ("site_refused", json!({ "site": r.site_id, "round": r.round, "reason": r.reason })),
        Some(Kind::Finished(_)) => ("finished", json!({})),
        Some(Kind::Failed(f)) => ("failed", json!({ "reason": f.reason })),
        None => ("unknown", json!({})),
    };
    let mut v = json!({ "job_id": e.job_id, "elapsed_ms": e.elapsed_ms, "event": kind });
    if let (Value::Object(o), Value::Object(b)) = (&mut v, body) {
        o.extend(b);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "-");
        assert_eq!(utc(1_000), "1970-01-01T00:00:01Z");
        // 2026-11-26T12:00:00Z
        assert_eq!(utc(1_795_694_400_000), "2026-11-26T12:00:00Z");
    }

    #[test]
    fn small_rounds_are_suppressed_and_nan_is_null() {
        let job = pb::GetJobResponse {
            summary: Some(pb::JobSummary { job_id: "ab".repeat(32), name: "x".into(), state: "running".into(), rounds_total: 3, ..Default::default() }),
            rounds: vec![pb::RoundDone { round: 1, sites: 2, train_loss: f64::NAN, eval_loss: 0.5, eval_accuracy: 0.8123, round_ms: 5, eval_auc: Some(0.9), eval_n: 4 }],
            report_json: String::new(),
        };
        let text = job_text(&job, None);
        assert!(text.contains("supp.") && !text.contains("0.812") && text.contains("<10"), "{text}");
        let v = job_json(&job, None);
        assert_eq!(v["rounds"][0]["train_loss"], Value::Null);
        assert_eq!(v["summary"]["state"], "running");
    }

    #[test]
    fn event_json_flattens_the_event() {
        let e = pb::JobEvent {
            job_id: "j".into(),
            elapsed_ms: 7,
            kind: Some(pb::job_event::Kind::Refused(pb::SiteRefused { site_id: "va".into(), round: 2, reason: "late".into() })),
        };
        assert_eq!(event_json(&e), json!({"job_id": "j", "elapsed_ms": 7, "event": "site_refused", "site": "va", "round": 2, "reason": "late"}));
    }
}
