#!/usr/bin/env bash
# bench/enqueue.sh: per-message wall time of outq-enqueue against its floor.
#
# What it measures
#   The wall time of submitting one message (4 KB, then 1 MB) through
#   outq-enqueue, which creates tmp/ID, writes, fsyncs, renames into new/
#   and fsyncs again, against the floor: `dd if=MSG of=FILE bs=64K
#   conv=fsync` of the same bytes into a new file on the same filesystem
#   (exec + write + fsync). It reports medians, the ratio helper/floor and
#   whether the project's target (helper <= 1.1x the floor) is met, and
#   writes everything to OUT_DIR/RESULTS.md (raw JSON of every run in
#   OUT_DIR/results/); bench/run includes that report in bench/RESULTS.md.
#
# Two modes
#   As root (the real measurement): a production-like install. It creates a
#   unique helper group, queue-owner user and unprivileged caller user
#   (oqb<PID>d, oqb<PID>o, oqb<PID>c), a temporary directory under /var/tmp
#   with a copy of the helper as shipped (the static-pie build of
#   install/build-helper) installed root:<group> 2755, a spool
#   made by `outq init --spool DIR --user OWNER --group GROUP`, and
#   /etc/outq/outq.conf pointing at it with spool_min_free = 0. The helper
#   and the floor both run as the caller through
#   `setpriv --reuid --regid --init-groups`; `setpriv ... /bin/true` is
#   measured too so that the launcher's own cost can be taken out.
#   Everything is undone on exit (trap): users and groups deleted, the
#   temporary directory removed, an existing /etc/outq/outq.conf restored
#   (it is kept meanwhile as /etc/outq/outq.conf.oqb<PID>-saved), /etc/outq
#   removed if this script created it. Only SIGKILL can defeat the trap.
#   While it runs, /etc/outq/outq.conf is the benchmark's: do not run the
#   privileged tests or a real outq on this machine at the same time.
#   Before it starts, it waits (up to BENCH_WAIT seconds, default 600)
#   until /etc/outq has not changed for BENCH_QUIET seconds (default 10)
#   and the file names no existing spool under /tmp or /var/tmp (signs of
#   another test at work); if the file is replaced during the run anyway,
#   the script stops, and at exit it leaves the other party's file alone
#   and says where the saved original is. Results are only written when a
#   run completes.
#
#   Not root (development mode, labelled as such in RESULTS.md): a private
#   spool made by `outq init --spool DIR --config FILE`, the helper run as
#   `outq-enqueue --spool DIR --config FILE` (not set-group-ID), the floor
#   run as the same user, no launcher.
#
# How to run
#   sudo bash bench/enqueue.sh          # or as root: bash bench/enqueue.sh
#   bash bench/enqueue.sh               # development mode
#   Environment: RUNS (default 200, at least 30: timed runs per command),
#   ROUNDS (default 5: the runs are split into rounds, each followed by a
#   check that the configuration is still the benchmark's),
#   WARMUP (default 20, spread over the rounds),
#   CLEAR_NEW (default 1: empty new/ before every run, untimed; 0 lets new/
#   fill up), BENCH_NO_BUILD=1 (use the existing release build),
#   BENCH_REV=REV (build that commit from a clean `git archive` export
#   instead of the work tree),
#   OUT_DIR (default bench/out/enqueue/: where its RESULTS.md and results/
#   go; bench/run, which runs this script, folds that report into
#   bench/RESULTS.md, so running this script alone does not replace it),
#   STRACE_RUNS (default 15; 0 skips the strace breakdown), BENCH_WAIT,
#   BENCH_QUIET.
#   It builds with CARGO_TARGET_DIR=<repo>/target/bench cargo build --release
#   --workspace, then the static-pie helper with install/build-helper (into
#   target/bench/release/helper/; a BENCH_REV commit older than that script
#   is measured with its dynamically linked helper, and RESULTS.md says
#   so).
#
# Method
#   bench/alternate.py, which starts each command without a shell of its
#   own, as `hyperfine -N` does: every command but a bare
#   `/bin/true` is `sh -c 'exec [setpriv ...] CMD'`, the shell being there
#   only for the stdin redirection; the cost of that launch chain is
#   measured as `sh -c 'exec [setpriv ...] /bin/true'` minus `/bin/true`
#   and taken out for the "as called directly" ratio, which the target is
#   judged on. Before every run (warm-ups included) an untimed prepare
#   removes the previous run's file (the floor's FILE; the helper's entry in
#   new/ when CLEAR_NEW=1) and runs `sync`, so each run starts with no dirty
#   data and creates one new file, for the helper and the floor alike.
#   The runs are made in ROUNDS rounds; within a round the commands take
#   turns, one run each, the order rotated every turn, so that a drift in
#   the machine's load or the disk's flush latency hits the helper and the
#   floor alike (blocks of one command's runs, as hyperfine made them
#   before, let the ratio move by up to 0.4 from one run of the script to
#   the next).
#   A few extra runs under `strace -T` give the fsync and rename durations.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
OUT_DIR=${OUT_DIR:-$top/bench/out/enqueue}
RUNS=${RUNS:-200}
WARMUP=${WARMUP:-20}
CLEAR_NEW=${CLEAR_NEW:-1}
STRACE_RUNS=${STRACE_RUNS:-15}
ROUNDS=${ROUNDS:-5}
BENCH_WAIT=${BENCH_WAIT:-600}
BENCH_QUIET=${BENCH_QUIET:-10}
RCPT=bench@example.org
export CARGO_TARGET_DIR="$top/target/bench"
rel="$CARGO_TARGET_DIR/release"
# The helper as shipped: static-pie, made by install/build-helper.
helper_bin="$rel/helper/outq-enqueue"

if [ "$RUNS" -lt 30 ] || [ "$ROUNDS" -lt 1 ] || [ $((RUNS / ROUNDS)) -lt 5 ]; then
    echo "enqueue.sh: RUNS must be at least 30, with at least 5 per round (ROUNDS)" >&2
    exit 64
fi

say() { printf '== %s\n' "$*" >&2; }
die() {
    printf 'enqueue.sh: %s\n' "$*" >&2
    exit 1
}

root=0
[ "$(id -u)" = 0 ] && root=1

# ---------------------------------------------------------------- clean-up
tag="oqb$$"
work=""
made_users=()
made_groups=()
etc_created=0
conf=/etc/outq/outq.conf
conf_saved=""
conf_text=""
conf_ours=0

conf_is_ours() { [ -f "$conf" ] && [ -n "$conf_text" ] && [ "$(cat "$conf" 2>/dev/null)" = "$conf_text" ]; }

# Put back what was in /etc/outq/outq.conf before the run. If someone else
# replaced our file meanwhile (another root test doing the same dance),
# leave theirs alone and keep the saved original where it is, loudly:
# deleting it could lose the only copy.
restore_conf() {
    if [ "$conf_ours" != 1 ]; then
        :
    elif conf_is_ours; then
        if [ -n "$conf_saved" ] && [ -e "$conf_saved" ]; then
            mv -f "$conf_saved" "$conf"
        else
            rm -f "$conf"
        fi
    else
        echo "enqueue.sh: WARNING: $conf was replaced by someone else during the run; left as it is" >&2
        if [ -n "$conf_saved" ] && [ -e "$conf_saved" ]; then
            echo "enqueue.sh: WARNING: the file that was there before this run is kept as $conf_saved; put it back by hand" >&2
        fi
    fi
    conf_ours=0
    rm -f "$conf.$tag-new" 2>/dev/null
    if [ "$etc_created" = 1 ]; then
        rmdir /etc/outq 2>/dev/null || echo "enqueue.sh: WARNING: /etc/outq (created by this run) is not empty; left in place" >&2
        etc_created=0
    fi
    # Only now may the privileged tests have /etc/outq.
    if [ -n "${lock_fd:-}" ]; then
        flock -u "$lock_fd" 2>/dev/null || true
        exec {lock_fd}>&-
        lock_fd=""
    fi
}

cleanup() {
    local rc=$?
    set +e
    restore_conf
    [ -n "$work" ] && rm -rf "$work"
    local u g
    for u in "${made_users[@]}"; do
        userdel "$u" >/dev/null 2>&1
        # userdel removes the user's own group when USERGROUPS_ENAB is on;
        # make sure in any case.
        if getent group "$u" >/dev/null; then groupdel "$u" >/dev/null 2>&1; fi
    done
    for g in "${made_groups[@]}"; do
        if getent group "$g" >/dev/null; then groupdel "$g" >/dev/null 2>&1; fi
    done
    if getent passwd | grep -q "^$tag"; then
        echo "enqueue.sh: WARNING: users left behind: $(getent passwd | grep "^$tag" | cut -d: -f1 | tr '\n' ' ')" >&2
    fi
    if getent group | grep -q "^$tag"; then
        echo "enqueue.sh: WARNING: groups left behind: $(getent group | grep "^$tag" | cut -d: -f1 | tr '\n' ' ')" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

work=$(mktemp -d /var/tmp/outq-bench.XXXXXX)
chmod 0755 "$work"

# ------------------------------------------------------------------ tools
git_head=$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)
git_dirty=$({ git -C "$top" status --porcelain 2>/dev/null || true; } | wc -l)
if [ -n "${BENCH_NO_BUILD:-}" ]; then
    build_desc="the existing build in target/bench (outq-enqueue built $(date -u -r "$helper_bin" '+%Y-%m-%d %H:%M:%S UTC' 2>/dev/null || echo '?'); the work tree is now at $git_head with $git_dirty uncommitted paths)"
elif [ -n "${BENCH_REV:-}" ]; then
    # A committed revision, exported clean: others' work in progress in the
    # work tree does not leak into the numbers.
    rev=$(git -C "$top" rev-parse --verify --short "$BENCH_REV^{commit}") || die "BENCH_REV=$BENCH_REV is not a commit"
    mkdir "$work/src"
    git -C "$top" archive "$rev" | tar -x -C "$work/src"
    say "building commit $rev: CARGO_TARGET_DIR=$CARGO_TARGET_DIR cargo build --release --workspace"
    (cd "$work/src" && cargo build --release --workspace --quiet)
    rm -f "$helper_bin"
    if [ -x "$work/src/install/build-helper" ]; then
        say "building commit $rev's static-pie helper: install/build-helper"
        "$work/src/install/build-helper" --quiet >&2
    else
        # Before install/build-helper the helper was shipped dynamically
        # linked: measure that one, and say so.
        say "commit $rev has no install/build-helper: measuring its dynamically linked helper"
        mkdir -p "$rel/helper"
        cp "$rel/outq-enqueue" "$helper_bin"
    fi
    build_desc="commit $rev, exported with \`git archive\` (clean, BENCH_REV=$BENCH_REV)"
else
    say "building: CARGO_TARGET_DIR=$CARGO_TARGET_DIR cargo build --release --workspace"
    (cd "$top" && cargo build --release --workspace --quiet)
    say "building the static-pie helper: install/build-helper"
    "$top/install/build-helper" --quiet >&2
    build_desc="the work tree: HEAD $git_head plus $git_dirty uncommitted paths"
fi
[ -x "$rel/outq" ] && [ -x "$helper_bin" ] || die "no release build in $rel, or no helper $helper_bin (unset BENCH_NO_BUILD)"
# How the helper measured is linked, read from the file: static-pie as
# shipped, or dynamically linked (a commit before install/build-helper).
if readelf -lW "$helper_bin" | grep -Eq '^ *INTERP '; then
    helper_kind="dynamically linked (a build from before install/build-helper, not the static-pie helper shipped now)"
else
    helper_kind="static-pie, as shipped (install/build-helper)"
fi


# ------------------------------------------------------------- the set-up
spool="$work/spool"
floor="$work/floor"
msg4k="$work/msg-4k"
msg1m="$work/msg-1m"

# A plain-text message of exactly $1 bytes (no NUL; ends with a newline).
make_message() {
    local size=$1 out=$2 head
    head=$'From: bench@example.org\nTo: bench@example.org\nSubject: outq enqueue benchmark\nMessage-ID: <bench@example.org>\n\n'
    {
        printf '%s' "$head"
        # yes dies of SIGPIPE when head has enough; that is expected.
        { yes 'The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnopqrstuvwxyz' || true; } |
            head -c $((size - ${#head} - 1))
        printf '\n'
    } >"$out"
    [ "$(stat -c %s "$out")" = "$size" ] || die "message $out has the wrong size"
    chmod 0644 "$out"
}
make_message 4096 "$msg4k"
make_message 1048576 "$msg1m"

if [ "$root" = 1 ]; then
    mode="production install (root set-up, helper set-group-ID, run as an unprivileged user)"
    grp="${tag}d"
    owner="${tag}o"
    caller="${tag}c"
    # outq's privileged tests serialise their use of /etc/outq with an
    # exclusive flock on /run/outq-tests.lock (tests/integration/support.rs):
    # hold it too while the file is ours (released in restore_conf).
    test_lock=/run/outq-tests.lock
    [ -e "$test_lock" ] || (umask 077 && : >>"$test_lock")
    exec {lock_fd}>>"$test_lock"
    if ! flock -x -n "$lock_fd"; then
        say "waiting for $test_lock (outq's privileged tests are running; up to ${BENCH_WAIT}s)"
        flock -x -w "$BENCH_WAIT" "$lock_fd" || die "$test_lock is still held after ${BENCH_WAIT}s"
    fi
    # Another test running as root may be using /etc/outq/outq.conf (the
    # privileged tests do): wait until the file has been left alone for
    # BENCH_QUIET seconds and does not name an existing temporary spool,
    # rather than pull the configuration from under it.
    etc_state() { stat -c '%y %s %i' /etc/outq /etc/outq/outq.conf 2>/dev/null | tr '\n' ' ' || true; }
    waited=0
    quiet=0
    announced=0
    last=$(etc_state)
    while :; do
        busy=""
        if [ -f "$conf" ]; then
            other=$(sed -n 's/^[[:space:]]*spool_directory[[:space:]]*=[[:space:]]*//p' "$conf" | head -n 1)
            case "$other" in
                /tmp/* | /var/tmp/*) [ -d "$other" ] && busy="it names the temporary spool $other, which exists" ;;
            esac
        fi
        now=$(etc_state)
        if [ "$now" != "$last" ]; then
            busy="it changed in the last ${BENCH_QUIET}s"
            quiet=0
            last=$now
        fi
        if [ -z "$busy" ] && [ "$quiet" -ge "$BENCH_QUIET" ]; then break; fi
        [ -z "$busy" ] || quiet=0
        [ "$waited" -lt "$BENCH_WAIT" ] ||
            die "$conf is in use by someone else ($busy); waited ${BENCH_WAIT}s (set BENCH_WAIT to wait longer)"
        if [ -n "$busy" ] && [ "$announced" = 0 ]; then
            say "waiting: $conf is in use ($busy; another test running as root?)"
            announced=1
        fi
        sleep 1
        waited=$((waited + 1))
        quiet=$((quiet + 1))
    done

    for n in "$grp" "$owner" "$caller"; do
        if getent passwd "$n" >/dev/null || getent group "$n" >/dev/null; then
            die "account or group $n already exists"
        fi
    done
    say "creating group $grp, users $owner (queue owner) and $caller (caller)"
    groupadd --system "$grp"
    made_groups+=("$grp")
    useradd --system --no-create-home --user-group --shell /usr/sbin/nologin "$owner"
    made_users+=("$owner")
    useradd --system --no-create-home --user-group --shell /usr/sbin/nologin "$caller"
    made_users+=("$caller")
    cuid=$(id -u "$caller")
    cgid=$(id -g "$caller")

    mkdir -m 0755 "$work/bin"
    helper="$work/bin/outq-enqueue"
    install -o root -g "$grp" -m 2755 "$helper_bin" "$helper"
    [ "$(stat -c '%U:%G %a' "$helper")" = "root:$grp 2755" ] || die "helper not installed root:$grp 2755"

    say "outq init --spool $spool --user $owner --group $grp"
    "$rel/outq" init --spool "$spool" --user "$owner" --group "$grp" >"$work/init.log"

    if [ ! -e /etc/outq ]; then
        mkdir -m 0755 /etc/outq
        etc_created=1
    fi
    [ -d /etc/outq ] || die "/etc/outq is not a directory"
    if [ -e "$conf" ] || [ -L "$conf" ]; then
        conf_saved="/etc/outq/outq.conf.$tag-saved"
        cp -a "$conf" "$conf_saved"
    fi
    conf_text=$(printf '# written by bench/enqueue.sh (pid %s); restored on exit\nspool_directory = %s\nspool_min_free = 0\nqueue_user = %s\nsetgid_group = %s\nmyhostname = bench.example.org\n' \
        "$$" "$spool" "$owner" "$grp")
    conf_ours=1
    printf '%s\n' "$conf_text" >"$conf.$tag-new"
    chown root:root "$conf.$tag-new"
    chmod 0644 "$conf.$tag-new"
    mv -f "$conf.$tag-new" "$conf"

    mkdir -m 0700 "$floor"
    chown "$caller:$caller" "$floor"

    run_as="setpriv --reuid=$cuid --regid=$cgid --init-groups"
    submit="$helper -f $RCPT $RCPT"
    config_desc="/etc/outq/outq.conf (spool_directory = $spool, spool_min_free = 0)"
else
    mode="DEVELOPMENT MODE (not root: helper not set-group-ID, run with --spool/--config, no separate users)"
    caller=$(id -un)
    helper="$helper_bin"
    printf 'spool_min_free = 0\nmyhostname = bench.example.org\n' >"$work/outq.conf"
    chmod 0644 "$work/outq.conf"
    say "outq init --spool $spool --config $work/outq.conf"
    "$rel/outq" init --spool "$spool" --config "$work/outq.conf" >"$work/init.log"
    mkdir -m 0700 "$floor"
    run_as=""
    submit="$helper --spool $spool --config $work/outq.conf -f $RCPT $RCPT"
    config_desc="$work/outq.conf (spool_min_free = 0), given with --config"
fi
# Every timed command but the bare exec is `sh -c 'exec [LAUNCHER] CMD'`,
# run by bench/alternate.py without a shell of its own: the shell is there only
# to redirect stdin, and its cost, with the launcher's, is measured on its
# own (`sh -c 'exec [LAUNCHER] /bin/true'`) rather than estimated.
wrap() { printf "sh -c 'exec %s%s'" "${run_as:+$run_as }" "$1"; }

cmd_true="/bin/true"
cmd_launcher=$(wrap /bin/true)
cmd_dd_start=$(wrap "dd --version")
cmd_help=$(wrap "$helper --help")
cmd_floor_4k=$(wrap "dd if=$msg4k of=$floor/msg bs=64K conv=fsync status=none")
cmd_floor_1m=$(wrap "dd if=$msg1m of=$floor/msg bs=64K conv=fsync status=none")
cmd_helper_4k=$(wrap "$submit < $msg4k")
cmd_helper_1m=$(wrap "$submit < $msg1m")
prep_sync="sync"
prep_floor="sh -c 'rm -f $floor/msg && sync'"
if [ "$CLEAR_NEW" = 1 ]; then
    prep_helper="sh -c 'find $spool/new -mindepth 1 -delete && sync'"
else
    prep_helper="sync"
fi

# ---------------------------------------------------------- sanity checks
say "sanity: one submission as $caller"
id_out=$(eval "$cmd_helper_4k" 2>"$work/sanity.err") || die "the helper failed: $(cat "$work/sanity.err")"
[ -f "$spool/new/$id_out" ] || die "entry $id_out not found in $spool/new"
entry_stat=$(stat -c '%U:%G %a %s' "$spool/new/$id_out")
# (tmp/.share.UID is the caller's submit_share ledger, not an entry.)
[ -z "$(ls -A "$spool/tmp" | grep -v '^\.share\.')" ] || die "tmp/ holds more than the ledger after a submission"
eval "$cmd_floor_4k" || die "the floor command failed"
[ "$(stat -c %s "$floor/msg")" = 4096 ] || die "the floor wrote the wrong size"
find "$spool/new" -mindepth 1 -delete
rm -f "$floor/msg"

# ------------------------------------------------------------ measurement
# The commands are measured in ROUNDS rounds of RUNS/ROUNDS turns (each
# turn runs every command once, in an order rotated by one every turn), so
# that a drift in the machine's load hits the helper and the floor alike.
# The statistics
# are taken over all runs of a command; the spread of the per-round ratios
# shows how far the result can be trusted.
mkdir -p "$work/times" "$work/results"
declare -A MED MEAN SD MIN MAX N
per_round=$(((RUNS + ROUNDS - 1) / ROUNDS))
warm_round=$(((WARMUP + ROUNDS - 1) / ROUNDS))
[ "$warm_round" -ge 2 ] || warm_round=2
# One second per line in, "median mean sd min max n" out.
stats_of() { sort -g "$1" | awk '{a[NR]=$1; s+=$1; q+=$1*$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; mean=s/NR; v=(NR>1)?(q-NR*mean*mean)/(NR-1):0; if (v<0) v=0; printf "%.9f %.9f %.9f %.9f %.9f %d", m, mean, sqrt(v), a[1], a[NR], NR}'; }
# The helper reads /etc/outq/outq.conf: if someone replaced it, the numbers
# (or the failure) are not ours.
check_conf() {
    [ "$conf_ours" = 1 ] || return 0
    conf_is_ours || die "$conf was replaced by someone else during the run (another test running as root?); run again when it is done"
}
names=(true launcher dd_start helper_start floor_4k helper_4k floor_1m helper_1m)
declare -A CMD PREP
CMD[true]=$cmd_true
PREP[true]=$prep_sync
CMD[launcher]=$cmd_launcher
PREP[launcher]=$prep_sync
CMD[dd_start]=$cmd_dd_start
PREP[dd_start]=$prep_sync
CMD[helper_start]=$cmd_help
PREP[helper_start]=$prep_sync
CMD[floor_4k]=$cmd_floor_4k
PREP[floor_4k]=$prep_floor
CMD[helper_4k]=$cmd_helper_4k
PREP[helper_4k]=$prep_helper
CMD[floor_1m]=$cmd_floor_1m
PREP[floor_1m]=$prep_floor
CMD[helper_1m]=$cmd_helper_1m
PREP[helper_1m]=$prep_helper

cd "$work"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
for name in "${names[@]}"; do : >"$work/times/$name"; done
spec="$work/times/spec"
: >"$spec"
for name in "${names[@]}"; do printf '%s\t%s\t%s\n' "$name" "${PREP[$name]}" "${CMD[$name]}" >>"$spec"; done
for ((round = 1; round <= ROUNDS; round++)); do
    say "round $round of $ROUNDS ($per_round timed runs per command, one of each in turn; $warm_round warm-up turns)"
    mkdir -p "$work/times/r$round"
    python3 "$top/bench/alternate.py" --spec "$spec" --runs "$per_round" --warmup "$warm_round" \
        --out "$work/times/r$round" 2>"$work/alternate.err" || { check_conf; die "round $round: $(tail -n 3 "$work/alternate.err")"; }
    for name in "${names[@]}"; do
        cp "$work/times/r$round/$name.times" "$work/times/$name.$round"
        cat "$work/times/$name.$round" >>"$work/times/$name"
    done
    check_conf
done
left_new=$(find "$spool/new" -mindepth 1 | wc -l)
tmp_left=$(find "$spool/tmp" -mindepth 1 ! -name '.share.*' | wc -l)
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
finished=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
for name in "${names[@]}"; do
    read -r MED[$name] MEAN[$name] SD[$name] MIN[$name] MAX[$name] N[$name] <<<"$(stats_of "$work/times/$name")"
    # All runs of a command, as one hyperfine-style JSON.
    python3 -c 'import json,sys; ts=[float(l) for l in open(sys.argv[3]) if l.strip()]; json.dump({"results":[{"command":sys.argv[2],"rounds":int(sys.argv[4]),"times":ts}]}, open(sys.argv[1],"w"), indent=1)' \
        "$work/results/$name.json" "${CMD[$name]}" "$work/times/$name" "$ROUNDS"
done
# Per-round direct ratios (see the report), for their spread.
round_med() { stats_of "$work/times/$1.$2" | cut -d' ' -f1; }
declare -A RR_MIN RR_MAX
for size in 4k 1m; do
    RR_MIN[$size]=""
    RR_MAX[$size]=""
    for ((round = 1; round <= ROUNDS; round++)); do
        r=$(awk -v h="$(round_med "helper_$size" "$round")" -v f="$(round_med "floor_$size" "$round")" \
            -v l="$(round_med launcher "$round")" -v t="$(round_med true "$round")" \
            'BEGIN {s = l - t; printf "%.2f", (h - s) / (f - s)}')
        if [ -z "${RR_MIN[$size]}" ] || awk -v a="$r" -v b="${RR_MIN[$size]}" 'BEGIN {exit !(a < b)}'; then RR_MIN[$size]=$r; fi
        if [ -z "${RR_MAX[$size]}" ] || awk -v a="$r" -v b="${RR_MAX[$size]}" 'BEGIN {exit !(a > b)}'; then RR_MAX[$size]=$r; fi
    done
done

# ------------------------------------- where the time goes (strace -T)
# Per-syscall durations of fsync and renameat2, from separate traced runs
# (ptrace slows the process down; only the syscalls' own durations are
# used, and they are dominated by the disk).
trace_note="strace not available or STRACE_RUNS=0: no breakdown."
declare -A TR
trace_as=""
if command -v strace >/dev/null && [ "$STRACE_RUNS" -gt 0 ]; then
    [ "$root" = 1 ] && trace_as="-u $caller"
    trace_series() { # label prepare cmd stdin -> $work/tr-label-{fsync1,fsync2,rename}
        local label=$1 prep=$2 cmd=$3 in=$4 i out
        : >"$work/tr-$label-fsync1"
        : >"$work/tr-$label-fsync2"
        : >"$work/tr-$label-rename"
        for ((i = 0; i < STRACE_RUNS; i++)); do
            eval "$prep" >/dev/null 2>&1
            out="$work/tr-$label.$i"
            # shellcheck disable=SC2086
            strace -qq -T -o "$out" -e trace=fsync,fdatasync,renameat2 $trace_as $cmd <"$in" >/dev/null 2>&1 ||
                { check_conf; die "traced run failed: $cmd"; }
            # (awk, not grep: dd has no second fsync and no rename, and a
            # grep without a match would stop the script under pipefail)
            awk '/^f(data)?sync\(/ {n++; if (n == 1) {sub(/.*</, ""); sub(/>$/, ""); print}}' "$out" >>"$work/tr-$label-fsync1"
            awk '/^f(data)?sync\(/ {n++; if (n == 2) {sub(/.*</, ""); sub(/>$/, ""); print}}' "$out" >>"$work/tr-$label-fsync2"
            awk '/^renameat2\(/ {sub(/.*</, ""); sub(/>$/, ""); print}' "$out" >>"$work/tr-$label-rename"
        done
    }
    median_ms() { sort -g "$1" | awk '{a[NR]=$1} END {if (NR==0) {print "-"; exit} m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m*1000}'; }
    for size in 4k 1m; do
        msgf=$msg4k
        [ "$size" = 1m ] && msgf=$msg1m
        say "strace breakdown, $size ($STRACE_RUNS runs each)"
        trace_series "helper_$size" "$prep_helper" "$submit" "$msgf"
        trace_series "floor_$size" "$prep_floor" "dd if=$msgf of=$floor/msg bs=64K conv=fsync status=none" /dev/null
        TR[helper_${size}_f1]=$(median_ms "$work/tr-helper_$size-fsync1")
        TR[helper_${size}_f2]=$(median_ms "$work/tr-helper_$size-fsync2")
        TR[helper_${size}_rn]=$(median_ms "$work/tr-helper_$size-rename")
        TR[floor_${size}_f1]=$(median_ms "$work/tr-floor_$size-fsync1")
    done
    find "$spool/new" -mindepth 1 -delete
    check_conf
    trace_note="measured"
fi
# Nothing below runs the helper: give /etc/outq/outq.conf back now.
restore_conf

# ----------------------------------------------------------------- report
ms() { awk -v s="$1" 'BEGIN {printf "%.2f", s * 1000}'; }
calc() { awk "BEGIN {printf \"%.9f\", $1}"; } # expression in seconds
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN {exit !(a <= b)}'; }

T=${MED[true]}
L=${MED[launcher]}
S=$(calc "$L - $T") # the launch chain's own cost (shell + setpriv)
declare -A DIRECT RAW NET HD FD GAP
for size in 4k 1m; do
    H=${MED[helper_$size]}
    F=${MED[floor_$size]}
    HD[$size]=$(calc "$H - $S")
    FD[$size]=$(calc "$F - $S")
    GAP[$size]=$(calc "$H - $F")
    RAW[$size]=$(ratio "$H" "$F")
    DIRECT[$size]=$(ratio "${HD[$size]}" "${FD[$size]}")
    NET[$size]=$(ratio "$(calc "$H - $L")" "$(calc "$F - $L")")
done
verdict() { if le "${DIRECT[$1]}" 1.1; then echo "**met**"; else echo "**not met**"; fi; }

# The helper's extra time over the floor, split with the start-up runs and
# the traced syscall durations (seconds).
declare -A SPLIT_F2 SPLIT_F1 SPLIT_REST
STARTUP=$(calc "${MED[helper_start]} - ${MED[dd_start]}")
if [ "$trace_note" = measured ]; then
    for size in 4k 1m; do
        SPLIT_F2[$size]=$(awk -v a="${TR[helper_${size}_f2]}" -v b="${TR[helper_${size}_rn]}" 'BEGIN {printf "%.9f", (a + b) / 1000}')
        SPLIT_F1[$size]=$(awk -v a="${TR[helper_${size}_f1]}" -v b="${TR[floor_${size}_f1]}" 'BEGIN {printf "%.9f", (a - b) / 1000}')
        SPLIT_REST[$size]=$(calc "${GAP[$size]} - $STARTUP - ${SPLIT_F2[$size]} - ${SPLIT_F1[$size]}")
    done
fi

cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
fstype=$(stat -f -c %T "$spool")
mnt=$(findmnt -no TARGET,SOURCE,FSTYPE,OPTIONS -T "$spool" | sed 's/  */ /g')
src=$(findmnt -no SOURCE -T "$spool")
realfs=$(findmnt -no FSTYPE -T "$spool")
disk=$(lsblk -dno NAME,SIZE,ROTA,TYPE,MODEL "$src" 2>/dev/null | sed 's/  */ /g; s/ $//' || true)
virt=$(systemd-detect-virt 2>/dev/null || true)
same_fs=no
[ "$(stat -c %d "$spool")" = "$(stat -c %d "$floor")" ] && same_fs=yes
rustc_v=$(rustc --version 2>/dev/null || echo unknown)
tool="bench/alternate.py (no intermediate shell, so no shell start-up correction); per command $((per_round * ROUNDS)) timed runs and $((warm_round * ROUNDS)) warm-up turns, in $ROUNDS rounds of $per_round turns (in each turn every command runs once, the order rotated by one from the turn before)"
machine="$(nproc) cores, $cpu, $mem RAM, kernel $(uname -r), ${virt:-unknown virtualization}, spool on $realfs ($src, virtio disk)"
if [ "$CLEAR_NEW" = 1 ]; then
    new_policy="the helper's entries in new/ are removed (CLEAR_NEW=1)"
else
    new_policy="new/ is left to fill up (CLEAR_NEW=0)"
fi
traced=0
[ "$trace_note" = measured ] && traced=$((2 * STRACE_RUNS))
committed=$((1 + 2 * ROUNDS * (warm_round + per_round) + traced))
if [ "$root" = 1 ]; then
    if [ -n "$conf_saved" ]; then
        conf_note="an existing /etc/outq/outq.conf was saved before the run and put back after it"
    elif [ "$etc_created" = 1 ]; then
        conf_note="/etc/outq did not exist; it was created for the run and removed after it"
    else
        conf_note="/etc/outq existed without outq.conf; the file was removed after the run"
    fi
fi

row() { # label name
    local label=$1 name=$2
    printf '| %s | %s | %s ± %s | %s | %s | %s |\n' "$label" "$(ms "${MED[$name]}")" \
        "$(ms "${MEAN[$name]}")" "$(ms "${SD[$name]}")" "$(ms "${MIN[$name]}")" "$(ms "${MAX[$name]}")" "${N[$name]}"
}
label_of() { if [ "$1" = 4k ]; then echo "4 KB"; else echo "1 MB"; fi; }

res="$work/RESULTS.md"
{
    echo "# outq-enqueue benchmark: per-message wall time against the fsync floor"
    echo
    echo "Generated by \`bench/enqueue.sh\`, $started to $finished."
    echo
    echo "Mode: **$mode**."
    echo
    echo "## Machine"
    echo
    echo "- $machine"
    echo "- CPU: \`$cpu\` (/proc/cpuinfo), \`nproc\` = $(nproc); memory: $mem"
    echo "- kernel: \`uname -r\` = $(uname -r); \`systemd-detect-virt\`: ${virt:-unknown}"
    echo "- spool filesystem: \`stat -f -c %T\` = $fstype (the ext2/3/4 magic); \`findmnt -T\`: \`$mnt\`"
    echo "- floor directory on the same filesystem as the spool: $same_fs"
    echo "- disk: \`lsblk\`: \`${disk:-unknown}\` (a virtual block device; ROTA is what the guest is told)"
    echo "- load average before / after: $load_before / $load_after (other work on the machine adds noise)"
    echo "- build: $build_desc; $rustc_v, release profile, \`CARGO_TARGET_DIR=target/bench\`"
    echo
    echo "## Set-up"
    echo
    if [ "$root" = 1 ]; then
        echo "- helper: a copy of \`outq-enqueue\`, $helper_kind, \`$helper\`, installed \`root:$grp 2755\` (production: \`root:outqdrop 2755\`)"
        echo "- spool: \`outq init --spool $spool --user $owner --group $grp\`; the sanity check's committed entry was \`$entry_stat\` (owner:group mode bytes)"
        echo "- configuration: $config_desc, \`queue_user = $owner\`, \`setgid_group = $grp\`; $conf_note"
        echo "- caller: unprivileged user \`$caller\` (uid $cuid, gid $cgid, not a member of \`$grp\`); the helper and the floor run as it through \`$run_as\`"
        echo "- floor target: \`$floor/msg\`, in a directory owned by \`$caller\`"
        echo "- users \`$owner\`, \`$caller\` and groups \`$grp\`, \`$owner\`, \`$caller\` exist only for the run"
    else
        echo "- **Development mode** (the script was not run as root): the helper is \`$helper\` ($helper_kind), not set-group-ID, called with \`--spool\` and \`--config\` by the invoking user \`$caller\`. This is not the production path (no set-group-ID exec, no separate caller); run the script as root for that."
        echo "- spool: \`outq init --spool $spool --config $work/outq.conf\`; the sanity check's committed entry was \`$entry_stat\` (owner:group mode bytes)"
        echo "- configuration: $config_desc"
        echo "- floor target: \`$floor/msg\`"
    fi
    echo "- messages: exactly 4096 and 1048576 bytes of plain text, one recipient (\`$RCPT\`); the helper adds its envelope header and trailer (the 4 KB entry is $(echo "$entry_stat" | awk '{print $3}') bytes)"
    echo "- timing: $tool"
    echo "- before every run (untimed \`--prepare\`): the floor's file is removed, $new_policy, then \`sync\`; so every run creates one new file and starts with no dirty data. Entries in new/ at the end of the timed runs: $left_new; left in tmp/: $tmp_left. Messages committed in all (sanity check, warm-ups, timed and traced runs): $committed."
    echo
    echo "## Commands (as timed)"
    echo
    echo '```sh'
    echo "# exec of a trivial binary, and the launch chain around it"
    echo "$cmd_true"
    echo "$cmd_launcher"
    echo "# start-up only, no I/O: dd, and the helper (exec${run_as:+ set-group-ID}, hardening, usage text)"
    echo "$cmd_dd_start"
    echo "$cmd_help"
    echo "# floor   (prepare: $prep_floor)"
    echo "$cmd_floor_4k"
    echo "$cmd_floor_1m"
    echo "# helper  (prepare: $prep_helper)"
    echo "$cmd_helper_4k"
    echo "$cmd_helper_1m"
    echo '```'
    echo
    echo "## Results (milliseconds per message)"
    echo
    echo "| command | **median** | mean ± σ | min | max | runs |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    row "\`/bin/true\` (exec only)" true
    row "launch chain + \`/bin/true\`" launcher
    row "dd start-up (\`--version\`)" dd_start
    row "helper start-up (\`--help\`)" helper_start
    row "floor 4 KB (dd conv=fsync)" floor_4k
    row "**helper 4 KB**" helper_4k
    row "floor 1 MB (dd conv=fsync)" floor_1m
    row "**helper 1 MB**" helper_1m
    echo
    noisy=""
    for name in "${names[@]}"; do
        if awk -v sd="${SD[$name]}" -v m="${MED[$name]}" 'BEGIN {exit !(sd > 0.3 * m)}'; then noisy="$noisy $name"; fi
    done
    if [ -n "$noisy" ]; then
        echo "**Noisy run**: the standard deviation is above 30% of the median for:$noisy. Something else was using the machine (see the load average); run the script again before drawing conclusions."
        echo
    fi
    echo "The launch chain (\`sh -c 'exec ${run_as:+$run_as }…'\`) costs $(ms "$S") ms by itself (median of the launch chain + \`/bin/true\`, $(ms "$L") ms, minus \`/bin/true\`, $(ms "$T") ms)."
    echo
    echo "### Ratio helper / floor"
    echo
    echo "| size | helper (raw) | floor (raw) | helper, launcher out | floor, launcher out | raw ratio | **direct ratio** | direct, per round (min–max of $ROUNDS) | beyond a trivial exec | target ≤ 1.1× |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    for size in 4k 1m; do
        printf '| %s | %s | %s | %s | %s | %s× | **%s×** | %s–%s× | %s× | %s |\n' "$(label_of "$size")" \
            "$(ms "${MED[helper_$size]}")" "$(ms "${MED[floor_$size]}")" "$(ms "${HD[$size]}")" "$(ms "${FD[$size]}")" \
            "${RAW[$size]}" "${DIRECT[$size]}" "${RR_MIN[$size]}" "${RR_MAX[$size]}" "${NET[$size]}" "$(verdict "$size")"
    done
    echo
    echo "- raw: both medians as measured, both through the same launch chain${run_as:+ (\`setpriv\` as the caller)};"
    echo "- **direct**: the launch chain's own cost ($(ms "$S") ms) taken out of both, i.e. exec + work of the helper against exec + write + fsync of dd, as a caller that execs them directly would see; the target is judged on this one;"
    echo "- per round: the direct ratio from each round's own medians; its spread shows the noise. The launch chain is most of every raw number, so the direct numbers are differences of larger ones and a small change in any median moves the direct ratio noticeably: compare several runs of this script before trusting the second decimal;"
    echo "- beyond a trivial exec: the whole launch chain + \`/bin/true\` median taken out of both (exec of a trivial binary removed too)."
    echo
    echo "## Target"
    echo
    echo "The project's target: submitting a message through outq-enqueue costs **at most 1.1× the floor** (exec + write + fsync of the same bytes, \`dd conv=fsync\`, to the same filesystem)."
    echo
    for size in 4k 1m; do
        echo "- $(label_of "$size"): helper $(ms "${HD[$size]}") ms vs floor $(ms "${FD[$size]}") ms as called directly → **${DIRECT[$size]}×** (raw ${RAW[$size]}×): target $(verdict "$size")."
    done
    echo
    for size in 4k 1m; do
        le "${DIRECT[$size]}" 1.1 && continue
        if [ "$trace_note" = measured ]; then
            echo "Why not, for $(label_of "$size"): the helper takes $(ms "${GAP[$size]}") ms more than dd. Of that, the rename (and a second fsync, if any), which dd does not do, is $(ms "${SPLIT_F2[$size]}") ms; its fsync costs $(ms "${SPLIT_F1[$size]}") ms more than dd's; its start-up differs from dd's by $(ms "$STARTUP") ms; the remaining $(ms "${SPLIT_REST[$size]}") ms are its other work (configuration and spool checks, the copy loop with its NUL scan, syslog). See \"Where the time goes\"."
        else
            echo "Why not, for $(label_of "$size"): the helper takes $(ms "${GAP[$size]}") ms more than dd; it makes two fsyncs (see below) and does more work around them."
        fi
        echo
    done
    echo "## Where the time goes"
    echo
    echo "The helper's commit protocol makes **one** \`fsync\`, as \`dd conv=fsync\` does, but after a rename:"
    echo
    echo "1. \`renameat2(tmp/ID → new/ID, RENAME_NOREPLACE)\`, the commit point, once the whole entry is written;"
    echo "2. \`fsync\` on the file: its data, its inode and its name in new/ (the helper cannot fsync new/ itself: new/ is mode 3730 and the helper's group has no read permission on it, by design). Why that is enough on ext4, XFS and btrfs: outq-spool(5), DURABILITY."
    echo
    echo "It also does more before and around the write than dd: a set-group-ID exec (the dynamic loader in secure mode), start-up hardening, reading and checking the configuration, opening the spool path (\`openat2\` without symbolic links, each directory above checked), \`statvfs\`, \`fchmod\`/\`fstat\` checks, a NUL scan of every chunk, and one syslog record. (Called with \`-f\`, as outq-sendmail calls it, the helper makes no password-database lookup.)"
    echo
    if [ "$trace_note" = measured ]; then
        echo "Syscall durations under \`strace -T\`, $STRACE_RUNS traced runs per command, medians in ms (tracing slows the process, hardly the disk)${trace_as:+; traced as \`$caller\` with \`strace -u\`, which keeps the set-group-ID exec}:"
        echo
        echo "| size | helper's first fsync | helper renameat2 | helper's second fsync (0.000: there is none) | dd's only fsync |"
        echo "| --- | ---: | ---: | ---: | ---: |"
        for size in 4k 1m; do
            echo "| $(label_of "$size") | ${TR[helper_${size}_f1]} | ${TR[helper_${size}_rn]} | ${TR[helper_${size}_f2]} | ${TR[floor_${size}_f1]} |"
        done
        echo
        echo "The helper's time over the floor's (medians, ms), split up:"
        echo
        echo "| size | helper − floor | start-up (helper \`--help\` − dd \`--version\`) | second fsync + rename | first fsync − dd's fsync | rest (config, spool checks, copy loop, syslog, …) |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: |"
        for size in 4k 1m; do
            echo "| $(label_of "$size") | $(ms "${GAP[$size]}") | $(ms "$STARTUP") | $(ms "${SPLIT_F2[$size]}") | $(ms "${SPLIT_F1[$size]}") | $(ms "${SPLIT_REST[$size]}") |"
        done
        echo
        echo "(The split mixes medians of different runs, so it is approximate; a negative entry means the helper is faster there.)"
        echo
        if le "${TR[floor_4k_f1]}" 1; then
            echo "On this disk a flush is cheap: dd's whole fsync of 4 KB takes ${TR[floor_4k_f1]} ms and the helper's ${TR[helper_4k_f1]} ms, against about $(ms "$T") ms for the exec of a trivial binary, so process start-up, not the disk, dominates both commands here."
        else
            echo "On this disk a flush is expensive: dd's fsync of 4 KB takes ${TR[floor_4k_f1]} ms and the helper's ${TR[helper_4k_f1]} ms (its only one, after the rename)."
        fi
        echo "On a disk whose cache flush is slow (a physical disk, or a VM whose host honours flushes), the journal commit dominates both commands; the helper makes one, as dd does: measure on the target hardware before trusting these ratios there."
    else
        echo "$trace_note"
    fi
    echo
    echo "## Reference (shared/ANCHORS.md, same hardware class)"
    echo
    echo "Exec of a trivial binary ≈ 0.9 ms; exec + write 4 KB + fsync (\`dd conv=fsync\`) ≈ 3.2 ms; nullmailer-queue ≈ 4.9 ms (≈ 1.6× that floor); Postfix sendmail + postdrop ≈ 20.7 ms (≈ 6.5×)."
    echo
    echo "Here: exec of a trivial binary $(ms "$T") ms; the 4 KB floor $(ms "${FD[4k]}") ms as called directly, $(ms "${MED[floor_4k]}") ms through the launch chain. The reference figures were measured by another method (not recorded), so compare ratios, not milliseconds, across the two."
    echo
    echo "Raw data: \`bench/results/*.json\`, every run's time (rewritten by each run)."
} >"$res"

# Only a complete run replaces the previous results.
mkdir -p "$OUT_DIR/results"
rm -f "$OUT_DIR"/results/*.json
cp "$work"/results/*.json "$OUT_DIR/results/"
cp "$res" "$OUT_DIR/RESULTS.md.tmp.$$"
mv -f "$OUT_DIR/RESULTS.md.tmp.$$" "$OUT_DIR/RESULTS.md"
say "wrote $OUT_DIR/RESULTS.md"
for size in 4k 1m; do
    printf '%s: helper %s ms, floor %s ms (launcher out); direct ratio %sx, raw %sx (%s ms / %s ms)\n' "$size" \
        "$(ms "${HD[$size]}")" "$(ms "${FD[$size]}")" "${DIRECT[$size]}" "${RAW[$size]}" \
        "$(ms "${MED[helper_$size]}")" "$(ms "${MED[floor_$size]}")"
done
echo "machine: $machine"
