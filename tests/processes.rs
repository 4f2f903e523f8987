//! The federation as separate processes, as hospitals would run it: `coordinator serve`, one
//! `site-agent run --config site.toml` per site, and a research lead's `coordinator submit
//! --watch`. Uses the binaries that `cargo test --workspace` builds.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fedcare_e2e::{SITES, binary, example_dir, write_site_config};

/// Kills the child processes when the test ends, however it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.stdin(Stdio::null()).output().expect("command starts");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Enrols a party with the CLI as an operator would: `pki request` in the party's own folder,
/// `pki sign` by the CA. Returns the party's TLS folder.
fn enrol(dir: &std::path::Path, role: &str, name: &str, hosts: &[&str]) -> std::path::PathBuf {
    let party = dir.join("tls").join(name);
    let (ok, _, stderr) = run(Command::new(binary("coordinator")).args(["pki", "request", "--name", name, "--dir"]).arg(&party));
    assert!(ok, "{stderr}");
    let mut sign = Command::new(binary("coordinator"));
    sign.args(["pki", "sign", "--role", role, "--name", name, "--ca"]).arg(dir.join("ca")).arg("--csr").arg(party.join(format!("{name}.csr")));
    for h in hosts {
        sign.args(["--host", h]);
    }
    let (ok, stdout, stderr) = run(&mut sign);
    assert!(ok && stdout.contains("certificate"), "{stdout}{stderr}");
    party
}

#[test]
fn coordinator_and_four_site_agents_as_processes() {
    let dir = tempfile::tempdir().unwrap();
    // The federation's PKI, with the CLI: a CA, then every party enrolled by CSR.
    let (ok, _, stderr) = run(Command::new(binary("coordinator")).args(["pki", "init", "--federation", "process test", "--ca"]).arg(dir.path().join("ca")));
    assert!(ok, "{stderr}");
    let coordinator_tls = enrol(dir.path(), "coordinator", "coordinator", &["127.0.0.1"]);
    let lead_tls = enrol(dir.path(), "research-lead", "lead", &[]);
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new(binary("coordinator"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--tls"])
            .arg(&coordinator_tls)
            .arg("--state")
            .arg(dir.path().join("coordinator.redb"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("coordinator starts"),
    );
    for site in SITES {
        procs.0.push(
            Command::new(binary("site-agent"))
                .args(["run", "--config"])
                .arg({
                    let tls = enrol(dir.path(), "site", site, &[]);
                    let path = write_site_config(dir.path(), site);
                    let text = std::fs::read_to_string(&path).unwrap().replacen("[site]\n", &format!("[site]\ntls = {:?}\n", tls.display().to_string()), 1);
                    std::fs::write(&path, text).unwrap();
                    path
                })
                .args(["--coordinator", &url])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("site agent starts"),
        );
    }
    // Wait until the four sites are connected (the agents retry until the coordinator is up).
    let started = Instant::now();
    loop {
        let (ok, stdout, _) = run(Command::new(binary("coordinator")).args(["sites", "--coordinator", &url, "--tls"]).arg(&lead_tls));
        if ok && stdout.lines().skip(1).count() == 4 {
            for site in SITES {
                assert!(stdout.contains(site), "{stdout}");
            }
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "sites did not connect: {stdout}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let out = dir.path().join("out");
    let (ok, stdout, stderr) = run(
        Command::new(binary("coordinator"))
            .arg("submit")
            .arg(example_dir().join("job.toml"))
            .args(["--coordinator", &url, "--watch", "--out"])
            .arg(&out)
            .arg("--tls")
            .arg(&lead_tls),
    );
    assert!(ok, "submit failed:\n{stdout}\n{stderr}");
    assert!(stderr.contains("round  10/10 done"), "progress shown per round:\n{stderr}");
    assert!(stdout.contains("federated"), "results table printed:\n{stdout}");
    let report: fedcare_server::report::Report = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    // Record-level DP at epsilon 8: the bar of tests/privacy.rs.
    assert!(report.federated.as_ref().unwrap().accuracy >= 0.72, "{:?}", report.federated);
    assert_eq!(report.sites.len(), 4);
    assert_eq!(report.privacy.unit, "record");
    let spent = report.privacy.epsilon_spent.expect("epsilon reported");
    assert!(spent <= 8.0 && spent > 7.5, "{spent}");

    // Each site's own ledger shows the job's spend, computed by the site itself.
    let (ok, json, err) = run(Command::new(binary("site-agent")).args(["ledger", "--output", "json", "--config"]).arg(dir.path().join("va.toml")));
    assert!(ok, "{err}");
    let ledger: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(ledger.to_string().contains(&report.job_id), "{ledger}");
    let (ok, table, err) = run(Command::new(binary("site-agent")).args(["ledger", "--config"]).arg(dir.path().join("va.toml")));
    assert!(ok, "{err}");
    assert!(table.contains(&report.job_id[..12]) && table.contains("caps: 10 per job, 30 in total"), "{table}");
    assert!(std::fs::metadata(out.join("model.safetensors")).unwrap().len() > 0);

    // The same job id again is refused, and fetch gives the same report.
    let job_id = stdout.lines().next().unwrap().trim().to_owned();
    let (ok, _, stderr) = run(Command::new(binary("coordinator")).arg("submit").arg(example_dir().join("job.toml")).args(["--coordinator", &url, "--tls"]).arg(&lead_tls));
    assert!(!ok && stderr.contains("already"), "{stderr}");
    // A site's certificate cannot fetch the model: that is a research lead's act.
    let (ok, _, stderr) = run(Command::new(binary("coordinator")).args(["fetch", &job_id, "--coordinator", &url, "--tls"]).arg(dir.path().join("tls/va")));
    assert!(!ok && stderr.contains("not allowed"), "{stderr}");
    let fetched = dir.path().join("fetched");
    let (ok, _, stderr) = run(Command::new(binary("coordinator")).args(["fetch", &job_id, "--coordinator", &url, "--tls"]).arg(&lead_tls).arg("--out").arg(&fetched));
    assert!(ok, "{stderr}");
    assert_eq!(std::fs::read(fetched.join("model.safetensors")).unwrap(), std::fs::read(out.join("model.safetensors")).unwrap());
}

#[test]
fn bad_configs_are_refused_with_file_and_position_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    // A site config with an unknown key.
    let site = std::fs::read_to_string(example_dir().join("sites/cleveland.toml")).unwrap().replacen("[data]", "[data]\npathh = \"x\"", 1);
    let site_path = dir.path().join("site.toml");
    std::fs::write(&site_path, site).unwrap();
    let (ok, _, stderr) = run(Command::new(binary("site-agent")).args(["run", "--config"]).arg(&site_path));
    assert!(!ok);
    assert!(stderr.contains("site.toml") && stderr.contains("pathh") && stderr.contains("line"), "{stderr}");

    // A job asking for a model the registry lacks.
    let job = std::fs::read_to_string(example_dir().join("job.toml")).unwrap().replacen("logistic_regression", "gpt", 1);
    let job_path = dir.path().join("job.toml");
    std::fs::write(&job_path, job).unwrap();
    let (ok, _, stderr) = run(Command::new(binary("coordinator")).arg("submit").arg(&job_path).args(["--coordinator", "http://127.0.0.1:9"]));
    assert!(!ok);
    assert!(stderr.contains("job.toml") && stderr.contains("gpt"), "{stderr}");

    // A site whose file has a non-numeric value: `check` names file, line and column.
    let data = std::fs::read_to_string(example_dir().join("data/processed.cleveland.data")).unwrap();
    let mut lines: Vec<&str> = data.lines().collect();
    let bad = lines[2].replacen("67.0", "sixty-seven", 1);
    lines[2] = &bad;
    let data_path = dir.path().join("bad.data");
    std::fs::write(&data_path, lines.join("\n") + "\n").unwrap();
    let site = std::fs::read_to_string(example_dir().join("sites/cleveland.toml"))
        .unwrap()
        .replacen("../data/processed.cleveland.data", &data_path.display().to_string(), 1);
    std::fs::write(&site_path, site).unwrap();
    let (ok, _, stderr) = run(Command::new(binary("site-agent")).args(["check", "--config"]).arg(&site_path).arg("--job").arg(example_dir().join("job.toml")));
    assert!(!ok);
    assert!(stderr.contains("bad.data") && stderr.contains("line 3"), "{stderr}");

    // The coordinator cannot open a state file in a missing folder.
    let (ok, _, stderr) = run(Command::new(binary("coordinator")).args(["serve", "--insecure-plaintext", "--listen", "127.0.0.1:0", "--state", "/nonexistent-dir/x.redb"]));
    assert!(!ok);
    assert!(stderr.contains("/nonexistent-dir/x.redb"), "{stderr}");
}

#[test]
fn check_reports_the_mapping_for_each_example_site() {
    for (site, train, test) in [("cleveland", 199, 104), ("hungarian", 172, 89), ("switzerland", 30, 16), ("va", 85, 45)] {
        let (ok, stdout, stderr) = run(
            Command::new(binary("site-agent"))
                .args(["check", "--config"])
                .arg(example_dir().join("sites").join(format!("{site}.toml")))
                .arg("--job")
                .arg(example_dir().join("job.toml")),
        );
        assert!(ok, "{stderr}");
        assert!(stdout.contains(&format!("train {train} ")) && stdout.contains(&format!("test {test} ")), "{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_interrupted_by_a_coordinator_crash_resumes_and_ends_with_the_same_model() {
    // Without differential privacy the job is deterministic, so the resumed run must end with
    // exactly the model bytes of an uninterrupted one.
    let (job_text, spec) = fedcare_sim::job_text(&example_dir(), None, None, fedcare_sim::PrivacyOverride::Off).unwrap();
    let reference = tempfile::tempdir().unwrap();
    let opts = fedcare_sim::SimOptions {
        privacy: fedcare_sim::PrivacyOverride::Off,
        mtls: false,
        ..fedcare_e2e::sim_options(reference.path())
    };
    let uninterrupted = fedcare_sim::run(&opts, |_| {}).await.expect("reference run");
    assert_eq!(uninterrupted.report.job_id, spec.id().to_string());

    let dir = tempfile::tempdir().unwrap();
    let job_path = dir.path().join("job.toml");
    std::fs::write(&job_path, &job_text).unwrap();
    let state = dir.path().join("coordinator.redb");
    let audit = dir.path().join("coordinator.audit.jsonl");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let start = || {
        Command::new(binary("coordinator"))
            .args(["serve", "--insecure-plaintext", "--listen", &format!("127.0.0.1:{port}"), "--state"])
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("coordinator starts")
    };
    let mut procs = Procs(vec![start()]);
    for site in SITES {
        procs.0.push(
            Command::new(binary("site-agent"))
                .args(["run", "--coordinator", &url, "--config"])
                .arg(write_site_config(dir.path(), site))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("site agent starts"),
        );
    }
    let started = Instant::now();
    loop {
        let (ok, stdout, _) = run(Command::new(binary("coordinator")).args(["sites", "--coordinator", &url]));
        if ok && stdout.lines().skip(1).filter(|l| !l.contains("LOST")).count() == 4 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "sites did not connect");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, stdout, stderr) = run(Command::new(binary("coordinator")).arg("submit").arg(&job_path).args(["--coordinator", &url]));
    assert!(ok, "{stderr}");
    let job_id = stdout.trim().to_owned();
    // Kill the coordinator (SIGKILL: no chance to clean up) once three rounds are recorded in
    // its audit log.
    let before_kill = loop {
        let rounds = std::fs::read_to_string(&audit).unwrap_or_default().matches("round_completed").count();
        if rounds >= 3 {
            break rounds;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    };
    procs.0[0].kill().unwrap();
    procs.0[0].wait().unwrap();
    let at_kill = std::fs::read_to_string(&audit).unwrap();
    assert!(before_kill < spec.rounds as usize && !at_kill.contains("model_released"), "the job was still running when killed");

    // Restarted on the same state: the job resumes as the agents reconnect, and ends.
    procs.0.push(start());
    let restarted = Instant::now();
    loop {
        let (_, _, err) = run(Command::new(binary("coordinator")).args(["sites", "--coordinator", &url]));
        if !err.contains("cannot reach") {
            break;
        }
        assert!(restarted.elapsed() < Duration::from_secs(30), "the coordinator did not come back");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, _, stderr) = run(Command::new(binary("coordinator")).args(["watch", &job_id, "--coordinator", &url]));
    assert!(ok, "the resumed job finishes: {stderr}");
    let out = dir.path().join("out");
    let (ok, _, stderr) = run(Command::new(binary("coordinator")).args(["fetch", &job_id, "--coordinator", &url, "--out"]).arg(&out));
    assert!(ok, "{stderr}");
    let report: fedcare_server::report::Report = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let rounds: Vec<u32> = report.rounds.iter().map(|r| r.round).collect();
    assert_eq!(rounds, (1..=spec.rounds).collect::<Vec<_>>(), "every round once, none twice");
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        std::fs::read(&uninterrupted.model_path).unwrap(),
        "the resumed job ends with the uninterrupted run's model bytes"
    );
    // The audit log (continued by the restarted coordinator) verifies and has every round. A
    // round is audited before it is stored, so the round cut by the kill may be recorded twice,
    // but only ever with the same model: it was redone, not counted twice.
    fedcare_audit::verify(&audit).expect("audit log intact across the crash");
    let text = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(text.matches("site_connected").count(), 8, "each site connected before the crash and again after it");
    let entries = fedcare_audit::read_verified(&audit).unwrap();
    for r in 1..=spec.rounds {
        let hashes: std::collections::BTreeSet<String> = entries
            .iter()
            .filter_map(|e| match &e.event {
                fedcare_audit::AuditEvent::RoundCompleted { round, model_sha256, .. } if *round == r => Some(model_sha256.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(hashes.len(), 1, "round {r}: {hashes:?}");
    }
}

#[test]
fn site_agent_audit_verify_names_the_tampered_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.audit.jsonl");
    {
        let mut log = fedcare_audit::AuditLog::open(&path).unwrap();
        for i in 0..5 {
            log.append(fedcare_audit::AuditEvent::Note { text: format!("entry {i}") }, 1_000 + i).unwrap();
        }
    }
    let (ok, stdout, stderr) = run(Command::new(binary("site-agent")).args(["audit", "verify", "--log"]).arg(&path));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("5 entries, intact") && stdout.contains("head: "), "{stdout}");
    // Change one character of the third entry (line 3).
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("entry 2", "entry 9", 1)).unwrap();
    let (ok, _, stderr) = run(Command::new(binary("site-agent")).args(["audit", "verify", "--log"]).arg(&path));
    assert!(!ok);
    assert!(stderr.contains("line 3"), "{stderr}");
}
