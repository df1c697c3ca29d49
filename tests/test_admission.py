"""Admission: which node takes a new deployment, and what a refusal says."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError

from app.controller import state
from app.extensions import db
from app.models import Deployment, Environment, Project, User
from app.models.types import utcnow
from app.services import admission, deployments
from app.services.errors import InsufficientResources
from tests.access.deployments import add_deployment, add_node, pipeline_version, service_step

GB = 1024 ** 3


@pytest.fixture
def staging(app):
    environment = Environment(name="staging")
    db.session.add(environment)
    db.session.commit()
    return environment


@pytest.fixture
def version(app):
    project = Project(name="shop")
    db.session.add(project)
    db.session.commit()
    return pipeline_version(project, [service_step("web")])


def refusal(environment, cpus, memory_mb):
    with pytest.raises(InsufficientResources) as caught:
        admission.place(environment, cpus, memory_mb)
    assert caught.value.status == 409 and caught.value.code == "insufficient_resources"
    return caught.value.message


def test_a_node_with_room_takes_the_deployment(staging):
    node = add_node(staging, "node-1", cpus=4, memory_mb=8192)
    assert admission.place(staging, 2, 4096).id == node.id


def test_one_node_short_of_cpus_is_named_with_what_it_has_free(staging, version):
    node = add_node(staging, "node-1", cpus=4, memory_mb=12288)
    add_deployment(version, staging, node, "a", cpus=3.5, memory_mb=4096)
    assert refusal(staging, 2, 4096) == (
        "no online node in staging has 2 CPUs and 4096 MB free: node-1 has 0.5 CPUs and 8192 MB free")


def test_allocation_counts_live_deployments_only(staging, version):
    node = add_node(staging, "node-1", cpus=2, memory_mb=2048)
    for status in ("pending", "deploying", "ready", "degraded", "failed", "offline", "deleting",
                   "cleanup_failed"):
        add_deployment(version, staging, node, f"live-{status}", status=status, cpus=0.25, memory_mb=256)
    add_deployment(version, staging, node, "gone", status="deleted", cpus=2, memory_mb=2048)
    # 8 live ones hold 2 CPUs and 2048 MB: the node is full; the deleted one holds nothing.
    assert refusal(staging, 0.25, 1) == ("no online node in staging has 0.25 CPUs and 1 MB free: "
                                         "node-1 has 0 CPUs and 0 MB free")
    # Admission reads "live" as deleted_at IS NULL: the database keeps the two together.
    with pytest.raises(IntegrityError):
        db.session.execute(db.text("UPDATE deployments SET status = 'deleted' WHERE name = 'live-failed'"))
    db.session.rollback()
    db.session.execute(db.text("UPDATE deployments SET status = 'deleted', deleted_at = CURRENT_TIMESTAMP "
                               "WHERE name = 'live-failed'"))
    db.session.commit()
    assert admission.place(staging, 0.25, 256).id == node.id


def test_float_cpus_that_exactly_fill_a_node_fit(staging, version):
    node = add_node(staging, "node-1", cpus=0.3, memory_mb=1024)
    add_deployment(version, staging, node, "a", cpus=0.1, memory_mb=1)
    assert admission.place(staging, 0.2, 1).id == node.id


def test_of_several_nodes_the_one_with_most_free_memory_wins(staging, version):
    add_node(staging, "node-1", cpus=8, memory_mb=8192)
    roomy = add_node(staging, "node-2", cpus=2, memory_mb=16384)
    busy = add_node(staging, "node-3", cpus=8, memory_mb=32768)
    add_deployment(version, staging, busy, "a", cpus=1, memory_mb=30720)
    assert admission.place(staging, 1, 1024).id == roomy.id
    # node-2 has the memory but not the CPUs: the next best fitting node takes it.
    assert admission.place(staging, 4, 1024).name == "node-1"


def test_several_nodes_too_small_are_listed_most_free_memory_first(staging, version):
    add_node(staging, "node-1", cpus=1, memory_mb=1024)
    add_node(staging, "node-2", cpus=8, memory_mb=2048)
    full = add_node(staging, "node-3", cpus=4, memory_mb=4096)
    add_deployment(version, staging, full, "a", cpus=4, memory_mb=512)
    assert refusal(staging, 2, 4096) == (
        "no online node in staging has 2 CPUs and 4096 MB free: node-3 has 0 CPUs and 3584 MB free; "
        "node-2 has 8 CPUs and 2048 MB free; node-1 has 1 CPU and 1024 MB free")


def test_a_refusal_names_five_nodes_and_counts_the_rest(staging):
    for number in range(1, 9):
        add_node(staging, f"node-{number}", cpus=1, memory_mb=100 * number)
    message = refusal(staging, 2, 4096)
    assert message.count(" has ") == 6  # the request, then five nodes
    assert "node-8 has 1 CPU and 800 MB free" in message and "node-3" not in message
    assert message.endswith("; and 3 more online nodes with less")


def test_a_disabled_node_gets_no_new_deployments(staging):
    add_node(staging, "node-1", status="disabled", enabled=False, cpus=64, memory_mb=65536)
    small = add_node(staging, "node-2", cpus=1, memory_mb=1024)
    assert admission.place(staging, 1, 512).id == small.id
    assert refusal(staging, 2, 512) == ("no online node in staging has 2 CPUs and 512 MB free: "
                                        "node-2 has 1 CPU and 1024 MB free")


def test_no_online_node_says_so_and_what_the_nodes_are(staging):
    add_node(staging, "node-1", status="offline")
    add_node(staging, "node-2", status="disabled", enabled=False)
    add_node(staging, "node-3", status="online", enabled=False)
    assert refusal(staging, 1, 512) == (
        "no online node in staging takes new deployments (node-1 is offline, node-2 is disabled, "
        "node-3 is disabled); try again later")


def test_an_environment_without_nodes_says_so(staging):
    assert refusal(staging, 1, 512) == ("no online node in staging: the environment has no nodes; "
                                        "ask an admin to add one")


def test_nodes_of_other_environments_neither_take_nor_count(staging, version):
    other = Environment(name="production")
    db.session.add(other)
    db.session.commit()
    add_node(other, "big", cpus=64, memory_mb=65536)
    mine = add_node(staging, "node-1", cpus=2, memory_mb=2048)
    assert admission.place(staging, 2, 2048).id == mine.id
    add_deployment(version, staging, mine, "a", cpus=1, memory_mb=1024)
    assert "node-1 has 1 CPU and 1024 MB free" in refusal(staging, 2, 2048)


def test_fresh_memory_figures_limit_what_fits_and_cpu_use_short_of_saturation_does_not(staging):
    busy_host = {"cpus": 4, "cpu_percent": 75.0, "memory_total": 16 * GB, "memory_available": 3 * GB}
    add_node(staging, "node-1", cpus=4, memory_mb=16384, host=busy_host)
    # Nothing is allocated; the host is busy but not saturated (CPU is compressible), and only
    # 3072 MB of memory are actually available.
    assert admission.place(staging, 4, 1024).name == "node-1"
    assert refusal(staging, 1, 4096) == ("no online node in staging has 1 CPU and 4096 MB free: "
                                         "node-1 has 4 CPUs and 3072 MB free (its host has no more "
                                         "memory available)")
    assert admission.place(staging, 1, 3072).name == "node-1"


def test_stale_agent_figures_are_ignored_but_the_allocation_still_applies(staging, version):
    busy_host = {"cpus": 4, "cpu_percent": 100.0, "memory_total": 16 * GB, "memory_available": 0}
    node = add_node(staging, "node-1", cpus=4, memory_mb=4096, host=busy_host,
                    resources_at=utcnow() - timedelta(seconds=61))
    assert admission.place(staging, 2, 2048).id == node.id
    add_deployment(version, staging, node, "a", cpus=3, memory_mb=1024)
    assert refusal(staging, 2, 2048) == ("no online node in staging has 2 CPUs and 2048 MB free: "
                                         "node-1 has 1 CPU and 3072 MB free")
    node.resources_at = utcnow()
    db.session.commit()
    assert refusal(staging, 1, 1) == ("no online node in staging has 1 CPU and 1 MB free: node-1 is "
                                      "saturated: its CPUs were 100% busy over the last minute")


def test_the_lower_of_allocation_and_agent_figures_counts(staging, version):
    idle_host = {"cpus": 8, "cpu_percent": 0.0, "memory_total": 32 * GB, "memory_available": 30 * GB}
    node = add_node(staging, "node-1", cpus=4, memory_mb=8192, host=idle_host)
    add_deployment(version, staging, node, "a", cpus=1, memory_mb=2048)
    assert "node-1 has 3 CPUs and 6144 MB free" in refusal(staging, 4, 1024)


def test_garbled_agent_figures_are_ignored(staging):
    add_node(staging, "node-1", cpus=4, memory_mb=4096, host={"cpus": "many"})
    assert admission.place(staging, 4, 4096).name == "node-1"


def test_a_garbled_figure_is_ignored_and_the_other_still_counts(staging):
    add_node(staging, "node-1", cpus=4, memory_mb=8192,
             host={"cpus": 4, "cpu_percent": "busy", "memory_available": GB})
    assert refusal(staging, 1, 2048) == ("no online node in staging has 1 CPU and 2048 MB free: "
                                         "node-1 has 4 CPUs and 1024 MB free (its host has no more "
                                         "memory available)")


def test_a_stored_resources_frame_sets_what_admission_compares(staging):
    """The controller writes frames in batches with Core (app/controller/state.py), not through
    the ORM: the free figures must come with them."""
    node = add_node(staging, "node-1", cpus=4, memory_mb=16384)
    frame = {"host": {"cpus": 4, "cpu_percent": 50.0, "memory_total": 16 * GB,
                      "memory_available": 2 * GB}, "allocated": {"cpus": 0, "memory_mb": 0}}
    state.store_resources({node.id: (frame, utcnow())})
    db.session.refresh(node)
    assert (node.reported_free_cpus, node.reported_free_memory_mb, node.reported_cpu_percent) == (
        2.0, 2048, 50.0)
    assert refusal(staging, 1, 4096) == ("no online node in staging has 1 CPU and 4096 MB free: "
                                         "node-1 has 4 CPUs and 2048 MB free (its host has no more "
                                         "memory available)")


IDLE_HOST = {"cpus": 4, "cpu_percent": 50.0, "memory_total": 16 * GB, "memory_available": 2 * GB}


def _frame(**host):
    return {"host": {**IDLE_HOST, **host}, "allocated": {"cpus": 0, "memory_mb": 0}}


@pytest.mark.parametrize("figure, value, free", [
    ("memory_available", 10 ** 30, (2.0, None)),         # its MB overflow the column
    ("cpus", 10 ** 400, (None, 2048)),                   # float() overflows
    ("cpus", float("inf"), (None, 2048)),                # JSON columns refuse Infinity ...
    ("cpu_percent", float("nan"), (None, 2048)),         # ... and NaN (PostgreSQL)
    ("cpu_percent", 250.0, (None, 2048)),
    ("memory_total", -GB, (2.0, 2048)),
])
def test_a_figure_out_of_range_is_dropped_for_its_node_and_the_others_are_written(
        staging, figure, value, free):
    # All nodes' frames go in one statement: one node's figure that a column cannot hold failed
    # every node's write, every second while that agent kept sending it.
    good, bad = add_node(staging, "node-1"), add_node(staging, "node-2")
    at = utcnow()
    dropped = state.store_resources({good.id: (_frame(), at), bad.id: (_frame(**{figure: value}), at)})
    assert dropped == {bad.id: [f"host.{figure}"]}
    db.session.refresh(good)
    db.session.refresh(bad)
    assert (good.reported_free_cpus, good.reported_free_memory_mb, good.resources_at) == (2.0, 2048, at)
    assert good.resources == _frame()
    # The bad node keeps its other figures, and is seen.
    assert (bad.reported_free_cpus, bad.reported_free_memory_mb, bad.last_seen_at) == (*free, at)
    assert bad.resources["host"][figure] is None
    assert bad.resources["allocated"] == {"cpus": 0, "memory_mb": 0}


def test_a_node_without_reported_capacity_is_named_as_such(staging):
    add_node(staging, "node-1", cpus=None, memory_mb=None)
    assert refusal(staging, 1, 512) == ("no online node in staging has 1 CPU and 512 MB free: "
                                        "node-1 has not reported its capacity yet")


def test_an_override_caps_the_capacity(staging):
    node = add_node(staging, "node-1", cpus=16, memory_mb=65536)
    node.cpus_override, node.memory_mb_override = 1.5, 2048
    db.session.commit()
    assert "node-1 has 1.5 CPUs and 2048 MB free" in refusal(staging, 2, 1024)


def test_placing_is_one_query_whatever_the_fleet_and_a_refusal_two(staging, version):
    for number in range(20):
        node = add_node(staging, f"node-{number:02d}", cpus=4, memory_mb=4096 + number)
        add_deployment(version, staging, node, f"d-{number}", cpus=1, memory_mb=1024)
    statements = []

    def count(*_args):
        statements.append(1)

    db.session.expire_all()
    assert staging.name == "staging"  # loaded again before counting
    event.listen(db.engine, "before_cursor_execute", count)
    try:
        chosen = admission.place(staging, 1, 1024)
        placed = len(statements)
        with pytest.raises(InsufficientResources):
            admission.place(staging, 4, 1024)
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert chosen.name == "node-19"
    assert (placed, len(statements) - placed) == (1, 2)


@pytest.mark.postgres
def test_concurrent_creates_at_exact_capacity_never_over_commit_a_node(app, spec_example, monkeypatch):
    """Issue 18 item 3: 20 creates at once on a node with room for exactly 10; each one's check
    and insert used to interleave with the others' (all saw 10 free), so all 20 were placed."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serializes writers by itself; the race needs PostgreSQL")
    ex = spec_example
    ex["project"].cpus, ex["project"].memory_mb = 0.2, 200
    db.session.commit()
    pipeline_version(ex["project"], [service_step("web")])
    node = add_node(ex["environment"], "node-1", cpus=2, memory_mb=2000)
    ids = (ex["writer"].id, ex["project"].id, ex["environment"].id)
    place = admission.place

    def slow_place(*args, **kwargs):
        chosen = place(*args, **kwargs)
        time.sleep(0.05)  # widen the window between the check and the commit
        return chosen

    monkeypatch.setattr(admission, "place", slow_place)
    start = threading.Barrier(20)

    def create(number):
        with app.app_context():
            # Released before any connection is taken: the pool holds 15 (5 + 10 overflow).
            start.wait(timeout=30)
            try:
                writer, project, environment = (db.session.get(model, id_) for model, id_ in
                                                zip((User, Project, Environment), ids, strict=True))
                try:
                    deployments.create(writer, project, environment, f"d-{number}", {})
                    return "created"
                except InsufficientResources as exc:
                    return exc.message
            finally:
                db.session.remove()

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(create, range(20)))
    assert outcomes.count("created") == 10, outcomes
    refused = [o for o in outcomes if o != "created"]
    assert set(refused) == {"no online node in staging has 0.2 CPUs and 200 MB free: "
                            "node-1 has 0 CPUs and 0 MB free"}
    held = db.session.execute(db.select(db.func.sum(Deployment.cpus), db.func.sum(Deployment.memory_mb))
                              .where(Deployment.node_id == node.id)).one()
    assert (round(held[0], 6), held[1]) == (2.0, 2000)


# --- issue 18 item 2: memory strict, CPU compressible, real use judged over a minute ------------
def test_memory_is_reserved_strictly_and_the_node_reserve_is_kept_out(staging, version):
    node = add_node(staging, "node-1", cpus=2, memory_mb=4096, cpu_overcommit=None,
                    memory_reserve_mb=None)
    assert node.memory_reserve_mb == 512 and staging.cpu_overcommit == 16.0  # the shipped defaults
    add_deployment(version, staging, node, "a", cpus=0.5, memory_mb=3072)
    # 4096 - 512 reserved - 3072 held: 512 MB left, however idle the deployments are.
    assert admission.place(staging, 0.5, 512).id == node.id
    assert refusal(staging, 0.5, 513) == ("no online node in staging has 0.5 CPUs and 513 MB free: "
                                          "node-1 has 31.5 CPUs and 512 MB free")


def test_cpus_are_overcommitted_by_the_environment_ratio_unless_the_node_sets_its_own(staging, version):
    node = add_node(staging, "node-1", cpus=2, memory_mb=65536, cpu_overcommit=None)
    staging.cpu_overcommit = 4.0
    db.session.commit()
    add_deployment(version, staging, node, "a", cpus=7, memory_mb=1)
    assert admission.place(staging, 1, 1).id == node.id     # 2 CPUs x 4 = 8 allocatable
    assert "node-1 has 1 CPU and 65535 MB free" in refusal(staging, 1.5, 1)
    node.cpu_overcommit = 1.5  # this node's own ratio: 3 allocatable, 7 held
    db.session.commit()
    assert "node-1 has 0 CPUs and 65535 MB free" in refusal(staging, 0.1, 1)


def test_a_cpu_spike_does_not_turn_deployments_away_but_a_saturated_minute_does(staging):
    spiking = {"cpus": 2, "cpu_percent": 100.0, "cpu_percent_1m": 30.0,
               "memory_total": 8 * GB, "memory_available": 6 * GB}
    node = add_node(staging, "node-1", cpus=2, memory_mb=8192, host=spiking)
    assert node.reported_cpu_percent == 30.0
    assert admission.place(staging, 1, 1024).id == node.id
    node.resources = {**node.resources, "host": {**spiking, "cpu_percent_1m": 90.0}}
    db.session.commit()
    assert refusal(staging, 0.1, 16) == ("no online node in staging has 0.1 CPUs and 16 MB free: "
                                         "node-1 is saturated: its CPUs were 90% busy over the last "
                                         "minute")


def test_available_memory_is_judged_over_the_minute_when_the_agent_sends_it(staging):
    dip = {"cpus": 2, "cpu_percent": 5.0, "memory_total": 8 * GB, "memory_available": GB // 2,
           "memory_available_1m": 4 * GB}
    node = add_node(staging, "node-1", cpus=2, memory_mb=8192, host=dip)
    assert node.reported_free_memory_mb == 4096
    assert admission.place(staging, 1, 4096).id == node.id
    assert "node-1 has 2 CPUs and 4096 MB free" in refusal(staging, 1, 4097)


def test_of_nodes_that_fit_the_one_with_most_memory_left_to_allocate_wins_counting_the_reserve(staging):
    add_node(staging, "node-1", cpus=2, memory_mb=8192, memory_reserve_mb=2048)
    roomy = add_node(staging, "node-2", cpus=2, memory_mb=7168, memory_reserve_mb=512)
    assert admission.place(staging, 1, 1024).id == roomy.id   # 6656 MB left against 6144


# --- issue 18 item 4: what a node holds, shown per node ------------------------------------------
def test_a_node_shows_allocated_against_allocatable_real_use_and_each_deployments_reservation(
        client, spec_example, bearer):
    ex = spec_example
    version = pipeline_version(ex["project"], [service_step("web")])
    other = pipeline_version(ex["other_project"], [service_step("web")])
    host = {"cpus": 2, "cpu_percent": 99.0, "cpu_percent_1m": 40.0, "memory_total": 8 * GB,
            "memory_available": 5 * GB}
    node = add_node(ex["environment"], "node-1", cpus=2, memory_mb=8192, host=host,
                    cpu_overcommit=None, memory_reserve_mb=None)
    add_deployment(version, ex["environment"], node, "big", cpus=0.5, memory_mb=1024)
    add_deployment(version, ex["environment"], node, "small", cpus=0.25, memory_mb=256, status="deploying")
    # Another project's: who sees the environment sees its deployments (app/access.py).
    add_deployment(other, ex["environment"], node, "theirs", cpus=1, memory_mb=512)
    add_deployment(version, ex["environment"], node, "gone", status="deleted", cpus=4, memory_mb=4096)
    response = client.get(f"/api/v1/nodes/{node.id}/allocation", headers=bearer(ex["writer"]))
    assert response.status_code == 200, response.text
    shown = response.json
    assert shown["cpus"] == {"capacity": 2.0, "overcommit": 16.0, "allocatable": 32.0, "allocated": 1.75}
    assert shown["memory_mb"] == {"capacity": 8192, "reserve": 512, "allocatable": 7680, "allocated": 1792}
    assert {k: shown["real"][k] for k in ("cpu_percent_1m", "memory_available_mb", "saturated")} == {
        "cpu_percent_1m": 40.0, "memory_available_mb": 5120, "saturated": False}
    # Most memory first; the deleted one holds nothing.
    assert [(d["name"], d["status"], d["cpus"], d["memory_mb"]) for d in shown["deployments"]] == [
        ("big", "ready", 0.5, 1024), ("theirs", "ready", 1.0, 512), ("small", "deploying", 0.25, 256)]
    assert shown["others"] == {"count": 0, "cpus": 0, "memory_mb": 0}
    assert client.get(f"/api/v1/nodes/{node.id}/allocation",
                      headers=bearer(ex["outsider"])).status_code == 404


def test_the_node_page_shows_the_allocation(client, spec_example, login):
    ex = spec_example
    version = pipeline_version(ex["project"], [service_step("web")])
    node = add_node(ex["environment"], "node-1", cpus=2, memory_mb=8192, cpu_overcommit=None,
                    memory_reserve_mb=None)
    add_deployment(version, ex["environment"], node, "big", cpus=0.5, memory_mb=1024)
    login(ex["writer"].username)
    page = client.get(f"/nodes/{node.id}").text
    section = page[page.index('data-testid="node-allocation"'):]
    section = section[:section.index("</section>")]
    assert "2 CPUs × 16 overcommit" in section and "8192 MB less 512 MB reserved for the host" in section
    assert "<td>0.5</td>" in section and "<td>1024 MB</td>" in section and ">big</a>" in section
    assert "no recent figures" in section
