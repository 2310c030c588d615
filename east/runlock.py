"""One writer per run directory: an OS file lock on ``<run>/.lock``.

``east train`` holds the lock exclusively from before it reads anything in the run
directory until it exits; ``east evaluate`` and ``east export`` hold it shared (readers do
not block each other; they wait, with one line on stderr, while a trainer holds it). A
second trainer either fails at once (exit 73, one line naming the holder) or, with
``--if-locked wait``, prints one line and polls until the lock is free, then proceeds
(resuming, or finding the cell done).

The primitive is a POSIX record lock over the whole file (``fcntl.lockf``, i.e.
``fcntl(F_SETLK)``), not ``flock``:
- It is the lock shared cluster filesystems implement across nodes: NFSv3 through NLM
  (lockd/statd), NFSv4 in the protocol, Lustre (mounted ``-o flock``), GPFS, GFS2, CephFS.
  ``flock`` buys nothing on NFS (the Linux client has emulated it with a whole-file POSIX
  lock since 2.6.12) and is node-local under ``local_lock=flock`` mounts.
- The kernel (or the NFS server, when the client's state goes) releases it when the holder
  dies: a SIGKILLed trainer leaves no stale lock. The file itself is never deleted
  (deleting a lock file lets two processes lock two different inodes).
- POSIX locks belong to the (process, file) pair: closing *any* descriptor of the file
  releases them all, and a process never conflicts with itself. So this module opens each
  lock file once per process and keeps a table of what the process holds; a second
  acquisition in the same process is checked against that table instead of the kernel.
  Nothing else may open ``.lock`` inside a process that holds it.

Caveats (docs/design.md, "One writer per run directory"): NFSv3 mounted ``nolock``, NFS
``local_lock=posix|all``, Lustre ``-o localflock`` and BeeGFS without
``tuneUseGlobalFileLocks`` give node-local locks (two nodes can both "hold" it); Lustre
``-o noflock`` refuses locks (east then stops with a one-line error). On NFS a dead node's
lock is released when its lease expires (NFSv4, about 90 s) or, with NFSv3, when the node
reboots; a waiting copy waits until then.

The holder writes its identity (command, host, pid, start time, SLURM job) into the file
after taking the lock and empties it on a clean release, so a cleanly finished run
directory holds an empty ``.lock``. Torch-free.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, ParamSpec, TypeVar

from east.errors import EastError
from east.rundir import LOCK_FILE

EXIT_LOCKED = 73  # sysexits EX_CANTCREAT: the output (the run directory) cannot be written now
IF_LOCKED = ("fail", "wait")
POLL_S = 1.0  # one lock RPC per second per waiting process: nothing on NFS

# errno values meaning "this filesystem does not do POSIX locks" (not "someone holds it").
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
_HELD_BY_OTHER = {errno.EACCES, errno.EAGAIN}


class RunLocked(EastError):
    """The run directory is locked by another process (exit 73)."""

    exit_code = EXIT_LOCKED


@dataclass(frozen=True)
class Holder:
    """Who holds a run directory's lock, as the holder recorded it."""

    command: str
    host: str
    pid: int
    since: str
    slurm_job: str | None = None

    @classmethod
    def me(cls, command: str) -> Holder:
        job = os.environ.get("SLURM_JOB_ID")
        if job and os.environ.get("SLURM_ARRAY_TASK_ID"):
            job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return cls(command, socket.gethostname(), os.getpid(), since, job or None)

    def to_text(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Holder | None:
        try:
            raw = json.loads(text)
            return cls(str(raw["command"]), str(raw["host"]), int(raw["pid"]),
                       str(raw["since"]), raw.get("slurm_job"))
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        job = f", SLURM job {self.slurm_job}" if self.slurm_job else ""
        return (f"east {self.command} on host {self.host} (pid {self.pid}, since "
                f"{self.since}{job})")


@dataclass
class _Entry:
    fd: int
    shared: bool
    users: int
    holder: Holder | None


# (st_dev, st_ino) of a lock file -> what this process holds on it. See the module
# docstring: one descriptor per file and process, or a close would drop the lock.
_held: dict[tuple[int, int], _Entry] = {}
_table = threading.Lock()


def _key(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


class RunLock:
    """``with RunLock(run_dir, "train"):`` holds the run directory's lock (see the module
    docstring). ``shared`` for readers. ``if_locked``: ``fail`` raises ``RunLocked`` naming
    the holder; ``wait`` writes one line to ``stream`` (stderr) and polls every ``poll_s``
    seconds until the lock is free.

    An exclusive lock creates the run directory and ``.lock`` (the one write before the
    lock is held). A shared lock never creates the directory; where ``.lock`` is missing
    and cannot be created (a read-only directory) it proceeds unlocked: no trainer can be
    running there, since one would have created the file first.
    """

    def __init__(self, run_dir: str | os.PathLike[str], command: str, *, shared: bool = False,
                 if_locked: str = "fail", poll_s: float = POLL_S,
                 stream: IO[str] | None = None) -> None:
        if if_locked not in IF_LOCKED:
            raise EastError(f"--if-locked: expected one of {', '.join(IF_LOCKED)}, "
                            f"got {if_locked!r}")
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.command = command
        self.shared = shared
        self.if_locked = if_locked
        self.poll_s = poll_s
        self.stream = stream
        self._key: tuple[int, int] | None = None

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> None:
        # The table stays locked while waiting: east takes run locks from one thread, and
        # a second thread must not slip a second descriptor of the same file in meanwhile.
        with _table:
            if self._reuse():
                return
            while True:
                fd = self._open()
                if fd is None:  # shared, no lock file and no way to create one
                    return
                try:
                    self._lock(fd)
                    key = _key(os.fstat(fd))
                    if not self._still_there(key):
                        # .lock was deleted (and maybe recreated) while we waited: a lock
                        # on the old inode excludes nobody. Start again on the new file.
                        os.close(fd)
                        continue
                    holder = self._record(fd)
                except BaseException:
                    os.close(fd)  # no other descriptor of it is held: closing loses nothing
                    raise
                self._key = key
                _held[key] = _Entry(fd, self.shared, 1, holder)
                return

    def release(self) -> None:
        if self._key is None:
            return
        with _table:
            entry = _held[self._key]
            entry.users -= 1
            if entry.users:
                self._key = None
                return
            del _held[self._key]
            self._key = None
        import fcntl

        try:
            if not entry.shared:
                os.ftruncate(entry.fd, 0)  # a cleanly finished run names no holder
            fcntl.lockf(entry.fd, fcntl.LOCK_UN)
        finally:
            os.close(entry.fd)

    # ------------------------------------------------------------------ internals
    def _still_there(self, key: tuple[int, int]) -> bool:
        try:
            return _key(os.stat(self.path)) == key
        except FileNotFoundError:
            return False

    def _record(self, fd: int) -> Holder | None:
        """Write our identity (exclusive); clear a dead trainer's (shared, when we may)."""
        try:
            if not self.shared:
                holder = Holder.me(self.command)
                _write(fd, holder.to_text())
                return holder
            if os.fstat(fd).st_size and _writable(fd):
                # No writer can hold the file while we hold it shared: what it says is a
                # killed trainer's identity. Clear it, so nobody is misnamed as the holder.
                os.ftruncate(fd, 0)
        except OSError as error:
            raise EastError(f"{self.path}: cannot write ({error.strerror})") from None
        return None

    def _reuse(self) -> bool:
        """True when this process already holds the file compatibly (one more user)."""
        try:
            key = _key(os.stat(self.path))
        except FileNotFoundError:
            return False
        entry = _held.get(key)
        if entry is None:
            return False
        if not (entry.shared and self.shared):
            self._conflict_in_process(entry)
        entry.users += 1
        self._key = key
        return True

    def _conflict_in_process(self, entry: _Entry) -> None:
        # The kernel would grant it (POSIX locks never conflict within a process) and
        # waiting would wait for ourselves: refuse in both modes.
        who = entry.holder.describe() if entry.holder else f"east (pid {os.getpid()}, reading)"
        raise RunLocked(f"{self.run_dir}: locked by {who}, this same process; not "
                        f"{'read' if self.shared else 'started'}")

    def _open(self) -> int | None:
        if not self.shared:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileExistsError:
                raise EastError(f"{self.run_dir}: not a directory") from None
            except OSError as error:
                raise EastError(f"{self.path}: cannot create the run directory's lock file "
                                f"({error.strerror})") from None
        if not self.run_dir.is_dir():
            return None  # nothing to read: the reader reports the missing files itself
        for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
            try:
                return os.open(self.path, flags, 0o666)
            except FileNotFoundError:
                return None
            except OSError as error:
                if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise EastError(f"{self.path}: cannot open ({error.strerror})") from None
        return None

    def _lock(self, fd: int) -> None:
        import fcntl

        mode = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        announced = False
        while True:
            try:
                fcntl.lockf(fd, mode)
                return
            except OSError as error:
                if error.errno in _UNSUPPORTED:
                    raise EastError(
                        f"{self.path}: this filesystem refuses POSIX file locks "
                        f"({error.strerror}); east needs them to keep one writer per run "
                        "directory (Lustre: mount with -o flock; NFSv3: without nolock)"
                    ) from None
                if error.errno not in _HELD_BY_OTHER:
                    raise EastError(f"{self.path}: cannot lock ({error.strerror})") from None
            who = self._holder_of(fd)
            if self.if_locked == "fail":
                hint = "" if self.shared else " (--if-locked wait waits for it)"
                raise RunLocked(f"{self.run_dir}: locked by {who}; not "
                                f"{'read' if self.shared else 'started'}{hint}")
            if not announced:
                print(f"east: {self.run_dir}: locked by {who}; waiting for it to finish",
                      file=self.stream or sys.stderr, flush=True)
                announced = True
            time.sleep(self.poll_s)

    @staticmethod
    def _holder_of(fd: int) -> str:
        # Read through our own descriptor: opening the file again (and closing it) would
        # be harmless here (we hold nothing yet) but is the habit that loses POSIX locks.
        holder = Holder.from_text(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        if holder is None:
            return "another process (east evaluate/export reading it, or a trainer " \
                   "that has not recorded itself yet)"
        return holder.describe()


def read_holder(run_dir: str | os.PathLike[str]) -> Holder | None:
    """Who ``run_dir/.lock`` says holds it (None: nobody recorded). Safe inside a process
    that holds the lock: it then reads through the held descriptor, since opening and
    closing the file again would drop the lock."""
    path = Path(run_dir) / LOCK_FILE
    with _table:
        try:
            entry = _held.get(_key(os.stat(path)))
        except FileNotFoundError:
            return None
        if entry is not None:
            return Holder.from_text(os.pread(entry.fd, 4096, 0).decode("utf-8", "replace"))
    return Holder.from_text(path.read_text(encoding="utf-8", errors="replace"))


def _write(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode("utf-8"), 0)
    os.fsync(fd)  # NFS: a refused process on another node must see who holds it


def _writable(fd: int) -> bool:
    import fcntl

    return (fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)


P = ParamSpec("P")
R = TypeVar("R")


def reads_run(command: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a reader of a run directory (first argument: the directory) so that it
    runs under the shared lock, waiting while a trainer holds it."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            run_dir: Any = args[0] if args else kwargs["run_dir"]
            with RunLock(run_dir, command, shared=True, if_locked="wait"):
                return function(*args, **kwargs)

        return wrapper

    return decorate
