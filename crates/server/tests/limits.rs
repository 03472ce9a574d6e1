//! `gapless serve` stays reachable under slow and many clients: a deadline for a request's
//! headers, a bound on open connections, and a per-address budget on the public routes.

#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use gapless_demo::demo::DemoWorld;
use gapless_server::{AppState, Limits};
use tokio::io::AsyncReadExt;

async fn server(limits: Limits) -> (tempfile::TempDir, DemoWorld, String) {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = DemoWorld::start(&dir.path().join("state"), None)
        .await
        .unwrap();
    let engine = Arc::new(w.new_engine().await.unwrap());
    let state = AppState::new(engine, [9; 32]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(gapless_server::serve_within(
        listener,
        state,
        limits,
        std::future::pending(),
    ));
    (dir, w, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_a_flood_of_connections_does_not_lock_out_healthz() {
    let limits = Limits {
        max_connections: 8,
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (_dir, _w, base) = server(limits).await;
    let address = base.trim_start_matches("http://").to_string();
    // Fifty clients connect and never send a header (or send half of one).
    let mut silent = Vec::new();
    for i in 0..50 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        if i % 2 == 0 {
            tokio::io::AsyncWriteExt::write_all(
                &mut stream,
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
            )
            .await
            .unwrap();
        }
        silent.push(stream);
    }
    // Each of them is closed by the server: past the header deadline, or at once when over
    // the connection limit.
    for (i, stream) in silent.iter_mut().enumerate() {
        let mut buf = [0_u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "slow client {i} was never cut off");
    }
    // Meanwhile and after, a well-behaved client is served.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let answer = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_routes_have_a_budget_per_client_address() {
    let limits = Limits {
        public_burst: 10,
        public_per_minute: 10,
        ..Limits::default()
    };
    let (_dir, _w, base) = server(limits).await;
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..15 {
        let answer = http
            .get(format!("{base}/reauth/not-a-token"))
            .send()
            .await
            .unwrap();
        statuses.push((
            answer.status().as_u16(),
            answer.headers().get("retry-after").cloned(),
        ));
    }
    assert!(
        statuses[..10].iter().all(|(s, _)| *s != 429),
        "{statuses:?}"
    );
    let (last, retry_after) = statuses.last().unwrap();
    assert_eq!(*last, 429, "{statuses:?}");
    assert!(retry_after.is_some(), "429 says when to come back");
    // The operators' routes and health checks are not part of that budget.
    let answer = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
}
