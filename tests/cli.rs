//! The research lead's and operator's commands, run as the real `coordinator` binary against
//! an in-process federation of the four example sites. Their output is compared with golden
//! files (`tests/golden/`, plain and JSON forms) after replacing what legitimately changes from
//! run to run (times and durations). Run with `UPDATE_GOLDEN=1` to rewrite the files after an
//! intended change, and review the diff.
//!
//! The job is the example without differential privacy or secure aggregation, so its figures
//! are the same on every run (no noise, no stochastic rounding).

use std::path::{Path, PathBuf};
use std::process::Command;

use fedcare_e2e::{SITES, TestCoordinator, binary, job};
use serde_json::Value;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden")
}

/// Runs the coordinator binary with `args`; returns stdout, failing the test (with stderr) on a
/// non-zero exit.
fn coordinator(args: &[&str]) -> String {
    let out = Command::new(binary("coordinator")).args(args).env_remove("RUST_LOG").output().expect("coordinator binary runs");
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "coordinator {args:?} failed: {stderr}\nstdout: {stdout}");
    stdout
}

/// Runs the coordinator binary expecting failure; returns stderr.
fn coordinator_fails(args: &[&str]) -> String {
    let out = Command::new(binary("coordinator")).args(args).output().expect("coordinator binary runs");
    assert!(!out.status.success(), "coordinator {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// True if `s[i..]` starts with an RFC 3339 UTC time such as 2026-11-26T12:34:56Z.
fn is_time_at(s: &[u8], i: usize) -> bool {
    const PATTERN: &[u8] = b"dddd-dd-ddTdd:dd:ddZ";
    s.len() >= i + PATTERN.len() && PATTERN.iter().zip(&s[i..]).all(|(p, c)| if *p == b'd' { c.is_ascii_digit() } else { p == c })
}

/// Replaces times with `<time>` and each line's trailing `N ms` with `<ms>`.
fn normalize_text(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let b = line.as_bytes();
        let mut l = String::new();
        let mut i = 0;
        while i < b.len() {
            if is_time_at(b, i) {
                l.push_str("<time>");
                i += 20;
            } else {
                let ch = line[i..].chars().next().expect("in bounds");
                l.push(ch);
                i += ch.len_utf8();
            }
        }
        if let Some(stem) = l.strip_suffix(" ms") {
            let digits = stem.trim_end_matches(|c: char| c.is_ascii_digit());
            if digits.len() < stem.len() {
                l = format!("{} <ms>", digits.trim_end());
            }
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// Replaces the values of time-dependent keys in a JSON document.
fn normalize_json(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if matches!(k.as_str(), "submitted" | "submitted_unix_ms" | "duration_ms" | "elapsed_ms" | "finished") && !val.is_null() {
                    *val = Value::String("<varies>".into());
                } else {
                    normalize_json(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_json),
        _ => {}
    }
}

fn check_golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir()).expect("golden dir");
        std::fs::write(&path, actual).expect("golden written");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
    assert!(
        expected == actual,
        "output differs from {} (UPDATE_GOLDEN=1 rewrites it; review the diff):\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

fn check_golden_json(name: &str, stdout: &str) {
    let mut v: Value = serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{name}: not JSON ({e}):\n{stdout}"));
    normalize_json(&mut v);
    check_golden(name, &(serde_json::to_string_pretty(&v).expect("serialises") + "\n"));
}

/// A GET over plain HTTP/1.1; returns the status line and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("metrics port accepts");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.expect("request sent");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("response read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response has a head");
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("metric {name} missing in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn research_lead_commands_show_jobs_rounds_and_results_and_cancel() {
    let coordinator_srv = TestCoordinator::start().await;
    let url = coordinator_srv.url.clone();
    for site in SITES {
        coordinator_srv.spawn_site(site);
    }
    coordinator_srv.wait_for_sites(4).await;
    let metrics_before = coordinator_srv.metrics.encode();
    assert_eq!(metric(&metrics_before, "fedcare_rounds_completed_total"), 0.0);
    assert_eq!(metric(&metrics_before, "fedcare_sites_connected"), 4.0);

    // Operators: health as containers and Kubernetes probes ask it.
    let health = tokio::task::spawn_blocking({
        let url = url.clone();
        move || coordinator(&["health", "--coordinator", &url])
    })
    .await
    .expect("joins");
    assert_eq!(health.trim(), "SERVING");

    let dir = tempfile::tempdir().expect("temp dir");
    let (text, spec) = job(|s| {
        s.name = "heart-disease-cli".into();
        s.rounds = 3;
        s.privacy = fedcare_job::PrivacySpec::none();
        s.secure_aggregation.enabled = false;
    });
    let job_path = dir.path().join("job.toml");
    std::fs::write(&job_path, &text).expect("job written");
    let id = spec.id().to_string();
    let prefix = &id[..12];

    // Submit and watch as JSON lines: every event is an object; one round_done per round.
    let submitted = tokio::task::spawn_blocking({
        let (url, job_path) = (url.clone(), job_path.clone());
        move || coordinator(&["submit", job_path.to_str().expect("utf-8 path"), "--coordinator", &url, "--watch", "--output", "json"])
    })
    .await
    .expect("joins");
    let mut lines = submitted.lines();
    let first: Value = serde_json::from_str(lines.next().expect("the job id line")).expect("JSON");
    assert_eq!(first["job_id"], id.as_str());
    let events: Vec<Value> = lines.map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let rounds_done: Vec<u64> = events.iter().filter(|e| e["event"] == "round_done").map(|e| e["round"].as_u64().expect("round")).collect();
    assert_eq!(rounds_done, vec![1, 2, 3]);
    assert_eq!(events.last().expect("events")["event"], "finished");

    // Metrics moved with the rounds.
    let m = coordinator_srv.metrics.encode();
    assert_eq!(metric(&m, "fedcare_rounds_completed_total"), 3.0);
    assert_eq!(metric(&m, "fedcare_round_duration_seconds_count"), 3.0);
    assert_eq!(metric(&m, "fedcare_jobs_submitted_total"), 1.0);
    assert!(metric(&m, "fedcare_site_bytes_sent_total") > 0.0 && metric(&m, "fedcare_site_bytes_received_total") > 0.0);
    assert!(m.contains("fedcare_jobs_ended_total{state=\"finished\"} 1"), "{m}");
    // ... and the same text is served on GET /metrics.
    let (l, addr) = fedcare_server::metrics::bind_metrics("127.0.0.1:0".parse().expect("addr")).await.expect("binds");
    let served = tokio::spawn(fedcare_server::metrics::serve_metrics(l, coordinator_srv.metrics.clone(), std::future::pending()));
    let (status, body) = http_get(addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(metric(&body, "fedcare_rounds_completed_total"), 3.0);
    assert!(http_get(addr, "/nothing").await.0.contains("404"));
    served.abort();

    // The read commands, plain and JSON, against golden files.
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || coordinator(&args.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    let args = |a: &[&str]| -> Vec<String> { a.iter().map(|s| s.to_string()).chain(["--coordinator".to_owned(), url.clone()]).collect() };
    check_golden("jobs-list.txt", &normalize_text(&run(args(&["jobs", "list"])).await.expect("joins")));
    check_golden_json("jobs-list.json", &run(args(&["jobs", "list", "--output", "json"])).await.expect("joins"));
    check_golden("jobs-show.txt", &normalize_text(&run(args(&["jobs", "show", prefix])).await.expect("joins")));
    check_golden_json("jobs-show.json", &run(args(&["jobs", "show", prefix, "--output", "json"])).await.expect("joins"));
    check_golden("sites.txt", &normalize_text(&run(args(&["sites"])).await.expect("joins")));
    check_golden_json("sites.json", &run(args(&["sites", "--output", "json"])).await.expect("joins"));

    // The report's numbers are the sites' counts: the JSON's federated n is the sum of the
    // sites' test n, and its confusion cells add up to it.
    let shown: Value = serde_json::from_str(&run(args(&["jobs", "show", prefix, "--output", "json"])).await.expect("joins")).expect("JSON");
    let report = &shown["report"];
    let site_n: u64 = report["sites"].as_array().expect("sites").iter().map(|s| s["test"]["n"].as_u64().expect("n")).sum();
    let fed = &report["federated"];
    assert_eq!(fed["n"].as_u64(), Some(site_n));
    let c = &fed["confusion"];
    let cells: u64 = ["true_pos", "false_pos", "true_neg", "false_neg"].iter().map(|k| c[k].as_u64().expect("cell")).sum();
    assert_eq!(cells, site_n);
    let correct = c["true_pos"].as_u64().unwrap() + c["true_neg"].as_u64().unwrap();
    assert!((fed["accuracy"].as_f64().unwrap() - correct as f64 / site_n as f64).abs() < 1e-12);
    assert!(fed["brier"].as_f64().unwrap() > 0.0 && fed["brier"].as_f64().unwrap() < 0.25);

    // Cancel: a job that waits for a fifth site is stopped before its offer deadline; it is
    // recorded as cancelled with who and why, and cancelling again is refused.
    let (text2, spec2) = job(|s| {
        s.name = "waits-for-five".into();
        s.min_sites = 5;
        s.min_sites_per_round = None;
        s.privacy = fedcare_job::PrivacySpec::none();
    });
    let id2 = spec2.id().to_string();
    let mut admin = fedcare_server::client::AdminClient::connect(&url).await.expect("admin connects");
    assert_eq!(admin.submit(&text2).await.expect("submitted"), id2);
    let cancelled = run(args(&["jobs", "cancel", &id2[..8], "--reason", "wrong feature list"])).await.expect("joins");
    assert!(cancelled.contains("cancelled"), "{cancelled}");
    let list: Value = serde_json::from_str(&run(args(&["jobs", "list", "--output", "json"])).await.expect("joins")).expect("JSON");
    let entry = list.as_array().expect("array").iter().find(|j| j["job_id"] == id2.as_str()).expect("listed");
    assert_eq!(entry["state"], "cancelled");
    assert_eq!(entry["reason"], "cancelled by unauthenticated (no TLS): wrong feature list");
    let again = tokio::task::spawn_blocking({
        let (url, id2) = (url.clone(), id2.clone());
        move || coordinator_fails(&["jobs", "cancel", &id2, "--coordinator", &url])
    })
    .await
    .expect("joins");
    assert!(again.contains("not running: it is cancelled"), "{again}");
    assert!(coordinator_srv.metrics.encode().contains("fedcare_jobs_ended_total{state=\"cancelled\"} 1"));

    // Bad input gets a clear error.
    let unknown = tokio::task::spawn_blocking({
        let url = url.clone();
        move || coordinator_fails(&["jobs", "show", "ffffffff", "--coordinator", &url])
    })
    .await
    .expect("joins");
    assert!(unknown.contains("no job id starts with \"ffffffff\""), "{unknown}");
    coordinator_srv.stop().await;
}
