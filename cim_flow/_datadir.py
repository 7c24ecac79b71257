"""One owner per data directory: an exclusive lock on ``DATA_DIR/cim_flow.lock``.

Two services on one data directory would both write its JetStream store (nats-server
does not lock its ``store_dir``) and its snapshots, and share one durable consumer: a
second ``make serve`` in another terminal, or an offline ``replay`` while the service
runs.  The service holds the lock for its whole run; its embedded nats-server inherits
the locked file, so the lock lasts until *both* are gone: after a ``kill -9`` of the
service the server (sent SIGTERM by the kernel) may still be writing the store for a
moment, and a service started again meanwhile waits for it instead of opening the store
beside it.  The file says who holds it (pid, command, NATS URL) for the error message,
and lets ``replay`` find a running service's server.
"""
from __future__ import annotations

import errno
import fcntl
import os
import time
from urllib.parse import urlsplit, urlunsplit

LOCK_NAME = "cim_flow.lock"


class DataDirError(RuntimeError):
    """The data directory cannot be used (not creatable, not writable, or busy)."""


class DataDirBusy(DataDirError):
    """Another process holds the data directory."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def read_holder(data_dir: str) -> dict:
    """What the lock file says (``pid``, ``what``, ``url``), ``{}`` when nothing is readable."""
    try:
        with open(os.path.join(data_dir, LOCK_NAME)) as f:
            text = f.read()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key in ("pid", "what", "url"):
            out[key] = value.strip()
    return out


def running_url(data_dir: str) -> str | None:
    """The NATS URL of the service holding ``data_dir``, None when none holds it."""
    try:
        fd = os.open(os.path.join(data_dir, LOCK_NAME), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # free: nobody runs there
    except BlockingIOError:
        return read_holder(data_dir).get("url") or None
    finally:
        os.close(fd)


class DataDirLock:
    """``DataDirLock(data_dir).acquire()``; :attr:`fd` is the locked file (pass it to a
    child that must hold the lock too); :meth:`release` at the end."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, LOCK_NAME)
        self.fd: int | None = None

    def acquire(self, what: str, *, wait_live: float = 2.0, wait_gone: float = 30.0, log=None) -> "DataDirLock":
        """Take the lock, waiting up to ``wait_live`` seconds while the process named in
        the file is alive (another service: then :class:`DataDirBusy`), up to ``wait_gone``
        when it is not (its embedded server or snapshot writer finishing after it died)."""
        try:
            os.makedirs(self.data_dir, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise DataDirError(f"cannot use {self.data_dir} as the data directory: {exc.strerror or exc}") from None
        start = time.monotonic()
        said = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = read_holder(self.data_dir)
                    pid = int(holder["pid"]) if holder.get("pid", "").isdigit() else 0
                    alive = pid > 0 and (pid == os.getpid() or _pid_alive(pid))
                    waited = time.monotonic() - start
                    if waited >= (wait_live if alive else wait_gone):
                        raise DataDirBusy(self._busy_message(holder, alive), holder) from None
                    if not said and waited >= 0.5 and log is not None:
                        log(f"cim_flow: waiting for {self.data_dir} to be free (held by "
                            f"{_describe(holder, alive)})")
                        said = True
                    time.sleep(0.05)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.note(what=what, url="")
        return self

    def note(self, *, what: str | None = None, url: str | None = None) -> None:
        """Rewrite the file's description of the holder (this process); a URL's user and
        password or token are left out (the file is readable by all)."""
        if self.fd is None:
            return
        if url:
            parts = urlsplit(url if "://" in url else "nats://" + url)
            if parts.username or parts.password:
                url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        cur = read_holder(self.data_dir)
        text = (f"pid={os.getpid()}\nwhat={what if what is not None else cur.get('what', '')}\n"
                f"url={url if url is not None else cur.get('url', '')}\n")
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                os.ftruncate(fd, 0)  # nobody named while nobody holds it
            except OSError:
                pass
            os.close(fd)  # (the lock goes once every inheritor has closed it too)

    def _busy_message(self, holder: dict, alive: bool) -> str:
        url = holder.get("url")
        hint = ("stop it, or use another --data-dir" if alive else
                "a process it started (its nats-server or a snapshot writer) still runs: wait, or end it")
        return (f"{self.data_dir} is in use by {_describe(holder, alive)}"
                + (f", its NATS server at {url}" if url else "") + f": {hint}")


def _describe(holder: dict, alive: bool) -> str:
    what = holder.get("what") or "another process"
    pid = holder.get("pid")
    if not pid:
        return what
    return f"{what} (pid {pid}{'' if alive else ', exited'})"
