"""Ansible runs on a node's host, through ansible-runner, the way AWX runs them (issue 16;
awx/main/tasks/jobs.py and tasks/callback.py).

This module is the only place that runs Ansible. `request()` (web tier) records a run; the
controller calls `execute()` for it:

- a private run directory (0700) holds the inventory rendered from inventory_templates/ (nothing
  secret in it), the secret extra variables (env/extravars), the SSH key and the known_hosts
  file, each 0600; the whole directory, Ansible's artifacts included, is removed in `finally`,
  so no secret outlives the run on disk;
- the event handler only redacts and buffers (it runs once per Ansible event: keep it cheap);
  events are stored in batches with an increasing counter, and a final `run_end` event marks
  the end; the status handler moves the run; the cancel callback reads the run's
  cancel_requested flag (at most once a second); a timeout ends a run that hangs;
- every string stored (events, the run's message) has each secret of the run replaced whole.

One run per node at a time: a partial unique index on provisioning_runs refuses a second
active run whatever process tries.
"""
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jinja2
from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.extensions import db
from app.models import ProvisioningEvent, ProvisioningRun
from app.models.provisioning import ACTIVE_RUN_STATUSES
from app.models.types import utcnow
from app.services import audit
from app.services.catalog import keyring
from app.services.errors import Conflict, ValidationFailed

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK_DIR = REPO / "playbooks"
ROLES_DIR = REPO / "roles"
INVENTORY_TEMPLATE = REPO / "inventory_templates" / "node.yml.j2"
PLAYBOOKS = {"onboard_node": "onboard_node.yml", "upgrade_agents": "upgrade_agents.yml",
             "decommission_node": "decommission_node.yml"}
SECRETS_CONTEXT = ProvisioningRun.__encrypted__["secrets_ciphertext"]
SSH_PRIVATE_KEY_CONTEXT = "node_ssh.private_key"
SSH_PASSWORD_CONTEXT = "node_ssh.password"
REDACTED = "********"
DEFAULT_TIMEOUT_S = 1800
EVENT_BATCH = 20           # events stored per commit
STDOUT_MAX = 16 * 1024     # characters of one event's output kept
CANCEL_POLL_S = 1.0
# What of an event's data is kept: enough to show a task's outcome, not whole module results.
EVENT_DATA_KEYS = ("play", "task", "task_action", "role", "host", "duration", "ignore_errors")
RESULT_KEYS = ("msg", "changed", "failed", "unreachable", "skipped", "rc", "stderr", "stdout")
# A failed fact gathering says only "The following modules failed to execute: ..."; the reason
# (sudo's refusal, a missing Python) is in each module's own result under failed_modules.
MODULE_RESULT_KEYS = ("msg", "module_stderr", "module_stdout")
FAILED_EVENTS = ("runner_on_failed", "runner_on_unreachable")
RUN_END = "run_end"


class RunError(Exception):
    """A run could not be prepared (its node or SSH access is gone)."""


# --- requests (web tier) -----------------------------------------------------------------------
def request(actor, node, playbook, secrets=None, agent_version=None):
    """Record a run of `playbook` on `node` for the controller; refused while one is active.
    `secrets` (extra variables such as the node token) are stored encrypted until the run ends."""
    if playbook not in PLAYBOOKS:
        raise ValidationFailed(f"playbook is invalid: use one of {', '.join(PLAYBOOKS)}",
                               {"playbook": "unknown"})
    run = ProvisioningRun(node_id=node.id, node_name=node.name, playbook=playbook, status="pending",
                          agent_version=agent_version, message="",
                          created_by_id=getattr(actor, "id", None), cancel_requested=False)
    if secrets:
        run.secrets_ciphertext = keyring().encrypt(json.dumps(secrets), SECRETS_CONTEXT)
    db.session.add(run)
    try:
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        raise Conflict(f"node {node.name} already has a run going on: wait for it to end or cancel it",
                       {"node": "a run is going on"}) from None
    audit.record(actor, f"node.{playbook}", "node", node, {"run": run.id})
    return run


def active_run(node):
    return db.session.scalar(select(ProvisioningRun).where(
        ProvisioningRun.node_id == node.id, ProvisioningRun.status.in_(ACTIVE_RUN_STATUSES)))


def cancel(actor, run):
    if run.status not in ACTIVE_RUN_STATUSES:
        raise Conflict(f"run {run.id} has ended ({run.status})", {"status": run.status})
    run.cancel_requested = True
    audit.record(actor, "provisioning_run.cancel", "provisioning_run", run, None)
    db.session.commit()
    return run


# --- the run (controller) ----------------------------------------------------------------------
def render_inventory(run, node, access):
    """The run's inventory (inventory_templates/node.yml.j2): connection details, nothing secret."""
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    template = environment.from_string(INVENTORY_TEMPLATE.read_text())
    return template.render(
        run_id=run.id, node_name=node.name, ssh_host=access.host, ssh_port=access.port,
        ssh_user=access.user, become=access.become, agent_container_name=node.agent_container_name,
        agent_data_dir=node.agent_data_dir, agent_bind_address=node.agent_bind_address,
        agent_port=node.port)


class Redactor:
    """Replaces every secret of a run, whole, in whatever is stored (AWX build_safe_env)."""

    def __init__(self, secrets):
        values = set()
        for secret in secrets:
            if not secret:
                continue
            values.add(secret)
            # A key or a certificate may come back line by line.
            values.update(line.strip() for line in secret.splitlines() if len(line.strip()) >= 8)
        # Longest first: a secret that contains another is replaced whole.
        self.values = sorted(values, key=len, reverse=True)

    def text(self, value):
        for secret in self.values:
            value = value.replace(secret, REDACTED)
        return value

    def __call__(self, value):
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        return value


def _event_row(run_id, counter, event, redact):
    data = event.get("event_data") or {}
    kept = {key: data[key] for key in EVENT_DATA_KEYS if key in data}
    result = data.get("res")
    if isinstance(result, dict):
        kept["res"] = {key: result[key] for key in RESULT_KEYS if key in result}
        modules = result.get("failed_modules")
        if isinstance(modules, dict):
            kept["res"]["failed_modules"] = {
                str(name): {key: str(module[key])[:2000] for key in MODULE_RESULT_KEYS if module.get(key)}
                for name, module in modules.items() if isinstance(module, dict)}
    kept = json.loads(json.dumps(redact(kept), default=str))
    return ProvisioningEvent(
        run_id=run_id, counter=counter, event=str(event.get("event", "unknown"))[:64],
        task=redact(str(data["task"]))[:255] if data.get("task") else None,
        host=redact(str(data["host"]))[:255] if data.get("host") else None,
        stdout=redact(str(event.get("stdout") or ""))[:STDOUT_MAX], data=kept)


def _failure_message(row):
    """Ansible's own words for a failed task: its message, and each failed module's when the
    task ran several (fact gathering), since the task's message alone does not say why."""
    result = (row.data or {}).get("res", {})
    # A script's or a command's task says only "non-zero return code": its output says why
    # (over SSH with a terminal, the script's stderr arrives in its stdout).
    message = ": ".join(str(result[key]).strip() for key in ("msg", "stdout", "stderr")
                        if str(result.get(key) or "").strip()) or str(row.stdout)
    for name, module in (result.get("failed_modules") or {}).items():
        detail = " ".join(" ".join(str(module[key]).split()) for key in MODULE_RESULT_KEYS if module.get(key))
        if detail:
            message += f" {name}: {detail}"
    return message


class _Run:
    """The handlers of one ansible-runner run. Runs in the controller's thread that called
    execute(); the handlers are called from that same thread."""

    def __init__(self, run, redact, cancel_poll_s, on_end=None):
        self.run_id = run.id
        self.on_end = on_end
        self.redact = redact
        self.counter = 0
        self.buffer = []
        self.failure = None      # (task, message) of the first failed task
        self.cancel_poll_s = cancel_poll_s
        self._cancel_checked = 0.0
        self._cancelled = False

    # Danger zone: called once per Ansible event. Redact, buffer, store in batches.
    def on_event(self, event):
        self.counter += 1
        row = _event_row(self.run_id, self.counter, event, self.redact)
        self.buffer.append(row)
        if row.event in FAILED_EVENTS and self.failure is None and not (row.data or {}).get("ignore_errors"):
            self.failure = (row.task or "?", _failure_message(row)[:2000])
        if len(self.buffer) >= EVENT_BATCH:
            self.flush()
        return True

    def flush(self):
        if self.buffer:
            db.session.add_all(self.buffer)
            self.buffer = []
            db.session.commit()

    def on_status(self, status, runner_config=None):
        if status.get("status") == "running":
            run = db.session.get(ProvisioningRun, self.run_id)
            if run.status == "pending":
                run.status, run.started_at = "running", utcnow()
                db.session.commit()

    def should_cancel(self):
        now = time.monotonic()
        if not self._cancelled and now - self._cancel_checked >= self.cancel_poll_s:
            self._cancel_checked = now
            self._cancelled = bool(db.session.scalar(
                select(ProvisioningRun.cancel_requested).where(ProvisioningRun.id == self.run_id)))
            db.session.commit()   # end the read transaction: the web tier writes the flag
        return self._cancelled

    def end(self, status, rc, message):
        self.flush()
        run = db.session.get(ProvisioningRun, self.run_id)
        run.status, run.rc, run.finished_at = status, rc, utcnow()
        run.secrets_ciphertext = None
        if self.failure is not None and status == "failed":
            run.failed_task = self.failure[0]
            message = f"{self.failure[0]}: {self.failure[1]}"
        run.message = self.redact(message or "")[:4000]
        self.counter += 1
        db.session.add(ProvisioningEvent(run_id=self.run_id, counter=self.counter, event=RUN_END,
                                         stdout=run.message, data={"status": status, "rc": rc}))
        if self.on_end is not None:
            self.on_end(run)   # what the end means for the node, in the same transaction
        db.session.commit()
        return run


def _write(path, text, mode=0o600):
    """A file only the controller's user can read, created with that mode (never wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def execute(run_id, timeout_s=DEFAULT_TIMEOUT_S, extra_envvars=None, cancel_poll_s=CANCEL_POLL_S,
            on_end=None):
    """Run a pending run to its end; returns the run. The caller (the controller) makes sure one
    process executes a given run (it moved it from pending). `on_end(run)` is called before the
    run's end is committed, so its changes land with it."""
    import ansible_runner  # imported here: only the controller runs Ansible

    run = db.session.get(ProvisioningRun, run_id)
    node = run.node if run.node_id is not None else None
    access = node.ssh_access if node is not None else None
    secrets = json.loads(keyring().decrypt(run.secrets_ciphertext, SECRETS_CONTEXT)) \
        if run.secrets_ciphertext else {}
    key = keyring().decrypt(access.private_key_ciphertext, SSH_PRIVATE_KEY_CONTEXT) \
        if access is not None and access.private_key_ciphertext else None
    password = keyring().decrypt(access.password_ciphertext, SSH_PASSWORD_CONTEXT) \
        if access is not None and access.password_ciphertext else None
    redact = Redactor([*(str(v) for v in secrets.values()), key, password])
    handlers = _Run(run, redact, cancel_poll_s, on_end)
    if node is None or access is None:
        return handlers.end("failed", None, "the node or its SSH access is gone")

    private = Path(tempfile.mkdtemp(prefix=f"nullops-run-{run.id}-"))   # 0700
    try:
        os.chmod(private, 0o700)
        (private / "env").mkdir(mode=0o700)
        (private / "inventory").mkdir(mode=0o700)
        _write(private / "inventory" / "hosts.yml", render_inventory(run, node, access))
        config = current_app.config
        extravars = {"nullops_agent_image": config.get("NULLOPS_AGENT_IMAGE", "nullops/agent"),
                     "nullops_agent_image_source": config.get("NULLOPS_AGENT_IMAGE_SOURCE", "registry"),
                     "nullops_agent_image_archive": config.get("NULLOPS_AGENT_IMAGE_ARCHIVE", ""),
                     **secrets}
        if run.agent_version:
            extravars["nullops_agent_version"] = run.agent_version
        if run.playbook == "upgrade_agents":
            # As nullops_upgrade_*: extra variables outrank all, and the playbook's rescue must
            # set the role's variables back to what the node ran (playbooks/upgrade_agents.yml).
            extravars = {key.replace("nullops_agent_", "nullops_upgrade_", 1): value
                         for key, value in extravars.items()}
        if password:
            extravars["ansible_password"] = password
            extravars["ansible_become_password"] = password
        _write(private / "env" / "extravars", json.dumps(extravars))
        known_hosts = private / "known_hosts"
        _write(known_hosts, access.known_hosts or "")
        ssh_args = [f"-o UserKnownHostsFile={known_hosts}", "-o StrictHostKeyChecking=accept-new",
                    "-o ControlMaster=auto", "-o ControlPersist=60s",
                    f"-o ControlPath={private}/cp-%C"]
        cmdline = ""
        if key:
            _write(private / "ssh_key", key if key.endswith("\n") else key + "\n")
            cmdline = f"--private-key {private / 'ssh_key'}"
        venv_bin = str(Path(sys.executable).parent)
        envvars = {
            # ansible-playbook from this venv (NOTES.md: else rc 127, "not found").
            "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": str(ROLES_DIR),
            "ANSIBLE_SSH_ARGS": " ".join(ssh_args),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            **(extra_envvars or {}),
        }
        result = ansible_runner.run(
            private_data_dir=str(private), project_dir=str(PLAYBOOK_DIR), playbook=PLAYBOOKS[run.playbook],
            inventory=str(private / "inventory" / "hosts.yml"), envvars=envvars, cmdline=cmdline or None,
            event_handler=handlers.on_event, status_handler=handlers.on_status,
            cancel_callback=handlers.should_cancel, timeout=timeout_s, quiet=True, rotate_artifacts=1,
            ident="run")
        status = {"successful": "successful", "canceled": "canceled", "timeout": "timeout"}.get(
            result.status, "failed")
        message = {"successful": "", "canceled": "canceled by an admin",
                   "timeout": f"ended after {timeout_s} s (timeout)"}.get(status, "")
        if status == "failed" and not handlers.failure:
            message = f"ansible-playbook ended with rc {result.rc}: {_tail(result)}"
        learned = known_hosts.read_text()
        if learned and learned != (access.known_hosts or ""):
            access.known_hosts = learned
        return handlers.end(status, result.rc, message)
    except Exception as exc:  # the run must end whatever happened, or the node stays blocked
        db.session.rollback()
        handlers.buffer = []
        return handlers.end("failed", None, f"the run could not be carried out: {exc}")
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _tail(result):
    try:
        return " ".join(result.stdout.read().split()[-60:])
    except (OSError, AttributeError, ValueError):
        return ""
