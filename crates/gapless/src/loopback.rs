//! The CLI's side of an OAuth consent: a one-shot listener on the loopback interface that
//! receives the provider's redirect (like `gcloud auth login`).

use std::{future::IntoFuture, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use axum::{Router, extract::State, http::Uri, response::Html, routing::get};
use tokio::{
    net::TcpListener,
    sync::{Mutex, oneshot},
};

/// A bound listener waiting for one redirect.
#[derive(Debug)]
pub struct Loopback {
    listener: TcpListener,
    pub redirect_uri: String,
}

impl Loopback {
    /// Listen on 127.0.0.1:`port` (0 for any free port).
    pub async fn bind(port: u16) -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("listening on 127.0.0.1:{port} for the OAuth redirect"))?;
        let addr = listener.local_addr()?;
        Ok(Self {
            listener,
            redirect_uri: format!("http://{addr}/callback"),
        })
    }

    /// Wait for the redirect and return its full URL.
    pub async fn receive(self, timeout: Duration) -> Result<url::Url> {
        type Slot = Arc<Mutex<Option<oneshot::Sender<String>>>>;
        async fn callback(State(slot): State<Slot>, uri: Uri) -> Html<&'static str> {
            if let Some(tx) = slot.lock().await.take() {
                let _ = tx.send(uri.to_string());
            }
            Html(
                "<!doctype html><title>gapless</title><p>Authorization received. You can close this window and return to the terminal.</p>",
            )
        }
        let (tx, rx) = oneshot::channel();
        let slot: Slot = Arc::new(Mutex::new(Some(tx)));
        let app = Router::new()
            .route("/callback", get(callback))
            .with_state(slot);
        let base = self.redirect_uri.trim_end_matches("/callback").to_string();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(
            axum::serve(self.listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .into_future(),
        );
        let received = tokio::time::timeout(timeout, rx).await;
        let _ = stop_tx.send(());
        let _ = server.await;
        let path = received
            .context("no redirect arrived before the timeout")?
            .context("the listener stopped")?;
        url::Url::parse(&format!("{base}{path}")).context("the redirect URL is not valid")
    }
}
