#!/usr/bin/env bash
# bench/report.sh: assemble bench/RESULTS.md from the sections' latest
# output in bench/out/ (called by bench/run; can be rerun on its own).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bench="$top/bench"
OUT=${OUT:-$bench/out}
RESULTS=${RESULTS:-$bench/results}
res="$bench/RESULTS.md"
export LC_ALL=C

fmt() { awk -v x="$1" -v d="${2:-2}" 'BEGIN {printf "%.*f", d, x}'; }
calc() { awk "BEGIN {printf \"%.9f\", $1}"; }
le() { awk -v a="$1" -v b="$2" 'BEGIN {exit !(a <= b)}'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN {exit !(a < b)}'; }
ok() { if "$@"; then echo "**met**"; else echo "**missed**"; fi; }
have() { [ -s "$OUT/$1.summary" ]; }
# get SECTION LINE-PREFIX KEY: the value of KEY= on the summary line that
# starts with LINE-PREFIX (followed by a space).
get() { awk -v p="$2" -v k="$3" '$1 == p {for (i = 2; i <= NF; i++) if (index($i, k "=") == 1) {print substr($i, length(k) + 2); exit}}' "$OUT/$1.summary"; }
get2() { awk -v p="$2" -v q="$3" -v k="$4" '$1 == p && $2 == q {for (i = 3; i <= NF; i++) if (index($i, k "=") == 1) {print substr($i, length(k) + 2); exit}}' "$OUT/$1.summary"; }
# demote N: markdown headings N levels down, code blocks left alone.
demote() { awk -v n="$1" '/^```/ {f = !f} !f && /^#/ {p = ""; for (i = 0; i < n; i++) p = p "#"; $0 = p $0} {print}'; }
when() { if [ -s "$OUT/$1.when" ]; then cat "$OUT/$1.when"; else echo "not run"; fi; }
ms() { fmt "$(calc "$1 * 1000")" 2; }

# Run-to-run variation: the key ratios of every run recorded in
# bench/results/history.tsv (written by bench/run), oldest first.
history() {
    local h="$RESULTS/history.tsv"
    [ -s "$h" ] || return 0
    hv() { # run-key(time\tbuild) section prefix key
        awk -F'\t' -v t="$1" -v sec="$2" -v p="$3" -v k="$4" '($1 "\t" $2) == t && $3 == sec {n = split($4, f, " "); if (f[1] != p) next; for (i = 2; i <= n; i++) if (index(f[i], k "=") == 1) {print substr(f[i], length(k) + 2); exit}}' "$h"
    }
    hv2() { # run-key section prefix second key
        awk -F'\t' -v t="$1" -v sec="$2" -v p="$3" -v q="$4" -v k="$5" '($1 "\t" $2) == t && $3 == sec {n = split($4, f, " "); if (f[1] != p || f[2] != q) next; for (i = 3; i <= n; i++) if (index(f[i], k "=") == 1) {print substr(f[i], length(k) + 2); exit}}' "$h"
    }
    runs() { awk -F'\t' -v sec="$1" '$3 == sec {print $1 "\t" $2}' "$h" | uniq | tail -n 6; }
    echo "## Run-to-run variation (all runs recorded on this machine, \`bench/results/history.tsv\`)"
    echo
    echo "The same figures from every recorded run, oldest first: how far one run can be trusted. The enqueue ratios depend on the virtual disk's flush latency, which varies from minute to minute on a shared host."
    echo
    local t when build
    if [ -n "$(runs enqueue)" ] || [ -n "$(runs peers)" ]; then
        echo "| run (UTC) | build | section | outq / floor: 1 caller 4 KB · 1 MB · 8 callers 4 KB · 1 MB | outq / Postfix: same four | outq / nullmailer: same four |"
        echo "| --- | --- | --- | --- | --- | --- |"
        while IFS=$'\t' read -r when build; do
            t="$when"$'\t'"$build"
            local e4 e1
            e4=$(awk -F'\t' -v t="$t" '($1 "\t" $2) == t && $3 == "enqueue" && $4 ~ /^4k:/ {sub(/.*direct ratio /, "", $4); sub(/x.*/, "", $4); print $4}' "$h")
            e1=$(awk -F'\t' -v t="$t" '($1 "\t" $2) == t && $3 == "enqueue" && $4 ~ /^1m:/ {sub(/.*direct ratio /, "", $4); sub(/x.*/, "", $4); print $4}' "$h")
            echo "| $when | $build | enqueue.sh | $e4 · $e1 (1 caller only) | | |"
        done < <(runs enqueue)
        while IFS=$'\t' read -r when build; do
            t="$when"$'\t'"$build"
            local k cells=()
            for k in rf rp rn; do
                cells+=("$(hv "$t" peers one_4k "$k") · $(hv "$t" peers one_1m "$k") · $(hv "$t" peers conc_4k "$k") · $(hv "$t" peers conc_1m "$k")")
            done
            echo "| $when | $build | peers.sh | ${cells[0]} | ${cells[1]} | ${cells[2]} |"
        done < <(runs peers)
        echo
    fi
    if [ -n "$(runs drain)" ]; then
        echo "| run (UTC) | build | drain, outq / Postfix msg/s, 1 rcpt: new/ c4 · c10 · deferred/ c4 | 10 rcpt: same | Postfix msg/s (1 · 10 rcpt) | nullmailer msg/s | outq msg/s, new/ c4 (1 · 10 rcpt) | outq / smtp-source, same sessions, new/ c4 (1 · 10 rcpt) |"
        echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
        while IFS=$'\t' read -r when build; do
            t="$when"$'\t'"$build"
            echo "| $when | $build | $(hv2 "$t" drain drain_r1 outq-new-c4 rp) · $(hv2 "$t" drain drain_r1 outq-new-c10 rp) · $(hv2 "$t" drain drain_r1 outq-deferred-c4 rp) | $(hv2 "$t" drain drain_r10 outq-new-c4 rp) · $(hv2 "$t" drain drain_r10 outq-new-c10 rp) · $(hv2 "$t" drain drain_r10 outq-deferred-c4 rp) | $(fmt "$(hv2 "$t" drain drain_r1 postfix rate)" 0) · $(fmt "$(hv2 "$t" drain drain_r10 postfix rate)" 0) | $(fmt "$(hv2 "$t" drain drain_r1 nullmailer rate)" 1) | $(fmt "$(hv2 "$t" drain drain_r1 outq-new-c4 rate)" 0) · $(fmt "$(hv2 "$t" drain drain_r10 outq-new-c4 rate)" 0) | $(hv2 "$t" drain drain_r1 outq-new-c4 rs) · $(hv2 "$t" drain drain_r10 outq-new-c4 rs) |"
        done < <(runs drain)
        echo
    fi
    if [ -n "$(runs scale)" ]; then
        echo "| run (UTC) | build | \`run --once\` over the deferred entries, s | its max RSS, MiB | max RSS with the big message, MiB | \`outq list\`, s |"
        echo "| --- | --- | ---: | ---: | ---: | ---: |"
        while IFS=$'\t' read -r when build; do
            t="$when"$'\t'"$build"
            echo "| $when | $build | $(fmt "$(hv "$t" scale scale run_s)" 3) | $(fmt "$(calc "$(hv "$t" scale scale rss_run_max) / 1024")" 1) | $(fmt "$(calc "$(hv "$t" scale scale rss_big_max) / 1024")" 1) | $(fmt "$(hv "$t" scale scale list_s)" 2) |"
        done < <(runs scale)
        echo
    fi
}

# Why the missed targets are missed, what dominates, what would fix it;
# and what in outq's code was found slow. Numbers from this run's output.
analysis() {
    echo "## Why targets are missed, and what would fix them"
    echo
    local any=0
    # ---- enqueue against the floor
    local miss_floor=0 size lab
    if have enqueue && grep -q 'Why not, for' "$OUT/enqueue.md"; then miss_floor=1; fi
    if have peers; then
        for size in 4k 1m; do
            le "$(get peers "one_$size" rf)" 1.1 || miss_floor=1
            le "$(get peers "conc_$size" rf)" 1.1 || miss_floor=1
        done
    fi
    if [ "$miss_floor" = 1 ]; then
        any=1
        echo "### outq-enqueue is more than 1.1× the floor"
        echo
        echo "One caller (bench/enqueue.sh's breakdown, from this run; \`strace -T\` durations and start-up runs):"
        echo
        grep '^Why not, for' "$OUT/enqueue.md" | sed 's/^/- /; s/ See "Where the time goes"\.//' ||
            echo "- Both sizes are within the target in this run's bench/enqueue.sh; the misses are in bench/peers.sh's runs below."
        echo
        echo "The one-caller ratios are differences of a few tenths of a millisecond between numbers of 1–3 ms and move from run to run with the virtual disk's flush latency (see "Run-to-run variation" below); the 8-caller ones move too: compare several runs before concluding."
        echo
        if have peers; then
            local fc oc ot fs
            oc=$(get peers strace_fsync outq_calls) ot=$(get peers strace_fsync outq_s)
            fc=$(get peers strace_fsync floor_calls) fs=$(get peers strace_fsync floor_s)
            local m
            m=$(get peers strace_fsync msgs)
            local co cf ro rf2 po pf
            co=$(get peers conc_4k cpu_outq) cf=$(get peers conc_4k cpu_floor)
            ro=$(get peers conc_4k outq) rf2=$(get peers conc_4k floor)
            po=$(calc "2 / $co") pf=$(calc "2 / $cf")
            echo "8 callers (bench/peers.sh): the time per message is $(get peers conc_4k rf)× the floor's for 4 KB and $(get peers conc_1m rf)× for 1 MB. With 8 callers on 2 cores, CPU is one limit:"
            echo
            echo "- CPU per 4 KB message (median, user + system, from \`wait4\`): outq-enqueue $(ms "$co") ms, dd $(ms "$cf") ms ($(fmt "$(calc "$co / $cf")" 2)×). Two cores divided by that predict at most $(fmt "$po" 0) msg/s for outq and $(fmt "$pf" 0) for dd; measured: $(fmt "$ro" 0) ($(fmt "$(calc "100 * $ro / $po")" 0) % of its CPU limit) and $(fmt "$rf2" 0) ($(fmt "$(calc "100 * $rf2 / $pf")" 0) %). Where the ratio of the rates is above the ratio of CPU per message, the helper spends the difference waiting, not computing: on the locks of one account's submissions (the ledger's \`flock\`, \`tmp/\` and \`new/\`, the file system's rename lock) and on its flush, which dd's single file in one directory does not share with its neighbours in the same way."
            echo "- For 1 MB the helper uses $(ms "$(get peers conc_1m cpu_outq)") ms of CPU per message against dd's $(ms "$(get peers conc_1m cpu_floor)") ms. Beyond dd's copy it scans each 64 KiB piece for a NUL byte and writes the message between a header and a trailer (with \`pwritev\`, not copied together); its input here is a regular file, which it reads without \`poll\` (a pipe is polled, so that a termination signal is seen while it waits)."
            echo "- Where the extra CPU goes: per message, under \`strace -f -c -w\`, the helper makes $(fmt "$(calc "$(get peers strace_openat outq_calls) / $m")" 1) \`openat\` and $(fmt "$(calc "$(get peers strace_newfstatat outq_calls) / $m")" 1) \`newfstatat\` calls against dd's $(fmt "$(calc "$(get peers strace_openat floor_calls) / $m")" 1) and $(fmt "$(calc "$(get peers strace_newfstatat floor_calls) / $m")" 1), and $(fmt "$(calc "$(get peers strace_total outq_calls) / $m")" 0) system calls in all against $(fmt "$(calc "$(get peers strace_total floor_calls) / $m")" 0) (the driver's included in both)."
            echo "- The \`submit_share\` ledger (\`tmp/.share.UID\`): the driver submits all $m messages from one account and nothing drains new/, so the ledger grows; a submission appends one line and reads the ledger without keeping its records, and looks its IDs up only when those recorded since the last look-up are at least 32 and as many as it kept (on average at most two \`newfstatat\` per submission) or when the share is near. With a runner draining the queue the look-ups find the IDs gone and the ledger stays a few dozen lines long."
            echo "- Flushes: the helper makes $(fmt "$(calc "$oc / $m")" 1) \`fsync\` calls per message and spends $(fmt "$(calc "$ot * 1000 / $m")" 2) ms of wall time in them, dd $(fmt "$(calc "$fc / $m")" 1) and $(fmt "$(calc "$fs * 1000 / $m")" 2) ms. The flush is the same work; each caller's latency (p50 $(ms "$(get peers conc_4k lat50)") ms for outq) is mostly waiting for it and for the locks above."
            echo
        fi
        echo "What issue 12 changed (one fsync after the rename, \`openat2\` and \`..\` checks instead of a walk per component, syslog without /etc/localtime, one \`read\` of the configuration, no Rust runtime start-up (the helper is a C \`main\`), one probe of descriptors 0–2, \`getresuid\`/\`getresgid\`, \`SIGPIPE\` and \`SIGXFSZ\` blocked with the termination signals, a \`submit_share\` ledger that is appended to and stays short, a message that arrives whole within 64 KiB written with one \`pwritev\` (header, message and trailer not copied together), pieces of a longer one aligned to 64 KiB in the file, a regular file as input read without \`poll\`, descriptors and locks left to the kernel at exit, syslog with one \`sendto\`; then no name service in the helper and a static-pie build): the dynamic loader in secure mode (/etc/ld.so.cache, libgcc_s and libc mapped and bound, libgcc_s's own CPU probe) was the largest cost left, about 28 of the 104 system calls of a dynamically linked 4 KB submission and about 0.3 ms of CPU per start on this machine. Of the static-pie helper's system calls for 4 KB (counted below), about 18 come before \`main\` (the \`execve\`, glibc's static start-up with its secure-mode checks and its RELRO \`mprotect\`), 16 are \`newfstatat\` of the helper's own checks (the configuration's and the spool's directories and their ancestors through \`..\`, \`tmp/\` and \`new/\`, the ledger and the new file), and the rest are the start-up hardening, the ledger, the write and the commit. What glibc's start-up still costs is mostly its CPU feature detection (\`cpuid\`, which a virtual machine traps), as in dd."
        echo
        echo "What is left: with one caller the helper does what dd does plus a second directory, a rename and its checks, and the ratio moves with the disk's flush latency from run to run (see Run-to-run variation); with 8 callers of one account, the time the helper spends waiting on the locks those submissions share (above). A design that gave each submission a single directory operation, as dd has, would have to give up the \`tmp/\` stage that lets the runner tell a writer at work from an abandoned file (issue 13), so it is not pursued."
        echo
        echo
    fi
    # ---- enqueue against Postfix
    if have peers; then
        local missp=0
        for size in 4k 1m; do
            le "$(get peers "one_$size" rp)" 0.3 || missp=1
            le "$(get peers "conc_$size" rp)" 0.3 || missp=1
        done
        if [ "$missp" = 1 ]; then
            any=1
            echo "### outq-enqueue is more than 0.3× Postfix's sendmail"
            echo
            for size in 4k 1m; do
                lab="4 KB"
                [ "$size" = 1m ] && lab="1 MB"
                local f p o best
                f=$(get peers "one_$size" floor) p=$(get peers "one_$size" postfix) o=$(get peers "one_$size" outq)
                best=$(fmt "$(calc "$f / $p")" 2)
                echo "- 1 caller, $lab ($(ok le "$(get peers "one_$size" rp)" 0.3)): Postfix's \`sendmail\` + \`postdrop\` takes $(ms "$p") ms here, outq $(ms "$o") ms ($(get peers "one_$size" rp)×). The floor itself (exec + write + fsync) is $(ms "$f") ms = ${best}× Postfix: $(if le "$best" 0.3; then echo "the target is reachable; outq's own overhead over the floor (above) is what decides it"; else echo "on this machine **no** program that execs, writes and fsyncs could reach 0.3× Postfix: the target assumes a Postfix about 6.5× the floor (shared/ANCHORS.md: 20.7 ms against a 3.2 ms floor, measured by another method), but here Postfix costs only $(fmt "$(calc "$p / $f")" 1)× the floor. Closing outq's gap to the floor (above) is all that can be done"; fi)."
            done
            echo "- 8 callers: $(get peers conc_4k rp)× (4 KB, $(ok le "$(get peers conc_4k rp)" 0.3)) and $(get peers conc_1m rp)× (1 MB, $(ok le "$(get peers conc_1m rp)" 0.3)) of Postfix's time per message: Postfix's enqueue is not finished when postdrop exits; pickup and cleanup rewrite every message into the queue (another file, another fsync) and compete for the same 2 cores."
            echo
        fi
        local missn=0
        for size in 4k 1m; do
            lt "$(get peers "one_$size" rn)" 1 || missn=1
            lt "$(get peers "conc_$size" rn)" 1 || missn=1
        done
        if [ "$missn" = 1 ]; then
            any=1
            echo "### outq-enqueue is not faster than nullmailer-queue everywhere"
            echo
            local cpu_o cpu_n
            cpu_o=$(get peers conc_4k cpu_outq) cpu_n=$(get peers conc_4k cpu_nullmailer)
            echo "Ratios outq / nullmailer in this run: 1 caller $(get peers one_4k rn)× (4 KB), $(get peers one_1m rn)× (1 MB); 8 callers $(get peers conc_4k rn)× (4 KB), $(get peers conc_1m rn)× (1 MB). nullmailer-queue also flushes twice (fsync of the file, link into queue/, fsync of queue/, a directory it may open), and it checks less than outq: no size, recipient or time limit, no configuration or spool ownership checks (shared/ANCHORS.md). CPU per message with 8 callers: outq $(ms "$cpu_o") ms, nullmailer $(ms "$cpu_n") ms (4 KB); $(ms "$(get peers conc_1m cpu_outq)") and $(ms "$(get peers conc_1m cpu_nullmailer)") ms (1 MB). $(if lt "$cpu_o" "$cpu_n"; then echo "outq uses less CPU, so where it is slower the difference is time spent waiting for the two flushes, which varies from run to run (see the run-to-run table): not a property of either program's code"; else echo "outq uses more CPU: its start-up and checks, which fix 1 above addresses"; fi)."
            echo
        fi
    fi
    # ---- drain
    if have drain; then
        local R s missd=0
        for R in 1 10; do
            for s in outq-new-c4 outq-new-c10 outq-deferred-c4; do
                local rp rn
                rp=$(get2 drain "drain_r$R" "$s" rp) rn=$(get2 drain "drain_r$R" "$s" rn)
                [ -n "$rp" ] || continue
                le 1 "$rp" || missd=1
                le 5 "$rn" || missd=1
            done
        done
        if [ "$missd" = 1 ]; then
            any=1
            echo "### The drain is slower than a target"
            echo
            echo "See the drain section: the rates, the CPU per message of the runner and of smtp-sink, and how busy the machine was."
            echo
        fi
    fi
    # ---- scale
    if have scale; then
        local rr rb oa
        rr=$(get scale scale rss_run_max) rb=$(get scale scale rss_big_max) oa=$(get scale scale openat)
        if ! lt "$rr" 32768 || ! lt "$rb" 32768 || ! lt "$oa" 1000; then
            any=1
            echo "### Scale"
            echo
            echo "Peak memory with $(get scale scale entries) entries: $(fmt "$(calc "$rr / 1024")" 1) MiB; with one 100 MB message: $(fmt "$(calc "$rb / 1024")" 1) MiB; openat calls: $oa. The runner keeps every name of deferred/ (and, in its sweep, of every queue and of state/) in memory at once (src/runner/mod.rs \`pass\`, src/runner/recover.rs \`sweep\`); streaming the directory instead of collecting it would bound that."
            echo
        fi
    fi
    [ "$any" = 1 ] || { echo "Every target is met in this run."; echo; }

    # ---- code findings
    echo "## What in outq's code was found slow"
    echo
    local tr="$RESULTS/drain/strace-outq-new-c4-r1.txt"
    if [ -s "$tr" ]; then
        local n
        n=$(get2 drain drain_r1 outq-new-c4 count)
        pm() { awk -v s="$1" -v n="$n" '$NF == s {printf "%.1f", $4 / n; exit}' "$tr"; }
        echo "From the drain (one traced run, $n messages of 1 recipient, connections 4; \`bench/results/drain/strace-outq-new-c4-r1.txt\`), system calls per message: sendto $(pm sendto), recvfrom $(pm recvfrom), setsockopt $(pm setsockopt), write $(pm write), openat $(pm openat), newfstatat $(pm newfstatat), futex $(pm futex)."
        echo
    fi
    local w1 c1 cnt
    w1=$(get2 drain drain_r1 outq-new-c4 wall 2>/dev/null || true)
    cnt=$(get2 drain drain_r1 outq-new-c4 count 2>/dev/null || true)
    c1=$(get2 drain drain_r1 outq-new-c4 cpu_ms 2>/dev/null || true)
    echo "Found in the run of 2026-11-28 (5 round trips per 1-recipient message, 14 per 10-recipient one; 10 setsockopt, 10 write and one /etc/passwd read per message) and changed since; the counts above are from this run:"
    echo
    echo "1. **One round trip per SMTP command.** Fixed: the client pipelines (RFC 2920) when the relay offers PIPELINING (\`src/deliver/smtp/mod.rs\` \`exchange\`): the RSET that checks a kept connection, MAIL FROM, every RCPT TO and DATA go out in one write; the message follows the 354. A message now costs 2 round trips (the group, then the message) whatever its number of recipients, up to the 4 KiB a group may hold (about 100 recipients).${c1:+ In this run the runner used $(fmt "$c1" 3) ms of CPU per message, each of its 4 connections delivering a message every $(fmt "$(calc "4 * 1000 * ${w1:-0} / ${cnt:-10000}")" 2) ms.}"
    echo "2. **A setsockopt before every socket read and write.** Fixed: \`Sock\` in \`src/deliver/smtp/client.rs\` sets the socket timeout only when the one in force could end a call more than 50 ms past the step's deadline, or ran out before it."
    echo "3. **A password-database lookup per delivery.** Fixed: \`login_of\` in \`src/runner/attempt.rs\` keeps each found name for 60 s."
    echo "4. **Three write(2) per log line on standard error.** Fixed: \`src/logging.rs\` writes each line once."
    if have scale; then
        echo "5. **\`outq run --once\` reads deferred/ twice and keeps every name.** Start-up \`sweep\` (\`src/runner/recover.rs:96\`, the orphan check from :124) collects the names of every queue into a \`HashSet\` and lists state/, then \`pass\` (\`src/runner/mod.rs:230\`) lists deferred/ again and \`stat\`s each state file. It opens no entry ($(get scale scale openat) openat for $(get scale scale entries) entries) and stays under the target ($(fmt "$(calc "$(get scale scale rss_run_max) / 1024")" 1) MiB), $(if lt "$(get scale scale rss_big_max)" "$(get scale scale rss_run_max)"; then echo "but its memory grows with the queue: about $(fmt "$(calc "($(get scale scale rss_run_max) - $(get scale scale rss_big_max)) * 1024 / $(get scale scale entries)")" 0) bytes per entry over the runner's base (the $(fmt "$(calc "$(get scale scale rss_big_max) / 1024")" 1) MiB of the one-message run), so 32 MiB would be crossed near $(fmt "$(calc "(32768 - $(get scale scale rss_big_max)) * $(get scale scale entries) / ($(get scale scale rss_run_max) - $(get scale scale rss_big_max)) / 1000")" 0) 000 deferred entries"; fi). Streaming the directory (due entries only kept) and running the orphan check over sorted listings, or less often than the due scan, would keep it flat."
        echo "6. **\`outq list\` opens and validates every entry and its state file** (\`src/ops/inventory.rs\` \`view\`): $(fmt "$(get scale scale list_s)" 2) s for $(get scale scale entries) entries warm, $(fmt "$(get scale scale cold_list)" 2) s cold. Expected for a full listing; \`outq status\` (only \`stat\`s) takes $(fmt "$(get scale scale status_s)" 2) s."
    fi
    echo
}

{
    echo "# outq benchmarks"
    echo
    echo "Written by \`bench/run\` (\`sudo bench/run\`, or \`sudo bench/run SECTION...\` for some; see its header). Sections last run: enqueue $(when enqueue); peers $(when peers); drain $(when drain); scale $(when scale)."
    echo
    echo "Build: $(cat "$OUT/build.txt" 2>/dev/null || echo unknown)."
    commits=""
    commits=$(cat "$OUT"/*.when 2>/dev/null | sed -n 's/.*build \([0-9a-f]\{7,\}\).*/\1/p' | sort -u)
    if [ "$(wc -w <<<"$commits")" -gt 1 ]; then
        same=1
        c0=$(head -n 1 <<<"$commits")
        for c in $commits; do
            git -C "$top" diff --quiet "$c0" "$c" -- src crates Cargo.toml Cargo.lock 2>/dev/null || same=0
        done
        if [ "$same" = 1 ]; then
            echo "The sections were built from commits $(echo $commits | sed 's/ /, /g'), which have the same src/, crates/ and Cargo files (\`git diff\`): the same outq code."
        else
            echo "**The sections were built from different code** (commits $(echo $commits | sed 's/ /, /g')): compare them with care."
        fi
    fi
    echo
    echo "## Machine"
    echo
    cat "$OUT/machine.md" 2>/dev/null || echo "(not recorded)"
    echo
    echo "How quiet it was: this machine also runs other work (fuzzers, CI builds). \`bench/run\` waits before each section until the 1-minute load average is below 0.5 (at most 15 minutes, then it measures anyway and says so below); each section records the load average and the number of other processes (cargo, rustc, clippy, fuzzers, outq's test binaries) before and after it; the drain and the 8-caller runs also wait, before each run or round, until no such process is left. A load average taken after a section includes the section's own processes (8 callers, Postfix's daemons)."
    echo
    for s in enqueue peers drain scale; do
        [ -s "$OUT/$s.quiet" ] && echo "- $s: $(cat "$OUT/$s.quiet")"
    done
    echo
    echo "## Targets"
    echo
    echo "Every ratio is against an anchor measured in the same run, on the same machine."
    echo
    echo "| area | target | case | measured | anchor | ratio | result |"
    echo "| --- | --- | --- | --- | --- | ---: | --- |"
    if have enqueue; then
        for size in 4k 1m; do
            line=$(grep "^$size:" "$OUT/enqueue.summary" || true)
            h=$(sed -n 's/.*helper \([0-9.]*\) ms.*/\1/p' <<<"$line")
            f=$(sed -n 's/.*floor \([0-9.]*\) ms.*/\1/p' <<<"$line")
            r=$(sed -n 's/.*direct ratio \([0-9.]*\)x.*/\1/p' <<<"$line")
            lab="4 KB"
            [ "$size" = 1m ] && lab="1 MB"
            [ -n "$r" ] && echo "| enqueue | ≤ 1.1× the floor (\`dd conv=fsync\`) | 1 caller, $lab, bench/enqueue.sh (launch chain out) | ${h} ms | ${f} ms | ${r}× | $(ok le "$r" 1.1) |"
        done
    fi
    if have peers; then
        for size in 4k 1m; do
            lab="4 KB"
            [ "$size" = 1m ] && lab="1 MB"
            o=$(get peers "one_$size" outq) f=$(get peers "one_$size" floor) p=$(get peers "one_$size" postfix) n=$(get peers "one_$size" nullmailer)
            rf=$(get peers "one_$size" rf) rp=$(get peers "one_$size" rp) rn=$(get peers "one_$size" rn)
            echo "| enqueue | ≤ 1.1× the floor | 1 caller, $lab, bench/peers.sh | $(ms "$o") ms | $(ms "$f") ms | ${rf}× | $(ok le "$rf" 1.1) |"
            echo "| enqueue | ≤ 0.3× Postfix sendmail | 1 caller, $lab | $(ms "$o") ms | $(ms "$p") ms | ${rp}× | $(ok le "$rp" 0.3) |"
            echo "| enqueue | faster than nullmailer-queue | 1 caller, $lab | $(ms "$o") ms | $(ms "$n") ms | ${rn}× | $(ok lt "$rn" 1) |"
        done
        for size in 4k 1m; do
            lab="4 KB"
            [ "$size" = 1m ] && lab="1 MB"
            o=$(get peers "conc_$size" outq) f=$(get peers "conc_$size" floor) p=$(get peers "conc_$size" postfix) n=$(get peers "conc_$size" nullmailer)
            rf=$(get peers "conc_$size" rf) rp=$(get peers "conc_$size" rp) rn=$(get peers "conc_$size" rn)
            echo "| enqueue | ≤ 1.1× the floor (time per message) | 8 callers, $lab | $(fmt "$o" 0) msg/s | $(fmt "$f" 0) msg/s | ${rf}× | $(ok le "$rf" 1.1) |"
            echo "| enqueue | ≤ 0.3× Postfix sendmail | 8 callers, $lab | $(fmt "$o" 0) msg/s | $(fmt "$p" 0) msg/s | ${rp}× | $(ok le "$rp" 0.3) |"
            echo "| enqueue | faster than nullmailer-queue | 8 callers, $lab | $(fmt "$o" 0) msg/s | $(fmt "$n" 0) msg/s | ${rn}× | $(ok lt "$rn" 1) |"
        done
    fi
    if have syscalls; then
        for size in 4k 1m; do
            lab="4 KB"
            [ "$size" = 1m ] && lab="1 MB"
            o=$(get syscalls "calls_$size" outq) n=$(get syscalls "calls_$size" nullmailer)
            echo "| enqueue | fewer system calls than nullmailer-queue (\`strace -c\`) | 1 submission, $lab | $o calls | $n calls | $(awk -v a="$o" -v b="$n" 'BEGIN {printf "%.2f", a / b}')× | $(ok lt "$o" "$n") |"
        done
    fi
    if have drain; then
        for R in 1 10; do
            pr=$(get2 drain "drain_r$R" postfix rate)
            nr=$(get2 drain "drain_r$R" nullmailer rate)
            [ -n "$pr" ] || continue
            for s in outq-new-c4 outq-new-c10 outq-deferred-c4; do
                r=$(get2 drain "drain_r$R" "$s" rate)
                c=${s#outq-}
                c=${c/-c/, connections }
                echo "| drain | ≥ Postfix's msg/s | $R rcpt, outq from $c | $(fmt "$r" 0) msg/s | $(fmt "$pr" 0) msg/s | $(get2 drain "drain_r$R" "$s" rp)× | $(ok le 1 "$(get2 drain "drain_r$R" "$s" rp)") |"
            done
            for s in outq-new-c4 outq-new-c10 outq-deferred-c4; do
                r=$(get2 drain "drain_r$R" "$s" rate)
                c=${s#outq-}
                c=${c/-c/, connections }
                echo "| drain | ≥ 5× nullmailer's msg/s | $R rcpt, outq from $c | $(fmt "$r" 0) msg/s | $(fmt "$nr" 1) msg/s | $(get2 drain "drain_r$R" "$s" rn)× | $(ok le 5 "$(get2 drain "drain_r$R" "$s" rn)") |"
            done
            for s in outq-new-c4 outq-new-c10; do
                rs="" sr=""
                rs=$(get2 drain "drain_r$R" "$s" rs)
                sr=$(get2 drain "drain_r$R" "source-s${s##*-c}" rate)
                [ -n "$rs" ] && [ "$rs" != - ] || continue
                r=$(get2 drain "drain_r$R" "$s" rate)
                c=${s#outq-}
                c=${c/-c/, connections }
                echo "| drain | reference: smtp-source (no queue, no PIPELINING), same sessions | $R rcpt, outq from $c | $(fmt "$r" 0) msg/s | $(fmt "$sr" 0) msg/s | ${rs}× | (reference) |"
            done
        done
    fi
    if have scale; then
        oa=$(get scale scale openat)
        rr=$(get scale scale rss_run_max)
        rb=$(get scale scale rss_big_max)
        ne=$(get scale scale entries)
        echo "| scale | no per-entry open in \`outq run --once\` (openat ≪ entries) | $ne deferred, not due | $oa openat | $ne entries | $(fmt "$(calc "$oa / $ne")" 4) per entry | $(ok lt "$oa" "$(calc "$ne / 100")") |"
        echo "| scale | runner peak memory < 32 MiB | $ne deferred entries | $(fmt "$(calc "$rr / 1024")" 1) MiB (max of 3) | 32 MiB | $(fmt "$(calc "$rr / 32768")" 2)× | $(ok lt "$rr" 32768) |"
        echo "| scale | runner peak memory < 32 MiB | one $(get scale scale big_bytes)-byte message to smtp-sink | $(fmt "$(calc "$rb / 1024")" 1) MiB (max) | 32 MiB | $(fmt "$(calc "$rb / 32768")" 2)× | $(ok lt "$rb" 32768) |"
    fi
    echo
    if have peers || have drain; then
        echo "The anchors against shared/ANCHORS.md (measured there \"by another method, not recorded\"): $(if have peers; then echo "here a 4 KB submission costs $(ms "$(get peers one_4k floor)") ms for the floor and $(ms "$(get peers one_4k postfix)") ms for Postfix's sendmail as called directly (launch chain taken out; ANCHORS: 3.2 ms and 20.7 ms), so Postfix is $(fmt "$(calc "$(get peers one_4k postfix) / $(get peers one_4k floor)")" 1)× the floor here against 6.5× there; "; fi)$(if have drain; then echo "Postfix drains $(fmt "$(get2 drain drain_r1 postfix rate)" 0) msg/s (1 recipient) and $(fmt "$(get2 drain drain_r10 postfix rate)" 0) msg/s (10) from a queue of $(get2 drain drain_r1 postfix count) (ANCHORS: 726 and 526 from 2 000), nullmailer-send $(fmt "$(get2 drain drain_r1 nullmailer rate)" 1) msg/s (ANCHORS: 19.5)"; fi). The ratios above use this run's anchors only."
        echo
    fi
    analysis
    history
    echo "## 1. Enqueue"
    echo
    [ -s "$OUT/peers.md" ] && demote 1 <"$OUT/peers.md" && echo
    [ -s "$OUT/syscalls.md" ] && demote 1 <"$OUT/syscalls.md" && echo
    [ -s "$OUT/crash.md" ] && demote 1 <"$OUT/crash.md" && echo
    if [ -s "$OUT/enqueue/RESULTS.md" ]; then
        echo "### outq-enqueue against the floor in detail (bench/enqueue.sh, its own report)"
        echo
        sed -e '1d' "$OUT/enqueue/RESULTS.md" | demote 2 | sed -e 's/^#### Machine$/#### Machine (as bench\/enqueue.sh saw it)/' \
            -e 's|`bench/results/\*.json` (rewritten by each run)|`bench/results/enqueue/*.json` (rewritten by each run)|'
        echo
    fi
    echo "## 2. Drain"
    echo
    [ -s "$OUT/drain.md" ] && demote 1 <"$OUT/drain.md" && echo
    echo "## 3. Scale"
    echo
    [ -s "$OUT/scale.md" ] && demote 1 <"$OUT/scale.md" && echo
    echo "## Reproducing"
    echo
    echo '```sh'
    echo 'sudo bench/run                   # everything (~15-25 minutes), then bench/RESULTS.md'
    echo 'sudo bench/run drain scale       # some sections; the others keep their last results'
    echo 'BENCH_REV=HEAD sudo -E bench/run # a clean export of a commit instead of the work tree'
    echo '```'
    echo
    echo "Scripts: \`bench/run\` (build, sections, this report), \`bench/enqueue.sh\`, \`bench/peers.sh\`, \`bench/syscalls.sh\`, \`bench/crash.sh\`, \`bench/drain.sh\`, \`bench/scale.sh\`, shared set-up and clean-up in \`bench/lib.sh\`, the concurrent-callers driver \`bench/conc.py\`, the spool writer \`bench/spoolgen.py\`, this report \`bench/report.sh\`. Raw data in \`bench/results/\`, temporary output in \`bench/out/\` (both git-ignored). Every section creates its own users, spool, Postfix instance and nullmailer paths and removes them when it ends (also on failure or interruption): nothing stays on the machine but the installed packages."
} >"$res.tmp"
mv -f "$res.tmp" "$res"
