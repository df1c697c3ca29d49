"""Pipeline versions (app/services/pipelines.py): every bad definition is refused naming the node
and the fix with nothing written; good ones become immutable versions N+1 whose resolved steps
the spec compiler and the agent accept; diffs; YAML export and import."""
import copy
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from sqlalchemy import func, select

from agent.spec import validate
from app.extensions import db
from app.models import AuditEntry, PipelineVersion, Project
from app.services import catalog, pipeline_diff, pipeline_yaml, pipelines
from app.services.errors import Conflict, ValidationFailed
from app.services.pipelines import TooLarge
from app.services.specs import compile_spec
from tests.access.pipelines import definition, make_catalog


@pytest.fixture
def shop(app, admin):
    project = Project(name="shop")
    db.session.add(project)
    db.session.commit()
    catalog.put_secret(admin, project, "DB_PASSWORD", "pw-123")
    return project


@pytest.fixture
def rows(app):
    return make_catalog()


def _count(model):
    return db.session.scalar(select(func.count()).select_from(model))


def _refused(admin, project, definition, comment=""):
    """Save must fail and write nothing; returns the error's fields."""
    before = (_count(PipelineVersion), _count(AuditEntry))
    with pytest.raises(ValidationFailed) as caught:
        pipelines.save_version(admin, project, definition, comment)
    db.session.rollback()
    assert (_count(PipelineVersion), _count(AuditEntry)) == before
    return caught.value


def _with(change):
    d = definition()
    change(d)
    return d


def test_a_valid_pipeline_is_saved_as_version_1_with_the_catalog_copied_in(shop, rows, admin):
    version = pipelines.save_version(admin, shop, definition(), "first")
    assert (version.number, version.comment, version.created_by_id) == (1, "first", admin.id)
    assert version.definition == definition()
    db_step, mkdb, web = version.resolved["steps"]
    hub = rows["db"].registry_id
    assert db_step == {
        "id": "db", "kind": "service", "service": "postgres", "registry_id": hub, "image": "postgres",
        "tag_mode": "pinned", "tag": "15", "tag_pattern": None, "ports": [5432], "exposed_ports": [],
        "env": {"POSTGRES_DB": "app", "POSTGRES_PASSWORD": "${secrets.DB_PASSWORD}"},
        "command": None, "health_check": {"type": "tcp", "port": 5432}, "depends_on": []}
    assert mkdb == {
        "id": "mkdb", "kind": "plugin", "plugin": "postgres-database", "registry_id": hub,
        "image": "nullops/postgres-database", "tag": "1.0",
        "params": {"host": "${services.db.host}", "password": "${secrets.DB_PASSWORD}"},
        "cpus": 0.5, "memory_mb": 256, "timeout_s": 300, "network": True, "rollback": False,
        "depends_on": ["db"]}
    assert web["depends_on"] == ["mkdb"] and web["tag_mode"] == "selectable"
    assert web["env"] == {"LOG_LEVEL": "info", "DATABASE_URL": "${steps.mkdb.outputs.url}",
                          "PUBLIC_URL": "${services.web.url}"}
    entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "pipeline.save"))
    assert entry.target_name == "shop" and entry.details["version"] == 1
    assert pipelines.latest_version(shop).id == version.id


def test_node_env_overrides_the_services_env(shop, rows, admin):
    d = _with(lambda d: d["nodes"][0]["env"].update(POSTGRES_DB="shop"))
    assert pipelines.save_version(admin, shop, d).resolved["steps"][0]["env"]["POSTGRES_DB"] == "shop"


def test_the_spec_compiler_and_the_agent_accept_a_saved_version(shop, rows, admin):
    version = pipelines.save_version(admin, shop, definition())
    environment = type("Env", (), {"name": "staging", "base_domain": "example.com"})()
    deployment = type("Dep", (), {"pipeline_version": version, "tags": {"db": "15", "web": "v1.4"},
                                  "agent_id": "dep-7", "name": "shop-1", "cpus": 1.0,
                                  "memory_mb": 1024, "environment": environment})()
    spec = validate(compile_spec(deployment))
    assert [s["image"] for s in spec["steps"]] == [
        "postgres:15", "nullops/postgres-database:1.0", "team/shop-web:v1.4"]
    assert spec["urls"] == {"web": "http://web.shop-1.staging.example.com"}


def test_secret_files_reach_the_spec_and_survive_a_yaml_round_trip(shop, rows, admin):
    """Issue 17 item 8: a service takes a secret as a file instead of an env variable."""
    def as_file(d):
        d["nodes"][0]["env"] = {"POSTGRES_PASSWORD_FILE": "/run/secrets/db_password"}
        d["nodes"][0]["secret_files"] = {"db_password": "${secrets.DB_PASSWORD}"}
    version = pipelines.save_version(admin, shop, _with(as_file))
    assert version.resolved["steps"][0]["secret_files"] == {"db_password": "${secrets.DB_PASSWORD}"}
    environment = type("Env", (), {"name": "staging", "base_domain": "example.com"})()
    deployment = type("Dep", (), {"pipeline_version": version, "tags": {"db": "15", "web": "v1.4"},
                                  "agent_id": "dep-7", "name": "shop-1", "cpus": 1.0,
                                  "memory_mb": 1024, "environment": environment})()
    spec = validate(compile_spec(deployment))
    assert spec["steps"][0]["secret_files"] == {"db_password": "${secrets.DB_PASSWORD}"}
    assert "${secrets.DB_PASSWORD}" not in spec["steps"][0]["env"].values()
    text = pipeline_yaml.export_yaml(version)
    assert "secret_files:" in text
    assert pipeline_yaml.import_yaml(admin, shop, text.encode()).definition == version.definition


def test_versions_are_numbered_per_project(shop, rows, admin):
    other = Project(name="billing")
    db.session.add(other)
    db.session.commit()
    catalog.put_secret(admin, other, "DB_PASSWORD", "x")
    assert [pipelines.save_version(admin, shop, definition()).number for _ in range(3)] == [1, 2, 3]
    assert pipelines.save_version(admin, other, definition()).number == 1
    assert pipelines.latest_version(shop).number == 3
    assert pipelines.latest_version(Project(name="none", id=999)) is None


def test_a_number_taken_at_the_same_moment_is_retried_once(shop, rows, admin, monkeypatch):
    pipelines.save_version(admin, shop, definition())
    real, calls = pipelines._next_number, []

    def racing(project_id):  # the first attempt sees the number before the other save committed
        calls.append(project_id)
        return 1 if len(calls) == 2 else real(project_id)

    monkeypatch.setattr(pipelines, "_next_number", racing)
    assert pipelines.save_version(admin, shop, definition()).number == 2
    assert len(calls) == 3


def test_a_number_taken_twice_is_a_conflict_and_writes_nothing(shop, rows, admin, monkeypatch):
    pipelines.save_version(admin, shop, definition())
    monkeypatch.setattr(pipelines, "_next_number", lambda project_id: 1)
    audits = _count(AuditEntry)
    with pytest.raises(Conflict, match="saved at the same moment"):
        pipelines.save_version(admin, shop, definition())
    assert _count(PipelineVersion) == 1 and _count(AuditEntry) == audits


def test_a_saved_version_keeps_what_the_catalog_held_and_a_new_save_picks_up_changes(shop, rows, admin):
    first = pipelines.save_version(admin, shop, definition())
    rows["mkdb"].tag, rows["mkdb"].image = "2.0", "nullops/postgres-db"
    rows["db"].env = {"POSTGRES_DB": "changed"}
    rows["db"].ports = [5433]
    rows["db"].health_check = {"type": "tcp", "port": 5433}
    db.session.commit()
    db.session.expire_all()
    kept = db.session.get(PipelineVersion, first.id)
    assert kept.resolved["steps"][1]["tag"] == "1.0"
    assert kept.resolved["steps"][1]["image"] == "nullops/postgres-database"
    assert kept.resolved["steps"][0]["env"]["POSTGRES_DB"] == "app"
    assert kept.resolved["steps"][0]["ports"] == [5432]
    second = pipelines.save_version(admin, shop, definition())
    assert second.resolved["steps"][1]["tag"] == "2.0"
    assert second.resolved["steps"][0]["env"]["POSTGRES_DB"] == "changed"
    assert second.resolved["steps"][0]["ports"] == [5433]


# --- refused definitions ---------------------------------------------------------------------------
def test_a_cycle_is_refused_naming_its_nodes(shop, rows, admin):
    d = _with(lambda d: d["edges"].append({"from": "web", "to": "db"}))
    error = _refused(admin, shop, d)
    assert "cycle through db, mkdb, web" in error.fields["edges"]


def test_a_cycle_names_only_its_own_nodes_not_those_downstream(shop, rows, admin):
    d = definition()
    d["nodes"].append({"id": "cache", "service": "postgres"})
    d["edges"] = [{"from": "mkdb", "to": "web"}, {"from": "web", "to": "mkdb"},
                  {"from": "web", "to": "cache"}, {"from": "db", "to": "mkdb"}]
    assert "cycle through mkdb, web:" in _refused(admin, shop, d).fields["edges"]


@pytest.mark.parametrize("change,field,words", [
    (lambda d: d["nodes"][0].update(service="mysql"), "nodes.db.service", "no service named 'mysql'"),
    (lambda d: d["nodes"][1].update(plugin="nope"), "nodes.mkdb.plugin", "no plugin named 'nope'"),
    (lambda d: d["nodes"][0]["env"].update(X="${secrets.MISSING}"), "nodes.db.env.X",
     "no secret 'MISSING'"),
    (lambda d: d["nodes"][1]["params"].update(size_mb="many"), "nodes.mkdb.params.size_mb",
     "is not of type 'integer'"),
    (lambda d: d["nodes"][1]["params"].pop("host"), "nodes.mkdb.params", "'host' is a required property"),
    (lambda d: d["nodes"][1]["params"].update(extra=1), "nodes.mkdb.params", "'extra' was unexpected"),
    (lambda d: d["nodes"][0]["env"].update(URL="${steps.mkdb.outputs.url}"), "nodes.db.env.URL",
     "does not run before 'db'"),
    (lambda d: d["nodes"][1]["params"].update(host="${steps.mkdb.outputs.url}"),
     "nodes.mkdb.params.host", "does not run before 'mkdb'"),
    (lambda d: d["nodes"][2]["env"].update(X="${steps.nothing.outputs.url}"), "nodes.web.env.X",
     "names no plugin node"),
    (lambda d: d["nodes"][2]["env"].update(X="${steps.db.outputs.url}"), "nodes.web.env.X",
     "names no plugin node"),
    (lambda d: d["nodes"][2]["env"].update(X="${steps.mkdb.url}"), "nodes.web.env.X",
     "write ${steps.mkdb.outputs.KEY}"),
    (lambda d: d["nodes"][2]["env"].update(X="${services.mkdb.host}"), "nodes.web.env.X",
     "names no service node"),
    (lambda d: d["nodes"][2]["env"].update(X="${services.db.name}"), "nodes.web.env.X",
     "host, port and url"),
    (lambda d: d["nodes"][2]["env"].update(X="${secret.DB_PASSWORD}"), "nodes.web.env.X",
     "unknown reference"),
    (lambda d: d["nodes"][2]["env"].update(X="${secrets.DB_PASSWORD.value}"), "nodes.web.env.X",
     "no attributes"),
    (lambda d: d["edges"].append({"from": "db", "to": "ghost"}), "edges[2].to", "no node 'ghost'"),
    (lambda d: d["edges"].append({"from": "db", "to": "db"}), "edges[2]", "cannot depend on itself"),
    (lambda d: d["edges"].append({"from": "db", "to": "mkdb"}), "edges[2]", "repeats the edge db -> mkdb"),
    (lambda d: d["edges"].append({"from": "db", "to": "web", "label": "x"}), "edges[2]",
     "{from: ID, to: ID} and nothing else"),
    (lambda d: d["nodes"].append(dict(d["nodes"][0])), "nodes[3].id", "node ids are unique"),
    (lambda d: d["nodes"][0].update(id="DB_1"), "nodes[0].id", "DNS label"),
    (lambda d: d["nodes"][0].update(id="-db"), "nodes[0].id", "DNS label"),
    (lambda d: d["nodes"][0].update(plugin="postgres-database"), "nodes.db", "not both"),
    (lambda d: d["nodes"][0].pop("service"), "nodes.db", "give either service"),
    (lambda d: d["nodes"][0].update(privileged=True), "nodes.db.privileged", "unknown key"),
    (lambda d: d["nodes"][0].update(params={}), "nodes.db.params", "services take env"),
    (lambda d: d["nodes"][1].update(env={"A": "b"}), "nodes.mkdb.env", "plugins take params"),
    (lambda d: d["nodes"][0]["env"].update({"1BAD": "x"}), "nodes.db.env.1BAD", "not starting with a digit"),
    (lambda d: d["nodes"][0]["env"].update(PORT=5432), "nodes.db.env.PORT", "must be text"),
    (lambda d: d["nodes"][2].update(position={"x": 1}), "nodes.web.position", "{x: number, y: number}"),
    (lambda d: d["nodes"][2].update(position={"x": float("nan"), "y": 1}), "nodes[2].position.x",
     "finite"),
    (lambda d: d["nodes"][0]["env"].update(X="a\x00b"), "nodes[0].env.X", "NUL"),
    (lambda d: d["nodes"][0].update(secret_files={"../pw": "x"}), "nodes.db.secret_files.../pw",
     "/run/secrets/<name>"),
    (lambda d: d["nodes"][0].update(secret_files={"pw": 5}), "nodes.db.secret_files.pw", "must be text"),
    (lambda d: d["nodes"][0].update(secret_files=["pw"]), "nodes.db.secret_files", "file names to text"),
    (lambda d: d["nodes"][1].update(secret_files={"pw": "x"}), "nodes.mkdb.secret_files", "use params"),
    (lambda d: d["nodes"][0].update(secret_files={"pw": "${secrets.NOPE}"}), "nodes.db.secret_files.pw",
     "no secret 'NOPE'"),
    (lambda d: d.update(name="shop"), "name", "nodes and edges only"),
    (lambda d: d.update(nodes=[]), "nodes", "1 to 200 nodes"),
    (lambda d: d.update(edges={"db": "mkdb"}), "edges", "list of at most"),
])
def test_a_bad_definition_is_refused_naming_the_field_and_writes_nothing(shop, rows, admin, change,
                                                                          field, words):
    d = definition()
    change(d)
    error = _refused(admin, shop, d)
    assert field in error.fields, error.fields
    assert words in error.fields[field]
    assert field in error.message or len(error.fields) > 1


def test_every_problem_of_a_stage_is_named_at_once(shop, rows, admin):
    d = definition()
    d["nodes"][0]["env"]["A"] = "${secrets.NOPE}"
    d["nodes"][1]["params"]["size_mb"] = 0
    error = _refused(admin, shop, d)
    assert set(error.fields) == {"nodes.db.env.A", "nodes.mkdb.params.size_mb"}
    assert "and 1 more problem" in error.message


def test_a_reference_in_the_catalogs_env_is_checked_too(shop, rows, admin):
    rows["db"].env = {"ADMIN_PASSWORD": "${secrets.ADMIN_PASSWORD}"}
    db.session.commit()
    error = _refused(admin, shop, definition())
    assert "from service 'postgres' in the catalog" in error.fields["nodes.db.env.ADMIN_PASSWORD"]


def test_the_port_of_a_service_without_ports_is_refused(shop, rows, admin):
    rows["db"].ports, rows["db"].health_check = [], None
    db.session.commit()
    d = _with(lambda d: d["nodes"][1]["params"].update(host="${services.db.port}"))
    assert "listens on no port" in _refused(admin, shop, d).fields["nodes.mkdb.params.host"]


def test_a_reference_string_validates_as_a_string_against_the_params_schema(shop, rows, admin):
    d = _with(lambda d: d["nodes"][1]["params"].update(size_mb="${secrets.DB_PASSWORD}"))
    assert "is not of type 'integer'" in _refused(admin, shop, d).fields["nodes.mkdb.params.size_mb"]


def test_a_catalog_entry_the_agent_would_refuse_is_refused_at_save(shop, rows, admin):
    rows["db"].health_check = {"type": "http", "port": 5432, "path": "no-slash"}
    db.session.commit()
    error = _refused(admin, shop, definition())
    assert "agent would refuse" in error.message and "path must start with '/'" in error.message
    assert "nodes.db" in error.fields


def test_a_pinned_service_without_a_tag_is_refused(shop, rows, admin):
    rows["db"].tag = None
    db.session.commit()
    assert "pinned but has no tag" in _refused(admin, shop, definition()).fields["nodes.db.service"]


def test_a_plugin_with_a_broken_params_schema_is_named(shop, rows, admin):
    rows["mkdb"].params_schema = {"type": "no-such-type"}
    db.session.commit()
    assert "not a usable JSON Schema" in _refused(admin, shop, definition()).fields["nodes.mkdb.params"]


def test_a_remote_ref_in_a_params_schema_is_never_fetched(shop, rows, admin):
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"type": "object"}')

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rows["mkdb"].params_schema = {"$ref": f"http://127.0.0.1:{server.server_address[1]}/schema.json"}
        db.session.commit()
        assert "not a usable JSON Schema" in _refused(admin, shop, definition()).fields["nodes.mkdb.params"]
    finally:
        server.shutdown()
        server.server_close()
    assert requests == []


def test_a_local_ref_in_a_params_schema_works(shop, rows, admin):
    rows["mkdb"].params_schema = {"$defs": {"text": {"type": "string"}}, "type": "object",
                                  "properties": {"host": {"$ref": "#/$defs/text"}}}
    db.session.commit()
    assert pipelines.save_version(admin, shop, definition()).number == 1
    d = _with(lambda d: d["nodes"][1]["params"].update(host=5))
    assert "is not of type 'string'" in _refused(admin, shop, d).fields["nodes.mkdb.params.host"]


@pytest.mark.parametrize("comment", ["x" * 501, 5, "a\x00b"])
def test_a_bad_comment_is_refused(shop, rows, admin, comment):
    assert "comment" in _refused(admin, shop, definition(), comment).fields


def test_shell_metacharacters_are_stored_as_plain_data(shop, rows, admin):
    nasty = "$(rm -rf /); `id` | cat\n-x"
    d = _with(lambda d: d["nodes"][0]["env"].update(NASTY=nasty))
    d["nodes"][1]["params"]["password"] = nasty
    version = pipelines.save_version(admin, shop, d, comment=nasty)
    db.session.expire_all()
    assert db.session.get(PipelineVersion, version.id).resolved["steps"][0]["env"]["NASTY"] == nasty
    assert version.comment == nasty


def test_an_oversized_definition_is_refused(shop, rows, admin):
    d = _with(lambda d: d["nodes"][0]["env"].update(BIG="x" * (300 * 1024)))
    with pytest.raises(TooLarge):
        pipelines.save_version(admin, shop, d)
    assert _count(PipelineVersion) == 0


# --- diff ----------------------------------------------------------------------------------------
def test_diff_lists_nodes_edges_and_field_changes_but_not_positions(shop, rows, admin):
    first = pipelines.save_version(admin, shop, definition())
    d = definition()
    d["nodes"][2]["env"]["PUBLIC_URL"] = "https://shop.example.com"
    d["nodes"][2]["position"] = {"x": 999, "y": 0}
    d["nodes"].append({"id": "cache", "service": "postgres"})
    d["edges"] = [{"from": "db", "to": "mkdb"}, {"from": "db", "to": "web"}, {"from": "mkdb", "to": "web"}]
    second = pipelines.save_version(admin, shop, d)
    result = pipeline_diff.diff(second, first)
    assert result["number"] == 2 and result["against"] == 1
    assert result["nodes"]["added"] == ["cache"] and result["nodes"]["removed"] == []
    [web] = result["nodes"]["changed"]
    change = {"field": "env.PUBLIC_URL", "before": "${services.web.url}", "after": "https://shop.example.com"}
    assert web["id"] == "web" and web["definition"] == [change]
    assert web["resolved"] == [change]
    assert result["edges"] == {"added": [{"from": "db", "to": "web"}], "removed": []}
    back = pipeline_diff.diff(first, second)
    assert back["nodes"]["removed"] == ["cache"] and back["edges"]["removed"] == [{"from": "db", "to": "web"}]


def test_diff_shows_a_plugin_tag_pinned_differently(shop, rows, admin):
    first = pipelines.save_version(admin, shop, definition())
    rows["mkdb"].tag = "1.1"
    db.session.commit()
    second = pipelines.save_version(admin, shop, definition())
    [mkdb] = pipeline_diff.diff(second, first)["nodes"]["changed"]
    assert mkdb == {"id": "mkdb", "definition": [],
                    "resolved": [{"field": "tag", "before": "1.0", "after": "1.1"}]}


def test_the_first_version_diffs_against_an_empty_pipeline(shop, rows, admin):
    result = pipeline_diff.diff(pipelines.save_version(admin, shop, definition()))
    assert result["against"] is None and result["nodes"]["added"] == ["db", "mkdb", "web"]
    assert len(result["edges"]["added"]) == 2


# --- YAML ----------------------------------------------------------------------------------------
TRICKY = ["yes", "on", "1.0", "0123", "null", "~", "- x", "# not a comment", "a: b", "'quoted'",
          '"double"', "multi\nline\n", "tab\there", " leading space", "trailing ", "\u2028sep",
          "émoji 🚀", "2024-01-01", "${secrets.DB_PASSWORD}", "$(rm -rf /)", "`id`", "a;b|c",
          "a\n  indented\n", "trailing space \nx", "\nleading newline", "x\n\n\n", "a\r\nb", "x\n ",
          "  \n", "tab\n\tstart", "no final newline\nx"]


def test_export_then_import_gives_the_same_definition(shop, rows, admin):
    d = definition()
    d["nodes"][2]["env"].update({f"TRICKY_{i}": value for i, value in enumerate(TRICKY)})
    d["nodes"][1]["params"]["size_mb"] = 10
    d["nodes"][2]["position"] = {"x": 12.5, "y": -3}
    first = pipelines.save_version(admin, shop, d, "with\nnewlines \x07 in the comment")
    text = pipeline_yaml.export_yaml(first)
    assert text.startswith("# NullOps pipeline of project shop, version 1\n# saved by admin at ")
    second = pipeline_yaml.import_yaml(admin, shop, text.encode())
    assert second.number == 2 and second.definition == first.definition
    assert second.comment == ""
    assert "# with\n# newlines   in the comment\nnodes:" in text  # the bell is not printable

    def body(exported):
        return [line for line in exported.splitlines() if not line.startswith("#")]

    assert body(pipeline_yaml.export_yaml(second)) == body(text)


def test_export_has_a_stable_readable_key_order(shop, rows, admin):
    d = definition()
    d["nodes"][2] = {"position": {"y": 40, "x": 120}, "env": {"B": "2", "A": "1"}, "service": "shop-web",
                     "id": "web"}
    text = pipeline_yaml.export_yaml(pipelines.save_version(admin, shop, d))
    web = text[text.index("- id: web"):]
    assert web.index("service:") < web.index("env:") < web.index("position:")
    assert web.index("A: '1'") < web.index("B: '2'") and web.index("x: 120") < web.index("y: 40")
    assert text.index("nodes:") < text.index("edges:")
    assert yaml.safe_load(text)["edges"][0] == {"from": "db", "to": "mkdb"}


def test_import_takes_the_comment_key(shop, rows, admin):
    text = yaml.safe_dump({"comment": "from git", **definition()})
    version = pipeline_yaml.import_yaml(admin, shop, text.encode())
    assert version.comment == "from git" and version.definition == definition()
    entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "pipeline.save"))
    assert entry.details["via"] == "import"


@pytest.mark.parametrize("text,words", [
    ("nodes:\n  - id: db\n    service: [postgres\n", "from line 3"),
    ("nodes:\n- id: db\n  service: postgres\n  service: mysql\n", "repeats the key 'service' at line 4"),
    ("- just\n- a list\n", "must be a map"),
    ("", "must be a map"),
    ("nodes: []\n\x07\n", "line 2"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n", "too large"),
    ("nodes: &n [*n]\n", "too large"),
    ("nodes:\n- id: db\n  service: postgres\n  env: {BUILT: 2024-01-01}\n", "quote it"),
    ("[" * 5000, "could not be read"),
])
def test_bad_yaml_is_refused_with_the_line_and_writes_nothing(shop, rows, admin, text, words):
    with pytest.raises(ValidationFailed) as caught:
        pipeline_yaml.import_yaml(admin, shop, text.encode())
    assert words in caught.value.message or words in str(caught.value.fields)
    assert _count(PipelineVersion) == 0


def test_yaml_that_is_not_utf8_or_too_large_is_refused(shop, rows, admin):
    with pytest.raises(ValidationFailed, match="not UTF-8"):
        pipeline_yaml.import_yaml(admin, shop, "nodes: ä".encode("latin-1"))
    with pytest.raises(TooLarge):
        pipeline_yaml.import_yaml(admin, shop, b"#" * (256 * 1024 + 1))


def test_an_imported_definition_is_checked_like_a_saved_one(shop, rows, admin):
    d = copy.deepcopy(definition())
    d["edges"].append({"from": "web", "to": "db"})
    with pytest.raises(ValidationFailed, match="cycle"):
        pipeline_yaml.import_yaml(admin, shop, yaml.safe_dump(d).encode())
    assert _count(PipelineVersion) == 0


# --- issue 18 item 1: a node's own limits within the project's ----------------------------------
def test_nodes_may_declare_their_own_limits_and_the_spec_carries_them(shop, rows, admin):
    shop.cpus, shop.memory_mb = 2.0, 2048
    db.session.commit()

    def own(d):
        d["nodes"][0].update(cpus=1, memory_mb=1024)      # db
        d["nodes"][1].update(memory_mb=128)               # mkdb, a plugin: its catalog's 256 no more
    version = pipelines.save_version(admin, shop, _with(own))
    db_step, mkdb, web = version.resolved["steps"]
    assert (db_step["cpus"], db_step["memory_mb"]) == (1.0, 1024)
    assert (mkdb["cpus"], mkdb["memory_mb"]) == (0.5, 128)
    assert "cpus" not in web and "memory_mb" not in web     # shares what db leaves
    assert version.definition["nodes"][0]["cpus"] == 1
    environment = type("Env", (), {"name": "staging", "base_domain": "example.com"})()
    deployment = type("Dep", (), {"pipeline_version": version, "tags": {"db": "15", "web": "v1.4"},
                                  "agent_id": "dep-7", "name": "shop-1", "cpus": 2.0,
                                  "memory_mb": 2048, "environment": environment})()
    spec = validate(compile_spec(deployment))
    assert [(s.get("cpus"), s.get("memory_mb")) for s in spec["steps"]] == [
        (1.0, 1024), (0.5, 128), (None, None)]
    assert "  cpus: 1\n  memory_mb: 1024\n" in pipeline_yaml.export_yaml(version)


def test_own_limits_beyond_the_projects_are_refused_with_the_numbers(shop, rows, admin):
    def too_much(d):
        d["nodes"][0].update(cpus=1.5)                    # the project has 1 CPU, 1024 MB
        d["nodes"][2].update(memory_mb=700)
        d["nodes"][0].update(memory_mb=400)
    error = _refused(admin, shop, _with(too_much))
    assert error.fields["nodes.db.cpus"] == (
        "1.5 CPUs is more than project shop's limit of 1 CPU per deployment: lower it or raise "
        "the project's limit")
    assert error.fields["nodes.memory_mb"] == (
        "the services' own memory_mb add up to 1100 MB (db 400, web 700), more than project "
        "shop's limit of 1024 MB per deployment")
    for key, bad in (("cpus", 0), ("cpus", -1), ("cpus", True), ("cpus", "1"), ("cpus", 300),
                     ("memory_mb", 1.5), ("memory_mb", 2)):
        refused = _refused(admin, shop, _with(lambda d, k=key, b=bad: d["nodes"][0].update({k: b})))
        assert f"nodes.db.{key}" in refused.fields


def test_lowering_a_projects_limits_below_its_latest_version_is_refused_with_the_numbers(shop, rows, admin):
    pipelines.save_version(admin, shop, _with(lambda d: d["nodes"][0].update(memory_mb=400)))
    pipelines.save_version(admin, shop, _with(lambda d: d["nodes"][0].update(cpus=0.5, memory_mb=300)))
    with pytest.raises(ValidationFailed) as caught:
        catalog.update(admin, shop, memory_mb=256)
    db.session.rollback()
    assert str(caught.value) == (
        "project shop's new limits would not hold its latest pipeline version 2, which new "
        "deployments get: nodes.db.memory_mb: 300 MB is more than project shop's limit of 256 MB "
        "per deployment: lower it or raise the project's limit. Save a pipeline version within "
        "1 CPU and 256 MB first")
    assert set(caught.value.fields) == {"memory_mb"}
    assert db.session.get(Project, shop.id).memory_mb == 1024
    # Version 1's 400 MB is not asked about: new deployments get version 2.
    catalog.update(admin, shop, memory_mb=300, cpus=0.5)
    assert (shop.cpus, shop.memory_mb) == (0.5, 300)
