"""The deployment spec: what the agent accepts, what it refuses and how references resolve."""
import copy

import pytest

from agent.spec import SpecError, ancestors, levels, resolve, secret_names, topological_order, validate

BASE = {
    "deployment_id": "dep-1",
    "name": "shop-1",
    "pipeline_version": 3,
    "limits": {"cpus": 1.0, "memory_mb": 512},
    "urls": {"web": "http://web.shop-1.staging.example.com"},
    "steps": [
        {"id": "db", "kind": "service", "image": "postgres:15",
         "env": {"POSTGRES_PASSWORD": "${secrets.DB_PASSWORD}"}, "ports": [5432],
         "readiness": {"type": "tcp", "port": 5432}},
        {"id": "mkdb", "kind": "plugin", "image": "nullops/postgres-database:1.0",
         "depends_on": ["db"], "params": {"host": "${services.db.host}", "port": "${services.db.port}"},
         "network": True, "rollback": True},
        {"id": "web", "kind": "service", "image": "shop:1.4", "depends_on": ["mkdb"],
         "env": {"DATABASE_URL": "${steps.mkdb.outputs.url}", "SELF": "${services.web.url}"},
         "ports": [8000], "expose": [8000], "readiness": {"type": "http", "port": 8000, "path": "/health"}},
    ],
}


def spec_with(**changes):
    spec = copy.deepcopy(BASE)
    for path, value in changes.items():
        target = spec
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        last = keys[-1]
        if value is ...:
            del target[last]
        else:
            target[int(last) if last.isdigit() else last] = value
    return spec


def test_a_complete_spec_is_accepted_and_ordered():
    assert validate(copy.deepcopy(BASE))
    assert topological_order(BASE["steps"]) == ["db", "mkdb", "web"]
    assert ancestors(BASE["steps"])["web"] == {"db", "mkdb"}
    assert secret_names(BASE) == {"DB_PASSWORD"}
    fan = [{"id": "db"}, {"id": "cache"}, {"id": "seed", "depends_on": ["db"]},
           {"id": "app", "depends_on": ["seed", "cache"]}]
    assert levels(fan) == [["cache", "db"], ["seed"], ["app"]]


@pytest.mark.parametrize("key,value,message", [
    ("privileged", True, "privileged containers are not allowed"),
    ("cap_add", ["SYS_ADMIN"], "adding capabilities"),
    ("devices", ["/dev/kmsg"], "host devices"),
    ("network_mode", "host", "network modes"),
    ("pid_mode", "host", "PID namespace"),
    ("ipc_mode", "host", "IPC namespace"),
    ("volumes", {"/": {"bind": "/host"}}, "host mounts"),
    ("mounts", ["/var/run/docker.sock:/var/run/docker.sock"], "host mounts"),
])
def test_dangerous_container_settings_are_refused_by_name(key, value, message):
    for index in (0, 1):
        spec = copy.deepcopy(BASE)
        spec["steps"][index][key] = value
        with pytest.raises(SpecError, match=message) as info:
            validate(spec)
        assert info.value.refused


@pytest.mark.parametrize("changes,message", [
    ({"steps__1__depends_on": ["nope"]}, "missing step 'nope'"),
    ({"steps__0__depends_on": ["web"]}, "cycle"),
    ({"steps__0__depends_on": ["db"]}, "itself"),
    ({"steps__2__env": {"X": "${steps.nope.outputs.url}"}}, "missing plugin step"),
    ({"steps__0__env": {"X": "${steps.mkdb.outputs.url}"}}, "does not run before it"),
    ({"steps__2__env": {"X": "${services.ghost.host}"}}, "missing service"),
    ({"steps__2__env": {"X": "${services.db.password}"}}, "host, port and url"),
    ({"steps__2__env": {"X": "${env.HOME}"}}, "unknown reference scope"),
    ({"steps__2__expose": [9000]}, "also in 'ports'"),
    ({"steps__0__image": "bad image; rm -rf /"}, "image reference"),
    ({"steps__0__colour": "red"}, "unknown field 'colour'"),
    ({"deployment_id": "Dep_1"}, "DNS label"),
    ({"limits__cpus": 0}, "cpus"),
    ({"steps__1__timeout_s": "5m"}, "timeout_s"),
    ({"steps__0__readiness": {"type": "tcp"}}, "needs 'port'"),
    ({"steps__0__readiness": {"type": "magic"}}, "type must be one of"),
    ({"steps__0__readiness": {"type": "log", "pattern": "("}}, "regular expression"),
    ({"steps__0__env": {"BAD-NAME": "x"}}, "NAME to string"),
    ({"steps": []}, "1 to 200 steps"),
])
def test_broken_specs_are_refused_with_the_place_and_the_fix(changes, message):
    with pytest.raises(SpecError, match=message):
        validate(spec_with(**changes))


def test_duplicate_step_ids_are_refused():
    spec = copy.deepcopy(BASE)
    spec["steps"].append(copy.deepcopy(spec["steps"][0]))
    with pytest.raises(SpecError, match="used twice"):
        validate(spec)


def test_references_resolve_to_secrets_services_and_upstream_outputs():
    outputs = {"mkdb": {"url": "postgres://app:pw@db:5432/app"}}
    env = resolve(BASE["steps"][2]["env"], BASE, {"DB_PASSWORD": "pw"}, outputs)
    assert env == {"DATABASE_URL": "postgres://app:pw@db:5432/app",
                   "SELF": "http://web.shop-1.staging.example.com"}
    params = resolve(BASE["steps"][1]["params"], BASE, {}, outputs)
    assert params == {"host": "db", "port": "5432"}
    assert resolve(["${secrets.DB_PASSWORD}!"], BASE, {"DB_PASSWORD": "pw"}, {}) == ["pw!"]


@pytest.mark.parametrize("output, text", [
    ({"rows_affected": 3, "tables": ["a", "b"]}, '{"rows_affected":3,"tables":["a","b"]}'),
    (["a", 1], '["a",1]'),
    (3, "3"),
    (2.5, "2.5"),
    (True, "true"),
    (False, "false"),
    (None, "null"),
    ({"name": "café"}, '{"name":"café"}'),
])
def test_an_output_that_is_not_a_string_is_substituted_as_json(output, text):
    # It reached services as a Python repr ({'rows_affected': 3}, True, None), which no JSON
    # parser takes. Whole or inside a longer string, the result is a string: env values are.
    outputs = {"count": {"result": output}}
    assert resolve("${steps.count.outputs.result}", BASE, {}, outputs) == text
    assert resolve({"RESULT": "got ${steps.count.outputs.result}"}, BASE, {}, outputs) == {
        "RESULT": f"got {text}"}


def test_a_string_output_is_substituted_as_it_is():
    outputs = {"mkdb": {"url": 'postgres://db/app?x="1"'}}
    assert resolve("${steps.mkdb.outputs.url}", BASE, {}, outputs) == 'postgres://db/app?x="1"'


def test_missing_values_at_run_time_fail_clearly():
    with pytest.raises(SpecError, match="secret 'DB_PASSWORD' was not sent"):
        resolve("${secrets.DB_PASSWORD}", BASE, {}, {})
    with pytest.raises(SpecError, match="did not output 'url'"):
        resolve("${steps.mkdb.outputs.url}", BASE, {}, {"mkdb": {}})
