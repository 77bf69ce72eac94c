"""``fs_op``: one file operation through a mount, in a child process with a deadline, so that a
hung FUSE call cannot hang the test run (the security and reliability suites)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

_OP = r"""
import errno, json, os, sys, time
kind, path = sys.argv[1], sys.argv[2]
t = time.monotonic()
out = {}
try:
    if kind == "stat":
        out["size"] = os.stat(path).st_size
    elif kind == "listdir":
        out["names"] = sorted(os.listdir(path))
    elif kind == "read":
        with open(path, "rb") as f:
            data = f.read()
        out["size"] = len(data)
        out["head"] = data[:64].decode("latin-1")
    elif kind == "unlink":
        os.unlink(path)
    elif kind == "mkdir":
        os.mkdir(path)
    elif kind == "rmdir":
        os.rmdir(path)
    elif kind == "rename":
        os.rename(path, sys.argv[3])
    out["errno"] = 0
except OSError as e:
    out["errno"] = e.errno
out["seconds"] = time.monotonic() - t
print(json.dumps(out))
"""


def fs_op(
    kind: str,
    path: "os.PathLike[str] | str",
    timeout: float = 120,
    to: "os.PathLike[str] | str | None" = None,
) -> dict:
    """One file operation (``stat``, ``listdir``, ``read``, ``unlink``, ``mkdir``, ``rmdir``,
    ``rename`` to ``to``) in a child process (a
    hung FUSE call cannot hang the test run): ``{"errno", "seconds", ...}``, the time measured
    around the call itself.  A child still blocked at ``timeout`` is sent SIGKILL and reported
    as errno None, ``hung``."""
    t = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-c", _OP, kind, str(path), *([str(to)] if to is not None else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # blocked in a FUSE request: SIGKILL stays pending until the daemon answers (the very
        # defect of issue 17 §1), so do not wait for the child; it ends with the mount
        child.kill()
        return {"errno": None, "seconds": time.monotonic() - t, "hung": True}
    assert child.returncode == 0, stderr
    return json.loads(stdout)
