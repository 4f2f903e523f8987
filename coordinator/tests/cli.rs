//! The `coordinator` command line: help that answers questions, errors that say what is wrong.

use std::process::Command;

fn coordinator(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator")).args(args).output().expect("binary runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn help_lists_every_command_and_the_quick_start() {
    let (ok, out, _) = coordinator(&["--help"]);
    assert!(ok);
    for cmd in ["serve", "simulate", "submit", "watch", "sites", "fetch", "coordinator simulate"] {
        assert!(out.contains(cmd), "--help lacks {cmd}:\n{out}");
    }
    let (ok, out, _) = coordinator(&["serve", "--help"]);
    assert!(ok && out.contains("--state") && out.contains("--listen"), "{out}");
}

#[test]
fn unreachable_coordinator_is_a_clear_error() {
    let (ok, _, err) = coordinator(&["sites", "--coordinator", "http://127.0.0.1:9"]);
    assert!(!ok);
    assert!(err.contains("cannot reach the coordinator at http://127.0.0.1:9"), "{err}");
}

#[test]
fn missing_job_file_names_it() {
    let (ok, _, err) = coordinator(&["submit", "/no/such/job.toml"]);
    assert!(!ok);
    assert!(err.contains("/no/such/job.toml"), "{err}");
}

#[test]
fn privacy_plan_gives_the_reference_epsilon_and_calibrates() {
    // Poisson-sampled Gaussian, q = 256/60000, z = 1.1, 14062 steps, delta 1e-5: RDP epsilon
    // about 2.60 (Google's dp_accounting).
    let q = (256.0f64 / 60000.0).to_string();
    let (ok, out, err) = coordinator(&["privacy", "plan", "--noise-multiplier", "1.1", "--sampling-rate", &q, "--steps", "14062", "--delta", "1e-5", "--output", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let eps = v["epsilon"].as_f64().unwrap();
    assert!((eps - 2.5966).abs() < 1e-3, "{eps}");

    let (ok, out, err) = coordinator(&["privacy", "plan", "--target-epsilon", "2.6", "--sampling-rate", &q, "--steps", "14062", "--delta", "1e-5", "--output", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let z = v["noise_multiplier"].as_f64().unwrap();
    assert!(v["epsilon"].as_f64().unwrap() <= 2.6);
    assert!(z > 1.09 && z < 1.1, "{z}");
}

#[test]
fn privacy_plan_refuses_bad_values_clearly() {
    for (flag, value, words) in [
        ("--sampling-rate", "1.5", "sampling rate 1.5 is outside (0, 1]"),
        ("--sampling-rate", "0", "outside (0, 1]"),
        ("--noise-multiplier", "-1", "noise multiplier -1 must be finite and non-negative"),
        ("--delta", "1", "delta 1 is outside (0, 1)"),
    ] {
        let mut args = vec!["privacy", "plan", "--noise-multiplier", "1.0", "--sampling-rate", "0.01", "--steps", "100", "--delta", "1e-5"];
        let i = args.iter().position(|a| *a == flag).unwrap();
        args[i + 1] = value;
        let (ok, _, err) = coordinator(&args);
        assert!(!ok, "{flag} {value} accepted");
        assert!(err.contains(words), "{flag} {value}: {err}");
    }
    let (ok, _, err) = coordinator(&["privacy", "plan", "--sampling-rate", "0.01", "--steps", "10", "--delta", "1e-5"]);
    assert!(!ok && err.contains("--noise-multiplier"), "{err}");
}
