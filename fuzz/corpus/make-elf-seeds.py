#!/usr/bin/env python3
"""Writes the seed corpus of the `elf_glibc` fuzz target into corpus/elf_glibc/.

Minimal ELF files (no code) with a `.gnu.version_r` section needing `GLIBC_2.N` versions
from `libc.so.6`, in each class and byte order the reader handles (64/32 bits, little and big
endian), and one without a version section. Run again to regenerate: the output is
deterministic.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "elf_glibc")


def elf(wide, little, versions):
    e = "<" if little else ">"
    strtab = b"\0libc.so.6\0" + b"".join(v.encode() + b"\0" for v in versions)
    names = []
    at = len(b"\0libc.so.6\0")
    for v in versions:
        names.append(at)
        at += len(v) + 1
    # One Verneed (libc.so.6) and its Vernaux chain.
    verneed = struct.pack(e + "HHIIII", 1, len(versions), 1, 16, 0, 0)[:16]
    for i, n in enumerate(names):
        nxt = 16 if i + 1 < len(names) else 0
        verneed += struct.pack(e + "IHHII", 0, 0, i + 2, n, nxt)
    ehsize = 64 if wide else 52
    shentsize = 64 if wide else 40
    data = strtab + verneed
    str_off = ehsize
    vn_off = ehsize + len(strtab)
    shoff = ehsize + len(data)
    sections = [(0, 0, 0, 0, 0), (3, str_off, len(strtab), 0, 0)]
    if versions:
        sections.append((0x6FFFFFFE, vn_off, len(verneed), 1, 1))
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1 if little else 2, 1]) + b"\0" * 9
    if wide:
        header = ident + struct.pack(e + "HHIQQQIHHHHHH", 3, 62, 1, 0, 0, shoff, 0, ehsize, 0, 0,
                                     shentsize, len(sections), 1)
    else:
        header = ident + struct.pack(e + "HHIIIIIHHHHHH", 3, 3, 1, 0, 0, shoff, 0, ehsize, 0, 0,
                                     shentsize, len(sections), 1)
    table = b""
    for kind, off, size, link, info in sections:
        if wide:
            table += struct.pack(e + "IIQQQQIIQQ", 0, kind, 0, 0, off, size, link, info, 1, 0)
        else:
            table += struct.pack(e + "IIIIIIIIII", 0, kind, 0, 0, off, size, link, info, 1, 0)
    return header + data + table


def main():
    os.makedirs(OUT, exist_ok=True)
    seeds = {
        "le64": elf(True, True, ["GLIBC_2.2.5", "GLIBC_2.34"]),
        "be64": elf(True, False, ["GLIBC_2.17"]),
        "le32": elf(False, True, ["GLIBC_2.0", "GLIBC_2.35"]),
        "be32": elf(False, False, ["GLIBC_2.28"]),
        "no-versions": elf(True, True, []),
        "not-elf": b"#!/bin/sh\necho GLIBC_2.99\n",
    }
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
