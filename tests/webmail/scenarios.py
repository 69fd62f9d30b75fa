#!/usr/bin/python3
"""The webmail's scenarios in a real browser (tests/lab_webmail.rs runs this on a lab that
has its webmail up and an anomaly already in luca.verdi@pec.beta.test's INBOX):

  1. as alpha's sender, compose two PEC messages to beta's holder in the browser, the second
     with the receipt type "sintetica", and a third to a mailbox beta cannot deliver to;
  2. as beta's holder, open the received PEC: banner (sender, issuing provider, certified
     date, pecora's verdict) and the original content;
     a copy of it with its content changed, appended to the mailbox, is not genuine; and
     without a pecora to run, nothing is shown as certified;
  3. as beta's holder, open the anomaly: marked as not certified, with the reason;
  4. as alpha's sender, open each sent message: the timeline lists accettazione and
     consegna, the consegna of the second one is sintetica, the third has a non-delivery
     notice instead; an opened receipt shows its own verdict;
  5. compose in Italian for a browser that asks for Italian.

usage: scenarios.py STATE.json SCREENSHOT_DIR
Prints one "check: ..." line per check passed and "result: {json}" at the end; exits non-zero
on the first failed check.
"""
import imaplib
import json
import ssl
import sys
import time

from browser import Browser, By, EC

FIRST = "Prima PEC dal browser"
FIRST_BODY = "Buongiorno, questo è il contenuto originale della PEC."
SECOND = "PEC sintetica dal browser"
THIRD = "PEC a una casella assente"


def check(cond, what, detail=""):
    if not cond:
        raise AssertionError(f"{what}: {detail}")
    print(f"check: {what}", flush=True)


def compose(b, to, subject, body, receipt):
    b.get(b.url + "?_task=mail&_action=compose")
    b.wait(EC.presence_of_element_located((By.ID, "compose-subject")))
    b.wait(EC.presence_of_element_located((By.ID, "pecora-receipt")))
    options = [o.get_attribute("value") for o in b.d.find_elements(By.CSS_SELECTOR, "#pecora-receipt option")]
    check(options == ["completa", "breve", "sintetica"], "compose offers completa, breve, sintetica", options)
    # PEC's receipts replace DSN, which the PEC listeners do not offer: no such option.
    check(not b.d.find_elements(By.ID, "compose-dsn"), "compose offers no delivery status notification")
    to_input = b.d.find_element(By.CSS_SELECTOR, "#compose_to .recipient-input input, #compose_to input")
    to_input.send_keys(to + ",")
    b.d.find_element(By.ID, "compose-subject").send_keys(subject)
    b.d.find_element(By.ID, "composebody").send_keys(body)
    select = b.d.find_element(By.ID, "pecora-receipt")
    select.find_element(By.CSS_SELECTOR, f"option[value='{receipt}']").click()
    check(select.get_attribute("value") == receipt, f"receipt type {receipt} chosen")
    b.shot(f"compose-{receipt}")
    b.d.find_element(By.CSS_SELECTOR, "button.send, a.send").click()
    # Roundcube goes back to the list once the message is sent (and its copy saved).
    b.wait(lambda d: "_action=compose" not in d.current_url, timeout=60)
    print(f"sent: {subject}", flush=True)


def append_forgery(provider, user, ca_file):
    """APPENDs to the user's INBOX a copy of the received PEC with its original content
    changed and its subject marked; returns that subject."""
    ctx = ssl.create_default_context(cafile=ca_file)
    with imaplib.IMAP4_SSL("localhost", provider["imaps_port"], ssl_context=ctx) as m:
        m.login(user["address"], user["password"])
        m.select("INBOX")
        _, data = m.search(None, "SUBJECT", f'"{FIRST}"', "HEADER", "X-Trasporto", "posta-certificata")
        num = data[0].split()[0]
        _, msg = m.fetch(num, "(BODY.PEEK[])")
        raw = msg[0][1]
        assert FIRST_BODY.encode("utf-8") in raw or b"Buongiorno" in raw, raw[:2000]
        forged = raw.replace(b"Buongiorno", b"Buonasera", 1)
        subject = f"POSTA CERTIFICATA: {FIRST} (copia)"
        forged = forged.replace(f"Subject: POSTA CERTIFICATA: {FIRST}".encode(), f"Subject: {subject}".encode(), 1)
        assert forged != raw
        typ, _ = m.append("INBOX", None, None, forged)
        assert typ == "OK", typ
    return subject


def banner(b):
    el = b.d.find_element(By.ID, "pecora-banner")
    return el, el.text


def timeline(b, mbox, subject, want, timeout=90):
    """Opens the sent message until its timeline lists every kind in `want`."""
    row = b.find_row(mbox, subject)
    deadline = time.time() + timeout
    while True:
        b.open(mbox, row["uid"])
        items = b.d.find_elements(By.CSS_SELECTOR, "#pecora-timeline tr.pecora-receipt")
        got = [(i.get_attribute("data-kind"), i.get_attribute("data-receipt-type"), i.text) for i in items]
        if all(any(k == w for k, _, _ in got) for w in want):
            return got
        if time.time() > deadline:
            raise AssertionError(f"timeline of {subject!r} lacks {want}: {got}")
        time.sleep(3)


def main(state_file, shots):
    state = json.load(open(state_file))
    alpha, beta = state["providers"]
    mario, luca = alpha["users"][0], beta["users"][0]
    b = Browser(state, shots)
    result = {}
    try:
        # 1. alpha's sender composes two PEC messages in the browser.
        b.login(alpha["webmail_url"], mario["address"], mario["password"])
        compose(b, luca["address"], FIRST, FIRST_BODY, "completa")
        compose(b, luca["address"], SECOND, "Con ricevuta sintetica, per favore.", "sintetica")
        # A mailbox beta's Postfix lists but its Dovecot refuses: a non-delivery notice.
        compose(b, "assente@" + beta["domain"], THIRD, "Questa casella non esiste.", "completa")

        # 2. beta's holder opens the received PEC.
        b.login(beta["webmail_url"], luca["address"], luca["password"])
        row = b.find_row("INBOX", FIRST, timeout=120)
        check(row["kind"] == "posta-certificata" and "PEC" in row["badge"], "list marks the PEC", row)
        anomaly_row = b.find_row("INBOX", "ANOMALIA MESSAGGIO")
        check(anomaly_row["kind"] == "anomalia" and "ANOMALY" in anomaly_row["badge"], "list marks the anomaly", anomaly_row)
        b.shot("beta-inbox")
        first_uid = row["uid"]
        b.open("INBOX", row["uid"])
        el, text = banner(b)
        check(el.get_attribute("data-genuine") == "yes" and el.get_attribute("data-kind") == "posta-certificata",
              "banner: genuine posta certificata", text)
        check("genuine, verified by pecora" in text, "banner shows pecora's verdict", text)
        check(mario["address"] in text, "banner shows the sender", text)
        check(alpha["name"] in text, "banner shows the issuing provider", text)
        check("Certified date and time" in text and "/20" in text, "banner shows the certified date", text)
        body = b.text("#messagebody")
        check(FIRST_BODY in body, "the original message is the content", body)
        check(FIRST in body and mario["address"] in body, "with the original's own subject and sender", body)
        check("Messaggio di posta certificata" not in body, "the envelope's own text is not the content", body)
        attachments = b.text("#attachment-list") or ""
        check("daticert.xml" in attachments and "postacert.eml" in attachments,
              "daticert.xml and postacert.eml stay downloadable", attachments)
        result["received"] = b.shot("received-pec")

        # 2b. Headers prove nothing: a copy of that PEC with its content changed, appended by
        # the holder to their own mailbox, is listed as PEC (the headers say so) but opened
        # as not genuine.
        forged_subject = append_forgery(beta, luca, state["dir"] + "/ca/ca.pem")
        row = b.find_row("INBOX", forged_subject)
        check(row["kind"] == "posta-certificata", "the forgery's headers claim PEC in the list", row)
        b.open("INBOX", row["uid"])
        el, text = banner(b)
        check(el.get_attribute("data-genuine") == "no" and "Not genuine PEC" in text and "genuine, verified" not in text,
              "the forgery is not genuine", text)
        b.shot("forged-pec")

        # 2c. pecora cannot be run: no verdict, and nothing shown as certified.
        config = f"{state['dir']}/webmail/beta/config/config.inc.php"
        saved = open(config).read()
        try:
            with open(config, "a") as f:
                f.write("\n$config['pecora_bin'] = '/nonexistent/pecora';\n")
            time.sleep(3)  # php-fpm's opcache revalidates files every 2 s
            b.open("INBOX", first_uid)
            el, text = banner(b)
            check(el.get_attribute("data-genuine") == "no" and "could not be done" in text
                  and "genuine, verified" not in text, "without pecora nothing is shown as certified", text)
        finally:
            with open(config, "w") as f:
                f.write(saved)
            time.sleep(3)

        # 3. beta's holder opens the anomaly.
        b.open("INBOX", anomaly_row["uid"])
        el, text = banner(b)
        check(el.get_attribute("data-kind") == "anomalia" and el.get_attribute("data-genuine") == "no",
              "banner: anomaly", text)
        check("NOT certified" in text, "the anomaly is marked not certified", text)
        check("posta ordinaria" in text and beta["name"] in text, "the anomaly gives its reason and who found it", text)
        b.shot("anomaly")

        # 4. alpha's sender opens the sent messages: their receipts.
        b.login(alpha["webmail_url"], mario["address"], mario["password"])
        got = timeline(b, "Sent", FIRST, ["accettazione", "avvenuta-consegna"])
        check(any(k == "avvenuta-consegna" and luca["address"] in t for k, _, t in got),
              "timeline: consegna to beta's holder", got)
        check(all("genuine" in t for _, _, t in got), "timeline: every receipt verified genuine", got)
        b.shot("sent-timeline")
        got = timeline(b, "Sent", SECOND, ["accettazione", "avvenuta-consegna"])
        check([r for k, r, _ in got if k == "avvenuta-consegna"] == ["sintetica"],
              "the consegna of the sintetica message is sintetica", got)
        b.shot("sent-timeline-sintetica")
        got = timeline(b, "Sent", THIRD, ["accettazione", "errore-consegna"], timeout=120)
        check(not any(k == "avvenuta-consegna" for k, _, _ in got), "timeline: an error and no consegna for a missing mailbox", got)
        check([k for k, _, _ in got][0] == "accettazione", "timeline: the acceptance comes first", got)
        b.shot("sent-timeline-error")
        row = b.find_row("INBOX", "CONSEGNA: " + SECOND)
        check(row["kind"] == "avvenuta-consegna", "list marks the consegna receipt", row)
        b.shot("alpha-inbox")
        # A receipt opened on its own: pecora's verdict on it.
        b.open("INBOX", row["uid"])
        el, text = banner(b)
        check(el.get_attribute("data-kind") == "avvenuta-consegna" and el.get_attribute("data-genuine") == "yes"
              and luca["address"] in text and "summary (sintetica)" in text and beta["name"] in text,
              "an opened consegna shows its verdict, recipient, type and issuer", text)
        b.shot("receipt")
        result["sintetica_subject"] = "CONSEGNA: " + SECOND
        # Italian: a holder whose browser asks for Italian gets the plugin's Italian texts.
        it = Browser(state, shots, lang="it-IT")
        try:
            giulia = beta["users"][1]
            it.login(beta["webmail_url"], giulia["address"], giulia["password"])
            it.get(it.url + "?_task=mail&_action=compose")
            it.wait(EC.presence_of_element_located((By.ID, "pecora-receipt")))
            label = it.text("label[for=pecora-receipt]")
            options = [o.text for o in it.d.find_elements(By.CSS_SELECTOR, "#pecora-receipt option")]
            check(label == "Tipo di ricevuta" and options == ["completa", "breve", "sintetica"],
                  "compose in Italian", (label, options))
            it.shot("compose-it")
        finally:
            it.close()
    except Exception:
        try:
            b.shot("failure")
        finally:
            raise
    finally:
        b.close()
    print("result: " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
