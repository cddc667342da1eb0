//! TLS to PostgreSQL: `DATABASE_URL` with libpq's `sslmode` (FrostGuard's managed-database compose file uses
//! `sslmode=require`) and `sslrootcert`, against a PostgreSQL the test starts with `ssl=on`, a certificate
//! for `localhost` signed by a CA the test generates, and plain-text TCP clients rejected — so a delivery row
//! that gets written was written over TLS.

use crate::{accepted, config, data, failed, job, load, sent, PHONE};
use frostguard_tests::{
    assert_delivery, generate_ca, insert_sms_delivery, json, plugin_lib, FakeHttp, Postgres,
    Schema, TempDir, SMS_PLUGIN,
};
use plugin_api::harness::Harness;
use plugin_api::loader::LoadStage;

/// Runs one tracked job with `DATABASE_URL` = `url`; `Ok` if it was sent and recorded, else the failure.
fn send_with(pg: &Postgres, url: &str) -> Result<(), String> {
    let telnyx = FakeHttp::scripted(vec![], accepted("msg-tls")).unwrap();
    let mut c = config(&telnyx, Some(pg), &[]);
    c.insert("DATABASE_URL", url);
    let h = load(c);
    let delivery = insert_sms_delivery(pg, PHONE);
    let run = h.run(job(data(Some(&delivery)), 0));
    if run.outcome == sent("msg-tls") {
        assert_delivery(
            pg,
            &delivery,
            json!({"status": "sent", "external_id": "msg-tls"}),
        );
        return Ok(());
    }
    let (message, unrecoverable) = failed(&run);
    assert!(!unrecoverable, "a database problem is retryable: {message}");
    assert!(
        telnyx.requests().is_empty(),
        "nothing is sent without the duplicate check"
    );
    assert_delivery(pg, &delivery, json!({"status": "pending"}));
    Err(message.to_owned())
}

#[test]
fn every_sslmode_against_a_tls_only_postgres() {
    let pg = Postgres::start_with(Schema::Migrated, true).unwrap();
    let ca = pg.ca_cert().unwrap().display().to_string();
    let other_dir = TempDir::new("other-ca").unwrap();
    let other_ca = generate_ca(other_dir.path(), "other", "someone else's CA").unwrap();
    let other_ca = other_ca.cert.display().to_string();
    let port = pg.port();
    let url =
        |host: &str, query: &str| format!("postgres://postgres@{host}:{port}/frostguard?{query}");

    // Encrypted, certificate not checked (libpq's meaning of require and prefer).
    assert_eq!(send_with(&pg, &url("127.0.0.1", "sslmode=require")), Ok(()));
    assert_eq!(send_with(&pg, &url("127.0.0.1", "sslmode=prefer")), Ok(()));
    // The chain is checked; the name is not (verify-ca), and require with a root certificate acts as verify-ca.
    assert_eq!(
        send_with(
            &pg,
            &url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"))
        ),
        Ok(())
    );
    assert_eq!(
        send_with(
            &pg,
            &url("127.0.0.1", &format!("sslmode=require&sslrootcert={ca}"))
        ),
        Ok(())
    );
    // verify-full: the certificate must name the host of the URL.
    assert_eq!(
        send_with(
            &pg,
            &url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={ca}")
            )
        ),
        Ok(())
    );

    let refused = [
        // Not the CA that signed the server's certificate.
        url(
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={other_ca}"),
        ),
        url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={other_ca}"),
        ),
        // The certificate is for localhost, not for 127.0.0.1.
        url(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        // Without TLS the server refuses us.
        url("127.0.0.1", "sslmode=disable"),
    ];
    for u in refused {
        let message = send_with(&pg, &u).expect_err(&u);
        assert!(
            message.starts_with("delivery tracking database unavailable"),
            "{u}: {message}"
        );
    }
}

#[test]
fn a_missing_root_certificate_or_an_unknown_sslmode_stops_the_plugin_at_start() {
    let telnyx = FakeHttp::scripted(vec![], accepted("never")).unwrap();
    for (url, reason) in [
        ("postgres://postgres@127.0.0.1:1/frostguard?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem", "/nonexistent/ca.pem"),
        ("postgres://postgres@127.0.0.1:1/frostguard?sslmode=allow", "sslmode=\"allow\""),
    ] {
        let mut c = config(&telnyx, None, &[]);
        c.insert("DATABASE_URL", url);
        let err = match Harness::load(&plugin_lib(SMS_PLUGIN), c) {
            Ok(_) => panic!("{url} must not start"),
            Err(e) => e,
        };
        assert_eq!(err.stage, LoadStage::Init);
        assert!(err.reason.contains(reason), "{url}: {}", err.reason);
    }
}
