//! `gapless identity …` end to end: the loopback consent flow against the sandbox, list,
//! check (probe) that classifies a password change, reauth, rename, delete.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    process::{Command, Stdio},
    sync::Arc,
};

use common::{consent, gapless, run, token_in};

use gapless_core::SystemClock;
use gapless_sandbox::{DEMO_CLIENT_ID, DEMO_PASSWORD, DEMO_USER, Fault, Sandbox, SandboxConfig};

#[tokio::test(flavor = "multi_thread")]
async fn identity_lifecycle_through_the_cli() {
    let sandbox = Sandbox::demo(SandboxConfig::default(), Arc::new(SystemClock));
    let handle = sandbox.bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, _, stderr) = run(gapless(&data).arg("init"));
    assert!(ok, "{stderr}");
    std::fs::write(
        data.join("gapless.toml"),
        format!(
            "[providers.sandbox]\nbase_url = \"{}\"\nclient_id = \"{DEMO_CLIENT_ID}\"\nclient_secret_env = \"TEST_SANDBOX_SECRET\"\n",
            handle.base_url()
        ),
    )
    .unwrap();
    let mut outputs = String::new();

    let mut add = gapless(&data);
    add.args([
        "identity",
        "add",
        "--provider",
        "sandbox",
        "--label",
        "acme",
        "--owner",
        "ana@example.com",
    ]);
    let (ok, out) = consent(add, DEMO_USER, DEMO_PASSWORD).await;
    assert!(ok, "{out}");
    assert!(out.contains("identity acme connected"), "{out}");
    assert!(out.contains("Ana Example"), "{out}");
    outputs.push_str(&out);

    let (ok, out, err) = run(gapless(&data).args(["identity", "list", "--json"]));
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["state"], "healthy");
    assert_eq!(list[0]["upstream_account_name"], "Ana Example");
    assert_eq!(list[0]["owners"][0], "ana@example.com");
    outputs.push_str(&out);

    let (ok, out, err) = run(gapless(&data).args(["identity", "check", "acme"]));
    assert!(ok, "{out}{err}");
    assert!(out.contains("ok: upstream account Ana Example"), "{out}");
    outputs.push_str(&out);

    // The account holder changes their password: the check names the cause and fails.
    handle
        .sandbox()
        .apply_fault(Fault::ChangePassword {
            user: DEMO_USER.into(),
            new_password: "a brand new password".into(),
        })
        .unwrap();
    let (ok, out, err) = run(gapless(&data).args(["identity", "check", "acme", "--json"]));
    assert!(!ok);
    assert!(err.contains("did not pass"), "{err}");
    let check: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(check["identity"]["state"], "needs_reauth");
    assert_eq!(
        check["identity"]["cause"],
        "reauth_required/password_changed"
    );
    assert_eq!(check["identity"]["provider_code"], "190/460");
    outputs.push_str(&out);

    let (ok, out, _) = run(gapless(&data).args(["identity", "list"]));
    assert!(ok);
    assert!(
        out.contains("needs_reauth") && out.contains("password_changed"),
        "{out}"
    );
    outputs.push_str(&out);

    let mut reauth = gapless(&data);
    reauth.args(["identity", "reauth", "acme"]);
    let (ok, out) = consent(reauth, DEMO_USER, "a brand new password").await;
    assert!(ok, "{out}");
    assert!(out.contains("acme is healthy again"), "{out}");
    outputs.push_str(&out);

    let (ok, out, err) = run(gapless(&data).args(["identity", "show", "acme"]));
    assert!(ok, "{err}");
    assert!(out.contains("healthy -> needs_reauth"), "{out}");
    assert!(out.contains("needs_reauth -> healthy"), "{out}");
    outputs.push_str(&out);

    let (ok, out, _) = run(gapless(&data).args(["identity", "rename", "acme", "acme-eu"]));
    assert!(ok, "{out}");
    let (ok, _, err) = run(gapless(&data).args(["identity", "show", "acme"]));
    assert!(!ok);
    assert!(err.contains("not found"), "{err}");
    let revocations = handle.sandbox().stats().client_revocations;
    let (ok, out, err) = run(gapless(&data).args(["identity", "delete", "acme-eu"]));
    assert!(ok, "{err}");
    assert!(out.contains("deleted"));
    // The grant ends at the provider too (RFC 7009), and the command says so.
    assert!(out.contains("revoked at the provider"), "{out}");
    assert_eq!(
        handle.sandbox().stats().client_revocations,
        revocations + 1,
        "one revocation sent"
    );

    // Every token the provider issued (tokens, not token-shaped text: a PKCE challenge
    // may look like one).
    let issued = handle.sandbox().issued_tokens();
    assert!(issued.len() >= 4, "{} tokens issued", issued.len());
    assert_eq!(
        token_in(&outputs, &issued),
        None,
        "a token appeared in CLI output:\n{outputs}"
    );
    handle.shutdown().await;
}

#[test]
fn identity_commands_without_a_key_or_with_an_unknown_provider_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, _, err) = run(gapless(&data).args(["identity", "list"]));
    assert!(!ok);
    assert!(err.contains("gapless init"), "{err}");
    let (ok, _, err) = run(gapless(&data).arg("init"));
    assert!(ok, "{err}");
    std::fs::write(
        data.join("gapless.toml"),
        "[providers.facebook]\nbase_url = \"http://127.0.0.1:9\"\nclient_id = \"x\"\nclient_secret = \"y\"\n",
    )
    .unwrap();
    let (ok, _, err) = run(gapless(&data).args(["identity", "list"]));
    assert!(!ok);
    assert!(err.contains("unknown provider \"facebook\""), "{err}");
    std::fs::write(data.join("gapless.toml"), "this is = = not toml").unwrap();
    let (ok, _, err) = run(gapless(&data).args(["identity", "list"]));
    assert!(!ok);
    assert!(err.contains("not a valid configuration"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_key_identity_is_saved_only_after_its_probe_and_never_retried_blindly() {
    let sandbox = Sandbox::demo(SandboxConfig::default(), Arc::new(SystemClock));
    let key = sandbox.issue_api_key(DEMO_USER).unwrap();
    let handle = sandbox.bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(run(gapless(&data).arg("init")).0);
    std::fs::write(
        data.join("gapless.toml"),
        format!(
            "[providers.sandbox_key]\nbase_url = \"{}\"\n",
            handle.base_url()
        ),
    )
    .unwrap();
    let add = |input: &str| {
        let mut child = gapless(&data)
            .args([
                "identity",
                "add",
                "--provider",
                "sandbox_key",
                "--label",
                "keyed",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // An empty key and a wrong key: clear errors, nothing saved.
    let (ok, out) = add("\n");
    assert!(!ok);
    assert!(out.contains("empty; nothing was saved"), "{out}");
    let (ok, out) = add("sk_not-a-real-key\n");
    assert!(!ok);
    assert!(out.contains("does not pass the probe"), "{out}");
    let (_, listed, _) = run(gapless(&data).args(["identity", "list", "--json"]));
    assert_eq!(listed.trim(), "[]");
    // The right key.
    let (ok, out) = add(&format!("{key}\n"));
    assert!(ok, "{out}");
    assert!(out.contains("Ana Example"), "{out}");
    assert!(!out.contains(&key), "the key was echoed");
    let (ok, out, err) = run(gapless(&data).args(["identity", "check", "keyed"]));
    assert!(ok, "{out}{err}");
    // The key is revoked: one call, classified, no blind retry.
    handle
        .sandbox()
        .apply_fault(Fault::RevokeApiKeys {
            user: DEMO_USER.into(),
        })
        .unwrap();
    let before = handle.sandbox().stats().api_requests;
    let (ok, out, _) = run(gapless(&data).args(["identity", "check", "keyed", "--json"]));
    assert!(!ok);
    let check: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        check["identity"]["cause"],
        "reauth_required/invalid_credentials"
    );
    assert_eq!(handle.sandbox().stats().api_requests - before, 1);
    // Checking again does not touch the provider: the key needs a human.
    let (ok, out, _) = run(gapless(&data).args(["identity", "check", "keyed"]));
    assert!(!ok);
    assert!(out.contains("not probed"), "{out}");
    assert_eq!(handle.sandbox().stats().api_requests - before, 1);
    handle.shutdown().await;
}

/// Run `gapless` with `input` on standard input.
fn run_with_input(cmd: &mut Command, input: &str) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_destination_identity_is_probed_and_reauthorized_after_a_password_change() {
    let cluster = gapless_store::testing::PrivatePostgres::start()
        .await
        .unwrap();
    cluster
        .admin_sql("postgres", "CREATE ROLE loader LOGIN PASSWORD 'first-pw'")
        .await
        .unwrap();
    cluster
        .admin_sql("postgres", "CREATE DATABASE dw OWNER loader")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(run(gapless(&data).arg("init")).0);
    std::fs::write(
        data.join("gapless.toml"),
        format!(
            "[destinations.warehouse]\nkind = \"postgres\"\nurl = \"{}\"\nschema = \"reports\"\n",
            cluster.url("loader", None, "dw")
        ),
    )
    .unwrap();
    let add = || {
        let mut cmd = gapless(&data);
        cmd.args([
            "identity",
            "add",
            "--provider",
            "warehouse",
            "--label",
            "dw-loader",
        ]);
        cmd
    };
    let (ok, out) = run_with_input(&mut add(), "wrong-pw\n");
    assert!(!ok);
    assert!(
        out.contains("does not pass the probe") && out.contains("28P01"),
        "{out}"
    );
    let (ok, out) = run_with_input(&mut add(), "first-pw\n");
    assert!(ok, "{out}");
    assert!(out.contains("loader on warehouse"), "{out}");
    let (ok, out, err) = run(gapless(&data).args(["identity", "check", "dw-loader"]));
    assert!(ok, "{out}{err}");

    cluster
        .admin_sql("postgres", "ALTER ROLE loader PASSWORD 'second-pw'")
        .await
        .unwrap();
    let (ok, out, _) = run(gapless(&data).args(["identity", "check", "dw-loader", "--json"]));
    assert!(!ok);
    let check: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        check["identity"]["cause"],
        "reauth_required/invalid_credentials"
    );
    assert_eq!(check["identity"]["provider_code"], "28P01");
    // A password is never tried again blindly.
    let (ok, out, _) = run(gapless(&data).args(["identity", "check", "dw-loader"]));
    assert!(!ok);
    assert!(out.contains("not probed"), "{out}");

    let (ok, out) = run_with_input(
        gapless(&data).args(["identity", "reauth", "dw-loader"]),
        "second-pw\n",
    );
    assert!(ok, "{out}");
    assert!(out.contains("healthy again"), "{out}");
    assert!(
        !out.contains("second-pw") && !out.contains("first-pw"),
        "{out}"
    );
    let (ok, out, err) = run(gapless(&data).args(["identity", "check", "dw-loader"]));
    assert!(ok, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_check_is_mailed_over_smtp_to_owners_groups_and_listed() {
    use gapless_notify::testing::SmtpSink;
    let sink = SmtpSink::start(0).await.unwrap();
    let sandbox = Sandbox::demo(SandboxConfig::default(), Arc::new(SystemClock));
    let handle = sandbox.bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(run(gapless(&data).arg("init")).0);
    std::fs::write(
        data.join("gapless.toml"),
        format!(
            r#"
[providers.sandbox]
base_url = "{}"
client_id = "{DEMO_CLIENT_ID}"
client_secret_env = "TEST_SANDBOX_SECRET"

[notify]
reminders = ["1d", "3d"]
repeat = "7d"

[notify.smtp]
host = "127.0.0.1"
port = {}
security = "plain"

[notify.groups]
data-team = ["dana@example.com", "omar@example.com"]

[notify.recipients]
defaults = ["group:data-team"]
"#,
            handle.base_url(),
            sink.port
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
        "--owner",
        DEMO_USER,
    ]);
    let (ok, out) = consent(add, DEMO_USER, DEMO_PASSWORD).await;
    assert!(ok, "{out}");
    handle
        .sandbox()
        .apply_fault(Fault::LockAccount {
            user: DEMO_USER.into(),
        })
        .unwrap();
    let (ok, _, _) = run(gapless(&data).args(["identity", "check", "acme"]));
    assert!(!ok);
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].recipients,
        vec![DEMO_USER, "dana@example.com", "omar@example.com"]
    );
    let text = String::from_utf8_lossy(&messages[0].data).to_string();
    assert!(text.contains("Authorization Failure"), "{text}");
    assert!(text.contains("190/459"), "{text}");
    let (ok, out, err) = run(gapless(&data).args(["notifications", "list", "--json"]));
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["state"], "delivered");
    assert_eq!(list[0]["kind"], "authorization_failure");
    let (ok, out, _) = run(gapless(&data).args(["notifications", "list", "--failed"]));
    assert!(ok);
    assert!(out.contains("no failed notifications"), "{out}");
    let (ok, _, err) =
        run(gapless(&data).args(["identity", "owners", "acme", "--owner", "not-an-address"]));
    assert!(!ok);
    assert!(err.contains("not an email address"), "{err}");
    let (ok, out, err) = run(gapless(&data).args([
        "identity",
        "owners",
        "acme",
        "--owner",
        "new-owner@example.com",
    ]));
    assert!(ok, "{err}");
    assert!(out.contains("new-owner@example.com"), "{out}");
    // One scheduler tick: nothing new to say (the reminder is due after a day).
    let (ok, _, err) = run(gapless(&data).args(["run", "--once"]));
    assert!(ok, "{err}");
    assert_eq!(sink.messages().len(), 1);
    // A group that does not exist is a configuration error, named.
    let config = std::fs::read_to_string(data.join("gapless.toml"))
        .unwrap()
        .replace("group:data-team", "group:data-tem");
    std::fs::write(data.join("gapless.toml"), config).unwrap();
    let (ok, _, err) = run(gapless(&data).args(["notifications", "list"]));
    assert!(!ok);
    assert!(err.contains("group:data-tem"), "{err}");
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_gapless_run_cleanly_after_its_tick() {
    let (_sandbox, _dir, data) = common::installation_with_acme("").await;
    let mut child = gapless(&data)
        .args(["run", "--every", "1s"])
        .env("GAPLESS_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it get through its first tick and into the wait (or into the next tick).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gapless run did not stop after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // Handled like Ctrl-C: a clean exit, not death by the signal.
    assert!(status.success(), "{status:?}");
    // No refresh was left half done.
    let (ok, out, _) = run(gapless(&data).args(["identity", "show", "acme", "--json"]));
    assert!(ok);
    assert!(!out.contains("refresh_outcome_unknown"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_master_key_is_refused_by_name_before_anything_is_sealed_with_it() {
    let (_sandbox, _dir, data) = common::installation_with_acme("").await;
    // A valid key, but not this installation's version 1.
    let wrong = "1:BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    for args in [vec!["identity", "list"], vec!["run", "--once"]] {
        let (ok, _, stderr) = run(gapless(&data).args(&args).env("GAPLESS_MASTER_KEY", wrong));
        assert!(!ok, "{args:?} started with a wrong key");
        assert!(
            stderr.contains("master key version 1 is not the key"),
            "{args:?}: {stderr}"
        );
    }
    // The right key still opens everything.
    let (ok, out, err) = run(gapless(&data).args(["identity", "check", "acme"]));
    assert!(ok, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_rotation_reseals_every_credential_and_the_old_version_can_then_be_retired() {
    let (_sandbox, _dir, data) = common::installation_with_acme("").await;
    let (ok, out, err) = run(gapless(&data).args(["keys", "status"]));
    assert!(ok, "{err}");
    assert!(out.contains("version 1: 1 credential(s)"), "{out}");
    // The only key cannot be retired.
    let (ok, _, err) = run(gapless(&data).args(["keys", "retire", "1"]));
    assert!(!ok);
    assert!(err.contains("newest"), "{err}");

    let (ok, out, err) = run(gapless(&data).args(["keys", "rotate", "--batch", "1"]));
    assert!(ok, "{err}");
    assert!(out.contains("key version 2 added"), "{out}");
    assert!(out.contains("re-sealed 1 credential(s)"), "{out}");
    let (_, out, _) = run(gapless(&data).args(["keys", "status", "--json"]));
    let usage: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(usage["current"], 2, "{out}");
    assert_eq!(usage["credentials"]["2"], 1, "{out}");
    assert!(usage["credentials"].get("1").is_none(), "{out}");

    let (ok, out, err) = run(gapless(&data).args(["keys", "retire", "1"]));
    assert!(ok, "{err}");
    assert!(out.contains("key version 1 removed"), "{out}");
    let (ok, _, err) = run(gapless(&data).args(["keys", "retire", "2"]));
    assert!(!ok);
    assert!(err.contains("newest"), "{err}");
    // The credential opens with the new key alone: the identity still works.
    let (ok, out, err) = run(gapless(&data).args(["identity", "check", "acme"]));
    assert!(ok, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_log_names_the_cli_user_and_verify_finds_a_removed_or_edited_entry() {
    use sqlx::{Connection, Executor};
    let (_sandbox, _dir, data) = common::installation_with_acme("").await;
    let as_alice = |args: &[&str]| {
        let mut cmd = gapless(&data);
        cmd.env("USER", "ops-alice").args(args);
        run(&mut cmd)
    };
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/providers/shopify_orders.toml"
    );
    for args in [
        &["token", "create", "ci", "--scope", "write"][..],
        &["token", "revoke", "ci"],
        &["provider", "add", example],
        &["provider", "remove", "shopify_orders"],
        &["keys", "rotate"],
    ] {
        let (ok, out, err) = as_alice(args);
        assert!(ok, "{args:?}: {out}{err}");
    }
    let (ok, out, err) = as_alice(&["audit", "--json"]);
    assert!(ok, "{err}");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let alices: Vec<(&str, &str)> = entries
        .iter()
        .filter(|e| e["actor"]["name"] == "ops-alice")
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["subject"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        alices,
        vec![
            ("token_created", "ci"),
            ("token_revoked", "ci"),
            ("provider_added", "shopify_orders"),
            ("provider_removed", "shopify_orders"),
            ("key_added", "key version 2"),
            ("key_resealed", "key version 2"),
        ],
        "{out}"
    );
    // By identity: its creation by the CLI, then the refresh tokens it got.
    let (ok, out, err) = as_alice(&["audit", "--identity", "acme"]);
    assert!(ok, "{err}");
    assert!(out.contains("identity_created"), "{out}");
    assert!(out.contains("cli:"), "{out}");

    let (ok, out, err) = as_alice(&["audit", "verify"]);
    assert!(ok, "{err}");
    let head = out
        .lines()
        .find_map(|l| l.strip_prefix("head: "))
        .unwrap()
        .to_string();
    let (head_seq, _) = head.split_once(':').unwrap();

    // Someone with the database's rights removes the last entry, then edits another.
    let url = format!("sqlite://{}", data.join("gapless.sqlite").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    conn.execute("DROP TRIGGER audit_log_no_delete")
        .await
        .unwrap();
    conn.execute("DROP TRIGGER audit_log_no_update")
        .await
        .unwrap();
    conn.execute(format!("DELETE FROM audit_log WHERE seq = {head_seq}").as_str())
        .await
        .unwrap();
    let (ok, _, _) = as_alice(&["audit", "verify"]);
    assert!(ok, "removing the last entry leaves a valid chain…");
    let (ok, _, err) = as_alice(&["audit", "verify", "--anchor", &head]);
    assert!(!ok, "…which the anchor catches");
    assert!(err.contains("is gone"), "{err}");
    conn.execute("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2")
        .await
        .unwrap();
    let (ok, _, err) = as_alice(&["audit", "verify"]);
    assert!(!ok);
    assert!(err.contains("broken at entry 2"), "{err}");
    assert!(err.contains("edited"), "{err}");
}
