use std::sync::OnceLock;

use fedcare_job::{JobSpec, PrivacyUnit};

use crate::*;

const EXAMPLE: &str = include_str!("../../../examples/heart-disease/job.toml");

/// The example job's columns: its ten features and its label.
const COLUMNS: &[&str] = &[
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak",
    "disease",
];

fn example() -> &'static JobSpec {
    static SPEC: OnceLock<JobSpec> = OnceLock::new();
    SPEC.get_or_init(|| JobSpec::from_toml(EXAMPLE, "job.toml").unwrap())
}

/// Replaces `from` with `to` once, insisting the text changed.
fn edit(text: &str, from: &str, to: &str) -> String {
    let out = text.replacen(from, to, 1);
    assert_ne!(out, text, "`{from}` not found");
    out
}

fn job(text: &str) -> JobSpec {
    JobSpec::from_toml(text, "job.toml").unwrap()
}

/// The example with `unit = "none"`: its `[privacy]` table, feature bounds included, replaced.
fn example_without_dp() -> String {
    let start = EXAMPLE.find("[privacy]\n").unwrap();
    let end = EXAMPLE.find("# The schema every site maps").unwrap();
    format!(
        "{}[privacy]\nunit = \"none\"\n\n{}",
        &EXAMPLE[..start],
        &EXAMPLE[end..]
    )
}

/// A policy the example passes: every field set, each test changes one.
fn permissive() -> String {
    let columns: Vec<String> = COLUMNS.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        r#"# The site's policy.
[policy]
models = ["logistic_regression", "mlp"]
columns = [{}]
require_differential_privacy = true
allowed_units = ["record", "site"]
max_epsilon_per_job = 10.0
max_delta = 1e-5
require_secure_aggregation = true
min_other_sites = 2
approval = "automatic"
"#,
        columns.join(", ")
    )
}

fn policy(text: &str) -> Policy {
    Policy::parse(text, "policy.toml").unwrap()
}

fn violations(policy_text: &str, spec: &JobSpec) -> Vec<Violation> {
    policy(policy_text).evaluate(spec).violations
}

// ---- evaluation ----

#[test]
fn example_passes_a_permissive_policy() {
    let p = policy(&permissive());
    let e = p.evaluate(example());
    assert_eq!(e.violations, vec![]);
    assert!(e.passes());
    assert_eq!(e.verdict(), Verdict::Approve);
    assert_eq!(e.refusal_reason(), None);

    let manual = policy(&edit(
        &permissive(),
        "approval = \"automatic\"",
        "approval = \"manual\"",
    ));
    assert_eq!(manual.evaluate(example()).verdict(), Verdict::AwaitApproval);
}

#[test]
fn a_forbidden_model_is_refused() {
    let v = violations(
        &edit(
            &permissive(),
            "models = [\"logistic_regression\", \"mlp\"]",
            "models = [\"mlp\"]",
        ),
        example(),
    );
    assert_eq!(
        v,
        vec![Violation::Model {
            model: "logistic_regression".into()
        }]
    );
    assert_eq!(
        v[0].to_string(),
        "the job trains model `logistic_regression`, which this site's policy does not allow"
    );
}

#[test]
fn a_forbidden_column_is_refused() {
    let v = violations(&edit(&permissive(), "\"chol\", ", ""), example());
    assert_eq!(
        v,
        vec![Violation::Column {
            column: "chol".into(),
            role: ColumnRole::Feature
        }]
    );
    assert_eq!(
        v[0].to_string(),
        "the job uses column `chol`, which this site's policy does not allow"
    );

    let v = violations(&edit(&permissive(), ", \"disease\"", ""), example());
    assert_eq!(
        v,
        vec![Violation::Column {
            column: "disease".into(),
            role: ColumnRole::Label
        }]
    );
    assert_eq!(
        v[0].to_string(),
        "the job uses column `disease` as its label, which this site's policy does not allow"
    );
}

#[test]
fn secure_aggregation_required_refuses_a_job_without_it() {
    let off = job(&edit(EXAMPLE, "enabled = true", "enabled = false"));
    let v = violations(&permissive(), &off);
    assert_eq!(v, vec![Violation::SecureAggregationRequired]);
    assert_eq!(
        v[0].to_string(),
        "the job does not use secure aggregation, which this site's policy requires"
    );
    // A policy that does not require it lets the job through.
    let lax = edit(
        &permissive(),
        "require_secure_aggregation = true",
        "require_secure_aggregation = false",
    );
    assert_eq!(violations(&lax, &off), vec![]);
}

#[test]
fn differential_privacy_required_refuses_a_job_without_it() {
    let none = job(&example_without_dp());
    assert_eq!(none.privacy.unit, PrivacyUnit::None);
    let v = violations(&permissive(), &none);
    assert_eq!(v, vec![Violation::DifferentialPrivacyRequired]);
    assert!(
        v[0].to_string().contains("no differential privacy"),
        "{}",
        v[0]
    );
    // Without the requirement the job passes; the epsilon ceiling has nothing to compare.
    let lax = edit(
        &permissive(),
        "require_differential_privacy = true",
        "require_differential_privacy = false",
    );
    assert_eq!(violations(&lax, &none), vec![]);
}

#[test]
fn epsilon_above_the_ceiling_is_refused() {
    // The example asks for epsilon 8.
    let v = violations(
        &edit(
            &permissive(),
            "max_epsilon_per_job = 10.0",
            "max_epsilon_per_job = 7.99",
        ),
        example(),
    );
    assert_eq!(
        v,
        vec![Violation::Epsilon {
            job: 8.0,
            max: 7.99
        }]
    );
    assert_eq!(
        v[0].to_string(),
        "the job may spend epsilon 8, more than this site's policy allows for one job (7.99)"
    );
    // Exactly at the ceiling passes; an integer ceiling parses.
    assert_eq!(
        violations(
            &edit(
                &permissive(),
                "max_epsilon_per_job = 10.0",
                "max_epsilon_per_job = 8"
            ),
            example()
        ),
        vec![]
    );
}

#[test]
fn delta_and_unit_are_checked() {
    let v = violations(
        &edit(&permissive(), "max_delta = 1e-5", "max_delta = 1e-6"),
        example(),
    );
    assert_eq!(
        v,
        vec![Violation::Delta {
            job: 1e-5,
            max: 1e-6
        }]
    );
    assert_eq!(
        v[0].to_string(),
        "the job's delta 1e-5 is larger than this site's policy allows (1e-6)"
    );

    let v = violations(
        &edit(
            &permissive(),
            "allowed_units = [\"record\", \"site\"]",
            "allowed_units = [\"site\"]",
        ),
        example(),
    );
    assert_eq!(
        v,
        vec![Violation::Unit {
            unit: PrivacyUnit::Record
        }]
    );
    assert_eq!(
        v[0].to_string(),
        "the job protects privacy at the \"record\" level, which this site's policy does not allow"
    );
}

#[test]
fn too_few_other_sites_is_refused() {
    // The example needs 4 sites to start, but a round completes with 3: 2 others besides us.
    let v = violations(
        &edit(&permissive(), "min_other_sites = 2", "min_other_sites = 3"),
        example(),
    );
    assert_eq!(
        v,
        vec![Violation::TooFewOtherSites {
            fewest_sites: 3,
            required_others: 3
        }]
    );
    assert_eq!(
        v[0].to_string(),
        "a round of the job may complete with 3 sites, that is 2 besides this one, but this site's policy requires at least 3 other sites"
    );
    // Without min_sites_per_round a round needs all 4: 3 others.
    let whole = job(&edit(EXAMPLE, "min_sites_per_round = 3", ""));
    assert_eq!(
        violations(
            &edit(&permissive(), "min_other_sites = 2", "min_other_sites = 3"),
            &whole
        ),
        vec![]
    );
    assert_eq!(
        violations(
            &edit(&permissive(), "min_other_sites = 2", "min_other_sites = 4"),
            &whole
        )
        .len(),
        1
    );
}

#[test]
fn every_violation_is_listed() {
    let strict = permissive()
        .replacen(
            "models = [\"logistic_regression\", \"mlp\"]",
            "models = [\"mlp\"]",
            1,
        )
        .replacen("\"chol\", ", "", 1)
        .replacen(", \"disease\"", "", 1)
        .replacen(
            "allowed_units = [\"record\", \"site\"]",
            "allowed_units = [\"site\"]",
            1,
        )
        .replacen("max_epsilon_per_job = 10.0", "max_epsilon_per_job = 1.0", 1)
        .replacen("max_delta = 1e-5", "max_delta = 1e-7", 1)
        .replacen("min_other_sites = 2", "min_other_sites = 9", 1);
    let spec = job(&edit(EXAMPLE, "enabled = true", "enabled = false"));
    let e = policy(&strict).evaluate(&spec);
    let categories: Vec<&str> = e.violations.iter().map(Violation::category).collect();
    assert_eq!(
        categories,
        [
            "model",
            "column",
            "column",
            "privacy_unit",
            "epsilon",
            "delta",
            "secure_aggregation",
            "min_other_sites"
        ]
    );
    let Verdict::Refuse(reasons) = e.verdict() else {
        panic!("must refuse")
    };
    assert_eq!(reasons, e.violations);
    let reason = e.refusal_reason().unwrap();
    assert!(
        reason.starts_with("this site's policy refuses the job: the job trains model"),
        "{reason}"
    );
    assert_eq!(reason.matches("; ").count(), 7, "{reason}");
    // Manual approval does not soften a refusal.
    let manual = policy(&edit(
        &strict,
        "approval = \"automatic\"",
        "approval = \"manual\"",
    ));
    assert!(matches!(manual.evaluate(&spec).verdict(), Verdict::Refuse(r) if r.len() == 8));
}

#[test]
fn job_strings_cannot_forge_lines() {
    let v = Violation::Column {
        column: "x\nPolicy: passes".into(),
        role: ColumnRole::Feature,
    };
    assert!(!v.to_string().contains('\n'), "{v}");
    assert!(v.to_string().contains("x\\nPolicy"), "{v}");

    let spec = job(&edit(
        EXAMPLE,
        "description = \"Heart",
        "description = \"line one\\nPolicy: passes every rule\\nHeart",
    ));
    let text = summary_with_policy(&spec, &policy(&edit(&permissive(), "\"chol\", ", "")));
    assert!(
        !text.lines().any(|l| l.starts_with("Policy: passes")),
        "{text}"
    );
    assert!(
        text.contains("line one\\nPolicy: passes every rule\\nHeart"),
        "{text}"
    );
}

// ---- parsing ----

fn parse_err(text: &str) -> String {
    Policy::parse(text, "policy.toml").unwrap_err().to_string()
}

#[test]
fn accessors_return_the_file_values() {
    let p = policy(&edit(
        &permissive(),
        "approval = \"automatic\"",
        "approval = \"manual\"",
    ));
    assert_eq!(
        p.models().iter().map(String::as_str).collect::<Vec<_>>(),
        ["logistic_regression", "mlp"]
    );
    assert_eq!(p.columns().len(), COLUMNS.len());
    assert!(p.require_differential_privacy());
    assert_eq!(p.allowed_units(), [PrivacyUnit::Record, PrivacyUnit::Site]);
    assert_eq!(p.max_epsilon_per_job(), 10.0);
    assert_eq!(p.max_delta(), 1e-5);
    assert!(p.require_secure_aggregation());
    assert_eq!(p.min_other_sites(), 2);
    assert_eq!(p.approval(), Approval::Manual);
}

#[test]
fn an_unknown_or_missing_key_is_refused_with_its_line() {
    let err = parse_err(&edit(
        &permissive(),
        "min_other_sites = 2",
        "min_other_sites = 2\nmin_othr_sites = 3",
    ));
    assert!(
        err.contains("policy.toml") && err.contains("min_othr_sites") && err.contains("line 11"),
        "{err}"
    );

    let err = parse_err(&edit(&permissive(), "max_delta = 1e-5\n", ""));
    assert!(
        err.contains("policy.toml")
            && err.contains("missing field `max_delta`")
            && err.contains("line"),
        "{err}"
    );

    let err = parse_err(&edit(
        &permissive(),
        "min_other_sites = 2",
        "min_other_sites = -1",
    ));
    assert!(
        err.contains("line 10") && err.contains("min_other_sites"),
        "{err}"
    );

    let err = parse_err(&edit(
        &permissive(),
        "approval = \"automatic\"",
        "approval = \"sometimes\"",
    ));
    assert!(
        err.contains("line 11") && err.contains("sometimes"),
        "{err}"
    );

    let err = parse_err(&edit(&permissive(), "[policy]", "[polcy]"));
    assert!(err.contains("polcy") && err.contains("line 2"), "{err}");
}

#[test]
fn a_bad_value_is_refused_with_its_field_and_line() {
    for (from, to, field, line) in [
        (
            "models = [\"logistic_regression\", \"mlp\"]",
            "models = [\"logistic_regression\",\n  \"transformer\"]",
            "policy.models",
            4,
        ),
        (
            "models = [\"logistic_regression\", \"mlp\"]",
            "models = []",
            "policy.models",
            3,
        ),
        (
            "models = [\"logistic_regression\", \"mlp\"]",
            "models = [\"mlp\", \"mlp\"]",
            "policy.models",
            3,
        ),
        ("\"chol\", ", "\"chol\", \"age\", ", "policy.columns", 4),
        ("\"chol\", ", "\"chol\", \" \", ", "policy.columns", 4),
        (
            "allowed_units = [\"record\", \"site\"]",
            "allowed_units = [\"record\", \"none\"]",
            "policy.allowed_units",
            6,
        ),
        (
            "allowed_units = [\"record\", \"site\"]",
            "allowed_units = []",
            "policy.allowed_units",
            6,
        ),
        (
            "max_epsilon_per_job = 10.0",
            "max_epsilon_per_job = -1.0",
            "policy.max_epsilon_per_job",
            7,
        ),
        (
            "max_epsilon_per_job = 10.0",
            "max_epsilon_per_job = inf",
            "policy.max_epsilon_per_job",
            7,
        ),
        ("max_delta = 1e-5", "max_delta = 1.5", "policy.max_delta", 8),
        ("max_delta = 1e-5", "max_delta = 0.0", "policy.max_delta", 8),
    ] {
        let err = Policy::parse(&edit(&permissive(), from, to), "policy.toml").unwrap_err();
        let PolicyError::Invalid {
            field: f, line: l, ..
        } = &err
        else {
            panic!("{to}: {err}")
        };
        assert_eq!((f.as_str(), *l), (field, line), "{to}: {err}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("policy.toml, line {line}: field `{field}`")),
            "{text}"
        );
    }
    let err = parse_err(&edit(&permissive(), "\"mlp\"]", "\"transformer\"]"));
    assert!(
        err.contains("unknown model `transformer`") && err.contains("logistic_regression, mlp"),
        "{err}"
    );
    let err = parse_err(&edit(&permissive(), "\"site\"]", "\"none\"]"));
    assert!(
        err.contains("require_differential_privacy = false"),
        "{err}"
    );
}

#[test]
fn load_reads_a_file_and_names_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, permissive()).unwrap();
    assert_eq!(Policy::load(&path).unwrap(), policy(&permissive()));

    std::fs::write(
        &path,
        edit(&permissive(), "max_delta = 1e-5", "max_delta = 2.0"),
    )
    .unwrap();
    let err = Policy::load(&path).unwrap_err().to_string();
    assert!(
        err.contains(&path.display().to_string()) && err.contains("line 8"),
        "{err}"
    );

    let missing = dir.path().join("nope.toml");
    let err = Policy::load(&missing).unwrap_err();
    assert!(matches!(err, PolicyError::Read { .. }), "{err}");
    assert!(err.to_string().contains("nope.toml"), "{err}");
}

// ---- summary ----

#[test]
fn summary_shows_what_an_officer_needs() {
    let spec = example();
    let text = summary(spec);
    for needle in [
        "Job \"heart-disease-logreg\"",
        "Heart disease (num > 0) from 10 routine clinical features",
        &format!("hash: {}", spec.id()),
        "Model: logistic_regression",
        "Training: 10 rounds; in each, 1 local epoch with batch size 8, optimiser sgd, learning rate 0.05; seed 42",
        "Sites: at least 4 must join; a round completes with at least 3",
        "held-out 34% of each site's records",
        "Columns used: 11 (10 features and the label)",
        "feature, numeric, clamped to [0, 600]",
        "feature, categorical, levels 1, 2, 3, 4",
        "label, positive if > 0; allowed values 0, 1, 2, 3, 4",
        "Secure aggregation: on (SecAgg+ in Z_2^32",
        "Differential privacy: record level, dp_sgd: epsilon",
        "What leaves this site (never records, nor per-record scores or predictions):",
        "masked by secure aggregation",
        "each record's gradient clipped to L2 norm 2 and noised",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    assert!(
        text.contains(&example().privacy_plan().unwrap().unwrap().summary()),
        "{text}"
    );
    assert!(!text.contains("Policy:"), "{text}");
    // Every column is listed.
    for c in COLUMNS {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{c} "))),
            "{c} not listed:\n{text}"
        );
    }
}

#[test]
fn summary_says_when_protections_are_off() {
    let text = summary(&job(&edit(
        &example_without_dp(),
        "enabled = true",
        "enabled = false",
    )));
    assert!(text.contains("Secure aggregation: OFF"), "{text}");
    assert!(text.contains("Differential privacy: none"), "{text}");
    assert!(text.contains("sent unmasked"), "{text}");
    assert!(text.contains("exact (not noised)"), "{text}");
    assert!(!text.contains("clamped"), "{text}");
}

#[test]
fn summary_with_policy_gives_the_verdict() {
    let spec = example();
    let text = summary_with_policy(spec, &policy(&permissive()));
    assert!(
        text.ends_with("Policy: passes every rule; approved automatically\n"),
        "{text}"
    );

    let manual = policy(&edit(
        &permissive(),
        "approval = \"automatic\"",
        "approval = \"manual\"",
    ));
    let text = summary_with_policy(spec, &manual);
    assert!(
        text.ends_with(&format!(
            "waits for approval: site-agent jobs approve {}\n",
            spec.id()
        )),
        "{text}"
    );

    let strict = policy(&edit(
        &edit(&permissive(), "\"chol\", ", ""),
        "min_other_sites = 2",
        "min_other_sites = 3",
    ));
    let text = summary_with_policy(spec, &strict);
    assert!(text.contains("Policy: REFUSED (2 reasons)\n  - the job uses column `chol`, which this site's policy does not allow\n  - a round of the job"), "{text}");
}

// ---- approvals ----

fn other_job() -> (String, String) {
    let text = edit(EXAMPLE, "seed = 42", "seed = 7");
    let id = job(&text).id().to_string();
    (id, text)
}

#[test]
fn approvals_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    let store_dir = Approvals::beside(&policy_path);
    assert_eq!(store_dir, dir.path().join("approvals"));
    let id = example().id().to_string();
    let (other, other_text) = other_job();

    {
        let a = Approvals::open(&store_dir).unwrap();
        assert!(!a.is_approved(&id).unwrap());
        assert!(a.record_pending(&id, EXAMPLE, 1_000).unwrap());
        assert!(
            !a.record_pending(&id, EXAMPLE, 2_000).unwrap(),
            "already pending"
        );
        assert!(a.record_pending(&other, &other_text, 1_500).unwrap());
    }
    let a = Approvals::open(&store_dir).unwrap();
    let pending = a.pending().unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|p| (p.job_hash.to_string(), p.offered_at_ms))
            .collect::<Vec<_>>(),
        [(id.clone(), 1_000), (other.clone(), 1_500)]
    );
    assert_eq!(&pending[0].spec, example());
    assert_eq!(pending[0].spec_toml, EXAMPLE);
    assert_eq!(a.get_pending(&id).unwrap().unwrap(), pending[0]);

    let rec = a
        .approve(
            &a.resolve(&id[..8]).unwrap().to_string(),
            "Dr. Ada Officer",
            5_000,
        )
        .unwrap();
    assert_eq!(rec.job_hash.as_str(), id);
    assert_eq!(
        (rec.approved_by.as_str(), rec.approved_at_ms),
        ("Dr. Ada Officer", 5_000)
    );
    assert_eq!(rec.spec_toml.as_deref(), Some(EXAMPLE));

    let a = Approvals::open(&store_dir).unwrap();
    assert!(a.is_approved(&id).unwrap());
    assert!(!a.is_approved(&other).unwrap());
    assert_eq!(a.approval(&id).unwrap(), Some(rec.clone()));
    assert_eq!(a.approved().unwrap(), vec![rec.clone()]);
    assert_eq!(
        a.pending().unwrap().len(),
        1,
        "the approved job left the pending list"
    );
    assert_eq!(a.get_pending(&id).unwrap(), None);
    assert!(
        !a.record_pending(&id, EXAMPLE, 9_000).unwrap(),
        "an approved job is not pending again"
    );
    // Approving twice keeps the first approval.
    assert_eq!(a.approve(&id, "someone else", 6_000).unwrap(), rec);
    assert_eq!(a.resolve_approved(&id[..10]).unwrap().as_str(), id);

    assert!(a.revoke(&id).unwrap());
    assert!(!a.revoke(&id).unwrap());
    let a = Approvals::open(&store_dir).unwrap();
    assert!(!a.is_approved(&id).unwrap());
    assert!(a.discard_pending(&other).unwrap());
    assert_eq!(a.pending().unwrap(), vec![]);
    // Nothing but the records is left behind (no temporary files).
    for kind in ["approved", "pending"] {
        assert_eq!(
            std::fs::read_dir(store_dir.join(kind)).unwrap().count(),
            0,
            "{kind}"
        );
    }
}

#[test]
fn a_job_can_be_approved_before_it_is_offered() {
    let dir = tempfile::tempdir().unwrap();
    let a = Approvals::open(dir.path()).unwrap();
    let id = example().id().to_string();
    let rec = a.approve(&id, "officer", 1).unwrap();
    assert_eq!(rec.spec_toml, None);
    assert!(a.is_approved(&id).unwrap());
}

#[test]
fn bad_hashes_and_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = Approvals::open(dir.path()).unwrap();
    let id = example().id().to_string();
    for bad in [
        "",
        "abc",
        "../../etc/passwd",
        &id.to_uppercase(),
        &format!("{id}0"),
        &id[..63],
        &format!("{}/..", &id[..61]),
    ] {
        assert!(
            matches!(
                a.approve(bad, "officer", 1),
                Err(ApprovalError::BadJobHash { .. })
            ),
            "{bad}"
        );
        assert!(
            matches!(a.is_approved(bad), Err(ApprovalError::BadJobHash { .. })),
            "{bad}"
        );
        assert!(
            matches!(a.revoke(bad), Err(ApprovalError::BadJobHash { .. })),
            "{bad}"
        );
        assert!(
            matches!(
                a.record_pending(bad, EXAMPLE, 1),
                Err(ApprovalError::BadJobHash { .. })
            ),
            "{bad}"
        );
        assert!(
            matches!(a.get_pending(bad), Err(ApprovalError::BadJobHash { .. })),
            "{bad}"
        );
    }
    let err = a.approve("x\ny", "officer", 1).unwrap_err().to_string();
    assert_eq!(err, "`x\\ny` is not a job hash (64 lowercase hex digits)");
    for by in ["", "  ", "a\nb"] {
        assert!(
            matches!(
                a.approve(&id, by, 1),
                Err(ApprovalError::BadApprover { .. })
            ),
            "{by:?}"
        );
    }
    // A spec that is not the job the hash names, or not a spec at all.
    let (_, other_text) = other_job();
    assert!(matches!(
        a.record_pending(&id, &other_text, 1),
        Err(ApprovalError::SpecMismatch { .. })
    ));
    assert!(matches!(
        a.record_pending(&id, "name = 1", 1),
        Err(ApprovalError::BadSpec { .. })
    ));
    assert_eq!(a.pending().unwrap(), vec![]);
    assert!(!a.is_approved(&id).unwrap());
}

#[test]
fn prefixes_resolve_to_one_pending_job() {
    let dir = tempfile::tempdir().unwrap();
    let a = Approvals::open(dir.path()).unwrap();
    let id = example().id().to_string();
    assert!(matches!(
        a.resolve(&id[..8]),
        Err(ApprovalError::NoMatch { .. })
    ));
    a.record_pending(&id, EXAMPLE, 1).unwrap();
    assert_eq!(a.resolve(&id[..8]).unwrap().as_str(), id);
    assert_eq!(a.resolve(&id).unwrap().as_str(), id);
    for bad in [
        &id[..7],
        "",
        &id[..8].to_uppercase(),
        "ghijklmn",
        &format!("{id}0"),
    ] {
        assert!(
            matches!(a.resolve(bad), Err(ApprovalError::BadPrefix { .. })),
            "{bad}"
        );
    }
    assert!(matches!(
        a.resolve_approved(&id[..8]),
        Err(ApprovalError::NoMatch { .. })
    ));
}

#[test]
fn an_ambiguous_prefix_is_refused() {
    // Two real specs sharing eight hex digits would take ~2^32 tries to find, so two pending
    // records are placed by name (resolution reads names only).
    let dir = tempfile::tempdir().unwrap();
    let a = Approvals::open(dir.path()).unwrap();
    let one = format!("abcdef01{}", "1".repeat(56));
    let two = format!("abcdef01{}", "2".repeat(56));
    for id in [&one, &two] {
        std::fs::write(dir.path().join("pending").join(format!("{id}.json")), "{}").unwrap();
    }
    let err = a.resolve("abcdef01").unwrap_err();
    let ApprovalError::Ambiguous { matches, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(
        matches.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        [one.as_str(), two.as_str()]
    );
    assert!(err.to_string().contains("give more digits"), "{err}");
    assert_eq!(a.resolve("abcdef011").unwrap().as_str(), one);
    // Such a record is reported as damaged, with its path, when read.
    let err = a.get_pending(&one).unwrap_err();
    assert!(
        matches!(err, ApprovalError::Corrupt { .. }) && err.to_string().contains(&one),
        "{err}"
    );
}

#[test]
fn stray_files_are_ignored_and_damaged_records_named() {
    let dir = tempfile::tempdir().unwrap();
    let a = Approvals::open(dir.path()).unwrap();
    let id = example().id().to_string();
    a.record_pending(&id, EXAMPLE, 1).unwrap();
    std::fs::write(
        dir.path().join("pending").join(format!(".{id}.1.2.tmp")),
        "half",
    )
    .unwrap();
    std::fs::write(dir.path().join("pending").join("notes.txt"), "hello").unwrap();
    assert_eq!(a.pending().unwrap().len(), 1);

    // An approval record whose content names another job is refused, not trusted.
    let (other, _) = other_job();
    let forged = format!("{{\"job_hash\":\"{other}\",\"approved_by\":\"x\",\"approved_at_ms\":1}}");
    std::fs::write(
        dir.path().join("approved").join(format!("{id}.json")),
        forged,
    )
    .unwrap();
    let err = a.is_approved(&id).unwrap_err();
    assert!(matches!(err, ApprovalError::Corrupt { .. }), "{err}");
    std::fs::write(
        dir.path().join("approved").join(format!("{id}.json")),
        "not json",
    )
    .unwrap();
    assert!(matches!(
        a.is_approved(&id),
        Err(ApprovalError::Corrupt { .. })
    ));
}
