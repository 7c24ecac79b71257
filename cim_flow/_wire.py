"""A minimal NATS client connection for the ingest hot path.

Why not nats-py here: measured on the 2-core machine, nats-py spends ~30-45 µs
of Python per delivered JetStream message (protocol parsing, a header dict
built character by character, a Msg object, a callback coroutine), which
capped the service near 24k events/s however fast decoding and applying were.
This connection does one job: it holds the pull consumer's inbox
subscription, parses every complete ``MSG``/``HMSG`` frame of a socket read in
one loop, and hands the whole list to the service synchronously — a few
hundred nanoseconds of Python a message.  Everything else (JetStream
management, acks, queries, dead letters, updates) stays on nats-py.

It speaks plain TCP with optional user/password or token (from the URL);
TLS and credentials files are nats-py's job: :func:`usable` says when this
connection cannot be used and the service keeps to nats-py.
"""
from __future__ import annotations

import asyncio
import json
from urllib.parse import unquote, urlsplit

from . import __version__

_CRLF = b"\r\n"


class RawMsg:
    """One delivered message: ``subject``, ``reply`` (str), ``data`` (bytes), ``headers``
    (the raw header block, or None)."""

    __slots__ = ("subject", "reply", "data", "headers")

    def __init__(self, subject, reply, data, headers=None):
        self.subject = subject
        self.reply = reply
        self.data = data
        self.headers = headers


def usable(url: str, connect_options: dict) -> bool:
    """True when this connection can reach ``url`` with these options (no TLS, no creds)."""
    if any(connect_options.get(k) for k in ("tls", "user_credentials", "nkeys_seed", "signature_cb",
                                             "tls_hostname", "servers")):
        return False
    parts = urlsplit(url if "://" in url else "nats://" + url)
    return parts.scheme in ("nats", "") and parts.hostname is not None


class _Protocol(asyncio.Protocol):
    def __init__(self, conn: RawConnection):
        self.conn = conn
        self.buf = bytearray()

    def connection_made(self, transport):
        self.conn.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        if buf:
            buf += data
            b = bytes(buf)
        else:
            b = data
        pos = self.conn._frames(b)
        if pos == len(b):
            buf.clear()
        else:
            self.buf = bytearray(b[pos:])

    def connection_lost(self, exc):
        self.conn._lost(exc)


class RawConnection:
    """One NATS connection with subscriptions delivered as lists of :class:`RawMsg`."""

    def __init__(self, on_msgs, on_lost=None, *, name="cim_flow-raw"):
        self.on_msgs = on_msgs
        self.on_lost = on_lost
        self.name = name
        self.transport = None
        self.info: dict = {}
        self.closed = False
        self._subs: dict[bytes, str] = {}
        self._waiters: list[asyncio.Future] = []
        self._info_fut: asyncio.Future | None = None
        self.error: str | None = None

    # -- connect ---------------------------------------------------------------
    async def connect(self, url: str, *, user=None, password=None, token=None, timeout=5.0):
        parts = urlsplit(url if "://" in url else "nats://" + url)
        host, port = parts.hostname, parts.port or 4222
        if parts.username and not (user or token):
            if parts.password is not None:
                user, password = unquote(parts.username), unquote(parts.password)
            else:
                token = unquote(parts.username)
        loop = asyncio.get_running_loop()
        self._info_fut = loop.create_future()
        await asyncio.wait_for(loop.create_connection(lambda: _Protocol(self), host, port), timeout)
        self.info = await asyncio.wait_for(self._info_fut, timeout)
        if self.info.get("tls_required"):
            self.close()
            raise ConnectionError("server requires TLS: use nats-py")
        opts = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
                "protocol": 1, "lang": "python-cim_flow", "version": __version__, "name": self.name}
        if user is not None:
            opts.update(user=user, pass_=password)
        if token is not None:
            opts["auth_token"] = token
        connect = json.dumps(opts).replace('"pass_"', '"pass"').encode()
        self._write(b"CONNECT " + connect + _CRLF)
        await asyncio.wait_for(self.flush(), timeout)
        if self.error:
            raise ConnectionError(self.error)
        return self

    def _write(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            raise ConnectionError("connection closed")
        self.transport.write(data)

    async def flush(self) -> None:
        """Round trip (PING/PONG): everything written before has been processed by the server."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._write(b"PING\r\n")
        await fut

    def subscribe(self, subject: str, sid: int = 1) -> None:
        self._subs[str(sid).encode()] = subject
        self._write(f"SUB {subject} {sid}\r\n".encode())

    def publish(self, subject: str, data: bytes, reply: str | None = None) -> None:
        head = f"PUB {subject} {reply} {len(data)}\r\n" if reply else f"PUB {subject} {len(data)}\r\n"
        self._write(head.encode() + data + _CRLF)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- protocol ----------------------------------------------------------------
    def _lost(self, exc) -> None:
        was_closed = self.closed
        self.closed = True
        for f in self._waiters:
            if not f.done():
                f.set_exception(ConnectionError(self.error or "connection lost"))
        self._waiters.clear()
        if self._info_fut is not None and not self._info_fut.done():
            self._info_fut.set_exception(ConnectionError("connection lost before INFO"))
        if not was_closed and self.on_lost is not None:
            self.on_lost(exc)

    def _frames(self, b: bytes) -> int:
        """Parse every complete frame in ``b``; deliver messages; return the bytes consumed."""
        pos = 0
        n = len(b)
        out = []
        find = b.find
        while pos < n:
            eol = find(_CRLF, pos)
            if eol < 0:
                break
            c = b[pos]
            if c == 77 or c == 72:  # MSG / HMSG
                parts = b[pos:eol].split(b" ")
                start = eol + 2
                if c == 77:
                    if len(parts) == 5:
                        subj, reply, size = parts[1], parts[3], int(parts[4])
                    else:
                        subj, reply, size = parts[1], b"", int(parts[3])
                    end = start + size
                    if end + 2 > n:
                        break
                    out.append(RawMsg(subj.decode(), reply.decode(), b[start:end]))
                else:
                    if len(parts) == 6:
                        subj, reply, hsize, size = parts[1], parts[3], int(parts[4]), int(parts[5])
                    else:
                        subj, reply, hsize, size = parts[1], b"", int(parts[3]), int(parts[4])
                    end = start + size
                    if end + 2 > n:
                        break
                    out.append(RawMsg(subj.decode(), reply.decode(), b[start + hsize:end],
                                      b[start:start + hsize]))
                pos = end + 2
                continue
            line = b[pos:eol]
            pos = eol + 2
            if line == b"PING":
                self._write(b"PONG\r\n")
            elif line == b"PONG":
                if self._waiters:
                    f = self._waiters.pop(0)
                    if not f.done():
                        f.set_result(True)
            elif line.startswith(b"INFO"):
                if self._info_fut is not None and not self._info_fut.done():
                    try:
                        self._info_fut.set_result(json.loads(line[5:]))
                    except ValueError as exc:
                        self._info_fut.set_exception(ConnectionError(f"bad INFO: {exc}"))
            elif line.startswith(b"-ERR"):
                self.error = line[5:].decode(errors="replace").strip().strip("'")
                for f in self._waiters:
                    if not f.done():
                        f.set_exception(ConnectionError(self.error))
                self._waiters.clear()
            # +OK and anything else: nothing to do
        if out:
            self.on_msgs(out)
        return pos
