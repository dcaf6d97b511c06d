#!/usr/bin/env bash
# The whole path without root: build, create a private spool owned by the
# invoking user, submit a message through outq-enqueue, deliver it with
# `outq run --once` through the maildir: transport, and show the delivered
# file. Run as root, it runs itself as the user "nobody", so that it shows
# what an unprivileged user sees.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" = 0 ] && [ -z "${OUTQ_DEMO_AS_NOBODY:-}" ]; then
    (cd "$top" && cargo build --workspace --quiet)
    # Copies nobody can run, wherever the checkout is.
    bindir=$(mktemp -d /tmp/outq-demo-bin.XXXXXX)
    chmod 0755 "$bindir"
    target=${CARGO_TARGET_DIR:-$top/target}
    for b in outq outq-enqueue outq-sendmail; do install -m 0755 "$target/debug/$b" "$bindir/"; done
    cp "$0" "$bindir/demo.sh"
    exec setpriv --reuid=nobody --regid=nogroup --clear-groups \
        env -i PATH=/usr/bin:/bin OUTQ_DEMO_AS_NOBODY=1 OUTQ_DEMO_BIN="$bindir" bash "$bindir/demo.sh"
fi
bin=${OUTQ_DEMO_BIN:-}
if [ -z "$bin" ]; then
    (cd "$top" && cargo build --workspace --quiet)
    bin="${CARGO_TARGET_DIR:-$top/target}/debug"
fi
demo=$(mktemp -d /tmp/outq-demo.XXXXXX)
echo "# private spool in $demo/spool, as $(id -un)"
printf 'myhostname = demo.example\nspool_min_free = 0\nrelay = maildir:%s/Maildir\n' "$demo" > "$demo/outq.conf"
"$bin/outq" init --spool "$demo/spool" --config "$demo/outq.conf"
echo "# submit a message"
id=$(printf 'Subject: hello\n\nHello from outq.\n' |
    "$bin/outq-enqueue" --spool "$demo/spool" --config "$demo/outq.conf" you@example.org)
echo "queued as $id"
echo "# the committed entry in new/: owner, mode 0404, envelope header, message, trailer"
ls -l "$demo/spool/new"
cat "$demo/spool/new/$id"
echo "# deliver it: one pass of the runner with the maildir: transport"
"$bin/outq" run --once --spool "$demo/spool" --config "$demo/outq.conf" --log stderr
delivered=$(ls "$demo/Maildir/new")
echo "# delivered to $demo/Maildir/new/$delivered"
cat "$demo/Maildir/new/$delivered"
# (tmp/.share.UID is the helper's per-account count for submit_share, not an entry)
for q in tmp new active deferred state; do test -z "$(ls -A "$demo/spool/$q" | grep -v '^\.share\.')"; done
echo "# the spool is empty again; demo left in $demo (remove it with: rm -rf $demo)"
