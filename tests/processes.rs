//! The federation as separate processes, as hospitals would run it: `coordinator serve`, one
//! `site-agent run --config site.toml` per site, and a research lead's `coordinator submit
//! --watch`. Uses the binaries that `cargo test --workspace` builds.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fedcare_e2e::{SITES, binary, example_dir, write_site_config};

/// `coordinator serve` without TLS on 127.0.0.1:`port`, its state in `state`, output discarded.
fn plaintext_coordinator(port: u16, state: &std::path::Path) -> Child {
    Command::new(binary("coordinator"))
        .args(["serve", "--insecure-plaintext", "--listen", &format!("127.0.0.1:{port}"), "--state"])
        .arg(state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("coordinator starts")
}

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
    let start = || plaintext_coordinator(port, &state);
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

/// Starts the four example sites' agents in this process, dialling `url`; they stop when the
/// returned sender sends `true` (or is dropped with the test).
fn spawn_example_sites(url: &str) -> tokio::sync::watch::Sender<bool> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for site in SITES {
        let (cfg, base) = fedcare_e2e::site_config(site, url);
        let agent = fedcare_agent::Agent::new(cfg, base).expect("agent config valid");
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let _ = agent
                .run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        });
    }
    stop
}

/// An admin client of the coordinator at `url`, once `n` sites are connected to it.
async fn admin_once_sites_connect(url: &str, n: usize) -> fedcare_server::client::AdminClient {
    let started = Instant::now();
    loop {
        if let Ok(mut a) = fedcare_server::client::AdminClient::connect(url).await
            && a.sites().await.is_ok_and(|s| s.iter().filter(|s| s.connected).count() == n)
        {
            return a;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the sites did not connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to 2 minutes) until job `id` has completed `n` rounds.
async fn wait_for_rounds(admin: &mut fedcare_server::client::AdminClient, id: &str, n: u32) {
    let started = Instant::now();
    while admin.job(id).await.expect("job listed").summary.expect("summary").rounds_done < n {
        assert!(started.elapsed() < Duration::from_secs(120), "{n} rounds did not complete within 2 minutes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Tells the helper beside a program on a small disk (see the tests below) to fill it, and
/// waits (up to 2 minutes) until it has.
async fn fill_disk(trigger: &std::path::Path) {
    std::fs::write(trigger, b"").expect("trigger written");
    let started = Instant::now();
    while !trigger.with_extension("done").exists() {
        assert!(started.elapsed() < Duration::from_secs(120), "the disk was not filled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Peak resident memory of a process so far, in bytes (Linux's `VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process's status is readable");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM in the status");
    kib * 1024
}

/// A model of more than 50 MB, over twelve times gRPC's usual 4 MiB message limit, trains
/// across the four sites with secure aggregation: it reaches the sites in chunks, their
/// masked updates come back in chunks, and the research lead fetches it in chunks. The
/// coordinator (a separate process, so its memory can be read) holds a few copies of the
/// model at most, not one per site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_over_50_mb_travels_in_chunks_and_the_coordinator_keeps_a_few_copies_not_one_per_site() {
    let (text, spec) = fedcare_e2e::job(|s| {
        s.name = "large-model".into();
        s.rounds = 2;
        s.model = fedcare_models::ModelSpec::Mlp { hidden: vec![4096, 3072] };
        s.training.batch_size = 64;
        s.privacy = fedcare_job::PrivacySpec::none();
    });
    assert!(spec.secure_aggregation.enabled, "the example job uses secure aggregation");
    let n_features = spec.n_features();
    let params = fedcare_models::layout(&spec.model, n_features).len() as u64;
    let model_bytes = params * 4;
    assert!(model_bytes >= 50_000_000, "the test model is {model_bytes} bytes");

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let procs = Procs(vec![plaintext_coordinator(port, &dir.path().join("coordinator.redb"))]);
    let pid = procs.0[0].id();
    let stop = spawn_example_sites(&url);
    let mut admin = admin_once_sites_connect(&url, 4).await;
    let baseline = peak_rss(pid);
    let id = admin.submit(&text).await.expect("job accepted");
    let report = admin.watch(&id, |_| {}).await.expect("the job finishes");
    assert_eq!(report.rounds.len(), 2);
    for r in &report.rounds {
        assert_eq!(r.sites.len(), 4, "every site's update was in round {}'s sum", r.round);
    }
    assert_eq!(report.parameters as u64, params);
    let federated = report.federated.as_ref().expect("federated evaluation");
    assert!(federated.n > 0 && federated.accuracy.is_finite(), "{federated:?}");
    let (safetensors, _) = admin.fetch(&id).await.expect("the model downloads");
    let model = fedcare_models::from_bytes(&spec.model, n_features, &safetensors).expect("the download is the job's model");
    assert_eq!(model.values.len() as u64, params);
    assert!(model.values.iter().all(|v| v.is_finite()));
    let peak = peak_rss(pid).saturating_sub(baseline);
    eprintln!(
        "model {:.1} MB; coordinator peak memory above idle {:.1} MB = {:.1} models",
        model_bytes as f64 / 1e6,
        peak as f64 / 1e6,
        peak as f64 / model_bytes as f64
    );
    // The model, its shared chunked encoding, the running sum (u32 lanes), the unmasked sum
    // (u64), one reassembled update and its decoding, and the store's and the result's
    // encodings: well under eight models. Holding each site's model or update would add four.
    assert!(peak < 8 * model_bytes, "the coordinator's memory grew by {peak} bytes for a {model_bytes}-byte model");
    let _ = stop.send(true);
}

/// Single-quotes `p` for `sh`.
fn sh_quote(p: &std::path::Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// A command that mounts a tmpfs of `size` on `disk` (an empty folder) in a private mount
/// namespace, then runs the shell snippet `script` there: a small disk of its own that the
/// test can fill, without touching the machine's. `None` if this machine does not allow
/// unprivileged user namespaces (the caller then says so and skips).
fn on_small_disk(disk: &std::path::Path, size: &str, script: &str) -> Option<Command> {
    let probe = Command::new("unshare").args(["-rm", "true"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: this machine does not allow user namespaces, so no private small disk can be made");
        return None;
    }
    let mut cmd = Command::new("unshare");
    cmd.args(["-rm", "sh", "-c", &format!("set -e; mount -t tmpfs -o size={size} tmpfs {}; {script}", sh_quote(disk))]);
    Some(cmd)
}

#[test]
fn a_full_disk_at_start_is_a_clear_error_naming_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let state = disk.join("coordinator.redb");
    let script = format!(
        "cat /dev/zero > {}/filler 2>/dev/null || true; exec {} serve --insecure-plaintext --listen 127.0.0.1:0 --state {}",
        sh_quote(&disk),
        sh_quote(&binary("coordinator")),
        sh_quote(&state)
    );
    let Some(mut cmd) = on_small_disk(&disk, "1m", &script) else { return };
    let out = cmd.stdin(Stdio::null()).output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the coordinator must not serve without a writable state file: {stderr}");
    assert!(stderr.contains(&state.display().to_string()) && stderr.contains("disk holding it is full"), "{stderr}");
}

/// The coordinator's disk fills up while a job runs: the job stops with a reason that says so
/// (it does not go on with rounds it could not record, which a restart would run again and
/// the sites would pay for twice), and the coordinator keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_mid_job_stops_the_job_with_a_clear_reason_and_the_coordinator_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let trigger = dir.path().join("fill");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    // A helper beside the coordinator fills the disk when told to (and gives up after 60 s).
    let script = format!(
        "( i=0; while [ ! -e {t} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; \
           if [ -e {t} ]; then cat /dev/zero > {d}/filler 2>/dev/null || true; touch {t}.done; fi ) & \
         exec {c} serve --insecure-plaintext --listen 127.0.0.1:{port} --state {d}/coordinator.redb",
        t = sh_quote(&trigger),
        d = sh_quote(&disk),
        c = sh_quote(&binary("coordinator")),
    );
    let Some(mut cmd) = on_small_disk(&disk, "64m", &script) else { return };
    let _procs = Procs(vec![cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("coordinator starts")]);
    let stop = spawn_example_sites(&url);
    let mut admin = admin_once_sites_connect(&url, 4).await;
    let (text, spec) = fedcare_e2e::job(|s| {
        s.name = "disk-fills".into();
        s.rounds = 1000;
        s.privacy = fedcare_job::PrivacySpec::none();
    });
    let id = admin.submit(&text).await.expect("job accepted");
    wait_for_rounds(&mut admin, &id, 2).await;
    fill_disk(&trigger).await;
    let err = admin.watch(&id, |_| {}).await.expect_err("the job cannot finish on a full disk");
    let reason = err.to_string();
    eprintln!("{reason}");
    assert!(reason.contains("No space left on device"), "the reason names the cause: {reason}");
    // Still serving, and the job is shown as over, with fewer rounds than it asked for.
    let job = admin.job(&id).await.expect("the coordinator still answers").summary.expect("summary");
    assert_eq!(job.state, "failed", "{job:?}");
    assert!(job.rounds_done < spec.rounds, "{job:?}");
    let _ = stop.send(true);
}

/// A site's disk fills up while it is in a job: it can no longer record a release in its
/// privacy ledger, so it sends none (it tells the coordinator it failed the task, without
/// data), and the job finishes with the other sites. Every round the site was counted in is
/// in its ledger: nothing left it unrecorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_whose_disk_fills_sends_nothing_it_could_not_record_and_the_job_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_site_config(dir.path(), "va");
    // The site's ledger is `state/va.ledger.jsonl` beside its config: that folder is the
    // small disk. A helper fills it when told to; when the agent ends, the ledger is copied out.
    let disk = dir.path().join("state");
    std::fs::create_dir(&disk).unwrap();
    let (trigger, out) = (dir.path().join("fill"), dir.path().join("ledger-copy"));
    let coordinator = fedcare_e2e::TestCoordinator::start().await;
    let script = format!(
        "( i=0; while [ ! -e {t} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; \
           if [ -e {t} ]; then cat /dev/zero > {d}/filler 2>/dev/null || true; touch {t}.done; fi ) & \
         {a} run --coordinator {u} --config {c}; status=$?; mkdir -p {o}; rm -f {d}/filler; cp -r {d}/. {o}/; exit $status",
        t = sh_quote(&trigger),
        d = sh_quote(&disk),
        o = sh_quote(&out),
        a = sh_quote(&binary("site-agent")),
        u = coordinator.url,
        c = sh_quote(&config),
    );
    let Some(mut cmd) = on_small_disk(&disk, "16m", &script) else { return };
    let mut va = Procs(vec![cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("site agent starts")]);
    for site in ["cleveland", "hungarian", "switzerland"] {
        coordinator.spawn_site(site);
    }
    coordinator.wait_for_sites(4).await;
    let (text, spec) = fedcare_e2e::job(|s| {
        s.name = "site-disk-fills".into();
        s.rounds = 40;
    });
    let mut admin = fedcare_server::client::AdminClient::connect(&coordinator.url).await.unwrap();
    let id = admin.submit(&text).await.unwrap();
    wait_for_rounds(&mut admin, &id, 1).await;
    fill_disk(&trigger).await;
    let mut lines = Vec::new();
    let report = admin
        .watch(&id, |e| lines.extend(fedcare_server::client::describe(e, spec.rounds).map(|l| l.text)))
        .await
        .expect("the job finishes with the other sites");
    // Stop the agent (SIGTERM, as an operator would), then the coordinator; the shell copies
    // the agent's ledger out.
    let pattern = format!("site-agent run --coordinator {} ", coordinator.url);
    let _ = Command::new("pkill").args(["-TERM", "-f", &pattern]).status();
    let waited = Instant::now();
    let status = loop {
        if let Some(status) = va.0[0].try_wait().expect("agent waited for") {
            break status;
        }
        if waited.elapsed() > Duration::from_secs(30) {
            let _ = Command::new("pkill").args(["-KILL", "-f", &pattern]).status();
            panic!("the site agent did not stop within 30 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    coordinator.stop().await;
    assert!(out.join("va.ledger.jsonl").exists(), "the ledger was copied out (agent status {status})");
    let with_va: Vec<u32> = report.rounds.iter().filter(|r| r.sites.iter().any(|s| s == "va")).map(|r| r.round).collect();
    assert_eq!(report.rounds.len() as u32, spec.rounds);
    assert!(with_va.contains(&1), "VA took part before its disk filled: {with_va:?}");
    assert!(!with_va.contains(&spec.rounds), "VA could not take part once its disk was full: {with_va:?}");
    assert!(lines.iter().any(|l| l.contains("va") && l.contains("No space left on device")), "the reason reached the research lead: {lines:#?}");
    let ledger = fedcare_ledger::Ledger::open_read_only(&out.join("va.ledger.jsonl")).expect("the ledger reads back");
    let charged: Vec<u32> = ledger.entries().iter().filter(|e| e.job == spec.id().as_str()).filter_map(|e| e.round).collect();
    assert!(with_va.iter().all(|r| charged.contains(r)), "every round VA was counted in is in its ledger: counted {with_va:?}, charged {charged:?}");
}

/// SIGTERM (what docker, systemd and Kubernetes send) stops a coordinator promptly even with
/// sites connected and a research lead watching: their streams are closed, not waited for.
/// The running job is not failed by the stop: the next coordinator on the same state file
/// resumes it, the sites reconnect, and it finishes with every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_coordinator_promptly_and_the_job_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("coordinator.redb");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut procs = Procs(vec![plaintext_coordinator(port, &state)]);
    let stop = spawn_example_sites(&url);
    let mut admin = admin_once_sites_connect(&url, 4).await;
    let (text, spec) = fedcare_e2e::job(|s| {
        s.name = "sigterm".into();
        s.rounds = 200;
        s.privacy = fedcare_job::PrivacySpec::none();
    });
    let id = admin.submit(&text).await.expect("job accepted");
    let watcher = {
        let (url, id) = (url.clone(), id.clone());
        tokio::spawn(async move {
            let mut admin = fedcare_server::client::AdminClient::connect(&url).await.unwrap();
            admin.watch(&id, |_| {}).await
        })
    };
    wait_for_rounds(&mut admin, &id, 2).await;
    let pid = procs.0[0].id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let stopped_at = Instant::now();
    let status = loop {
        if let Some(status) = procs.0[0].try_wait().unwrap() {
            break status;
        }
        assert!(stopped_at.elapsed() < Duration::from_secs(10), "the coordinator did not stop within 10 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "a clean stop: {status}");
    // The research lead's watch ended with the coordinator (it does not hang).
    let watched = tokio::time::timeout(Duration::from_secs(10), watcher).await.expect("the watch ended").unwrap();
    assert!(watched.is_err(), "the job did not finish before the stop");
    // A new coordinator on the same state file resumes the job; the sites come back.
    procs.0[0] = plaintext_coordinator(port, &state);
    let mut admin = admin_once_sites_connect(&url, 4).await;
    let report = tokio::time::timeout(Duration::from_secs(120), admin.watch(&id, |_| {}))
        .await
        .expect("the resumed job ends")
        .expect("the resumed job finishes");
    assert_eq!(report.rounds.len() as u32, spec.rounds);
    let rounds: Vec<u32> = report.rounds.iter().map(|r| r.round).collect();
    assert_eq!(rounds, (1..=spec.rounds).collect::<Vec<_>>(), "every round once, in order");
    let _ = stop.send(true);
}
