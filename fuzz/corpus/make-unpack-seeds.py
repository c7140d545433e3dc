#!/usr/bin/env python3
"""Writes the seed corpus of the `unpack` fuzz target into corpus/unpack/.

Small tar archives of the shapes `envpack unpack` must handle: an envpack environment with
relocation records (plain, gzip; zstd when the `zstd` tool is there), a conda-pack one with
records in its bin/conda-unpack, and hostile ones (`..`, absolute names, a symlink then a
write through it, a hard link out of the tree, a FIFO, a device). Run again to regenerate:
the output is deterministic.
"""
import gzip
import io
import os
import shutil
import subprocess
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "unpack")
PH = "/__envpack_placeholder_prefix__"
CP_PH = "/opt/anaconda1anaconda2anaconda3"


def member(tar, name, data=b"", kind=tarfile.REGTYPE, link="", mode=0o644):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = mode
    info.mtime = 0
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def archive(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for m in members:
            member(tar, *m)
    # Without tarfile's padding to 10 KiB: the last member's block, then the end marker.
    data = buf.getvalue().rstrip(b"\0")
    return data + b"\0" * (-len(data) % 512 + 1024)


def envpack_env():
    binary = b"\x7fELF\0" + (PH + "/lib").encode() + b"\0" * 40 + b"tail\0"
    relocations = (
        '{"envpack": 1, "prefix": "%s", "files": [["etc/a.conf", "text", 0], '
        '["lib/libx.so", "binary", 80]]}\n' % PH
    ).encode()
    return archive([
        ("conda-meta/", b"", tarfile.DIRTYPE, "", 0o755),
        ("conda-meta/x-1.0-0.json", b"{}\n"),
        ("etc/a.conf", ("prefix=%s\n" % PH).encode()),
        ("lib/libx.so", binary, tarfile.REGTYPE, "", 0o755),
        ("lib/libx.so.1", b"", tarfile.SYMTYPE, "libx.so"),
        ("share/envpack/relocations.json", relocations),
        ("share/envpack/location", PH.encode()),
        ("share/envpack/auto-relocate", b""),
    ])


def conda_pack_env():
    script = (
        "#!/usr/bin/env python\n\n_prefix_records = [\n"
        "('etc/a.conf', '%s', 'text'),\n('lib/libx.so', '%s', 'binary')\n]\n" % (CP_PH, CP_PH)
    ).encode()
    return archive([
        ("conda-meta/x-1.0-0.json", b"{}\n"),
        ("etc/a.conf", ("prefix=%s\n" % CP_PH).encode()),
        ("lib/libx.so", b"\x7fELF\0" + CP_PH.encode() + b"/lib\0tail"),
        ("bin/conda-unpack", script, tarfile.REGTYPE, "", 0o755),
    ])


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    seeds = {
        "envpack.tar": envpack_env(),
        "envpack.tar.gz": gzip.compress(envpack_env(), mtime=0),
        "conda-pack.tar": conda_pack_env(),
        "dotdot.tar": archive([("../escaped", b"x\n")]),
        "absolute.tar": archive([("/tmp/envpack-fuzz-absolute", b"x\n")]),
        "symlink-write.tar": archive([
            ("lib", b"", tarfile.SYMTYPE, "/tmp"),
            ("lib/escaped", b"x\n"),
        ]),
        "hardlink-out.tar": archive([("h", b"", tarfile.LNKTYPE, "../outside/secret")]),
        "hardlink-in.tar": archive([("a", b"data\n"), ("b", b"", tarfile.LNKTYPE, "a")]),
        "fifo.tar": archive([("p", b"", tarfile.FIFOTYPE)]),
        "device.tar": archive([("d", b"", tarfile.CHRTYPE)]),
    }
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    if shutil.which("zstd"):
        subprocess.run(["zstd", "-q", "-19", os.path.join(OUT, "envpack.tar"),
                        "-o", os.path.join(OUT, "envpack.tar.zst")], check=True)


if __name__ == "__main__":
    main()
