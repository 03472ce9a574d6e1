//! Helpers shared by the CLI tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use gapless_sandbox::{DEMO_CLIENT_SECRET, browser};

pub fn gapless(data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gapless"));
    cmd.arg("--data-dir").arg(data_dir);
    cmd.env_remove("GAPLESS_STORE")
        .env_remove("GAPLESS_MASTER_KEY")
        .env_remove("GAPLESS_CONFIG")
        .env("TEST_SANDBOX_SECRET", DEMO_CLIENT_SECRET);
    cmd
}

pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Drive a consent: start the command, open the printed URL as `user`, follow the
/// redirect to the command's loopback listener, and wait for the command to finish.
pub async fn consent(mut cmd: Command, user: &str, password: &str) -> (bool, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut printed = String::new();
    let url = loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "no URL printed: {printed}"
        );
        printed.push_str(&line);
        if let Some(url) = line.trim().strip_prefix("http") {
            break format!("http{url}");
        }
    };
    let redirect = browser::approve(&url, user, password).await.unwrap();
    assert!(
        redirect.as_str().starts_with("http://127.0.0.1:"),
        "{redirect}"
    );
    let page = reqwest::get(redirect.as_str())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Authorization received"), "{page}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    printed.push_str(&rest);
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.success(), format!("{printed}{stderr}"))
}

/// The first of `tokens` (the ones the sandbox issued) that `text` holds, if any.
pub fn token_in<'t>(text: &str, tokens: &'t [String]) -> Option<&'t str> {
    tokens
        .iter()
        .find(|token| !token.is_empty() && text.contains(token.as_str()))
        .map(String::as_str)
}

/// An initialized data directory whose `gapless.toml` holds `extra` (top-level settings)
/// and the sandbox provider, with the demo user's identity `acme` connected through the
/// consent flow. The sandbox runs in this process on the wall clock.
pub async fn installation_with_acme(
    extra: &str,
) -> (
    gapless_sandbox::SandboxHandle,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    use gapless_sandbox::{DEMO_CLIENT_ID, DEMO_PASSWORD, DEMO_USER, Sandbox, SandboxConfig};
    let sandbox = Sandbox::demo(
        SandboxConfig::default(),
        std::sync::Arc::new(gapless_core::SystemClock),
    );
    let handle = sandbox.bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(run(gapless(&data).arg("init")).0);
    std::fs::write(
        data.join("gapless.toml"),
        format!(
            "{extra}[providers.sandbox]\nbase_url = \"{}\"\nclient_id = \"{DEMO_CLIENT_ID}\"\nclient_secret_env = \"TEST_SANDBOX_SECRET\"\n",
            handle.base_url()
        ),
    )
    .unwrap();
    let mut add = gapless(&data);
    add.args([
        "identity",
        "add",
        "--provider",
        "sandbox",
        "--label",
        "acme",
    ]);
    assert!(consent(add, DEMO_USER, DEMO_PASSWORD).await.0);
    (handle, dir, data)
}

/// Tests that count days (or hours) from the wall clock fail if a boundary passes while they
/// run: when the next multiple of `every` (UTC) is less than three minutes away, wait until
/// it has passed.
pub async fn clear_of_boundary(every: chrono::Duration) {
    let margin = chrono::Duration::minutes(3);
    let now = chrono::Utc::now();
    let step = every.num_seconds().max(1);
    let into = now.timestamp().rem_euclid(step);
    let left = chrono::Duration::seconds(step - into);
    if left < margin {
        let wait = (left + chrono::Duration::seconds(2))
            .to_std()
            .unwrap_or_default();
        eprintln!("waiting {wait:?} for the clock to pass a boundary of {every}");
        tokio::time::sleep(wait).await;
    }
}
