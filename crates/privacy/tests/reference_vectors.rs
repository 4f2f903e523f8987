//! Checks the accountant against Google's dp_accounting (see tests/reference/make_vectors.py;
//! the file records the dp_accounting version it was made with).

use fedcare_privacy::{DdgParams, DistributedNoise, RdpAccountant, poisson_gaussian_rdp};
use std::collections::HashMap;

#[test]
fn matches_dp_accounting_rdp_accountant() {
    let data: serde_json::Value =
        serde_json::from_str(include_str!("reference/rdp_vectors.json")).expect("valid JSON");
    assert_eq!(data["dp_accounting_version"], "0.6.0");
    let orders: Vec<f64> = data["orders"].as_array().unwrap().iter().map(|o| o.as_f64().unwrap()).collect();
    assert_eq!(orders, fedcare_privacy::default_orders(), "same order grid");

    let mut curves: HashMap<(u64, u64), Vec<f64>> = HashMap::new();
    let mut worst = (0.0f64, String::new());
    let points = data["points"].as_array().unwrap();
    assert_eq!(points.len(), 250);
    for p in points {
        let z = p["noise_multiplier"].as_f64().unwrap();
        let q = p["sampling_rate"].as_f64().unwrap();
        let steps = p["steps"].as_u64().unwrap();
        let delta = p["delta"].as_f64().unwrap();
        let want = p["epsilon"].as_f64().unwrap();
        let curve = curves
            .entry((z.to_bits(), q.to_bits()))
            .or_insert_with(|| poisson_gaussian_rdp(z, q, &orders).unwrap());
        let mut acc = RdpAccountant::new();
        acc.compose_rdp(curve, steps).unwrap();
        let (got, _order) = acc.epsilon(delta).unwrap();
        let rel = (got - want).abs() / want.max(1e-300);
        if rel > worst.0 {
            worst = (rel, format!("z={z} q={q} T={steps} delta={delta}: {got} vs {want}"));
        }
        assert!(rel < 1e-3, "z={z} q={q} T={steps} delta={delta}: ours {got}, dp_accounting {want}");
        // Never below the reference beyond f64 noise.
        assert!(got >= want * (1.0 - 1e-9), "optimistic: z={z} q={q} T={steps}: {got} < {want}");
    }
    eprintln!("worst relative error vs dp_accounting: {:.3e} at {}", worst.0, worst.1);
}

/// The distributed discrete Gaussian's accounting (the rounded sensitivities and the RDP of the
/// sum of `n` sites' noise, with the `tau` terms) against `reference/ddg_vectors.json`: the
/// authors' reference accounting (google-research/federated, distributed_dp), transcribed
/// independently in `reference/make_ddg_vectors.py` in that code's own terms.
#[test]
fn ddg_accounting_matches_the_papers_reference_implementation() {
    let worst = check_distributed(include_str!("reference/ddg_vectors.json"), DistributedNoise::DiscreteGaussian);
    eprintln!("worst relative difference vs the DDG reference: {worst:.3e}");
}

/// The distributed Skellam accounting (rounded sensitivities and the RDP of the sum of `n`
/// sites' Skellam noise) against `reference/skellam_vectors.json`: the authors' reference
/// accounting (google-research/federated, distributed_dp, `_skellam_rdp`), transcribed in
/// `reference/make_skellam_vectors.py` in that code's input-domain units.
#[test]
fn skellam_accounting_matches_the_papers_reference_implementation() {
    let worst = check_distributed(include_str!("reference/skellam_vectors.json"), DistributedNoise::Skellam);
    eprintln!("worst relative difference vs the Skellam reference: {worst:.3e}");
}

/// Checks every point of a reference file: the scaled-domain sensitivities after conditional
/// rounding to 1e-12, and the RDP curve of one release (the charge of `noise` with those
/// parameters) to 1e-9 relative. Returns the worst relative difference.
fn check_distributed(json: &str, noise: DistributedNoise) -> f64 {
    let data: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
    let orders: Vec<f64> = data["orders"].as_array().unwrap().iter().map(|o| o.as_f64().unwrap()).collect();
    let points = data["points"].as_array().unwrap();
    assert_eq!(points.len(), 100);
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-300);
    let mut worst = 0.0f64;
    for p in points {
        let f = |k: &str| p[k].as_f64().unwrap();
        let (dim, n) = (p["dim"].as_u64().unwrap(), p["n"].as_u64().unwrap());
        let params = DdgParams {
            dim: dim as usize,
            bits: 32,
            l2_clip: f("clip"),
            scale: f("scale"),
            beta: f("beta"),
            local_sigma: f("sigma"),
            rotation_seed: [0; 32],
            noise,
        };
        let (l2, l1) = (params.l2_sensitivity(), params.l1_sensitivity());
        let what = format!("clip={} scale={} beta={} dim={dim} sigma={} n={n}", f("clip"), f("scale"), f("beta"), f("sigma"));
        assert!(rel(l2, f("l2")) < 1e-12, "{what}: l2 {l2} vs {}", f("l2"));
        assert!(rel(l1, f("l1")) < 1e-12, "{what}: l1 {l1} vs {}", f("l1"));
        let got = params.charge(n as usize).rdp(&orders).unwrap();
        for ((a, g), w) in orders.iter().zip(&got).zip(p["rdp"].as_array().unwrap()) {
            let w = w.as_f64().unwrap();
            worst = worst.max(rel(*g, w));
            assert!(rel(*g, w) < 1e-9, "{what} order {a}: ours {g}, reference {w}");
        }
    }
    worst
}
