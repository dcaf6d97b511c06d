#!/usr/bin/env bash
# bench/scale.sh: outq with a large queue and a large message.
#
# 1. 100 000 deferred entries, none due: a few real 4 KB entries are
#    committed by outq-enqueue (development mode, see lib.sh dev_helper),
#    then bench/spoolgen.py clones one of them 100 000 times straight into
#    deferred/ (a new queue ID each, written into its header; owner, group
#    and mode of the original: the caller, the helper's group, 0404) with a
#    state file each in state/ (the queue owner's, 0600, mtime = next
#    attempt, spread over the next 1 to 2 hours). As root: only root can
#    give the clones the caller's ownership, as the helper did.
#    Measured: `outq run --once` (wall time, hyperfine; system calls,
#    strace -c -f: it must not open each entry; max RSS, /usr/bin/time -v),
#    `outq status` and `outq list` (wall time; max RSS). Warm cache
#    (repeated runs), plus one cold run each after dropping the page cache
#    when /proc/sys/vm/drop_caches is writable (SCALE_COLD=0 skips that).
# 2. One 100 MB message (104 857 600 bytes, one recipient) committed by the
#    helper (message_size_limit raised) and delivered to smtp-sink by
#    `outq run --once`: max RSS and wall time, SCALE_RUNS runs.
# Target: the runner's peak memory under 32 MiB in both.
#
# Output: $OUT/scale.md, raw data in $RESULTS/scale/.
me=scale.sh
source "$(dirname "$0")/lib.sh"

ENTRIES=${ENTRIES:-100000}
SCALE_RUNS=${SCALE_RUNS:-5}
SCALE_COLD=${SCALE_COLD:-1}
BIG=${BIG:-104857600}
LIMIT_KIB=$((32 * 1024))

tools
build
raw="$RESULTS/scale"
mkdir -p "$OUT" "$raw"
rm -f "$raw"/*

make_accounts
install_helper
spool="$work/spool"
make_spool "$spool"
bigspool="$work/bigspool"
make_spool "$bigspool"
msg="$work/msg-4k"
make_message 4096 "$msg"
big="$work/msg-big"
make_message "$BIG" "$big"

sport=$(free_port)
start_sink "$sport"

# ------------------------------------------------------------ the queues
dev_helper "$spool" "message_size_limit = $((BIG + 1048576))"
say "committing 3 entries of 4 KB and one of $BIG bytes"
for i in 1 2 3; do $as_filler $fill_cmd "$RCPT" <"$msg" >/dev/null || die "the helper failed"; done
template=$(find "$spool/new" -type f | sort | head -n 1)
cp -a "$template" "$work/template"
$as_filler $fill_cmd "$RCPT" <"$big" >"$work/big.id" || die "the helper failed on $BIG bytes"
bigid=$(cat "$work/big.id")
mkdir "$work/bigtmpl"
mv "$spool/new/$bigid" "$work/bigtmpl/"
big_entry=$(stat -c %s "$work/bigtmpl/$bigid")
find "$spool/new" -mindepth 1 -delete
now=$(date +%s)
say "cloning $ENTRIES deferred entries with state files (not due for 1 to 2 hours)"
t0=$EPOCHREALTIME
"$PY" "$bench/spoolgen.py" clone --template "$work/template" --count "$ENTRIES" \
    --entries "$spool/deferred" --state "$spool/state" --entry-uid "$cuid" --entry-gid "$dgid" \
    --state-uid "$ouid" --state-gid "$ogid" --due-min $((now + 3600)) --due-max $((now + 7200)) >/dev/null
clone_s=$(calc "$EPOCHREALTIME - $t0")
sync
n_def=$(find "$spool/deferred" -type f | wc -l)
n_state=$(find "$spool/state" -type f | wc -l)
[ "$n_def" = "$ENTRIES" ] && [ "$n_state" = "$ENTRIES" ] || die "cloned $n_def entries and $n_state state files"
sample=$(find "$spool/deferred" -type f -print -quit)
sample_stat=$(stat -c '%U:%G %a %s' "$sample")
sample_state=$(stat -c '%U:%G %a' "$spool/state/$(basename "$sample")")

for s in spool bigspool; do
    d=$work/$s
    [ "$s" = spool ] && d=$spool
    printf '# bench/scale.sh\nspool_directory = %s\nqueue_user = %s\nsetgid_group = %s\nmyhostname = bench.example.org\nrelay = smtp://127.0.0.1:%s\nmessage_size_limit = %s\n' \
        "$d" "$owner" "$grp" "$sport" "$((BIG + 1048576))" >"$work/$s.conf"
    chmod 0644 "$work/$s.conf"
done
run_cmd="$as_owner $outq run --once --config $work/spool.conf --log stderr"
status_cmd="$as_owner $outq status --config $work/spool.conf"
list_cmd="$as_owner $outq list --config $work/spool.conf"

# Sanity: outq sees them all, valid, and none is due.
$status_cmd >"$raw/status.txt" || die "outq status failed"
grep -q "^deferred *$ENTRIES entries" "$raw/status.txt" || die "outq status does not count $ENTRIES deferred: $(cat "$raw/status.txt")"
$list_cmd >"$work/list.txt" || die "outq list failed"
[ "$(grep -c ' deferred ' "$work/list.txt")" = "$ENTRIES" ] || die "outq list does not show $ENTRIES deferred entries"
if grep -q 'corrupt\|invalid\|not ' "$work/list.txt"; then die "outq list reports problems: $(grep -m3 'corrupt\|invalid\|not ' "$work/list.txt")"; fi
head -n 3 "$work/list.txt" >"$raw/list-head.txt"

wait_quiet
quiet_before=$(quiet_md)
started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')

# ---------------------------------------------------- 1. 100 000 entries
k0=$(sink_count)
hf() { # name runs cmd
    hyperfine -N --style none --warmup 1 --runs "$2" --export-json "$raw/$1.json" -n "$1" "$3" >/dev/null 2>"$work/hf.err" ||
        die "$1 failed: $(tail -n 3 "$work/hf.err")"
    jq -r '.results[0].times[]' "$raw/$1.json" >"$work/$1.times"
}
say "outq run --once over $ENTRIES entries ($SCALE_RUNS runs)"
hf run "$SCALE_RUNS" "$run_cmd"
say "outq status ($SCALE_RUNS runs)"
hf status "$SCALE_RUNS" "$status_cmd"
say "outq list (3 runs)"
hf list 3 "$list_cmd"
# Memory (three runs each, the median kept) and system calls.
rss_of() { # name cmd...
    local name=$1 i
    shift
    : >"$work/$name.rss"
    for i in 1 2 3; do
        /usr/bin/time -v -o "$raw/$name.time.$i" "$@" >/dev/null 2>&1 || die "$name failed under /usr/bin/time"
        awk -F': ' '/Maximum resident/ {print $2}' "$raw/$name.time.$i" >>"$work/$name.rss"
    done
    median_of "$work/$name.rss"
}
say "max RSS and strace -c -f"
RSS_RUN=$(rss_of run $run_cmd)
RSS_STATUS=$(rss_of status $status_cmd)
RSS_LIST=$(rss_of list $list_cmd)
strace -c -f -o "$raw/strace-run.txt" $run_cmd 2>/dev/null || die "traced run failed"
strace -c -f -o "$raw/strace-list.txt" $list_cmd >/dev/null 2>&1 || die "traced list failed"
# strace -c columns: % time, seconds, usecs/call, calls, [errors], syscall
calls() { awk -v s="$2" '$NF == s {print $4; exit}' "$1"; }
OPENAT_RUN=$(calls "$raw/strace-run.txt" openat)
FSTATAT_RUN=$(calls "$raw/strace-run.txt" newfstatat)
GETDENTS_RUN=$(calls "$raw/strace-run.txt" getdents64)
OPENAT_LIST=$(calls "$raw/strace-list.txt" openat)
COLD_RUN="" COLD_STATUS="" COLD_LIST=""
if [ "$SCALE_COLD" = 1 ] && (echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then
    say "cold-cache runs (page, dentry and inode caches dropped before each)"
    cold() { # cmd...
        local t0
        sync
        echo 3 >/proc/sys/vm/drop_caches
        t0=$EPOCHREALTIME
        "$@" >/dev/null 2>&1 || die "cold run failed: $*"
        calc "$EPOCHREALTIME - $t0"
    }
    COLD_RUN=$(cold $run_cmd)
    COLD_STATUS=$(cold $status_cmd)
    COLD_LIST=$(cold $list_cmd)
fi
k1=$(sink_count)
[ "$k1" = "$k0" ] || die "something was delivered from the not-due queue ($((k1 - k0)) messages)"
[ "$(find "$spool/deferred" -type f | wc -l)" = "$ENTRIES" ] || die "deferred/ changed during the runs"

# ----------------------------------------------------- 2. 100 MB message
say "one $BIG-byte message delivered to smtp-sink ($SCALE_RUNS runs)"
: >"$work/big.rss"
: >"$work/big.wall"
for ((i = 1; i <= SCALE_RUNS; i++)); do
    copy_in "$work/bigtmpl" "$bigspool/new"
    sync
    k0=$(sink_count)
    t0=$EPOCHREALTIME
    /usr/bin/time -v -o "$raw/big.time.$i" $as_owner "$outq" run --once --config "$work/bigspool.conf" --log stderr \
        2>"$raw/big.$i.log" || die "the big delivery failed: $(tail -n 3 "$raw/big.$i.log")"
    calc "$EPOCHREALTIME - $t0" >>"$work/big.wall"
    sleep 0.3
    k1=$(sink_count)
    grep -q 'removed (delivered)' "$raw/big.$i.log" || die "the big message was not delivered: $(tail -n 3 "$raw/big.$i.log")"
    [ $((k1 - k0)) = 1 ] || die "smtp-sink did not count the big message"
    [ -z "$(find "$bigspool/new" "$bigspool/active" "$bigspool/deferred" -type f -print -quit)" ] || die "the big entry is still queued"
    awk -F': ' '/Maximum resident/ {print $2}' "$raw/big.time.$i" >>"$work/big.rss"
done
RSS_BIG=$(median_of "$work/big.rss")
WALL_BIG=$(median_of "$work/big.wall")
RSS_BIG_MAX=$(sort -n "$work/big.rss" | tail -n 1)
quiet_after=$(quiet_md)
echo "before: $quiet_before; after: $quiet_after (waited ${QUIET_WAITED}s for a load below ${LOAD_MAX:-0.5})" >"$OUT/scale.quiet"
finished=$(date -u '+%Y-%m-%d %H:%M:%S UTC')

# ---------------------------------------------------------------- report
read -r RUN_MED RUN_P10 RUN_P90 _ _ RUN_N <<<"$(stats_of "$work/run.times")"
read -r ST_MED _ _ _ _ ST_N <<<"$(stats_of "$work/status.times")"
read -r LI_MED _ _ _ _ LI_N <<<"$(stats_of "$work/list.times")"
mib() { fmt "$(calc "$1 / 1024")" 1; }
rss_max_run=$(sort -n "$work/run.rss" | tail -n 1)
{
    echo "## Scale: $ENTRIES deferred entries, and one $(fmt "$(calc "$BIG / 1048576")" 0) MiB message (bench/scale.sh)"
    echo
    echo "$started to $finished. Machine before: $quiet_before; after: $quiet_after."
    echo
    echo "Queue: $ENTRIES entries in deferred/, each a $(stat -c %s "$work/template")-byte entry (4 KB message, 1 recipient), \`$sample_stat\` (owner:group mode bytes), with a state file \`$sample_state\` whose mtime (next attempt) is 1 to 2 hours ahead: nothing is due. Cloned from an entry the helper committed, by bench/spoolgen.py, in $(fmt "$clone_s" 1) s. \`outq status\` and \`outq list\` see all $ENTRIES, valid."
    echo
    echo "| measurement | wall time (median) | runs | max RSS (median of 3) | target | |"
    echo "| --- | ---: | ---: | ---: | --- | --- |"
    echo "| \`outq run --once\` over $ENTRIES not-due entries | $(fmt "$RUN_MED" 3) s (p10–p90 $(fmt "$RUN_P10" 3)–$(fmt "$RUN_P90" 3))${COLD_RUN:+; cold cache $(fmt "$COLD_RUN" 2) s} | $RUN_N | **$(mib "$RSS_RUN") MiB** (max $(mib "$rss_max_run")) | < 32 MiB | $(verdict lt "$rss_max_run" "$LIMIT_KIB") |"
    echo "| \`outq status\` | $(fmt "$ST_MED" 3) s${COLD_STATUS:+; cold $(fmt "$COLD_STATUS" 2) s} | $ST_N | $(mib "$RSS_STATUS") MiB | – | |"
    echo "| \`outq list\` ($ENTRIES lines) | $(fmt "$LI_MED" 3) s${COLD_LIST:+; cold $(fmt "$COLD_LIST" 2) s} | $LI_N | $(mib "$RSS_LIST") MiB | – | |"
    echo "| \`outq run --once\` delivering one $BIG-byte message (entry $big_entry bytes) to smtp-sink | $(fmt "$WALL_BIG" 2) s | $SCALE_RUNS | **$(mib "$RSS_BIG") MiB** (max $(mib "$RSS_BIG_MAX")) | < 32 MiB | $(verdict lt "$RSS_BIG_MAX" "$LIMIT_KIB") |"
    echo
    echo "No per-entry open: one traced \`outq run --once\` (\`strace -c -f\`) makes **$OPENAT_RUN \`openat\`** calls for $ENTRIES entries (target: ≪ $ENTRIES), $FSTATAT_RUN \`newfstatat\` (the due-time \`stat\` of each state file, plus start-up) and $GETDENTS_RUN \`getdents64\`. For comparison, \`outq list\`, which must read every entry and state file, makes $OPENAT_LIST \`openat\` calls."
    echo
    echo '```'
    echo "# strace -c -f: outq run --once over $ENTRIES not-due entries (top 10 by calls)"
    sed -n '1,2p' "$raw/strace-run.txt"
    sed -n '3,$p' "$raw/strace-run.txt" | grep -v -e '^-' -e 'total' | awk '{print $4, $0}' | sort -g -r | cut -d' ' -f2- | head -n 10
    grep 'total' "$raw/strace-run.txt"
    echo '```'
    echo
    echo "Raw data: \`bench/results/scale/\` (hyperfine JSON, \`/usr/bin/time -v\` outputs, strace summaries, the status output)."
} >"$OUT/scale.md"
{
    echo "scale entries=$ENTRIES big_bytes=$BIG run_s=$RUN_MED status_s=$ST_MED list_s=$LI_MED rss_run_kib=$RSS_RUN rss_run_max=$rss_max_run rss_big_kib=$RSS_BIG rss_big_max=$RSS_BIG_MAX big_s=$WALL_BIG openat=$OPENAT_RUN fstatat=$FSTATAT_RUN cold_run=$COLD_RUN cold_status=$COLD_STATUS cold_list=$COLD_LIST rss_status=$RSS_STATUS rss_list=$RSS_LIST"
} >"$OUT/scale.summary"
say "wrote $OUT/scale.md"
cat "$OUT/scale.summary" >&2
