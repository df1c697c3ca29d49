"""Settings, the verifier rules, the certificate and the store, without a server."""
import ipaddress
import json
import stat

import pytest

from agent import protocol, tls
from agent.config import ConfigError, HelpRequested, load_settings, resolve_node_id
from agent.credentials import Credentials, CredentialsError
from agent.redaction import redact
from agent.store import EventHub, Store

from .support import OTHER_TOKEN, TOKEN


def test_settings_come_from_arguments_then_environment_then_defaults():
    settings = load_settings([], {})
    assert (str(settings.data_dir), settings.host, settings.port, settings.node_id, settings.token,
            settings.subnet_pool, settings.publish_host, settings.stop_grace) == (
        "/data", "0.0.0.0", 5000, None, None, ipaddress.ip_network("10.240.0.0/12"), "0.0.0.0", 2)
    env = {"AGENT_DATA_DIR": "/srv/a", "AGENT_NODE_ID": "n1", "AGENT_TOKEN": TOKEN, "AGENT_PORT": "6000"}
    settings = load_settings(["--port", "7000", "--stop-grace", "5"], env)
    assert (str(settings.data_dir), settings.node_id, settings.port, settings.stop_grace) == (
        "/srv/a", "n1", 7000, 5)
    assert TOKEN not in repr(settings)


def test_deployment_cgroups_are_auto_unless_set_and_a_bad_value_is_named():
    assert load_settings([], {}).deployment_cgroups == "auto"
    assert load_settings([], {"AGENT_DEPLOYMENT_CGROUPS": "On"}).deployment_cgroups == "on"
    argument_wins = load_settings(["--deployment-cgroups", "off"], {"AGENT_DEPLOYMENT_CGROUPS": "on"})
    assert argument_wins.deployment_cgroups == "off"
    with pytest.raises(ConfigError, match="AGENT_DEPLOYMENT_CGROUPS must be auto, on or off"):
        load_settings([], {"AGENT_DEPLOYMENT_CGROUPS": "yes"})


def test_network_isolation_is_on_unless_turned_off_and_allowed_ranges_are_parsed():
    settings = load_settings([], {})
    assert settings.network_isolation is True and settings.egress_allow == ()
    assert load_settings([], {"AGENT_NETWORK_ISOLATION": "off"}).network_isolation is False
    allowed = load_settings(["--egress-allow", "10.1.0.0/16, 192.168.5.7"], {}).egress_allow
    assert allowed == (ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("192.168.5.7/32"))


def test_published_ports_open_to_the_link_peer_by_default_or_to_the_listed_ranges():
    """Issue 17 item 1: who besides the node may reach published ports (agent/netguard.py)."""
    settings = load_settings([], {})
    assert settings.ingress_link is True and settings.ingress_from == ()
    settings = load_settings([], {"AGENT_INGRESS_FROM": "203.0.113.10, link"})
    assert settings.ingress_link and settings.ingress_from == (ipaddress.ip_network("203.0.113.10/32"),)
    settings = load_settings(["--ingress-from", "203.0.113.0/28"], {"AGENT_INGRESS_FROM": "link"})
    assert not settings.ingress_link and settings.ingress_from == (ipaddress.ip_network("203.0.113.0/28"),)
    for bad in ("", " , ", "caddy.example.com", "2001:db8::1"):
        with pytest.raises(ConfigError, match="--ingress-from"):
            load_settings(["--ingress-from", bad], {})


def test_ports_are_published_where_the_agent_listens_unless_that_is_every_address():
    """Issue 17 item 1: the address the control plane (and so Caddy) reaches the node on."""
    assert load_settings(["--host", "10.0.0.5"], {}).publish_host == "10.0.0.5"
    assert load_settings(["--host", "127.0.0.1"], {}).publish_host == "127.0.0.1"
    assert load_settings(["--host", "::"], {}).publish_host == "0.0.0.0"
    assert load_settings(["--host", "node-1.internal"], {}).publish_host == "0.0.0.0"
    given = load_settings(["--host", "10.0.0.5"], {"AGENT_PUBLISH_HOST": "10.0.0.6"})
    assert given.publish_host == "10.0.0.6"


def test_the_token_is_never_an_argument():
    with pytest.raises(ConfigError, match="unrecognized arguments: --token"):
        load_settings(["--token", TOKEN], {})


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "x"], "--port must be a whole number, not 'x'"),
    (["--port", "65536"], "--port must be from 0 to 65535"),
    (["--subnet-pool", "10.240.0.1/12"], "--subnet-pool: 10.240.0.1/12 has host bits set"),
    (["--subnet-pool", "8.8.0.0/16"], "must be a private IPv4 range"),
    (["--publish-host", "everywhere"], "--publish-host must be an IP address"),
    (["--stop-grace", "1.5"], "--stop-grace must be a whole number"),
    (["--node-id", "has space"], "--node-id must be 1-63 letters"),
    (["--log-level", "loud"], "--log-level must be one of"),
    (["--network-isolation", "maybe"], "--network-isolation must be on or off"),
    (["--egress-allow", "10.0.0.0/8,lan"], "--egress-allow must be IPv4 addresses or ranges"),
    (["--egress-allow", "fd00::/8"], "--egress-allow takes IPv4 ranges only"),
])
def test_bad_settings_are_named_in_the_error(args, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_settings(args, {})


def test_help_is_not_an_exit():
    with pytest.raises(HelpRequested) as asked:
        load_settings(["--help"], {})
    assert "AGENT_TOKEN" in asked.value.text


def test_node_id_is_made_once_and_kept(tmp_path):
    store = Store.open(tmp_path)
    first, _ = resolve_node_id(load_settings([], {}), store)
    again, warning = resolve_node_id(load_settings([], {}), store)
    assert first.node_id == again.node_id and first.node_id.startswith("node-") and warning is None
    chosen, warning = resolve_node_id(load_settings(["--node-id", "edge-1"], {}), store)
    assert chosen.node_id == "edge-1" and "changed" in warning
    store.close()


def test_verifier_rules(tmp_path):
    with pytest.raises(CredentialsError, match="AGENT_TOKEN is not set"):
        Credentials.load(tmp_path, None)
    creds = Credentials.load(tmp_path, TOKEN)
    assert creds.verifier == protocol.verifier_for(TOKEN)
    rotated = protocol.verifier_for(OTHER_TOKEN)
    creds.rotate(rotated)
    assert Credentials.load(tmp_path, TOKEN).verifier == rotated      # same env token: rotation holds
    assert Credentials.load(tmp_path, None).verifier == rotated       # no env token: stored one
    assert Credentials.load(tmp_path, "typed-by-admin").verifier == protocol.verifier_for("typed-by-admin")
    stored = json.loads((tmp_path / "agent.verifier").read_text())
    assert set(stored) == {"verifier", "token_fingerprint"}
    assert stored["token_fingerprint"] != protocol.verifier_for("typed-by-admin")
    assert stat.S_IMODE((tmp_path / "agent.verifier").stat().st_mode) == 0o600
    with pytest.raises(ValueError):
        creds.rotate("ABC")
    (tmp_path / "agent.verifier").write_text("{")
    with pytest.raises(CredentialsError, match="is damaged"):
        Credentials.load(tmp_path, TOKEN)


def test_certificate_is_made_once_with_a_private_key(tmp_path):
    cert_path, key_path, pem = tls.ensure_certificate(tmp_path, hostname="node1.example")
    assert tls.ensure_certificate(tmp_path)[2] == pem
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "node1.example" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days >= 3650
    assert len(tls.thumbprint(pem)) == 64 and tls.thumbprint(pem) == tls.thumbprint(pem.decode())
    key_path.unlink()  # a lone certificate is replaced
    assert tls.ensure_certificate(tmp_path)[2] != pem


def test_store_survives_a_restart(tmp_path):
    store = Store.open(tmp_path)
    hub = EventHub(store)
    store.put_deployment("shop-1", {"deployment_id": "shop-1", "env": "${secrets.DB}"}, "deploying")
    store.create_run("run-1", "shop-1", "apply")
    store.set_step("run-1", "db", "pending")
    store.set_step("run-1", "web", "pending")
    store.set_step("run-1", "db", "running")
    store.set_step("run-1", "db", "done", "up")
    store.append_step_logs("run-1", "db", ["starting", "password is s3cret-value"], ["s3cret-value"])
    hub.publish("run.progress", {"run_id": "run-1"})
    hub.publish("run.progress", {"run_id": "run-1", "n": 2})
    store.ack_events(1)
    store.close()

    store = Store.open(tmp_path)
    assert store.get_deployment("shop-1")["spec"]["env"] == "${secrets.DB}"
    run = store.get_run("run-1")
    assert [(s["step_id"], s["status"], s["message"]) for s in run["steps"]] == [
        ("db", "done", "up"), ("web", "pending", None)]
    assert run["steps"][0]["finished_at"] and run["steps"][1]["started_at"] is None
    assert [r["run_id"] for r in store.runs_in_state("running")] == ["run-1"]
    assert store.step_logs("run-1", "db") == ["starting", "password is [redacted]"]
    assert store.step_logs("run-1", "db", tail=1) == ["password is [redacted]"]
    assert [e["seq"] for e in store.events_after(0)] == [2]
    # Seqs are never reused, even after every event was acknowledged.
    store.ack_events(2)
    assert store.append_event("resources", {}) == 3
    store.finish_run("run-1", "succeeded")
    assert store.runs_in_state("running") == []
    assert store.delete_deployment("shop-1") and store.get_deployment("shop-1") is None
    assert store.get_run("run-1")["status"] == "succeeded"
    store.close()
    assert b"s3cret-value" not in b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())


def test_redact_replaces_whole_values_longest_first():
    assert redact("pw=abc123 and abc", ["abc", "abc123", ""]) == "pw=[redacted] and [redacted]"


def test_a_store_an_older_agent_wrote_is_upgraded_in_place(tmp_path):
    import sqlite3

    from agent import store as store_module

    db = sqlite3.connect(tmp_path / store_module.DB_FILE)
    db.executescript(store_module._SCHEMA + "PRAGMA user_version=1;")  # as schema 1 was
    db.execute("INSERT INTO deployments VALUES ('shop-1', '{}', 'ready', NULL, '2026-12-01T00:00:00.000Z')")
    db.commit()
    db.close()
    store = Store.open(tmp_path)
    assert store.get_deployment("shop-1")["status"] == "ready"
    store.put_output("shop-1", "mkdb", "sealed-bytes")
    assert store.sealed_outputs("shop-1") == {"mkdb": "sealed-bytes"}
    assert store.get_meta("x") is None and store._one("PRAGMA user_version")[0] == store_module.SCHEMA_VERSION
    store.close()
    Store.open(tmp_path).close()  # opening again changes nothing


def test_a_run_that_starts_during_a_reconcile_round_is_not_taken_for_an_orphan(tmp_path):
    """The round's list of runs was taken before the engine's listing: a deployment whose run
    started in between had its first container force-removed (seen under load: PostgreSQL
    killed with code 137 before it was ready)."""
    from agent.config import Settings
    from agent.secret_files import SecretFiles
    from agent.service import AgentService

    class Engine:
        torn_down = []
        secret_files = SecretFiles(None, "n1")  # no secret files folder: nothing to sweep

        def deployment_ids(self):
            service.active["dep-new"] = object()   # its run registered, its container made
            return {"dep-new", "dep-gone"}

        def remove_orphans(self, active_ids):
            from agent.docker_exec import Executor
            return Executor.remove_orphans(self, active_ids)

        def teardown(self, deployment_id, graceful):
            self.torn_down.append(deployment_id)

    store = Store.open(tmp_path)
    try:
        service = AgentService(Settings(data_dir=tmp_path, node_id="n1"), store, EventHub(store),
                               None, executor=Engine())
        service.reconcile()
        assert Engine.torn_down == ["dep-gone"]
    finally:
        store.close()
