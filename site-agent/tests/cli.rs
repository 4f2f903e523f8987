//! The `site-agent` command line.

use std::process::Command;

fn agent(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_site-agent")).args(args).output().expect("binary runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn help_explains_what_leaves_the_site() {
    let (ok, out, _) = agent(&["--help"]);
    assert!(ok);
    assert!(out.contains("Raw records never leave"), "{out}");
    assert!(out.contains("run") && out.contains("check"), "{out}");
}

#[test]
fn missing_config_names_the_file() {
    let (ok, _, err) = agent(&["run", "--config", "/no/such/site.toml"]);
    assert!(!ok);
    assert!(err.contains("/no/such/site.toml"), "{err}");
}
