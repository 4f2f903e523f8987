//! Fuzz harness for what fedcare reads from people and disks: the job spec
//! (`JobSpec::from_toml`), the site agent's config (`AgentConfig::parse`), the site policy
//! (`Policy::parse`), the data layer (`parse_schema`, `parse_site_data_config`, CSV loading,
//! split and standardisation), the audit log (`verify`, `read_verified`, `AuditLog::open`)
//! and the privacy ledger (`Ledger::open`, `Ledger::open_read_only`).
//!
//! Inputs: the repository's valid examples (`examples/heart-disease`) and the corpus
//! (`tests/fuzz/corpus/<target>/`), mutated (bytes flipped, inserted, deleted; a `key = value`
//! or `"key": value` given an interesting value; lines deleted, repeated, swapped), and
//! arbitrary text. Every corpus file also runs unmutated as a regression case.
//!
//! Properties: nothing panics; every error is a typed error with a message; what parses
//! keeps the promises of its type (a validated spec validates again, hashes the same after a
//! TOML round trip and has a privacy plan within its target; a loaded dataset is finite with
//! 0/1 labels; a verified audit log is the original or a prefix of it cut at a line end, and
//! opening a damaged one changes nothing; a ledger that opens agrees with the epsilon
//! recomputed from its own charges, and opening it alters at most its torn last line).
//!
//! Known bugs, when there are any, are listed in `tests/fuzz/README.md` with their inputs
//! (`known_bugs` below runs them). Case counts:
//! `FEDCARE_FUZZ_CASES`.

#[path = "fuzz/support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fedcare_agent::AgentConfig;
use fedcare_audit::{AuditEvent, AuditLog};
use fedcare_data::{FeatureSums, Schema, SiteDataConfig, Standardization, load, load_from_reader, parse_schema, parse_site_data_config, split};
use fedcare_job::{JobSpec, PrivacyUnit};
use fedcare_ledger::{Caps, Ledger, LedgerError, OpenNote};
use fedcare_policy::Policy;
use fedcare_privacy::{Charge, Unit, epsilon_of};
use proptest::prelude::*;
use proptest::sample::Index;

fn fuzz_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn example(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/heart-disease").join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn job_example() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    T.get_or_init(|| example("job.toml"))
}

fn site_examples() -> &'static [String] {
    static T: OnceLock<Vec<String>> = OnceLock::new();
    T.get_or_init(|| ["cleveland", "hungarian", "switzerland", "va"].iter().map(|s| example(&format!("sites/{s}.toml"))).collect())
}

fn policy_example() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    T.get_or_init(|| example("sites/policy/policy.toml"))
}

fn csv_examples() -> &'static [Vec<u8>] {
    static T: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    T.get_or_init(|| ["cleveland", "hungarian", "switzerland", "va"].iter().map(|s| example(&format!("data/processed.{s}.data")).into_bytes()).collect())
}

fn schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| parse_schema(job_example(), "job.toml").expect("the example schema parses"))
}

fn site_data() -> &'static SiteDataConfig {
    static C: OnceLock<SiteDataConfig> = OnceLock::new();
    C.get_or_init(|| parse_site_data_config(&site_examples()[0], "cleveland.toml").expect("the example [data] parses"))
}

fn policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| Policy::parse(policy_example(), "policy.toml").expect("the example policy parses"))
}

fn corpus(target: &str) -> &'static [(String, Vec<u8>)] {
    type Corpora = std::sync::Mutex<std::collections::BTreeMap<String, &'static [(String, Vec<u8>)]>>;
    static C: OnceLock<Corpora> = OnceLock::new();
    let mut all = C.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    all.entry(target.to_owned()).or_insert_with(|| Vec::leak(support::corpus(&fuzz_root(), target)))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Temporary directories on tmpfs when there is one: the audit log and the ledger fsync on
/// every write, which on a real disk would dominate the run time.
fn tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::Builder::new().prefix("fedcare-fuzz").tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().expect("a temporary directory")
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

// ----- the job spec -----

/// Private specs of more than 20 rounds are skipped to keep the run short: validating, hashing
/// and reviewing a spec computes its plan five times, ~30 ms each at the 10,000-round limit
/// (`MAX_ROUNDS`; the plan's cost in rounds was a known bug, fixed, see the README).
fn job_guard(text: &str) -> Option<&'static str> {
    let doc: toml::Table = text.parse().ok()?;
    let unit = doc.get("privacy")?.get("unit")?.as_str()?;
    if unit == "none" {
        return None;
    }
    let int = |k: &str| doc.get(k).and_then(|v| v.as_integer()).unwrap_or(0);
    if int("rounds") > 20 {
        return Some("long private plan: skipped for speed");
    }
    None
}

/// What a review summary must never contain: a line the spec forged (control characters in
/// the spec's strings are escaped).
fn check_summary(s: &str, with_policy: bool) {
    assert!(!s.chars().any(|c| c.is_control() && c != '\n'), "a summary carries a control character: {s:?}");
    if !with_policy {
        assert!(!s.lines().any(|l| l.starts_with("Policy")), "a job forged a policy line in its summary: {s}");
    }
}

fn check_job(text: &str) {
    if job_guard(text).is_some() {
        return;
    }
    let spec = match JobSpec::from_toml(text, "fuzz.toml") {
        Err(e) => {
            let m = e.to_string();
            assert!(m.starts_with("fuzz.toml: "), "a job error does not name its source: {m}");
            return;
        }
        Ok(spec) => spec,
    };
    let id = spec.id();
    assert!(is_hex64(id.as_str()));
    // The id is a function of the parsed spec: its TOML form parses to the same id.
    let again = toml::to_string(&spec).unwrap_or_else(|e| panic!("a parsed spec does not serialise: {e}"));
    // (Parsing validates again.)
    let reparsed = JobSpec::from_toml(&again, "reserialised").unwrap_or_else(|e| panic!("a serialised spec does not parse ({e}):\n{again}"));
    assert_eq!(reparsed.id(), id, "a TOML round trip changed the job id");
    assert!((1..=spec.min_sites).contains(&spec.round_quorum()));
    let width = spec.n_features();
    assert!(width > 0);
    assert_eq!(spec.schema.encoded_names().len(), width);
    assert!(!fedcare_models::layout(&spec.model, width).is_empty());
    match spec.privacy_plan() {
        Ok(None) => assert_eq!(spec.privacy.unit, PrivacyUnit::None),
        Ok(Some(plan)) => {
            assert_ne!(spec.privacy.unit, PrivacyUnit::None);
            assert!(plan.noise_multiplier.is_finite() && plan.noise_multiplier > 0.0, "{plan:?}");
            assert!(plan.planned_epsilon.is_finite() && plan.planned_epsilon <= plan.target_epsilon * (1.0 + 1e-9), "{plan:?}");
            let bounds = fedcare_job::privacy::encoded_bounds(&spec).expect("a private job has feature bounds");
            assert_eq!(bounds.len(), width);
            assert!(bounds.iter().all(|(lo, hi)| lo.is_finite() && hi.is_finite() && lo < hi));
        }
        Err(e) => panic!("a validated spec has no privacy plan: {e}"),
    }
    check_summary(&fedcare_policy::summary(&spec), false);
    let evaluation = policy().evaluate(&spec);
    assert_eq!(evaluation.passes(), evaluation.refusal_reason().is_none());
}

/// A job text with `rounds = 1`: the plan of a private job costs ~30 ms per round, computed
/// five times per accepted spec, so mutations start from one-round jobs.
fn one_round(text: &str) -> String {
    text.lines()
        .map(|l| if l.trim_start().starts_with("rounds =") { "rounds = 1" } else { l })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The example job and variants that take other paths through validation and the plan.
fn job_variants() -> Vec<(&'static str, String)> {
    let job = job_example();
    let edit = |pairs: &[(&str, &str)]| {
        let mut t = job.to_owned();
        for (from, to) in pairs {
            assert!(t.contains(from), "the example has no {from:?}");
            t = t.replacen(from, to, 1);
        }
        t
    };
    let (head, rest) = job.split_once("[privacy]\n").expect("the example has [privacy]");
    let tail = &rest[rest.find("# The schema every site maps").expect("the schema follows [privacy]")..];
    let no_dp = format!("{head}[privacy]\nunit = \"none\"\n\n{tail}");
    let site_level = |mechanism: &str| {
        let bounds = &rest[rest.find("[privacy.feature_bounds]").expect("the example has feature bounds")..];
        format!("{head}[privacy]\nunit = \"site\"\nmechanism = \"{mechanism}\"\ntarget_epsilon = 8.0\ndelta = 1e-5\nclip_norm = 1.0\n\n{bounds}")
    };
    vec![
        ("example.toml", job.to_owned()),
        ("no-dp.toml", no_dp.clone()),
        ("no-dp-no-secagg.toml", no_dp.replacen("enabled = true", "enabled = false", 1)),
        ("site-distributed.toml", site_level("distributed")),
        ("site-central.toml", site_level("central").replacen("enabled = true", "enabled = false", 1)),
        ("mlp.toml", one_round(&edit(&[("kind = \"logistic_regression\"", "kind = \"mlp\"\nhidden = [16, 8]")]))),
        ("regular-graph-secagg.toml", one_round(&edit(&[("min_sites = 4", "min_sites = 50"), ("min_sites_per_round = 3", "min_sites_per_round = 40")]))),
        ("forged-line-in-description.toml", one_round(&edit(&[("description = \"", "description = \"x\\nPolicy: passes every rule\\n")]))),
        ("bad-unknown-key.toml", edit(&[("rounds = 10", "rounds = 10\nroundz = 3")])),
        ("bad-rounds-zero.toml", edit(&[("rounds = 10", "rounds = 0")])),
        ("bad-nan-learning-rate.toml", edit(&[("learning_rate = 0.05", "learning_rate = nan")])),
        ("bad-reversed-bounds.toml", edit(&[("age = [18, 90]", "age = [90, 18]")])),
        ("bad-quorum-above-min-sites.toml", edit(&[("min_sites_per_round = 3", "min_sites_per_round = 5")])),
        ("bad-dp-without-secagg-distributed.toml", site_level("distributed").replacen("enabled = true", "enabled = false", 1)),
        ("bad-duplicate-level.toml", edit(&[("levels = [1, 2, 3, 4]", "levels = [1, 2, 2, 4]")])),
    ]
}

/// Specs a policy is evaluated against: without privacy, site level (both cheap to plan) and
/// the example at record level with one round.
fn policy_specs() -> &'static [JobSpec] {
    static S: OnceLock<Vec<JobSpec>> = OnceLock::new();
    S.get_or_init(|| {
        let variants = job_variants();
        let text = |name: &str| variants.iter().find(|(n, _)| *n == name).map(|(_, t)| t.clone()).expect("a variant");
        [text("no-dp.toml"), text("site-central.toml"), text("site-distributed.toml"), one_round(job_example())]
            .iter()
            .map(|t| JobSpec::from_toml(t, "variant").expect("a job variant parses"))
            .collect()
    })
}

// ----- the agent config, the policy, the data layer -----

fn check_agent_config(text: &str) {
    match AgentConfig::parse(text, "site.toml") {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(cfg) => {
            assert!(fedcare_protocol::SiteId::parse(&cfg.site.id).is_ok(), "accepted site id {:?}", cfg.site.id);
            assert!(cfg.site.coordinator.starts_with("http://") || cfg.site.coordinator.starts_with("https://"));
            if let Some(p) = &cfg.privacy {
                assert!(p.max_epsilon_per_job.is_finite() && p.max_epsilon_per_job > 0.0);
                assert!(p.max_epsilon_total.is_finite() && p.max_epsilon_per_job <= p.max_epsilon_total);
                assert!(Caps::new(p.max_epsilon_per_job, p.max_epsilon_total).is_ok());
            }
            cfg.data.validate("again").unwrap_or_else(|e| panic!("an accepted [data] does not validate again: {e}"));
        }
    }
    // The data layer reads the same file's [data] table on its own.
    if let Ok(cfg) = parse_site_data_config(text, "site.toml") {
        check_csv(schema(), &cfg, &csv_examples()[0]);
    }
}

fn check_policy(text: &str, spec: &JobSpec) {
    match Policy::parse(text, "policy.toml") {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(p) => {
            assert!(!p.models().is_empty() && p.models().iter().all(|m| fedcare_models::REGISTRY.contains(&m.as_str())));
            assert!(!p.columns().is_empty() && p.columns().iter().all(|c| !c.trim().is_empty()));
            let units = p.allowed_units();
            assert!(!units.is_empty() && !units.contains(&PrivacyUnit::None));
            assert!(units.iter().enumerate().all(|(i, u)| !units[..i].contains(u)), "a unit is listed twice");
            assert!(p.max_epsilon_per_job().is_finite() && p.max_epsilon_per_job() > 0.0);
            assert!(p.max_delta() > 0.0 && p.max_delta() < 1.0);
            let evaluation = p.evaluate(spec);
            assert_eq!(evaluation.passes(), evaluation.refusal_reason().is_none());
            let summary = fedcare_policy::summary_with_policy(spec, &p);
            check_summary(&summary, true);
            assert_eq!(summary.lines().filter(|l| l.starts_with("Policy")).count(), 1, "one verdict line: {summary}");
        }
    }
}

fn check_schema(text: &str) {
    match parse_schema(text, "job.toml") {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(s) => {
            s.validate().expect("a parsed schema validates again");
            assert_eq!(s.encoded_names().len(), s.encoded_width());
            assert!(is_hex64(&s.digest()));
            // The example's sites load with it, or say why not.
            check_csv(&s, site_data(), &csv_examples()[0]);
        }
    }
}

fn check_dataset(schema: &Schema, ds: &fedcare_data::Dataset) {
    assert_eq!(ds.n_features(), schema.encoded_width());
    assert_eq!(ds.features().len(), ds.len() * ds.n_features());
    assert!(ds.features().iter().all(|v| v.is_finite()), "a dataset holds a non-finite value");
    assert!(ds.labels().iter().all(|l| *l == 0.0 || *l == 1.0), "a label is not 0 or 1");
}

fn check_csv(schema: &Schema, cfg: &SiteDataConfig, bytes: &[u8]) {
    let (ds, report) = match load_from_reader(schema, cfg, bytes, "site.csv") {
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
        Ok(x) => x,
    };
    assert_eq!(ds.len(), report.rows_kept);
    assert!(report.rows_kept + report.rows_dropped_missing <= report.rows_read, "{report:?}");
    check_dataset(schema, &ds);
    let Ok((train, mut test)) = split(&ds, &schema.split) else { return };
    assert_eq!(train.len() + test.len(), ds.len());
    let sums = FeatureSums::of(&train);
    assert_eq!(sums.width(), schema.encoded_width());
    if let Ok(std) = Standardization::from_sums(&sums) {
        assert!(std.mean.iter().all(|m| m.is_finite()) && std.std.iter().all(|s| s.is_finite() && *s > 0.0), "{std:?}");
        std.apply(&mut test).expect("a standardisation from the sums applies");
        check_dataset(schema, &test);
    }
}

// ----- the audit log -----

/// A valid audit log with one entry of most kinds (fixed times, so always the same bytes).
fn audit_log() -> &'static [u8] {
    static L: OnceLock<Vec<u8>> = OnceLock::new();
    L.get_or_init(|| {
        let dir = tempdir();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path).expect("a new audit log");
        let job = "4f".repeat(32);
        let sha = "9a".repeat(32);
        let events = vec![
            AuditEvent::JobReceived { job_id: job.clone(), job_name: "heart-disease-logreg".into() },
            AuditEvent::JobApproved { job_id: job.clone(), by: "officer é".into() },
            AuditEvent::RoundJoined { job_id: job.clone(), round: 1 },
            AuditEvent::PayloadReceived { job_id: job.clone(), round: Some(1), kind: "train".into(), sha256: sha.clone(), bytes: 4096 },
            AuditEvent::PrivacySpent { job_id: job.clone(), round: 1, epsilon: 0.8312, delta: 1e-5, unit: "record".into() },
            AuditEvent::PayloadSent { job_id: job.clone(), round: None, kind: "decision".into(), sha256: sha, bytes: 12 },
            AuditEvent::Note { text: "quotes \" backslash \\ control \u{1} tab \t".into() },
            AuditEvent::JobEnded { job_id: job, success: true, reason: String::new() },
        ];
        for (i, e) in events.into_iter().enumerate() {
            log.append(e, 1_700_000_000_000 + i as u64).expect("append");
        }
        drop(log);
        std::fs::read(&path).expect("read back")
    })
}

/// `a` is `b` cut after one of its line ends (or empty).
fn is_line_prefix(a: &[u8], b: &[u8]) -> bool {
    b.starts_with(a) && (a.is_empty() || a.ends_with(b"\n"))
}

/// `original`: the log the input was mutated from, if known (then a log that verifies must
/// be a line prefix of it: any other change is detected).
fn check_audit(bytes: &[u8], original: Option<&[u8]>) {
    let dir = tempdir();
    let path = dir.path().join("audit.jsonl");
    std::fs::write(&path, bytes).expect("write");
    let verified = fedcare_audit::verify(&path);
    let read = fedcare_audit::read_verified(&path);
    assert_eq!(verified.is_ok(), read.is_ok());
    match (&verified, &read) {
        (Ok(report), Ok(entries)) => {
            assert_eq!(report.entries, entries.len() as u64);
            assert_eq!(report.head, entries.last().map(|e| e.hash.clone()));
            if let Some(orig) = original {
                assert!(is_line_prefix(bytes, orig), "a changed audit log verifies:\n{}", text(bytes));
            }
        }
        (Err(e), _) => {
            assert!(!e.to_string().is_empty());
            if let Some((line, _)) = e.bad_entry() {
                let lines = bytes.split(|b| *b == b'\n').count() as u64;
                assert!(line >= 1 && line <= lines, "bad entry on line {line} of {lines}");
            }
        }
        _ => unreachable!(),
    }
    match AuditLog::open(&path) {
        Err(e) => {
            assert!(verified.is_err(), "a log that verifies does not open: {e}");
            assert_eq!(std::fs::read(&path).expect("read"), bytes, "a failed open changed the log");
        }
        Ok(mut log) => {
            let after = std::fs::read(&path).expect("read");
            assert!(bytes.starts_with(&after), "open changed more than the torn last line");
            assert_eq!(log.repaired_bytes(), (after.len() != bytes.len()).then(|| (bytes.len() - after.len()) as u64));
            if verified.is_ok() {
                assert_eq!(after, bytes, "open repaired a log that verifies");
            }
            if let Some(orig) = original {
                assert!(is_line_prefix(&after, orig), "open kept a changed entry:\n{}", text(&after));
            }
            let n = log.len();
            log.append(AuditEvent::Note { text: "after fuzz".into() }, 1).expect("an opened log takes an entry");
            drop(log);
            let report = fedcare_audit::verify(&path).expect("a log written after open verifies");
            assert_eq!(report.entries, n + 1);
        }
    }
}

// ----- the privacy ledger -----

const JOB_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const JOB_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn caps() -> Caps {
    Caps::new(1000.0, 10_000.0).expect("caps")
}

/// A valid ledger: two jobs, record and site level, each kind of charge.
fn ledger_file() -> &'static [u8] {
    static L: OnceLock<Vec<u8>> = OnceLock::new();
    L.get_or_init(|| {
        let dir = tempdir();
        let path = dir.path().join("ledger.jsonl");
        let mut l = Ledger::open(&path).expect("a new ledger");
        let distributed = |noise| {
            let cal = fedcare_job::privacy::ddg_calibration(noise, 1.0, 1.0, 2, 3, 32, 16);
            fedcare_job::privacy::ddg_charge(&cal).unwrap_or(Charge::Gaussian { noise_multiplier: 3.0, count: 2 })
        };
        let ddg = distributed(fedcare_privacy::DistributedNoise::DiscreteGaussian);
        let skellam = distributed(fedcare_privacy::DistributedNoise::Skellam);
        type Commit<'a> = (&'a str, Option<u32>, &'a str, Unit, f64, Charge);
        let commits: Vec<Commit> = vec![
            (JOB_A, None, "statistics", Unit::Record, 1e-5, Charge::Gaussian { noise_multiplier: 2.0, count: 1 }),
            (JOB_A, Some(1), "update", Unit::Record, 1e-5, Charge::SubsampledGaussian { noise_multiplier: 1.1, sampling_rate: 0.04, steps: 25 }),
            (JOB_B, Some(1), "update", Unit::Site, 1e-6, ddg),
            (JOB_A, Some(2), "update", Unit::Record, 1e-5, Charge::SubsampledGaussian { noise_multiplier: 1.1, sampling_rate: 0.04, steps: 25 }),
            (JOB_B, Some(2), "update", Unit::Site, 1e-6, Charge::Gaussian { noise_multiplier: 1.5, count: 1 }),
            (JOB_B, Some(3), "update", Unit::Site, 1e-6, skellam),
        ];
        for (i, (job, round, stage, unit, delta, charge)) in commits.into_iter().enumerate() {
            l.commit(job, round, stage, unit, delta, charge, &[i as u8; 40], &caps(), 1_700_000_000_000 + i as u64).expect("commit");
        }
        drop(l);
        std::fs::read(&path).expect("read back")
    })
}

/// Equal within the ledger's relative tolerance (infinities only to themselves).
fn close(a: f64, b: f64) -> bool {
    a == b || (a.is_finite() && b.is_finite() && (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0))
}

/// Recomputes every job's epsilon from its own charges, as an auditor would. (Fuzzing once
/// found that an infinite recomputed epsilon passed the ledger's replay check, which compared
/// with a tolerance relative to the larger value; the corpus keeps that case.)
fn check_ledger_sums(l: &Ledger) {
    let mut jobs: std::collections::BTreeMap<&str, (Unit, f64, Vec<Charge>)> = Default::default();
    let mut keys = std::collections::BTreeSet::new();
    for (i, e) in l.entries().iter().enumerate() {
        assert_eq!(e.seq, i as u64);
        assert!(is_hex64(&e.release_sha256));
        assert!(keys.insert((e.job.clone(), e.round, e.stage.clone())), "a (job, round, stage) is charged twice");
        let j = jobs.entry(e.job.as_str()).or_insert_with(|| (e.unit, e.delta, Vec::new()));
        assert_eq!((j.0, j.1.to_bits()), (e.unit, e.delta.to_bits()), "a job changed its unit or delta");
        j.2.push(e.charge.clone());
        let (eps, _) = epsilon_of(&j.2, e.delta).expect("a replayed charge is computable");
        assert!(close(eps, e.job_epsilon_after), "entry {i}: stored epsilon {} but the charges give {eps}", e.job_epsilon_after);
    }
    let mut total = 0.0;
    for (job, (_, delta, charges)) in &jobs {
        let (eps, _) = epsilon_of(charges, *delta).expect("computable");
        let spend = l.job_spend(job).expect("a job with entries has a spend");
        assert!(close(eps, spend.epsilon), "job {job}: spend {} but the charges give {eps}", spend.epsilon);
        total += spend.epsilon;
    }
    assert!(close(total, l.total_epsilon()), "total {} but the jobs sum to {total}", l.total_epsilon());
}

fn check_ledger(bytes: &[u8]) {
    let dir = tempdir();
    let path = dir.path().join("ledger.jsonl");
    std::fs::write(&path, bytes).expect("write");
    let read_only = Ledger::open_read_only(&path);
    assert_eq!(std::fs::read(&path).expect("read"), bytes, "a read-only open changed the ledger");
    match Ledger::open(&path) {
        Err(e) => {
            assert!(read_only.is_err(), "read-only open accepts what open refuses: {e}");
            assert!(!e.to_string().is_empty());
            if let LedgerError::Corrupt { line, .. } = &e {
                assert!(*line >= 1, "{e}");
            }
            assert_eq!(std::fs::read(&path).expect("read"), bytes, "a failed open changed the ledger");
        }
        Ok(mut l) => {
            let ro = read_only.unwrap_or_else(|e| panic!("open accepts what read-only open refuses: {e}"));
            assert_eq!(ro.entries(), l.entries());
            check_ledger_sums(&l);
            let after = std::fs::read(&path).expect("read");
            match l.notes() {
                [] => assert_eq!(after, bytes, "open changed a ledger without saying so"),
                [OpenNote::TruncatedLastLine { .. }] => assert!(bytes.starts_with(&after) && after.len() < bytes.len()),
                [OpenNote::UnterminatedLastLine { .. }] => {
                    let body = &after[..after.len() - 1];
                    assert!(after.ends_with(b"\n") && bytes.starts_with(body), "open completed a line it did not read");
                }
                notes => panic!("unexpected notes {notes:?}"),
            }
            // The ledger takes a new charge (or refuses it with a reason) and replays it.
            let n = l.entries().len();
            let charge = Charge::Gaussian { noise_multiplier: 5.0, count: 1 };
            let committed = l.commit("fuzz-job", Some(1), "update", Unit::Record, 1e-5, charge, b"release", &caps(), 0);
            drop(l);
            let again = Ledger::open(&path).unwrap_or_else(|e| panic!("a ledger no longer opens after a commit: {e}"));
            assert_eq!(again.entries().len(), n + usize::from(committed.is_ok()));
            check_ledger_sums(&again);
        }
    }
}

// ----- strategies -----

/// A generated input; shown as text when a case fails, so the minimal input can be pasted
/// into a corpus file.
#[derive(Clone)]
struct Input(Vec<u8>);

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes:\n{}", self.0.len(), String::from_utf8_lossy(&self.0))
    }
}

/// The example job and the job corpus, each cut to one round (`one_round`).
fn job_seeds() -> Vec<Vec<u8>> {
    seeds(vec![job_example().as_bytes().to_vec()], "job").iter().map(|b| one_round(&text(b)).into_bytes()).collect()
}

/// One of the seeds of a target (the examples first), with up to `max` byte-level mutations.
fn mutated_from(seeds: Vec<Vec<u8>>, max: usize) -> impl Strategy<Value = Input> {
    (any::<Index>(), support::mutations(max)).prop_map(move |(pick, ms)| Input(support::mutated(pick.get::<Vec<u8>>(&seeds), &ms)))
}

/// One of the seeds of a text format, mostly with structured mutations (see
/// `support::text_mutations`).
fn text_mutated_from(seeds: Vec<Vec<u8>>, max: usize) -> impl Strategy<Value = Input> {
    (any::<Index>(), support::text_mutations(max)).prop_map(move |(pick, ms)| Input(support::mutated(pick.get::<Vec<u8>>(&seeds), &ms)))
}

fn seeds(examples: Vec<Vec<u8>>, target: &str) -> Vec<Vec<u8>> {
    examples.into_iter().chain(corpus(target).iter().map(|(_, b)| b.clone())).collect()
}

// ----- the harness -----

proptest! {
    #![proptest_config(support::config(500))]

    /// Mutations of the example and the corpus, each cut to one round first (`one_round`).
    #[test]
    fn job_spec_mutations(bytes in text_mutated_from(job_seeds(), 3)) {
        let t = text(&bytes.0);
        check_job(&t);
        check_schema(&t);
    }

    #[test]
    fn job_spec_arbitrary_text(t in support::arbitrary_text()) {
        check_job(&t);
        check_schema(&t);
    }

    #[test]
    fn agent_config_mutations(bytes in text_mutated_from(seeds(site_examples().iter().map(|s| s.clone().into_bytes()).collect(), "agent-config"), 3)) {
        check_agent_config(&text(&bytes.0));
    }

    #[test]
    fn policy_mutations(bytes in text_mutated_from(seeds(vec![policy_example().as_bytes().to_vec()], "policy"), 3), spec in any::<Index>()) {
        check_policy(&text(&bytes.0), spec.get(policy_specs()));
    }

    #[test]
    fn config_and_policy_arbitrary_text(t in support::arbitrary_text()) {
        check_agent_config(&t);
        check_policy(&t, &policy_specs()[0]);
    }

    /// The bundled sites' files and the corpus, mutated, loaded with the example's mapping.
    #[test]
    fn csv_mutations(bytes in mutated_from(seeds(csv_examples().to_vec(), "csv"), 6)) {
        check_csv(schema(), site_data(), &bytes.0);
    }

    /// Mutations of a valid log: whatever verifies must be the log cut at a line end.
    #[test]
    fn audit_log_mutations(input in support::text_mutations(3).prop_map(|ms| Input(support::mutated(audit_log(), &ms)))) {
        check_audit(&input.0, Some(audit_log()));
    }

    #[test]
    fn audit_corpus_mutations(bytes in text_mutated_from(seeds(vec![], "audit"), 3)) {
        check_audit(&bytes.0, None);
    }

    #[test]
    fn ledger_mutations(bytes in text_mutated_from(seeds(vec![ledger_file().to_vec()], "ledger"), 3)) {
        check_ledger(&bytes.0);
    }
}

proptest! {
    #![proptest_config(support::config(50))]

    /// The loader's file path (`load`, with a relative path resolved against the config's
    /// directory), on mutated files.
    #[test]
    fn csv_from_a_file(bytes in mutated_from(csv_examples().to_vec(), 6)) {
        let dir = tempdir();
        let bytes = bytes.0;
        std::fs::write(dir.path().join("site.csv"), &bytes).expect("write");
        let mut cfg = site_data().clone();
        cfg.path = "site.csv".into();
        let from_file = load(schema(), &cfg, dir.path());
        let from_bytes = load_from_reader(schema(), &cfg, bytes.as_slice(), &dir.path().join("site.csv").display().to_string());
        match (&from_file, &from_bytes) {
            (Ok((a, ra)), Ok((b, rb))) => {
                prop_assert!(a == b && ra == rb);
                check_dataset(schema(), a);
            }
            (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
            _ => prop_assert!(false, "a file and its bytes load differently: {:?} / {:?}", from_file.err(), from_bytes.err()),
        }
    }
}

/// Whether a corpus file is named as one that must be refused (`bad-...`, `seed-bad-...`).
fn named_bad(name: &str) -> bool {
    name.trim_start_matches("seed-").starts_with("bad-")
}

/// Every corpus file as a regression case, unmutated; a file named `bad-...` must be refused.
#[test]
fn corpus_regressions() {
    for (name, bytes) in corpus("job") {
        eprintln!("job corpus: {name}");
        check_job(&text(bytes));
        check_schema(&text(bytes));
        if named_bad(name) {
            assert!(JobSpec::from_toml(&text(bytes), "bad").is_err(), "{name} was accepted");
        }
    }
    for (name, bytes) in corpus("agent-config") {
        eprintln!("agent-config corpus: {name}");
        check_agent_config(&text(bytes));
        if named_bad(name) {
            assert!(AgentConfig::parse(&text(bytes), "bad").is_err(), "{name} was accepted");
        }
    }
    for (name, bytes) in corpus("policy") {
        eprintln!("policy corpus: {name}");
        for spec in policy_specs() {
            check_policy(&text(bytes), spec);
        }
        if named_bad(name) {
            assert!(Policy::parse(&text(bytes), "bad").is_err(), "{name} was accepted");
        }
    }
    for (name, bytes) in corpus("csv") {
        eprintln!("csv corpus: {name}");
        check_csv(schema(), site_data(), bytes);
        if named_bad(name) {
            assert!(load_from_reader(schema(), site_data(), bytes.as_slice(), "bad").is_err(), "{name} was accepted");
        }
    }
    for (name, bytes) in corpus("audit") {
        eprintln!("audit corpus: {name}");
        check_audit(bytes, None);
        if named_bad(name) {
            let dir = tempdir();
            let path = dir.path().join("audit.jsonl");
            std::fs::write(&path, bytes).expect("write");
            assert!(AuditLog::open(&path).is_err(), "{name} was accepted");
        }
    }
    for (name, bytes) in corpus("ledger") {
        eprintln!("ledger corpus: {name}");
        check_ledger(bytes);
        if named_bad(name) {
            let dir = tempdir();
            let path = dir.path().join("ledger.jsonl");
            std::fs::write(&path, bytes).expect("write");
            assert!(Ledger::open_read_only(&path).is_err(), "{name} was accepted");
        }
    }
}

/// The valid examples are accepted (so the properties above are not vacuous).
#[test]
fn examples_are_accepted() {
    assert!(job_guard(job_example()).is_none());
    JobSpec::from_toml(job_example(), "job.toml").expect("the example job parses");
    for s in site_examples() {
        AgentConfig::parse(s, "site.toml").expect("an example site config parses");
    }
    policy();
    for csv in csv_examples() {
        load_from_reader(schema(), site_data(), csv.as_slice(), "site.csv").expect("an example site's data loads");
    }
    let report = {
        let dir = tempdir();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, audit_log()).unwrap();
        fedcare_audit::verify(&path).expect("the generated audit log verifies")
    };
    assert_eq!(report.entries, 8);
    let dir = tempdir();
    let path = dir.path().join("ledger.jsonl");
    std::fs::write(&path, ledger_file()).unwrap();
    let l = Ledger::open(&path).expect("the generated ledger opens");
    assert_eq!(l.entries().len(), 6);
    check_ledger_sums(&l);
}

/// Each known bug's minimal input (`tests/fuzz/known-bugs/<target>/`), run with a time limit
/// in a thread of its own: passes once the bugs are fixed. A file must be parsed or refused
/// within 10 s without a panic; one named `must-refuse-*` must be refused. The inputs are kept
/// small enough that a run takes minutes and megabytes, not the machine.
#[test]
#[ignore = "known bugs: see tests/fuzz/README.md"]
fn known_bugs() {
    let mut failing = Vec::new();
    for target in ["job"] {
        for (name, bytes) in support::known_bugs(&fuzz_root(), target) {
            let (tx, rx) = std::sync::mpsc::channel();
            let t = target.to_owned();
            // Made here, so that it is removed even if the thread is still running at the end.
            let dir = tempdir();
            let path = dir.path().join("ledger.jsonl");
            std::thread::spawn(move || {
                let start = std::time::Instant::now();
                let refused = std::panic::catch_unwind(|| match t.as_str() {
                    "job" => JobSpec::from_toml(&text(&bytes), "known-bug.toml").is_err(),
                    _ => {
                        std::fs::write(&path, &bytes).unwrap();
                        Ledger::open_read_only(&path).is_err()
                    }
                });
                let _ = tx.send((refused, start.elapsed()));
            });
            match rx.recv_timeout(std::time::Duration::from_secs(10)) {
                Ok((Ok(false), _)) if name.starts_with("must-refuse") => failing.push(format!("{target}/{name}: accepted")),
                Ok((Ok(refused), took)) => eprintln!("{target}/{name}: {} in {took:?}", if refused { "refused" } else { "accepted" }),
                Ok((Err(_), _)) => failing.push(format!("{target}/{name}: panicked")),
                Err(_) => failing.push(format!("{target}/{name}: still running after 10 s")),
            }
        }
    }
    assert!(failing.is_empty(), "{failing:#?}");
}

/// `bytes` without its line `n` (from 0).
fn line_deleted(bytes: &[u8], n: usize) -> Vec<u8> {
    bytes.split(|b| *b == b'\n').enumerate().filter(|(i, _)| *i != n).map(|(_, l)| l).collect::<Vec<_>>().join(&b'\n')
}

/// Writes the seed corpora (`tests/fuzz/corpus/{job,agent-config,policy,csv,audit,ledger}/seed-*`):
/// the examples, variants of them that take other paths through the parsers, and malformed
/// inputs of each kind. Run with `-- --ignored write_seed_corpus`; other files are left alone.
#[test]
#[ignore = "writes files; run by hand to regenerate the seed corpora"]
fn write_seed_corpus() {
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = support::corpus_dir(&fuzz_root(), target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    };
    let jobs = job_variants();
    for (name, t) in jobs {
        write("job", name, t.as_bytes());
    }

    let sites = site_examples();
    let cleveland = &sites[0];
    let site_edit = |from: &str, to: &str| {
        assert!(cleveland.contains(from), "the example site has no {from:?}");
        cleveland.replacen(from, to, 1)
    };
    let configs: Vec<(&str, String)> = vec![
        ("cleveland.toml", sites[0].clone()),
        ("hungarian.toml", sites[1].clone()),
        ("switzerland.toml", sites[2].clone()),
        ("va.toml", sites[3].clone()),
        (
            "all-options.toml",
            site_edit("# tls = \"tls\"", "tls = \"tls\"\nidentity_key = \"id.pk8\"\naudit_log = \"a.jsonl\"\npolicy = \"policy/policy.toml\""),
        ),
        ("header-and-zero-missing.toml", site_edit("has_header = false", "has_header = true\nzero_is_missing = [\"chol\"]\ndelimiter = \";\"")),
        ("bad-coordinator-scheme.toml", site_edit("https://127.0.0.1:50051", "ftp://127.0.0.1")),
        ("bad-caps-reversed.toml", site_edit("max_epsilon_per_job = 10.0", "max_epsilon_per_job = 100.0")),
        ("bad-site-id.toml", site_edit("id = \"cleveland\"", "id = \"../cleveland\"")),
        ("bad-no-data.toml", cleveland[..cleveland.find("[data]").unwrap()].to_owned()),
    ];
    for (name, t) in configs {
        write("agent-config", name, t.as_bytes());
    }

    let p = policy_example();
    let pol_edit = |from: &str, to: &str| {
        assert!(p.contains(from), "the example policy has no {from:?}");
        p.replacen(from, to, 1)
    };
    let policies: Vec<(&str, String)> = vec![
        ("example.toml", p.to_owned()),
        ("manual.toml", pol_edit("approval = \"automatic\"", "approval = \"manual\"")),
        ("no-dp-required.toml", pol_edit("require_differential_privacy = true", "require_differential_privacy = false")),
        ("bad-unit-none.toml", pol_edit("allowed_units = [\"record\", \"site\"]", "allowed_units = [\"none\"]")),
        ("bad-unit-twice.toml", pol_edit("allowed_units = [\"record\", \"site\"]", "allowed_units = [\"site\", \"site\"]")),
        ("bad-unknown-model.toml", pol_edit("models = [\"logistic_regression\"]", "models = [\"transformer\"]")),
        ("bad-delta-one.toml", pol_edit("max_delta = 1e-5", "max_delta = 1.0")),
        ("bad-missing-key.toml", pol_edit("min_other_sites = 2", "")),
    ];
    for (name, t) in policies {
        write("policy", name, t.as_bytes());
    }

    let row = "63.0,1.0,1.0,145.0,233.0,1.0,2.0,150.0,0.0,2.3,3.0,0.0,6.0,0";
    let csvs: Vec<(&str, Vec<u8>)> = vec![
        ("rows.data", format!("{row}\n67.0,1.0,4.0,160.0,286.0,0.0,2.0,108.0,1.0,1.5,2.0,3.0,3.0,2\n").into_bytes()),
        ("missing-and-crlf.data", format!("{row}\r\n?,1,4,160,286,0,2,108,1,1.5,2,3,3,2\r\n\r\n{row}\r\n").into_bytes()),
        ("bad-nan.data", format!("{row}\nnan,1,4,160,286,0,2,108,1,1.5,2,3,3,2\n").into_bytes()),
        ("bad-overflow.data", format!("{row}\n1e400,1,4,160,286,0,2,108,1,1.5,2,3,3,2\n3.5e38,1,4,160,286,0,2,108,1,1.5,2,3,3,2\n").into_bytes()),
        ("bad-level.data", format!("{row}\n67,1,7,160,286,0,2,108,1,1.5,2,3,3,2\n").into_bytes()),
        ("bad-label.data", format!("{row}\n67,1,4,160,286,0,2,108,1,1.5,2,3,3,9\n").into_bytes()),
        ("bad-width.data", format!("{row}\n67,1,4\n").into_bytes()),
        ("bad-quotes.data", format!("{row}\n\"67,1,4,160,286,0,2,108,1,1.5,2,3,3,2\n").into_bytes()),
        ("bad-not-utf8.data", [row.as_bytes(), b"\n\xff\xfe,1,4,160,286,0,2,108,1,1.5,2,3,3,2\n"].concat()),
        ("empty.data", Vec::new()),
    ];
    for (name, b) in csvs {
        write("csv", name, &b);
    }

    let log = audit_log();
    let last_line_start = log[..log.len() - 1].iter().rposition(|b| *b == b'\n').unwrap() + 1;
    let mut flipped = log.to_vec();
    flipped[100] ^= 1;
    let audits: Vec<(&str, Vec<u8>)> = vec![
        ("valid.jsonl", log.to_vec()),
        ("torn-last-line.jsonl", log[..last_line_start + 30].to_vec()),
        ("zero-filled-tail.jsonl", [&log[..last_line_start + 30], &[0u8; 64][..]].concat()),
        ("unterminated-last-line.jsonl", log[..log.len() - 1].to_vec()),
        ("bad-flipped-byte.jsonl", flipped),
        ("bad-line-deleted.jsonl", line_deleted(log, 2)),
        ("empty.jsonl", Vec::new()),
    ];
    for (name, b) in audits {
        write("audit", name, &b);
    }

    let ledger = ledger_file();
    let last_line_start = ledger[..ledger.len() - 1].iter().rposition(|b| *b == b'\n').unwrap() + 1;
    let first_line_end = ledger.iter().position(|b| *b == b'\n').unwrap() + 1;
    let ledgers: Vec<(&str, Vec<u8>)> = vec![
        ("valid.jsonl", ledger.to_vec()),
        ("torn-last-line.jsonl", ledger[..last_line_start + 40].to_vec()),
        ("unterminated-last-line.jsonl", [&ledger[..ledger.len() - 1], &[0u8; 16][..]].concat()),
        #[allow(clippy::redundant_slicing)]
        ("bad-duplicate-line.jsonl", [&ledger[..first_line_end], &ledger[..]].concat()),
        ("bad-epsilon-edited.jsonl", text(ledger).replacen("\"job_epsilon_after\":", "\"job_epsilon_after\":1", 1).into_bytes()),
        ("empty.jsonl", Vec::new()),
    ];
    for (name, b) in ledgers {
        write("ledger", name, &b);
    }
}
