#!/usr/bin/env python3
"""Independent check of a message built by pecora, with Python's `email` package.

usage: check_mime.py MESSAGE.eml [--save-attachments DIR]

Prints one JSON object:
  tree              MIME tree, two spaces per level, "type [filename]"; message/rfc822 parts
                    are shown but not descended into
  defects           parser defects of every part (must be empty)
  bad_header_lines  top-level header lines that are too long, not CRLF-ended, or neither a
                    field nor a continuation
  headers           top-level [name, raw value] pairs
  subject           decoded Subject
  daticert          decoded daticert.xml (text) or null
  texts             decoded text/plain and text/html of the first multipart/alternative
  hash_parts        {filename: content} of every *.hash text part, also inside postacert.eml
  postacert         decoded postacert.eml as latin-1 text, or null
With --save-attachments DIR, every part with a filename (anywhere, rfc822 included) is saved
decoded into DIR under its filename.
"""
import email
import email.header
import email.policy
import json
import os
import re
import sys


def fname(part):
    return part.get_filename() or part.get_param("name")


def tree(part, depth, out):
    ct = part.get_content_type()
    name = fname(part)
    out.append("  " * depth + ct + (" [%s]" % name if name else ""))
    if part.is_multipart() and ct != "message/rfc822":
        for sub in part.get_payload():
            tree(sub, depth + 1, out)


def all_parts(part):
    """Every part, descending into message/rfc822 too."""
    yield part
    if part.is_multipart():
        for sub in part.get_payload():
            yield from all_parts(sub)


def header_lines(raw):
    end = raw.find(b"\r\n\r\n")
    block = raw[: end + 2] if end >= 0 else raw
    bad = []
    for line in block.split(b"\r\n")[:-1]:
        if b"\n" in line or b"\r" in line:
            bad.append(line.decode("latin-1"))
        elif len(line) > 998:
            bad.append(line[:60].decode("latin-1") + "...(too long)")
        elif not (line[:1] in (b" ", b"\t") or re.match(rb"^[!-9;-~]+:", line)):
            bad.append(line.decode("latin-1"))
    return bad


def main():
    path = sys.argv[1]
    save = None
    if "--save-attachments" in sys.argv:
        save = sys.argv[sys.argv.index("--save-attachments") + 1]
    raw = open(path, "rb").read()
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    out = {"tree": [], "defects": [], "headers": [], "hash_parts": {}, "texts": {}}
    tree(msg, 0, out["tree"])
    for p in all_parts(msg):
        for d in p.defects:
            out["defects"].append("%s: %s" % (p.get_content_type(), type(d).__name__))
    out["bad_header_lines"] = header_lines(raw)
    out["headers"] = [[k, str(v)] for k, v in msg.items()]
    subj = msg.get("Subject")
    out["subject"] = (
        str(email.header.make_header(email.header.decode_header(subj))) if subj is not None else None
    )
    out["daticert"] = None
    out["postacert"] = None
    for p in all_parts(msg):
        ct = p.get_content_type()
        name = fname(p)
        if name == "daticert.xml" and out["daticert"] is None:
            out["daticert"] = p.get_payload(decode=True).decode("utf-8")
        if ct == "message/rfc822" and out["postacert"] is None:
            inner = p.get_payload()[0]
            out["postacert"] = inner.as_bytes(policy=email.policy.compat32).decode("latin-1")
        if ct in ("text/plain", "text/html") and not name and ct.split("/")[1] not in out["texts"]:
            charset = p.get_content_charset() or "us-ascii"
            out["texts"][ct.split("/")[1]] = p.get_payload(decode=True).decode(charset)
        if name and name.endswith(".hash"):
            out["hash_parts"][name] = p.get_payload(decode=True).decode("ascii").strip()
        if save and name and not p.is_multipart():
            data = p.get_payload(decode=True)
            if data is None and ct == "message/rfc822":
                data = p.get_payload()[0].as_bytes()
            with open(os.path.join(save, os.path.basename(name)), "wb") as f:
                f.write(data or b"")
    json.dump(out, sys.stdout, ensure_ascii=False, indent=1)
    print()


if __name__ == "__main__":
    main()
