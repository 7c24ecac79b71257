"""The lean consumer connection: protocol framing (pure) and a real nats-server."""
import asyncio
import random

import numpy as np

import nats
from cim_flow._wire import RawConnection
from kernels import natsframes

INBOX = b"_INBOX.abc"
BATCH = b"event.graph.batch"


def _frame(subject, payload, reply=b"", headers=b""):
    r = b" " + reply if reply else b""
    if headers:
        return b"HMSG %s 1%s %d %d\r\n%s%s\r\n" % (subject, r, len(headers), len(headers) + len(payload),
                                                  headers, payload)
    return b"MSG %s 1%s %d\r\n%s\r\n" % (subject, r, len(payload), payload)


def _parse_all(stream: bytes, cap=4):
    """Feed ``stream`` in random pieces, as socket reads would arrive; collect messages and lines."""
    rng = random.Random(len(stream))
    out = [np.empty(cap, np.int64) for _ in range(7)] + [np.empty(cap, np.int8)] + \
          [np.empty(2, np.int64), np.empty(2, np.int64)]
    counts = np.zeros(2, np.int64)
    rest, msgs, lines = b"", [], []
    pieces, i = [], 0
    while i < len(stream):
        k = rng.randrange(1, 40)
        pieces.append(stream[i:i + k])
        i += k
    for piece in pieces:
        b = rest + piece
        arr = np.frombuffer(b, np.uint8)
        pos = 0
        while True:
            end = natsframes.frames(arr, pos, np.frombuffer(INBOX, np.uint8), np.frombuffer(BATCH, np.uint8),
                                    *out, counts)
            assert end >= 0
            m, c = counts
            for j in range(m):
                msgs.append((b[out[0][j]:out[1][j]], b[out[2][j]:out[3][j]], b[out[4][j]:out[5][j]],
                             int(out[6][j]), int(out[7][j])))
            lines += [b[out[8][j]:out[9][j]] for j in range(c)]
            if end == pos:
                break
            pos = end
        rest = b[pos:]
    assert rest == b""
    return msgs, lines


def test_frames_in_any_split():
    ack = b"$JS.ACK.CIM_GRAPH_EVENTS.cim_flow.1.4711.9.1714564800000000000.3"
    ack2 = b"$JS.ACK.dom.acchash.CIM_GRAPH_EVENTS.cim_flow.1.815.9.1714564800000000000.3.tok"
    stream = (b"INFO {\"x\":1}\r\n" + _frame(b"event.graph.node.created", b'{"a":1}', ack, b"NATS/1.0\r\nNats-Msg-Id: 7\r\n\r\n")
              + b"PING\r\n" + _frame(BATCH, b"\x00\r\n\x01" * 5, ack2) + _frame(INBOX, b"", b"",
                                                                              b"NATS/1.0 408 Request Timeout\r\n\r\n")
              + _frame(b"x", b"") + b"+OK\r\n" + _frame(b"y.z", b"plain", b"_INBOX.reply"))
    msgs, lines = _parse_all(stream)
    assert msgs == [
        (b"event.graph.node.created", ack, b'{"a":1}', 4711, 0),
        (BATCH, ack2, b"\x00\r\n\x01" * 5, 815, 1),
        (INBOX, b"", b"", 0, 2),
        (b"x", b"", b"", 0, 0),
        (b"y.z", b"_INBOX.reply", b"plain", 0, 0),
    ]
    assert lines == [b'INFO {"x":1}', b"PING", b"+OK"]


def test_ack_seq_forms():
    def seq(s):
        b = np.frombuffer(s, np.uint8)
        return natsframes.ack_seq(b, 0, len(b))
    assert seq(b"$JS.ACK.S.C.1.42.7.1.0") == 42
    assert seq(b"$JS.ACK.D.H.S.C.1.42.7.1.0.r") == 42
    assert seq(b"_INBOX.x") == 0 and seq(b"$JS.ACK.S.C.1.x.7.1.0") == 0


def _ref_ack_seq(reply: bytes) -> int:
    """The ack subject's stream sequence as the JetStream docs define the two forms."""
    if not reply.startswith(b"$"):
        return 0
    tok = reply.split(b".")
    want = 5 if len(tok) == 9 else len(tok) - 5
    if want < 0 or not tok[want].isdigit() or len(tok[want]) > 18:
        return 0
    return int(tok[want])


def test_frames_match_a_plain_parser_on_random_streams():
    """Random mixes of MSG/HMSG frames (with and without reply, v1 and v2 acks, payloads
    holding CRLF) and control lines, split anywhere: the same frames a plain parser finds."""
    rng = random.Random(7)
    for trial in range(30):
        want, lines, stream = [], [], b""
        for _ in range(rng.randrange(1, 25)):
            r = rng.random()
            if r < 0.15:
                line = rng.choice([b"PING", b"PONG", b"+OK", b'INFO {"a":1}', b"-ERR 'x'"])
                stream += line + b"\r\n"
                lines.append(line)
                continue
            subject = rng.choice([b"event.graph.n", b"a", BATCH, INBOX, b"event.graph." + b"x" * rng.randrange(1, 60)])
            toks = [b"$JS", b"ACK", b"S", b"C", b"1", str(rng.randrange(1, 10**12)).encode(), b"9", b"17", b"0"]
            if rng.random() < 0.3:
                toks = toks[:2] + [b"dom", b"hash"] + toks[2:] + [b"tok"]
            reply = rng.choice([b"", b".".join(toks), b"_INBOX.r" + str(rng.randrange(99)).encode(),
                                b"$JS.ACK.x.y"])
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80))) + b"\r\n"[: rng.randrange(3)]
            headers = b"NATS/1.0\r\nNats-Msg-Id: %d\r\n\r\n" % rng.randrange(999) if rng.random() < 0.5 else b""
            stream += _frame(subject, payload, reply, headers)
            want.append((subject, reply, payload, _ref_ack_seq(reply) if reply else 0,
                         2 if subject == INBOX else 1 if subject == BATCH else 0))
        msgs, got_lines = _parse_all(stream, cap=rng.choice([1, 3, 64]))
        assert msgs == want and got_lines == lines, trial


def test_a_bare_cr_in_a_frame_header_is_malformed():
    out = [np.empty(4, np.int64) for _ in range(7)] + [np.empty(4, np.int8)] + \
          [np.empty(2, np.int64), np.empty(2, np.int64)]
    b = np.frombuffer(b"MSG a 1 3\rx\r\nabc\r\n", np.uint8)
    assert natsframes.frames(b, 0, np.frombuffer(INBOX, np.uint8), np.frombuffer(BATCH, np.uint8),
                             *out, np.zeros(2, np.int64)) == -1


def test_raw_connection_against_nats_server(nats_server):
    async def go():
        got = []
        conn = RawConnection(got.append, inbox="t.raw.in", batch_subject="t.raw.batch")
        await conn.connect(nats_server.url)
        conn.subscribe("t.raw.>")
        await conn.flush()
        nc = await nats.connect(nats_server.url)
        payloads = [bytes(random.Random(i).randrange(256) for _ in range(i * 37 % 3000)) for i in range(300)]
        # messages far larger than a socket read: they arrive in pieces and are parsed once whole
        for i in (50, 200):
            payloads[i] = np.random.default_rng(i).integers(0, 256, 900_000, np.uint8).tobytes()
        for i, p in enumerate(payloads):
            await nc.publish("t.raw.batch" if i % 7 == 0 else f"t.raw.e{i}", p,
                             headers={"Nats-Msg-Id": str(i)} if i % 2 else None)
        await nc.flush()
        await nc.close()
        for _ in range(200):
            if sum(len(b) for b in got) >= len(payloads):
                break
            await asyncio.sleep(0.01)
        conn.close()
        return got, payloads

    blocks, payloads = asyncio.run(go())
    data = [b.data(i) for b in blocks for i in range(len(b))]
    subjects = [b.subject(i) for b in blocks for i in range(len(b))]
    kinds = [int(b.kind[i]) for b in blocks for i in range(len(b))]
    assert data == payloads
    assert subjects == ["t.raw.batch" if i % 7 == 0 else f"t.raw.e{i}" for i in range(300)]
    assert kinds == [1 if i % 7 == 0 else 0 for i in range(300)]
