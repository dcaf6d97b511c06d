#!/usr/bin/env bash
# bench/syscalls.sh: system calls per submission, outq-enqueue against
# nullmailer-queue (and the floor, `dd conv=fsync`), counted with
# `strace -c` in one run. Counts do not depend on the machine's load, so
# they back up the timings of peers.sh and enqueue.sh with noise-free
# numbers.
#
# Set-up (as root; undone at exit, see lib.sh): the same as peers.sh for
# outq (helper installed root:GROUP 2755, spool by `outq init`,
# /etc/outq/outq.conf borrowed) and for nullmailer (unpacked from its
# Debian package, nullmailer-queue mail:root 4755 as packaged).
#
# Method: `strace -f -c -u CALLER CMD < MSG`. strace runs as root and
# starts the command with the caller's credentials itself (`-u`), so the
# set-group-ID and set-user-ID bits take effect (secure-execution mode, as
# in production) and no launcher's calls are counted. Each program submits
# SYSCALL_RUNS (default 10) messages of 4 KB and of 1 MB; the figure is the
# median of the per-run totals, the whole table of the last run is kept in
# $RESULTS/syscalls/, with one complete trace of each program (*.trace). Every run starts with an empty queue.
#
# The helper counted is the one shipped, the static-pie build of
# install/build-helper. The dynamically linked build of the same helper
# (target/bench/release/outq-enqueue, from bench/run's
# `cargo build --release --workspace`) is counted too, to show what the
# dynamic loader costs. SYSCALL_DYNAMIC=0 skips it.
#
# Output: $OUT/syscalls.md (a section of RESULTS.md).
me=syscalls.sh
source "$(dirname "$0")/lib.sh"

SYSCALL_RUNS=${SYSCALL_RUNS:-10}
need_pkg strace strace
build
raw="$RESULTS/syscalls"
mkdir -p "$OUT" "$raw"
rm -f "$raw"/*.txt "$raw"/*.trace

make_accounts
install_helper
dynamic=""
if [ "${SYSCALL_DYNAMIC:-1}" = 1 ]; then
    [ -x "$rel/outq-enqueue" ] || die "no dynamically linked helper $rel/outq-enqueue (bench/run builds it; SYSCALL_DYNAMIC=0 skips it)"
    dynamic="$work/bin/outq-enqueue-dynamic"
    install -o root -g "$grp" -m 2755 "$rel/outq-enqueue" "$dynamic"
fi
spool="$work/spool"
make_spool "$spool"
floor="$work/floor"
mkdir -m 0700 "$floor"
chown "$caller:$caller" "$floor"
msg4k="$work/msg-4k"
msg1m="$work/msg-1m"
make_message 4096 "$msg4k"
make_message 1048576 "$msg1m"
make_nm_input "$msg4k" "$msg4k.nm" "$RCPT"
make_nm_input "$msg1m" "$msg1m.nm" "$RCPT"
nm_setup
take_conf "spool_directory = $spool
spool_min_free = 0
queue_user = $owner
setgid_group = $grp
myhostname = bench.example.org"

# count NAME INPUT CMD...: strace one submission; prints the total calls.
count() {
    local name=$1 input=$2
    shift 2
    local out="$raw/$name.txt"
    strace -f -c -U name,calls,errors -S calls -o "$out" -u "$caller" "$@" <"$input" >/dev/null ||
        die "$name failed under strace"
    awk '$NF == "total" || $1 == "total" {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/) {print $i; exit}}' "$out"
}

clear_queues() {
    find "$spool/new" "/var/spool/nullmailer/queue" -mindepth 1 -type f -delete
    rm -f "$floor/msg"
}

declare -A MED
for size in 4k 1m; do
    m="$work/msg-$size"
    for sys in floor outq dynamic nullmailer; do
        : >"$work/$sys-$size.calls"
    done
    for ((i = 0; i < SYSCALL_RUNS; i++)); do
        clear_queues
        count "outq_$size" "$m" "$helper" -f "$SENDER" "$RCPT" >>"$work/outq-$size.calls"
        if [ -n "$dynamic" ]; then
            count "dynamic_$size" "$m" "$dynamic" -f "$SENDER" "$RCPT" >>"$work/dynamic-$size.calls"
        fi
        count "nullmailer_$size" "$m.nm" "$nmq" >>"$work/nullmailer-$size.calls"
        count "floor_$size" "$m" dd "of=$floor/msg" bs=64K conv=fsync status=none >>"$work/floor-$size.calls"
    done
    [ "$(find "$spool/new" -type f | wc -l)" = "$([ -n "$dynamic" ] && echo 2 || echo 1)" ] || die "outq-enqueue did not queue its message"
    # One full trace of each, for reading (not counted).
    clear_queues
    strace -f -o "$raw/outq_$size.trace" -u "$caller" "$helper" -f "$SENDER" "$RCPT" <"$m" >/dev/null
    strace -f -o "$raw/nullmailer_$size.trace" -u "$caller" "$nmq" <"$m.nm" >/dev/null
    [ "$(nm_count)" = 1 ] || die "nullmailer-queue did not queue its message"
    for sys in floor outq dynamic nullmailer; do
        MED[${sys}_$size]=$(median_of "$work/$sys-$size.calls")
    done
done
clear_queues

# calls NAME SYSCALL: that call's count in the last traced run.
calls() { awk -v s="$2" '$1 == s {print $2; f=1} END {if (!f) print 0}' "$raw/$1.txt"; }

{
    echo "### System calls per submission (strace -c)"
    echo
    echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC'): \`strace -f -c -u CALLER\` started by root, so the set-group-ID helper and the set-user-ID nullmailer-queue run in secure-execution mode as in production and no launcher is counted; median of $SYSCALL_RUNS runs per program and size (the counts did not vary by more than the spread shown). nullmailer $NM_VERSION, as packaged; floor \`dd bs=64K conv=fsync\` into a new file."
    echo
    echo "outq-enqueue's first run in the fresh spool finds no \`submit_share\` ledger; each later one finds the queue ID of the run before in it (gone from new/ by then: two \`newfstatat\`), as a submission does when the runner has taken the account's last message. That is the spread of its counts."
    echo
    echo "outq-enqueue is the helper as shipped, static-pie (install/build-helper); the column after it counts the same helper dynamically linked (not shipped), whose dynamic loader runs in secure mode."
    echo
    echo "| size | floor (dd) | **outq-enqueue**, static-pie (min–max) | same, dynamically linked (not shipped) | nullmailer-queue | outq / nullmailer | target: fewer than nullmailer |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
    for size in 4k 1m; do
        o=${MED[outq_$size]} n=${MED[nullmailer_$size]} dy=${MED[dynamic_$size]}
        range=$(stats_of "$work/outq-$size.calls" | awk '{printf "%d–%d", $4, $5}')
        [ -n "$dynamic" ] || dy="-"
        printf '| %s | %s | **%s** (%s) | %s | %s | %s | %s |\n' "$size" "${MED[floor_$size]%.*}" "${o%.*}" "$range" "${dy%.*}" "${n%.*}" \
            "$(ratio "$o" "$n")" "$(verdict lt "$o" "$n")"
    done
    echo
    echo "Selected calls in the last 4 KB run (outq-enqueue · nullmailer-queue · dd):"
    echo
    echo "| call | outq-enqueue | nullmailer-queue | dd |"
    echo "| --- | ---: | ---: | ---: |"
    for s in execve openat openat2 newfstatat fstat statx read write pread64 pwrite64 mmap mprotect fsync fdatasync rename renameat2 fstatfs socket connect sendto; do
        printf '| %s | %s | %s | %s |\n' "$s" "$(calls outq_4k "$s")" "$(calls nullmailer_4k "$s")" "$(calls floor_4k "$s")"
    done
    echo
    echo "The complete tables: \`bench/results/syscalls/\`."
} >"$OUT/syscalls.md"
for size in 4k 1m; do
    echo "calls_$size floor=${MED[floor_$size]%.*} outq=${MED[outq_$size]%.*} dynamic=${MED[dynamic_$size]%.*} nullmailer=${MED[nullmailer_$size]%.*}"
done >"$OUT/syscalls.summary"
cat "$OUT/syscalls.md"
