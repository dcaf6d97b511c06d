#!/usr/bin/env bash
# bench/drain.sh: how fast a full queue drains to an SMTP server on
# loopback: outq's runner (`outq run --once`), Postfix flushing its
# deferred queue, and nullmailer-send, all delivering to the same
# Postfix smtp-sink.
#
# The queues: COUNT (10 000) messages of exactly 4096 bytes, with 1 and
# with 10 recipients each.
# - outq: entries committed through the installed set-group-ID helper (4
#   callers in parallel, bench/conc.py), kept aside as a template and
#   copied (cp -a: owner, group, mode kept) into the spool before each run.
#   Two starting points: new/ (fresh submissions, picked up by the runner)
#   and deferred/ (a failed attempt recorded, due now: the same state as
#   Postfix's deferred queue; state files by bench/spoolgen.py). Then
#   `outq run --once` as the queue owner, relay smtp://127.0.0.1:SINK,
#   connections 4 and 10 (new/), 4 (deferred/).
# - Postfix: a private instance, relayhost = [127.0.0.1]:SINK, its queue
#   filled over SMTP by smtp-source (same message) while
#   `defer_transports = smtp` holds delivery back; once every message is
#   in deferred/, the setting is removed, Postfix reloaded, and the clock
#   runs from `postqueue -f` until the queue is empty. Postfix's defaults
#   otherwise (20 connections per destination, connection cache).
# - nullmailer-send (unpacked from the .deb, see lib.sh): NM_COUNT
#   messages queued with nullmailer-queue, then one pass (pausetime 0),
#   as user mail; its rate is per message, so the count only scales the
#   wall time (it is ≈ 20 msg/s: 10 000 would take minutes).
# - smtp-source (Postfix's queue-less load generator, no PIPELINING): the
#   same message, COUNT messages with 1 and 10 recipients, 4 and 10
#   sessions (the runner's connections), each session kept for many
#   messages (-d), as outq's are: a ceiling for an unpipelined client and
#   a reference for a pipelined one.
# CPU: everything each system runs (the runner; Postfix's master and all
# its daemons; nullmailer-send and its protocol modules) is in its own
# cgroup (v1 cpuacct); smtp-sink's CPU is counted apart. Each figure is
# the median of DRAIN_RUNS runs, interleaved.
#
# Knobs: COUNT, NM_COUNT, DRAIN_RUNS, RCPTS; DRAIN_SYSTEMS (default all:
# outq-new-c4 outq-new-c10 outq-deferred-c4 source-s4 source-s10 postfix
# nullmailer) to measure some only; OUTQ_BIN, another build of the runner
# to measure in place of the release build; OUTQ_COMPARE, a second build
# measured in the same runs (systems cmp-new-c4, cmp-new-c10, each run
# right after its outq counterpart: a before/after comparison that shares
# the machine's noise); OUTQ_COMPARE_LABEL names that build in the report.
#
# Output: $OUT/drain.md, raw data in $RESULTS/drain/.
me=drain.sh
source "$(dirname "$0")/lib.sh"

COUNT=${COUNT:-10000}
NM_COUNT=${NM_COUNT:-300}
DRAIN_RUNS=${DRAIN_RUNS:-3}
RCPTS=${RCPTS:-"1 10"}
ALL_SYSTEMS="outq-new-c4 outq-new-c10 outq-deferred-c4 source-s4 source-s10 postfix nullmailer"
if [ -n "${OUTQ_COMPARE:-}" ]; then ALL_SYSTEMS="$ALL_SYSTEMS cmp-new-c4 cmp-new-c10"; fi
SYSTEMS=${DRAIN_SYSTEMS:-$ALL_SYSTEMS}
for s in $SYSTEMS; do
    case " $ALL_SYSTEMS " in *" $s "*) ;; *) die "unknown system $s in DRAIN_SYSTEMS (one of: $ALL_SYSTEMS)" ;; esac
done
measured() { case " $SYSTEMS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

tools
build
raw="$RESULTS/drain"
mkdir -p "$OUT" "$raw"
rm -f "$raw"/*

make_accounts
install_helper
if [ -n "${OUTQ_BIN:-}" ]; then
    install -o root -g root -m 0755 "$OUTQ_BIN" "$outq"
    say "runner: $OUTQ_BIN (OUTQ_BIN)"
fi
if [ -n "${OUTQ_COMPARE:-}" ]; then
    install -o root -g root -m 0755 "$OUTQ_COMPARE" "$work/bin/outq-cmp"
    say "compared with: $OUTQ_COMPARE (OUTQ_COMPARE)"
fi
spool="$work/spool"
make_spool "$spool"
conc_dir="$work/conc"
mkdir -m 0700 "$conc_dir"
chown "$caller:$caller" "$conc_dir"
msg="$work/msg-4k"
make_message 4096 "$msg"

rcpt_list() { # n -> n addresses
    if [ "$1" = 1 ]; then echo "$RCPT"; else seq -f "r%g@example.org" 1 "$1" | tr '\n' ' '; fi
}

# --------------------------------------------------- the receiving server
sport=$(free_port)
start_sink "$sport"

# ------------------------------------------------------- outq templates
dev_helper "$spool"
for R in $RCPTS; do
    say "outq: committing $COUNT messages with $R recipient(s) through the helper"
    # shellcheck disable=SC2046
    $as_filler "$PY" "$bench/conc.py" --procs 4 --count $((COUNT / 4)) --stdin "$msg" \
        --out "$conc_dir/fill-$R.json" -- $fill_cmd $(rcpt_list "$R") || die "filling failed"
    mkdir "$work/tmpl-$R"
    find "$spool/new" -mindepth 1 -maxdepth 1 -exec mv -t "$work/tmpl-$R" {} +
    got=$(find "$work/tmpl-$R" -type f | wc -l)
    [ "$got" = "$COUNT" ] || die "template $R: $got entries, expected $COUNT"
    # Deferred variant: the same entries with a state file each, due now.
    mkdir -m 0700 "$work/tmpl-$R.state"
    "$PY" "$bench/spoolgen.py" states --entries "$work/tmpl-$R" --state "$work/tmpl-$R.state" \
        --uid "$ouid" --gid "$ogid" --due $(($(date +%s) - 60)) >/dev/null
done
fill_rate=$(jq -r '.rate' "$conc_dir/fill-1.json")
entry_size=$(stat -c %s "$(find "$work/tmpl-1" -type f -print -quit)")

# Runner configurations (read with --config by the queue owner).
for C in 4 10; do
    printf '# bench/drain.sh\nspool_directory = %s\nqueue_user = %s\nsetgid_group = %s\nmyhostname = bench.example.org\nrelay = smtp://127.0.0.1:%s\nconnections = %s\n' \
        "$spool" "$owner" "$grp" "$sport" "$C" >"$work/run-$C.conf"
    chmod 0644 "$work/run-$C.conf"
done
cg_new outq
OUTQ_CG=$CG

# ---------------------------------------------------------------- Postfix
pf_version=-
if measured postfix; then
    lport=$(free_port)
    pf_make "$work/pf" "$lport" "$sport"
    echo "defer_transports = smtp" >>"$PF/etc/main.cf"
    cg_new postfix
    PF_CG=$CG
    pf_start "$PF_CG"
    wait_port "$lport" || die "Postfix does not listen on $lport"
    pf_version=$(postconf -c "$PF/etc" -h mail_version)
fi

# ------------------------------------------------------------- smtp-source
cg_new source
SRC_CG=$CG

# ------------------------------------------------------------- nullmailer
NM_VERSION=-
if measured nullmailer; then
    nm_setup
    nm_remote "$sport"
    cg_new nullmailer
    NM_CG=$CG
    for R in $RCPTS; do
        # shellcheck disable=SC2046
        make_nm_input "$msg" "$msg.nm$R" $(rcpt_list "$R")
        $as_caller "$PY" "$bench/conc.py" --procs 2 --count $((NM_COUNT / 2)) --stdin "$msg.nm$R" \
            --out "$conc_dir/nmfill-$R.json" -- "$nmq" || die "nullmailer-queue failed"
        mkdir "$work/nmtmpl-$R"
        find /var/spool/nullmailer/queue -type f -exec mv -t "$work/nmtmpl-$R" {} +
        [ "$(find "$work/nmtmpl-$R" -type f | wc -l)" = "$NM_COUNT" ] || die "nullmailer template $R incomplete"
    done
fi

# ------------------------------------------------------------------ runs
# Each run writes one line to $work/runs: system variant R wall cpu_s sink_cpu_s maxrss_kb
record() { echo "$*" >>"$work/runs"; }
: >"$work/runs"
spool_empty() { [ -z "$(find "$spool/new" "$spool/active" "$spool/deferred" "$spool/hold" "$spool/failed" "$spool/corrupt" -mindepth 1 -print -quit)" ]; }

run_outq() { # R from(new|deferred) C run [outq|cmp]
    local R=$1 from=$2 C=$3 run=$4 which=${5:-outq} t0 t1 c0 c1 s0 s1 k0 k1 log runner=$outq
    [ "$which" = cmp ] && runner="$work/bin/outq-cmp"
    log="$raw/$which-$from-c$C-r$R.$run.log"
    spool_empty || die "the spool is not empty before a run"
    copy_in "$work/tmpl-$R" "$spool/$from"
    if [ "$from" = deferred ]; then copy_in "$work/tmpl-$R.state" "$spool/state"; fi
    sync
    k0=$(sink_count)
    c0=$(cg_usage "$OUTQ_CG")
    s0=$(cg_usage "$SINK_CG")
    t0=$EPOCHREALTIME
    /usr/bin/time -v -o "$work/time.out" "${CGEXEC[@]}" "$OUTQ_CG" $as_owner "$runner" run --once \
        --config "$work/run-$C.conf" --log stderr 2>"$log" || die "outq run failed: $(tail -n 3 "$log")"
    t1=$EPOCHREALTIME
    c1=$(cg_usage "$OUTQ_CG")
    s1=$(cg_usage "$SINK_CG")
    sleep 0.2
    k1=$(sink_count)
    local delivered
    delivered=$(grep -c 'removed (delivered)' "$log" || true)
    [ "$delivered" = "$COUNT" ] || die "outq delivered $delivered of $COUNT (see $log)"
    [ $((k1 - k0)) = "$COUNT" ] || die "smtp-sink received $((k1 - k0)) of $COUNT"
    spool_empty || die "entries left in the spool after the run"
    [ -z "$(find "$spool/state" -mindepth 1 -print -quit)" ] || die "state files left after the run"
    cp "$work/time.out" "$raw/$which-$from-c$C-r$R.$run.time"
    record "$which-$from-c$C $R $(calc "$t1 - $t0") $(calc "($c1 - $c0) / 1e9") $(calc "($s1 - $s0) / 1e9") $(awk -F': ' '/Maximum resident/ {print $2}' "$work/time.out")"
}

run_postfix() { # R run
    local R=$1 run=$2 t0 t1 c0 c1 s0 s1 k0 k1 i n
    postconf -c "$PF/etc" -e "defer_transports = smtp"
    pf_reload
    sleep 1
    smtp-source -s 8 -m "$COUNT" -r "$R" -F "$msg" -f "$SENDER" -t "$RCPT" "127.0.0.1:$lport" ||
        die "smtp-source failed"
    for ((i = 0; i < 1200; i++)); do
        n=$(find "$PF/queue/deferred" -type f | wc -l)
        [ "$n" -ge "$COUNT" ] && [ -z "$(find "$PF/queue/incoming" "$PF/queue/active" "$PF/queue/maildrop" -type f -print -quit)" ] && break
        sleep 0.5
    done
    [ "$n" = "$COUNT" ] || die "Postfix deferred/ holds $n messages, expected $COUNT"
    postconf -c "$PF/etc" -e "defer_transports ="
    pf_reload
    sleep 3
    sync
    k0=$(sink_count)
    c0=$(cg_usage "$PF_CG")
    s0=$(cg_usage "$SINK_CG")
    t0=$EPOCHREALTIME
    postqueue -c "$PF/etc" -f
    while pf_busy; do sleep 0.02; done
    t1=$EPOCHREALTIME
    c1=$(cg_usage "$PF_CG")
    s1=$(cg_usage "$SINK_CG")
    sleep 0.2
    k1=$(sink_count)
    [ $((k1 - k0)) = "$COUNT" ] || die "smtp-sink received $((k1 - k0)) of $COUNT from Postfix"
    record "postfix $R $(calc "$t1 - $t0") $(calc "($c1 - $c0) / 1e9") $(calc "($s1 - $s0) / 1e9") -"
}

# smtp-source against the same smtp-sink: S sessions in parallel, each
# kept for its share of the messages (-d), R recipients per message, the
# same 4 KB message (-F), as an unprivileged user in its own cgroup.
run_source() { # R S run
    local R=$1 S=$2 run=$3 t0 t1 c0 c1 s0 s1 k0 k1
    k0=$(sink_count)
    c0=$(cg_usage "$SRC_CG")
    s0=$(cg_usage "$SINK_CG")
    t0=$EPOCHREALTIME
    /usr/bin/time -v -o "$work/time.out" "${CGEXEC[@]}" "$SRC_CG" $as_caller smtp-source -d -s "$S" -m "$COUNT" \
        -r "$R" -F "$msg" -f "$SENDER" -t "$RCPT" -M bench.example.org "127.0.0.1:$sport" \
        >"$raw/source-s$S-r$R.$run.log" 2>&1 || die "smtp-source failed: $(tail -n 3 "$raw/source-s$S-r$R.$run.log")"
    t1=$EPOCHREALTIME
    c1=$(cg_usage "$SRC_CG")
    s1=$(cg_usage "$SINK_CG")
    sleep 0.2
    k1=$(sink_count)
    [ $((k1 - k0)) = "$COUNT" ] || die "smtp-sink received $((k1 - k0)) of $COUNT from smtp-source"
    record "source-s$S $R $(calc "$t1 - $t0") $(calc "($c1 - $c0) / 1e9") $(calc "($s1 - $s0) / 1e9") $(awk -F': ' '/Maximum resident/ {print $2}' "$work/time.out")"
}

run_nullmailer() { # R run
    local R=$1 run=$2 t0 t1 c0 c1 s0 s1 k0 k1
    copy_in "$work/nmtmpl-$R" /var/spool/nullmailer/queue
    sync
    k0=$(sink_count)
    c0=$(cg_usage "$NM_CG")
    s0=$(cg_usage "$SINK_CG")
    t0=$EPOCHREALTIME
    /usr/bin/time -v -o "$work/time.out" "${CGEXEC[@]}" "$NM_CG" setpriv --reuid=mail --regid=mail --clear-groups \
        "$nms" >"$raw/nullmailer-r$R.$run.log" 2>&1 || die "nullmailer-send failed"
    t1=$EPOCHREALTIME
    c1=$(cg_usage "$NM_CG")
    s1=$(cg_usage "$SINK_CG")
    sleep 0.2
    k1=$(sink_count)
    [ "$(nm_count)" = 0 ] || die "nullmailer left $(nm_count) messages"
    [ $((k1 - k0)) = "$NM_COUNT" ] || die "smtp-sink received $((k1 - k0)) of $NM_COUNT from nullmailer"
    record "nullmailer $R $(calc "$t1 - $t0") $(calc "($c1 - $c0) / 1e9") $(calc "($s1 - $s0) / 1e9") $(awk -F': ' '/Maximum resident/ {print $2}' "$work/time.out")"
}

wait_quiet
quiet_before=$(quiet_md)
started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
# Every run is checked for other work (compilers, fuzzers, tests) running
# at its start or end: the count goes into runs.txt's last column.
busy_runs=0
checked() { # runner args...
    local b0 b1
    wait_calm
    b0=$(competitors)
    "$@"
    b1=$(competitors)
    sed -i '$ s/$/ '"$((b0 + b1))"'/' "$work/runs"
    [ $((b0 + b1)) = 0 ] || busy_runs=$((busy_runs + 1))
}
for ((run = 1; run <= DRAIN_RUNS; run++)); do
    for R in $RCPTS; do
        say "run $run of $DRAIN_RUNS, $R recipient(s): $SYSTEMS"
        if measured outq-new-c4; then checked run_outq "$R" new 4 "$run"; fi
        if measured cmp-new-c4; then checked run_outq "$R" new 4 "$run" cmp; fi
        if measured source-s4; then checked run_source "$R" 4 "$run"; fi
        if measured outq-new-c10; then checked run_outq "$R" new 10 "$run"; fi
        if measured cmp-new-c10; then checked run_outq "$R" new 10 "$run" cmp; fi
        if measured source-s10; then checked run_source "$R" 10 "$run"; fi
        if measured outq-deferred-c4; then checked run_outq "$R" deferred 4 "$run"; fi
        if measured postfix; then checked run_postfix "$R" "$run"; fi
        if measured nullmailer; then checked run_nullmailer "$R" "$run"; fi
    done
done
quiet_after=$(quiet_md)
echo "before: $quiet_before; after: $quiet_after (waited ${QUIET_WAITED}s for a load below ${LOAD_MAX:-0.5})" >"$OUT/drain.quiet"
finished=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
cp "$work/runs" "$raw/runs.txt"

# One strace -c -f of the runner (new/, connections 4, 1 recipient): what
# it spends its system calls on.
if measured outq-new-c4 && [ -d "$work/tmpl-1" ]; then
    say "strace -c -f of one outq run (not timed)"
    copy_in "$work/tmpl-1" "$spool/new"
    sync
    strace -c -f -o "$raw/strace-outq-new-c4-r1.txt" $as_owner "$outq" run --once --config "$work/run-4.conf" \
        --log stderr 2>/dev/null || die "traced run failed"
    spool_empty || die "entries left after the traced run"
fi

# ---------------------------------------------------------------- report
# median of a column (3 wall, 4 cpu, 5 sink cpu, 6 rss) for system+R
col_median() { awk -v s="$1" -v r="$2" -v c="$3" '$1 == s && $2 == r && $c != "-" {print $c}' "$work/runs" >"$work/col"; median_of "$work/col"; }
n_of() { case "$1" in nullmailer) echo "$NM_COUNT" ;; *) echo "$COUNT" ;; esac; }
declare -A RATE CPUMS SINKMS RSS WALL
systems=()
for s in outq-new-c4 outq-new-c10 outq-deferred-c4 cmp-new-c4 cmp-new-c10 source-s4 source-s10 postfix nullmailer; do
    if measured "$s"; then systems+=("$s"); fi
done
for R in $RCPTS; do
    for s in "${systems[@]}"; do
        n=$(n_of "$s")
        awk -v s="$s" -v r="$R" -v n="$n" '$1 == s && $2 == r {print n / $3}' "$work/runs" >"$work/col"
        RATE[$s.$R]=$(median_of "$work/col")
        WALL[$s.$R]=$(col_median "$s" "$R" 3)
        CPUMS[$s.$R]=$(calc "$(col_median "$s" "$R" 4) * 1000 / $n")
        SINKMS[$s.$R]=$(calc "$(col_median "$s" "$R" 5) * 1000 / $n")
        RSS[$s.$R]=$(col_median "$s" "$R" 6)
    done
done
label() {
    case "$1" in
        outq-new-c4) echo "outq, new/, connections 4" ;;
        outq-new-c10) echo "outq, new/, connections 10" ;;
        outq-deferred-c4) echo "outq, deferred/ (due), connections 4" ;;
        cmp-new-c4) echo "${OUTQ_COMPARE_LABEL:-outq, the OUTQ_COMPARE build}, new/, connections 4" ;;
        cmp-new-c10) echo "${OUTQ_COMPARE_LABEL:-outq, the OUTQ_COMPARE build}, new/, connections 10" ;;
        source-s4) echo "smtp-source -d -s 4 (no queue, no PIPELINING)" ;;
        source-s10) echo "smtp-source -d -s 10 (no queue, no PIPELINING)" ;;
        postfix) echo "Postfix $pf_version, deferred/ flushed" ;;
        nullmailer) echo "nullmailer-send $NM_VERSION" ;;
    esac
}
# The smtp-source run with as many sessions as outq's connections.
source_of() { case "$1" in *-c10) echo source-s10 ;; *) echo source-s4 ;; esac; }
rate_of() { if measured "$1"; then echo "${RATE[$1.$2]}"; else echo 0; fi; }
{
    echo "## Drain: a full queue delivered to smtp-sink on loopback (bench/drain.sh)"
    echo
    echo "$started to $finished. Machine before: $quiet_before; after: $quiet_after."
    echo
    echo "Queues: $COUNT messages of 4096 bytes (outq entry: $entry_size bytes with 1 recipient) for outq and Postfix, $NM_COUNT for nullmailer (its rate is per message: one process and one connection each); 1 and 10 recipients per message. Receiver: Postfix's \`smtp-sink -c -u postfix 127.0.0.1:$sport 1000\`, one process for all. Wall time: outq and nullmailer from start to exit of one pass; Postfix from \`postqueue -f\` until its queue is empty; smtp-source from start to exit (\`smtp-source -d -s S -m $COUNT -r R -F MSG\`: the same message, S sessions each kept for many messages; it has no queue to read or update, and sends no Received header). CPU: the whole system's processes (cgroup cpuacct), per message; smtp-sink's CPU apart. Medians of $DRAIN_RUNS interleaved runs; every run checked: all messages counted by smtp-sink, queue empty after it. Systems measured: ${systems[*]}."
    echo
    echo "The outq entries were committed by outq-enqueue (the same binary, in its development mode: not set-group-ID, run by the caller with the helper's group, \`--spool\`/\`--config\`, so that /etc/outq is not needed; the entries are the same: owner the caller, the helper's group, mode 0404), 4 callers in parallel at $(fmt "$fill_rate" 0) msg/s, kept aside and copied into the spool (\`cp -a\`) before each run."
    echo
    for R in $RCPTS; do
        echo "### $R recipient(s) per message"
        echo
        echo "| queue drained by | messages | wall s | **msg/s** | CPU ms/msg | smtp-sink CPU ms/msg | runner max RSS | vs Postfix (target ≥ 1×) | vs nullmailer (target ≥ 5×) | vs smtp-source, same sessions |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"
        for s in "${systems[@]}"; do
            rp=$(ratio "${RATE[$s.$R]}" "$(rate_of postfix "$R")")
            rn=$(ratio "${RATE[$s.$R]}" "$(rate_of nullmailer "$R")")
            rs=-
            case "$s" in
                outq* | cmp*)
                    vp="$rp× $(verdict le 1 "$rp")" vn="$rn× $(verdict le 5 "$rn")"
                    rs=$(ratio "${RATE[$s.$R]}" "$(rate_of "$(source_of "$s")" "$R")")
                    ;;
                postfix) vp="(anchor)" vn="$rn×" ;;
                source*) vp="$rp×" vn="$rn×" rs="(anchor)" ;;
                *) vp="$rp×" vn="(anchor)" ;;
            esac
            [ "$rp" = - ] && vp=-
            [ "$rn" = - ] && vn=-
            [ "$rs" = - ] || [ "$rs" = "(anchor)" ] || rs="$rs×"
            rss=${RSS[$s.$R]}
            if [ -z "$rss" ] || le "$rss" 0; then rss="-"; else rss="$(fmt "$(calc "$rss / 1024")" 1) MiB"; fi
            printf '| %s | %s | %s | **%s** | %s | %s | %s | %s | %s | %s |\n' "$(label "$s")" "$(n_of "$s")" \
                "$(fmt "${WALL[$s.$R]}" 2)" "$(fmt "${RATE[$s.$R]}" 0)" "$(fmt "${CPUMS[$s.$R]}" 3)" "$(fmt "${SINKMS[$s.$R]}" 3)" \
                "$rss" "$vp" "$vn" "$rs"
            echo "drain_r$R $s rate=${RATE[$s.$R]} cpu_ms=${CPUMS[$s.$R]} wall=${WALL[$s.$R]} rp=$rp rn=$rn rs=${rs%×} count=$(n_of "$s")" >>"$work/summary"
        done
        echo
    done
    echo "Every run: \`bench/results/drain/runs.txt\` (system, recipients, wall s, CPU s, smtp-sink CPU s, max RSS KiB, other processes seen at its start and end); runner logs and \`/usr/bin/time -v\` output beside it. Runs with other work (compilers, fuzzers, tests) present at their start or end: $busy_runs of $((DRAIN_RUNS * $(wc -w <<<"$RCPTS") * ${#systems[@]})) (each run waits up to ${LOAD_WAIT:-900} s for such work to end)."
    echo
    if [ -s "$raw/strace-outq-new-c4-r1.txt" ]; then
        echo "Where outq's runner spends its system calls (one traced run, new/, connections 4, 1 recipient; \`strace -c -f\`, top 12 by time; tracing slows it down, so only the proportions and counts mean something):"
        echo
        echo '```'
        sed -n '1,2p' "$raw/strace-outq-new-c4-r1.txt"
        sed -n '3,$p' "$raw/strace-outq-new-c4-r1.txt" | grep -v -e '^-' -e 'total' | sort -k2 -g -r | head -n 12
        grep 'total' "$raw/strace-outq-new-c4-r1.txt"
        echo '```'
    fi
} >"$OUT/drain.md"
cp "$work/summary" "$OUT/drain.summary"
say "wrote $OUT/drain.md"
cat "$OUT/drain.summary" >&2
