//! The command line: check-config names the offending field, hash-key prints the digest.

use std::io::Write;
use std::process::Command;

use crate::support::binary::BINARY;

fn run(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BINARY)
        .args(args)
        .output()
        .expect("binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_a_valid_file_and_names_the_bad_field() {
    let mut good = tempfile::NamedTempFile::new().expect("temp file");
    good.write_all(b"models: [{name: m, backends: [{name: b, kind: mock}]}]\n")
        .expect("write");
    let (ok, stdout, _) = run(&["check-config", good.path().to_str().expect("utf-8 path")]);
    assert!(ok, "valid config accepted");
    assert!(stdout.ends_with(": ok\n"));

    let mut bad = tempfile::NamedTempFile::new().expect("temp file");
    bad.write_all(
        b"models: [{name: m, backends: [{name: b, kind: openai, base_url: 'not a url'}]}]\n",
    )
    .expect("write");
    let (ok, _, stderr) = run(&["check-config", bad.path().to_str().expect("utf-8 path")]);
    assert!(!ok, "invalid config rejected");
    assert!(
        stderr.contains("models[0].backends[0].base_url"),
        "names the field: {stderr}"
    );
}

#[test]
fn hash_key_prints_the_sha256_digest() {
    let (ok, stdout, _) = run(&["hash-key", "sk-sluicegate-dev"]);
    assert!(ok);
    assert_eq!(
        stdout.trim(),
        "222696be5f0eb9df0fa77b77d6efc39c946df7ab9ea61fb201d35832c5e9b15c"
    );
}
