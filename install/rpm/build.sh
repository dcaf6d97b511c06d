#!/bin/sh
# Build the binary RPM of outq from programs already built by
# `cargo build --release -p outq` (outq, outq-sendmail) and
# install/build-helper (the static-pie helper): install/rpm/build.sh OUTDIR
#
# BINDIR names the directory of the built programs (default:
# $CARGO_TARGET_DIR/release, else target/release), HELPER the helper
# (default: BINDIR/helper/outq-enqueue, where install/build-helper puts it;
# the spec's %build refuses one that is not static-pie). The package lands in
# OUTDIR/ARCH/. rpmbuild runs with --nodeps: the spec's BuildRequires
# (Fedora's systemd-rpm-macros) is not in the rpm database of a Debian
# build host; the spec carries fallbacks for those macros.
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:?usage: install/rpm/build.sh OUTDIR}
bindir=${BINDIR:-${CARGO_TARGET_DIR:-$top/target}/release}
helper=${HELPER:-$bindir/helper/outq-enqueue}
[ -f "$helper" ] || { echo "install/rpm/build.sh: $helper is not built: run install/build-helper (or set HELPER)" >&2; exit 1; }
version=$(sed -n 's/^Version: *//p' "$top/install/rpm/outq.spec")
mkdir -p "$out"
out=$(cd "$out" && pwd)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
src="$work/outq-$version"
mkdir -p "$src/bin" "$work/SOURCES"
for prog in outq outq-sendmail; do
    cp "$bindir/$prog" "$src/bin/"
done
cp "$helper" "$src/bin/outq-enqueue"
cp -R "$top/install" "$top/man" "$top/README.md" "$top/SECURITY.md" "$src/"
tar -C "$work" -czf "$work/SOURCES/outq-$version-bin.tar.gz" "outq-$version"
cp "$top/install/systemd/outq.sysusers" "$work/SOURCES/"
# brp-compress is skipped: Debian runs it with dash, which it does not
# support, and the spec compresses the pages itself.
rpmbuild -bb --nodeps --quiet --define "__brp_compress %{nil}" \
    --define "_topdir $work" --define "_rpmdir $out" \
    "$top/install/rpm/outq.spec"
