//! The `gapless` binary: the README's run command, bad input, and the canary secret.

#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Command};

use gapless_store::{Store, StoreLocation};
use gapless_vault::{Credential, Keyring, Vault};

fn gapless(data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gapless"));
    cmd.arg("--data-dir").arg(data_dir);
    cmd.env_remove("GAPLESS_STORE")
        .env_remove("GAPLESS_MASTER_KEY")
        .env_remove("GAPLESS_DATA_DIR");
    cmd
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn readme_run_command_survives_the_outage() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = run(gapless(dir.path()).arg("demo"));
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("30/30 windows identical to the truth"),
        "{stdout}"
    );
    assert!(stdout.contains("missing 0"), "{stdout}");
    assert!(stdout.contains("INCIDENT opened for acme-ads"), "{stdout}");
    // Running it again starts over cleanly.
    let (ok, stdout, _) = run(gapless(dir.path()).args(["demo", "--json"]));
    assert!(ok);
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["windows_missing"], 0);
    assert_eq!(summary["windows_matching_truth"], 30);
    // The failure, the 1-day reminder, the recovery.
    assert_eq!(summary["emails"].as_array().unwrap().len(), 3);
    // Everything it wrote is private: directories 0700, files 0600 (the outbox is a
    // mailbox of messages with reauthorize links).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut checked = 0;
        let mut pending = vec![dir.path().join("demo")];
        while let Some(path) = pending.pop() {
            let meta = std::fs::metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o777;
            if meta.is_dir() {
                assert_eq!(mode, 0o700, "{}", path.display());
                pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else {
                assert_eq!(mode, 0o600, "{}", path.display());
            }
            checked += 1;
        }
        assert!(checked > 5, "the demo's files were checked ({checked})");
    }
}

/// The tokens the demo ended with never appear in output or logs (at trace level), and the
/// state file holds them only encrypted.
#[tokio::test]
async fn canary_tokens_never_appear_in_output_logs_or_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = String::new();
    for args in [
        &["demo", "--verbose"][..],
        &["--log-format", "json", "demo", "--json"][..],
    ] {
        let (ok, stdout, stderr) = run(gapless(dir.path()).args(args).env("GAPLESS_LOG", "trace"));
        assert!(ok, "{stderr}");
        outputs.push_str(&stdout);
        outputs.push_str(&stderr);
    }
    assert!(outputs.len() > 10_000, "trace logging produced output");
    let demo = dir.path().join("demo");
    let vault = Vault::new(Keyring::load(None, &demo.join("master.key")).unwrap());
    let store = Store::open(&StoreLocation::Sqlite {
        data_dir: demo.clone(),
    })
    .await
    .unwrap();
    let identity = store.find_identity("acme-ads").await.unwrap();
    let (sealed, _) = store.sealed_credential(identity.id).await.unwrap();
    let Credential::OAuth2 {
        access_token,
        refresh_token,
        ..
    } = vault
        .open_credential(&identity.id.to_string(), &sealed)
        .unwrap()
    else {
        panic!("expected an OAuth2 credential");
    };
    store.close().await;
    let refresh_token = refresh_token.unwrap();
    let canaries = [access_token.expose_secret(), refresh_token.expose_secret()];
    let mut state = Vec::new();
    for entry in std::fs::read_dir(&demo).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("gapless.sqlite")
        {
            state.extend(std::fs::read(path).unwrap());
        }
    }
    for canary in canaries {
        assert!(canary.len() > 20);
        assert!(
            !outputs.contains(canary),
            "a token appeared in output or logs"
        );
        let needle = canary.as_bytes();
        assert!(
            !state.windows(needle.len()).any(|w| w == needle),
            "a token is stored in plain text"
        );
    }
}

#[test]
fn an_unreachable_store_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = run(gapless(dir.path()).args([
        "--store",
        "postgres://gapless:pw-canary@127.0.0.1:1/gapless",
        "init",
    ]));
    assert!(!ok);
    assert!(stderr.contains("cannot open the store"), "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("pw-canary"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (ok, _, stderr) = run(gapless(dir.path()).args(["--store", "mysql://x@y/z", "init"]));
    assert!(!ok);
    assert!(stderr.contains("not understood"), "{stderr}");
}

#[test]
fn a_data_dir_without_permission_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the data directory's parent should be: no one may create it.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"").unwrap();
    let data_dir = blocker.join("data");
    let (ok, _, stderr) = run(gapless(&data_dir).arg("init"));
    assert!(!ok);
    assert!(stderr.contains("data directory"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (ok, _, stderr) = run(gapless(&data_dir).arg("demo"));
    assert!(!ok);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_malformed_master_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = run(gapless(dir.path())
        .arg("demo")
        .env("GAPLESS_MASTER_KEY", "this is not a key"));
    assert!(!ok);
    assert!(stderr.contains("GAPLESS_MASTER_KEY"), "{stderr}");
    assert!(stderr.contains("not base64"), "{stderr}");
}

#[test]
fn init_creates_a_private_key_file_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = run(gapless(dir.path()).arg("init"));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("created, mode 0600"), "{stdout}");
    let key = std::fs::read(dir.path().join("master.key")).unwrap();
    let (ok, stdout, _) = run(gapless(dir.path()).arg("init"));
    assert!(ok);
    assert!(stdout.contains("exists, kept"), "{stdout}");
    assert_eq!(std::fs::read(dir.path().join("master.key")).unwrap(), key);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o700, "the data directory is private");
        assert_eq!(mode(&dir.path().join("gapless.sqlite")), 0o600);
        // A key file others may read is refused, with what to do.
        std::fs::set_permissions(
            dir.path().join("master.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let (ok, _, stderr) = run(gapless(dir.path()).args(["identity", "list"]));
        assert!(!ok);
        assert!(stderr.contains("chmod 600"), "{stderr}");
    }
}
