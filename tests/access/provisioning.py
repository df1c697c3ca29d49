"""Matrix rows for provisioning over SSH (issue 16; see tests/access/__init__.py): admin
business only. Readers and writers of the environment see its nodes (403 on these), others get
404; runs are hidden from everyone but admins."""
from app.extensions import db
from app.services import onboarding

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"


def _on_target(status):
    return {"anonymous": 401, "outsider": 404, "reader": 403, "writer": 403, "admin": status}


HIDDEN = {"anonymous": 401, "outsider": 404, "reader": 404, "writer": 404, "admin": 200}
ROWS = {
    ("POST", "/api/v1/environments/<int:environment_id>/nodes/provision"): (
        "/api/v1/environments/{environment}/nodes/provision",
        {"name": "node-9", "host": "10.0.0.9",
         "ssh": {"host": "10.0.0.9", "user": "admin", "private_key": KEY}}, _on_target(201)),
    ("POST", "/api/v1/environments/<int:environment_id>/upgrade-agents"): (
        "/api/v1/environments/{environment}/upgrade-agents", None, _on_target(201)),
    ("POST", "/api/v1/nodes/<int:node_id>/provision/retry"): (
        "/api/v1/nodes/{failed_node}/provision/retry", None, _on_target(201)),
    ("POST", "/api/v1/nodes/<int:node_id>/decommission"): (
        "/api/v1/nodes/{ssh_node}/decommission", None, _on_target(201)),
    ("GET", "/api/v1/nodes/<int:node_id>/provisioning-runs"): (
        "/api/v1/nodes/{failed_node}/provisioning-runs", None, _on_target(200)),
    ("GET", "/api/v1/provisioning-runs/<int:run_id>"): ("/api/v1/provisioning-runs/{run}", None, HIDDEN),
    ("POST", "/api/v1/provisioning-runs/<int:run_id>/cancel"): (
        "/api/v1/provisioning-runs/{active_run}/cancel", None, HIDDEN),
}


def make_ids(ex, ids):
    ssh = {"host": "10.0.0.7", "user": "admin", "private_key": KEY}
    failed, run = onboarding.add_over_ssh(ex["admin"], ex["environment"], "node-7", "10.0.0.7", 5000, ssh)
    run.status, run.failed_task, run.message = "failed", "Install the engine", "no sudo"
    onboarding.finish(run)
    online, active = onboarding.add_over_ssh(ex["admin"], ex["environment"], "node-8", "10.0.0.8", 5000,
                                             dict(ssh, host="10.0.0.8"))
    active.status = "successful"
    onboarding.finish(active)
    online.status = "online"
    db.session.commit()
    _waiting, pending = onboarding.add_over_ssh(ex["admin"], ex["environment"], "node-6", "10.0.0.6", 5000,
                                                dict(ssh, host="10.0.0.6"))   # not started: cancellable
    return {"failed_node": failed.id, "ssh_node": online.id, "run": run.id, "active_run": pending.id}
