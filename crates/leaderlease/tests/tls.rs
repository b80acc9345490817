//! TLS to PostgreSQL, on a throwaway server of the test's own with `ssl = on` and certificates that
//! scripts/throwaway-pg.sh `--tls` makes with openssl: a CA, a second CA that signed nothing here, a server
//! certificate for DNS:localhost only, and a client certificate for `ll_cert_user` (admitted by
//! certificate only).

mod common;

use std::time::Duration;

use common::*;
use leaderlease::{Error, PgHub, PgSettings, PgSslMode, TlsSettings};
use sqlx::Row;

const TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the hub's connection uses TLS (`pg_stat_ssl` of its own backend).
async fn uses_tls(hub: &PgHub) -> bool {
    sqlx::query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(hub.pool())
        .await
        .unwrap()
        .get(0)
}

fn settings(pg: &ThrowawayPg, host: &str, tls: Option<TlsSettings>) -> PgSettings {
    PgSettings {
        host: Some(host.into()),
        port: Some(pg.port),
        username: Some("postgres".into()),
        database: Some("postgres".into()),
        tls,
        ..Default::default()
    }
}

fn with_ca(ca: String) -> Option<TlsSettings> {
    Some(TlsSettings {
        ca: Some(ca),
        ..Default::default()
    })
}

/// A DataSource's `ssl: { ca }` (verify-full against that CA) connects over TLS and leads; a client
/// certificate given as PEM text authenticates a user whom the server admits by certificate only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_with_a_ca_connect_over_tls_and_lead() {
    let pg = ThrowawayPg::start_tls();
    let ca = pg.tls_file("ca.pem");
    let mut s = settings(&pg, "localhost", with_ca(ca.clone()));
    s.application_name = Some("ll_tls_leader".into());
    let a = fast()
        .with_instance_id("a")
        .connect_settings(&s)
        .await
        .expect("verify-full with the server's CA connects");
    wait_until(Duration::from_secs(5), "a to lead over TLS", || {
        a.is_leader()
    })
    .await;
    let admin = admin_pool(&pg.url()).await;
    let (tls, all): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'll_tls_leader'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(all >= 1, "the elector's sessions are there");
    assert_eq!(tls, all, "every session of the elector uses TLS");
    a.shutdown().await.unwrap();

    // Client certificate authentication: ll_cert_user may log in only with a certificate of the CA.
    sqlx::raw_sql("CREATE ROLE ll_cert_user LOGIN SUPERUSER")
        .execute(&admin)
        .await
        .unwrap();
    let mut cert_user = settings(&pg, "localhost", None);
    cert_user.username = Some("ll_cert_user".into());
    cert_user.tls = Some(TlsSettings {
        ca: Some(ca.clone()),
        cert: Some(pg.tls_file("client.pem")),
        key: Some(pg.tls_file("client.key")),
        ..Default::default()
    });
    let b = fast()
        .with_instance_id("b")
        .with_schema("ll_cert")
        .connect_settings(&cert_user)
        .await
        .expect("a client certificate given as PEM text authenticates");
    wait_until(Duration::from_secs(5), "b to lead", || b.is_leader()).await;
    b.shutdown().await.unwrap();
    cert_user.tls.as_mut().unwrap().cert = None;
    cert_user.tls.as_mut().unwrap().key = None;
    let err = PgHub::connect_settings(&cert_user, TIMEOUT)
        .await
        .expect_err("without the client certificate the server refuses");
    assert!(
        err.to_string().contains("certificate"),
        "the refusal says why: {err}"
    );
    admin.close().await;
}

/// The wrong CA, or a certificate that does not name the host, is a clear error that names the host and
/// says what to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_host_name_is_a_clear_error() {
    let pg = ThrowawayPg::start_tls();
    let err = PgHub::connect_settings(
        &settings(&pg, "localhost", with_ca(pg.tls_file("other-ca.pem"))),
        TIMEOUT,
    )
    .await
    .expect_err("a certificate of another CA is refused");
    let text = err.to_string();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert_eq!(err.code(), "ERR_DATABASE_UNREACHABLE");
    for part in [
        &format!("localhost:{}", pg.port),
        "TLS",
        "not signed by a trusted CA",
        "ssl.ca",
    ] {
        assert!(text.contains(part), "{part:?} in: {text}");
    }

    // The certificate names DNS:localhost only: verify-full to 127.0.0.1 fails on the name.
    let err = PgHub::connect_settings(
        &settings(&pg, "127.0.0.1", with_ca(pg.tls_file("ca.pem"))),
        TIMEOUT,
    )
    .await
    .expect_err("verify-full checks the host name");
    let text = err.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{}", pg.port))
            && text.contains("does not name this host"),
        "{text}"
    );
}

/// `sslmode` in a connection string means what libpq documents: `require` encrypts without checking
/// the certificate, unless a root certificate is given (then as `verify-ca`); `verify-ca` checks the CA
/// only; `verify-full` the CA and the host name; `disable` no TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_in_a_url_behaves_as_libpq_documents() {
    let pg = ThrowawayPg::start_tls();
    let url = |host: &str, query: &str| {
        format!("postgres://postgres@{host}:{}/postgres?{query}", pg.port)
    };
    let ca = pg.tls_path("ca.pem");
    let other = pg.tls_path("other-ca.pem");
    // (url, connects, over TLS)
    let cases = [
        (url("127.0.0.1", "sslmode=require"), true),
        (
            url("127.0.0.1", &format!("sslmode=require&sslrootcert={ca}")),
            true,
        ),
        (
            url("127.0.0.1", &format!("sslmode=require&sslrootcert={other}")),
            false,
        ),
        (
            url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")),
            true,
        ),
        (
            url(
                "127.0.0.1",
                &format!("sslmode=verify-ca&sslrootcert={other}"),
            ),
            false,
        ),
        (
            url(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            false,
        ),
        (
            url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            true,
        ),
        (url("localhost", "sslmode=verify-full"), false),
    ];
    let mut wrong = Vec::new();
    for (u, connects) in &cases {
        match PgHub::connect(u, TIMEOUT).await {
            Ok(hub) => {
                let tls = uses_tls(&hub).await;
                hub.close().await;
                if !connects || !tls {
                    wrong.push(format!("{u}: connected (TLS {tls})"));
                }
            }
            Err(e) => {
                if *connects {
                    wrong.push(format!("{u}: {e}"));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "not as libpq documents:\n{}",
        wrong.join("\n")
    );

    // disable: no TLS at all. A URL's sslmode wins over the ssl settings' mode.
    let mut s = PgSettings::from_url(url("127.0.0.1", "sslmode=disable"));
    s.tls = Some(TlsSettings {
        mode: Some(PgSslMode::VerifyFull),
        ..Default::default()
    });
    let hub = PgHub::connect_settings(&s, TIMEOUT).await.unwrap();
    assert!(!uses_tls(&hub).await, "sslmode=disable uses no TLS");
    hub.close().await;
}
