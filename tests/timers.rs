//! The 12 h / 24 h time limits (pec-format §5) with durations of seconds: which recipients
//! get which notice, the exact subject, and no notice twice.

use chrono::{Duration, Utc};
use pecora::config::Config;
use pecora::runtime::engine::Engine;
use pecora::pec::types::{Recipient, RecipientType};
use pecora::store::Store;
use pecora::store::model::{EventType, NewEvent, Record, StateUpdate};

#[path = "common/pki.rs"]
mod pki;

#[tokio::test]
async fn twelve_and_twenty_four_hour_notices() {
    let dir = tempfile::tempdir().unwrap();
    pki::provider(dir.path());
    let path = pki::config(dir.path(), "[timers]\ntake_charge = \"10s\"\ndelivery = \"30s\"\ndelivery_min = \"20s\"\ninterval = \"1s\"\n");
    let config = Config::load(&path).unwrap();
    let engine = Engine::load(&config).unwrap();
    // As the daemon's runtime state hands it over: the metrics observe the store.
    let store = Store::open(&format!("sqlite:{}/registry.db", dir.path().display()))
        .await
        .unwrap()
        .with_observer(pecora::runtime::metrics::global().clone());

    let t0 = Utc::now();
    let instant = engine.now();
    let rcpt = |a: &str, k| Recipient { address: a.into(), kind: k };
    let recipients = vec![
        rcpt("bob@pec.beta.test", RecipientType::Certificato),       // nothing ever arrives
        rcpt("carol@pec.beta.test", RecipientType::Certificato),     // taken in charge only
        rcpt("dave@pec.beta.test", RecipientType::Certificato),      // delivered
        rcpt("erin@mail.gamma.test", RecipientType::Esterno),        // never timed
    ];
    let mut event = NewEvent::new(instant, EventType::Acceptance);
    event.pec_id = Some("pecora.1@pec.alpha.test".into());
    store
        .record(
            &Record {
                event,
                outbox: vec![],
                state: vec![
                    StateUpdate::Accepted {
                        pec_id: "pecora.1@pec.alpha.test".into(),
                        client_msgid: Some("<m1@mua>".into()),
                        sender: "alice@pec.alpha.test".into(),
                        subject: Some("Contratto".into()),
                        queue_id: Some("4Q1".into()),
                        event_time: instant,
                        recipients,
                    },
                    StateUpdate::EnvelopeSent { pec_id: "pecora.1@pec.alpha.test".into(), at: t0 },
                    StateUpdate::TakenInCharge { pec_id: "pecora.1@pec.alpha.test".into(), recipient: "carol@pec.beta.test".into(), at: t0 },
                    StateUpdate::Delivered { pec_id: "pecora.1@pec.alpha.test".into(), recipient: "dave@pec.beta.test".into(), at: t0 },
                ],
                idempotency_key: None,
            },
            t0,
        )
        .await
        .unwrap();

    // Before 10 s: nothing.
    let r = pecora::daemon::timers::run_once(&store, &config, &engine, t0 + Duration::seconds(5)).await.unwrap();
    assert_eq!((r.twelve, r.twenty_four), (0, 0));
    // At 12 s: the 12 h notice for bob only (carol was taken in charge, dave delivered).
    let r = pecora::daemon::timers::run_once(&store, &config, &engine, t0 + Duration::seconds(12)).await.unwrap();
    assert_eq!((r.twelve, r.twenty_four), (1, 0));
    let again = pecora::daemon::timers::run_once(&store, &config, &engine, t0 + Duration::seconds(13)).await.unwrap();
    assert_eq!((again.twelve, again.twenty_four), (0, 0), "never twice");
    // At 21 s (past the 22 h stand-in): the final notice for bob and carol, not dave.
    let r = pecora::daemon::timers::run_once(&store, &config, &engine, t0 + Duration::seconds(21)).await.unwrap();
    assert_eq!((r.twelve, r.twenty_four), (0, 2));
    let again = pecora::daemon::timers::run_once(&store, &config, &engine, t0 + Duration::seconds(25)).await.unwrap();
    assert_eq!((again.twelve, again.twenty_four), (0, 0));

    // Three signed notices wait in the outbox, to the sender, with the exact literals.
    let claimed = store.backend().outbox_claim("test", t0 + Duration::seconds(30), std::time::Duration::from_secs(60), 10).await.unwrap();
    assert_eq!(claimed.len(), 3);
    for m in &claimed {
        assert_eq!(m.rcpts, ["alice@pec.alpha.test"]);
        let text = String::from_utf8_lossy(&m.message);
        assert!(text.contains("X-Ricevuta: preavviso-errore-consegna"));
        assert!(text.contains("Subject: AVVISO DI MANCATA CONSEGNA PER SUP. TEMPO MASSIMO: Contratto"), "{text}");
        assert!(text.contains("X-Riferimento-Message-ID: <m1@mua>"));
    }
    let history = store.history("pecora.1@pec.alpha.test").await.unwrap();
    let kinds: Vec<_> = history.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "timer-notice-12h").count(), 1, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "timer-notice-24h").count(), 2, "{kinds:?}");

    // The daemon's counters moved with the notices recorded (the process-wide metrics the
    // endpoint renders; nothing else in this test binary records notices).
    let metrics = pecora::runtime::metrics::global().render();
    for line in [
        r#"pecora_timer_notices_total{deadline="12h"} 1"#,
        r#"pecora_timer_notices_total{deadline="24h"} 2"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} missing:\n{metrics}");
    }
}
