"""How the agent holds a deployment's containers to its limits (agent/cgroups.py): the choice
at start, cgroup v2's files and the per-container shares of the fallback. Unit logic on a
directory tree standing in for /sys/fs/cgroup; the kernel's side is in
tests/agent/executor/test_deployment_cgroup.py."""
import logging
import os

import pytest

from agent import cgroups
from agent.cgroups import MIB, DeploymentCgroups, DeploymentCgroupsV2, SplitLimits, split_limits


class FakeEngine:
    def __init__(self, driver="cgroupfs", version="1"):
        self._info = {"CgroupDriver": driver, "CgroupVersion": version}

    def info(self):
        return self._info


def v1_tree(tmp_path):
    for controller in ("cpu", "memory", "pids"):
        (tmp_path / controller).mkdir(exist_ok=True)
    return str(tmp_path)


def v2_tree(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("cpu memory\n")
    return str(tmp_path)


def kernel_made(mount, *levels):
    """The files the kernel makes in every new cgroup v2 (the stand-in tree makes them empty)."""
    for level in levels:
        os.makedirs(mount / level, exist_ok=True)
        (mount / level / "cgroup.subtree_control").write_text("")


def test_the_engines_cgroupfs_driver_and_a_writable_tree_give_deployment_cgroups(tmp_path):
    keeper = cgroups.probe(FakeEngine(), "n1", mount=v1_tree(tmp_path))
    assert type(keeper) is DeploymentCgroups and keeper.parent("dep-1") == "/nullops/n1/dep-1"
    assert not (tmp_path / "cpu" / "nullops").exists()   # the check leaves nothing behind
    mount = v2_tree(tmp_path / "v2")
    kernel_made(tmp_path / "v2", "nullops", "nullops/n1")
    keeper = cgroups.probe(FakeEngine(version="2"), "n1", mount=mount)
    assert type(keeper) is DeploymentCgroupsV2


@pytest.mark.parametrize(("engine", "tree", "reason"), [
    (FakeEngine(driver="systemd"), v1_tree, "cgroup driver is systemd"),
    (FakeEngine(), lambda path: str(path / "missing"), "cannot write the host's cgroup v1 tree"),
    (FakeEngine(version="2"), v1_tree, "cannot write the host's cgroup v2 tree"),
])
def test_a_host_without_deployment_cgroups_gets_shares_and_the_log_says_why(
        tmp_path, caplog, engine, tree, reason):
    caplog.set_level(logging.INFO, logger="nullops.agent.cgroups")
    keeper = cgroups.probe(engine, "n1", mount=tree(tmp_path))
    assert isinstance(keeper, SplitLimits) and reason in keeper.reason
    with pytest.raises(cgroups.CgroupsUnavailable, match=reason):
        _choose(engine, tree(tmp_path), "on")
    keeper = _choose(engine, tree(tmp_path), "auto")
    assert isinstance(keeper, SplitLimits)
    warning = [r for r in caplog.records if r.levelno == logging.WARNING][-1].getMessage()
    assert reason in warning and "the shares sum to them" in warning


def _choose(engine, mount, mode):
    original = cgroups.probe
    try:
        cgroups.probe = lambda client, node_id: original(client, node_id, mount=mount)
        return cgroups.choose(mode, engine, "n1")
    finally:
        cgroups.probe = original


def test_off_gives_shares_without_asking_the_engine():
    assert isinstance(cgroups.choose("off", None, "n1"), SplitLimits)


def test_cgroup_v2_carries_the_limits_and_enables_cpu_and_memory_down_to_the_deployment(tmp_path):
    mount = v2_tree(tmp_path)
    keeper = DeploymentCgroupsV2("n1", mount=mount)
    kernel_made(tmp_path, "nullops", "nullops/n1", "nullops/n1/dep-1")
    assert keeper.ensure("dep-1", 0.5, 96) == "/nullops/n1/dep-1"
    dep = tmp_path / "nullops" / "n1" / "dep-1"
    assert (dep / "cpu.max").read_text() == "50000 100000"
    assert (dep / "memory.max").read_text() == str(96 * MIB)
    assert (tmp_path / "nullops" / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert (tmp_path / "nullops" / "n1" / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert (tmp_path / "cgroup.subtree_control").read_text() == "cpu memory\n"  # already on


def test_shares_sum_to_the_deployments_limits_declared_services_first():
    spec = {"limits": {"cpus": 1.0, "memory_mb": 512}, "steps": [
        {"id": "db", "kind": "service", "memory_mb": 256},
        {"id": "web", "kind": "service"},
        {"id": "seed", "kind": "plugin", "cpus": 0.5, "memory_mb": 64},
        {"id": "check", "kind": "plugin"},
    ]}
    shares = split_limits(spec, {"cpus": 0.5, "memory_mb": 256})
    assert shares["db"] == {"cpus": 0.25, "memory_mb": 256}
    # 256 MB left for web and two plugins: 85 each, the seed plugin its own 64.
    assert shares["web"] == {"cpus": 0.25, "memory_mb": 85}
    assert shares["seed"] == {"cpus": 0.25, "memory_mb": 64}
    assert shares["check"] == {"cpus": 0.25, "memory_mb": 85}
    assert sum(s["cpus"] for s in shares.values()) <= 1.0
    assert sum(s["memory_mb"] for s in shares.values()) <= 512


def test_declared_limits_above_lowered_project_limits_are_scaled_into_them():
    spec = {"limits": {"cpus": 1.0, "memory_mb": 100}, "steps": [
        {"id": "a", "kind": "service", "cpus": 1.0, "memory_mb": 150},
        {"id": "b", "kind": "service", "cpus": 1.0, "memory_mb": 50},
    ]}
    shares = split_limits(spec)
    assert shares == {"a": {"cpus": 0.5, "memory_mb": 75}, "b": {"cpus": 0.5, "memory_mb": 25}}
