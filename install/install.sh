#!/bin/sh
# Install outq from a built tree, or uninstall it.
#
#   install/install.sh [install]          install (the default)
#   install/install.sh uninstall          remove the programs, keep the
#                                         spool, queued mail and config
#   install/install.sh uninstall --purge  also remove the spool, the
#                                         configuration, the user and group
#
# Settings, from the environment (defaults in brackets):
#   DESTDIR     stage into this directory instead of the live system []
#   PREFIX      [/usr]            programs in PREFIX/sbin, pages in
#                                 PREFIX/share/man, units in PREFIX/lib
#   SYSCONFDIR  [/etc]            the configuration in SYSCONFDIR/outq
#   SPOOLDIR    [/var/spool/outq] the spool (made by 'outq init')
#   OUTQ_USER   [outq]            the queue owner, with its own group
#   OUTQ_GROUP  [outqdrop]        the helper's dedicated group
#   BINDIR      [$CARGO_TARGET_DIR/release, else target/release]
#                                 where the built programs are
#   HELPER      [BINDIR/helper/outq-enqueue] the helper to install: the
#                                 static-pie build of install/build-helper
#   MANIFEST    [DESTDIR.manifest] with DESTDIR: where the intended owner,
#                                 group and mode of each path is recorded
#
# Live install (no DESTDIR, as root): creates the group and the user if
# missing, installs, then runs 'outq init' and 'outq check'.
# See install/README.md.
set -eu
umask 022

me=install.sh
say() { printf '%s: %s\n' "$me" "$*"; }
warn() { printf '%s: warning: %s\n' "$me" "$*" >&2; }
die() {
    printf '%s: %s\n' "$me" "$*" >&2
    exit 1
}

top=$(cd "$(dirname "$0")/.." && pwd)

action=install
purge=no
for arg in "$@"; do
    case $arg in
    install | uninstall) action=$arg ;;
    --purge) purge=yes ;;
    -h | --help)
        sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$arg' (try --help)" ;;
    esac
done
if [ "$purge" = yes ] && [ "$action" != uninstall ]; then
    die "--purge goes with 'uninstall'"
fi

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr}
SYSCONFDIR=${SYSCONFDIR:-/etc}
SPOOLDIR=${SPOOLDIR:-/var/spool/outq}
OUTQ_USER=${OUTQ_USER:-outq}
OUTQ_GROUP=${OUTQ_GROUP:-outqdrop}
BINDIR=${BINDIR:-${CARGO_TARGET_DIR:-$top/target}/release}
HELPER=${HELPER:-$BINDIR/helper/outq-enqueue}

# Every path ends up in a unit file, a sed expression or a configuration
# line: allow only plain characters.
check_path() {
    case $2 in
    /*) ;;
    *) die "$1 must be an absolute path (got '$2')" ;;
    esac
    case $2 in
    *[!A-Za-z0-9._/+-]* | *//* | */./* | */../* | */. | */..)
        die "$1 may hold only letters, digits, '.', '_', '+', '-' and single '/' (got '$2')"
        ;;
    esac
}
check_name() {
    case $2 in
    '' | -* | *[!a-z0-9_-]*) die "$1 must be an account name: lower-case letters, digits, '_', '-' (got '$2')" ;;
    esac
    if [ ${#2} -gt 32 ]; then
        die "$1 is longer than 32 characters"
    fi
}
check_path PREFIX "$PREFIX"
check_path SYSCONFDIR "$SYSCONFDIR"
check_path SPOOLDIR "$SPOOLDIR"
check_name OUTQ_USER "$OUTQ_USER"
check_name OUTQ_GROUP "$OUTQ_GROUP"
if [ "$OUTQ_USER" = "$OUTQ_GROUP" ]; then
    die "OUTQ_GROUP must differ from OUTQ_USER: the helper's group is nobody's own group"
fi
if [ "$SPOOLDIR" = / ] || [ "$(dirname "$SPOOLDIR")" = / ]; then
    die "SPOOLDIR must be a directory of its own, such as /var/spool/outq"
fi
if [ "$DESTDIR" = / ]; then
    DESTDIR=
fi
if [ -n "$DESTDIR" ]; then
    mkdir -p "$DESTDIR"
    DESTDIR=$(cd "$DESTDIR" && pwd)
    MANIFEST=${MANIFEST:-$DESTDIR.manifest}
else
    MANIFEST=
fi

sbindir=$PREFIX/sbin
mandir=$PREFIX/share/man
unitdir=$PREFIX/lib/systemd/system
sysusersdir=$PREFIX/lib/sysusers.d
tmpfilesdir=$PREFIX/lib/tmpfiles.d
confdir=$SYSCONFDIR/outq
conf=$confdir/outq.conf

is_root=no
if [ "$(id -u)" = 0 ]; then
    is_root=yes
fi

if [ -z "$DESTDIR" ] && [ "$is_root" != yes ]; then
    die "installing to the live system needs root (or set DESTDIR to stage the files)"
fi

# A live install must not fight the package manager over its files.
if [ -z "$DESTDIR" ] && command -v dpkg-query >/dev/null 2>&1; then
    if owner=$(dpkg-query -S "$sbindir/outq" 2>/dev/null); then
        die "$sbindir/outq belongs to the package ${owner%%:*}; use the package manager (apt remove/purge ${owner%%:*})"
    fi
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/outq-install.XXXXXX")
pending=
trap 'rm -rf "$work"; if [ -n "$pending" ]; then rm -f "$pending"; fi' EXIT
trap 'exit 1' HUP INT TERM
: >"$work/manifest"

# Whether owners can be set on what we install: always as root, except for
# a group that does not exist (possible only under DESTDIR).
owner_ok() {
    [ "$is_root" = yes ] && getent passwd "$1" >/dev/null 2>&1 && getent group "$2" >/dev/null 2>&1
}
not_applied=no

# record MODE OWNER GROUP PATH
record() {
    printf '%s %s %s %s\n' "$1" "$2" "$3" "$4" >>"$work/manifest"
}

# make_dir PATH: a root-owned 0755 directory (and its missing parents).
make_dir() {
    if [ -d "$DESTDIR$1" ]; then
        return 0
    fi
    if [ "$is_root" = yes ]; then
        install -d -o root -g root -m 0755 "$DESTDIR$1"
    else
        install -d -m 0755 "$DESTDIR$1"
    fi
}

# put SOURCE PATH MODE OWNER GROUP: install one file, replacing an existing
# one atomically (a caller running the helper meanwhile sees the old file
# or the new one, never a missing or half-written one).
put() {
    src=$1 path=$2 mode=$3 owner=$4 group=$5
    make_dir "$(dirname "$path")"
    tmp=$DESTDIR$(dirname "$path")/.$(basename "$path").outq-new
    rm -f "$tmp"
    pending=$tmp
    if owner_ok "$owner" "$group"; then
        # install(1) sets the owner before the mode, so the set-group-ID
        # bit survives.
        install -o "$owner" -g "$group" -m "$mode" "$src" "$tmp"
    else
        # Without the intended owners, never a set-user/group-ID file: it
        # would grant the wrong group (root's, or the builder's).
        case $mode in
        [1-7]???) install -m "0${mode#?}" "$src" "$tmp" ;;
        *) install -m "$mode" "$src" "$tmp" ;;
        esac
        not_applied=yes
    fi
    mv -f "$tmp" "$DESTDIR$path"
    pending=
    record "$mode" "$owner" "$group" "$path"
}

# Rewrite the shipped files for non-default paths and names.
adapt_unit() {
    sed -e "s|/usr/sbin/outq|$sbindir/outq|g" \
        -e "s|/var/spool/outq|$SPOOLDIR|g" \
        -e "s|^User=outq\$|User=$OUTQ_USER|" \
        -e "s|^Group=outq\$|Group=$OUTQ_USER|" "$1"
}
adapt_sysusers() {
    sed -e "s|^u outq |u $OUTQ_USER |" \
        -e "s|^g outqdrop |g $OUTQ_GROUP |" \
        -e "s|/var/spool/outq|$SPOOLDIR|g" "$1"
}
adapt_tmpfiles() {
    awk -v spool="$SPOOLDIR" -v user="$OUTQ_USER" -v group="$OUTQ_GROUP" '
        /^#/ || NF == 0 { print; next }
        {
            sub("^/var/spool/outq", spool, $2)
            if ($4 == "outq") $4 = user
            if ($5 == "outq") $5 = user
            else if ($5 == "outqdrop") $5 = group
            print
        }' "$1"
}

# The programs read their configuration path, and find the helper, at
# paths fixed when they were built (OUTQ_CONFIG_PATH, OUTQ_ENQUEUE_PROGRAM).
check_built_paths() {
    if [ "$conf" != /etc/outq/outq.conf ] && ! grep -qaF "$conf" "$HELPER"; then
        warn "the helper was built to read /etc/outq/outq.conf, not $conf: rebuild with OUTQ_CONFIG_PATH=$conf"
    fi
    if [ "$sbindir" != /usr/sbin ] && ! grep -qaF "$sbindir/outq-enqueue" "$BINDIR/outq"; then
        warn "outq was built to find the helper at /usr/sbin/outq-enqueue: rebuild with OUTQ_ENQUEUE_PROGRAM=$sbindir/outq-enqueue"
    fi
}

nologin_shell() {
    for s in /usr/sbin/nologin /sbin/nologin; do
        if [ -x "$s" ]; then
            echo "$s"
            return 0
        fi
    done
    echo /bin/false
}

ensure_accounts() {
    if ! getent group "$OUTQ_GROUP" >/dev/null; then
        groupadd --system "$OUTQ_GROUP"
        say "created group $OUTQ_GROUP"
    fi
    if ! getent passwd "$OUTQ_USER" >/dev/null; then
        if getent group "$OUTQ_USER" >/dev/null; then
            own_group="--gid $OUTQ_USER"
        else
            own_group=--user-group
        fi
        # $own_group is one option and one word, or one option: split it.
        # shellcheck disable=SC2086
        useradd --system $own_group --no-create-home --home-dir "$SPOOLDIR" \
            --shell "$(nologin_shell)" --comment "outq mail queue" "$OUTQ_USER"
        say "created user $OUTQ_USER"
    fi
    # The account of the loopback SMTP sessions (outq-smtp@.service).
    if ! getent passwd outq-smtp >/dev/null; then
        useradd --system --user-group --no-create-home --home-dir / \
            --shell "$(nologin_shell)" --comment "outq SMTP submission on loopback" outq-smtp
        say "created user outq-smtp"
    fi
}

do_install() {
    if [ ! -f "$BINDIR/outq" ]; then
        die "$BINDIR/outq is not built: run 'cargo build --release -p outq' (or set BINDIR)"
    fi
    if [ ! -f "$HELPER" ]; then
        die "$HELPER is not built: run 'install/build-helper' (or set HELPER)"
    fi
    check_built_paths
    if [ -z "$DESTDIR" ]; then
        ensure_accounts
    fi

    put "$HELPER" "$sbindir/outq-enqueue" 2755 root "$OUTQ_GROUP"
    put "$BINDIR/outq" "$sbindir/outq" 0755 root root
    if [ -f "$BINDIR/outq-sendmail" ]; then
        put "$BINDIR/outq-sendmail" "$sbindir/outq-sendmail" 0755 root root
    else
        warn "$BINDIR/outq-sendmail is not built; not installed"
    fi

    for page in "$top"/man/*.[1-9]; do
        [ -f "$page" ] || continue
        name=$(basename "$page")
        gzip -9n -c "$page" >"$work/$name.gz"
        put "$work/$name.gz" "$mandir/man${name##*.}/$name.gz" 0644 root root
    done

    adapt_unit "$top/install/systemd/outq.service" >"$work/outq.service"
    put "$work/outq.service" "$unitdir/outq.service" 0644 root root
    # SMTP on loopback: installed, never enabled here (see the socket unit).
    for unit in outq-smtp.socket outq-smtp@.service; do
        adapt_unit "$top/install/systemd/$unit" >"$work/$unit"
        put "$work/$unit" "$unitdir/$unit" 0644 root root
    done
    adapt_sysusers "$top/install/systemd/outq.sysusers" >"$work/sysusers.conf"
    put "$work/sysusers.conf" "$sysusersdir/outq.conf" 0644 root root
    adapt_tmpfiles "$top/install/systemd/outq.tmpfiles" >"$work/tmpfiles.conf"
    put "$work/tmpfiles.conf" "$tmpfilesdir/outq.conf" 0644 root root

    # The configuration: the example, with the settings that differ from
    # the built-in defaults. An existing file is never replaced.
    cp "$top/install/outq.conf.example" "$work/outq.conf"
    {
        if [ "$SPOOLDIR" != /var/spool/outq ]; then echo "spool_directory = $SPOOLDIR"; fi
        if [ "$OUTQ_USER" != outq ]; then echo "queue_user = $OUTQ_USER"; fi
        if [ "$OUTQ_GROUP" != outqdrop ]; then echo "setgid_group = $OUTQ_GROUP"; fi
    } >>"$work/outq.conf"
    make_dir "$confdir"
    record 0755 root root "$confdir"
    if [ -e "$DESTDIR$conf" ] || [ -L "$DESTDIR$conf" ]; then
        put "$work/outq.conf" "$conf.example" 0644 root root
        say "kept the existing $DESTDIR$conf; the new example is $DESTDIR$conf.example"
    else
        put "$work/outq.conf" "$conf" 0644 root root
    fi

    if [ -n "$DESTDIR" ]; then
        cp "$work/manifest" "$MANIFEST"
        say "staged in $DESTDIR; owner, group and mode of each path: $MANIFEST"
        if [ "$not_applied" = yes ]; then
            say "owners, groups and the set-group-ID bit were NOT applied (not root, or the accounts"
            say "do not exist here); apply them from $MANIFEST when packaging: the helper must be"
            say "root:$OUTQ_GROUP 2755 (it is staged 0755)"
        fi
        return 0
    fi

    say "installed; creating and auditing the spool"
    "$sbindir/outq" init --config "$conf"
    if ! "$sbindir/outq" check --config "$conf" --helper "$sbindir/outq-enqueue"; then
        die "installed, but 'outq check' found the problems above"
    fi
    if [ -d /run/systemd/system ]; then
        say "start the runner: systemctl daemon-reload && systemctl enable --now outq.service"
    else
        say "start the runner as $OUTQ_USER: runuser -u $OUTQ_USER -- $sbindir/outq run"
    fi
    say "units of programs that submit mail must not use NoNewPrivileges=yes (see install/README.md)"
}

# Where the spool is: the configuration's spool_directory if it sets one.
configured_spool() {
    s=
    if [ -f "$DESTDIR$conf" ]; then
        s=$(sed -n 's/^[[:space:]]*spool_directory[[:space:]]*=[[:space:]]*\([^[:space:]]*\)[[:space:]]*$/\1/p' "$DESTDIR$conf")
    fi
    echo "${s:-$SPOOLDIR}"
}

do_uninstall() {
    spool=$(configured_spool)
    if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now outq.service outq-smtp.socket >/dev/null 2>&1 || true
    fi
    for f in "$sbindir/outq-sendmail" "$sbindir/outq" "$sbindir/outq-enqueue" \
        "$unitdir/outq.service" "$unitdir/outq-smtp.socket" "$unitdir/outq-smtp@.service" \
        "$sysusersdir/outq.conf" "$tmpfilesdir/outq.conf"; do
        rm -f "$DESTDIR$f"
    done
    for page in "$top"/man/*.[1-9]; do
        [ -f "$page" ] || continue
        name=$(basename "$page")
        rm -f "$DESTDIR$mandir/man${name##*.}/$name.gz"
    done
    if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl daemon-reload || true
    fi
    say "removed the programs, manual pages and units"

    if [ "$purge" != yes ]; then
        if [ -z "$DESTDIR" ] && [ -d "$spool" ]; then
            say "kept the spool $spool and any queued mail in it, $conf, user $OUTQ_USER and group $OUTQ_GROUP"
            say "(remove them with: $0 uninstall --purge)"
        else
            say "kept $DESTDIR$conf (remove it with: $0 uninstall --purge)"
        fi
        return 0
    fi

    rm -f "$DESTDIR$conf" "$DESTDIR$conf.example"
    rmdir "$DESTDIR$confdir" 2>/dev/null || true
    if [ -n "$DESTDIR" ]; then
        rm -f "$MANIFEST"
        say "purged the configuration from $DESTDIR"
        return 0
    fi
    if [ -d "$spool" ]; then
        # Only what is recognisably an outq spool is removed.
        if [ -d "$spool/new" ] && [ -d "$spool/tmp" ] && [ -d "$spool/state" ]; then
            rm -rf "$spool"
            say "removed the spool $spool and the mail queued in it"
        else
            warn "$spool does not look like an outq spool; not removed"
        fi
    fi
    if getent passwd "$OUTQ_USER" >/dev/null; then
        userdel "$OUTQ_USER" || warn "could not remove user $OUTQ_USER (is a runner still running?)"
    fi
    # userdel keeps the user's own group when it still has members.
    if getent group "$OUTQ_USER" >/dev/null; then
        groupdel "$OUTQ_USER" || warn "could not remove group $OUTQ_USER"
    fi
    if getent group "$OUTQ_GROUP" >/dev/null; then
        groupdel "$OUTQ_GROUP" || warn "could not remove group $OUTQ_GROUP"
    fi
    if getent passwd outq-smtp >/dev/null; then
        userdel outq-smtp || warn "could not remove user outq-smtp (is an SMTP session still running?)"
    fi
    if getent group outq-smtp >/dev/null; then
        groupdel outq-smtp || warn "could not remove group outq-smtp"
    fi
    say "purged the configuration, the users $OUTQ_USER and outq-smtp and the groups"
}

case $action in
install) do_install ;;
uninstall) do_uninstall ;;
esac
