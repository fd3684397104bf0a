//! The command line: check-config names the offending field, hash-key prints the digest.

use std::io::Write;
use std::process::Command;

use crate::support::binary::BINARY;
use crate::support::{ms, within};

fn run(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BINARY)
        .args(args)
        .env("RUST_BACKTRACE", "full")
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
    assert!(
        !stderr.to_lowercase().contains("backtrace") && stderr.lines().count() == 1,
        "one line of message, never a backtrace, even with RUST_BACKTRACE set: {stderr}"
    );
}

#[tokio::test]
async fn text_logs_written_to_a_pipe_carry_no_colour_codes() {
    use tokio::io::AsyncBufReadExt;

    let mut config = tempfile::NamedTempFile::new().expect("temp file");
    config
        .write_all(
            b"server: {listen: '127.0.0.1:0'}\nlog: {format: text, level: info}\n\
              models: [{name: m, backends: [{name: b, kind: mock}]}]\n",
        )
        .expect("write");
    let mut child = tokio::process::Command::new(BINARY)
        .arg("--config")
        .arg(config.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = within(ms(10_000), "the listening line", lines.next_line())
        .await
        .expect("read")
        .expect("a line");
    assert!(line.contains("listening"), "{line}");
    assert!(
        !line.contains('\u{1b}'),
        "no ANSI escapes in a pipe: {line:?}"
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
