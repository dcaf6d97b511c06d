#!/usr/bin/python3
"""bench/spoolgen.py: write outq spool files directly, for the drain and
scale benchmarks (run as root, so that every file gets the owner, group
and mode outq itself would give it).

    spoolgen.py states --entries DIR --state DIR --uid U --gid G --due EPOCH
        A state file for every entry in DIR (one never-tried attempt
        recorded: attempts 1, every recipient pending), owned U:G, mode
        0600, its mtime (the next attempt) EPOCH, as the runner writes it
        for a deferred entry (src/queue/state.rs).

    spoolgen.py clone --template FILE --count N --entries DIR --state DIR
                      --entry-uid U --entry-gid G --state-uid U --state-gid G
                      --due-min EPOCH --due-max EPOCH
        N copies of the committed entry FILE (one the helper wrote) in DIR,
        each under a new queue ID that is also written into its header (the
        ID line has a fixed length, so nothing else moves), owned like the
        original (the submitter, the helper's group, mode 0404), plus a
        state file each whose next attempt is spread over [due-min,
        due-max].

The state format is outq's version 1: see src/queue/state.rs.
"""

import argparse
import os
import random
import re
import sys

ID_RE = re.compile(rb"^id ([0-9A-F]{26})$", re.M)


def header_of(data):
    end = data.index(b"\n\n")
    return data[: end + 1]


def recipients(header):
    return [l[len(b"rcpt ") :].decode() for l in header.split(b"\n") if l.startswith(b"rcpt ")]


def state_text(rcpts, due):
    lines = [
        "outq-state 1",
        "attempts 1",
        "recoveries 0",
        "next_attempt %d" % due,
        "last_error 451 4.3.0 benchmark: try again later",
    ]
    for r in rcpts:
        lines.append("rcpt %s pending 451 4.3.0 benchmark: try again later" % r)
    lines.append("end")
    return ("\n".join(lines) + "\n").encode()


def write_file(dirfd, name, data, uid, gid, mode, mtime=None):
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
    try:
        os.write(fd, data)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        if mtime is not None:
            os.utime(fd, (mtime, mtime))
    finally:
        os.close(fd)


def cmd_states(a):
    sfd = os.open(a.state, os.O_RDONLY | os.O_DIRECTORY)
    n = 0
    for name in sorted(os.listdir(a.entries)):
        with open(os.path.join(a.entries, name), "rb") as f:
            head = f.read(64 * 1024)
        write_file(sfd, name, state_text(recipients(header_of(head)), a.due), a.uid, a.gid, 0o600, a.due)
        n += 1
    print(n)


def new_id(secs, micro, rnd):
    return "%09X%05X%012X" % (secs, micro, rnd)


def cmd_clone(a):
    with open(a.template, "rb") as f:
        data = f.read()
    m = ID_RE.search(header_of(data))
    if not m:
        sys.exit("spoolgen.py: %s has no id line" % a.template)
    secs = int(m.group(1)[:9], 16)
    rcpts = recipients(header_of(data))
    start, end = m.span(1)
    efd = os.open(a.entries, os.O_RDONLY | os.O_DIRECTORY)
    sfd = os.open(a.state, os.O_RDONLY | os.O_DIRECTORY)
    rng = random.SystemRandom()
    seen = set()
    for i in range(a.count):
        while True:
            # The same arrival second as the original; microseconds and
            # random bits make each ID new.
            qid = new_id(secs, i % 1000000, rng.getrandbits(48))
            if qid not in seen:
                seen.add(qid)
                break
        body = data[:start] + qid.encode() + data[end:]
        due = rng.randint(a.due_min, a.due_max)
        write_file(efd, qid, body, a.entry_uid, a.entry_gid, 0o404)
        write_file(sfd, qid, state_text(rcpts, due), a.state_uid, a.state_gid, 0o600, due)
    print(a.count)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("states")
    s.add_argument("--entries", required=True)
    s.add_argument("--state", required=True)
    s.add_argument("--uid", type=int, required=True)
    s.add_argument("--gid", type=int, required=True)
    s.add_argument("--due", type=int, required=True)
    c = sub.add_parser("clone")
    c.add_argument("--template", required=True)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--entries", required=True)
    c.add_argument("--state", required=True)
    for k in ("entry-uid", "entry-gid", "state-uid", "state-gid", "due-min", "due-max"):
        c.add_argument("--" + k, type=int, required=True)
    a = ap.parse_args()
    {"states": cmd_states, "clone": cmd_clone}[a.cmd](a)


if __name__ == "__main__":
    main()
