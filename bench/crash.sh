#!/usr/bin/env bash
# bench/crash.sh: is an entry the helper acknowledged (exit 0) still there,
# complete and in new/, after the file system is cut off right after the
# helper exits? On ext4 with a journal, ext4 without one, XFS and btrfs.
#
# Method (as root; everything undone at exit, see lib.sh): for each file
# system, an image file on /var/tmp attached to a loop device, made with
# mkfs, mounted, a spool made by `outq init`. Each trial submits one 4 KB
# message through the helper (development mode, run as the caller with
# the spool's group), and as soon as it exits 0 the file system is shut
# down with `xfs_io -x -c shutdown` (FS_IOC_SHUTDOWN without flushing the
# log, as xfstests simulate a crash: the file system writes nothing more,
# so what the helper did not make durable is dropped). Then umount,
# e2fsck -fy where there is no journal, mount again (the journal or log is
# replayed), and the entry is looked for: in new/ with its size
# and trailer ("durable"), complete in tmp/ ("in tmp/": the runner's sweep
# would move it), or neither ("LOST or partial").
#
# HELPERS="LABEL=PATH ..." measures other builds of the helper too (for a
# control that must fail, e.g. one without the fsync); default: the
# helper as shipped, the static-pie build of install/build-helper. TRIALS
# (default 5) per file system and helper.
#
# Limits, stated in the report too: a file system without FS_IOC_SHUTDOWN
# (btrfs on some kernels) cannot be cut this way and is reported as
# untestable; without a journal, ext4's shutdown stops its own writes, but
# directory blocks, which live in the block device's cache, still reach
# the device at umount, so there only the data's durability is tested, not
# the order of the directory updates. Real power cuts are the other
# evidence. Not a test of a disk's cache either: a loop device honours
# flushes.
#
# Output: $OUT/crash.md.
me=crash.sh
source "$(dirname "$0")/lib.sh"

TRIALS=${TRIALS:-5}
need_pkg xfs_io xfsprogs
need_pkg mkfs.xfs xfsprogs
need_pkg mkfs.btrfs btrfs-progs
build
make_accounts
install_helper
mkdir -p "$OUT"
read -r -a helpers <<<"${HELPERS:-outq=$helper_bin}"
for h in "${helpers[@]}"; do
    install -o root -g root -m 0755 "${h#*=}" "$work/bin/h-${h%%=*}"
done
msg="$work/msg"
make_message 4096 "$msg"
printf 'spool_min_free = 0\nmyhostname = bench.example.org\n' >"$work/dev.conf"
chmod 0644 "$work/dev.conf"

mkfs_for() { # fs device
    case $1 in
        ext4) mkfs.ext4 -q -F "$2" ;;
        ext4-nojournal) mkfs.ext4 -q -F -O ^has_journal "$2" ;;
        xfs) mkfs.xfs -q -f "$2" ;;
        btrfs) mkfs.btrfs -q -f "$2" ;;
    esac
}

declare -A R
for fs in ext4 ext4-nojournal xfs btrfs; do
    img="$work/img-$fs"
    truncate -s 512M "$img"
    dev=$(losetup --find --show "$img")
    at_exit "losetup -d '$dev'"
    mkfs_for "$fs" "$dev" >/dev/null
    mnt="$work/mnt-$fs"
    mkdir -p "$mnt"
    mount "$dev" "$mnt"
    at_exit "if mountpoint -q '$mnt'; then umount '$mnt'; fi"
    chmod 0755 "$mnt"
    "$outq" init --spool "$mnt/spool" --user "$owner" --group "$grp" >/dev/null
    for h in "${helpers[@]}"; do
        label=${h%%=*}
        ok=0 intmp=0 lost=0
        for ((i = 0; i < TRIALS; i++)); do
            sync
            id=$(setpriv --reuid="$cuid" --regid="$dgid" --clear-groups \
                "$work/bin/h-$label" --spool "$mnt/spool" --config "$work/dev.conf" -f "$SENDER" "$RCPT" <"$msg") ||
                die "$label on $fs: the helper failed"
            # The cut. Without FS_IOC_SHUTDOWN there is no cut at all (the
            # umount would write everything): say so instead of measuring.
            if ! xfs_io -x -c shutdown "$mnt" 2>/dev/null; then
                R[$fs/$label]="untestable"
                umount "$mnt"
                mount "$dev" "$mnt"
                continue 2
            fi
            umount "$mnt"
            [ "$fs" = ext4-nojournal ] && { e2fsck -fy "$dev" >/dev/null 2>&1 || true; }
            mount "$dev" "$mnt"
            f="$mnt/spool/new/$id" t="$mnt/spool/tmp/$id"
            complete() { [ -f "$1" ] && [ "$(tail -c 5 "$1" | od -An -c | tr -d ' ')" = '\nEND\n' ] && [ "$(stat -c %s "$1")" -gt 4096 ]; }
            if complete "$f"; then
                ok=$((ok + 1))
            elif complete "$t"; then
                intmp=$((intmp + 1))
            else
                lost=$((lost + 1))
            fi
            find "$mnt/spool/new" "$mnt/spool/tmp" "$mnt/spool/corrupt" -mindepth 1 -delete 2>/dev/null || true
        done
        R[$fs/$label]="$ok/$intmp/$lost"
        say "$fs, $label: durable $ok, in tmp/ $intmp, lost or partial $lost (of $TRIALS)"
    done
    umount "$mnt"
done

{
    echo "### Crash right after exit 0 (bench/crash.sh)"
    echo
    echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC'), kernel $(uname -r): $TRIALS trials per file system and helper; each submits one 4 KB message, and the moment the helper exits 0 the file system is shut down without flushing (\`xfs_io -x -c shutdown\`, as xfstests simulate a crash), then unmounted and mounted again (\`e2fsck -fy\` first without a journal). Without a journal ext4's directory blocks still reach the device at umount (they live in the block device's cache), so that column tests the data, not the order of the directory updates; \"untestable\": the kernel has no shutdown for that file system. Loop devices on image files: this tests what the helper makes durable, not a disk's cache."
    echo
    printf '| helper |'
    for fs in ext4 ext4-nojournal xfs btrfs; do printf ' %s |' "$fs"; done
    echo
    printf '| --- |'
    for fs in ext4 ext4-nojournal xfs btrfs; do printf ' --- |'; done
    echo
    for h in "${helpers[@]}"; do
        label=${h%%=*}
        printf '| %s |' "$label"
        for fs in ext4 ext4-nojournal xfs btrfs; do
            if [ "${R[$fs/$label]}" = untestable ]; then
                printf ' untestable |'
            else
                IFS=/ read -r a b c <<<"${R[$fs/$label]}"
                printf ' durable %s, in tmp/ %s, lost %s |' "$a" "$b" "$c"
            fi
        done
        echo
    done
} >"$OUT/crash.md"
for h in "${helpers[@]}"; do
    label=${h%%=*}
    printf 'crash_%s' "$label"
    for fs in ext4 ext4-nojournal xfs btrfs; do printf ' %s=%s' "$fs" "${R[$fs/$label]}"; done
    echo
done >"$OUT/crash.summary"
cat "$OUT/crash.md"
