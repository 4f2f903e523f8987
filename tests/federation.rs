//! The bundled example end to end: four hospital sites and a coordinator over real gRPC on
//! localhost, each site training on its own file, FedAvg for the default rounds.

use fedcare_data::{Dataset, Standardization};
use fedcare_e2e::{SITES, example_dir, site_config};
use fedcare_job::JobSpec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heart_disease_example_reaches_the_accuracy_bar_and_matches_its_saved_model() {
    let out = tempfile::tempdir().unwrap();
    let opts = fedcare_sim::SimOptions {
        pooled_reference: true,
        privacy: fedcare_sim::PrivacyOverride::Off,
        ..fedcare_e2e::sim_options(out.path())
    };
    let mut lines = Vec::new();
    let result = fedcare_sim::run(&opts, |l| lines.push(l.text.clone())).await.expect("simulation runs");
    let report = &result.report;
    let spec = JobSpec::from_toml(&std::fs::read_to_string(example_dir().join("job.toml")).unwrap(), "job.toml").unwrap();

    // Progress was shown for every round.
    for r in 1..=spec.rounds {
        assert!(lines.iter().any(|l| l.contains(&format!("round {r:>3}/{} done", spec.rounds))), "no progress line for round {r}");
    }

    let fed = report.federated.as_ref().expect("the final model was evaluated");
    // The accuracy bar of the issue, on the union of the four test splits.
    assert_eq!(report.rounds.len(), spec.rounds as usize);
    assert!(fed.accuracy >= 0.78, "federated accuracy {} < 0.78", fed.accuracy);
    let pooled = report.pooled_reference.as_ref().expect("pooled reference in simulation");
    assert!(
        (fed.accuracy - pooled.test.accuracy).abs() <= 0.02,
        "federated {} vs pooled {}: more than 2 points apart",
        fed.accuracy,
        pooled.test.accuracy
    );

    // FLamby's split sizes at each site, reported as aggregate counts.
    let expected = [("cleveland", 199, 104), ("hungarian", 172, 89), ("switzerland", 30, 16), ("va", 85, 45)];
    assert_eq!(report.sites.len(), 4);
    for (site, train, test) in expected {
        let s = report.sites.iter().find(|s| s.site == site).unwrap_or_else(|| panic!("{site} missing from report"));
        assert_eq!(s.train_examples, train, "{site} train");
        assert_eq!(s.test.as_ref().unwrap().n, test, "{site} test");
    }
    assert_eq!(fed.n, 254);
    // Every site kept an intact audit log, and the report carries its head hash.
    assert_eq!(report.site_audit_heads.len(), 4);
    for (site, head) in &report.site_audit_heads {
        let log = out.path().join("audit").join(format!("{site}.audit.jsonl"));
        assert_eq!(fedcare_audit::verify(&log).unwrap().head.as_ref(), Some(head), "{site}");
    }
    // Switzerland's test split has one class only: its AUC is undefined, not invented.
    let swiss = report.sites.iter().find(|s| s.site == "switzerland").unwrap();
    assert_eq!(swiss.test.as_ref().unwrap().auc, None);

    // The saved model, loaded back and applied with the report's scaling to the union of the
    // test splits (computed here, independently of the sites), gives the reported accuracy.
    let written: fedcare_server::report::Report =
        serde_json::from_str(&std::fs::read_to_string(&result.report_path).unwrap()).unwrap();
    assert_eq!(&written, report);

    // The model card beside them: its figures are the report's, copied exactly.
    assert_eq!(result.card.json, out.path().join("model-card.json"));
    let card: fedcare_server::card::ModelCard = serde_json::from_str(&std::fs::read_to_string(&result.card.json).unwrap()).expect("model-card.json parses");
    assert_eq!(card, fedcare_server::card::ModelCard::from_report(report));
    assert_eq!(card.job.job_id, report.job_id);
    assert_eq!(card.federated.metrics().expect("federated metrics shown").accuracy, fed.accuracy);
    assert_eq!(card.federated.metrics().unwrap().n, fed.n);
    assert_eq!(card.privacy.epsilon_spent, report.privacy.epsilon_spent);
    assert_eq!(card.privacy.epsilon_spent, None, "this run has no differential privacy");
    assert_eq!(card.sites.len(), report.sites.len());
    for (c, r) in card.sites.iter().zip(&report.sites) {
        assert_eq!(c.site, r.site);
        assert_eq!(c.train_examples, r.train_examples, "{}", r.site);
        let (c, r) = (c.test.metrics().expect("every site has 10 or more test examples"), r.test.as_ref().expect("evaluated"));
        assert_eq!((c.n, c.accuracy, c.auc, c.loss, c.brier), (r.n, r.accuracy, r.auc, r.loss, r.brier));
        // Small cells are withheld: reliability bins under 10 patients, a confusion matrix
        // with a cell from 1 to 9; what is shown is the report's.
        let small = fedcare_server::card::MIN_REPORTED_N;
        let kept: Vec<_> = r.calibration.iter().filter(|b| b.n >= small).cloned().collect();
        assert_eq!(c.calibration, kept);
        let has_small_cell = r.confusion.is_some_and(|m| [m.true_pos, m.false_pos, m.true_neg, m.false_neg].iter().any(|&x| x > 0 && x < small));
        assert_eq!(c.confusion, if has_small_cell { None } else { r.confusion });
    }
    assert_eq!(card.audit_heads, report.site_audit_heads);

    // The HTML report beside them: self-contained, with the federated figures and a figure
    // per round-by-round metric.
    assert_eq!(result.html.html, out.path().join("report.html"));
    let html = std::fs::read_to_string(&result.html.html).expect("report.html written");
    assert!(html.contains(&format!("{:.3}", fed.accuracy)) && html.contains(&report.job_id), "report.html lacks the federated accuracy");
    assert!(!html.contains("<script") && !html.contains("src=\"http"), "report.html must be self-contained");
    for name in ["accuracy-by-round", "loss-by-round", "auc-by-round", "sites-final"] {
        let svg = std::fs::read_to_string(out.path().join("figures").join(format!("{name}.svg"))).expect("figure written");
        // The page inlines the same drawing (with an accessible label added to its <svg> tag).
        let body = &svg[svg.find('>').expect("an <svg> tag") + 1..];
        assert!(svg.starts_with("<svg") && html.contains(body), "{name} is missing or not inlined in the page");
    }
    let md = std::fs::read_to_string(&result.card.markdown).unwrap();
    for (site, _, test) in expected {
        assert!(md.contains(&format!("| {site} | {test} |")), "{site} missing from the card:\n{md}");
    }
    assert!(md.contains("not validated for clinical decisions") && md.contains(&report.job_id), "{md}");

    let params = fedcare_models::load(&spec.model, spec.n_features(), &result.model_path).expect("model loads back");
    let std = Standardization { mean: report.scaling.mean.clone(), std: report.scaling.std.clone() };
    let mut tests = Vec::new();
    for name in SITES {
        let (cfg, base) = site_config(name, "http://unused");
        let (ds, _) = fedcare_data::load(&spec.schema, &cfg.data, &base).unwrap();
        let (_, test) = fedcare_data::split(&ds, &spec.schema.split).unwrap();
        tests.push(test);
    }
    let mut union = Dataset::concat(&tests.iter().collect::<Vec<_>>()).unwrap();
    std.apply(&mut union).unwrap();
    let probs = fedcare_models::predict(&spec.model, &params, union.features(), union.n_features()).unwrap();
    let correct = probs.iter().zip(union.labels()).filter(|(p, y)| (**p >= 0.5) == (**y >= 0.5)).count();
    let accuracy = correct as f64 / union.len() as f64;
    assert!((accuracy - fed.accuracy).abs() < 1e-9, "saved model {accuracy} vs report {}", fed.accuracy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_job_twice_gives_the_same_model() {
    let mut models = Vec::new();
    for _ in 0..2 {
        let out = tempfile::tempdir().unwrap();
        let opts = fedcare_sim::SimOptions {
            rounds: Some(2),
            privacy: fedcare_sim::PrivacyOverride::Off,
            ..fedcare_e2e::sim_options(out.path())
        };
        let result = fedcare_sim::run(&opts, |_| {}).await.expect("simulation runs");
        models.push(std::fs::read(&result.model_path).unwrap());
    }
    assert_eq!(models[0], models[1], "a job is deterministic given its seed");
}
