#!/usr/bin/env bash
# Build the tiny Linux guest used by the gmemd QEMU end-to-end tests.
#
# Usage: build-guest.sh OUTDIR        (tests use <workspace>/target/gmem-guest)
#
# Produces OUTDIR/vmlinuz and OUTDIR/initramfs.cpio.gz from the distribution's
# cloud kernel and busybox-static packages. No root is needed: packages are
# fetched with `apt-get download` and unpacked with `dpkg -x`; the initramfs is
# written by mkcpio.py (newc format, device nodes written into the archive).
#
# Cached: if both outputs exist and OUTDIR/.stamp matches the hash of this
# script, init and mkcpio.py, it exits immediately. GMEM_GUEST_REBUILD=1 forces
# a rebuild. Progress goes to stderr; the output paths are printed on stdout.
#
# Environment:
#   GMEM_GUEST_KERNEL_META  kernel metapackage (default linux-image-cloud-amd64)
#   GMEM_GUEST_REBUILD=1    ignore the cache
set -euo pipefail

prog=build-guest.sh
die() { echo "$prog: error: $*" >&2; exit 1; }
log() { echo "$prog: $*" >&2; }

[ $# -eq 1 ] && [ -n "$1" ] || { echo "usage: $prog OUTDIR" >&2; exit 2; }
mkdir -p "$1"
OUTDIR=$(cd "$1" && pwd)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")
INIT=$HERE/init
MKCPIO=$HERE/mkcpio.py
KERNEL_META=${GMEM_GUEST_KERNEL_META:-linux-image-cloud-amd64}
# Loaded by /init in this order (dependency order). The first five are the
# virtio PCI transport; balloon and mem are small extras for memory tests.
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
         virtio_balloon virtio_mem virtio_blk)

VMLINUZ=$OUTDIR/vmlinuz
INITRD=$OUTDIR/initramfs.cpio.gz
STAMP=$OUTDIR/.stamp

for f in "$INIT" "$MKCPIO"; do [ -r "$f" ] || die "missing $f"; done

input_hash() {
    cat "$SELF" "$INIT" "$MKCPIO" | sha256sum | cut -d' ' -f1
}

up_to_date() {
    [ "${GMEM_GUEST_REBUILD:-0}" != 1 ] &&
        [ -s "$VMLINUZ" ] && [ -s "$INITRD" ] && [ -r "$STAMP" ] &&
        [ "$(head -n1 "$STAMP")" = "$HASH" ]
}

print_outputs() {
    echo "$VMLINUZ"
    echo "$INITRD"
}

HASH=$(input_hash)
if up_to_date; then
    print_outputs
    exit 0
fi

# Serialise concurrent builders (parallel tests); re-check after the wait.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$OUTDIR/.lock"
    flock 9
    if up_to_date; then
        print_outputs
        exit 0
    fi
fi

for tool in apt-get apt-cache dpkg python3 sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required (Debian/Ubuntu host with python3)"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gmem-guest.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---- fetch packages ----------------------------------------------------------
APT_OPTS=()
# As root, apt tries to drop to the _apt user, which cannot write into our
# private temp dir; it falls back with a warning. Skip the attempt.
[ "$(id -u)" = 0 ] && APT_OPTS+=(-o APT::Sandbox::User=root)

apt_fail() {
    echo "$prog: error: $*" >&2
    echo "$prog: error: the apt package lists are probably missing or stale;" \
         "run 'apt-get update' (as root) and retry" >&2
    exit 1
}

KPKG=$(apt-cache depends "$KERNEL_META" 2>/dev/null |
       sed -n 's/^ *Depends: \(linux-image-[0-9][^ <>]*\)$/\1/p' | head -n1) || true
[ -n "$KPKG" ] || apt_fail "cannot resolve '$KERNEL_META' to a versioned linux-image package"
log "kernel package: $KPKG (via $KERNEL_META)"

(cd "$WORK" && apt-get "${APT_OPTS[@]}" -q download "$KPKG" busybox-static) >&2 ||
    apt_fail "'apt-get download $KPKG busybox-static' failed"

kdeb=$(ls "$WORK"/"$KPKG"_*.deb 2>/dev/null | head -n1)
bdeb=$(ls "$WORK"/busybox-static_*.deb 2>/dev/null | head -n1)
[ -n "$kdeb" ] && [ -n "$bdeb" ] || die "downloaded .deb files not found in $WORK"

log "unpacking $(basename "$kdeb") and $(basename "$bdeb")"
dpkg -x "$kdeb" "$WORK/kernel"
dpkg -x "$bdeb" "$WORK/busybox"

# ---- kernel ------------------------------------------------------------------
kimg=$(ls "$WORK"/kernel/boot/vmlinuz-* 2>/dev/null | head -n1)
[ -n "$kimg" ] || die "no boot/vmlinuz-* in $kdeb"
KREL=${kimg##*/vmlinuz-}

moddir=""
for d in "$WORK/kernel/lib/modules/$KREL" "$WORK/kernel/usr/lib/modules/$KREL"; do
    [ -d "$d" ] && moddir=$d && break
done
[ -n "$moddir" ] || die "no modules directory for $KREL in $kdeb"

# ---- initramfs tree ------------------------------------------------------------
ROOT=$WORK/root
mkdir -p "$ROOT/lib/modules" "$ROOT/etc"
MANIFEST=$WORK/manifest
{
    echo "dir dev 0755 0 0"
    echo "nod dev/console 0600 0 0 c 5 1"
    echo "nod dev/null 0666 0 0 c 1 3"
    echo "dir proc 0555 0 0"
    echo "dir sys 0555 0 0"
    echo "dir tmp 1777 0 0"
    echo "dir root 0700 0 0"
    echo "dir etc 0755 0 0"
    echo "dir bin 0755 0 0"
    echo "dir sbin 0755 0 0"
    echo "dir usr 0755 0 0"
    echo "dir usr/bin 0755 0 0"
    echo "dir usr/sbin 0755 0 0"
    echo "dir lib 0755 0 0"
    echo "dir lib/modules 0755 0 0"
    echo "file init $INIT 0755 0 0"
    echo "file bin/busybox $WORK/busybox/bin/busybox 0755 0 0"
} >"$MANIFEST"

# Applet symlinks straight in the archive (the binary is static x86-64, so it
# runs here). If it cannot run, /init falls back to `busybox --install -s`.
if applets=$("$WORK/busybox/bin/busybox" --list-full 2>/dev/null) && [ -n "$applets" ]; then
    while read -r a; do
        case "$a" in
            ''|bin/busybox|linuxrc) continue ;;
        esac
        echo "slink $a /bin/busybox 0777 0 0"
    done <<<"$applets" >>"$MANIFEST"
else
    log "warning: cannot run busybox here; /init will run 'busybox --install -s'"
fi

: >"$ROOT/etc/gmem-modules"
for m in "${MODULES[@]}"; do
    src=$(find "$moddir" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.gz" -o -name "$m.ko.zst" \) \
          -print -quit)
    if [ -z "$src" ]; then
        # Not a module in this kernel: either built in, or missing.
        if grep -q "/$m.ko\$" "$moddir/modules.builtin" 2>/dev/null; then
            log "module $m is built in"
            continue
        fi
        die "module $m not found in $moddir"
    fi
    dst=$ROOT/lib/modules/$m.ko
    # busybox insmod only handles plain .ko: decompress here.
    case "$src" in
        *.ko) cp "$src" "$dst" ;;
        *.ko.xz) python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' "$src" "$dst" ;;
        *.ko.gz) python3 -c 'import gzip,sys; open(sys.argv[2],"wb").write(gzip.open(sys.argv[1]).read())' "$src" "$dst" ;;
        *.ko.zst)
            command -v zstd >/dev/null 2>&1 || die "$src is zstd-compressed and zstd is not installed"
            zstd -q -d -o "$dst" "$src" ;;
    esac
    echo "$m" >>"$ROOT/etc/gmem-modules"
    echo "file lib/modules/$m.ko $dst 0644 0 0" >>"$MANIFEST"
done
echo "file etc/gmem-modules $ROOT/etc/gmem-modules 0644 0 0" >>"$MANIFEST"

log "writing initramfs"
python3 "$MKCPIO" "$MANIFEST" "$WORK/initramfs.cpio.gz" --gzip

# ---- install (stamp last, files replaced atomically) ----------------------------
rm -f "$STAMP"
cp "$kimg" "$OUTDIR/.vmlinuz.tmp"
mv -f "$OUTDIR/.vmlinuz.tmp" "$VMLINUZ"
cp "$WORK/initramfs.cpio.gz" "$OUTDIR/.initramfs.tmp"
mv -f "$OUTDIR/.initramfs.tmp" "$INITRD"
echo "$KREL" >"$OUTDIR/kernel-release"
printf '%s\n%s\n' "$HASH" "$KPKG" >"$OUTDIR/.stamp.tmp"
mv -f "$OUTDIR/.stamp.tmp" "$STAMP"

log "kernel $KREL: $(stat -c %s "$VMLINUZ") bytes; initramfs: $(stat -c %s "$INITRD") bytes"
print_outputs
