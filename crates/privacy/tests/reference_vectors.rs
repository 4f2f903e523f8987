//! Checks the accountant against Google's dp_accounting (see tests/reference/make_vectors.py;
//! the file records the dp_accounting version it was made with).

use fedcare_privacy::{RdpAccountant, poisson_gaussian_rdp};
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
