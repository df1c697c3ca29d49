"""Each first-party plugin ships a Dockerfile with a public base, a JSON Schema (draft 2020-12)
of its params that the catalog accepts, and a README whose examples that schema validates:
stdin documents (after `${...}` resolution) and pipeline nodes (before it, as the catalog
checks them when a pipeline is saved)."""
import json
import re

import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry

from app.services.plugins import PARAMS_SCHEMA_MAX_BYTES

from .images import IMAGES, ROOT

PLUGINS = sorted(name for name, (folder, _) in IMAGES.items() if folder.startswith("plugins/"))
JSON_BLOCK = re.compile(r"```json\n(.*?)```", re.S)


def validator(name):
    schema = json.loads((ROOT / "plugins" / name / "schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    assert len(json.dumps(schema).encode()) <= PARAMS_SCHEMA_MAX_BYTES
    return Draft202012Validator(schema, registry=Registry())  # as the catalog builds it


def readme_examples(name):
    readme = (ROOT / "plugins" / name / "README.md").read_text()
    blocks = [json.loads(block) for block in JSON_BLOCK.findall(readme)]
    return blocks, [b["params"] for b in blocks if "params" in b and ("action" in b or "plugin" in b)]


def test_every_plugin_folder_is_listed_and_built_from_a_public_base_by_default():
    assert PLUGINS == sorted(p.name for p in (ROOT / "plugins").iterdir() if p.is_dir())
    for name in PLUGINS:
        dockerfile = (ROOT / "plugins" / name / "Dockerfile").read_text()
        assert "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}" in dockerfile


@pytest.mark.parametrize("name", PLUGINS)
def test_the_schema_validates_every_params_example_of_the_readme(name):
    check = validator(name)
    blocks, examples = readme_examples(name)
    assert len(examples) >= 2, f"{name}/README.md should show a pipeline node and a stdin document"
    assert any("plugin" in b and b["plugin"] == name for b in blocks)
    for params in examples:
        assert [e.message for e in check.iter_errors(params)] == [], params


@pytest.mark.parametrize(("name", "params", "error"), [
    ("postgres-database", {"database": "shop"}, "'host' is a required property"),
    ("postgres-database", {"host": "db", "database": "shop", "port": "five"}, "does not match"),
    ("postgres-database", {"host": "db", "database": "shop", "port": 70000}, "70000 is greater than"),
    ("postgres-database", {"host": "db", "database": "x" * 64}, "is too long"),
    ("postgres-database", {"host": "db", "database": "shop", "if_exists": "drop"}, "is not one of"),
    ("postgres-database", {"host": "db", "database": "shop", "pasword": "x"}, "'pasword' was unexpected"),
    ("sql-script", {"url": "postgresql://u:p@db/x"}, "is not valid under any of the given schemas"),
    ("sql-script", {"url": "postgresql://u:p@db/x", "sql": "SELECT 1", "sql_url": "http://h/x.sql"},
     "is valid under each of"),
    ("sql-script", {"url": "mysql://db/x", "sql": "SELECT 1"}, "does not match"),
    ("http-wait", {"url": "http://web/", "status": 42}, "is not valid under any of the given schemas"),
    ("http-wait", {"url": "web:8080"}, "does not match"),
    ("http-wait", {"url": "http://web/", "interval_s": 0}, "less than the minimum"),
])
def test_the_schema_refuses_wrong_params(name, params, error):
    messages = [e.message for e in validator(name).iter_errors(params)]
    assert any(error in m for m in messages), messages


def test_a_reference_passes_where_a_number_is_expected():
    # Saved pipelines hold `${...}` strings; the agent resolves them to text ("5432").
    check = validator("postgres-database")
    assert not list(check.iter_errors({"host": "${services.db.host}", "port": "${services.db.port}",
                                       "database": "shop"}))
    assert not list(check.iter_errors({"host": "db", "port": "5432", "database": "shop"}))


def test_the_pipeline_example_of_the_plugin_guide_passes_every_schema():
    guide = (ROOT / "docs" / "plugins.md").read_text()
    pipeline = next(yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", guide, re.S)
                    if "nodes:" in block)
    nodes = [node for node in pipeline["nodes"] if "plugin" in node]
    assert sorted(node["plugin"] for node in nodes) == PLUGINS
    for node in nodes:
        assert [e.message for e in validator(node["plugin"]).iter_errors(node["params"])] == [], node


@pytest.mark.parametrize("name", PLUGINS)
def test_no_hint_suggests_the_ingress_url_to_a_plugin(name):
    """A plugin runs inside the deployment's network, where ${services.ID.url} (the ingress
    address, docs/plugins.md) may not resolve: the http-wait form's hint said to use it, and a
    pipeline drawn from that hint failed (tests/browser/test_journey.py)."""
    schema = (ROOT / "plugins" / name / "schema.json").read_text()
    readme = (ROOT / "plugins" / name / "README.md").read_text()
    for text in (schema, readme):
        for example in re.findall(r"e\.g\. `?([^\s`]+)", text):
            assert not re.search(r"\$\{services\.[\w-]+\.url\}", example), example
