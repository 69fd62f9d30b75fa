#!/usr/bin/env python3
"""Small helpers of lab/up and lab/down.

  labctl.py ports DIR COUNT [PREFERRED...]  reserve COUNT free loopback ports for the lab in
                                            DIR and print them (slot i keeps PREFERRED[i]
                                            when that port is free)
  labctl.py release DIR                     drop DIR's reservation
  labctl.py wait TIMEOUT CHECK...           wait until every CHECK answers, at most TIMEOUT s

Ports are chosen in 10000..(start of the kernel's ephemeral range), so an outgoing
connection never holds one, and each must bind on 127.0.0.1. Labs started at the same time
(parallel tests) must not pick the same ports between choosing and binding them: every lab
records its ports in a reservation directory under a lock, and the others skip them.

A CHECK is LABEL=KIND:WHERE, KIND one of smtp (a 220 banner), smtps (TLS, then 220),
imaps (TLS, then "* OK"), pop3s (TLS, then "+OK"), tcp (a connection), unix (a UNIX socket
that accepts a connection), or alive (WHERE is a pid that must keep running: when it ends,
the wait fails at once instead of running into the timeout).
"""
import fcntl
import hashlib
import json
import os
import random
import socket
import ssl
import sys
import time

RESERVATIONS = "/tmp/pecora-lab-ports.d"
STALE_SECONDS = 900


def ephemeral_start():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def is_free(port):
    s = socket.socket()
    # As the servers bind (Postfix, Dovecot and tokio all set SO_REUSEADDR): a connection
    # of the previous run in TIME_WAIT does not hold the port, a listener does.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def entry_path(lab_dir):
    return os.path.join(RESERVATIONS, hashlib.sha1(lab_dir.encode()).hexdigest())


def reserved_by_others(lab_dir):
    taken = set()
    for name in os.listdir(RESERVATIONS):
        if name.startswith("."):
            continue
        path = os.path.join(RESERVATIONS, name)
        try:
            with open(path) as f:
                entry = json.load(f)
            age = time.time() - os.stat(path).st_mtime
        except (OSError, ValueError):
            continue
        other = entry.get("dir", "")
        # A lab that is gone, or that never came up, holds nothing.
        up = os.path.exists(os.path.join(other, "state.json"))
        if other == lab_dir or not os.path.isdir(other) or (not up and age > STALE_SECONDS):
            try:
                os.unlink(path)
            except OSError:
                pass
            continue
        taken.update(entry.get("ports", []))
    return taken


def reserve(lab_dir, count, preferred):
    os.makedirs(RESERVATIONS, exist_ok=True)
    with open(os.path.join(RESERVATIONS, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        taken = reserved_by_others(lab_dir)
        high = ephemeral_start() - 1
        chosen = []
        # Slot by slot: a preferred port keeps its role, or the slot gets a new one.
        for slot in range(count):
            p = preferred[slot] if slot < len(preferred) else 0
            if not (10000 < p <= 65535 and p not in taken and p not in chosen and is_free(p)):
                for _ in range(20000):
                    p = random.randint(10001, high)
                    if p not in taken and p not in chosen and is_free(p):
                        break
                else:
                    sys.exit("labctl: no free ports left")
            chosen.append(p)
        with open(entry_path(lab_dir), "w") as f:
            json.dump({"dir": lab_dir, "ports": chosen}, f)
    print(" ".join(map(str, chosen)))


def release(lab_dir):
    try:
        os.unlink(entry_path(lab_dir))
    except OSError:
        pass


def tls_context():
    ctx = ssl.create_default_context()
    # Readiness only: the tests verify the certificates against the lab CA.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def probe(kind, where):
    """True when the service answers as expected."""
    try:
        if kind == "unix":
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(1)
            s.connect(where)
            s.close()
            return True
        s = socket.create_connection(("127.0.0.1", int(where)), timeout=2)
        if kind == "tcp":
            s.close()
            return True
        if kind in ("smtps", "imaps", "pop3s"):
            s = tls_context().wrap_socket(s)
        greeting = s.recv(512)
        s.close()
        expected = {"smtp": b"220", "smtps": b"220", "imaps": b"* OK", "pop3s": b"+OK"}[kind]
        return greeting.startswith(expected)
    except (OSError, ValueError, KeyError):
        return False


def alive(pid):
    """True when the process runs (exists and is not a zombie)."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return not f.read().rsplit(")", 1)[1].strip().startswith("Z")
    except (OSError, ValueError, IndexError):
        return False


def wait(timeout, checks):
    pending, watched = [], []
    for c in checks:
        label, _, spec = c.partition("=")
        kind, _, where = spec.partition(":")
        (watched if kind == "alive" else pending).append((label, kind, where))
    deadline = time.monotonic() + timeout
    while pending:
        dead = [label for label, _, pid in watched if not alive(pid)]
        if dead:
            print(f"{', '.join(dead)} exited", file=sys.stderr)
            return 1
        pending = [c for c in pending if not probe(c[1], c[2])]
        if not pending:
            break
        if time.monotonic() > deadline:
            for label, kind, where in pending:
                print(f"{label} ({kind}:{where}) did not answer within {timeout:g} s", file=sys.stderr)
            return 1
        time.sleep(0.1)
    return 0


def main(argv):
    if len(argv) >= 4 and argv[1] == "ports":
        reserve(argv[2], int(argv[3]), [int(p) for p in argv[4:] if p.isdigit()])
        return 0
    if len(argv) == 3 and argv[1] == "release":
        release(argv[2])
        return 0
    if len(argv) >= 3 and argv[1] == "wait":
        return wait(float(argv[2]), argv[3:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
