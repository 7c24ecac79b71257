"""The service's snapshots: loaded at start, taken every N events or T seconds, on request
and at shutdown, written by a forked child from the copy-on-write image of the state (part
of :class:`cim_flow.service.Service`).
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import time


from ._queries import QueryError, error_reply
from ._service_common import _SNAPSHOT_CHILD_LIMIT, _SNAPSHOT_WAIT_AT_STOP, _json


class SnapshotMixin:
    """Snapshot loading, scheduling and writing; see the module docstring."""

    def _load_snapshot(self):
        if self.snapshots and self._own_engine:
            from ._snapshot import load_latest

            eng, path = load_latest(self.snapshot_dir, log=self._log)
            if eng is not None:
                eng.compact_min = self.config.projection.compact_min  # (capacities: the snapshot's)
                self.engine = eng
                self.engine._on_apply(self._note_touched)
                self._log(f"cim_flow: loaded snapshot {path} (version {eng.version})")
                self._snap_good = eng.version  # on disk already: no need to write it again at stop
            self._snap_version = self.engine.version

    def _maybe_snapshot(self, force: bool = False):
        """Take a snapshot when one is due (every N events or T seconds): in a forked
        child when ``[snapshots] background`` (the default), else here and now.
        ``force`` (shutdown) writes here, after any background one has finished."""
        if not self.snapshots:
            return None
        self._reap_snapshot(block=force)
        sc = self.config.snapshots
        v = self.engine.version
        if v <= self._snap_version and not force:
            return None
        due = force or v - self._snap_version >= sc.every_events or time.time() - self._snap_time >= sc.every_seconds
        if not due or (force and v == self._snap_good):  # shutdown right after one was written
            return None
        if not force and sc.background and self._snap_child is None and hasattr(os, "fork"):
            path = self._fork_snapshot()
            if path is not None:
                return path
        if self._snap_child is not None:
            return None  # one is being written; the next batch looks again
        return self.write_snapshot()

    def write_snapshot(self) -> str:
        from ._snapshot import prune, snapshot_path, write_snapshot

        path = write_snapshot(self.engine, snapshot_path(self.snapshot_dir, self.engine.version))
        prune(self.snapshot_dir, self.config.snapshots.keep)
        self._snap_version = self._snap_good = self.engine.version
        self._snap_time = time.time()
        self.counters["snapshots"] += 1
        return path

    def _fork_snapshot(self) -> str | None:
        """Write the current state from a forked child (copy-on-write pages: the parent
        goes on applying while the child writes; a 10M-node snapshot takes seconds of
        disk time here, all of which blocked ingest and queries before).  Returns the
        path the child writes; :meth:`_reap_snapshot` collects it.  None when no child
        can be forked (no memory or process slot): the caller writes in-line."""
        from ._snapshot import snapshot_path, write_state

        path = snapshot_path(self.snapshot_dir, self.engine.version)
        st = self.engine._snapshot_state()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            self._log(f"cim_flow: cannot fork a snapshot writer ({exc}); writing in-line")
            return None
        if pid == 0:  # the child: write and leave, touching nothing of the parent's
            code = 1
            try:
                os.closerange(3, max(65536, os.sysconf("SC_OPEN_MAX")))  # sockets, the loop: the parent's
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
                    signal.signal(sig, signal.SIG_DFL)
                # a child that cannot finish (a lock some parent thread held at the fork,
                # a hung disk) dies on its own: the parent then logs it and goes on
                signal.alarm(_SNAPSHOT_CHILD_LIMIT)
                write_state(st, path)
                code = 0
            except BaseException as exc:  # noqa: BLE001 - reported, then exit
                try:
                    os.write(2, f"cim_flow: background snapshot failed: {exc}\n".encode())
                except OSError:
                    pass
            finally:
                os._exit(code)
        self._snap_child = (pid, self.engine.version, path, time.perf_counter())
        self._snap_version = self.engine.version  # not due again while it is written
        self._snap_time = time.time()
        return path

    def _reap_snapshot(self, block: bool = False) -> str | None:
        """Collect a finished background snapshot (prune old ones); its path, or None
        while it is still being written (``block``: wait for it)."""
        if self._snap_child is None:
            return None
        pid, version, path, t0 = self._snap_child
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == 0 and block:  # shutdown: wait, but not forever
                deadline = time.monotonic() + _SNAPSHOT_WAIT_AT_STOP
                while done == 0 and time.monotonic() < deadline:
                    time.sleep(0.02)
                    done, status = os.waitpid(pid, os.WNOHANG)
                if done == 0:
                    self._log(f"cim_flow: background snapshot at version {version} still running after "
                              f"{_SNAPSHOT_WAIT_AT_STOP:.0f} s: stopped")
                    os.kill(pid, signal.SIGKILL)
                    done, status = os.waitpid(pid, 0)
        except ChildProcessError:
            done, status = pid, 1 << 8
        if done == 0:
            return None
        self._snap_child = None
        if os.waitstatus_to_exitcode(status) == 0:
            from ._snapshot import prune

            prune(self.snapshot_dir, self.config.snapshots.keep)
            self.counters["snapshots"] += 1
            self.snapshot_seconds = time.perf_counter() - t0
            self._snap_good = version
            return path
        # not retried at once (a full disk would fork a writer every batch): the next
        # one is due N events or T seconds after this attempt
        self._log(f"cim_flow: background snapshot at version {version} failed "
                  f"(exit {os.waitstatus_to_exitcode(status)})")
        return None

    async def _snapshot_done(self) -> str | None:
        """Wait (without blocking the loop) for the background snapshot in flight."""
        while self._snap_child is not None:
            path = self._reap_snapshot()
            if path is not None:
                return path
            if self._snap_child is not None:
                await asyncio.sleep(0.02)
        return None

    async def _snapshot_handler(self, req):
        try:
            if not self.snapshots:
                raise QueryError("disabled", "snapshots are disabled ([snapshots] enabled = false)")
            await self._snapshot_done()  # one in flight may predate what was asked for
            if self.config.snapshots.background and hasattr(os, "fork") and self._fork_snapshot() is not None:
                path = await self._snapshot_done()
                if path is None:
                    raise QueryError("internal", "the background snapshot failed (see the service log)")
            else:  # in-line: configured so, or no child could be forked
                path = self.write_snapshot()
            await req.respond(_json.encode({"version": self.engine.version, "path": path}))
        except QueryError as exc:
            await req.respond(error_reply(exc.code, exc.message, self.engine.version))
        except Exception as exc:
            await req.respond(error_reply("internal", f"{type(exc).__name__}: {exc}", self.engine.version))
