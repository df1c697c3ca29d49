"""The desired state goes to an agent in parts that fit a frame (issue #14.2): a node's specs
together may not, and a frame over the limit closes the link (1009) at every connect."""

from agent import protocol
from app.controller.links import NodeLink
from tests.asynctools import run


class _Manager:
    def __init__(self, desired):
        self.desired = desired
        self.synced = None

    async def desired_state(self, node_id):
        return {"deployments": self.desired,
                "keep": [e["deployment"]["deployment_id"] for e in self.desired] + ["dep-deleting"]}

    async def on_sync(self, link, result):
        self.synced = result


def _sync(desired):
    manager = _Manager(desired)
    link = NodeLink(manager, {"id": 1, "name": "qa-1", "host": "127.0.0.1", "port": 1})
    sent = []

    async def call(method, params=None, timeout=30.0):
        assert method == protocol.STATE_SYNC
        sent.append(params)
        return {"applied": [e["deployment"]["deployment_id"] for e in params["deployments"]],
                "deleted": ["dep-old"] if "keep" in params else []}

    link.call = call
    run(link._sync())
    return sent, manager.synced


def _entry(number, size):
    return {"deployment": {"deployment_id": f"dep-{number}", "steps": [{"params": {"sql": "x" * size}}]},
            "secrets": {}, "registries": {}}


def test_a_desired_state_larger_than_a_frame_goes_in_parts_the_last_naming_them_all():
    desired = [_entry(n, 400_000) for n in range(12)]  # about 4.8 MB in all
    sent, synced = _sync(desired)
    assert len(sent) > 1
    assert all(protocol.encoded_size(protocol.request(1, protocol.STATE_SYNC, p)) < protocol.MAX_FRAME_BYTES
               for p in sent)
    assert sum(len(p["deployments"]) for p in sent) == 12
    assert ["keep" in p for p in sent] == [False] * (len(sent) - 1) + [True]
    assert sent[-1]["keep"] == [f"dep-{n}" for n in range(12)] + ["dep-deleting"]
    assert synced["applied"] == [f"dep-{n}" for n in range(12)] and synced["deleted"] == ["dep-old"]


def test_an_empty_desired_state_is_one_part_that_keeps_only_what_the_round_deletes():
    sent, synced = _sync([])
    assert sent == [{"deployments": [], "keep": ["dep-deleting"]}]
    assert synced["deleted"] == ["dep-old"]
