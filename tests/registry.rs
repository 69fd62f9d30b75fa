//! The registry against both backends: every test function runs on SQLite (a temporary
//! file) and on PostgreSQL (a private server this test starts; see tests/common/pg.rs).

#[path = "common/pg.rs"]
mod pg;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509Builder, X509NameBuilder};

use pecora::cmd::log::{LogCommand, LogContext, run_to};
use pecora::pec::sign::Signer;
use pecora::pec::types::{Recipient, RecipientType};
use pecora::store::chain::{self, row_hash};
use pecora::store::checkpoint::{self, CheckpointVerifier};
use pecora::store::outbox::{Backoff, OutboxWorker, SubmitError, Submitter};
use pecora::store::*;

enum TestDb {
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Pg {
        server: Arc<pg::PgServer>,
        db: String,
    },
}

impl TestDb {
    fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.db");
        TestDb::Sqlite { _dir: dir, path }
    }

    fn postgres() -> TestDb {
        let server = pg::PgServer::shared();
        let db = server.create_db();
        TestDb::Pg { server, db }
    }

    fn url(&self) -> String {
        match self {
            TestDb::Sqlite { path, .. } => format!("sqlite:{}", path.display()),
            TestDb::Pg { server, db } => server.url(db),
        }
    }

    async fn open(&self) -> Store {
        Store::open(&self.url())
            .await
            .expect("open store")
            .with_host("host-a")
    }

    /// Changes the database behind pecora's back, with the sqlite3 or psql client.
    fn tamper(&self, sql: &str) -> String {
        match self {
            TestDb::Sqlite { path, .. } => {
                let out = Command::new("sqlite3")
                    .arg(path)
                    .arg(sql)
                    .output()
                    .expect("run sqlite3");
                assert!(
                    out.status.success(),
                    "sqlite3 {sql:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
            TestDb::Pg { server, db } => server.psql(db, sql),
        }
    }

    fn is_pg(&self) -> bool {
        matches!(self, TestDb::Pg { .. })
    }
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(&super::TestDb::sqlite()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(&super::TestDb::postgres()).await;
            }
        }
    )*};
}

both!(
    chain_appends_and_verifies,
    edited_column_is_named,
    deleted_row_is_named,
    inserted_row_is_named,
    reordered_rows_are_named,
    recomputed_chain_caught_by_checkpoint,
    idempotent_record_returns_same_result,
    outbox_lease_backoff_and_hold,
    worker_retries_with_fake_submitter,
    concurrent_workers_never_share_a_message,
    leader_takeover,
    retention_keeps_chain_verifiable,
    timer_queries,
    search_show_and_unique_ids,
    events_of_one_type_by_recording_time,
    outbox_injects_only_sealed_rows,
    rows_of_the_previous_version_are_sealed_at_upgrade,
    a_new_signing_key_still_sends_what_the_old_one_sealed,
    failed_rows_are_retried_only_when_sealed_by_pecora,
    events_of_one_queue_id,
    checkpoints_go_on_after_a_certificate_renewal,
    concurrent_records_each_durable_once,
    scrape_counts_read_the_outbox_and_its_oldest_rows,
);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap()
}

struct Keys {
    signer: Signer,
    cert_path: PathBuf,
    _dir: tempfile::TempDir,
}

fn keys() -> Keys {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "pecora test provider")
        .unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    // A serial of its own, as a CA gives a renewed certificate: a CMS signature names its
    // signer by issuer and serial.
    let mut serial = openssl::bn::BigNum::new().unwrap();
    serial.rand(64, openssl::bn::MsbOption::MAYBE_ZERO, false).unwrap();
    let serial = serial.to_asn1_integer().unwrap();
    b.set_serial_number(&serial).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(1_700_000_000).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(2_100_000_000).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = b.build();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("provider.pem");
    std::fs::write(&cert_path, cert.to_pem().unwrap()).unwrap();
    Keys {
        signer: Signer::new(cert, key, vec![]).unwrap(),
        cert_path,
        _dir: dir,
    }
}

fn event(i: usize, at: DateTime<Utc>) -> NewEvent {
    let mut e = NewEvent::new(at.fixed_offset(), EventType::Acceptance);
    e.pec_id = Some(format!("<pecora.{i}@pec.example.it>"));
    e.client_msgid = Some(format!("client-{i}@example.it"));
    e.sender = Some(format!("Sender{i}@pec.example.it"));
    e.recipients = vec![
        format!("rcpt{i}@pec.other.it"),
        "shared@pec.other.it".into(),
    ];
    e.subject = Some(format!("Fattura n. {i}"));
    e.generated_ids = vec![format!("acc-{i}@pec.example.it")];
    e.provider = Some("pec.example.it".into());
    e.queue_id = Some(format!("Q{i:04X}"));
    e
}

async fn fill(store: &Store, n: usize, at: DateTime<Utc>) {
    for i in 1..=n {
        store.append(event(i, at), at).await.unwrap();
    }
}

async fn problem(store: &Store, keys: &Keys, extra: &[(String, Checkpoint)]) -> Option<Problem> {
    let v = CheckpointVerifier::new(vec![keys.signer.certificate().clone()]);
    store.verify(Some(&v), extra).await.unwrap().problem
}

fn ctx(db: &TestDb, keys: &Keys, dir: Option<PathBuf>) -> LogContext {
    LogContext {
        store_url: db.url(),
        certs: vec![keys.cert_path.clone()],
        checkpoint_dir: dir,
    }
}

async fn cli(cmd: LogCommand, ctx: &LogContext) -> (u8, String) {
    let mut out = Vec::new();
    let code = run_to(cmd, ctx, &mut out).await;
    (code, String::from_utf8_lossy(&out).into_owned())
}

fn verify_cmd() -> LogCommand {
    LogCommand::Verify {
        certs: vec![],
        checkpoint_dir: None,
        json: false,
    }
}

/// A SQL literal.
fn lit(v: &Option<String>) -> String {
    v.as_ref()
        .map_or("NULL".into(), |s| format!("'{}'", s.replace('\'', "''")))
}

fn update_row_sql(r: &EventRow) -> String {
    format!(
        "UPDATE registry_events SET subject = {}, prev_hash = '{}', hash = '{}' WHERE seq = {};",
        lit(&r.subject),
        r.prev_hash,
        r.hash,
        r.seq
    )
}

async fn chain_appends_and_verifies(db: &TestDb) {
    let keys = keys();
    let store = db.open().await;
    assert_eq!(store.backend().schema_version().await.unwrap(), 2);
    fill(&store, 5, t0()).await;
    let report = store.verify(None, &[]).await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(
        (report.rows, report.last_seq, report.unsigned_tail),
        (5, 5, 5)
    );
    assert!(!report.signatures_checked);

    let export = tempfile::tempdir().unwrap();
    let cp = store
        .checkpoint(&keys.signer, t0(), Some(export.path()))
        .await
        .unwrap();
    assert_eq!(cp.seq, 5);
    // Not due again within the interval, due after it.
    let day = Duration::from_secs(86_400);
    let soon = t0() + chrono::Duration::hours(1);
    assert!(
        store
            .checkpoint_if_due(&keys.signer, soon, day, None)
            .await
            .unwrap()
            .is_none()
    );
    fill(&store, 2, soon).await;
    let later = t0() + chrono::Duration::hours(25);
    let cp2 = store
        .checkpoint_if_due(&keys.signer, later, day, Some(export.path()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp2.seq, 7);

    let files = checkpoint::load_dir(export.path()).unwrap();
    assert_eq!(files.len(), 2);
    let v = CheckpointVerifier::new(vec![keys.signer.certificate().clone()]);
    let report = store.verify(Some(&v), &files).await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!((report.checkpoints_checked, report.unsigned_tail), (2, 0));

    // Reopening runs no migration twice; the CLI agrees.
    let store2 = db.open().await;
    assert_eq!(store2.backend().chain_head().await.unwrap().0, 7);
    let (code, out) = cli(
        verify_cmd(),
        &ctx(db, &keys, Some(export.path().to_path_buf())),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("registry OK: 7 rows"), "{out}");

    // A checkpoint signed by somebody else does not pass.
    let other = keys_other();
    let forged = checkpoint::sign(&other, 7, &cp2.head_hash, later, "evil").unwrap();
    let p = problem(&store, &keys, &[("forged".into(), forged)]).await;
    assert!(matches!(p, Some(Problem::CheckpointForged { .. })), "{p:?}");
}

fn keys_other() -> Signer {
    keys().signer
}

/// A renewed signing certificate: the latest checkpoint was signed with the old one. Without
/// `keys.previous_certificates` the new signer cannot vouch for it and writes no checkpoint
/// (it would take the old signature for a forgery); with the old certificate listed, the
/// chain goes on through both, and `log verify` checks both signatures.
async fn checkpoints_go_on_after_a_certificate_renewal(db: &TestDb) {
    let old = keys();
    let store = db.open().await;
    fill(&store, 3, t0()).await;
    store.checkpoint(&old.signer, t0(), None).await.unwrap();

    let renewed = keys();
    let err = store.checkpoint(&renewed.signer, t0(), None).await.unwrap_err();
    assert!(err.to_string().contains("checkpoint"), "{err}");

    let signer = renewed.signer.with_previous(vec![old.signer.certificate().clone()]);
    for i in 4..=5 {
        store.append(event(i, t0()), t0()).await.unwrap();
    }
    store.checkpoint(&signer, t0(), None).await.unwrap();
    let both = CheckpointVerifier::new(signer.own_certificates());
    let report = store.verify(Some(&both), &[]).await.unwrap();
    assert_eq!(report.problem, None);
    assert_eq!(report.checkpoints_checked, 2, "{report:?}");
    // The new certificate alone does not vouch for the old checkpoint.
    let new_only = CheckpointVerifier::new(vec![signer.certificate().clone()]);
    let report = store.verify(Some(&new_only), &[]).await.unwrap();
    assert!(matches!(report.problem, Some(Problem::CheckpointForged { .. })), "{:?}", report.problem);
}

async fn edited_column_is_named(db: &TestDb) {
    let keys = keys();
    let store = db.open().await;
    fill(&store, 5, t0()).await;
    store.checkpoint(&keys.signer, t0(), None).await.unwrap();
    db.tamper("UPDATE registry_events SET subject = 'Fattura n. 999' WHERE seq = 3");
    assert_eq!(
        problem(&store, &keys, &[]).await,
        Some(Problem::RowChanged { seq: 3 })
    );
    let (code, out) = cli(verify_cmd(), &ctx(db, &keys, None)).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("row 3 was changed"), "{out}");
    // Any other column too, e.g. the host or the event time.
    db.tamper("UPDATE registry_events SET subject = 'Fattura n. 3' WHERE seq = 3");
    assert_eq!(problem(&store, &keys, &[]).await, None);
    db.tamper("UPDATE registry_events SET host = 'elsewhere' WHERE seq = 2");
    assert_eq!(
        problem(&store, &keys, &[]).await,
        Some(Problem::RowChanged { seq: 2 })
    );
}

async fn deleted_row_is_named(db: &TestDb) {
    let keys = keys();
    let store = db.open().await;
    fill(&store, 5, t0()).await;
    db.tamper("DELETE FROM registry_events WHERE seq = 3");
    assert_eq!(
        problem(&store, &keys, &[]).await,
        Some(Problem::RowsDeleted { first: 3, last: 3 })
    );
    let (code, out) = cli(verify_cmd(), &ctx(db, &keys, None)).await;
    assert_eq!(code, 1);
    assert!(out.contains("row 3 was deleted"), "{out}");

    // Deleting the tail: the chain head record gives it away.
    let db2 = fresh(db);
    let store = db2.open().await;
    fill(&store, 4, t0()).await;
    db2.tamper("DELETE FROM registry_events WHERE seq = 4");
    assert_eq!(
        problem(&store, &keys, &[]).await,
        Some(Problem::HeadRecordMismatch {
            head_seq: 4,
            last_seq: 3
        })
    );
    store
        .checkpoint(&keys.signer, t0(), None)
        .await
        .unwrap_err();
}

/// Two rows swapped (each keeps its content and hashes, they exchange their places in the
/// sequence): the chain no longer links, from the first of them.
async fn reordered_rows_are_named(db: &TestDb) {
    let keys = keys();
    let store = db.open().await;
    fill(&store, 5, t0()).await;
    db.tamper("UPDATE registry_events SET seq = 1003 WHERE seq = 3");
    db.tamper("UPDATE registry_events SET seq = 3 WHERE seq = 2");
    db.tamper("UPDATE registry_events SET seq = 2 WHERE seq = 1003");
    let found = problem(&store, &keys, &[]).await;
    assert_eq!(found.as_ref().and_then(Problem::first_row), Some(2), "{found:?}");
    let (code, out) = cli(verify_cmd(), &ctx(db, &keys, None)).await;
    assert_eq!(code, 1, "{out}");
    // Put back in order: the chain verifies again (the check is about the order alone).
    db.tamper("UPDATE registry_events SET seq = 1002 WHERE seq = 2");
    db.tamper("UPDATE registry_events SET seq = 2 WHERE seq = 3");
    db.tamper("UPDATE registry_events SET seq = 3 WHERE seq = 1002");
    assert_eq!(problem(&store, &keys, &[]).await, None);
}

fn fresh(db: &TestDb) -> TestDb {
    match db {
        TestDb::Sqlite { .. } => TestDb::sqlite(),
        TestDb::Pg { .. } => TestDb::postgres(),
    }
}

async fn inserted_row_is_named(db: &TestDb) {
    let keys = keys();
    let store = db.open().await;
    fill(&store, 5, t0()).await;
    // An attacker who knows the hash makes a well-formed row 3 and renumbers the rest.
    let rows = store.backend().events_after(0, 100).await.unwrap();
    let mut forged = chain::seal(&event(77, t0()), 2, &rows[1].hash, t0(), "host-a", None);
    forged.seq = 3;
    db.tamper("UPDATE registry_events SET seq = seq + 1000 WHERE seq >= 3");
    db.tamper("UPDATE registry_events SET seq = seq - 999 WHERE seq >= 1000");
    let cols = "seq, recorded_at, event_time, event_zone, event_type, pec_id, client_msgid, sender, recipients, \
                subject, generated_ids, provider, queue_id, host, details, idempotency_key, prev_hash, hash";
    let values = [
        forged.seq.to_string(),
        lit(&Some(forged.recorded_at.clone())),
        lit(&Some(forged.event_time.clone())),
        lit(&Some(forged.event_zone.clone())),
        lit(&Some(forged.event_type.clone())),
        lit(&forged.pec_id),
        lit(&forged.client_msgid),
        lit(&forged.sender),
        lit(&Some(forged.recipients.clone())),
        lit(&forged.subject),
        lit(&Some(forged.generated_ids.clone())),
        lit(&forged.provider),
        lit(&forged.queue_id),
        lit(&Some(forged.host.clone())),
        lit(&Some(forged.details.clone())),
        lit(&forged.idempotency_key),
        lit(&Some(forged.prev_hash.clone())),
        lit(&Some(forged.hash.clone())),
    ]
    .join(", ");
    db.tamper(&format!(
        "INSERT INTO registry_events ({cols}) VALUES ({values})"
    ));
    assert_eq!(
        problem(&store, &keys, &[]).await,
        Some(Problem::RowInserted { seq: 3 })
    );
    let (code, out) = cli(verify_cmd(), &ctx(db, &keys, None)).await;
    assert_eq!(code, 1);
    assert!(out.contains("first row concerned: 3"), "{out}");
}

async fn recomputed_chain_caught_by_checkpoint(db: &TestDb) {
    let keys = keys();
    let store = db.open().await;
    fill(&store, 5, t0()).await;
    let export = tempfile::tempdir().unwrap();
    store
        .checkpoint(&keys.signer, t0(), Some(export.path()))
        .await
        .unwrap();
    fill(&store, 2, t0()).await;

    // Edit row 3 and recompute every later hash and the head: each row checks out alone.
    let mut rows = store.backend().events_after(0, 100).await.unwrap();
    rows[2].subject = Some("Fattura n. 3 (rettificata)".into());
    let mut sql = String::new();
    for i in 2..rows.len() {
        rows[i].prev_hash = rows[i - 1].hash.clone();
        rows[i].hash = row_hash(&rows[i]);
        sql.push_str(&update_row_sql(&rows[i]));
    }
    sql.push_str(&format!(
        "UPDATE registry_chain_head SET hash = '{}';",
        rows[6].hash
    ));
    db.tamper(&sql);
    assert!(
        store.verify(None, &[]).await.unwrap().problem.is_some(),
        "the stored checkpoint must disagree"
    );
    assert_eq!(
        problem(&store, &keys, &[]).await,
        Some(Problem::ChainRewritten {
            first: 1,
            last: 5,
            checkpoint_seq: 5
        })
    );

    // Removing the checkpoint from the table hides it, but not from the off-host copy.
    db.tamper("DELETE FROM registry_checkpoints");
    assert_eq!(problem(&store, &keys, &[]).await, None);
    let files = checkpoint::load_dir(export.path()).unwrap();
    assert_eq!(
        problem(&store, &keys, &files).await,
        Some(Problem::ChainRewritten {
            first: 1,
            last: 5,
            checkpoint_seq: 5
        })
    );
    let (code, out) = cli(
        verify_cmd(),
        &ctx(db, &keys, Some(export.path().to_path_buf())),
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("between 1 and 5"), "{out}");

    // Editing the checkpoint's hash breaks its signature.
    let db2 = fresh(db);
    let store = db2.open().await;
    fill(&store, 3, t0()).await;
    store.checkpoint(&keys.signer, t0(), None).await.unwrap();
    db2.tamper(&format!(
        "UPDATE registry_checkpoints SET head_hash = '{}'",
        chain::GENESIS
    ));
    assert!(matches!(
        problem(&store, &keys, &[]).await,
        Some(Problem::CheckpointForged { .. })
    ));
    // And signing refuses to launder a tampered registry.
    assert!(matches!(
        store.checkpoint(&keys.signer, t0(), None).await,
        Err(StoreError::Tampered(_))
    ));
}

fn outbox_msg(kind: &str, hold: Option<&str>) -> NewOutboxMessage {
    NewOutboxMessage {
        kind: kind.into(),
        mail_from: "posta-certificata@pec.example.it".into(),
        rcpts: vec!["sender1@pec.example.it".into()],
        message: format!("Subject: {kind}\r\n\r\nbody\r\n").into_bytes(),
        hold_for_queue_id: hold.map(str::to_string),
    }
}

async fn idempotent_record_returns_same_result(db: &TestDb) {
    let store = db.open().await;
    let rec = Record {
        event: event(1, t0()),
        outbox: vec![
            outbox_msg("accettazione", Some("Q0001")),
            outbox_msg("posta-certificata", None),
        ],
        state: vec![],
        idempotency_key: Some("acc:Q0001".into()),
    };
    let first = store.record(&rec, t0()).await.unwrap();
    assert!(!first.replayed);
    assert_eq!(first.outbox_ids.len(), 2);
    let again = store
        .record(&rec, t0() + chrono::Duration::seconds(30))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(
        (again.seq, &again.outbox_ids),
        (first.seq, &first.outbox_ids)
    );
    assert_eq!(store.backend().chain_head().await.unwrap().0, 1);
    let other = Record {
        idempotency_key: Some("acc:Q0002".into()),
        ..rec.clone()
    };
    assert_eq!(store.record(&other, t0()).await.unwrap().seq, 2);
    // Concurrent replays from two handles (two hosts) still write once.
    let store2 = db.open().await.with_host("host-b");
    let r3 = Record {
        idempotency_key: Some("consegna:x:y".into()),
        ..rec.clone()
    };
    let (a, b) = tokio::join!(store.record(&r3, t0()), store2.record(&r3, t0()));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.seq, b.seq);
    assert!(a.replayed ^ b.replayed);
    assert!(store.verify(None, &[]).await.unwrap().ok());
}

/// Many callers at once (the SQLite backend commits them in groups): each record is written
/// once, in one chain, with its outbox row; callers sharing an idempotency key, even in the
/// same group, get the same row, exactly one of them as the writer.
async fn concurrent_records_each_durable_once(db: &TestDb) {
    let store = db.open().await;
    let mut tasks = Vec::new();
    for i in 0..60usize {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = i % 40;
            let rec = Record {
                event: event(key + 1, t0()),
                outbox: vec![outbox_msg("accettazione", None)],
                state: vec![],
                idempotency_key: Some(format!("acc:K{key}")),
            };
            (key, store.record(&rec, t0()).await.unwrap())
        }));
    }
    let mut by_key: std::collections::BTreeMap<usize, Vec<RecordOutcome>> = Default::default();
    for t in tasks {
        let (key, o) = t.await.unwrap();
        by_key.entry(key).or_default().push(o);
    }
    assert_eq!(by_key.len(), 40);
    let mut seqs = std::collections::BTreeSet::new();
    for (key, outcomes) in &by_key {
        assert_eq!(outcomes.iter().filter(|o| !o.replayed).count(), 1, "key {key}: one writer");
        assert!(outcomes.iter().all(|o| o.seq == outcomes[0].seq && o.outbox_ids == outcomes[0].outbox_ids), "key {key}");
        assert_eq!(outcomes[0].outbox_ids.len(), 1);
        seqs.insert(outcomes[0].seq);
    }
    assert_eq!(seqs, (1..=40).collect(), "one row per key, contiguous");
    assert_eq!(store.backend().chain_head().await.unwrap().0, 40);
    assert!(store.verify(None, &[]).await.unwrap().ok());
    // Every row is durable: a second handle (another connection) reads all of them.
    let other = db.open().await;
    assert_eq!(other.backend().chain_head().await.unwrap().0, 40);
}

async fn outbox_lease_backoff_and_hold(db: &TestDb) {
    let store = db.open().await;
    let b = store.backend();
    let rec = Record {
        event: event(1, t0()),
        outbox: vec![
            outbox_msg("posta-certificata", None),
            outbox_msg("accettazione", Some("QHELD")),
        ],
        state: vec![],
        idempotency_key: None,
    };
    let out = store.record(&rec, t0()).await.unwrap();
    let lease = Duration::from_secs(60);
    let got = b.outbox_claim("w1", t0(), lease, 10).await.unwrap();
    assert_eq!(
        got.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![out.outbox_ids[0]],
        "held one is not due"
    );
    assert_eq!(got[0].attempts, 1);
    assert_eq!(
        got[0].message,
        b"Subject: posta-certificata\r\n\r\nbody\r\n"
    );
    assert!(
        b.outbox_claim("w2", t0(), lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );
    // w1 dies; after the lease w2 gets it, and w1 can no longer mark it.
    let later = t0() + chrono::Duration::seconds(61);
    let got2 = b.outbox_claim("w2", later, lease, 10).await.unwrap();
    assert_eq!((got2.len(), got2[0].attempts), (1, 2));
    assert!(!b.outbox_mark_sent(got2[0].id, "w1", later).await.unwrap());
    // A retry waits for its time.
    let retry_at = later + chrono::Duration::seconds(120);
    assert!(
        b.outbox_mark_failed(got2[0].id, "w2", "451 try later", Some(retry_at))
            .await
            .unwrap()
    );
    assert!(
        b.outbox_claim("w2", later, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let got3 = b.outbox_claim("w2", retry_at, lease, 10).await.unwrap();
    assert_eq!(got3.len(), 1);
    assert!(
        b.outbox_mark_sent(got3[0].id, "w2", retry_at)
            .await
            .unwrap()
    );
    let m = b.outbox_get(got3[0].id).await.unwrap().unwrap();
    assert_eq!(
        (m.status, m.attempts, m.last_error),
        (OutboxStatus::Sent, 3, None)
    );
    assert!(
        b.outbox_claim("w2", retry_at + chrono::Duration::days(1), lease, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // decisions.md 18: released by queue id, or cancelled.
    assert_eq!(b.outbox_release_held("host-a", "QOTHER", later).await.unwrap(), 0);
    assert_eq!(b.outbox_release_held("host-a", "QHELD", later).await.unwrap(), 1);
    let held = b.outbox_claim("w1", later, lease, 10).await.unwrap();
    assert_eq!(
        held.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![out.outbox_ids[1]]
    );
    let rec2 = Record {
        outbox: vec![outbox_msg("accettazione", Some("QGONE"))],
        ..rec.clone()
    };
    let out2 = store.record(&rec2, t0()).await.unwrap();
    assert_eq!(
        b.outbox_cancel_held("host-a", "QGONE", "postfix refused the message")
            .await
            .unwrap(),
        1
    );
    assert_eq!(b.outbox_release_held("host-a", "QGONE", later).await.unwrap(), 0);
    let m = b.outbox_get(out2.outbox_ids[0]).await.unwrap().unwrap();
    assert_eq!(m.status, OutboxStatus::Cancelled);

    // Several queue ids released at once (one read of the mail log): each its own count,
    // a cancelled one stays cancelled.
    let mut ids = Vec::new();
    for q in ["QA", "QB"] {
        let r = Record { outbox: vec![outbox_msg("accettazione", Some(q))], idempotency_key: None, ..rec.clone() };
        ids.push(store.record(&r, t0()).await.unwrap().outbox_ids[0]);
    }
    let qs = ["QA", "QGONE", "QB", "QNONE"].map(String::from);
    assert_eq!(b.outbox_release_held_many("host-a", &qs, later).await.unwrap(), vec![1, 0, 1, 0]);
    for id in ids {
        assert_eq!(b.outbox_get(id).await.unwrap().unwrap().status, OutboxStatus::Pending);
    }
    assert_eq!(b.outbox_get(out2.outbox_ids[0]).await.unwrap().unwrap().status, OutboxStatus::Cancelled);

    // Postfix queue ids are unique per host only. Two hosts sharing the registry each hold
    // a receipt for queue id QTWIN: each lists, releases and cancels only its own (another
    // host's mail log says nothing of this host's messages).
    let other = db.open().await.with_host("host-b");
    let twin = |host_store: &Store| {
        let r = Record { outbox: vec![outbox_msg("accettazione", Some("QTWIN"))], idempotency_key: None, ..rec.clone() };
        let host_store = host_store.clone();
        async move { host_store.record(&r, t0()).await.unwrap().outbox_ids[0] }
    };
    let (mine, theirs) = (twin(&store).await, twin(&other).await);
    let held = |host: &'static str| {
        let b = store.backend();
        async move { b.outbox_held_queue_ids(host).await.unwrap().into_iter().map(|(q, _)| q).collect::<Vec<_>>() }
    };
    assert_eq!(held("host-a").await, ["QTWIN"]);
    assert_eq!(held("host-b").await, ["QTWIN"]);
    assert_eq!(b.outbox_cancel_held("host-b", "QTWIN", "refused on host-b").await.unwrap(), 1);
    assert_eq!(b.outbox_get(mine).await.unwrap().unwrap().status, OutboxStatus::Held);
    assert_eq!(b.outbox_get(theirs).await.unwrap().unwrap().status, OutboxStatus::Cancelled);
    assert!(held("host-b").await.is_empty());
    assert_eq!(b.outbox_release_held_many("host-b", &["QTWIN".to_string()], later).await.unwrap(), vec![0]);
    assert_eq!(b.outbox_get(mine).await.unwrap().unwrap().status, OutboxStatus::Held);
    assert_eq!(b.outbox_release_held("host-a", "QTWIN", later).await.unwrap(), 1);
    assert_eq!(b.outbox_get(mine).await.unwrap().unwrap().status, OutboxStatus::Pending);
}

/// Fails the first `fail` submissions, then accepts; counts every call per message.
struct FakeSubmitter {
    fail: usize,
    temporary: bool,
    calls: AtomicUsize,
    seen: std::sync::Mutex<Vec<Vec<u8>>>,
    envelopes: std::sync::Mutex<Vec<(String, Vec<String>)>>,
}

#[async_trait]
impl Submitter for FakeSubmitter {
    async fn submit(
        &self,
        from: &str,
        rcpts: &[String],
        message: &[u8],
    ) -> Result<(), SubmitError> {
        self.envelopes.lock().unwrap().push((from.to_string(), rcpts.to_vec()));
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.fail {
            return Err(SubmitError {
                temporary: self.temporary,
                message: format!("451 busy ({n})"),
            });
        }
        self.seen.lock().unwrap().push(message.to_vec());
        Ok(())
    }
}

fn fake(fail: usize, temporary: bool) -> FakeSubmitter {
    FakeSubmitter {
        fail,
        temporary,
        calls: AtomicUsize::new(0),
        seen: Default::default(),
        envelopes: Default::default(),
    }
}

/// An [`Observer`] that keeps what the store told it.
#[derive(Default)]
struct Told(std::sync::Mutex<Vec<String>>);

impl Observer for Told {
    fn outbox_recorded(&self, kind: &str) {
        self.0.lock().unwrap().push(format!("recorded {kind}"));
    }
    fn timer_notice_recorded(&self, deadline: &str) {
        self.0.lock().unwrap().push(format!("notice {deadline}"));
    }
    fn outbox_row_refused(&self, reason: &str) {
        self.0.lock().unwrap().push(format!("refused {reason}"));
    }
}

impl Told {
    fn take(&self) -> Vec<String> {
        let mut v = std::mem::take(&mut *self.0.lock().unwrap());
        v.sort();
        v
    }
}

/// Issue 13: whoever can write the (shared) registry must not be able to have pecora inject
/// a message. Rows written with SQL, as an attacker with database access would, are never
/// handed to the injector and end up failed with the reason; pecora's own row goes out.
async fn outbox_injects_only_sealed_rows(db: &TestDb) {
    let key = pecora::store::seal::OutboxKey::from_signer(&keys_once().signer).unwrap();
    // The observer (the daemon's metrics) is told what is recorded and what is refused.
    let told = Arc::new(Told::default());
    let store = db.open().await.with_outbox_key(key).with_observer(told.clone());
    let rec = Record {
        event: event(1, t0()),
        outbox: vec![outbox_msg("accettazione", None), outbox_msg("redirect", None)],
        state: vec![],
        idempotency_key: None,
    };
    let ids = store.record(&rec, t0()).await.unwrap().outbox_ids;
    assert_eq!(told.take(), ["recorded accettazione", "recorded redirect"]);
    let (genuine, changed) = (ids[0], ids[1]);
    assert!(store.backend().outbox_get(genuine).await.unwrap().unwrap().seal.is_some());
    // A new row without a seal, to a victim's PEC mailbox...
    let copy = |seal: &str| {
        format!(
            "INSERT INTO outbox_messages (event_seq, kind, mail_from, rcpts, message, status, attempts, \
             next_attempt_at, created_at, seal) SELECT event_seq, kind, mail_from, '[\"vittima@pec.example.it\"]', \
             message, 'pending', 0, next_attempt_at, created_at, {seal} FROM outbox_messages WHERE id = {genuine};"
        )
    };
    db.tamper(&copy("NULL"));
    // ...one carrying the seal of a genuine row (for other recipients)...
    db.tamper(&copy("seal"));
    // ...and a genuine row whose recipients were changed after it was queued.
    db.tamper(&format!(
        "UPDATE outbox_messages SET rcpts = '[\"vittima@pec.example.it\"]' WHERE id = {changed};"
    ));
    let w = OutboxWorker::new(store.clone(), fake(0, true), "host-a/1");
    let r = w.run_once(t0() + chrono::Duration::seconds(1)).await.unwrap();
    assert_eq!((r.claimed, r.sent, r.refused, r.failed, r.retried), (4, 1, 3, 0, 0), "{r:?}");
    assert_eq!(told.take(), ["refused bad-seal", "refused bad-seal", "refused unsealed"]);
    let sent = w.submitter().envelopes.lock().unwrap().clone();
    assert_eq!(
        sent,
        vec![("posta-certificata@pec.example.it".to_string(), vec!["sender1@pec.example.it".to_string()])]
    );
    let out = db.tamper("SELECT id, status, last_error FROM outbox_messages ORDER BY id;");
    let rows: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(rows.len(), 4, "{out}");
    let m = store.backend().outbox_get(genuine).await.unwrap().unwrap();
    assert_eq!(m.status, OutboxStatus::Sent);
    let m = store.backend().outbox_get(changed).await.unwrap().unwrap();
    assert_eq!(m.status, OutboxStatus::Failed);
    assert!(m.last_error.as_deref().unwrap().contains("its seal does not match"), "{m:?}");
    for id in [changed + 1, changed + 2] {
        let m = store.backend().outbox_get(id).await.unwrap().unwrap();
        assert_eq!(m.status, OutboxStatus::Failed, "{m:?}");
        assert!(m.last_error.as_deref().unwrap().starts_with("not injected: "), "{m:?}");
    }
    assert!(
        store.backend().outbox_get(changed + 1).await.unwrap().unwrap().last_error.unwrap().contains("carries no seal")
    );
    // Failed for good: a later pass does not try them again.
    let r = w.run_once(t0() + chrono::Duration::seconds(3600)).await.unwrap();
    assert_eq!(r.claimed, 0);
    assert_eq!(w.submitter().calls.load(Ordering::SeqCst), 1);
}

/// Event `i` with its one acceptance to send.
fn one_acceptance(i: usize) -> Record {
    Record { event: event(i, t0()), outbox: vec![outbox_msg("accettazione", None)], state: vec![], idempotency_key: None }
}

/// After the signing key changes, the rows the old key sealed are still queued: they go out
/// when the old key is among the previous ones (a reload keeps the key it replaces; a restart
/// reads `keys.previous_private_keys`), and are refused like forgeries when it is not. New
/// rows are sealed with the new key, by every clone of the store once one of them rotated. A
/// reload revokes a previous key the configuration no longer lists.
async fn a_new_signing_key_still_sends_what_the_old_one_sealed(db: &TestDb) {
    use pecora::store::seal::{OutboxKey, OutboxKeys};
    let (old, new) = (OutboxKey::from_bytes([1; 32]), OutboxKey::from_bytes([2; 32]));
    let rec = one_acceptance;
    let later = t0() + chrono::Duration::seconds(1);
    // Queued under the old key; the daemon restarts with the new one and the old one listed.
    let before = db.open().await.with_outbox_key(old.clone());
    before.record(&rec(1), t0()).await.unwrap();
    let after = db.open().await.with_outbox_keys(OutboxKeys::new(new.clone(), vec![old.clone()]));
    let w = OutboxWorker::new(after.clone(), fake(0, true), "host-a/1");
    let r = w.run_once(later).await.unwrap();
    assert_eq!((r.claimed, r.sent, r.refused), (1, 1, 0), "{r:?}");
    // Queued under the old key; the daemon restarts without it: refused, never injected.
    before.record(&rec(2), t0()).await.unwrap();
    let forgot = db.open().await.with_outbox_key(new.clone());
    let w2 = OutboxWorker::new(forgot.clone(), fake(0, true), "host-a/1");
    let r = w2.run_once(later).await.unwrap();
    assert_eq!((r.claimed, r.sent, r.refused), (1, 0, 1), "{r:?}");
    assert_eq!(w2.submitter().calls.load(Ordering::SeqCst), 0);
    // A reload that brings the new key, told to one clone: the other clone (the milter's)
    // seals with it too, and a worker that knows only the new key injects that row.
    let milter = before.clone();
    assert_eq!(before.rotate_outbox_key(new.clone(), vec![]), (true, 0));
    assert_eq!(before.rotate_outbox_key(new.clone(), vec![]), (false, 0), "the same key again is no change");
    milter.record(&rec(3), t0()).await.unwrap();
    let r = w2.run_once(later).await.unwrap();
    assert_eq!((r.claimed, r.sent, r.refused), (1, 1, 0), "{r:?}");
    // And the rotated handle still accepts what its old key sealed (queued by another
    // process that has not reloaded yet).
    db.open().await.with_outbox_key(old.clone()).record(&rec(4), t0()).await.unwrap();
    let w3 = OutboxWorker::new(milter.clone(), fake(0, true), "host-a/1");
    let r = w3.run_once(later).await.unwrap();
    assert_eq!((r.claimed, r.sent, r.refused), (1, 1, 0), "{r:?}");
    // A process started with the old key listed as previous, which a reload then no longer
    // lists (it leaked, say): the old key is revoked at once, and what it seals is refused.
    let listed = db.open().await.with_outbox_keys(OutboxKeys::new(new.clone(), vec![old.clone()]));
    assert_eq!(listed.rotate_outbox_key(new.clone(), vec![]), (false, 1));
    db.open().await.with_outbox_key(old.clone()).record(&rec(5), t0()).await.unwrap();
    let w4 = OutboxWorker::new(listed.clone(), fake(0, true), "host-a/1");
    let r = w4.run_once(later).await.unwrap();
    assert_eq!((r.claimed, r.sent, r.refused), (1, 0, 1), "{r:?}");
    assert_eq!(w4.submitter().calls.load(Ordering::SeqCst), 0);
}

/// `pecora outbox retry`: a failed row goes back to the queue only when a configured key
/// verifies its seal (then it is sealed again with the current key); nothing but failed
/// rows is retried.
async fn failed_rows_are_retried_only_when_sealed_by_pecora(db: &TestDb) {
    use pecora::store::RetryOutcome;
    use pecora::store::seal::{OutboxKey, OutboxKeys};
    let (old, new) = (OutboxKey::from_bytes([1; 32]), OutboxKey::from_bytes([2; 32]));
    let rec = one_acceptance;
    let later = t0() + chrono::Duration::seconds(1);
    // Two rows sealed by the old key, refused by a worker that knows only the new one.
    let before = db.open().await.with_outbox_key(old.clone());
    let a = before.record(&rec(1), t0()).await.unwrap().outbox_ids[0];
    let b = before.record(&rec(2), t0()).await.unwrap().outbox_ids[0];
    let store = db.open().await.with_outbox_key(new.clone());
    let w = OutboxWorker::new(store.clone(), fake(0, true), "host-a/1");
    assert_eq!(w.run_once(later).await.unwrap().refused, 2);
    let failed = store.backend().outbox_with_status(OutboxStatus::Failed, 10).await.unwrap();
    assert_eq!(failed.iter().map(|m| m.id).collect::<Vec<_>>(), vec![b, a], "newest first");
    // A listing never loads the messages (a completa receipt carries a 50 MB original).
    assert!(failed.iter().all(|m| m.message.is_empty() && m.kind == "accettazione"), "{failed:?}");
    assert!(!store.backend().outbox_get(a).await.unwrap().unwrap().message.is_empty());
    let refused = store.backend().outbox_refused_since(t0()).await.unwrap();
    assert_eq!(refused.len(), 2);
    assert!(store.backend().outbox_refused_since(t0() + chrono::Duration::days(1)).await.unwrap().is_empty());
    // Without the old key: not retried. With it: queued again, and a worker that knows
    // only the new key injects it (sealed again).
    assert!(matches!(store.outbox_retry(a, later).await.unwrap(), RetryOutcome::Unsealed));
    let operator = db.open().await.with_outbox_keys(OutboxKeys::new(new.clone(), vec![old.clone()]));
    assert!(matches!(operator.outbox_retry(a, later).await.unwrap(), RetryOutcome::Queued(m) if m.id == a));
    assert!(matches!(operator.outbox_retry(a, later).await.unwrap(), RetryOutcome::NotFailed(OutboxStatus::Pending)));
    assert!(matches!(operator.outbox_retry(9999, later).await.unwrap(), RetryOutcome::NotFound));
    let m = store.backend().outbox_get(a).await.unwrap().unwrap();
    assert_eq!((m.status, m.attempts, m.last_error.as_deref()), (OutboxStatus::Pending, 1, None));
    let r = w.run_once(later + chrono::Duration::seconds(1)).await.unwrap();
    assert_eq!((r.claimed, r.sent, r.refused), (1, 1, 0), "{r:?}");
    assert_eq!(store.backend().outbox_get(b).await.unwrap().unwrap().status, OutboxStatus::Failed);
    // A row changed after it failed: its seal no longer matches, whatever key is listed.
    db.tamper(&format!("UPDATE outbox_messages SET rcpts = '[\"vittima@pec.example.it\"]' WHERE id = {b};"));
    assert!(matches!(operator.outbox_retry(b, later).await.unwrap(), RetryOutcome::Unsealed));
}

/// At the upgrade to seals, the daemon that migrates seals what the older version left in
/// the outbox (pending or held), so those receipts still go out; an unsealed row added
/// after that is refused.
async fn rows_of_the_previous_version_are_sealed_at_upgrade(db: &TestDb) {
    let key = || pecora::store::seal::OutboxKey::from_signer(&keys_once().signer).unwrap();
    let store = db.open().await;
    let rec = Record {
        event: event(1, t0()),
        outbox: vec![outbox_msg("accettazione", None), outbox_msg("accettazione", Some("4ABC"))],
        state: vec![],
        idempotency_key: None,
    };
    let ids = store.record(&rec, t0()).await.unwrap().outbox_ids;
    drop(store);
    // The database as the previous version left it: schema 1, no seal column.
    db.tamper("DELETE FROM schema_migrations WHERE version = 2; ALTER TABLE outbox_messages DROP COLUMN seal;");
    let store = db.open().await.with_outbox_key(key());
    assert_eq!(store.backend().migrated_from(), 1);
    assert_eq!(store.seal_unsealed().await.unwrap(), 2);
    assert_eq!(store.seal_unsealed().await.unwrap(), 0);
    // A store opened later (schema already 2) seals nothing, even rows without a seal.
    db.tamper(&format!(
        "INSERT INTO outbox_messages (event_seq, kind, mail_from, rcpts, message, status, attempts, \
         next_attempt_at, created_at) SELECT event_seq, kind, mail_from, rcpts, message, 'pending', 0, \
         next_attempt_at, created_at FROM outbox_messages WHERE id = {};",
        ids[0]
    ));
    let later = db.open().await.with_outbox_key(key());
    assert_eq!(later.seal_unsealed().await.unwrap(), 0);
    assert_eq!(store.backend().outbox_release_held("host-a", "4ABC", t0()).await.unwrap(), 1);
    let w = OutboxWorker::new(later.clone(), fake(0, true), "host-a/1");
    let r = w.run_once(t0() + chrono::Duration::seconds(1)).await.unwrap();
    assert_eq!((r.claimed, r.sent, r.refused), (3, 2, 1), "{r:?}");
}

/// One signing identity for the whole test binary (making keys is slow).
fn keys_once() -> &'static Keys {
    static K: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
    K.get_or_init(keys)
}

async fn worker_retries_with_fake_submitter(db: &TestDb) {
    let store = db.open().await;
    let rec = Record {
        event: event(1, t0()),
        outbox: vec![outbox_msg("accettazione", None)],
        state: vec![],
        idempotency_key: None,
    };
    let id = store.record(&rec, t0()).await.unwrap().outbox_ids[0];
    let backoff = Backoff {
        base: Duration::from_secs(10),
        cap: Duration::from_secs(15),
        max_attempts: 10,
    };
    let w = OutboxWorker::new(store.clone(), fake(3, true), "host-a/1").with_backoff(backoff);
    let s = |n: i64| t0() + chrono::Duration::seconds(n);
    assert_eq!(w.run_once(s(0)).await.unwrap().retried, 1);
    assert_eq!(w.run_once(s(9)).await.unwrap().claimed, 0, "backoff 10 s");
    assert_eq!(w.run_once(s(10)).await.unwrap().retried, 1);
    assert_eq!(
        w.run_once(s(24)).await.unwrap().claimed,
        0,
        "backoff 20 s capped at 15 s"
    );
    assert_eq!(w.run_once(s(25)).await.unwrap().retried, 1);
    let r = w.run_once(s(40)).await.unwrap();
    assert_eq!((r.sent, r.retried), (1, 0));
    assert_eq!(w.submitter().calls.load(Ordering::SeqCst), 4);
    let m = store.backend().outbox_get(id).await.unwrap().unwrap();
    assert_eq!((m.status, m.attempts), (OutboxStatus::Sent, 4));

    // A permanent refusal is final at once.
    let id2 = store.record(&rec, t0()).await.unwrap().outbox_ids[0];
    let w = OutboxWorker::new(store.clone(), fake(1, false), "host-a/2");
    assert_eq!(w.run_once(s(100)).await.unwrap().failed, 1);
    let m = store.backend().outbox_get(id2).await.unwrap().unwrap();
    assert_eq!(m.status, OutboxStatus::Failed);
    assert_eq!(m.last_error.as_deref(), Some("451 busy (0)"));
}

async fn concurrent_workers_never_share_a_message(db: &TestDb) {
    let store = db.open().await;
    let n = 60;
    for i in 0..n {
        let rec = Record {
            event: event(i, t0()),
            outbox: vec![NewOutboxMessage {
                message: format!("msg {i}").into_bytes(),
                ..outbox_msg("x", None)
            }],
            state: vec![],
            idempotency_key: None,
        };
        store.record(&rec, t0()).await.unwrap();
    }
    let store_b = db.open().await.with_host("host-b");
    let wa = Arc::new(OutboxWorker::new(store.clone(), fake(0, true), "host-a/1").with_batch(3));
    let wb = Arc::new(OutboxWorker::new(store_b, fake(0, true), "host-b/1").with_batch(3));
    let spin = |w: Arc<OutboxWorker<FakeSubmitter>>| {
        tokio::spawn(async move {
            while w.run_once(t0()).await.unwrap().claimed > 0 {
                tokio::task::yield_now().await;
            }
        })
    };
    let (a, b) = tokio::join!(spin(wa.clone()), spin(wb.clone()));
    a.unwrap();
    b.unwrap();
    let mut all: Vec<Vec<u8>> = wa.submitter().seen.lock().unwrap().clone();
    all.extend(wb.submitter().seen.lock().unwrap().iter().cloned());
    assert_eq!(all.len(), n, "every message exactly once");
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "no message submitted twice");
}

async fn leader_takeover(db: &TestDb) {
    let store = db.open().await;
    let a = store
        .try_lead("timers")
        .await
        .unwrap()
        .expect("first leader");
    assert!(a.still_leader().await);
    assert!(
        store.try_lead("timers").await.unwrap().is_none(),
        "only one leader"
    );
    assert!(
        store.try_lead("retention").await.unwrap().is_some(),
        "another name is another lock"
    );
    if let (TestDb::Pg { server, db: name }, Some(pid)) = (db, a.backend_pid().await) {
        // The first host dies: its connection goes away.
        server.psql(name, &format!("SELECT pg_terminate_backend({pid})"));
        let mut b = None;
        for _ in 0..50 {
            b = store.try_lead("timers").await.unwrap();
            if b.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let b = b.expect("second host takes over");
        assert!(b.still_leader().await);
        assert!(!a.still_leader().await, "the dead one knows it lost");
        drop(b);
    } else {
        assert!(!db.is_pg());
    }
    drop(a);
    // The lock goes with the leader's connection, which a dropped leader closes in the
    // background: allow it a moment.
    let mut c = None;
    for _ in 0..50 {
        c = store.try_lead("timers").await.unwrap();
        if c.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.is_some(), "dropping the leader frees the lock");
}

async fn retention_keeps_chain_verifiable(db: &TestDb) {
    let keys = keys();
    let store = db.open().await;
    let old = t0();
    fill(&store, 4, old).await;
    let export = tempfile::tempdir().unwrap();
    store
        .checkpoint(&keys.signer, old, Some(export.path()))
        .await
        .unwrap();
    let qdir = tempfile::tempdir().unwrap();
    let qfile = qdir.path().join("virus.eml");
    std::fs::write(&qfile, b"X").unwrap();
    store
        .backend()
        .quarantine_add(
            &NewQuarantine {
                pec_id: Some("v@x.it".into()),
                reason: "virus".into(),
                path: Some(qfile.display().to_string()),
                content: None,
            },
            old,
        )
        .await
        .unwrap();
    let young = old + chrono::Duration::days(31 * 30);
    fill(&store, 3, young).await;
    let retention = Duration::from_secs(913 * 86_400); // 30 months
    let now = young + chrono::Duration::days(1);
    let report = store
        .purge(&keys.signer, now, retention, Some(export.path()))
        .await
        .unwrap();
    assert_eq!(
        (report.cut_seq, report.events, report.quarantine),
        (4, 4, 1)
    );
    assert!(!qfile.exists(), "quarantined file removed");
    let files = checkpoint::load_dir(export.path()).unwrap();
    let v = CheckpointVerifier::new(vec![keys.signer.certificate().clone()]);
    let r = store.verify(Some(&v), &files).await.unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!((r.anchor_seq, r.first_seq, r.last_seq), (4, Some(5), 8));
    let (code, out) = cli(
        verify_cmd(),
        &ctx(db, &keys, Some(export.path().to_path_buf())),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    // Nothing more to purge now.
    assert_eq!(
        store
            .purge(&keys.signer, now, retention, None)
            .await
            .unwrap()
            .cut_seq,
        0
    );
    // Deleting the oldest retained row looks like nothing the retention job did.
    db.tamper("DELETE FROM registry_events WHERE seq = 5");
    assert_eq!(
        problem(&store, &keys, &files).await,
        Some(Problem::HeadMissing { first_retained: 6 })
    );
}

async fn timer_queries(db: &TestDb) {
    let store = db.open().await;
    let pec = "pecora.t1@pec.example.it".to_string();
    let rcpt = |a: &str, kind| Recipient {
        address: a.into(),
        kind,
    };
    let accepted = StateUpdate::Accepted {
        pec_id: pec.clone(),
        client_msgid: Some("c1@x.it".into()),
        sender: "s@pec.example.it".into(),
        subject: Some("oggetto".into()),
        queue_id: Some("QT1".into()),
        event_time: t0().fixed_offset(),
        recipients: vec![
            rcpt("a@pec.other.it", RecipientType::Certificato),
            rcpt("b@pec.other.it", RecipientType::Certificato),
            rcpt("c@pec.other.it", RecipientType::Certificato),
            rcpt("ext@gmail.example", RecipientType::Esterno),
        ],
    };
    let upd = |state: Vec<StateUpdate>, at| {
        let store = store.clone();
        async move {
            let rec = Record {
                event: event(1, at),
                outbox: vec![],
                state,
                idempotency_key: None,
            };
            store.record(&rec, at).await.unwrap()
        }
    };
    upd(
        vec![
            accepted,
            StateUpdate::EnvelopeSent {
                pec_id: pec.clone(),
                at: t0(),
            },
        ],
        t0(),
    )
    .await;
    let h = |n: i64| t0() + chrono::Duration::hours(n);
    let names = |v: Vec<DueNotice>| v.into_iter().map(|d| d.recipient).collect::<Vec<_>>();
    let twelve = Duration::from_secs(12 * 3600);
    let min24 = Duration::from_secs(22 * 3600);
    assert!(
        store
            .due_notices(NoticeKind::TwelveHours, h(11), twelve)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        names(
            store
                .due_notices(NoticeKind::TwelveHours, h(12), twelve)
                .await
                .unwrap()
        ),
        ["a@pec.other.it", "b@pec.other.it", "c@pec.other.it"],
        "esterno never"
    );
    let r = upd(
        vec![
            StateUpdate::TakenInCharge {
                pec_id: pec.clone(),
                recipient: "A@pec.other.it".into(),
                at: h(1),
            },
            StateUpdate::Failed {
                pec_id: pec.clone(),
                recipient: "c@pec.other.it".into(),
                at: h(2),
                reason: "no-dest".into(),
            },
            StateUpdate::Delivered {
                pec_id: "unknown@x.it".into(),
                recipient: "a@x.it".into(),
                at: h(2),
            },
        ],
        h(2),
    )
    .await;
    assert_eq!(r.unmatched_updates, 1);
    let due = store
        .due_notices(NoticeKind::TwelveHours, h(12), twelve)
        .await
        .unwrap();
    assert_eq!(names(due.clone()), ["b@pec.other.it"]);
    assert_eq!(
        (due[0].sender.as_str(), due[0].subject.as_deref()),
        ("s@pec.example.it", Some("oggetto"))
    );
    upd(
        vec![StateUpdate::NoticeSent {
            pec_id: pec.clone(),
            recipient: "b@pec.other.it".into(),
            notice: NoticeKind::TwelveHours,
            at: h(12),
        }],
        h(12),
    )
    .await;
    assert!(
        store
            .due_notices(NoticeKind::TwelveHours, h(13), twelve)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .due_notices(NoticeKind::TwentyFourHours, h(21), min24)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        names(
            store
                .due_notices(NoticeKind::TwentyFourHours, h(22), min24)
                .await
                .unwrap()
        ),
        ["a@pec.other.it", "b@pec.other.it"]
    );
    upd(
        vec![StateUpdate::Delivered {
            pec_id: pec.clone(),
            recipient: "a@pec.other.it".into(),
            at: h(20),
        }],
        h(20),
    )
    .await;
    upd(
        vec![StateUpdate::NoticeSent {
            pec_id: pec.clone(),
            recipient: "b@pec.other.it".into(),
            notice: NoticeKind::TwentyFourHours,
            at: h(24),
        }],
        h(24),
    )
    .await;
    assert!(
        store
            .due_notices(NoticeKind::TwentyFourHours, h(30), min24)
            .await
            .unwrap()
            .is_empty()
    );
    let t = store
        .backend()
        .transaction(&format!("<{pec}>"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.recipients.len(), 4);
    let a = &t.recipients[0];
    assert_eq!(a.taken_in_charge_at.as_deref(), Some(ts(h(1)).as_str()));
    assert!(a.delivered_at.is_some());
    assert_eq!(t.recipients[2].failure.as_deref(), Some("no-dest"));
}

async fn search_show_and_unique_ids(db: &TestDb) {
    let keys = keys();
    let store = db.open().await;
    fill(&store, 3, t0()).await;
    let mut later = event(2, t0());
    later.event_type = EventType::DeliveryReceiptReceived;
    later.event_time = (t0() + chrono::Duration::days(2)).fixed_offset();
    later.generated_ids = vec![];
    store.append(later, t0()).await.unwrap();
    let q = |f: fn(&mut SearchQuery)| {
        let mut q = SearchQuery {
            limit: 100,
            ..Default::default()
        };
        f(&mut q);
        q
    };
    let seqs = |v: Vec<EventRow>| v.into_iter().map(|r| r.seq).collect::<Vec<_>>();
    let b = store.backend();
    assert_eq!(seqs(b.search(&q(|_| {})).await.unwrap()), [4, 3, 2, 1]);
    assert_eq!(
        seqs(
            b.search(&q(|q| q.sender = Some("sender2@PEC.example.it".into())))
                .await
                .unwrap()
        ),
        [4, 2]
    );
    assert_eq!(
        seqs(
            b.search(&q(|q| q.recipient = Some("RCPT3@pec.other.it".into())))
                .await
                .unwrap()
        ),
        [3]
    );
    assert_eq!(
        seqs(
            b.search(&q(|q| q.subject = Some("n. 1".into())))
                .await
                .unwrap()
        ),
        [1]
    );
    assert_eq!(
        seqs(
            b.search(&q(|q| q.pec_id = Some("<pecora.3@pec.example.it>".into())))
                .await
                .unwrap()
        ),
        [3]
    );
    assert_eq!(
        seqs(
            b.search(&q(|q| q.client_msgid = Some("client-1@example.it".into())))
                .await
                .unwrap()
        ),
        [1]
    );
    let from = t0() + chrono::Duration::days(1);
    assert_eq!(
        seqs(
            b.search(&q(|q| q.from = Some(t0() + chrono::Duration::days(1))))
                .await
                .unwrap()
        ),
        [4]
    );
    let _ = from;
    assert_eq!(
        seqs(
            b.search(&q(|q| q.subject = Some("%".into())))
                .await
                .unwrap()
        ),
        Vec::<i64>::new()
    );

    assert_eq!(
        seqs(store.history("client-2@example.it").await.unwrap()),
        [2, 4]
    );
    assert_eq!(
        seqs(store.history("<acc-1@pec.example.it>").await.unwrap()),
        [1]
    );
    assert_eq!(seqs(store.history("Q0003").await.unwrap()), [3]);

    let c = ctx(db, &keys, None);
    let (code, out) = cli(
        LogCommand::Show {
            id: "pecora.2@pec.example.it".into(),
            json: false,
        },
        &c,
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        out.contains("#4 04/03/2026 09:00:00 +0000  delivery-receipt-received"),
        "{out}"
    );
    let (code, _) = cli(
        LogCommand::Show {
            id: "nothing@x.it".into(),
            json: false,
        },
        &c,
    )
    .await;
    assert_eq!(code, 1);
    let search = |json| LogCommand::Search {
        pec_id: None,
        msgid: None,
        sender: None,
        recipient: Some("shared@pec.other.it".into()),
        subject: None,
        from: None,
        until: None,
        limit: 50,
        json,
    };
    let (code, out) = cli(search(false), &c).await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 3, "three transactions: {out}");
    assert!(
        out.lines()
            .next()
            .unwrap()
            .contains("acceptance > delivery-receipt-received"),
        "{out}"
    );
    let (_, out) = cli(search(true), &c).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert_eq!(v[0]["pec_id"], "pecora.2@pec.example.it");

    let other = db.open().await.with_host("host-b");
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(store.backend().next_unique().await.unwrap());
        ids.push(other.backend().next_unique().await.unwrap());
    }
    let mut d = ids.clone();
    d.sort();
    d.dedup();
    assert_eq!(d.len(), ids.len());

    // An unreadable registry is exit 2.
    let bad = LogContext {
        store_url: "mysql://x".into(),
        ..c.clone()
    };
    assert_eq!(cli(verify_cmd(), &bad).await.0, 2);
}

/// The reconciliation sweep's query: one type, a recording-time window, paged by seq.
async fn events_of_one_type_by_recording_time(db: &TestDb) {
    let store = db.open().await;
    let hour = chrono::Duration::hours(1);
    for i in 1..=5 {
        let mut e = event(i, t0());
        if i % 2 == 0 {
            e.event_type = EventType::TakeChargeEmitted;
        }
        store.append(e, t0() + hour * i as i32).await.unwrap();
    }
    let b = store.backend();
    let seqs = |v: Vec<EventRow>| v.into_iter().map(|r| r.seq).collect::<Vec<_>>();
    let take = EventType::TakeChargeEmitted;
    assert_eq!(seqs(b.events_of_type_between(take, t0(), t0() + hour * 6, 0, 10).await.unwrap()), [2, 4]);
    assert_eq!(seqs(b.events_of_type_between(take, t0(), t0() + hour * 6, 2, 10).await.unwrap()), [4]);
    assert_eq!(seqs(b.events_of_type_between(take, t0(), t0() + hour * 6, 0, 1).await.unwrap()), [2]);
    // The window is [from, until).
    assert_eq!(seqs(b.events_of_type_between(take, t0(), t0() + hour * 4, 0, 10).await.unwrap()), [2]);
    assert_eq!(seqs(b.events_of_type_between(take, t0() + hour * 4, t0() + hour * 6, 0, 10).await.unwrap()), [4]);
    assert_eq!(seqs(b.events_of_type_between(EventType::Acceptance, t0(), t0() + hour * 6, 0, 10).await.unwrap()), [1, 3, 5]);
}

/// decisions.md 19: a bounce is bound to a transaction by the Postfix queue id recorded
/// with it, and by nothing a sender chose: the lookup compares the queue id column only.
async fn events_of_one_queue_id(db: &TestDb) {
    let store = db.open().await;
    fill(&store, 3, t0()).await;
    // A row whose PEC id, client msgid and generated id all spell another row's queue id.
    let mut e = event(9, t0());
    e.pec_id = Some("Q0002".into());
    e.client_msgid = Some("Q0002".into());
    e.generated_ids = vec!["Q0002".into()];
    e.queue_id = Some("Q0009".into());
    store.append(e, t0()).await.unwrap();
    let mut later = event(2, t0());
    later.event_type = EventType::NonDelivery;
    store.append(later, t0()).await.unwrap();
    let b = store.backend();
    let seqs = |v: Vec<EventRow>| v.into_iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(seqs(b.events_of_queue_id("Q0002").await.unwrap()), [2, 5]);
    assert_eq!(seqs(b.events_of_queue_id("Q0009").await.unwrap()), [4]);
    assert!(b.events_of_queue_id("q0002").await.unwrap().is_empty(), "queue ids are case-sensitive");
    assert!(b.events_of_queue_id("Q00").await.unwrap().is_empty());
    assert!(b.events_of_queue_id("").await.unwrap().is_empty());
    // events_by_identifier, by contrast, also finds the row that only spells it.
    assert_eq!(seqs(b.events_by_identifier("Q0002").await.unwrap()), [2, 4, 5]);
    // Another host sharing the registry queued its own Q0002: the store asked by queue id
    // answers with this host's rows only, on either side.
    let other = db.open().await.with_host("host-b");
    other.append(event(2, t0()), t0()).await.unwrap();
    assert_eq!(seqs(b.events_of_queue_id("Q0002").await.unwrap()), [2, 5, 6]);
    assert_eq!(seqs(store.events_of_queue_id("Q0002").await.unwrap()), [2, 5]);
    assert_eq!(seqs(other.events_of_queue_id("Q0002").await.unwrap()), [6]);
}

/// A PostgreSQL address that accepts the connection and never answers (a hung server, a
/// wrong port behind a proxy): opening the registry fails after the URL's `connect_timeout`
/// and says so, instead of holding the daemon's start (and every session that needs a
/// connection) for ever.
#[tokio::test]
async fn a_silent_postgres_fails_after_connect_timeout_with_the_reason() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("postgres://pecora@{}/pecora?connect_timeout=1", silent.local_addr().unwrap());
    // Keep what is accepted open and silent.
    std::thread::spawn(move || {
        let held = silent.accept();
        std::thread::sleep(Duration::from_secs(10));
        drop(held);
    });
    let start = std::time::Instant::now();
    let opened = tokio::time::timeout(Duration::from_secs(8), Store::open(&url)).await;
    let err = match opened {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(_)) => panic!("a silent server opened as a registry"),
        Err(_) => panic!("Store::open still waits for a silent server after 8 s"),
    };
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    assert!(err.contains("PostgreSQL did not complete a connection within 1s (connect_timeout"), "{err}");
}

/// The metrics' scrape-time reading (pecora::store::counts) on both backends: outbox rows by
/// status, and when the oldest held and pending ones were created.
async fn scrape_counts_read_the_outbox_and_its_oldest_rows(db: &TestDb) {
    let store = db.open().await.with_host("h1");
    let now = Utc::now();
    let row = |hold: Option<&str>| NewOutboxMessage {
        kind: "accettazione".into(),
        mail_from: "posta-certificata@pec.alpha.test".into(),
        rcpts: vec!["a@pec.alpha.test".into()],
        message: b"Subject: x\r\n\r\nx\r\n".to_vec(),
        hold_for_queue_id: hold.map(str::to_owned),
    };
    for (i, hold, ago) in [(1, Some("Q1"), 3600), (2, Some("Q2"), 60), (3, None, 600), (4, None, 5)] {
        let rec = Record { event: event(i, t0()), outbox: vec![row(hold)], state: vec![], idempotency_key: None };
        store.record(&rec, now - chrono::Duration::seconds(ago)).await.unwrap();
    }
    let since = pecora::store::ts(now - chrono::Duration::hours(24));
    let c = pecora::store::counts::read_counts(&db.url(), &since, "h1").await.unwrap().expect("counts");
    let mut outbox = c.outbox.clone();
    outbox.sort();
    assert_eq!(outbox, [("held".to_string(), 2), ("pending".to_string(), 2)]);
    let age = |status: &str| {
        let (_, t) = c.outbox_oldest.iter().find(|(s, _)| s == status).unwrap_or_else(|| panic!("no {status}: {c:?}"));
        (now - pecora::store::model::parse_ts(t).unwrap()).num_seconds()
    };
    assert_eq!(age("held"), 3600, "{c:?}");
    assert_eq!(age("pending"), 600, "{c:?}");
}
