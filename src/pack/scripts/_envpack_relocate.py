"""envpack self-relocation hook, imported by envpack-relocate.pth at startup.

Fast path (nothing to do): one small file read. When the environment that
holds this file has been moved (share/envpack/location differs from its real
path) and share/envpack/auto-relocate exists, load <env>/bin/conda-unpack by
path and run its relocate() in auto mode. Never raises; prints one line to
stderr only when the relocation failed, or for each file it had to leave as
it was (a file holding its own prefix, whose room the new one exceeds). Set
ENVPACK_NO_AUTO_RELOCATE=1 to disable it.

The environment is located from this file (<env>/lib/pythonX.Y/site-packages),
not from sys.prefix: for the environment's own interpreter they are the same,
but a venv created on top of the environment (sys.prefix = the venv) must not
relocate the environment into the venv's path.
"""


def _envpack_check():
    import os  # already imported by site

    root = None
    try:
        root = os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.dirname(os.path.abspath(__file__)))))
        ddir = os.path.join(root, "share", "envpack")
        try:
            with open(os.path.join(ddir, "location"), "rb") as f:
                marker = f.read()
        except OSError:
            return  # not an envpack environment (or unreadable): ignore
        here = os.fsencode(root)
        if marker == here:
            return
        if not os.path.exists(os.path.join(ddir, "auto-relocate")):
            return
        if os.environ.get("ENVPACK_NO_AUTO_RELOCATE"):
            return
        root = os.path.realpath(root)
        if marker.rstrip(b"\r\n") == os.fsencode(root):
            return
        if not os.access(ddir, os.W_OK):
            return  # read-only tree: nothing can be done, stay silent
        script = os.path.join(root, "bin", "conda-unpack")
        with open(script, "rb") as f:
            code = compile(f.read(), script, "exec")
        ns = {"__name__": "_envpack_conda_unpack", "__file__": script}
        exec(code, ns)
        ns["relocate"](root, auto=True)
    except Exception as exc:
        try:
            import sys
            sys.stderr.write("envpack: could not relocate %s: %s: %s\n"
                             % (root, type(exc).__name__, exc))
        except Exception:
            pass


_envpack_check()
del _envpack_check
