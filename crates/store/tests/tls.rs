//! The state store on a PostgreSQL server whose certificate a private CA signed: trusted
//! when the URL names that CA the PostgreSQL way (`sslrootcert`), refused when it does not
//! (the public web roots do not know it) — the certificate policy README.md states.

#![allow(clippy::unwrap_used)]

use gapless_store::{Store, StoreLocation, testing::PrivatePostgres};
use sqlx::{Connection, PgConnection, Row};

#[tokio::test]
async fn a_private_ca_named_in_the_url_is_trusted_and_without_it_the_server_is_refused() {
    let cluster = PrivatePostgres::start_tls().await.unwrap();
    let ca = cluster.ca_certificate.clone().unwrap();
    let (user, password) = cluster.admin.clone();
    let base = cluster.url(&user, Some(&password), "postgres");
    let verified = format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display());

    // The state store opens (and migrates) over a verified TLS connection.
    let store = Store::open(&StoreLocation::Postgres {
        url: verified.clone(),
    })
    .await
    .unwrap();
    assert!(store.incidents(None).await.unwrap().is_empty());
    let mut connection = PgConnection::connect(&verified).await.unwrap();
    let ssl: bool = sqlx::query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut connection)
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the connection is encrypted");
    let _ = connection.close().await;

    // Without the CA, verification fails: the server's certificate has an unknown issuer.
    let refused = Store::open(&StoreLocation::Postgres {
        url: format!("{base}?sslmode=verify-full"),
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains("invalid peer certificate: UnknownIssuer"),
        "{refused}"
    );
    assert!(
        !refused.contains(&password),
        "the password never shows: {refused}"
    );
}
