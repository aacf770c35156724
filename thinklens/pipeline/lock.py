"""One writer per run directory: `RUN/.lock`, held with `flock` while a stage writes.

The kernel drops an `flock` when its process dies, however it dies, so a lock left by a killed run is
never stale: the file stays (emptied when released), the lock does not, and the next writer takes it. The file holds who
locked it (pid, host, command, since when) so that a second writer's error names the holder. The
lock is re-entrant within a process (`thinklens run` holds it around the stages it runs). Whoever
takes it removes the temp files a killed writer left anywhere in the run. While it is held, writes
that would leave the run through a symlink are refused (`files.confine_writes`).

Taking it is also where a run directory proves writable: a path that is a file, a read-only
directory or a missing parent fails here with one line, before any model is loaded.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from thinklens.errors import ThinklensError
from thinklens.files import confine_writes, remove_stale_temps_under

LOCK_NAME = ".lock"
LAUNCHER_HOLDS_LOCK = "THINKLENS_LAUNCHER_HOLDS_LOCK"  # set by a launcher for its ranks: the run it holds
_held: dict[Path, int] = {}  # resolved run directory → how many times this process holds it


@contextmanager
def run_lock(root: Path | str, what: str) -> Iterator[None]:
    """Hold the run directory's write lock while the block runs (`what`: the command, for the message)."""
    root = Path(root)
    key = root.resolve()
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    if held_for_this_rank(key):
        with confine_writes(root):
            yield
        return
    created = _make_directory(root)
    handle = _open_lock(root)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ThinklensError(f"{root} is being written by {_holder(root)}: wait for it to finish, or use another "
                                 "run directory") from None
        os.ftruncate(handle, 0)
        os.write(handle, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": what,
                                     "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                                     "argv": " ".join(sys.argv[1:])[:200]}).encode())
        _held[key] = 1
        remove_stale_temps_under(root)  # no other writer holds the run: every temp file is a killed one's
        try:
            with confine_writes(root):
                yield
        finally:
            del _held[key]
            os.ftruncate(handle, 0)  # the file stays (unlinking it would race a writer that opened it)
    finally:
        os.close(handle)
        if created and [p.name for p in root.iterdir()] == [LOCK_NAME]:
            (root / LOCK_NAME).unlink()  # the command wrote nothing: leave no run directory behind
            root.rmdir()


def held_for_this_rank(key: Path) -> bool:
    """Whether this process is one rank of a multi-process training whose lock another process holds:
    `thinklens train --nproc N` holds it for its ranks (and says so in LAUNCHER_HOLDS_LOCK); under a bare
    `torchrun`, rank 0 takes it and the other ranks, which write nothing, go without."""
    if os.environ.get(LAUNCHER_HOLDS_LOCK) == str(key):
        return True
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0"


def _make_directory(root: Path) -> bool:
    if root.exists() and not root.is_dir():
        raise ThinklensError(f"{root} is a file, not a run directory: pass a directory path (new or existing)")
    if root.is_dir():
        return False
    try:
        root.mkdir(parents=True)
    except OSError as exc:
        raise ThinklensError(f"cannot create the run directory {root}: {exc.strerror.lower()}; pass a path you can "
                             "write to") from None
    return True


def _open_lock(root: Path) -> int:
    try:
        return os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise ThinklensError(f"{root} is not writable ({exc.strerror.lower()}): pass a run directory you can "
                                 "write to, or fix its permissions") from None
        raise ThinklensError(f"cannot lock {root / LOCK_NAME}: {exc.strerror.lower()}") from None


def _holder(root: Path) -> str:
    try:
        holder = json.loads((root / LOCK_NAME).read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder:
        return "another thinklens process"
    return (f"`thinklens {holder.get('command', '?')}` (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('since', '?')})")
