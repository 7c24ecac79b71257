"""A minimal NATS client connection for the ingest hot path.

Why not nats-py here: measured on the 2-core machine, nats-py spends ~30-45 µs
of Python per delivered JetStream message (protocol parsing, a header dict
built character by character, a Msg object, a callback coroutine), which
capped the service near 24k events/s however fast decoding and applying were.
This connection does one job: it holds the pull consumer's inbox
subscription, frames every socket read in one compiled call
(:mod:`kernels.natsframes`) and hands the service a :class:`Block` — spans of
subject, reply and payload in the received bytes, the stream sequences, no
per-message Python object.  The decoder then reads the payloads in place.  The service's
query endpoints are read on a second one of these (requests answered as they are framed,
replies written once per loop turn: :meth:`RawConnection.publish_soon`).  Everything else
(JetStream management, acks, dead letters, updates, the micro service's $SRV verbs)
stays on nats-py.

It speaks plain TCP with optional user/password or token (from the URL);
TLS and credentials files are nats-py's job: :func:`usable` says when this
connection cannot be used and the service keeps to nats-py.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time
from urllib.parse import unquote, urlsplit

import numpy as np

from kernels import natsframes

from . import __version__

_CRLF = b"\r\n"


class Block:
    """Messages in arrival order as spans of one buffer (no per-message objects).

    ``sp``: one ``(7, m)`` int64 array, rows subject start/end, reply start/end,
    data start/end and JetStream stream sequence (0 when not from JetStream);
    ``kind``: 0 an event message, 1 an Arrow batch message, 2 a pull status;
    ``t``: receive time (seconds since the epoch) per message.  One array for the
    spans keeps joining the many small blocks of a micro-batch to a few numpy calls.
    """

    __slots__ = ("buf", "sp", "kind", "t")

    def __init__(self, buf, sp, kind, t):
        self.buf, self.sp, self.kind, self.t = buf, sp, kind, t

    ss = property(lambda self: self.sp[0])
    se = property(lambda self: self.sp[1])
    rs = property(lambda self: self.sp[2])
    re = property(lambda self: self.sp[3])
    ds = property(lambda self: self.sp[4])
    de = property(lambda self: self.sp[5])
    seq = property(lambda self: self.sp[6])

    def __len__(self) -> int:
        return self.kind.shape[0]

    def data(self, i: int) -> bytes:
        return self.buf[self.sp[4, i]:self.sp[5, i]]

    def subject(self, i: int) -> str:
        return self.buf[self.sp[0, i]:self.sp[1, i]].decode()

    def reply(self, i: int) -> str:
        return self.buf[self.sp[2, i]:self.sp[3, i]].decode()

    def select(self, mask) -> Block:
        return Block(self.buf, self.sp[:, mask], self.kind[mask], self.t[mask])

    @staticmethod
    def concat(blocks: list) -> Block:
        if len(blocks) == 1:
            return blocks[0]
        sizes = np.fromiter((len(b.buf) for b in blocks), np.int64, len(blocks))
        shift = np.zeros(len(blocks), np.int64)
        np.cumsum(sizes[:-1], out=shift[1:])
        sp = np.concatenate([b.sp for b in blocks], axis=1)
        sp[:6] += np.repeat(shift, [len(b) for b in blocks])
        return Block(b"".join(b.buf for b in blocks), sp,
                     np.concatenate([b.kind for b in blocks]), np.concatenate([b.t for b in blocks]))

    @staticmethod
    def from_msgs(msgs, times, batch_subject: str, seq_of=None) -> Block:
        """A block of nats-py messages (the path for TLS, credentials and core NATS)."""
        parts, spans, o = [], [], 0
        for m in msgs:
            sb, rb = m.subject.encode(), (m.reply or "").encode()
            parts += (sb, rb, m.data)
            spans.append((o, o + len(sb), o + len(sb), o + len(sb) + len(rb),
                          o + len(sb) + len(rb), o + len(sb) + len(rb) + len(m.data),
                          seq_of(m.reply) if seq_of and m.reply else 0))
            o += len(sb) + len(rb) + len(m.data)
        sp = np.ascontiguousarray(np.array(spans, np.int64).reshape(-1, 7).T)
        kind = np.array([1 if m.subject == batch_subject else 0 for m in msgs], np.int8)
        return Block(b"".join(parts), sp, kind, np.asarray(times, np.float64))


def _pub_frame(subject: str, data: bytes, reply: str | None, headers: dict | None) -> bytes:
    r = f" {reply}" if reply else ""
    if not headers:
        return f"PUB {subject}{r} {len(data)}\r\n".encode() + data + _CRLF
    hdr = ("NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
    return f"HPUB {subject}{r} {len(hdr)} {len(hdr) + len(data)}\r\n".encode() + hdr + data + _CRLF


def headers_of(block: Block, i: int) -> dict | None:
    """The headers of message ``i`` (an HMSG), or None.  They lie between its subject and
    its payload, after the frame line; a plain MSG has only the sid and sizes there."""
    gap = block.buf[block.sp[1, i]:block.sp[4, i]]
    k = gap.find(b"NATS/1.0")
    if k < 0:
        return None
    out = {}
    for line in gap[k:].split(_CRLF)[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out[name.strip().decode(errors="replace")] = value.strip().decode(errors="replace")
    return out


def usable(url: str, connect_options: dict) -> bool:
    """True when this connection can reach ``url`` with these options (no TLS, no creds)."""
    if any(connect_options.get(k) for k in ("tls", "user_credentials", "nkeys_seed", "signature_cb",
                                             "tls_hostname", "servers")):
        return False
    parts = urlsplit(url if "://" in url else "nats://" + url)
    return parts.scheme in ("nats", "") and parts.hostname is not None


def _url_auth(parts, user=None, password=None, token=None) -> tuple:
    """``(user, password, token)`` from a split URL's ``user:password@`` or ``token@``."""
    if parts.username:
        if parts.password is not None:
            return unquote(parts.username), unquote(parts.password), None
        return None, None, unquote(parts.username)
    return user, password, token


def _connect_frame(name: str, user=None, password=None, token=None) -> bytes:
    """The CONNECT line both kinds of connection send (no echo of verbose +OKs; headers on)."""
    opts = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
            "protocol": 1, "lang": "python-cim_flow", "version": __version__, "name": name}
    if user is not None:
        opts.update(user=user, pass_=password)
    if token is not None:
        opts["auth_token"] = token
    return b"CONNECT " + json.dumps(opts).replace('"pass_"', '"pass"').encode() + _CRLF


def connect_blocking(url: str, name: str, timeout: float = 5.0) -> socket.socket:
    """A plain blocking socket to ``url``'s server, past INFO and CONNECT (user/password
    or token from the URL), for a thread that only publishes (see the load generator's
    paced query sender).  The server's PINGs are the caller's to answer (:func:`pong`)."""
    parts = urlsplit(url if "://" in url else "nats://" + url)
    sock = socket.create_connection((parts.hostname, parts.port or 4222), timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = sock.makefile("rb")
    line = f.readline()
    if not line.startswith(b"INFO"):
        sock.close()
        raise ConnectionError(f"expected INFO from the server, got {line[:80]!r}")
    if json.loads(line[5:]).get("tls_required"):
        sock.close()
        raise ConnectionError("server requires TLS: use nats-py")
    sock.sendall(_connect_frame(name, *_url_auth(parts)) + b"PING\r\n")
    while True:  # the PONG says CONNECT was taken; an -ERR says why not
        line = f.readline()
        if not line or line.startswith(b"-ERR"):
            sock.close()
            raise ConnectionError(f"server refused the connection: {line.strip().decode(errors='replace')}")
        if line.startswith(b"PONG"):
            break
    f.close()  # the socket stays open (makefile holds its own reference)
    sock.settimeout(None)
    return sock


def pong(sock: socket.socket) -> None:
    """Answer what the server sent a publish-only blocking socket, without waiting: a
    PONG for each PING (an unanswered one gets the connection closed), the rest dropped."""
    try:
        got = sock.recv(65536, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return
    if not got:
        raise ConnectionError("connection closed by the server")
    for _ in range(got.count(b"PING\r\n")):
        sock.sendall(b"PONG\r\n")


def _needed(rest: bytes) -> int:
    """Bytes needed before the partial frame at the start of ``rest`` is complete."""
    eol = rest.find(_CRLF)
    if eol < 0 or not rest.startswith((b"MSG ", b"HMSG ")):
        return 0
    try:
        return eol + 2 + int(rest[:eol].rsplit(b" ", 1)[1]) + 2
    except (ValueError, IndexError):
        return 0


class _Protocol(asyncio.Protocol):
    def __init__(self, conn: RawConnection):
        self.conn = conn
        self.rest = bytearray()
        self.need = 0  # a large message arrives over many reads: parse once it is whole

    def connection_made(self, transport):
        self.conn.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.rest:
            self.rest += data
            if len(self.rest) < self.need:
                return
            b = bytes(self.rest)
        else:
            b = data
        pos = self.conn._frames(b)
        if pos < len(b):
            self.rest = bytearray(b[pos:])
            self.need = _needed(self.rest)
        else:
            self.rest = bytearray()
            self.need = 0

    def connection_lost(self, exc):
        self.conn._lost(exc)


class RawConnection:
    """One NATS connection; its subscriptions' messages are delivered as :class:`Block`\\ s."""

    def __init__(self, on_block, on_lost=None, *, inbox: str = "", batch_subject: str = "",
                 name="cim_flow-raw", capacity: int = 8192):
        self.on_block = on_block
        self._inbox_b = np.frombuffer(inbox.encode(), np.uint8)
        self._batch_b = np.frombuffer(batch_subject.encode(), np.uint8)
        i64 = np.int64
        self._spans = np.empty((7, capacity), i64)  # a Block's sp rows, filled by the kernel
        self._out = ([*self._spans] + [np.empty(capacity, np.int8)]
                     + [np.empty(256, i64), np.empty(256, i64)])
        self._counts = np.zeros(2, i64)
        self.on_lost = on_lost
        self.name = name
        self.transport = None
        self.info: dict = {}
        self.closed = False
        self._subs: dict[bytes, str] = {}
        self._waiters: list[asyncio.Future] = []
        self._info_fut: asyncio.Future | None = None
        self._queued: list[bytes] = []  # frames for publish_soon's next write
        self.error: str | None = None

    # -- connect ---------------------------------------------------------------
    async def connect(self, url: str, *, user=None, password=None, token=None, timeout=5.0):
        parts = urlsplit(url if "://" in url else "nats://" + url)
        host, port = parts.hostname, parts.port or 4222
        if not (user or token):
            user, password, token = _url_auth(parts, user, password, token)
        loop = asyncio.get_running_loop()
        self._info_fut = loop.create_future()
        await asyncio.wait_for(loop.create_connection(lambda: _Protocol(self), host, port), timeout)
        self.info = await asyncio.wait_for(self._info_fut, timeout)
        if self.info.get("tls_required"):
            self.close()
            raise ConnectionError("server requires TLS: use nats-py")
        self._write(_connect_frame(self.name, user, password, token))
        await asyncio.wait_for(self.flush(), timeout)
        if self.error:
            raise ConnectionError(self.error)
        return self

    def _write(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            raise ConnectionError("connection closed")
        self.transport.write(data)

    def write(self, frames) -> None:
        """Send protocol frames encoded beforehand (e.g. many PUB/HPUB at once)."""
        self._write(frames)

    async def flush(self) -> None:
        """Round trip (PING/PONG): everything written or queued before has been processed
        by the server."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._send_queued()
        self._write(b"PING\r\n")
        await fut

    def set_inbox(self, inbox: str) -> None:
        """The subject whose messages are pull statuses (kind 2) from now on."""
        self._inbox_b = np.frombuffer(inbox.encode(), np.uint8)

    def unsubscribe(self, sid: int) -> None:
        self._subs.pop(str(sid).encode(), None)
        self._write(f"UNSUB {sid}\r\n".encode())

    def subscribe(self, subject: str, sid: int = 1, queue: str | None = None) -> None:
        self._subs[str(sid).encode()] = subject
        self._write(f"SUB {subject} {queue} {sid}\r\n".encode() if queue else f"SUB {subject} {sid}\r\n".encode())

    def publish(self, subject: str, data: bytes, reply: str | None = None, headers: dict | None = None) -> None:
        self._write(_pub_frame(subject, data, reply, headers))

    def publish_soon(self, subject: str, data: bytes, reply: str | None = None, headers: dict | None = None) -> None:
        """Publish with the other frames queued in this turn of the event loop: one socket
        write for all of them (a reply each to a burst of requests would otherwise cost a
        system call each)."""
        if self.closed:
            raise ConnectionError("connection closed")
        self._queued.append(_pub_frame(subject, data, reply, headers))
        if len(self._queued) == 1:
            asyncio.get_running_loop().call_soon(self._send_queued)

    def _send_queued(self) -> None:
        frames, self._queued = self._queued, []
        if frames and not self.closed and self.transport is not None:
            self.transport.write(b"".join(frames))

    def close(self) -> None:
        self._send_queued()  # written before the transport closes (it sends what it holds)
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
        arr = np.frombuffer(b, np.uint8)
        pos = 0
        now = time.time()
        while True:
            o = self._out
            end = natsframes.frames(arr, pos, self._inbox_b, self._batch_b, *o, self._counts)
            if end < 0:
                self.error = "malformed frame from server"
                self.transport.close()
                return len(b)
            m, c = int(self._counts[0]), int(self._counts[1])
            if m:
                self.on_block(Block(b, self._spans[:, :m].copy(), o[7][:m].copy(), np.full(m, now)))
            for k in range(c):
                self._control(b[o[8][k]:o[9][k]])
            full = m == o[0].shape[0] or c == o[8].shape[0]
            if not full or end == pos:
                return end
            pos = end

    def _control(self, line: bytes) -> None:
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
