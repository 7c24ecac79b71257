"""Subjects, limits and small helpers shared by the service's parts (:mod:`cim_flow.service`)."""
from __future__ import annotations

import asyncio

import msgspec

BATCH_SUBJECT = "event.graph.batch"
UPDATES_SUBJECT = "projection.graph.summary.updated"
RESULTS_SUBJECTS = "projection.graph.>"  # what a results stream ([jetstream] results_stream) keeps
DLQ_SUBJECT = "dlq.graph"
QUERY_PREFIX = "query.graph."
SNAPSHOT_SUBJECT = "cmd.cim_flow.snapshot"
COMPACT_SUBJECT = "cmd.cim_flow.compact"
_json = msgspec.json.Encoder()
_PULL_EXPIRES = 2.0  # seconds a pull request waits for messages before the server ends it
_SNAPSHOT_CHILD_LIMIT = 900  # seconds a background snapshot writer may take before it is killed
_SNAPSHOT_WAIT_AT_STOP = 120.0  # seconds shutdown waits for one before writing in-line
_REPLY_HEADROOM = 1024  # bytes of max_payload kept for a reply's headers


class NatsAuthError(RuntimeError):
    """The NATS server rejected the service's credentials at start."""


class JetStreamUnavailable(RuntimeError):
    """The NATS server has no JetStream for us, or refused the events stream, at start."""


def _stream_seq(reply: str) -> int:
    """Stream sequence from a JetStream ack subject (v1 and v2 token layouts)."""
    t = reply.split(".")
    if len(t) == 9:
        return int(t[5])
    return int(t[-5])


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
