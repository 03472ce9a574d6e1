//! A gapless server over a demo world: the sandbox, the engine in virtual time, and the
//! HTTP server on a free port, with a client that does not follow redirects.

#![allow(dead_code)]

use std::sync::Arc;

use chrono::Duration;
use gapless_core::{IdentityId, NotificationKind};
use gapless_demo::demo::DemoWorld;
use gapless_engine::Engine;
use gapless_providers::{ProviderSettings, http::HttpTimeouts, sandbox::SandboxSource};
use gapless_sandbox::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_USER, Fault};
use gapless_server::AppState;
use gapless_vault::{ApiKey, ClientSecret, Credential};
use reqwest::{StatusCode, header};

pub struct Harness {
    _dir: tempfile::TempDir,
    pub w: DemoWorld,
    pub engine: Arc<Engine>,
    pub base: String,
    pub http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Harness {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let (w, _) = DemoWorld::start(&state_dir, None).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let public = base.clone();
        let mut engine = w
            .new_engine_with(move |c| c.public_url = public)
            .await
            .unwrap();
        let settings = || ProviderSettings {
            base_url: w.sandbox.base_url(),
            client_id: DEMO_CLIENT_ID.into(),
            client_secret: ClientSecret::new(DEMO_CLIENT_SECRET.into()),
            timeouts: HttpTimeouts::default(),
            settings: Default::default(),
        };
        engine.add_source(Arc::new(SandboxSource::with_api_key(settings()).unwrap()));
        engine.add_source(Arc::new(
            SandboxSource::with_client_credentials(settings()).unwrap(),
        ));
        let engine = Arc::new(engine);
        let state = AppState::new(engine.clone(), [7; 32]);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(gapless_server::serve(listener, state, async {
            let _ = stopped.await;
        }));
        Self {
            _dir: dir,
            w,
            engine,
            base,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            _stop: stop,
        }
    }

    /// The daily run of `day` through the server's engine.
    pub async fn daily_run(&self, day: u32) {
        self.w
            .clock
            .set(self.w.day(day) + Duration::days(1) + Duration::hours(1));
        self.engine.tick().await.unwrap();
    }

    /// Day 1 runs; the app is revoked on day 2 and stays revoked for `days` daily runs.
    pub async fn revoke_for_days(&self, days: u32) {
        self.daily_run(1).await;
        self.w.clock.set(self.w.day(2) + Duration::hours(12));
        self.w
            .sandbox
            .sandbox()
            .apply_fault(Fault::RevokeApp {
                user: DEMO_USER.into(),
            })
            .unwrap();
        for day in 2..=days + 1 {
            self.daily_run(day).await;
        }
    }

    /// The reauthorize links of every Authorization Failure message (bodies opened as the
    /// channel that delivers them opens them).
    pub async fn links_in_failure_messages(&self) -> Vec<String> {
        self.engine
            .store()
            .notifications(false)
            .await
            .unwrap()
            .iter()
            .filter(|m| m.kind == NotificationKind::AuthorizationFailure)
            .map(|m| self.engine.open_message(m).unwrap().body_text)
            .filter_map(|body| {
                body.split_whitespace()
                    .find(|w| w.contains("/reauth/"))
                    .map(str::to_string)
            })
            .collect()
    }

    /// The reauthorize link of the Authorization Failure message in the outbox.
    pub async fn link_from_failure_message(&self) -> String {
        let messages = self.engine.store().notifications(false).await.unwrap();
        let sealed = messages
            .iter()
            .find(|n| n.kind == NotificationKind::AuthorizationFailure)
            .expect("an Authorization Failure message");
        // Sealed at rest; opened as the channel that delivers it opens it.
        let message = self.engine.open_message(sealed).unwrap();
        let prefix = format!("{}/reauth/", self.base);
        let start = message.body_text.find(&prefix).expect("a reauthorize link");
        message.body_text[start..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }

    pub async fn generation_of(&self, id: IdentityId) -> i64 {
        self.engine.store().sealed_credential(id).await.unwrap().1
    }

    pub async fn credential_generation(&self) -> i64 {
        self.generation_of(self.w.identity.id).await
    }

    /// A reauthorize link for `identity`, minted by the operator.
    pub async fn link_for(&self, identity: IdentityId) -> String {
        self.engine
            .mint_reauth_link(identity, None, &self.engine.caller())
            .await
            .unwrap()
            .url
    }

    pub async fn connect_key_identity(&self, label: &str, key: &str) -> IdentityId {
        self.engine
            .connect_identity_with_secret(
                (gapless_providers::sandbox::KEY_NAME, &Default::default()),
                label,
                vec![DEMO_USER.into()],
                Credential::ApiKey {
                    key: ApiKey::new(key.into()),
                },
                &self.engine.caller(),
            )
            .await
            .unwrap()
            .id
    }

    pub async fn get(&self, url: &str, cookie: Option<&str>) -> (StatusCode, String) {
        let mut request = self.http.get(url);
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        let response = request.send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    }

    pub async fn post_form(
        &self,
        url: &str,
        fields: &[(&str, &str)],
        cookie: Option<&str>,
    ) -> (StatusCode, String, header::HeaderMap) {
        let mut request = self.http.post(url).form(fields);
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        let response = request.send().await.unwrap();
        let headers = response.headers().clone();
        (response.status(), response.text().await.unwrap(), headers)
    }

    /// Press "Reauthorize" on the link's page: the provider's consent URL and the flow
    /// cookie the browser would keep.
    pub async fn start_consent(&self, link: &str, page: &str) -> (String, String) {
        let csrf = csrf_of(page);
        let (status, body, headers) = self
            .post_form(&format!("{link}/start"), &[("csrf", &csrf)], None)
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        let location = headers[header::LOCATION].to_str().unwrap().to_string();
        let cookie = headers[header::SET_COOKIE].to_str().unwrap();
        let pair = cookie.split(';').next().unwrap().to_string();
        (location, pair)
    }
}

impl Harness {
    /// Follow a redirect to a progress page and wait until the back-fill is done; the
    /// final page.
    pub async fn progress(&self, headers: &header::HeaderMap) -> String {
        let location = headers[header::LOCATION].to_str().unwrap();
        assert!(location.starts_with("/reauth/progress/"), "{location}");
        let url = format!("{}{location}", self.base);
        for _ in 0..200 {
            let (status, body) = self.get(&url, None).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            if !body.contains(r#"id="backfill-state">in progress"#) {
                return body;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the back-fill did not finish");
    }

    /// GET with a cookie, returning the headers too.
    pub async fn get_with_headers(
        &self,
        url: &str,
        cookie: &str,
    ) -> (StatusCode, String, header::HeaderMap) {
        let response = self
            .http
            .get(url)
            .header(header::COOKIE, cookie)
            .send()
            .await
            .unwrap();
        let headers = response.headers().clone();
        (response.status(), response.text().await.unwrap(), headers)
    }
}

/// The CSRF token of the first form on a page.
pub fn csrf_of(page: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let start = page.find(marker).expect("a CSRF field") + marker.len();
    page[start..].split('"').next().unwrap().to_string()
}
