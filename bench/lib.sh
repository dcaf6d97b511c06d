# bench/lib.sh: shared by bench/run and the section scripts (peers.sh,
# drain.sh, scale.sh). Sourced, not run.
#
# It provides: logging, a clean-up stack run on exit (every change to the
# system is registered there the moment it is made), temporary accounts, a
# production-like outq install (helper set-group-ID, spool by `outq init`),
# the careful take-over of /etc/outq/outq.conf (as bench/enqueue.sh does
# it), a private Postfix instance, nullmailer unpacked from its Debian
# package with the system paths it has compiled in, smtp-sink, per-group CPU
# accounting with cgroup v1 cpuacct, statistics and the machine's
# description.
#
# Everything a section creates is undone by its own exit trap: accounts,
# directories, /etc/outq/outq.conf, /etc/postfix/main.cf, the nullmailer
# paths, cgroups, and the processes it started (by PID).
# shellcheck shell=bash
# Variables set here are used by the scripts that source this file:
# shellcheck disable=SC2034

set -euo pipefail
shopt -s nullglob

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench="$top/bench"
OUT=${OUT:-$bench/out}
RESULTS=${RESULTS:-$bench/results}
export CARGO_TARGET_DIR="$top/target/bench"
rel="$CARGO_TARGET_DIR/release"
# The helper as it is shipped: static-pie, made by install/build-helper
# (bench/run runs it after the release build).
helper_bin="$rel/helper/outq-enqueue"
PY=/usr/bin/python3
SENDER=bench@example.org
RCPT=bench@example.org
export LC_ALL=C

me=${me:-$(basename "$0")}
say() { printf '== %s: %s\n' "$me" "$*" >&2; }
warn() { printf '%s: WARNING: %s\n' "$me" "$*" >&2; }
die() {
    printf '%s: %s\n' "$me" "$*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || die "run as root: it creates users, a set-group-ID helper, a Postfix instance"

# ------------------------------------------------------------ clean-up stack
# at_exit CMD...: run CMD (eval'd) at exit, last registered first.
CLEANUP=()
at_exit() { CLEANUP+=("$*"); }
run_cleanup() {
    local rc=$? i
    set +e
    trap - EXIT
    for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do
        eval "${CLEANUP[$i]}" >/dev/null 2>&1 || warn "clean-up step failed: ${CLEANUP[$i]}"
    done
    exit "$rc"
}
trap run_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Stop a process we started, by its PID only.
stop_pid() { # pid [signal]
    local pid=$1 sig=${2:-TERM} i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -"$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

tag="oqr$$"
work=$(mktemp -d /var/tmp/outq-bench-"$me".XXXXXX)
chmod 0755 "$work"
at_exit "rm -rf '$work'"

# ------------------------------------------------------------------ tools
need_pkg() { # command package
    command -v "$1" >/dev/null && return 0
    say "installing $2"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1; } ||
        die "cannot install $2"
}
tools() {
    need_pkg hyperfine hyperfine
    need_pkg jq jq
    need_pkg strace strace
    [ -x /usr/bin/time ] || need_pkg /usr/bin/time time
    if ! command -v smtp-sink >/dev/null; then
        # No system instance is configured or started by this.
        echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
        need_pkg smtp-sink postfix
    fi
    [ -x "$PY" ] || die "$PY is needed (the concurrent-callers driver)"
}
build() {
    [ -x "$rel/outq" ] && [ -x "$helper_bin" ] || die "no release build in $rel, or no static-pie helper $helper_bin (run bench/run, which builds both)"
}

# ------------------------------------------------------------- statistics
# One number per line in; "median p10 p90 min max n" out.
stats_of() {
    sort -g "$1" | awk '{a[NR]=$1} END {if (NR==0) {print "0 0 0 0 0 0"; exit}
        m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2;
        i=int(0.1*(NR-1))+1; j=int(0.9*(NR-1)+0.999999)+1; if (j>NR) j=NR;
        printf "%.9f %.9f %.9f %.9f %.9f %d\n", m, a[i], a[j], a[1], a[NR], NR}'
}
median_of() { stats_of "$1" | cut -d' ' -f1; }
calc() { awk "BEGIN {printf \"%.9f\", $1}"; }
fmt() { awk -v x="$1" -v d="${2:-2}" 'BEGIN {printf "%.*f", d, x}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b == 0) print "-"; else printf "%.2f", a / b}'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN {exit !(a <= b)}'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN {exit !(a < b)}'; }
verdict() { if "$@"; then echo "**met**"; else echo "**missed**"; fi; }

# ---------------------------------------------------------------- machine
machine_md() { # dir (on the filesystem that is measured)
    local d=${1:-$work} cpu mem src fstype opts disk virt sched
    cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
    mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
    src=$(findmnt -no SOURCE -T "$d")
    fstype=$(findmnt -no FSTYPE -T "$d")
    opts=$(findmnt -no OPTIONS -T "$d")
    disk=$(lsblk -dno NAME,SIZE,ROTA,TYPE "$src" 2>/dev/null | sed 's/  */ /g; s/ $//' || true)
    sched=$(cat "/sys/block/$(basename "$src")/queue/scheduler" 2>/dev/null || echo unknown)
    virt=$(systemd-detect-virt 2>/dev/null || true)
    echo "- cores: \`nproc\` = $(nproc); CPU: $cpu; memory: $mem"
    echo "- kernel: $(uname -r); virtualization: ${virt:-unknown}"
    echo "- filesystem of the spools and queues: $fstype on $src (\`$opts\`)"
    echo "- disk: \`lsblk\`: ${disk:-unknown} (ROTA as the guest is told; a virtio block device), I/O scheduler: $sched"
}

# Other work on the machine: compilers, cargo, clippy, fuzzers, outq's test
# binaries (the usual neighbours here), counted by command line.
COMPETITORS='(^|/)(cargo|rustc|clippy-driver|cargo-fuzz|rustdoc)( |$)|/fuzz/target/|/deps/integration-'
competitors() { pgrep -fc -- "$COMPETITORS" 2>/dev/null || true; }
# Load and competing work, one line. (A load average taken right after a
# section includes the section's own processes.)
quiet_md() {
    echo "load average $(cut -d' ' -f1-3 /proc/loadavg), $(competitors) other processes (cargo, rustc, clippy, fuzzers, test binaries)"
}
# Before each run of a long section: wait (at most LOAD_WAIT s) until no
# other work is running. The load average is no use between runs: the
# previous run's own processes keep it up for minutes.
wait_calm() {
    local limit=${LOAD_WAIT:-900} waited=0 n
    while :; do
        n=$(competitors)
        [ "${n:-0}" = 0 ] && return 0
        if [ "$waited" -ge "$limit" ]; then
            warn "other work is still running after ${waited}s: measuring anyway"
            return 0
        fi
        [ "$waited" = 0 ] && say "waiting until other work ends ($n processes: $(pgrep -fa -- "$COMPETITORS" | awk '{print $2}' | sort | uniq -c | tr -s ' \n' ' '))"
        sleep 10
        waited=$((waited + 10))
    done
}

# Wait until the 1-minute load is below LOAD_MAX (default 0.5), at most
# LOAD_WAIT seconds (default 900); say how it went.
wait_quiet() {
    local max=${LOAD_MAX:-0.5} limit=${LOAD_WAIT:-900} waited=0 l
    while :; do
        l=$(cut -d' ' -f1 /proc/loadavg)
        lt "$l" "$max" && break
        if [ "$waited" -ge "$limit" ]; then
            warn "load is still $l after ${waited}s (wanted < $max); measuring anyway"
            break
        fi
        [ "$waited" = 0 ] && say "waiting for a quiet machine (load $l, want < $max, up to ${limit}s; other work: $(competitors) processes)"
        sleep 10
        waited=$((waited + 10))
    done
    QUIET_WAITED=$waited
}

# --------------------------------------------------------------- accounts
# Group ${tag}d (the helper's), users ${tag}o (queue owner), ${tag}c (caller).
make_accounts() {
    grp="${tag}d"
    owner="${tag}o"
    caller="${tag}c"
    local n
    for n in "$grp" "$owner" "$caller"; do
        if getent passwd "$n" >/dev/null || getent group "$n" >/dev/null; then die "account or group $n already exists"; fi
    done
    groupadd --system "$grp"
    at_exit "if getent group '$grp' >/dev/null; then groupdel '$grp'; fi"
    useradd --system --no-create-home --user-group --shell /usr/sbin/nologin "$owner"
    at_exit "userdel '$owner'; if getent group '$owner' >/dev/null; then groupdel '$owner'; fi"
    useradd --system --no-create-home --user-group --shell /usr/sbin/nologin "$caller"
    at_exit "userdel '$caller'; if getent group '$caller' >/dev/null; then groupdel '$caller'; fi"
    cuid=$(id -u "$caller")
    cgid=$(id -g "$caller")
    ouid=$(id -u "$owner")
    ogid=$(id -g "$owner")
    dgid=$(getent group "$grp" | cut -d: -f3)
    as_caller="setpriv --reuid=$cuid --regid=$cgid --init-groups"
    as_owner="setpriv --reuid=$ouid --regid=$ogid --clear-groups"
}

# The helper, installed root:${tag}d 2755 as in production.
install_helper() {
    mkdir -m 0755 "$work/bin"
    helper="$work/bin/outq-enqueue"
    # HELPER_BIN: another build of the helper to measure (a variant).
    install -o root -g "$grp" -m 2755 "${HELPER_BIN:-$helper_bin}" "$helper"
    [ "$(stat -c '%U:%G %a' "$helper")" = "root:$grp 2755" ] || die "helper not installed root:$grp 2755"
    outq="$work/bin/outq"
    install -o root -g root -m 0755 "$rel/outq" "$outq"
}

# Filling a spool for the drain and scale runs without /etc/outq (which
# other root tests on this machine may be using): the same helper binary,
# not set-group-ID, run by the caller with the helper's group as its
# group, and given --spool and --config (its development mode). Its
# entries are the ones the installed helper writes: owner the caller,
# group the helper's, mode 0404.
dev_helper() { # spool conf-extra -> $as_filler $fill_cmd RCPT... < MSG
    printf '# bench/%s: the filling helper\nspool_min_free = 0\nmyhostname = bench.example.org\n%s\n' "$me" "${2:-}" >"$work/fill.conf"
    chmod 0644 "$work/fill.conf"
    [ -e "$work/bin/outq-enqueue-dev" ] || install -o root -g root -m 0755 "$helper_bin" "$work/bin/outq-enqueue-dev"
    as_filler="setpriv --reuid=$cuid --regid=$dgid --clear-groups"
    fill_cmd="$work/bin/outq-enqueue-dev --spool $1 --config $work/fill.conf"
}

# make_spool DIR: outq init, as `make install` does it.
make_spool() {
    "$outq" init --spool "$1" --user "$owner" --group "$grp" >"$work/init.$(basename "$1").log"
}

# --------------------------------------------- /etc/outq/outq.conf, borrowed
# The set-group-ID helper reads only /etc/outq/outq.conf. Take it over only
# while the helper runs, with the protocol of bench/enqueue.sh: wait until
# nobody else is using it, keep the original, give it back.
conf=/etc/outq/outq.conf
conf_text=""
conf_ours=0
conf_saved=""
etc_created=0
conf_is_ours() { [ -f "$conf" ] && [ -n "$conf_text" ] && [ "$(cat "$conf" 2>/dev/null)" = "$conf_text" ]; }
check_conf() {
    [ "$conf_ours" = 1 ] || return 0
    conf_is_ours || die "$conf was replaced by someone else during the run (another test running as root?); run again when it is done"
}
etc_state() { stat -c '%y %s %i' /etc/outq /etc/outq/outq.conf 2>/dev/null | tr '\n' ' ' || true; }
wait_conf_free() {
    local waited=0 quiet=0 last now busy other limit=${BENCH_WAIT:-600} q=${BENCH_QUIET:-10}
    last=$(etc_state)
    while :; do
        busy=""
        if [ -f "$conf" ]; then
            other=$(sed -n "s/^[[:space:]]*spool_directory[[:space:]]*=[[:space:]]*//p" "$conf" 2>/dev/null | head -n 1 || true)
            case "$other" in /tmp/* | /var/tmp/*) [ -d "$other" ] && busy="it names the temporary spool $other" ;; esac
        fi
        now=$(etc_state)
        if [ "$now" != "$last" ]; then
            busy="it changed in the last ${q}s"
            last=$now
        fi
        [ -n "$busy" ] && quiet=0
        if [ -z "$busy" ] && [ "$quiet" -ge "$q" ]; then return 0; fi
        [ "$waited" -lt "$limit" ] || die "$conf is in use by someone else ($busy); waited ${limit}s"
        [ "$waited" = 0 ] && [ -n "$busy" ] && say "waiting: $conf is in use ($busy)"
        sleep 1
        waited=$((waited + 1))
        quiet=$((quiet + 1))
    done
}
# outq's privileged tests serialise their use of /etc/outq with an exclusive
# flock on /run/outq-tests.lock (tests/integration/support.rs); take the
# same lock for as long as the file is ours, so neither side pulls the
# configuration from under the other.
TEST_LOCK=/run/outq-tests.lock
lock_fd=""
take_test_lock() {
    [ -n "$lock_fd" ] && return 0
    [ -e "$TEST_LOCK" ] || (umask 077 && : >>"$TEST_LOCK")
    exec {lock_fd}>>"$TEST_LOCK"
    if ! flock -x -n "$lock_fd"; then
        say "waiting for $TEST_LOCK (outq's privileged tests are running; up to ${BENCH_WAIT:-600}s)"
        flock -x -w "${BENCH_WAIT:-600}" "$lock_fd" || die "$TEST_LOCK is still held by someone else after ${BENCH_WAIT:-600}s"
    fi
}
drop_test_lock() {
    [ -n "$lock_fd" ] || return 0
    flock -u "$lock_fd" || true
    exec {lock_fd}>&-
    lock_fd=""
}
take_conf() { # text
    take_test_lock
    at_exit restore_conf
    wait_conf_free
    if [ ! -e /etc/outq ]; then
        mkdir -m 0755 /etc/outq
        etc_created=1
    fi
    if [ -e "$conf" ] || [ -L "$conf" ]; then
        conf_saved="/etc/outq/outq.conf.$tag-saved"
        cp -a "$conf" "$conf_saved"
    fi
    conf_text="# written by bench/$me (pid $$); restored on exit
$1"
    conf_ours=1
    printf '%s\n' "$conf_text" >"$conf.$tag-new"
    chown root:root "$conf.$tag-new"
    chmod 0644 "$conf.$tag-new"
    mv -f "$conf.$tag-new" "$conf"
}
restore_conf() {
    if [ "$conf_ours" != 1 ]; then
        :
    elif conf_is_ours; then
        if [ -n "$conf_saved" ] && [ -e "$conf_saved" ]; then mv -f "$conf_saved" "$conf"; else rm -f "$conf"; fi
    else
        warn "$conf was replaced by someone else during the run; left as it is"
        [ -n "$conf_saved" ] && [ -e "$conf_saved" ] && warn "the original is kept as $conf_saved"
    fi
    rm -f "$conf.$tag-new"
    if [ "$etc_created" = 1 ]; then rmdir /etc/outq 2>/dev/null || warn "/etc/outq (created by this run) is not empty; left"; fi
    etc_created=0
    conf_ours=0
    drop_test_lock
}

# ------------------------------------------------------------------ ports
free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # port [seconds]
    local i
    for ((i = 0; i < ${2:-20} * 10; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# ------------------------------------------------------- CPU accounting
# cgroup v1 cpuacct: every process started inside a group (and its
# children) is counted, even those that have exited.
CG_ROOT=/sys/fs/cgroup/cpuacct
cg_new() { # name -> path in $CG
    CG="$CG_ROOT/$tag-$1"
    mkdir "$CG" || die "cannot create the cgroup $CG (cgroup v1 cpuacct is needed for CPU accounting)"
    at_exit "cg_rm '$CG'"
}
cg_rm() { # the group's processes have been stopped; it empties within moments
    local i
    for ((i = 0; i < 50; i++)); do
        rmdir "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    warn "cgroup $1 still has processes: $(cat "$1/cgroup.procs" | tr '\n' ' ')"
    return 1
}
cg_usage() { cat "$1/cpuacct.usage"; } # nanoseconds
# Run a command inside a cgroup (exec, so the PID is the command's):
# "${CGEXEC[@]}" CGPATH CMD ARGS... (an array, so that /usr/bin/time,
# strace or `&` can run it).
CGEXEC=(sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"')
cg_exec() { "${CGEXEC[@]}" "$@"; }

# --------------------------------------------------------------- smtp-sink
# start_sink PORT: Postfix's smtp-sink on 127.0.0.1:PORT, backlog 1000, in
# its own cgroup; -c counts what it received (on its stdout).
start_sink() {
    local port=$1
    cg_new sink
    SINK_CG=$CG
    SINK_OUT="$work/sink.$port.out"
    "${CGEXEC[@]}" "$SINK_CG" smtp-sink -c -u postfix "127.0.0.1:$port" 1000 >"$SINK_OUT" 2>&1 </dev/null &
    SINK_PID=$!
    at_exit "stop_pid $SINK_PID"
    wait_port "$port" || die "smtp-sink does not listen on $port: $(cat "$SINK_OUT")"
}
# Messages received so far ("." counted), from smtp-sink -c's counter.
sink_count() {
    tr '\r' '\n' <"$SINK_OUT" | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -n 1 | awk '{print $1 + 0}'
}

# ---------------------------------------------------------------- Postfix
# pf_make DIR LISTENPORT RELAYPORT: a private instance, its own config,
# queue (postfix:postdrop as Postfix makes it), data and log; listens on
# 127.0.0.1:LISTENPORT (0: no listener); relays everything to
# [127.0.0.1]:RELAYPORT (0: none).
pf_make() {
    local d=$1 lport=$2 rport=$3
    PF=$d
    mkdir -p "$d/etc" "$d/queue" "$d/data"
    chmod 0755 "$d" "$d/etc" "$d/queue"
    chown postfix "$d/data"
    chmod 0700 "$d/data"
    cat >"$d/etc/main.cf" <<EOF
# private instance for outq's benchmark (bench/$me, pid $$)
compatibility_level = 3.6
config_directory = $d/etc
queue_directory = $d/queue
data_directory = $d/data
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-outq-bench-$$
maillog_file = $d/postfix.log
maillog_file_prefixes = $d
myhostname = pf.bench.example
mydomain = bench.example
myorigin = \$myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
biff = no
smtputf8_enable = no
message_size_limit = 209715200
EOF
    if [ "$rport" != 0 ]; then
        echo "relayhost = [127.0.0.1]:$rport" >>"$d/etc/main.cf"
    fi
    {
        [ "$lport" != 0 ] && echo "127.0.0.1:$lport inet n - n - - smtpd"
        cat <<'EOF'
pickup    unix  n - n 60    1 pickup
cleanup   unix  n - n -     0 cleanup
qmgr      unix  n - n 300   1 qmgr
rewrite   unix  - - n -     - trivial-rewrite
bounce    unix  - - n -     0 bounce
defer     unix  - - n -     0 bounce
trace     unix  - - n -     0 bounce
verify    unix  - - n -     1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -     - proxymap
proxywrite unix - - n -     1 proxymap
smtp      unix  - - n -     - smtp
relay     unix  - - n -     - smtp
showq     unix  n - n -     - showq
error     unix  - - n -     - error
retry     unix  - - n -     - error
discard   unix  - - n -     - discard
local     unix  - n n -     - local
anvil     unix  - - n -     1 anvil
scache    unix  - - n -     1 scache
postlog   unix-dgram n - n - 1 postlogd
EOF
    } >"$d/etc/master.cf"
    postfix -c "$d/etc" check >"$d/check.log" 2>&1 || die "postfix -c $d/etc check failed: $(cat "$d/check.log")"
}
pf_start() { # [cgroup path]
    at_exit "pf_stop"
    if [ -n "${1:-}" ]; then
        cg_exec "$1" postfix -c "$PF/etc" start >"$PF/start.log" 2>&1 || die "postfix start failed: $(cat "$PF/start.log")"
    else
        postfix -c "$PF/etc" start >"$PF/start.log" 2>&1 || die "postfix start failed: $(cat "$PF/start.log")"
    fi
    PF_RUNNING=1
}
pf_stop() {
    [ "${PF_RUNNING:-0}" = 1 ] || return 0
    postfix -c "$PF/etc" stop >/dev/null 2>&1 || true
    # postfix-script waits for the master; make sure, by its PID.
    local pid
    pid=$(head -n1 "$PF/queue/pid/master.pid" 2>/dev/null | tr -d ' ' || true)
    [ -n "$pid" ] && stop_pid "$pid"
    PF_RUNNING=0
}
pf_reload() { postfix -c "$PF/etc" reload >/dev/null 2>&1; }
# Messages in the queue (maildrop, incoming, active, deferred, hold).
pf_count() { find "$PF/queue/maildrop" "$PF/queue/incoming" "$PF/queue/active" "$PF/queue/deferred" "$PF/queue/hold" -type f 2>/dev/null | wc -l; }
pf_busy() { [ -n "$(find "$PF/queue/maildrop" "$PF/queue/incoming" "$PF/queue/active" "$PF/queue/deferred" -type f -print -quit 2>/dev/null)" ]; }

# An unprivileged caller may use a private instance's sendmail only if the
# default /etc/postfix/main.cf lists it in alternate_config_directories
# (postdrop is set-group-ID and checks). This Debian has no main.cf
# ("No configuration"): one with that line only is created, and removed.
pf_allow_caller() {
    local f=/etc/postfix/main.cf
    if [ -e "$f" ]; then
        grep -q "^alternate_config_directories.*$PF/etc" "$f" && return 0
        cp -a "$f" "$f.$tag-saved"
        at_exit "mv -f '$f.$tag-saved' '$f'"
        echo "alternate_config_directories = $PF/etc" >>"$f"
    else
        printf '# written by bench/%s (pid %s) for its private Postfix; removed at exit\nalternate_config_directories = %s\n' "$me" "$$" "$PF/etc" >"$f"
        at_exit "rm -f '$f'"
    fi
}

# ------------------------------------------------------------- nullmailer
# nullmailer conflicts with postfix as a package: its .deb is downloaded
# and unpacked into $work/nm. Its programs have the paths /etc/nullmailer,
# /var/spool/nullmailer and /usr/lib/nullmailer (protocol modules)
# compiled in (see `strings`): those are created for the run (with the
# owners and modes of the package) and removed at exit. None may exist.
NM_DEB_CACHE="$OUT/cache"
nm_setup() {
    local p
    nm="$work/nm"
    mkdir -p "$NM_DEB_CACHE" "$nm"
    local debs deb=""
    debs=("$NM_DEB_CACHE"/nullmailer_*.deb)
    [ "${#debs[@]}" -gt 0 ] && deb=${debs[0]}
    if [ -z "$deb" ]; then
        say "apt-get download nullmailer"
        (cd "$NM_DEB_CACHE" && { apt-get download nullmailer >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null 2>&1 && apt-get download nullmailer >/dev/null 2>&1; }; }) ||
            die "cannot download nullmailer"
        debs=("$NM_DEB_CACHE"/nullmailer_*.deb)
        [ "${#debs[@]}" -gt 0 ] || die "apt-get download nullmailer gave no .deb"
        deb=${debs[0]}
    fi
    NM_VERSION=$(dpkg-deb -f "$deb" Version)
    dpkg -x "$deb" "$nm/root"
    for p in /etc/nullmailer /var/spool/nullmailer /usr/lib/nullmailer; do
        strings "$nm/root/usr/sbin/nullmailer-queue" "$nm/root/usr/sbin/nullmailer-send" | grep -x "$p" >/dev/null ||
            die "nullmailer $NM_VERSION does not have $p compiled in; adapt nm_setup"
        [ -e "$p" ] && die "$p exists (nullmailer installed, or left by another run): not touching it"
    done
    # The setuid queue program, as packaged: mail:root 4755.
    nmq="$nm/root/usr/sbin/nullmailer-queue"
    nms="$nm/root/usr/sbin/nullmailer-send"
    chown mail:root "$nmq"
    chmod 4755 "$nmq"
    chmod 0755 "$work" "$nm" "$nm/root" "$nm/root/usr" "$nm/root/usr/sbin"
    # Protocol modules: a symbolic link to the unpacked ones.
    ln -s "$nm/root/usr/lib/nullmailer" /usr/lib/nullmailer
    at_exit "rm -f /usr/lib/nullmailer"
    # Spool, as the package and its tmpfiles.d make it.
    install -d -o mail -g root -m 0755 /var/spool/nullmailer /var/spool/nullmailer/failed
    at_exit "rm -rf /var/spool/nullmailer"
    install -d -o mail -g root -m 0750 /var/spool/nullmailer/queue /var/spool/nullmailer/tmp
    mkfifo -m 0622 /var/spool/nullmailer/trigger
    chown mail:root /var/spool/nullmailer/trigger
    install -d -o root -g root -m 0755 /etc/nullmailer
    at_exit "rm -rf /etc/nullmailer"
    echo bench.example >/etc/nullmailer/me
    echo bench.example >/etc/nullmailer/defaultdomain
    : >/etc/nullmailer/adminaddr
    # One pass over the queue, then exit (pausetime 0: "one-shot mode").
    echo 0 >/etc/nullmailer/pausetime
    : >/etc/nullmailer/remotes
    chown mail:mail /etc/nullmailer/remotes
    chmod 0600 /etc/nullmailer/remotes
}
nm_remote() { echo "127.0.0.1 smtp port=$1" >/etc/nullmailer/remotes; }
nm_count() { find /var/spool/nullmailer/queue -type f | wc -l; }

# copy_in SRC DST: the files in SRC into DST, owner, group, mode and times
# kept (DST itself untouched).
copy_in() { find "$1" -mindepth 1 -maxdepth 1 -exec cp -a -t "$2" {} +; }

# ---------------------------------------------------------------- messages
# make_message SIZE FILE: plain text of exactly SIZE bytes (the same text as
# bench/enqueue.sh's), LF line ends, ending with a newline.
make_message() {
    local size=$1 out=$2 head
    head=$'From: bench@example.org\nTo: bench@example.org\nSubject: outq benchmark\nMessage-ID: <bench@example.org>\n\n'
    {
        printf '%s' "$head"
        { yes 'The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnopqrstuvwxyz' || true; } |
            head -c $((size - ${#head} - 1))
        printf '\n'
    } >"$out"
    [ "$(stat -c %s "$out")" = "$size" ] || die "message $out has the wrong size"
    chmod 0644 "$out"
}
# nullmailer-queue's input: sender line, recipient lines, blank line, message.
make_nm_input() { # message out rcpt...
    local msg=$1 out=$2
    shift 2
    { printf '%s\n' "$SENDER" "$@"; printf '\n'; cat "$msg"; } >"$out"
    chmod 0644 "$out"
}
