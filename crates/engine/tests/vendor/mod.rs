//! What the tests of built-in connectors share: an emulator served on loopback, an engine
//! on a virtual clock with one connector, a consent followed to its callback, the mails.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use axum::{Router, http::header};
use gapless_core::{
    Clock, IdentityId, Pipeline, PipelineId, PipelineState, VirtualClock, WindowSize,
};
use gapless_engine::{Engine, EngineConfig, PendingAuthorization};
use gapless_providers::{
    ProviderSettings,
    declarative::{builtin, check::check, connector::DeclarativeSource},
};
use gapless_store::{Store, StoreLocation};
use gapless_vault::{ClientSecret, Keyring, Vault};

/// Serve `app` on a loopback port: its base URL.
pub async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// The bearer token of a request, if it carries one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// A consent page's answer: back to `redirect_uri` with `params` added to its query.
pub fn redirect_back(redirect_uri: &str, params: &[(&str, &str)]) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut to = url::Url::parse(redirect_uri).unwrap();
    to.query_pairs_mut().extend_pairs(params);
    axum::response::Redirect::to(to.as_str()).into_response()
}

/// An RFC 6749 §5.2 error answer of a token endpoint, as the emulated vendors send them.
pub fn token_error(
    status: axum::http::StatusCode,
    error: &str,
    description: impl AsRef<str>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        status,
        axum::Json(serde_json::json!({"error": error, "error_description": description.as_ref()})),
    )
        .into_response()
}

/// The built-in definition `name` with `replacements` made in its text (the vendor's
/// hosts for the emulators'), run with the OAuth client `client` and `settings`.
pub fn built_in(
    name: &str,
    replacements: &[(&str, &str)],
    client: (&str, &str),
    settings: &[(&str, &str)],
) -> DeclarativeSource {
    let mut text = builtin::text(name).unwrap().to_string();
    for (from, to) in replacements {
        text = text.replace(from, to);
    }
    let definition = check(&text).unwrap_or_else(|p| panic!("{p:#?}"));
    DeclarativeSource::new(
        definition,
        ProviderSettings {
            base_url: String::new(),
            client_id: client.0.into(),
            client_secret: ClientSecret::new(client.1.into()),
            timeouts: Default::default(),
            settings: gapless_providers::SettingValues::new(
                settings
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        },
    )
    .unwrap()
}

/// An engine with its state in SQLite in `dir`, on `clock`, running `source`; mails go
/// to the file outbox in `dir`.
pub async fn engine(
    dir: &std::path::Path,
    clock: &VirtualClock,
    source: Arc<DeclarativeSource>,
) -> Engine {
    let key_file = dir.join("master.key");
    gapless_vault::create_key_file(&key_file).unwrap();
    let store = Store::open(&StoreLocation::Sqlite {
        data_dir: dir.to_path_buf(),
    })
    .await
    .unwrap();
    let mut engine = Engine::new(
        store,
        Vault::new(Keyring::load(None, &key_file).unwrap()),
        Arc::new(clock.clone()) as Arc<dyn Clock>,
        EngineConfig::new(dir.to_path_buf()),
    )
    .unwrap();
    engine.add_source(source);
    engine
}

/// The daily tick of day `d` (1 = the day starting at `start`): an hour after the day
/// closed, in virtual time.
pub async fn daily_tick(
    engine: &Engine,
    clock: &VirtualClock,
    start: chrono::DateTime<chrono::Utc>,
    d: i64,
) -> Result<gapless_engine::EventLog, gapless_engine::EngineError> {
    clock.set(start + chrono::Duration::days(d) + chrono::Duration::hours(1));
    engine.tick().await
}

/// The person consents at the vendor: the callback the browser would be sent to.
pub async fn consent(engine: &Engine, provider: &str) -> (PendingAuthorization, url::Url) {
    follow(engine.begin_authorization(provider).unwrap()).await
}

/// The person follows `pending` to the vendor's consent page and consents: the callback
/// the browser would be sent to.
pub async fn follow(pending: PendingAuthorization) -> (PendingAuthorization, url::Url) {
    let answer = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(&pending.url)
        .send()
        .await
        .unwrap();
    let to = answer.headers()[header::LOCATION].to_str().unwrap();
    (pending, url::Url::parse(to).unwrap())
}

/// The mails sent so far, oldest first: subject and text.
pub fn mails(engine: &Engine) -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir(engine.outbox_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).unwrap();
            let parsed = mail_parser::MessageParser::default().parse(&bytes).unwrap();
            (
                parsed.subject().unwrap_or_default().to_string(),
                parsed.body_text(0).unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A daily pipeline (UTC) of `streams` of `resource` through `identity` from `start` into
/// the SQLite warehouse, re-reading `settle` trailing days; stored.
pub async fn daily_pipeline(
    engine: &Engine,
    identity: IdentityId,
    (resource, streams): (&str, &[&str]),
    settle: u32,
    start: chrono::DateTime<chrono::Utc>,
) -> Pipeline {
    let pipeline = Pipeline {
        id: PipelineId::new(),
        name: format!("{resource}-{}-daily", streams.join("-")),
        source_identity: identity,
        source_resource: resource.into(),
        streams: streams.iter().map(|s| s.to_string()).collect(),
        destination_kind: "sqlite".into(),
        destination_target: "warehouse.sqlite".into(),
        destination_identity: None,
        window: WindowSize::DAY,
        settle_windows: settle,
        schedule: None,
        time_zone: gapless_core::Tz::UTC,
        start,
        state: PipelineState::Active,
    };
    engine
        .store()
        .insert_pipeline(&pipeline, engine.clock().now())
        .await
        .unwrap();
    pipeline
}

/// Every day of `days` (1 = the pipeline's start) of `stream` is loaded, and its rows,
/// ordered by their second column, are `truth` of that day.
pub async fn assert_days_equal_truth(
    (engine, source): (&Engine, &DeclarativeSource),
    pipeline: &Pipeline,
    stream: &str,
    days: std::ops::RangeInclusive<i64>,
    truth: impl Fn(chrono::NaiveDate) -> Vec<gapless_core::Row>,
) {
    use gapless_providers::SourceConnector as _;
    let ledger = engine.store().ledger(pipeline.id).await.unwrap();
    let destination = engine.destination_for(pipeline).await.unwrap().unwrap();
    let schema = source.descriptor().stream(stream).unwrap().schema.clone();
    for d in days {
        let start = pipeline.start + chrono::Duration::days(d - 1);
        let window = gapless_core::Window::new(start, start + chrono::Duration::days(1));
        let entry = ledger
            .iter()
            .find(|e| e.window == window && e.stream == stream)
            .unwrap_or_else(|| panic!("day {d} is not in the ledger"));
        assert!(
            matches!(entry.state, gapless_core::WindowState::Loaded { .. }),
            "day {d}: {:?}",
            entry.state
        );
        let mut stored = destination
            .read_window(pipeline.id, &schema, window)
            .await
            .unwrap();
        stored.sort_by_key(|r| format!("{:?}", r.get(1)));
        assert_eq!(stored, truth(start.date_naive()), "day {d}");
    }
}

/// A new identity `label` of `provider`, its consent followed; `owner` is told about it.
pub async fn connect(
    engine: &Engine,
    provider: &str,
    label: &str,
    owner: &str,
) -> gapless_core::Identity {
    let (pending, callback) = consent(engine, provider).await;
    let (identity, _) = engine
        .connect_identity(
            &pending,
            &callback,
            label,
            vec![owner.into()],
            &engine.caller(),
        )
        .await
        .unwrap();
    identity
}
