//! What the host relies on: the plugin's description, refusing to start without what it needs, dry-run
//! mode, and invalid jobs.

use super::seed::*;
use super::*;
use frostguard_tests::TempDir;
use plugin_api::loader::LoadStage;

/// A database URL nothing listens on: init only probes it (and warns).
const NO_DATABASE: &str = "postgres://postgres@127.0.0.1:9/frostguard";

#[test]
fn describes_its_queue_limits_and_configuration() {
    let resend = FakeHttp::scripted(vec![], accepted("never")).unwrap();
    let h = load(PluginConfig::from_pairs([
        ("RESEND_API_KEY", KEY.to_owned()),
        ("JWT_SECRET", SECRET.to_owned()),
        ("DATABASE_URL", NO_DATABASE.to_owned()),
        ("RESEND_API_BASE_URL", resend.url()),
    ]));
    let info = h.info();
    assert_eq!(info.name, "email-digests");
    let p = &info.queues[0];
    assert_eq!(p.queue, QUEUE);
    assert_eq!(p.job_names, ["email:digest"]);
    assert_eq!(p.default_concurrency, 2);
    let limit = p.rate_limit.expect("a rate-limit hint");
    assert_eq!((limit.max, limit.duration_ms), (2, 1000));
    for key in [
        "RESEND_API_KEY",
        "EMAIL_FROM_ADDRESS",
        "APP_URL",
        "UNSUBSCRIBE_SECRET",
        "JWT_SECRET",
        "DATABASE_URL",
        "RESEND_API_BASE_URL",
        "EMAIL_DRY_RUN",
    ] {
        assert!(info.config_keys.iter().any(|k| k == key), "{key}");
    }
    let logs = h.take_logs();
    assert!(
        logs.iter()
            .any(|l| l.message.contains("digest database not reachable at start")),
        "{logs:?}"
    );
    assert!(resend.requests().is_empty());
}

#[test]
fn refuses_to_start_without_key_secret_or_database() {
    let full = [
        ("RESEND_API_KEY", KEY),
        ("UNSUBSCRIBE_SECRET", SECRET),
        ("DATABASE_URL", NO_DATABASE),
    ];
    for (missing, named) in [
        ("RESEND_API_KEY", "RESEND_API_KEY not set"),
        (
            "UNSUBSCRIBE_SECRET",
            "UNSUBSCRIBE_SECRET (or JWT_SECRET) not set",
        ),
        ("DATABASE_URL", "DATABASE_URL not set"),
    ] {
        let c = PluginConfig::from_pairs(full.iter().filter(|(k, _)| *k != missing).copied());
        let err = match Harness::load(&plugin_lib(EMAIL_PLUGIN), c) {
            Ok(_) => panic!("init must fail without {missing}"),
            Err(e) => e,
        };
        assert_eq!(err.stage, LoadStage::Init);
        assert!(err.reason.starts_with(named), "{}", err.reason);
        assert!(!err.reason.contains(KEY) && !err.reason.contains(SECRET));
    }
}

#[test]
fn dry_run_writes_the_rendered_email_and_sends_nothing() {
    let pg = Postgres::start().unwrap();
    seed(&pg);
    let resend = FakeHttp::scripted(vec![], accepted("never")).unwrap();
    let out = TempDir::new("digest-dry-run").unwrap();
    let h = load(PluginConfig::from_pairs([
        ("EMAIL_DRY_RUN", "true".to_owned()),
        ("EMAIL_DRY_RUN_DIR", out.path().display().to_string()),
        ("DATABASE_URL", pg.url()),
        ("RESEND_API_BASE_URL", resend.url()),
    ]));
    let run = h.run(job(ACME, USER_NY, "daily"));
    let result = completed(&run).clone();
    assert_eq!(result["success"], true);
    assert_eq!(result["dryRun"], true);
    let html_path = std::path::PathBuf::from(result["path"].as_str().unwrap());
    assert!(html_path.starts_with(out.path()), "{html_path:?}");
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert!(html.contains("Daily Alert Digest") && html.contains("Acme &lt;Cold&gt;"));
    let text = std::fs::read_to_string(html_path.with_extension("txt")).unwrap();
    assert!(text.contains("9 alerts | 4 critical"), "{text}");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(html_path.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(meta["subject"], "Your daily alert digest - 9 alerts");
    assert_eq!(meta["to"], json!([NY_EMAIL]));
    assert_eq!(
        meta["idempotencyKey"],
        format!("email-digest/{USER_NY}/daily/job-harness-1")
    );
    assert!(meta["headers"]["List-Unsubscribe"].is_string());

    // Invalid data is refused with the reason, in dry-run mode too.
    let bad = h.run(JobSpec::new(
        QUEUE,
        "email:digest",
        json!({"organizationId": ACME, "userId": USER_NY, "period": "monthly"}),
    ));
    assert_eq!(
        bad.outcome,
        Outcome::Failed {
            message:
                "invalid email:digest job: period must be \"daily\" or \"weekly\", got \"monthly\""
                    .to_owned(),
            unrecoverable: true,
            detail: None,
        }
    );
    assert!(resend.requests().is_empty());
}
