//! `gapless serve` end to end in real headless Chromium: an identity is revoked, `gapless
//! run` opens the incident and writes the Authorization Failure email to the outbox; the
//! link from that email is opened in the browser (e2e/reauth.mjs, Playwright), consent is
//! given at the sandbox, and gapless shows the identity healthy and the backfill complete.
//! Screenshots go to e2e/artifacts/. The server runs with debug logs, which must not hold
//! a token; SIGTERM stops it cleanly.
//!
//! Needs Debian's chromium and `npm ci` in e2e/ (both done by .ci/run, which sets
//! GAPLESS_REQUIRE_E2E=1 so that a missing browser fails instead of skipping).

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration as StdDuration,
};

use chrono::{Duration, Utc};
use common::{gapless, installation_with_acme, run, token_in};
use gapless_sandbox::{DEMO_PASSWORD, DEMO_USER, Fault};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn browser_available() -> bool {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready = Path::new(&chromium).exists()
        && repo_root()
            .join("e2e/node_modules/playwright-core")
            .exists();
    if !ready && std::env::var("GAPLESS_REQUIRE_E2E").as_deref() == Ok("1") {
        panic!("chromium or e2e/node_modules is missing (run `npm ci` in e2e/)");
    }
    ready
}

/// The reauthorize link in an .eml file of the outbox.
fn link_in_outbox(outbox: &Path, base: &str) -> String {
    for entry in std::fs::read_dir(outbox).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().contains("authorization_failure") {
            continue;
        }
        let raw = std::fs::read(&path).unwrap();
        let message = mail_parser::MessageParser::default().parse(&raw).unwrap();
        let text = message.body_text(0).unwrap().into_owned();
        let prefix = format!("{base}/reauth/");
        let start = text.find(&prefix).expect("a reauthorize link in the email");
        return text[start..].split_whitespace().next().unwrap().to_string();
    }
    panic!("no Authorization Failure email in {}", outbox.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reauthorize_link_from_the_email_works_in_headless_chromium() {
    common::clear_of_boundary(chrono::Duration::days(1)).await;
    if !browser_available() {
        eprintln!(
            "skipped: no chromium or e2e/node_modules (GAPLESS_REQUIRE_E2E=1 makes this fail)"
        );
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let (handle, dir, data) = installation_with_acme(&format!("public_url = \"{base}\"\n")).await;
    let start = (Utc::now() - Duration::days(4)).date_naive();
    let (ok, _, err) = run(gapless(&data).args([
        "pipeline",
        "add",
        "--name",
        "acme-daily",
        "--source",
        "acme",
        "--resource",
        "act_1001",
        "--start",
        &start.to_string(),
    ]));
    assert!(ok, "{err}");

    // The app is revoked before the first run: four days go missing, one incident, one email.
    handle
        .sandbox()
        .apply_fault(Fault::RevokeApp {
            user: DEMO_USER.into(),
        })
        .unwrap();
    let (_, out, err) = run(gapless(&data).args(["run", "--once"]));
    assert!(out.contains("INCIDENT opened for acme"), "{out}{err}");
    let link = link_in_outbox(&data.join("outbox"), &base);
    let (ok, token, err) = run(gapless(&data).args(["token", "create", "e2e", "--scope", "write"]));
    assert!(ok, "{err}");

    let log_path = dir.path().join("serve.log");
    let mut server = gapless(&data)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--every",
            "1h",
        ])
        .env("GAPLESS_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    assert!(ready, "gapless serve did not become ready");

    let artifacts = repo_root().join("e2e/artifacts");
    // A screenshot left by an earlier run must not stand in for this one's.
    if artifacts.exists() {
        std::fs::remove_dir_all(&artifacts).unwrap();
    }
    let browser = Command::new("node")
        .arg(repo_root().join("e2e/reauth.mjs"))
        .env("GAPLESS_BASE", &base)
        .env("GAPLESS_LINK", &link)
        .env("GAPLESS_TOKEN", token.trim())
        .env("SANDBOX_USER", DEMO_USER)
        .env("SANDBOX_PASSWORD", DEMO_PASSWORD)
        .env("ARTIFACTS", &artifacts)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&browser.stdout).into_owned();
    let errors = String::from_utf8_lossy(&browser.stderr).into_owned();
    // Stop the server with SIGTERM before judging, so it never outlives the test.
    let stopped = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let exit = server.wait().unwrap();

    assert!(browser.status.success(), "{printed}{errors}");
    let result: serde_json::Value = serde_json::from_str(printed.trim()).unwrap();
    assert_eq!(result["state"], "healthy", "{result}");
    assert_eq!(result["backfill"], "complete", "{result}");
    assert_eq!(result["recovered"], 4, "{result}");
    assert_eq!(result["lost"], 0, "{result}");
    assert_eq!(result["after"], "green", "{result}");
    assert!(artifacts.join("identities-red.png").exists());
    assert!(exit.success(), "SIGTERM is a clean stop: {exit}");

    let (ok, out, _) = run(gapless(&data).args(["gaps"]));
    assert!(ok);
    assert!(out.contains("no gaps"), "{out}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    // At debug level the server logs its requests; an empty log would make the next
    // check mean nothing.
    assert!(!log.is_empty(), "the server logged nothing");
    let issued = handle.sandbox().issued_tokens();
    assert!(!issued.is_empty());
    assert_eq!(
        token_in(&log, &issued),
        None,
        "a token in the server's log:\n{log}"
    );
}
