//! Key rotation: what each version seals, re-sealed online with the newest key — API keys,
//! passwords and OAuth credentials alike, and the messages not delivered yet.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use gapless_demo::demo::DemoWorld;
use gapless_engine::EngineConfig;
use gapless_sandbox::{DEMO_USER, Fault, SandboxConfig};
use gapless_vault::{KeyVersion, Keyring, Vault};

#[tokio::test]
async fn a_new_key_version_reseals_credentials_and_pending_messages_online() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let v1 = [1_u8; 32];
    let old = Vault::new(Keyring::single(KeyVersion(1), v1));
    let (w, _) = DemoWorld::start_configured(
        &state,
        Some(old),
        gapless_store::StoreLocation::Sqlite {
            data_dir: state.clone(),
        },
        SandboxConfig::default(),
        None,
    )
    .await
    .unwrap();
    // A pending message (delivery deferred: the failure is queued at this tick's end, and
    // we look before the next one delivers it).
    w.daily_run(1).await.unwrap();
    w.sandbox
        .sandbox()
        .apply_fault(Fault::RevokeApp {
            user: DEMO_USER.into(),
        })
        .unwrap();
    w.engine
        .run_pipeline(&w.pipeline, &mut Default::default())
        .await
        .unwrap();
    let usage = w.engine.key_usage().await.unwrap();
    assert_eq!(usage.current, 1);
    assert_eq!(usage.credentials.get(&1), Some(&1));
    assert!(
        usage.pending_messages.get(&1).is_some_and(|n| *n >= 1),
        "{usage:?}"
    );

    // The operator adds version 2; the engine with both keys re-seals.
    let both = Vault::new(
        Keyring::from_entries(vec![(KeyVersion(1), v1), (KeyVersion(2), [2_u8; 32])]).unwrap(),
    );
    let store = gapless_store::Store::open(&gapless_store::StoreLocation::Sqlite {
        data_dir: state.clone(),
    })
    .await
    .unwrap();
    let engine = gapless_engine::Engine::new(
        store,
        both,
        Arc::new(w.clock.clone()),
        EngineConfig::new(state.clone()),
    )
    .unwrap();
    let done = engine.reseal(10, |_| {}).await.unwrap();
    assert_eq!(done.credentials, 1);
    assert!(done.messages >= 1);
    let usage = engine.key_usage().await.unwrap();
    assert_eq!(usage.current, 2);
    assert!(!usage.in_use(1), "{usage:?}");
    // Version 2 alone opens everything now.
    let only_new = Vault::new(Keyring::single(KeyVersion(2), [2_u8; 32]));
    let store = gapless_store::Store::open(&gapless_store::StoreLocation::Sqlite {
        data_dir: state.clone(),
    })
    .await
    .unwrap();
    let engine = gapless_engine::Engine::new(
        store,
        only_new,
        Arc::new(w.clock.clone()),
        EngineConfig::new(state.clone()),
    )
    .unwrap();
    for n in engine.store().notifications(false).await.unwrap() {
        if n.delivery.state == gapless_core::DeliveryState::Pending {
            assert!(engine.open_message(&n).is_ok());
        }
    }
}
