#!/usr/bin/env python3
"""Write a (gzipped) newc cpio archive from a gen_init_cpio-style manifest.

No `cpio` tool and no root privileges are needed: device nodes, ownership and
modes are written straight into the archive headers.

Usage: mkcpio.py MANIFEST OUTPUT [--gzip]

Manifest lines (same syntax as the kernel's usr/gen_init_cpio; '#' comments
and blank lines are ignored; mode is octal permission bits):

    dir   <name> <mode> <uid> <gid>
    file  <name> <source-path> <mode> <uid> <gid>
    slink <name> <target> <mode> <uid> <gid>
    nod   <name> <mode> <uid> <gid> <c|b> <major> <minor>

Missing parent directories are emitted automatically (mode 0755, root) before
their first child, so entries may appear in any order. Every name appears at
most once (a later duplicate is an error). mtime is fixed to 0 and inodes are
numbered sequentially, so the output is reproducible for identical inputs.
"""

import gzip
import os
import stat
import sys


class NewcWriter:
    def __init__(self, out):
        self.out = out
        self.ino = 300000  # arbitrary base, avoids 0/1
        self.seen = set()
        self.offset = 0

    def _write(self, data):
        self.out.write(data)
        self.offset += len(data)

    def _pad4(self):
        pad = (-self.offset) % 4
        if pad:
            self._write(b"\0" * pad)

    def _entry(self, name, mode, uid=0, gid=0, nlink=1, data=b"",
               rdevmajor=0, rdevminor=0):
        name_b = name.encode() + b"\0"
        self.ino += 1
        fields = [
            self.ino,        # c_ino
            mode,            # c_mode (type + permissions)
            uid,             # c_uid
            gid,             # c_gid
            nlink,           # c_nlink
            0,               # c_mtime
            len(data),       # c_filesize
            0,               # c_devmajor
            0,               # c_devminor
            rdevmajor,       # c_rdevmajor
            rdevminor,       # c_rdevminor
            len(name_b),     # c_namesize (includes NUL)
            0,               # c_check (only used by "070702")
        ]
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        assert len(hdr) == 110
        self._write(hdr)
        self._write(name_b)
        self._pad4()
        if data:
            self._write(data)
            self._pad4()

    @staticmethod
    def _norm(name):
        name = name.strip("/")
        if not name or ".." in name.split("/"):
            raise ValueError("bad archive path: %r" % name)
        return name

    def _parents(self, name):
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.seen:
                self.seen.add(d)
                self._entry(d, stat.S_IFDIR | 0o755, nlink=2)

    def _claim(self, name):
        name = self._norm(name)
        if name in self.seen:
            raise ValueError("duplicate archive path: %r" % name)
        self._parents(name)
        self.seen.add(name)
        return name

    def dir(self, name, mode, uid, gid):
        self._entry(self._claim(name), stat.S_IFDIR | mode, uid, gid, nlink=2)

    def file(self, name, src, mode, uid, gid):
        with open(src, "rb") as f:
            data = f.read()
        self._entry(self._claim(name), stat.S_IFREG | mode, uid, gid, data=data)

    def slink(self, name, target, mode, uid, gid):
        self._entry(self._claim(name), stat.S_IFLNK | mode, uid, gid,
                    data=target.encode())

    def nod(self, name, mode, uid, gid, kind, major, minor):
        if kind == "c":
            ftype = stat.S_IFCHR
        elif kind == "b":
            ftype = stat.S_IFBLK
        else:
            raise ValueError("nod type must be c or b, got %r" % kind)
        self._entry(self._claim(name), ftype | mode, uid, gid,
                    rdevmajor=major, rdevminor=minor)

    def trailer(self):
        self._entry("TRAILER!!!", 0, nlink=1)
        # Pad the archive to a 512-byte multiple like cpio(1) does.
        pad = (-self.offset) % 512
        if pad:
            self._write(b"\0" * pad)


def build(manifest, out):
    w = NewcWriter(out)
    with open(manifest) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            tok = line.split()
            kind, args = tok[0], tok[1:]
            try:
                if kind == "dir" and len(args) == 4:
                    w.dir(args[0], int(args[1], 8), int(args[2]), int(args[3]))
                elif kind == "file" and len(args) == 5:
                    w.file(args[0], args[1], int(args[2], 8), int(args[3]),
                           int(args[4]))
                elif kind == "slink" and len(args) == 5:
                    w.slink(args[0], args[1], int(args[2], 8), int(args[3]),
                            int(args[4]))
                elif kind == "nod" and len(args) == 7:
                    w.nod(args[0], int(args[1], 8), int(args[2]), int(args[3]),
                          args[4], int(args[5]), int(args[6]))
                else:
                    raise ValueError("unrecognised entry")
            except (ValueError, OSError) as e:
                sys.exit("mkcpio: %s:%d: %s: %s" % (manifest, lineno, e, line))
    w.trailer()


def main():
    args = [a for a in sys.argv[1:] if a != "--gzip"]
    use_gzip = "--gzip" in sys.argv[1:]
    if len(args) != 2:
        sys.exit(__doc__)
    manifest, output = args
    tmp = output + ".tmp"
    with open(tmp, "wb") as raw:
        if use_gzip:
            # mtime=0 and no filename in the header: reproducible output.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                               compresslevel=9, mtime=0) as gz:
                build(manifest, gz)
        else:
            build(manifest, raw)
    os.replace(tmp, output)


if __name__ == "__main__":
    main()
