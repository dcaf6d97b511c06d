#!/usr/bin/env bash
# The whole path outq has today, without root: build, create a private spool
# owned by the invoking user, submit a message through outq-enqueue, and show
# the committed entry. Run as root, it runs itself as the user "nobody", so
# that it shows what an unprivileged user sees.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" = 0 ] && [ -z "${OUTQ_DEMO_AS_NOBODY:-}" ]; then
    (cd "$top" && cargo build --workspace --quiet)
    chmod o+rx "$top/target" "$top/target/debug" 2>/dev/null || true
    exec setpriv --reuid=nobody --regid=nogroup --clear-groups \
        env -i PATH=/usr/bin:/bin OUTQ_DEMO_AS_NOBODY=1 OUTQ_DEMO_BIN="$top/target/debug" bash "$0"
fi
bin=${OUTQ_DEMO_BIN:-}
if [ -z "$bin" ]; then
    (cd "$top" && cargo build --workspace --quiet)
    bin="$top/target/debug"
fi
demo=$(mktemp -d /tmp/outq-demo.XXXXXX)
echo "# private spool in $demo/spool, as $(id -un)"
printf 'myhostname = demo.example\nspool_min_free = 0\n' > "$demo/outq.conf"
"$bin/outq" init --spool "$demo/spool" --config "$demo/outq.conf"
echo "# submit a message"
id=$(printf 'Subject: hello\n\nHello from outq.\n' |
    "$bin/outq-enqueue" --spool "$demo/spool" --config "$demo/outq.conf" you@example.org)
echo "queued as $id"
echo "# the committed entry (owner, mode 0404, in new/)"
ls -l "$demo/spool/new"
echo "# its contents: envelope header, message, trailer"
cat "$demo/spool/new/$id"
test -z "$(ls -A "$demo/spool/tmp")"
echo "# demo spool left in $demo (remove it with: rm -rf $demo)"
