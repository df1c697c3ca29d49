"""Fixtures for the link tests: the real agent server (TLS, WebSocket, store, credentials) in
this process on a free port, with a temporary data directory and a recording service; or the
real process (support.AgentProcess) where restarts matter."""
import dataclasses
from pathlib import Path

import pytest

from agent import tls
from agent.config import Settings, prepare_data_dir
from agent.credentials import Credentials
from agent.server import AgentServer, create_agent_app
from agent.store import EventHub, Store

from .support import TOKEN, AgentProcess, RecordingService


@dataclasses.dataclass
class InProcessAgent:
    data_dir: Path
    port: int
    thumbprint: str
    store: Store
    hub: EventHub
    credentials: Credentials
    service: RecordingService
    server: AgentServer
    node_id: str


@pytest.fixture
def start_agent(tmp_path):
    """start_agent(token=..., name=...) -> InProcessAgent; all are stopped at teardown."""
    started = []

    def start(token=TOKEN, name="agent", node_id="node-test"):
        data_dir = prepare_data_dir(tmp_path / name)
        settings = Settings(data_dir=data_dir, host="127.0.0.1", port=0, token=token, node_id=node_id)
        credentials = Credentials.load(data_dir, token)
        cert_path, key_path, cert_pem = tls.ensure_certificate(data_dir)
        thumbprint = tls.thumbprint(cert_pem)
        store = Store.open(data_dir)
        hub = EventHub(store)
        service = RecordingService()
        app = create_agent_app(settings, service, store, credentials, thumbprint, hub=hub)
        server = AgentServer(app, "127.0.0.1", 0, tls.server_context(cert_path, key_path)).start()
        agent = InProcessAgent(data_dir, server.port, thumbprint, store, hub, credentials, service, server,
                               node_id)
        started.append(agent)
        return agent

    try:
        yield start
    finally:
        for agent in started:
            agent.service.release.set()
            agent.server.stop()
            agent.store.close()


@pytest.fixture
def agent(start_agent):
    return start_agent()


@pytest.fixture
def agent_process(tmp_path):
    """agent_process(data_dir, token=...) -> a running AgentProcess; all are stopped at teardown."""
    running = []

    def start(data_dir=None, token=TOKEN, real=False):
        process = AgentProcess(data_dir or tmp_path / "data", token=token, real=real)
        running.append(process)
        return process

    try:
        yield start
    finally:
        for process in running:
            process.stop()
