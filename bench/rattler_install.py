"""The anchor of bench/compare's first row: solve and install an environment with py-rattler.

    python rattler_install.py --channel DIR --cache DIR --prefix DIR [--timings FILE] SPEC...

Solves SPEC... for linux-64 against the conda channel in DIR (a `file://` channel), with the
virtual packages envpack assumes by default (`__unix`, `__linux`, `__glibc=2.28`,
`__archspec=1=x86_64`), then installs the records into a new prefix DIR with rattler's installer
(hard links from the package cache where it can, as pixi does). Repodata and packages are cached
below the cache folder in the layout envpack uses (`repodata/`, `pkgs/`), so both tools share one
warm cache. `--timings FILE` writes `solve SECONDS` and `install SECONDS` lines.

Runs in the py-rattler venv that .ci/install-servers makes (DIR/pyrattler); bench/compare then
packs the prefix with conda-pack, the pipeline a user would otherwise script.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import rattler
from rattler import BuildString, GenericVirtualPackage, PackageName, Version

# The virtual packages envpack solves with when no --glibc/--cuda is given.
VIRTUAL_PACKAGES = [
    ("__unix", "0", "0"),
    ("__linux", "0", "0"),
    ("__glibc", "2.28", "0"),
    ("__archspec", "1", "x86_64"),
]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channel", required=True, type=Path, help="a local conda channel folder")
    parser.add_argument("--cache", required=True, type=Path, help="cache folder (repodata/, pkgs/)")
    parser.add_argument("--prefix", required=True, type=Path, help="the prefix to create")
    parser.add_argument("--timings", type=Path, help="write solve/install seconds here")
    parser.add_argument("specs", nargs="+", help="match specs")
    args = parser.parse_args()

    if args.prefix.exists():
        print(f"rattler_install: {args.prefix} exists; give a new path", file=sys.stderr)
        return 2
    channel = rattler.Channel(args.channel.resolve().as_uri())
    virtual = [
        GenericVirtualPackage(PackageName(n), Version(v), BuildString(b)) for n, v, b in VIRTUAL_PACKAGES
    ]

    t0 = time.perf_counter()
    gateway = rattler.Gateway(cache_dir=args.cache / "repodata")
    records = await rattler.solve(
        sources=[channel],
        specs=args.specs,
        gateway=gateway,
        platforms=["linux-64", "noarch"],
        virtual_packages=virtual,
    )
    t1 = time.perf_counter()
    await rattler.install(
        records,
        target_prefix=args.prefix,
        cache_dir=args.cache / "pkgs",
        platform=rattler.Platform("linux-64"),
        show_progress=False,
    )
    t2 = time.perf_counter()

    if args.timings:
        args.timings.write_text(f"solve {t1 - t0:.4f}\ninstall {t2 - t1:.4f}\n")
    return 0


if __name__ == "__main__":
    code = asyncio.run(main())
    # py-rattler 0.28.0's background threads may still hold Python thread states when the
    # interpreter finalizes, which aborts at random ("PyGILState_Release: thread state ... must be
    # current", or a segfault) after the work is done. Everything is written and closed by now:
    # leave without finalizing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
