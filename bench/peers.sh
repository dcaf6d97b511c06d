#!/usr/bin/env bash
# bench/peers.sh: outq-enqueue against its floor and its peers, in one run:
# `dd conv=fsync` (the floor), Postfix `sendmail` (which runs the
# set-group-ID postdrop), and nullmailer's set-user-ID `nullmailer-queue`,
# 4 KB and 1 MB, with 1 caller and with 8 concurrent callers.
#
# Set-up (as root; everything is undone at exit, see lib.sh):
# - outq: unique accounts, the helper installed root:GROUP 2755, a spool
#   made by `outq init`, /etc/outq/outq.conf borrowed for the run;
# - Postfix: a private instance (`postfix -c DIR`), its queue owned by
#   postfix:postdrop as `postfix check` makes it, the master running
#   with `defer_transports = smtp` (mail is picked up, cleaned up and
#   queued, but not sent); an unprivileged caller may use it because a
#   /etc/postfix/main.cf naming it in alternate_config_directories is
#   created for the run (there is none on this Debian: "No configuration");
# - nullmailer: `apt-get download nullmailer`, `dpkg -x` into the work
#   directory, nullmailer-queue made mail:root 4755 as packaged, and its
#   compiled-in spool /var/spool/nullmailer made as the package makes it
#   (nullmailer-send is not running, as outq's runner is not);
# - the caller: an unprivileged user; every command runs with its
#   credentials.
#
# 1 caller: bench/alternate.py, every command as `sh -c 'exec setpriv ...
# CMD < FILE'` started without a shell of its own (as `hyperfine -N`
# does); the launch chain's cost (its median with /bin/true, minus
# /bin/true's) is taken out for the "direct" figures, as in enqueue.sh.
# RUNS runs per command in ROUNDS rounds; within a round the commands take
# turns, one run each (the order rotated every turn), so that the virtual
# disk's flush latency, which drifts from minute to minute, reaches every
# command alike (blocks of one command's runs, as hyperfine makes them,
# moved the ratios by up to 0.3 from one run of this script to the next).
# Before each run an untimed prepare removes the previous run's file
# (Postfix: waits until pickup and cleanup are done with it), then `sync`.
#
# 8 callers: bench/conc.py, run as the caller, starts 8 streams of
# submissions (posix_spawn + wait, each timed) and reports messages/s
# (all messages / wall time) and each message's latency. CONC_ROUNDS
# interleaved rounds (the systems' order rotated every round, so that no
# system always runs first or after the same neighbour). A run of 1 MB
# messages is 8 x 15: runs of 8 x 40 (320 MB each) pushed this virtual
# disk into a throttled state midway through the script (every system's
# rate fell from about 1000 to about 450 msg/s between two rounds), which
# measures the host's disk rather than the programs; the queues are emptied and synced between runs, by
# moving their files aside rather than removing them: on ext4 without a
# journal (this machine's root file system), creating a file skips every
# inode of its block group freed in the last minute, reading each one's
# inode block, so a run that followed the removal of the previous run's
# files in the same group (all of this benchmark's directories are in one)
# would pay for them and the first would not. The files moved aside go
# with the work directory at exit; Postfix's queue is put on hold
# (`postsuper -h`) for the same reason.
#
# Output: $OUT/peers.md (a section of RESULTS.md), raw data in
# $RESULTS/peers/.
me=peers.sh
source "$(dirname "$0")/lib.sh"

RUNS=${RUNS:-100}
ROUNDS=${ROUNDS:-5}
CONC_ROUNDS=${CONC_ROUNDS:-7}
PROCS=${PROCS:-8}
N4K=${N4K:-100}
N1M=${N1M:-15}

tools
build
raw="$RESULTS/peers"
mkdir -p "$OUT" "$raw"
rm -f "$raw"/*.json

make_accounts
install_helper
spool="$work/spool"
make_spool "$spool"
floor="$work/floor"
mkdir -m 0700 "$floor"
chown "$caller:$caller" "$floor"
conc_dir="$work/conc"
mkdir -m 0700 "$conc_dir"
chown "$caller:$caller" "$conc_dir"

msg4k="$work/msg-4k"
msg1m="$work/msg-1m"
make_message 4096 "$msg4k"
make_message 1048576 "$msg1m"
make_nm_input "$msg4k" "$msg4k.nm" "$RCPT"
make_nm_input "$msg1m" "$msg1m.nm" "$RCPT"

# Postfix: private instance, master running, nothing leaves it.
pf_make "$work/pf" 0 0
echo "defer_transports = smtp" >>"$PF/etc/main.cf"
pf_allow_caller
pf_start
sleep 1
pf_version=$(postconf -c "$PF/etc" -h mail_version)

# nullmailer
nm_setup

take_conf "spool_directory = $spool
spool_min_free = 0
queue_user = $owner
setgid_group = $grp
myhostname = bench.example.org"

# ------------------------------------------------------------- commands
sendmail_cmd="/usr/sbin/sendmail -C $PF/etc -i -f $SENDER $RCPT"
declare -A CMD PREP
wrap() { printf "sh -c 'exec %s %s'" "$as_caller" "$1"; }
pf_settle="$work/pf-settle"
cat >"$pf_settle" <<EOF
#!/bin/sh
# Wait until Postfix has taken the last message through pickup and cleanup
# (maildrop, incoming and active empty), then sync.
i=0
while [ -n "\$(find $PF/queue/maildrop $PF/queue/incoming $PF/queue/active -type f -print -quit)" ] && [ \$i -lt 500 ]; do
    sleep 0.01; i=\$((i + 1))
done
sync
EOF
chmod 0755 "$pf_settle"
for size in 4k 1m; do
    m="$work/msg-$size"
    CMD[floor_$size]=$(wrap "dd if=$m of=$floor/msg bs=64K conv=fsync status=none")
    PREP[floor_$size]="sh -c 'rm -f $floor/msg && sync'"
    CMD[outq_$size]=$(wrap "$helper -f $SENDER $RCPT < $m")
    PREP[outq_$size]="sh -c 'find $spool/new -mindepth 1 -delete && sync'"
    CMD[postfix_$size]=$(wrap "$sendmail_cmd < $m")
    PREP[postfix_$size]="$pf_settle"
    CMD[nullmailer_$size]=$(wrap "$nmq < $m.nm")
    PREP[nullmailer_$size]="sh -c 'find /var/spool/nullmailer/queue -type f -delete && sync'"
done
CMD[true]=/bin/true
PREP[true]=sync
CMD[launcher]=$(wrap /bin/true)
PREP[launcher]=sync
names=(true launcher floor_4k outq_4k postfix_4k nullmailer_4k floor_1m outq_1m postfix_1m nullmailer_1m)

# --------------------------------------------------------------- sanity
say "sanity: one submission each, as $caller"
eval "${CMD[outq_4k]}" >/dev/null || die "outq-enqueue failed"
[ "$(find "$spool/new" -type f | wc -l)" = 1 ] || die "no entry in $spool/new"
eval "${CMD[postfix_4k]}" || die "Postfix sendmail failed"
"$pf_settle"
[ "$(find "$PF/queue/deferred" -type f | wc -l)" = 1 ] || die "Postfix did not queue the message: $(tail -n 5 "$PF/postfix.log")"
eval "${CMD[nullmailer_4k]}" || die "nullmailer-queue failed"
[ "$(nm_count)" = 1 ] || die "nullmailer-queue queued nothing"
eval "${CMD[floor_4k]}" || die "dd failed"
find "$spool/new" -mindepth 1 -delete
find /var/spool/nullmailer/queue -type f -delete
postsuper -c "$PF/etc" -d ALL >/dev/null 2>&1

wait_quiet
quiet_before=$(quiet_md)
started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')

# ------------------------------------------------------------ 1 caller
per_round=$((RUNS / ROUNDS))
mkdir -p "$work/t"
for name in "${names[@]}"; do : >"$work/t/$name"; done
spec="$work/t/spec"
: >"$spec"
for name in "${names[@]}"; do printf '%s\t%s\t%s\n' "$name" "${PREP[$name]}" "${CMD[$name]}" >>"$spec"; done
for ((r = 1; r <= ROUNDS; r++)); do
    wait_calm
    say "1 caller: round $r of $ROUNDS ($per_round runs per command, one of each in turn)"
    mkdir -p "$work/t/r$r"
    "$PY" "$bench/alternate.py" --spec "$spec" --runs "$per_round" --warmup 2 --out "$work/t/r$r" 2>"$work/alt.err" ||
        { check_conf; die "1 caller, round $r: $(tail -n 3 "$work/alt.err")"; }
    for name in "${names[@]}"; do cat "$work/t/r$r/$name.times" >>"$work/t/$name"; done
    check_conf
    postsuper -c "$PF/etc" -d ALL >/dev/null 2>&1 || true
done
declare -A MED P10 P90
for name in "${names[@]}"; do
    read -r "MED[$name]" "P10[$name]" "P90[$name]" _ _ _ <<<"$(stats_of "$work/t/$name")"
    jq -R -s --arg c "${CMD[$name]}" '{results: [{command: $c, times: [split("\n")[] | select(length > 0) | tonumber]}]}' \
        "$work/t/$name" >"$raw/one-$name.json"
done
L=$(calc "${MED[launcher]} - ${MED[true]}") # the launch chain's own cost

# ---------------------------------------------------------- 8 callers
declare -A CONC_ARGS
for size in 4k 1m; do
    CONC_ARGS[floor_$size]="dd of=$floor/m{n} bs=64K conv=fsync status=none"
    CONC_ARGS[outq_$size]="$helper -f $SENDER $RCPT"
    CONC_ARGS[postfix_$size]="$sendmail_cmd"
    CONC_ARGS[nullmailer_$size]="$nmq"
done
aside="$work/aside"
mkdir -p "$aside"
clear_all() {
    local d
    d=$(mktemp -d "$aside/XXXXXX")
    find "$floor" -mindepth 1 -maxdepth 1 -exec mv -t "$d" {} +
    mkdir "$d/new" "$d/nm"
    find "$spool/new" -mindepth 1 -maxdepth 1 -exec mv -t "$d/new" {} +
    find /var/spool/nullmailer/queue -type f -exec mv -t "$d/nm" {} +
    "$pf_settle"
    postsuper -c "$PF/etc" -h ALL >/dev/null 2>&1 || true
    sync
}
systems=(floor outq postfix nullmailer)
for ((r = 1; r <= CONC_ROUNDS; r++)); do
    wait_calm
    for size in 4k 1m; do
        n=$N4K
        [ "$size" = 1m ] && n=$N1M
        # The order rotates every round, so that no system always runs
        # first or after the same neighbour.
        k=$(((r - 1) % ${#systems[@]}))
        for s in "${systems[@]:k}" "${systems[@]:0:k}"; do
            name="${s}_$size"
            in="$work/msg-$size"
            [ "$s" = nullmailer ] && in="$in.nm"
            [ "$r" = 1 ] && say "$PROCS callers: $name, $PROCS x $n messages per run"
            clear_all
            # shellcheck disable=SC2086
            $as_caller "$PY" "$bench/conc.py" --procs "$PROCS" --count "$n" --stdin "$in" \
                --out "$conc_dir/$name.$r.json" -- ${CONC_ARGS[$name]} || { check_conf; die "$name: submissions failed"; }
            cp "$conc_dir/$name.$r.json" "$raw/conc-$name.$r.json"
            check_conf
        done
    done
done
# Where the time goes with 8 callers, 4 KB: one more run each of outq and
# the floor under `strace -f -c -w` (wall time per system call; the tracer
# slows everything, the disk's share least). strace runs as root and starts
# the driver as the caller (-u), so the helper's set-group-ID bit holds.
for s in outq floor; do
    clear_all
    # shellcheck disable=SC2086
    strace -f -c -w -o "$raw/strace-conc-${s}_4k.txt" -u "$caller" "$PY" "$bench/conc.py" --procs "$PROCS" \
        --count "$N4K" --stdin "$msg4k" --out "$conc_dir/strace-$s.json" -- ${CONC_ARGS[${s}_4k]} >/dev/null 2>&1 ||
        die "traced $s run failed"
done
clear_all
restore_conf
quiet_after=$(quiet_md)
echo "before: $quiet_before; after: $quiet_after (waited ${QUIET_WAITED}s for a load below ${LOAD_MAX:-0.5})" >"$OUT/peers.quiet"
finished=$(date -u '+%Y-%m-%d %H:%M:%S UTC')

declare -A RATE LAT50 LAT90 CPU
for size in 4k 1m; do
    for s in "${systems[@]}"; do
        name="${s}_$size"
        jq -r '.rate' "$raw"/conc-"$name".*.json >"$work/rate-$name"
        RATE[$name]=$(median_of "$work/rate-$name")
        jq -r '.cpu[]' "$raw"/conc-"$name".*.json >"$work/cpu-$name"
        CPU[$name]=$(median_of "$work/cpu-$name")
        jq -r '.latencies[]' "$raw"/conc-"$name".*.json >"$work/lat-$name"
        read -r "LAT50[$name]" _ "LAT90[$name]" _ _ _ <<<"$(stats_of "$work/lat-$name")"
    done
done

# ---------------------------------------------------------------- report
ms() { awk -v s="$1" 'BEGIN {printf "%.2f", s * 1000}'; }
direct() { calc "${MED[$1]} - $L"; }
label() { if [ "$1" = 4k ]; then echo "4 KB"; else echo "1 MB"; fi; }
{
    echo "## Enqueue against the floor and the peers (bench/peers.sh)"
    echo
    echo "$started to $finished. Machine before: $quiet_before; after: $quiet_after."
    echo
    echo "Set-up: outq-enqueue installed \`root:$grp 2755\`, spool by \`outq init\`; Postfix $pf_version, a private instance (\`postfix -c $PF/etc\`, queue \`postfix:postdrop\` as \`postfix check\` made it), master running with \`defer_transports = smtp\` (each message goes through postdrop, pickup, cleanup and qmgr into deferred/, nothing is sent); nullmailer $NM_VERSION unpacked with \`dpkg -x\`, \`nullmailer-queue\` \`mail:root 4755\`, its compiled-in spool /var/spool/nullmailer made for the run (nullmailer-send not running, as outq's runner is not); floor \`dd bs=64K conv=fsync\` into a new file on the same filesystem. Every command runs as the unprivileged user \`$caller\`. Messages: exactly 4096 and 1048576 bytes, one recipient; nullmailer's input adds its envelope lines ($(($(stat -c %s "$msg4k.nm") - 4096)) bytes)."
    echo
    echo "### 1 caller (bench/alternate.py, milliseconds per message, medians of $RUNS runs in $ROUNDS rounds, the commands taking turns one run at a time)"
    echo
    echo "The launch chain \`sh -c 'exec $as_caller …'\` costs $(ms "$L") ms on its own (median with /bin/true $(ms "${MED[launcher]}") ms − /bin/true $(ms "${MED[true]}") ms); it is taken out for the **direct** figures (as a caller that execs the program would see). Raw medians in brackets; p10–p90 of the raw runs after them."
    echo
    echo "| size | floor (dd) | **outq-enqueue** | Postfix sendmail | nullmailer-queue | outq / floor (target ≤ 1.1×) | outq / Postfix (target ≤ 0.3×) | outq / nullmailer (target < 1×) |"
    echo "| --- | ---: | ---: | ---: | ---: | --- | --- | --- |"
    for size in 4k 1m; do
        f=$(direct "floor_$size") o=$(direct "outq_$size") p=$(direct "postfix_$size") n=$(direct "nullmailer_$size")
        rf=$(ratio "$o" "$f") rp=$(ratio "$o" "$p") rn=$(ratio "$o" "$n")
        cell() { printf '%s (%s; %s–%s)' "$(ms "$(direct "$1")")" "$(ms "${MED[$1]}")" "$(ms "${P10[$1]}")" "$(ms "${P90[$1]}")"; }
        printf '| %s | %s | **%s** | %s | %s | %s× %s | %s× %s | %s× %s |\n' "$(label "$size")" \
            "$(cell "floor_$size")" "$(cell "outq_$size")" "$(cell "postfix_$size")" "$(cell "nullmailer_$size")" \
            "$rf" "$(verdict le "$rf" 1.1)" "$rp" "$(verdict le "$rp" 0.3)" "$rn" "$(verdict lt "$rn" 1)"
        echo "one_${size} floor=$f outq=$o postfix=$p nullmailer=$n rf=$rf rp=$rp rn=$rn" >>"$work/summary"
    done
    echo
    echo "### $PROCS concurrent callers (bench/conc.py: $PROCS streams, each submitting one message after the other; medians of $CONC_ROUNDS interleaved runs)"
    echo
    echo "Messages per second = all messages of a run / its wall time. Latency = each submission's wall time (spawn to exit) as its stream saw it, p50 and p90 over all runs. Cost ratio = the other's rate / outq's rate (time per message relative to the other)."
    echo
    echo "| size | messages per run | floor msg/s (p50 / p90 ms) | **outq msg/s** (p50 / p90 ms) | Postfix msg/s (p50 / p90 ms) | nullmailer msg/s (p50 / p90 ms) | outq / floor (≤ 1.1×) | outq / Postfix (≤ 0.3×) | outq / nullmailer (< 1×) |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"
    for size in 4k 1m; do
        n=$N4K
        [ "$size" = 1m ] && n=$N1M
        c() { printf '%s (%s / %s)' "$(fmt "${RATE[$1]}" 0)" "$(ms "${LAT50[$1]}")" "$(ms "${LAT90[$1]}")"; }
        rf=$(ratio "${RATE[floor_$size]}" "${RATE[outq_$size]}")
        rp=$(ratio "${RATE[postfix_$size]}" "${RATE[outq_$size]}")
        rn=$(ratio "${RATE[nullmailer_$size]}" "${RATE[outq_$size]}")
        printf '| %s | %s × %s | %s | **%s** | %s | %s | %s× %s | %s× %s | %s× %s |\n' "$(label "$size")" "$PROCS" "$n" \
            "$(c "floor_$size")" "$(c "outq_$size")" "$(c "postfix_$size")" "$(c "nullmailer_$size")" \
            "$rf" "$(verdict le "$rf" 1.1)" "$rp" "$(verdict le "$rp" 0.3)" "$rn" "$(verdict lt "$rn" 1)"
        echo "conc_${size} floor=${RATE[floor_$size]} outq=${RATE[outq_$size]} postfix=${RATE[postfix_$size]} nullmailer=${RATE[nullmailer_$size]} rf=$rf rp=$rp rn=$rn lat50=${LAT50[outq_$size]} lat90=${LAT90[outq_$size]} cpu_floor=${CPU[floor_$size]} cpu_outq=${CPU[outq_$size]} cpu_postfix=${CPU[postfix_$size]} cpu_nullmailer=${CPU[nullmailer_$size]}" >>"$work/summary"
    done
    echo
    echo "CPU time per message in the same runs (user + system of the program and the children it waited for, from \`wait4\`; median, ms). Postfix's is sendmail + postdrop only: pickup, cleanup and qmgr, which finish its enqueue, run in its daemons and are not counted; nullmailer's and outq's whole enqueue is the one process."
    echo
    echo "| size | floor (dd) | **outq-enqueue** | Postfix sendmail | nullmailer-queue |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for size in 4k 1m; do
        printf '| %s | %s | **%s** | %s | %s |\n' "$(label "$size")" "$(ms "${CPU[floor_$size]}")" "$(ms "${CPU[outq_$size]}")" \
            "$(ms "${CPU[postfix_$size]}")" "$(ms "${CPU[nullmailer_$size]}")"
    done
    echo
    echo "Where the time goes with $PROCS callers, 4 KB: one more run of each under \`strace -f -c -w\` (wall time spent in each system call, summed over all processes; tracing slows the programs, not the disk), the calls that take most time, per message:"
    echo
    echo "| system call | outq: calls/msg | outq: ms/msg | floor: calls/msg | floor: ms/msg |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    tot=$((PROCS * N4K))
    for sc in fsync renameat2 openat newfstatat execve mmap write; do
        oc=$(awk -v s="$sc" '$NF == s {print $4; exit}' "$raw/strace-conc-outq_4k.txt")
        ot=$(awk -v s="$sc" '$NF == s {print $2; exit}' "$raw/strace-conc-outq_4k.txt")
        fc=$(awk -v s="$sc" '$NF == s {print $4; exit}' "$raw/strace-conc-floor_4k.txt")
        ft=$(awk -v s="$sc" '$NF == s {print $2; exit}' "$raw/strace-conc-floor_4k.txt")
        printf '| %s | %s | %s | %s | %s |\n' "$sc" "$(fmt "$(calc "${oc:-0} / $tot")" 1)" "$(fmt "$(calc "${ot:-0} * 1000 / $tot")" 3)" \
            "$(fmt "$(calc "${fc:-0} / $tot")" 1)" "$(fmt "$(calc "${ft:-0} * 1000 / $tot")" 3)"
        echo "strace_$sc outq_calls=${oc:-0} outq_s=${ot:-0} floor_calls=${fc:-0} floor_s=${ft:-0} msgs=$tot" >>"$work/summary"
    done
    oc=$(awk '$NF == "total" {print $4; exit}' "$raw/strace-conc-outq_4k.txt")
    fc=$(awk '$NF == "total" {print $4; exit}' "$raw/strace-conc-floor_4k.txt")
    printf '| all system calls (the driver'"'"'s included) | %s | | %s | |\n' "$(fmt "$(calc "${oc:-0} / $tot")" 0)" "$(fmt "$(calc "${fc:-0} / $tot")" 0)"
    echo "strace_total outq_calls=${oc:-0} floor_calls=${fc:-0} msgs=$tot" >>"$work/summary"
    echo
    echo "(Full summaries: \`bench/results/peers/strace-conc-*.txt\`; the driver's own waiting, \`wait4\`, and the processes' start-up, \`execve\`, \`mmap\`, are in them too.)"
    echo
    echo "Commands (1 caller, as timed; the 8-caller runs start the same programs directly, \`{n}\` a new number per message):"
    echo
    echo '```sh'
    for name in "${names[@]}"; do echo "${CMD[$name]}    # prepare: ${PREP[$name]}"; done
    echo '```'
    echo
    echo "Raw data: \`bench/results/peers/\` (one-*.json: every 1-caller time; conc-*.json: every latency of every 8-caller run)."
} >"$OUT/peers.md"
cp "$work/summary" "$OUT/peers.summary"
say "wrote $OUT/peers.md"
cat "$OUT/peers.summary" >&2
