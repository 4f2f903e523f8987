//! Site policy end to end: a job outside a site's policy is refused by that site, which never
//! even opens its data file, while the job runs with the others; with manual approval a site
//! does not join until its admin approves the job (here with the real `site-agent jobs`
//! commands), and a job not approved before the offer's deadline is declined and left waiting.
//!
//! Refused sites point their data at a file that does not exist: had the agent tried to read
//! it, the refusal would be a data error, not the policy's reason.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fedcare_audit::AuditEvent;
use fedcare_e2e::{SITES, TestCoordinator, binary, example_dir, job, site_config, write_site_config};
use fedcare_policy::Approvals;
use fedcare_proto::v1 as pb;
use fedcare_proto::v1::job_event::Kind;

/// The example's policy text, with `edit` applied to it.
fn example_policy(edit: impl FnOnce(String) -> String) -> String {
    let text = std::fs::read_to_string(example_dir().join("sites/policy/policy.toml")).unwrap();
    edit(text)
}

/// The example policy with manual approval.
fn manual(text: String) -> String {
    let out = text.replace("\napproval = \"automatic\"", "\napproval = \"manual\"");
    assert_ne!(out, text, "the example policy sets approval = \"automatic\"");
    out
}

/// A data path that does not exist: reading it would decline with a data error.
fn missing_data(dir: &Path, site: &str) -> PathBuf {
    let path = dir.join(format!("{site}-data-never-read.data"));
    assert!(!path.exists());
    path
}

/// The audit log's events.
fn audit(path: &Path) -> Vec<AuditEvent> {
    fedcare_audit::read_verified(path).unwrap().into_iter().map(|e| e.event).collect()
}

/// `(site, reason)` of every refusal among the events.
fn refusals(events: &[pb::JobEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Refused(r)) => Some((r.site_id.clone(), r.reason.clone())),
            _ => None,
        })
        .collect()
}

/// Runs `site-agent` with `args`; returns stdout, or panics with stderr on failure.
fn site_agent(args: &[&str]) -> String {
    let out = Command::new(binary("site-agent")).args(args).env("USER", "test-officer").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "site-agent {args:?} failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_never_reads_its_data_for_a_job_its_policy_refuses() {
    let coord = TestCoordinator::start().await;
    let dir = tempfile::tempdir().unwrap();
    // va's officer does not allow cholesterol: the example policy without `chol`.
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, example_policy(|t| t.replacen("\"chol\", ", "", 1))).unwrap();
    assert!(!std::fs::read_to_string(&policy).unwrap().contains("\"chol\""));
    let (text, spec) = job(|s| {
        s.rounds = 1;
        s.min_sites = 3;
        s.min_sites_per_round = Some(3);
    });
    let va_audit = dir.path().join("va.audit.jsonl");
    let mut va_ledger = PathBuf::new();
    for site in SITES {
        let (mut cfg, base) = site_config(site, &coord.url);
        if site == "va" {
            cfg.site.policy = Some(policy.clone());
            cfg.site.audit_log = Some(va_audit.clone());
            cfg.data.path = missing_data(dir.path(), site);
            va_ledger = cfg.privacy.as_ref().unwrap().ledger.clone();
        }
        coord.spawn_agent(cfg, base);
    }
    coord.wait_for_sites(4).await;
    let mut admin = fedcare_server::client::AdminClient::connect(&coord.url).await.unwrap();
    let id = admin.submit(&text).await.unwrap();
    let mut events = Vec::new();
    let report = admin.watch(&id, |e| events.push(e.clone())).await.expect("the job runs with the three other sites");

    let sites: Vec<&str> = report.sites.iter().map(|s| s.site.as_str()).collect();
    assert_eq!(sites, ["cleveland", "hungarian", "switzerland"], "va took no part");
    assert_eq!(report.rounds.len(), spec.rounds as usize);
    let reason = "this site's policy refuses the job: the job uses column `chol`, which this site's policy does not allow";
    // The policy's reason, not "the site's data does not match the job's schema": va never
    // tried to open its (missing) data file.
    assert_eq!(refusals(&events), [("va".to_owned(), format!("site declined: {reason}"))]);
    // Its audit log records the refusal with the same reason, and nothing after it.
    let log = audit(&va_audit);
    assert!(
        log.iter().any(|e| matches!(e, AuditEvent::JobRefused { job_id, reason: r } if *job_id == id && r == reason)),
        "{log:?}"
    );
    assert!(!log.iter().any(|e| matches!(e, AuditEvent::JobApproved { .. } | AuditEvent::RoundJoined { .. })), "{log:?}");
    // And it spent nothing.
    assert!(fedcare_ledger::Ledger::open_read_only(&va_ledger).unwrap().entries().is_empty());
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_approval_blocks_the_site_until_its_admin_approves() {
    let coord = TestCoordinator::start().await;
    let dir = tempfile::tempdir().unwrap();
    // cleveland as its admin would run it: a config file whose policy asks for manual approval.
    let config = write_site_config(dir.path(), "cleveland");
    let site_text = std::fs::read_to_string(&config).unwrap();
    let with_policy = site_text
        .replace("# policy = \"policy/policy.toml\"", "policy = \"policy.toml\"")
        .replace("# audit_log = \"cleveland.audit.jsonl\"", "audit_log = \"cleveland.audit.jsonl\"");
    assert_ne!(with_policy, site_text);
    std::fs::write(&config, with_policy).unwrap();
    std::fs::write(dir.path().join("policy.toml"), example_policy(manual)).unwrap();
    let config_arg = config.to_str().unwrap();

    // Without cleveland the job cannot start (min_sites = 4).
    let (text, _) = job(|s| {
        s.rounds = 1;
        s.deadlines.offer_secs = 30;
    });
    for site in SITES {
        let (mut cfg, base) = if site == "cleveland" {
            fedcare_agent::AgentConfig::load(&config).unwrap()
        } else {
            site_config(site, &coord.url)
        };
        cfg.site.coordinator = coord.url.clone();
        coord.spawn_agent(cfg, base);
    }
    coord.wait_for_sites(4).await;
    let mut admin = fedcare_server::client::AdminClient::connect(&coord.url).await.unwrap();
    let submitted = admin.submit(&text).await.unwrap();
    let id = fedcare_job::JobId::parse(&submitted).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let watch = tokio::spawn(async move { admin.watch(&submitted, |e| sink.lock().unwrap().push(e.clone())).await });

    // cleveland records the job as waiting for approval...
    let approvals = Approvals::open(dir.path().join("approvals")).unwrap();
    let started = Instant::now();
    while approvals.pending().unwrap().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "the job was never recorded as pending");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... and, a few of its looks at the store later, has still not joined: the job is still
    // recruiting, cleveland's audit log has no approval, its ledger no spend.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let pending = approvals.pending().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].job_hash, id);
    assert!(!events.lock().unwrap().iter().any(|e| matches!(e.kind, Some(Kind::Joined(_)))), "the job started without cleveland's approval");
    let log = audit(&dir.path().join("cleveland.audit.jsonl"));
    assert!(log.iter().any(|e| matches!(e, AuditEvent::JobReceived { job_id, .. } if *job_id == id.as_str())), "{log:?}");
    assert!(!log.iter().any(|e| matches!(e, AuditEvent::JobApproved { .. } | AuditEvent::JobRefused { .. })), "{log:?}");
    let ledger = dir.path().join("state/cleveland.ledger.jsonl");
    assert!(fedcare_ledger::Ledger::open_read_only(&ledger).unwrap().entries().is_empty());

    // The admin lists, reviews and approves it by a prefix of its hash.
    let prefix = &id.as_str()[..10];
    let list = site_agent(&["jobs", "list", "--config", config_arg]);
    assert!(list.contains("waiting for approval: 1") && list.contains(id.short()) && list.contains("heart-disease-logreg"), "{list}");
    let show = site_agent(&["jobs", "show", prefix, "--config", config_arg]);
    assert!(show.contains(id.as_str()) && show.contains("waiting for approval"), "{show}");
    let json: serde_json::Value = serde_json::from_str(&site_agent(&["jobs", "show", prefix, "--config", config_arg, "--output", "json"])).unwrap();
    assert_eq!(json["job_hash"], id.as_str());
    assert_eq!(json["passes_policy"], true);
    let approved = site_agent(&["jobs", "approve", prefix, "--config", config_arg, "--by", "Dr. Roe"]);
    assert!(approved.contains(&format!("approved job {id}")), "{approved}");

    let report = watch.await.unwrap().expect("the job completes once cleveland is approved");
    let sites: Vec<&str> = report.sites.iter().map(|s| s.site.as_str()).collect();
    assert_eq!(sites, SITES);
    assert!(approvals.pending().unwrap().is_empty());
    assert_eq!(approvals.approval(id.as_str()).unwrap().unwrap().approved_by, "Dr. Roe");
    let log = audit(&dir.path().join("cleveland.audit.jsonl"));
    assert!(
        log.iter().any(|e| matches!(e, AuditEvent::JobApproved { job_id, by } if *job_id == id.as_str() && by == "Dr. Roe (manual)")),
        "{log:?}"
    );
    assert!(!fedcare_ledger::Ledger::open_read_only(&ledger).unwrap().entries().is_empty(), "cleveland trained once approved");

    // The approval is listed, and can be revoked.
    let list = site_agent(&["jobs", "list", "--config", config_arg, "--output", "json"]);
    let json: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(json["approved"][0]["job_hash"], id.as_str());
    assert_eq!(json["approved"][0]["approved_by"], "Dr. Roe");
    site_agent(&["jobs", "revoke", prefix, "--config", config_arg]);
    assert!(!approvals.is_approved(id.as_str()).unwrap());
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_not_approved_before_the_offer_deadline_is_declined_and_left_waiting() {
    let coord = TestCoordinator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    // Manual approval; this job has no differential privacy, which this officer allows.
    let text = example_policy(manual).replace("require_differential_privacy = true", "require_differential_privacy = false");
    std::fs::write(&policy, text).unwrap();
    let (text, spec) = job(|s| {
        s.rounds = 1;
        s.min_sites = 3;
        s.min_sites_per_round = Some(3);
        s.deadlines.offer_secs = 2;
        s.privacy = fedcare_job::PrivacySpec::none();
    });
    let va_audit = dir.path().join("va.audit.jsonl");
    for site in SITES {
        let (mut cfg, base) = site_config(site, &coord.url);
        if site == "va" {
            cfg.site.policy = Some(policy.clone());
            cfg.site.audit_log = Some(va_audit.clone());
            cfg.data.path = missing_data(dir.path(), site);
        }
        coord.spawn_agent(cfg, base);
    }
    coord.wait_for_sites(4).await;
    let mut admin = fedcare_server::client::AdminClient::connect(&coord.url).await.unwrap();
    let id = admin.submit(&text).await.unwrap();
    let mut events = Vec::new();
    let report = admin.watch(&id, |e| events.push(e.clone())).await.expect("the job runs with the three other sites");

    let sites: Vec<&str> = report.sites.iter().map(|s| s.site.as_str()).collect();
    assert_eq!(sites, ["cleveland", "hungarian", "switzerland"]);
    // va answered in time, with the reason (not "missed the stage deadline", not a data error).
    assert_eq!(refusals(&events), [("va".to_owned(), "site declined: awaiting approval by the site's administrator".to_owned())]);
    let log = audit(&va_audit);
    assert!(
        log.iter().any(|e| matches!(e, AuditEvent::JobRefused { reason, .. } if reason == "awaiting approval by the site's administrator")),
        "{log:?}"
    );
    // The job still waits for va's admin, as offered.
    let pending = Approvals::open(Approvals::beside(&policy)).unwrap().pending().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].job_hash.as_str(), id);
    assert_eq!(pending[0].spec, spec);
    coord.stop().await;
}
