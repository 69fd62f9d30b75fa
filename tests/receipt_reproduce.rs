//! `pecora receipt reproduce` (decisions.md 11): a lost receipt issued again from the
//! registry as a new signed copy.
//!
//! The originals are real: a `pecora serve` process (the binary Cargo built) accepts a
//! message through its milter socket (indymilter-test plays Postfix), its outbox submits the
//! acceptance and, with timers of a few seconds, the 12 h / 24 h preavvisi, to a fake
//! injection listener that keeps them. The copies come from the command line, and are
//! compared with the originals: `openssl smime -verify` (someone else's code) accepts them,
//! and their daticert.xml is the original's byte for byte (same `<giorno>`, `<ora>`, `zona`,
//! identifiers, recipients), while the envelope of the copy says it is one.
//!
//! The lab test at the end does the same for the receipts that need two real providers:
//! presa in carico, avvenuta consegna and errore consegna.

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/lab.rs"]
mod lab;
#[path = "common/pki.rs"]
mod pki;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use daemon::{Daemon, OnData, ServeSetup, Sink, cli, header};
use indymilter_test::Status;
use mail_parser::{MessageParser, MimeHeaders};

struct World {
    setup: ServeSetup,
    sink: Sink,
    _daemon: Daemon,
}

impl World {
    /// A daemon with the given `[timers]` section (empty: the defaults).
    fn start(timers: &str) -> World {
        let setup = ServeSetup::new();
        let sink = Sink::start(OnData::Accept);
        setup.configure(None, &sink.addr.to_string(), timers);
        let daemon = setup.start(&[]);
        World {
            setup,
            sink,
            _daemon: daemon,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.setup.path(name)
    }

    fn reproduce(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["receipt", "reproduce"];
        all.extend_from_slice(args);
        self.setup.cli(&all)
    }
}

/// One access-point transaction through the daemon's milter socket.
async fn submit(milter: &str, queue_id: &str, headers: &[(&str, &str)], rcpts: &[&str]) {
    let st = daemon::submit_access(milter, queue_id, headers, rcpts, "Testo.\r\n").await;
    assert_eq!(st, Some(Status::Continue));
}

const HEADERS: &[(&str, &str)] = &[
    ("From", "Alice <alice@pec.alpha.test>"),
    ("To", "bob@pec.beta.test"),
    ("Cc", "carol@mail.gamma.test"),
    ("Subject", "Contratto di fornitura"),
    ("Message-ID", "<orig-1@mua>"),
];

/// The daticert.xml and the attachment names of a PEC message, read with mail-parser.
fn daticert(raw: &[u8]) -> (String, Vec<String>) {
    let msg = MessageParser::default().parse(raw).expect("a MIME message");
    let mut xml = None;
    let mut names = Vec::new();
    for part in msg.parts.iter() {
        if let Some(n) = part.attachment_name() {
            names.push(n.to_string());
            if n == "daticert.xml" {
                xml = Some(String::from_utf8_lossy(part.contents()).into_owned());
            }
        }
    }
    (xml.expect("a daticert.xml"), names)
}

fn element(xml: &str, name: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    doc.descendants()
        .find(|n| n.has_tag_name(name))
        .and_then(|n| n.text())
        .map(str::to_string)
}

fn attribute(xml: &str, element: &str, attr: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    doc.descendants()
        .find(|n| n.has_tag_name(element))
        .and_then(|n| n.attribute(attr))
        .map(str::to_string)
}

/// `openssl smime -verify -noverify`: the signature over the content holds.
fn smime_verify(file: &Path) {
    let out = Command::new("openssl")
        .args(["smime", "-verify", "-noverify", "-in"])
        .arg(file)
        .args(["-out", "/dev/null"])
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl smime -verify -noverify {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The CMS signingTime of a multipart/signed message, as openssl prints it.
fn signing_time(file: &Path) -> String {
    let out = Command::new("openssl")
        .args(["cms", "-cmsout", "-print", "-inform", "SMIME", "-in"])
        .arg(file)
        .output()
        .expect("openssl cms");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let at = text.find("signingTime").expect("a signingTime attribute");
    text[at..]
        .lines()
        .find_map(|l| l.trim().strip_prefix("UTCTIME:"))
        .expect("UTCTIME")
        .trim()
        .to_string()
}

/// The registry rows of the message `id`, through `pecora log show --json`.
fn history(config: &Path, id: &str) -> Vec<serde_json::Value> {
    let (code, out, err) = cli(config, &["log", "show", id, "--json"]);
    assert_eq!(code, 0, "log show {id}: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["events"].as_array().cloned().unwrap_or_default()
}

/// Checks a copy against its original: the daticert is the same document; the headers
/// mark the copy and name the original.
fn assert_faithful_copy(original: &[u8], copy: &[u8], kind: &str) {
    let (orig_xml, _) = daticert(original);
    let (copy_xml, names) = daticert(copy);
    assert_eq!(
        copy_xml, orig_xml,
        "the copy certifies exactly what the original did"
    );
    assert!(
        !names.iter().any(|n| n == "postacert.eml"),
        "no content is kept, so no postacert.eml: {names:?}"
    );
    let (o, c) = (
        String::from_utf8_lossy(original),
        String::from_utf8_lossy(copy),
    );
    assert_eq!(header(&c, "X-Ricevuta"), kind);
    assert_eq!(header(&c, "X-Ricevuta"), header(&o, "X-Ricevuta"));
    assert_eq!(header(&c, "Subject"), header(&o, "Subject"));
    assert_eq!(
        header(&c, "X-Riferimento-Message-ID"),
        header(&o, "X-Riferimento-Message-ID")
    );
    assert_eq!(header(&c, "To"), header(&o, "To"));
    assert_eq!(header(&c, "From"), header(&o, "From"));
    assert_eq!(
        header(&c, "X-Pecora-Copia-Di"),
        header(&o, "Message-ID"),
        "the copy names the receipt it copies"
    );
    assert_ne!(
        header(&c, "Message-ID"),
        header(&o, "Message-ID"),
        "a new message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acceptance_copy_to_a_file_carries_the_original_instant_and_data() {
    let w = World::start("");
    submit(
        &w.setup.milter,
        "4RPR1",
        HEADERS,
        &["bob@pec.beta.test", "carol@mail.gamma.test"],
    )
    .await;
    let got = w.sink.wait_for(1, Duration::from_secs(20));
    assert_eq!(got.len(), 1, "the original acceptance");
    let original = got[0].data.as_bytes().to_vec();
    std::fs::write(w.path("original.eml"), &original).unwrap();

    // Later (the copy's own times must differ from the original's).
    std::thread::sleep(Duration::from_millis(2100));
    let out = w.path("copy.eml");
    let (code, stdout, stderr) = w.reproduce(&["4RPR1", "--output", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let copy = std::fs::read(&out).unwrap();
    smime_verify(&out);
    assert_faithful_copy(&original, &copy, "accettazione");

    let (orig_xml, _) = daticert(&original);
    let (copy_xml, _) = daticert(&copy);
    for e in ["giorno", "ora"] {
        assert_eq!(element(&copy_xml, e), element(&orig_xml, e), "<{e}>");
    }
    assert_eq!(
        attribute(&copy_xml, "data", "zona"),
        attribute(&orig_xml, "data", "zona")
    );
    assert_eq!(
        attribute(&copy_xml, "postacert", "tipo").as_deref(),
        Some("accettazione")
    );
    // Signed now, not backdated: the signature time and Date are the copy's.
    assert_ne!(
        signing_time(&out),
        signing_time(&w.path("original.eml")),
        "the copy is signed at its own time"
    );
    let c = String::from_utf8_lossy(&copy);
    assert_ne!(header(&c, "Date"), header(&got[0].data, "Date"));

    // Recorded, not sent: a receipt-reproduced row naming the original; nothing queued.
    let pec_id = element(&orig_xml, "identificativo").unwrap();
    let rows = history(&w.setup.config, &pec_id);
    let acc = rows
        .iter()
        .find(|r| r["event_type"] == "acceptance")
        .unwrap();
    let rep: Vec<_> = rows
        .iter()
        .filter(|r| r["event_type"] == "receipt-reproduced")
        .collect();
    assert_eq!(rep.len(), 1, "{rows:#?}");
    let details: serde_json::Value =
        serde_json::from_str(rep[0]["details"].as_str().unwrap()).unwrap();
    assert_eq!(details["original_seq"], acc["seq"]);
    assert_eq!(details["receipt"], "accettazione");
    assert_eq!(details["output"], out.to_str().unwrap());
    let generated: Vec<String> =
        serde_json::from_str(rep[0]["generated_ids"].as_str().unwrap()).unwrap();
    assert_eq!(format!("<{}>", generated[0]), header(&c, "Message-ID"));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(w.sink.count(), 1, "--output sends nothing");
    // An existing file is never overwritten.
    let (code, _, stderr) = w.reproduce(&["4RPR1", "--output", out.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    let (code, out, err) = cli(&w.setup.config, &["log", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acceptance_copy_is_sent_through_the_outbox_to_the_original_recipient() {
    let w = World::start("");
    submit(
        &w.setup.milter,
        "4RPR2",
        HEADERS,
        &["bob@pec.beta.test", "carol@mail.gamma.test"],
    )
    .await;
    let got = w.sink.wait_for(1, Duration::from_secs(20));
    assert_eq!(got.len(), 1);
    let (orig_xml, _) = daticert(got[0].data.as_bytes());
    let pec_id = element(&orig_xml, "identificativo").unwrap();

    // By the client's Message-ID this time, with the type named, as JSON.
    let (code, stdout, stderr) = w.reproduce(&["<orig-1@mua>", "--type", "accettazione", "--json"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["destination"]["to"], "outbox");
    assert_eq!(r["pec_id"], pec_id.as_str());

    let got = w.sink.wait_for(2, Duration::from_secs(20));
    assert_eq!(got.len(), 2, "the daemon sent the copy");
    assert_eq!(
        got[1].rcpts,
        ["alice@pec.alpha.test"],
        "to whom the original went"
    );
    assert_faithful_copy(
        got[0].data.as_bytes(),
        got[1].data.as_bytes(),
        "accettazione",
    );
    std::fs::write(w.path("sent-copy.eml"), &got[1].data).unwrap();
    smime_verify(&w.path("sent-copy.eml"));
    assert_eq!(
        header(&got[1].data, "Message-ID"),
        format!("<{}>", r["message_id"].as_str().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preavvisi_are_reproduced_one_by_one_and_ambiguity_is_refused() {
    // Timers of seconds: bob (certificato) never answers, so both notices go out.
    let w = World::start(
        "[timers]\ntake_charge = \"1s\"\ndelivery_min = \"2s\"\ndelivery = \"2s\"\ninterval = \"1s\"\n",
    );
    let headers = [
        ("From", "alice@pec.alpha.test"),
        ("To", "bob@pec.beta.test"),
        ("Subject", "Sollecito"),
        ("Message-ID", "<orig-2@mua>"),
    ];
    submit(&w.setup.milter, "4RPR3", &headers, &["bob@pec.beta.test"]).await;
    let got = w.sink.wait_for(3, Duration::from_secs(30));
    assert_eq!(got.len(), 3, "acceptance and two preavvisi: {got:#?}");
    let notices: Vec<&daemon::Stored> = got
        .iter()
        .filter(|m| header(&m.data, "X-Ricevuta") == "preavviso-errore-consegna")
        .collect();
    assert_eq!(notices.len(), 2);

    // Three receipts for this message: the identifier alone is ambiguous (exit 2, listed).
    let (code, _, err) = w.reproduce(&["4RPR3"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("matches 3 receipts"), "{err}");
    let (code, _, err) = w.reproduce(&["4RPR3", "--type", "preavviso"]);
    assert_eq!(code, 2, "two preavvisi: {err}");
    // Nothing of a type the message never had: exit 1.
    let (code, _, err) = w.reproduce(&["4RPR3", "--type", "avvenuta-consegna"]);
    assert_eq!(code, 1, "{err}");

    // Each preavviso, chosen by its registry row, matches its original.
    let rows = history(&w.setup.config, "4RPR3");
    let first_notice = notices[0].data.clone();
    for original in notices {
        let msgid = header(&original.data, "Message-ID");
        let row = rows
            .iter()
            .find(|r| {
                let ids: Vec<String> =
                    serde_json::from_str(r["generated_ids"].as_str().unwrap()).unwrap();
                ids.iter().any(|i| format!("<{i}>") == msgid)
            })
            .expect("the registry row of this preavviso");
        assert!(
            row["event_type"] == "timer-notice-12h" || row["event_type"] == "timer-notice-24h",
            "{row}"
        );
        let seq = row["seq"].to_string();
        let file = w.path(&format!("preavviso-{seq}.eml"));
        let (code, out, err) = w.reproduce(&[
            "4RPR3",
            "--type",
            "preavviso",
            "--recipient",
            "BOB@pec.beta.test",
            "--event",
            &seq,
            "-o",
            file.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{out}{err}");
        smime_verify(&file);
        assert_faithful_copy(
            original.data.as_bytes(),
            &std::fs::read(&file).unwrap(),
            "preavviso-errore-consegna",
        );
    }
    // The lost receipt's own Message-ID designates that one receipt.
    let lost = header(&first_notice, "Message-ID");
    let file = w.path("by-id.eml");
    let (code, out, err) = w.reproduce(&[&lost, "--json", "-o", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_faithful_copy(
        first_notice.as_bytes(),
        &std::fs::read(&file).unwrap(),
        "preavviso-errore-consegna",
    );
    // So does the Message-ID of a copy, when the copy is lost too.
    let copy_id = header(&std::fs::read_to_string(&file).unwrap(), "Message-ID");
    let again = w.path("again.eml");
    let (code, out, err) = w.reproduce(&[&copy_id, "-o", again.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_faithful_copy(
        first_notice.as_bytes(),
        &std::fs::read(&again).unwrap(),
        "preavviso-errore-consegna",
    );
}

#[test]
fn unknown_identifiers_and_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    pki::provider(dir.path());
    let d = dir.path().display();
    let config = pki::config(
        dir.path(),
        &format!("[store]\nurl = \"sqlite:{d}/registry.db\"\ncheckpoint_dir = \"{d}/cp\"\n"),
    );
    let (code, _, err) = cli(&config, &["receipt", "reproduce", "nobody@nowhere"]);
    assert_eq!(code, 1, "nothing found: {err}");
    assert!(err.contains("no registry row"), "{err}");
    let (code, _, err) = cli(
        &config,
        &["receipt", "reproduce", "x", "--type", "ricevuta-a-caso"],
    );
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli(&config, &["receipt", "reproduce"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli(
        &dir.path().join("missing.toml"),
        &["receipt", "reproduce", "x"],
    );
    assert_eq!(code, 2, "{err}");
}

/// The receipts that need two providers, on the lab (real Postfix, Dovecot and pecora):
/// beta's presa in carico and avvenuta consegna, alpha's errore consegna (from the bounce
/// of an unknown recipient). Each copy is compared with the original that reached alpha's
/// mailboxes over IMAPS; one copy is sent for real and passes alpha's reception point as a
/// genuine notice.
#[test]
fn lab_receipts_of_both_providers_are_reproduced_like_the_originals() {
    use lab::{Lab, subject};
    let lab = Lab::up();
    let (alpha, beta) = (lab.alpha(), lab.beta());
    let mario = alpha["users"][0]["address"].as_str().unwrap().to_string();
    let luca = beta["users"][0]["address"].as_str().unwrap().to_string();
    let (alpha_cfg, beta_cfg) = (
        Lab::path(&alpha["config_file"]),
        Lab::path(&beta["config_file"]),
    );
    let out = lab.send(
        alpha,
        "starttls",
        0,
        &mario,
        &[&luca],
        &[("Subject", "Da riprodurre")],
        "x",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = lab.send(
        alpha,
        "starttls",
        0,
        &mario,
        &["nessuno@pec.beta.test"],
        &[("Subject", "Verso nessuno")],
        "x",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let with = |msgs: &[Vec<u8>], prefix: &str| -> Vec<Vec<u8>> {
        msgs.iter()
            .filter(|m| subject(m).starts_with(prefix))
            .cloned()
            .collect()
    };
    let msgs = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| {
        with(m, "CONSEGNA: Da riprodurre").len() == 1
            && with(m, "AVVISO DI MANCATA CONSEGNA: Verso nessuno").len() == 1
    });
    let consegna = with(&msgs, "CONSEGNA: Da riprodurre");
    let errore = with(&msgs, "AVVISO DI MANCATA CONSEGNA: Verso nessuno");
    assert_eq!(
        (consegna.len(), errore.len()),
        (1, 1),
        "{:?}",
        msgs.iter().map(|m| subject(m)).collect::<Vec<_>>()
    );
    let service = lab.wait_for(alpha, &alpha["service"], "imaps", |m| {
        with(m, "PRESA IN CARICO: Da riprodurre").len() == 1
    });
    let presa = with(&service, "PRESA IN CARICO: Da riprodurre");
    assert_eq!(presa.len(), 1);
    let (consegna, errore, presa) = (&consegna[0], &errore[0], &presa[0]);
    let pec_id = element(&daticert(consegna).0, "identificativo").unwrap();
    let errore_pec_id = element(&daticert(errore).0, "identificativo").unwrap();

    let reproduce = |config: &Path, args: &[&str]| {
        let mut all = vec!["receipt", "reproduce"];
        all.extend_from_slice(args);
        let (code, out, err) = cli(config, &all);
        assert_eq!(code, 0, "receipt reproduce {args:?}: {out}{err}");
    };
    let file = |name: &str| lab.dir.path().join(name);

    // Beta's presa in carico, to alpha's service mailbox: the same daticert.
    reproduce(
        &beta_cfg,
        &[
            &pec_id,
            "--type",
            "presa-in-carico",
            "-o",
            file("presa.eml").to_str().unwrap(),
        ],
    );
    smime_verify(&file("presa.eml"));
    assert_faithful_copy(
        presa,
        &std::fs::read(file("presa.eml")).unwrap(),
        "presa-in-carico",
    );

    // Beta's avvenuta consegna: the original is completa (it carried postacert.eml); the
    // copy can only be sintetica, and otherwise certifies the same.
    reproduce(
        &beta_cfg,
        &[
            &pec_id,
            "--type",
            "avvenuta-consegna",
            "--recipient",
            &luca,
            "-o",
            file("consegna.eml").to_str().unwrap(),
        ],
    );
    smime_verify(&file("consegna.eml"));
    let copy = std::fs::read(file("consegna.eml")).unwrap();
    let (orig_xml, orig_parts) = daticert(consegna);
    let (copy_xml, copy_parts) = daticert(&copy);
    assert!(
        orig_parts.iter().any(|p| p == "postacert.eml"),
        "{orig_parts:?}"
    );
    assert!(
        !copy_parts.iter().any(|p| p == "postacert.eml"),
        "{copy_parts:?}"
    );
    assert_eq!(
        attribute(&orig_xml, "ricevuta", "tipo").as_deref(),
        Some("completa")
    );
    assert_eq!(
        attribute(&copy_xml, "ricevuta", "tipo").as_deref(),
        Some("sintetica")
    );
    assert_eq!(
        copy_xml.replace(
            "<ricevuta tipo=\"sintetica\" />",
            "<ricevuta tipo=\"completa\" />"
        ),
        orig_xml,
        "apart from the kind, the same daticert"
    );
    let (o, c) = (
        String::from_utf8_lossy(consegna),
        String::from_utf8_lossy(&copy),
    );
    assert_eq!(header(&c, "X-Pecora-Copia-Di"), header(&o, "Message-ID"));
    assert_eq!(header(&c, "Subject"), header(&o, "Subject"));

    // Alpha's errore consegna from the bounce: the same daticert, errore-esteso included.
    reproduce(
        &alpha_cfg,
        &[
            &errore_pec_id,
            "--type",
            "errore-consegna",
            "-o",
            file("errore.eml").to_str().unwrap(),
        ],
    );
    smime_verify(&file("errore.eml"));
    assert_faithful_copy(
        errore,
        &std::fs::read(file("errore.eml")).unwrap(),
        "errore-consegna",
    );

    // Sent for real: beta's copy of the consegna crosses to alpha, whose reception point
    // verifies it as genuine PEC and delivers it to mario unchanged.
    reproduce(&beta_cfg, &[&pec_id, "--type", "avvenuta-consegna"]);
    let msgs = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| {
        with(m, "CONSEGNA: Da riprodurre").len() == 2
    });
    let copies: Vec<Vec<u8>> = with(&msgs, "CONSEGNA: Da riprodurre")
        .into_iter()
        .filter(|m| !header(&String::from_utf8_lossy(m), "X-Pecora-Copia-Di").is_empty())
        .collect();
    assert_eq!(
        copies.len(),
        1,
        "the copy reached mario as a receipt, not an anomaly: {:?}",
        msgs.iter().map(|m| subject(m)).collect::<Vec<_>>()
    );
    assert_eq!(daticert(&copies[0]).0, copy_xml);
    assert!(with(&msgs, "ANOMALIA MESSAGGIO:").is_empty());
    // Both registries still verify, and beta's records the copies.
    for cfg in [&alpha_cfg, &beta_cfg] {
        let (code, out, err) = cli(cfg, &["log", "verify"]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let rows = history(&beta_cfg, &pec_id);
    assert_eq!(
        rows.iter()
            .filter(|r| r["event_type"] == "receipt-reproduced")
            .count(),
        3
    );
}
