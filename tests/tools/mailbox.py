#!/usr/bin/env python3
"""Reads a mailbox over IMAPS or POP3S, verifying the server's certificate and name against a
CA file, and writes each message to a directory (1.eml, 2.eml, ...). An independent client
for the tests; it never changes the mailbox (IMAP read-only, POP3 without DELE).

usage: mailbox.py imaps|pop3s HOST PORT USER PASSWORD CAFILE [OUTDIR]
Without OUTDIR it prints the Subject of each message, one per line.
With the environment variables MAILBOX_CERT and MAILBOX_KEY (a client certificate and its
key) it logs in with SASL EXTERNAL instead of the password (login with a digital
certificate); USER and PASSWORD are then ignored.
"""
import imaplib
import os
import poplib
import ssl
import sys
from email import message_from_bytes, policy


def fetch_imaps(host, port, user, password, ctx):
    with imaplib.IMAP4_SSL(host, port, ssl_context=ctx) as m:
        if os.environ.get("MAILBOX_CERT"):
            m.authenticate("EXTERNAL", lambda _: b"")
        else:
            m.login(user, password)
        m.select("INBOX", readonly=True)
        _, data = m.search(None, "ALL")
        out = []
        for num in data[0].split():
            _, msg = m.fetch(num, "(BODY.PEEK[])")
            out.append(msg[0][1])
        return out


def fetch_pop3s(host, port, user, password, ctx):
    m = poplib.POP3_SSL(host, port, context=ctx)
    try:
        if os.environ.get("MAILBOX_CERT"):
            # RFC 5034: EXTERNAL with an empty initial response ("=").
            m._shortcmd("AUTH EXTERNAL =")
        else:
            m.user(user)
            m.pass_(password)
        count, _ = m.stat()
        out = []
        for i in range(1, count + 1):
            _, lines, _ = m.retr(i)
            out.append(b"\r\n".join(lines) + b"\r\n")
        return out
    finally:
        m.quit()


def main(argv):
    if len(argv) < 7:
        print(__doc__, file=sys.stderr)
        return 2
    proto, host, port, user, password, cafile = argv[1:7]
    # The server must present a certificate of that CA for HOST (the lab's name 127.0.0.1
    # and localhost besides their MX name).
    ctx = ssl.create_default_context(cafile=cafile)
    if os.environ.get("MAILBOX_CERT"):
        ctx.load_cert_chain(os.environ["MAILBOX_CERT"], os.environ["MAILBOX_KEY"])
    fetch = {"imaps": fetch_imaps, "pop3s": fetch_pop3s}.get(proto)
    if fetch is None:
        print(f"unknown protocol {proto}", file=sys.stderr)
        return 2
    messages = fetch(host, int(port), user, password, ctx)
    if len(argv) > 7:
        os.makedirs(argv[7], exist_ok=True)
        for i, raw in enumerate(messages, 1):
            with open(os.path.join(argv[7], f"{i}.eml"), "wb") as f:
                f.write(raw)
    for raw in messages:
        print(message_from_bytes(raw, policy=policy.default).get("Subject", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
