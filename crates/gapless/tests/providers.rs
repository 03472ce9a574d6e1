//! `gapless provider …`: definition files checked without the network, added, listed,
//! shown and removed; a bad file is refused whole with every problem located.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{gapless, run};

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/providers")
        .join(name)
}

#[test]
fn the_example_definitions_pass_the_check() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["sandbox.toml", "shopify_orders.toml"] {
        let (ok, out, err) = run(gapless(dir.path())
            .args(["provider", "check"])
            .arg(example(name)));
        assert!(ok, "{name}: {out}{err}");
        assert!(out.contains(": ok"), "{out}");
    }
}

#[test]
fn a_definition_is_checked_added_listed_shown_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(example("shopify_orders.toml")).unwrap();
    let bad_text = format!(
        "{}\n[[errors]]\nstatus = 403\ncause = \"forbidden\"\n",
        text.replace("{window.end}", "{window.ending}")
    );
    std::fs::write(&bad, &bad_text).unwrap();
    // Where each problem is: its line, and its column (1-based, in characters).
    let place = |needle: &str| {
        let (n, line) = bad_text
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains(needle))
            .unwrap();
        format!("bad.toml:{}:{}:", n + 1, line.find(needle).unwrap() + 1)
    };
    let (ok, _, err) = run(gapless(&data).args(["provider", "check"]).arg(&bad));
    assert!(!ok);
    assert!(
        err.contains(&place("\"forbidden\"")) && err.contains("errors[0].cause"),
        "{err}"
    );
    assert!(
        err.contains(&place("{window.ending}"))
            && err.contains("unknown variable \"window.ending\""),
        "{err}"
    );
    assert!(err.contains("2 problem(s); nothing was loaded"), "{err}");
    let (ok, _, err) = run(gapless(&data).args(["provider", "add"]).arg(&bad));
    assert!(!ok, "a bad definition is never added: {err}");
    let (_, out, _) = run(gapless(&data).args(["provider", "list"]));
    assert!(!out.contains("shopify_orders"), "{out}");

    let good = example("shopify_orders.toml");
    let (ok, out, err) = run(gapless(&data).args(["provider", "add"]).arg(&good));
    assert!(ok, "{err}");
    assert!(out.contains("provider shopify_orders added"), "{out}");
    let (ok, _, err) = run(gapless(&data).args(["provider", "add"]).arg(&good));
    assert!(!ok);
    assert!(err.contains("already defined"), "{err}");
    let (ok, out, _) = run(gapless(&data).args(["provider", "list"]));
    assert!(ok);
    assert!(out.contains("sandbox") && out.contains("built in"), "{out}");
    assert!(
        out.contains("shopify_orders") && out.contains("api key"),
        "{out}"
    );
    let (ok, out, _) = run(gapless(&data).args(["provider", "show", "shopify_orders"]));
    assert!(ok);
    assert!(
        out.contains("X-Shopify") || out.contains("api key"),
        "{out}"
    );
    assert!(
        out.contains("stream orders") && out.contains("lookback 60d"),
        "{out}"
    );
    assert!(out.contains("2/1s per upstream account"), "{out}");

    let (ok, _, err) = run(gapless(&data)
        .args(["provider", "add"])
        .arg(example("sandbox.toml")));
    assert!(!ok);
    assert!(err.contains("built-in"), "{err}");

    let (ok, _, err) = run(gapless(&data).args(["init"]));
    assert!(ok, "{err}");
    // A name is looked up inside the definitions, never used as a path.
    std::fs::write(data.join("gapless.toml"), "").unwrap();
    let (ok, _, err) = run(gapless(&data).args(["provider", "remove", "../gapless"]));
    assert!(!ok);
    assert!(err.contains("no definition of a provider named"), "{err}");
    assert!(
        data.join("gapless.toml").exists(),
        "nothing outside the providers directory is removed"
    );
    let (ok, out, err) = run(gapless(&data).args(["provider", "remove", "shopify_orders"]));
    assert!(ok, "{err}");
    assert!(out.contains("removed"), "{out}");
    let (ok, _, err) = run(gapless(&data).args(["provider", "show", "shopify_orders"]));
    assert!(!ok);
    assert!(err.contains("no provider named shopify_orders"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_runs_through_its_definition_file() {
    common::clear_of_boundary(chrono::Duration::days(1)).await;
    use chrono::{Duration, Utc};
    use common::consent;
    use gapless_core::SystemClock;
    use gapless_sandbox::{
        DEMO_AD_ACCOUNT, DEMO_CLIENT_ID, DEMO_PASSWORD, DEMO_USER, Fault, Sandbox, SandboxConfig,
    };
    use std::sync::Arc;

    let sandbox = Sandbox::demo(SandboxConfig::default(), Arc::new(SystemClock));
    let handle = sandbox.bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(run(gapless(&data).arg("init")).0);
    // The built-in sandbox is this file; added under another name it is a provider of
    // its own, run from the copy in the providers directory.
    let copy = dir.path().join("sandbox_defined.toml");
    std::fs::write(
        &copy,
        std::fs::read_to_string(example("sandbox.toml"))
            .unwrap()
            .replace("name = \"sandbox\"", "name = \"sandbox_defined\""),
    )
    .unwrap();
    let (ok, _, err) = run(gapless(&data).args(["provider", "add"]).arg(&copy));
    assert!(ok, "{err}");
    std::fs::write(
        data.join("gapless.toml"),
        format!(
            "[providers.sandbox_defined]\nbase_url = \"{}\"\nclient_id = \"{DEMO_CLIENT_ID}\"\nclient_secret_env = \"TEST_SANDBOX_SECRET\"\n",
            handle.base_url()
        ),
    )
    .unwrap();

    let mut add = gapless(&data);
    add.args([
        "identity",
        "add",
        "--provider",
        "sandbox_defined",
        "--label",
        "acme",
    ]);
    let (ok, out) = consent(add, DEMO_USER, DEMO_PASSWORD).await;
    assert!(ok, "{out}");
    assert!(out.contains("Ana Example"), "{out}");
    let start = (Utc::now() - Duration::days(3)).date_naive();
    let (ok, _, err) = run(gapless(&data).args([
        "pipeline",
        "add",
        "--name",
        "acme-daily",
        "--source",
        "acme",
        "--resource",
        DEMO_AD_ACCOUNT,
        "--start",
        &start.to_string(),
    ]));
    assert!(ok, "{err}");
    let (ok, out, err) = run(gapless(&data).args(["run", "--once"]));
    assert!(ok, "{err}");
    for d in 0..3 {
        let day = start + Duration::days(d);
        let truth = handle.sandbox().truth(DEMO_AD_ACCOUNT, day).len();
        assert!(
            out.contains(&format!("insights {day}: loaded {truth} rows")),
            "{day}: {out}"
        );
    }
    let (_, out, _) = run(gapless(&data).args(["gaps"]));
    assert!(out.contains("no gaps"), "{out}");

    // The app is revoked: the definition's rule names the cause.
    handle
        .sandbox()
        .apply_fault(Fault::RevokeApp {
            user: DEMO_USER.into(),
        })
        .unwrap();
    let (ok, out, err) = run(gapless(&data).args(["identity", "check", "acme", "--json"]));
    assert!(!ok);
    assert!(
        format!("{out}{err}").contains("reauth_required/revoked"),
        "{out}{err}"
    );
    let (ok, _, err) = run(gapless(&data).args(["provider", "remove", "sandbox_defined"]));
    assert!(!ok);
    assert!(err.contains("used by identities acme"), "{err}");

    // A definition in use is updated in place when what the pipelines read stays the same…
    let text = std::fs::read_to_string(&copy).unwrap();
    let newer = dir.path().join("newer.toml");
    std::fs::write(
        &newer,
        text.replace("settle_windows = 2", "settle_windows = 3"),
    )
    .unwrap();
    let (ok, out, err) = run(gapless(&data).args(["provider", "update"]).arg(&newer));
    assert!(ok, "{err}");
    assert!(out.contains("provider sandbox_defined updated"), "{out}");
    let (_, out, _) = run(gapless(&data).args(["provider", "show", "sandbox_defined"]));
    assert!(out.contains("settle 3 window(s)"), "{out}");
    // …and refused, naming the pipeline, when a stream it reads would change its fields.
    std::fs::write(
        &newer,
        text.replace("{ name = \"clicks\", type = \"integer\" },\n", ""),
    )
    .unwrap();
    let (ok, _, err) = run(gapless(&data).args(["provider", "update"]).arg(&newer));
    assert!(!ok);
    assert!(
        err.contains("pipeline acme-daily reads stream insights") && err.contains("not updated"),
        "{err}"
    );
    std::fs::write(
        &newer,
        text.replace("name = \"insights\"", "name = \"daily\""),
    )
    .unwrap();
    let (ok, _, err) = run(gapless(&data).args(["provider", "update"]).arg(&newer));
    assert!(!ok);
    assert!(err.contains("does not have"), "{err}");
    // An update is not an add.
    let other = dir.path().join("other.toml");
    std::fs::write(
        &other,
        text.replace("name = \"sandbox_defined\"", "name = \"elsewhere\""),
    )
    .unwrap();
    let (ok, _, err) = run(gapless(&data).args(["provider", "update"]).arg(&other));
    assert!(!ok);
    assert!(err.contains("gapless provider add"), "{err}");
}

#[test]
fn the_built_in_providers_are_listed_shown_and_replaceable_by_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, out, err) = run(gapless(&data).args(["provider", "list"]));
    assert!(ok, "{err}");
    for name in [
        "amazon_ads",
        "amazon_sp",
        "facebook_pages",
        "google_ads",
        "linkedin_ads",
        "meta_ads",
        "shopify",
        "tiktok_ads",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} listed: {out}"));
        assert!(line.contains("built in"), "{line}");
    }
    let (ok, out, err) = run(gapless(&data).args(["provider", "show", "google_ads"]));
    assert!(ok, "{err}");
    assert!(
        out.contains("built in") && out.contains("docs/providers/google_ads.md"),
        "{out}"
    );
    assert!(
        out.contains("setting login_customer_id") && out.contains("optional"),
        "{out}"
    );
    assert!(out.contains("stream campaign_daily"), "{out}");
    let (ok, pages, err) = run(gapless(&data).args(["provider", "show", "facebook_pages"]));
    assert!(ok, "{err}");
    assert!(
        pages.contains("setting metrics")
            && pages.contains("default \"page_post_engagements,page_views_total\""),
        "{pages}"
    );
    assert!(
        out.contains("lifetimes") && out.contains("access 1h"),
        "{out}"
    );

    // A file of the same name replaces the built-in definition, and removing it brings the
    // built-in one back.
    let file = dir.path().join("meta_ads.toml");
    let text = gapless_providers::declarative::builtin::text("meta_ads").unwrap();
    std::fs::write(
        &file,
        text.replace(
            "display_name = \"Meta Ads\"",
            "display_name = \"Meta Ads (ours)\"",
        ),
    )
    .unwrap();
    let (ok, out, err) = run(gapless(&data).args(["provider", "add"]).arg(&file));
    assert!(ok, "{err}");
    assert!(out.contains("replaces the built-in definition"), "{out}");
    let (_, out, _) = run(gapless(&data).args(["provider", "show", "meta_ads"]));
    assert!(
        out.contains("Meta Ads (ours)") && out.contains("defined in"),
        "{out}"
    );
    let (_, out, _) = run(gapless(&data).args(["provider", "list"]));
    assert!(out.contains("replaces the built-in one"), "{out}");
    let (ok, out, err) = run(gapless(&data).args(["provider", "remove", "meta_ads"]));
    assert!(ok, "{err}");
    assert!(
        out.contains("built-in definition of meta_ads is used again"),
        "{out}"
    );
    let (_, out, _) = run(gapless(&data).args(["provider", "show", "meta_ads"]));
    assert!(out.starts_with("Meta Ads (meta_ads)"), "{out}");
}

/// One built-in definition configured twice: `amazon_ads` in North America and, under
/// another name, in Europe. Each consent goes to its region's Login with Amazon; a
/// region the definition lacks is a start-up error naming those it has.
#[test]
fn a_definition_runs_under_another_name_in_another_region() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(run(gapless(&data).arg("init")).0);
    let (ok, out, err) = run(gapless(&data).args(["provider", "show", "amazon_ads"]));
    assert!(ok, "{err}");
    assert!(
        out.contains("region eu") && out.contains("region fe"),
        "{out}"
    );
    let config = |region: &str| {
        std::fs::write(
            data.join("gapless.toml"),
            format!(
                "[providers.amazon_ads]\nclient_id = \"amzn1.application-oa2-client.x\"\nclient_secret = \"s\"\n\n\
                 [providers.amazon_ads_eu]\ndefinition = \"amazon_ads\"\nregion = \"{region}\"\n\
                 client_id = \"amzn1.application-oa2-client.x\"\nclient_secret = \"s\"\n"
            ),
        )
        .unwrap();
    };
    config("eu");
    let consent_url = |provider: &str| {
        let (ok, out, err) = run(gapless(&data).args([
            "identity",
            "add",
            "--provider",
            provider,
            "--label",
            "x",
            "--timeout",
            "1",
        ]));
        assert!(!ok, "no one consented: {out}");
        out.lines()
            .find(|l| l.trim_start().starts_with("http"))
            .unwrap_or_else(|| panic!("{out}{err}"))
            .trim()
            .to_string()
    };
    assert!(
        consent_url("amazon_ads").starts_with("https://www.amazon.com/ap/oa?"),
        "North America"
    );
    let eu = consent_url("amazon_ads_eu");
    assert!(
        eu.starts_with("https://eu.account.amazon.com/ap/oa?"),
        "{eu}"
    );
    assert!(
        eu.contains("client_id=amzn1.application-oa2-client.x"),
        "{eu}"
    );
    config("mars");
    let (ok, _, err) = run(gapless(&data).args(["identity", "list"]));
    assert!(!ok);
    assert!(
        err.contains("[providers.amazon_ads_eu]")
            && err.contains("amazon_ads_eu has no region \"mars\" (it has: na, eu, fe)"),
        "{err}"
    );
}
