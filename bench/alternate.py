#!/usr/bin/python3
"""bench/alternate.py: time several commands in alternation, one run of
each in turn, so that a drift of the machine (the virtual disk's flush
latency moves from minute to minute) reaches every command alike.

    alternate.py --spec FILE --runs N [--warmup W] --out DIR

FILE has one command per line: NAME <TAB> PREPARE <TAB> COMMAND. Every
turn runs each command once, in an order rotated by one from the turn
before (so no command always follows the same one): first PREPARE,
untimed, through `sh -c` (removing the last run's file, `sync`), then
COMMAND, timed: split into words as a POSIX shell would (no shell of its
own, as `hyperfine -N` does), started with posix_spawn, stdin, stdout and
stderr on /dev/null, and waited for. A command that exits non-zero stops
everything (exit 1, naming it).

W untimed turns come first. DIR/NAME.times gets one wall time in seconds
per line, N lines.
"""

import argparse
import os
import shlex
import subprocess
import sys
import time


def spawn_wait(argv):
    null_in = os.open("/dev/null", os.O_RDONLY)
    null_out = os.open("/dev/null", os.O_WRONLY)
    try:
        t0 = time.perf_counter()
        pid = os.posix_spawnp(
            argv[0],
            argv,
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, null_in, 0),
                (os.POSIX_SPAWN_DUP2, null_out, 1),
                (os.POSIX_SPAWN_DUP2, null_out, 2),
            ],
        )
        _, status = os.waitpid(pid, 0)
        t1 = time.perf_counter()
    finally:
        os.close(null_in)
        os.close(null_out)
    return os.waitstatus_to_exitcode(status), t1 - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    cmds = []
    with open(a.spec) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            name, prep, cmd = line.split("\t")
            cmds.append((name, prep, shlex.split(cmd)))
    if not cmds or a.runs < 1:
        ap.error("nothing to run")
    times = {name: [] for name, _, _ in cmds}
    for turn in range(a.warmup + a.runs):
        k = turn % len(cmds)
        for name, prep, argv in cmds[k:] + cmds[:k]:
            subprocess.run(["sh", "-c", prep], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            code, secs = spawn_wait(argv)
            if code != 0:
                print("alternate.py: %s exited %d: %s" % (name, code, shlex.join(argv)), file=sys.stderr)
                sys.exit(1)
            if turn >= a.warmup:
                times[name].append(secs)
    for name, ts in times.items():
        with open(os.path.join(a.out, name + ".times"), "w") as f:
            f.write("".join("%.9f\n" % t for t in ts))


if __name__ == "__main__":
    main()
