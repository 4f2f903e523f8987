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
