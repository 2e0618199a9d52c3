"""Staging folders beside an output: owner-stamped names, and removal of those whose owner died.

A stage writes into `.NAME.kiln-tmp-HOST-PID-TIME-RANDOM` beside its output and renames it into place at
the end. A SIGKILL cannot be caught, so the folder's name says who owns it: the next stage writing to the
same parent removes every staging folder whose owner process, on this host, is gone. The same names let a
run see that another living process is already writing its output, and stop before doing the work.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path

# the HOST part keeps a run on one machine from judging a process on another (a shared network folder)
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
KINDS = ("tmp", "old")  # staging folders, and outputs moved aside by --force before their removal
OWNED = re.compile(r"^\.(?P<name>.*)\.kiln-(?P<kind>tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<time>\d+)-[0-9a-f]+$")


def staging_name(out: Path, kind: str = "tmp") -> str:
    return f".{out.name}.kiln-{kind}-{HOST}-{os.getpid()}-{time.time_ns()}-{secrets.token_hex(4)}"


def make_staging_dir(out: Path) -> Path:
    """A fresh staging folder beside `out`, with the permissions the umask gives (mkdtemp's are 0700)."""
    for _ in range(100):
        tmp = out.parent / staging_name(out)
        try:
            os.mkdir(tmp, 0o777)  # mode & ~umask: the artifact a service user reads ends up with these bits
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"could not create a staging folder beside {out}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OverflowError:
        return False
    return True


def remove_stale(parent: Path) -> list[Path]:
    """Remove staging folders in `parent` left by processes on this host that no longer run; return them."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = OWNED.match(entry.name)
        if m is None or m["host"] != HOST or pid_alive(int(m["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def earlier_writer(out: Path, mine: Path) -> int | None:
    """The pid of another living process on this host that started staging `out` before `mine`, if any.

    Of runs that start together each sees the others' folders, and only the earliest goes on. (Threads of
    one process are not told apart here; the final rename still lets only one of them replace `out`.)
    """
    me = OWNED.match(mine.name)
    if me is None:
        return None
    for entry in out.parent.iterdir():
        m = OWNED.match(entry.name)
        if (m is None or entry == mine or m["kind"] != "tmp" or m["name"] != out.name or m["host"] != HOST
                or m["pid"] == me["pid"]):
            continue
        if (int(m["time"]), entry.name) < (int(me["time"]), mine.name) and pid_alive(int(m["pid"])):
            return int(m["pid"])
    return None
