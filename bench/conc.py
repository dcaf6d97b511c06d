#!/usr/bin/python3
"""bench/conc.py: P parallel streams of submissions, each running one
command N times in a row, every run timed.

    conc.py --procs P --count N --stdin FILE --out JSON [--env K=V ...] -- PROGRAM ARGS...

Each stream is a forked child of this driver that spawns PROGRAM with
posix_spawn (stdin opened on FILE, stdout and stderr on /dev/null), waits
for it and notes its wall time. The streams start together (a pipe is the
starting gun). `{n}` in an argument is replaced by a number unique to the
run (stream * N + i), for commands that need a new target each time (the
dd floor).

Run it as the caller: every program it starts runs with its credentials,
exactly as a caller's own process would start them (no shell, no launcher).

The JSON written: procs, count, wall (seconds from the starting gun to the
last stream's end), rate (messages per second), failures, every
per-message latency in seconds, and every message's CPU time (user +
system of the program and the children it waited for, from wait4).
"""

import argparse
import json
import os
import shutil
import sys
import time


def stream(k, n, prog, args, stdin, env, gun_r, out_w):
    os.read(gun_r, 1)
    lat = []
    cpu = []
    fails = 0
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, stdin, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0),
    ]
    for i in range(n):
        argv = [prog] + [a.replace("{n}", str(k * n + i)) for a in args]
        t0 = time.perf_counter()
        try:
            pid = os.posix_spawn(prog, argv, env, file_actions=actions)
            _, status, ru = os.wait4(pid, 0)
        except OSError as e:
            print("conc.py: %s: %s" % (prog, e), file=sys.stderr)
            status, ru = 256, None
        t1 = time.perf_counter()
        if os.waitstatus_to_exitcode(status) != 0:
            fails += 1
        lat.append(t1 - t0)
        if ru is not None:
            cpu.append(ru.ru_utime + ru.ru_stime)
    os.write(out_w, (json.dumps({"lat": lat, "cpu": cpu, "fails": fails}) + "\n").encode())
    os._exit(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--stdin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        ap.error("no command")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    prog = shutil.which(cmd[0], path=env["PATH"])
    if prog is None:
        ap.error("%s: not found" % cmd[0])
    cmd[0] = prog
    for kv in a.env:
        k, _, v = kv.partition("=")
        env[k] = v
    gun_r, gun_w = os.pipe()
    # One result pipe per stream, read after all have ended (each result is
    # small enough for a pipe buffer only for small N; so use files).
    tmpdir = os.path.dirname(os.path.abspath(a.out))
    pids = []
    outs = []
    for k in range(a.procs):
        path = os.path.join(tmpdir, ".conc.%d.%d" % (os.getpid(), k))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        pid = os.fork()
        if pid == 0:
            os.close(gun_w)
            stream(k, a.count, cmd[0], cmd[1:], a.stdin, env, gun_r, fd)
        os.close(fd)
        pids.append(pid)
        outs.append(path)
    os.close(gun_r)
    time.sleep(0.2)  # let every stream reach its read
    t0 = time.perf_counter()
    os.write(gun_w, b"x" * a.procs)
    for pid in pids:
        os.waitpid(pid, 0)
    t1 = time.perf_counter()
    lat = []
    cpu = []
    fails = 0
    for path in outs:
        with open(path) as f:
            r = json.loads(f.read())
        os.unlink(path)
        lat += r["lat"]
        cpu += r["cpu"]
        fails += r["fails"]
    total = a.procs * a.count
    res = {
        "command": cmd,
        "procs": a.procs,
        "count": a.count,
        "messages": total,
        "wall": t1 - t0,
        "rate": total / (t1 - t0),
        "failures": fails,
        "latencies": lat,
        "cpu": cpu,
    }
    with open(a.out, "w") as f:
        json.dump(res, f)
    if fails:
        print("conc.py: %d of %d runs failed: %s" % (fails, total, " ".join(cmd)), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
