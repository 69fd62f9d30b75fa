//! The reception point on the milter protocol level (indymilter-test plays Postfix at the
//! MX listener, PEC-RICEZIONE), with other providers in the index whose signatures the test
//! makes: issue 13 items 2 (an envelope certifies only its signed destinatari, decisions.md
//! 20), 6 (receipts settle only when their signer manages the recipient, decisions.md 23)
//! and 10 (a signed message with an ambiguous MIME structure is an anomaly).

use indymilter_test::{Actions, EomAction, EomActions, Status, TestConnection};
use pecora::pec::build::{self, Notice, NoticeParams, Original, Transaction};
use pecora::pec::sign::Signer;
use pecora::pec::{Instant, ReceiptType, Recipient, RecipientType};
use pecora::store::model::EventType;

#[path = "common/milter.rs"]
mod milter;
use milter::{Milter, OtherProvider, transaction};

fn now() -> Instant {
    chrono::Utc::now().with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap())
}

fn tx(id: &str, sender: &str, to: &[&str], client_msgid: &str) -> Transaction {
    Transaction {
        instant: now(),
        identificativo: id.to_string(),
        client_msgid: client_msgid.to_string(),
        sender: sender.to_string(),
        to: to.iter().map(|a| Recipient { address: a.to_string(), kind: RecipientType::Certificato }).collect(),
        cc: vec![],
        reply_to: None,
        subject: Some("Contratto".into()),
        receipt: None,
    }
}

/// A genuine transport envelope from `p`'s user `sender` to `to`.
fn envelope(p: &OtherProvider, id: &str, sender: &str, to: &[&str]) -> Vec<u8> {
    let original = format!(
        "From: {sender}\r\nTo: {}\r\nSubject: Contratto\r\nMessage-ID: <m2@mua>\r\n\r\nCiao\r\n",
        to.join(", ")
    );
    build::build_envelope(&p.provider, &tx(id, sender, to, "<m2@mua>"), Original::Raw(original.as_bytes()), b"seed", &p.signer)
        .unwrap()
        .to_bytes()
}

/// `raw` with its signed content changed by `mutate` and signed again by `signer`: the
/// signature is valid over whatever the mutation wrote.
fn resigned(raw: &[u8], signer: &Signer, mutate: impl Fn(&str) -> String) -> Vec<u8> {
    let text = String::from_utf8(raw.to_vec()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let at = head.find("boundary=\"").unwrap() + 10;
    let boundary = &head[at..at + head[at..].find('"').unwrap()];
    let start = body.find(&format!("--{boundary}\r\n")).unwrap() + boundary.len() + 4;
    let end = start + body[start..].find(&format!("\r\n--{boundary}")).unwrap();
    let content = mutate(&body[start..end]);
    let (ct, signed) = pecora::pec::sign::multipart_signed(content.as_bytes(), "resigned", signer, &now()).unwrap();
    let mut out = String::new();
    let mut skipping = false;
    for line in head.split("\r\n") {
        if line.to_ascii_lowercase().starts_with("content-type:") {
            skipping = true;
            continue;
        }
        if skipping && line.starts_with([' ', '\t']) {
            continue;
        }
        skipping = false;
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(&format!("Content-Type: {}\r\n\r\n", ct.replace('\n', "\r\n")));
    [out.as_bytes(), &signed].concat()
}

fn replaced(a: &EomActions) -> bool {
    a.actions.iter().any(|x| matches!(x, EomAction::ReplaceBody { .. }))
}

/// The message became a busta di anomalia: body replaced, `X-Trasporto: errore` added.
fn wrapped_as_anomaly(a: &EomActions) -> bool {
    replaced(a)
        && a.actions.iter().any(|x| {
            matches!(x, EomAction::AddHeader { name, value }
                if name.to_string_lossy().eq_ignore_ascii_case("X-Trasporto") && value.to_string_lossy().contains("errore"))
        })
}

/// The reason code the registry holds for the anomaly recorded under `queue_id`.
async fn anomaly_code(m: &Milter, queue_id: &str) -> (String, String) {
    let rows = m.store.history(queue_id).await.unwrap();
    let row = rows.iter().find(|r| r.kind() == Some(EventType::Anomaly)).unwrap_or_else(|| panic!("no anomaly for {queue_id}: {rows:?}"));
    let details: serde_json::Value = serde_json::from_str(&row.details).unwrap();
    (details["reason_code"].as_str().unwrap_or("").to_string(), details["reason"].as_str().unwrap_or("").to_string())
}

async fn settle(c: &mut TestConnection, raw: &[u8], from: &str, queue_id: &str) -> (EomActions, Status) {
    transaction(c, None, from, &["alice@pec.alpha.test"], raw, queue_id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_certifies_only_its_signed_destinatari() {
    let milter = Milter::start(&[("Beta PEC", "pec.beta.test")], "").await;
    let beta = &milter.others[0];
    let id = "opec.replay.1@pec.beta.test";
    let env = envelope(beta, id, "mario@pec.beta.test", &["alice@pec.alpha.test"]);
    let from = "mario@pec.beta.test";

    // The genuine delivery: a presa in carico for alice to Beta's service mailbox.
    let mut c = milter.session("PEC-RICEZIONE").await;
    let (a, st) = transaction(&mut c, None, from, &["alice@pec.alpha.test"], &env, "R1").await;
    assert_eq!(st, Status::Continue);
    assert!(!replaced(&a), "{a:?}");
    let got = milter.injected(1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, ["servizio@pec.beta.test"]);
    assert!(got[0].1.contains("X-Ricevuta: presa-in-carico") && got[0].1.contains("alice@pec.alpha.test"));
    c.close().await.unwrap();

    // The same envelope again to alice: delivered, no second presa in carico.
    let mut c = milter.session("PEC-RICEZIONE").await;
    let (a, st) = transaction(&mut c, None, from, &["alice@pec.alpha.test"], &env, "R2").await;
    assert_eq!(st, Status::Continue);
    assert!(!replaced(&a));
    c.close().await.unwrap();

    // Resent to carol, who is not among the destinatari: an anomaly for her, nothing certified.
    let mut c = milter.session("PEC-RICEZIONE").await;
    let (a, st) = transaction(&mut c, None, from, &["carol@pec.alpha.test"], &env, "R3").await;
    assert_eq!(st, Status::Continue);
    assert!(wrapped_as_anomaly(&a), "{a:?}");
    let (code, reason) = anomaly_code(&milter, "R3").await;
    assert_eq!(code, "not-addressed");
    assert!(reason.contains("carol@pec.alpha.test"), "{reason}");
    c.close().await.unwrap();

    // Mixed: alice stays in the transaction, unchanged; dave leaves it and gets the busta
    // di anomalia through the outbox.
    let mut c = milter.session("PEC-RICEZIONE").await;
    let (a, st) = transaction(&mut c, None, from, &["alice@pec.alpha.test", "dave@pec.alpha.test"], &env, "R4").await;
    assert_eq!(st, Status::Continue);
    assert!(a.has_delete_recipient("<dave@pec.alpha.test>"), "{a:?}");
    assert!(!a.has_delete_recipient("<alice@pec.alpha.test>"));
    assert!(!replaced(&a), "the addressed recipient gets the envelope unchanged");
    let got = milter.injected(2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1].0, ["dave@pec.alpha.test"]);
    assert!(got[1].1.contains("X-Trasporto: errore") && got[1].1.contains("ANOMALIA MESSAGGIO"), "{}", got[1].1);
    assert_eq!(anomaly_code(&milter, "R4").await.0, "not-addressed");
    c.close().await.unwrap();

    // Mixed, with a Postfix that does not offer DELETE_RCPT: refused, naming erin.
    let builder = TestConnection::configure().available_actions(Actions::all() - Actions::DELETE_RCPT);
    let mut c = milter.session_with(builder, "PEC-RICEZIONE").await;
    let (_, st) = transaction(&mut c, None, from, &["alice@pec.alpha.test", "erin@pec.alpha.test"], &env, "R5").await;
    assert!(matches!(&st, Status::Reject { message: Some(m) } if m.to_string_lossy().contains("5.7.1") && m.to_string_lossy().contains("erin@pec.alpha.test")), "{st:?}");
    c.close().await.unwrap();

    // One presa in carico in all, naming alice only; no receipt ever named the others.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let got = milter.injected(3).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let rows = milter.store.backend().events_of_pec_id(id).await.unwrap();
    let taken: Vec<Vec<String>> = rows
        .iter()
        .filter(|r| r.kind() == Some(EventType::TakeChargeEmitted))
        .map(|r| r.recipient_list())
        .collect();
    assert_eq!(taken, [["alice@pec.alpha.test"]]);
    milter.shutdown().await;
}

/// When bob was taken in charge and delivered, as the transaction state says.
async fn bob_state(m: &Milter, pec_id: &str) -> (Option<String>, Option<String>) {
    let t = m.store.backend().transaction(pec_id).await.unwrap().unwrap();
    let bob = t.recipients.iter().find(|r| r.recipient == "bob@pec.beta.test").unwrap().clone();
    (bob.taken_in_charge_at, bob.delivered_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_settle_only_when_signed_by_the_recipients_provider() {
    let milter = Milter::start(&[("Beta PEC", "pec.beta.test"), ("Gamma PEC", "pec.gamma.test")], "").await;
    let (beta, gamma) = (&milter.others[0], &milter.others[1]);

    // alice sends to bob at Beta: our transaction.
    let original = b"From: Alice <alice@pec.alpha.test>\r\nTo: bob@pec.beta.test\r\nSubject: Contratto\r\nMessage-ID: <m1@mua>\r\n\r\nCiao\r\n";
    let mut c = milter.session("PEC-ACCESSO").await;
    let (_, st) = transaction(&mut c, Some("alice@pec.alpha.test"), "alice@pec.alpha.test", &["bob@pec.beta.test"], original, "A1").await;
    assert_eq!(st, Status::Continue);
    c.close().await.unwrap();
    let pec_id = milter.store.history("A1").await.unwrap()[0].pec_id.clone().unwrap();
    let about = tx(&pec_id, "alice@pec.alpha.test", &["bob@pec.beta.test"], "<m1@mua>");
    let notice = |p: &OtherProvider, n: &Notice<'_>, mid: &str| {
        build::build_notice(&p.provider, &about, &NoticeParams { instant: now(), message_id: mid, seed: b"seed" }, n, &p.signer)
            .unwrap()
            .to_bytes()
    };
    let bob = vec!["bob@pec.beta.test".to_string()];
    let presa = Notice::PresaInCarico { ricezione: &bob, mail_receipt: "servizio@pec.alpha.test" };
    let consegna = Notice::AvvenutaConsegna { consegna: "bob@pec.beta.test", variant: ReceiptType::Sintetica, postacert: None };

    // Gamma signs a presa in carico and a delivery receipt for bob, who is at Beta: both are
    // anomalies and settle nothing.
    for (i, n) in [&presa, &consegna].into_iter().enumerate() {
        let q = format!("G{i}");
        let mut c = milter.session("PEC-RICEZIONE").await;
        let (a, st) = settle(&mut c, &notice(gamma, n, &format!("g{i}@pec.gamma.test")), "posta-certificata@pec.gamma.test", &q).await;
        assert_eq!(st, Status::Continue);
        assert!(wrapped_as_anomaly(&a), "{a:?}");
        let (code, reason) = anomaly_code(&milter, &q).await;
        assert_eq!(code, "not-recipients-provider");
        assert!(reason.contains("bob@pec.beta.test") && reason.contains("Gamma PEC"), "{reason}");
        c.close().await.unwrap();
    }
    assert_eq!(bob_state(&milter, &pec_id).await, (None, None));

    // The same receipts signed by Beta settle the transaction and are delivered unchanged.
    for (i, n) in [&presa, &consegna].into_iter().enumerate() {
        let mut c = milter.session("PEC-RICEZIONE").await;
        let (a, st) = settle(&mut c, &notice(beta, n, &format!("b{i}@pec.beta.test")), "posta-certificata@pec.beta.test", &format!("B{i}")).await;
        assert_eq!(st, Status::Continue);
        assert!(!replaced(&a), "{a:?}");
        c.close().await.unwrap();
    }
    let (taken, delivered) = bob_state(&milter, &pec_id).await;
    assert!(taken.is_some() && delivered.is_some(), "{taken:?} {delivered:?}");
    milter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_mime_structure_is_an_anomaly_with_its_reason() {
    let milter = Milter::start(&[("Beta PEC", "pec.beta.test")], "").await;
    let beta = &milter.others[0];
    let env = envelope(beta, "opec.mime.1@pec.beta.test", "mario@pec.beta.test", &["alice@pec.alpha.test"]);
    let from = "mario@pec.beta.test";
    // Signed again unchanged, it is genuine: what follows is the mutations' doing.
    let mut c = milter.session("PEC-RICEZIONE").await;
    let (a, st) = settle(&mut c, &resigned(&env, &beta.signer, str::to_string), from, "M0").await;
    assert_eq!(st, Status::Continue);
    assert!(!replaced(&a), "{a:?}");
    c.close().await.unwrap();
    let cases: [(&str, fn(&str) -> String, &str); 3] = [
        ("M1", |s| format!("X-Odd : 1\r\n{s}"), "before the colon"),
        ("M2", |s| format!("Content-Type: text/plain\r\n{s}"), "2 Content-Type fields"),
        ("M3", |s| s.replacen("Content-Type: multipart/mixed;", "Content-Type: multipart/mixed; boundary=\"elsewhere\";", 1), "2 boundary parameters"),
    ];
    for (q, mutate, why) in cases {
        let raw = resigned(&env, &beta.signer, mutate);
        let mut c = milter.session("PEC-RICEZIONE").await;
        let (a, st) = settle(&mut c, &raw, from, q).await;
        assert_eq!(st, Status::Continue);
        assert!(wrapped_as_anomaly(&a), "{q}: {a:?}");
        let (code, reason) = anomaly_code(&milter, q).await;
        assert_eq!(code, "ambiguous-structure", "{q}: {reason}");
        assert!(reason.contains(why), "{q}: {reason}");
        c.close().await.unwrap();
    }
    // Only the genuine one earned a presa in carico.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let got = milter.injected(2).await;
    assert_eq!(got.len(), 1, "{got:?}");
    milter.shutdown().await;
}

/// decisions.md 20 at the delivery point, defence in depth: even with a registry that says
/// a mailbox outside the destinatari was taken in charge, no delivery receipt names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_point_certifies_no_mailbox_outside_the_destinatari() {
    // Dovecot holds the genuine envelope in both mailboxes: a doveadm that prints it.
    let scratch = tempfile::tempdir().unwrap();
    let stored = scratch.path().join("stored.eml");
    let doveadm = scratch.path().join("doveadm");
    std::fs::write(&doveadm, format!("#!/bin/sh\nprintf 'text:\\n'\ncat '{}'\nprintf '\\n\\f\\n'\n", stored.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&doveadm, std::fs::Permissions::from_mode(0o755)).unwrap();
    let extra = format!("[delivery]\ndoveadm_socket = \"\"\ndoveadm = [\"{}\"]\nreconcile_interval = \"0s\"\n", doveadm.display());
    let milter = Milter::start(&[("Beta PEC", "pec.beta.test")], &extra).await;
    let beta = &milter.others[0];
    let id = "opec.dlv.1@pec.beta.test";
    let env = envelope(beta, id, "mario@pec.beta.test", &["alice@pec.alpha.test"]);
    let mut c = milter.session("PEC-RICEZIONE").await;
    let (_, st) = settle(&mut c, &env, "mario@pec.beta.test", "D1").await;
    assert_eq!(st, Status::Continue);
    c.close().await.unwrap();

    // A registry row that should not exist: carol taken in charge for this envelope.
    let mut forged = pecora::store::model::NewEvent::new(now(), EventType::TakeChargeEmitted);
    forged.pec_id = Some(id.to_string());
    forged.recipients = vec!["carol@pec.alpha.test".to_string()];
    let record = pecora::store::model::Record { event: forged, outbox: vec![], state: vec![], idempotency_key: None };
    milter.store.record(&record, chrono::Utc::now()).await.unwrap();

    std::fs::write(&stored, &env).unwrap();

    let event = |user: &str| pecora::delivery::DeliveryEvent {
        user: user.to_string(),
        mailbox: "INBOX".into(),
        uidvalidity: 1,
        uid: 1,
        message_id: format!("<{id}>"),
        reconciled: false,
    };
    use pecora::delivery::worker::{Outcome, process};
    match process(&milter.shared, &event("carol@pec.alpha.test")).await.unwrap() {
        Outcome::NoReceipt(why) => assert!(why.contains("not among the destinatari"), "{why}"),
        o => panic!("carol certified: {o:?}"),
    }
    match process(&milter.shared, &event("alice@pec.alpha.test")).await.unwrap() {
        Outcome::Receipt { recipient, replayed: false, .. } => assert_eq!(recipient, "alice@pec.alpha.test"),
        o => panic!("{o:?}"),
    }
    let rows = milter.store.backend().events_of_pec_id(id).await.unwrap();
    let delivered: Vec<Vec<String>> = rows.iter().filter(|r| r.kind() == Some(EventType::Delivery)).map(|r| r.recipient_list()).collect();
    assert_eq!(delivered, [["alice@pec.alpha.test"]]);
    milter.shutdown().await;
}
