"""Runs one deployment's pipeline: plan the DAG, execute it with bounded parallelism, roll back
on any failure or cancel. The shape follows docker-compose v1's `parallel.py` (one result per
node, dependents of a failure never start), except that a failure cancels the branches still
running: the whole run is rolled back anyway, so finishing them only costs time.

Secrets and resolved environments live in this object's memory only; step outputs too, and on
disk sealed (agent/sealed.py).
"""
import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from agent import protocol, readiness
from agent.errors import AgentError, Cancelled
from agent.plugins import run_plugin
from agent.redaction import redact
from agent.sealed import SealError, seal, unseal
from agent.spec import (
    SpecError,
    ancestors,
    levels,
    references,
    resolve,
    service_address,
    topological_order,
)

log = logging.getLogger("nullops.agent.pipeline")

# Run and step states, written down once (docs/protocol.md lists them for the control plane).
RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
CANCELLED, INTERRUPTED = "cancelled", "interrupted"
STEP_PENDING, STEP_RUNNING, STEP_DONE, STEP_FAILED = "pending", "running", "done", "failed"
STEP_SKIPPED, STEP_CANCELLED = "skipped", "cancelled"
# Deployment states as the agent reports them.
DEPLOYING, READY, DEPLOY_FAILED, DELETING, DELETED, DEGRADED = (
    "deploying", "ready", "failed", "deleting", "deleted", "degraded")


class RunMemory:
    """What a run knows that must never reach disk: secrets, registry credentials, outputs (on
    disk only sealed with `output_key`: agent/sealed.py)."""

    def __init__(self, secrets=None, registries=None, output_key=None):
        self.secrets = dict(secrets or {})
        self.registries = dict(registries or {})
        self.output_key = output_key
        self.outputs = {}
        self.secret_values = {v for v in self.secrets.values() if v}

    def restore_outputs(self, store, deployment_id):
        """Outputs of the deployment's last run from the store, when this memory has none and
        holds the key (after an agent restart, once the control plane sent the key again)."""
        if self.outputs or not self.output_key:
            return
        for step_id, text in store.sealed_outputs(deployment_id).items():
            try:
                self.add_outputs(step_id, unseal(self.output_key, deployment_id, step_id, text))
            except SealError as exc:
                log.warning("%s; the step's outputs are not available", exc)

    def add_outputs(self, step_id, output):
        outputs = {k: v for k, v in output.items() if k != "secret_outputs"}
        self.outputs[step_id] = outputs
        keys = output.get("secret_outputs") or []
        if not isinstance(keys, list):
            # Fail closed (outputs sealed before check_secret_outputs existed): all are secret.
            keys = list(outputs)
        for key in keys:
            if isinstance(key, str) and isinstance(outputs.get(key), str) and outputs[key]:
                self.secret_values.add(outputs[key])

    def redact(self, text):
        return redact(text, self.secret_values)


class PipelineRun:
    def __init__(self, executor, store, hub, spec, memory, run_id, cancel, *, max_parallel=4,
                 readiness_timeout_s=120, owed=None):
        self.executor = executor
        self.store = store
        self.hub = hub
        self.spec = spec
        self.memory = memory
        self.run_id = run_id
        self.cancel = cancel
        self.max_parallel = max_parallel
        self.readiness_timeout_s = readiness_timeout_s
        self.owed = owed  # (spec, step ids): rollbacks an interrupted run left (Store.owe_rollbacks)
        self.deployment_id = spec["deployment_id"]
        self.steps = {s["id"]: s for s in spec["steps"]}
        self.order = topological_order(spec["steps"])
        self.upstream = ancestors(spec["steps"])
        # Teardown order: dependents first, each level stopped in parallel.
        self.stop_order = list(reversed(levels(spec["steps"])))
        self.ports = {}      # service step id -> {container port: host port}
        self.started = []    # plugin steps that ran (for rollback), in start order
        self.state = {}      # step id -> step status of this run
        self._lock = threading.Lock()

    # --- events -----------------------------------------------------------------------------
    def _progress(self, status, step_id=None, step_status=None, message=None):
        data = {"run_id": self.run_id, "deployment_id": self.deployment_id, "status": status}
        if step_id is not None:
            data.update(step_id=step_id, step_status=step_status)
            self.store.set_step(self.run_id, step_id, step_status, message and self.memory.redact(message))
        if message:
            data["message"] = self.memory.redact(message)
        self.hub.publish(protocol.RUN_PROGRESS, data)

    def _step_log(self, step_id, lines):
        if not lines:
            return
        clean = [self.memory.redact(line) for line in lines]
        self.store.append_step_logs(self.run_id, step_id, clean)
        # A plugin's stderr may be megabytes: events of at most the budget each, in order.
        for part in protocol.parts(clean, protocol.EVENT_BUDGET_BYTES - 512):
            self.hub.publish(protocol.STEP_LOG, {"run_id": self.run_id, "deployment_id": self.deployment_id,
                                                 "step_id": step_id, "lines": part})

    def _deployment_status(self, status, message=None, **extra):
        self.store.set_deployment_status(self.deployment_id, status, message)
        data = {"deployment_id": self.deployment_id, "status": status, **extra}
        if message:
            data["message"] = message
        self.hub.publish(protocol.DEPLOYMENT_STATUS, data)

    # --- apply --------------------------------------------------------------------------------
    def apply(self):
        """Bring the deployment up. Returns the run's final status; never raises."""
        started = time.monotonic()
        self._deployment_status(DEPLOYING)
        self._progress(RUNNING, message=f"pipeline version {self.spec.get('pipeline_version')}")
        try:
            self.executor.ensure_network(self.deployment_id)
            if self.owed is not None:
                self._settle_owed_rollbacks()
            self._run_graph()
        except Cancelled:
            self._rollback("cancelled")
            self.store.finish_run(self.run_id, CANCELLED, "cancelled")
            self._progress(CANCELLED, message="cancelled; everything the run created was removed")
            return CANCELLED
        except (AgentError, SpecError) as exc:
            message = self.memory.redact(exc.message)
            self._rollback(message)
            self.store.finish_run(self.run_id, FAILED, message)
            self._deployment_status(DEPLOY_FAILED, message)
            self._progress(FAILED, message=message)
            return FAILED
        except Exception as exc:  # a bug must still roll back and leave nothing behind
            log.exception("run %s crashed", self.run_id)
            message = f"internal error in the agent ({type(exc).__name__}); see the agent log"
            self._rollback(message)
            self.store.finish_run(self.run_id, FAILED, message)
            self._deployment_status(DEPLOY_FAILED, message)
            self._progress(FAILED, message=message)
            return FAILED
        self._remove_stale_services()
        elapsed = time.monotonic() - started
        self.store.finish_run(self.run_id, SUCCEEDED, None)
        self._deployment_status(READY, services=self.services_info())
        self._progress(SUCCEEDED, message=f"ready in {elapsed:.2f}s")
        return SUCCEEDED

    def _remove_stale_services(self):
        """A deployment applied again with a spec that dropped a service: its container goes."""
        wanted = {s["id"] for s in self.spec["steps"] if s["kind"] == "service"}
        stale = sorted(set(self.executor.service_containers(self.deployment_id)) - wanted)
        if stale:
            self.executor.remove_services(self.deployment_id, stale)
            self._progress(RUNNING, message=f"removed services no longer in the spec: {', '.join(stale)}")

    def services_info(self):
        return {step_id: {"ports": {str(k): v for k, v in ports.items()}}
                for step_id, ports in self.ports.items()}

    def _run_graph(self):
        state = self.state
        state.update(dict.fromkeys(self.order, STEP_PENDING))
        for step_id in self.order:
            self.store.set_step(self.run_id, step_id, STEP_PENDING, None)
        failure = failed_step = None
        with ThreadPoolExecutor(max_workers=self.max_parallel, thread_name_prefix="step") as pool:
            running = {}
            while True:
                if failure is None and not self.cancel.is_set():
                    for step_id in self.order:
                        deps = self.steps[step_id].get("depends_on", [])
                        if state[step_id] == STEP_PENDING and all(state[d] == STEP_DONE for d in deps):
                            state[step_id] = STEP_RUNNING
                            self._progress(RUNNING, step_id, STEP_RUNNING)
                            running[pool.submit(self._run_step, step_id)] = step_id
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    step_id = running.pop(future)
                    exc = future.exception()
                    if exc is None:
                        state[step_id] = STEP_DONE
                        self._progress(RUNNING, step_id, STEP_DONE)
                    elif isinstance(exc, Cancelled):
                        state[step_id] = STEP_CANCELLED
                        self._progress(RUNNING, step_id, STEP_CANCELLED)
                    else:
                        state[step_id] = STEP_FAILED
                        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                        self._progress(RUNNING, step_id, STEP_FAILED, f"step {step_id}: {message}")
                        if failure is None:
                            failure, failed_step = exc, step_id
                            # Stop the branches still running: the run is rolled back anyway.
                            self.cancel.set()
            for step_id, status in state.items():
                if status == STEP_PENDING:
                    state[step_id] = STEP_SKIPPED
                    self._progress(RUNNING, step_id, STEP_SKIPPED)
        if failure is not None:
            if isinstance(failure, AgentError | SpecError):
                failure.message = f"step {failed_step}: {failure.message}"
            raise failure
        if self.cancel.is_set():
            raise Cancelled("cancelled")

    def _run_step(self, step_id):
        step = self.steps[step_id]
        if step["kind"] == "service":
            self.run_service(step)
        else:
            self._run_plugin(step, "run")

    def _auth(self, step):
        name = step.get("registry")
        if name is None:
            return None
        if name not in self.memory.registries:
            raise SpecError(f"registry credentials {name!r} were not sent with the run")
        return self.memory.registries[name]

    def run_service(self, step):
        cancel = self.cancel
        self.executor.pull(step["image"], self._auth(step))
        if cancel.is_set():
            raise Cancelled("cancelled")
        env = resolve(step.get("env", {}), self.spec, self.memory.secrets, self.memory.outputs)
        command = resolve(step.get("command"), self.spec, self.memory.secrets, self.memory.outputs)
        files = resolve(step.get("secret_files", {}), self.spec, self.memory.secrets, self.memory.outputs)
        container = self.executor.start_service(self.spec, step, env, command, self.run_id, files=files)
        check = step.get("readiness") or {"type": "running"}
        readiness.wait_ready(self.executor, container, check, cancel=cancel,
                             deadline_s=check.get("timeout_s", self.readiness_timeout_s))
        with self._lock:
            self.ports[step["id"]] = self.executor.published_ports(container)

    def plugin_input(self, step, action):
        referenced = {name for scope, name, *_ in references(step) if scope == "secrets"}
        visible = self.upstream[step["id"]] | ({step["id"]} if action == "rollback" else set())
        return {
            "action": action,
            "deployment": {"id": self.deployment_id, "name": self.spec.get("name", self.deployment_id)},
            "params": resolve(step.get("params", {}), self.spec, self.memory.secrets, self.memory.outputs),
            "secrets": {name: self.memory.secrets[name] for name in referenced},
            "outputs": {sid: out for sid, out in self.memory.outputs.items() if sid in visible},
            "services": {s["id"]: service_address(self.spec, s["id"])
                         for s in self.spec["steps"] if s["kind"] == "service"},
        }

    def _run_plugin(self, step, action):
        # Rollbacks run after a cancel, so they must not see the run's cancel event.
        cancel = self.cancel if action == "run" else threading.Event()
        payload = self.plugin_input(step, action)
        if action == "run":
            with self._lock:
                self.started.append(step["id"])
        try:
            result = run_plugin(self.executor, self.spec, step, payload, run_id=self.run_id,
                                cancel=cancel, action=action, auth=self._auth(step))
        except AgentError as exc:
            self._step_log(step["id"], getattr(exc, "log", None) or [])
            raise
        if action == "run":
            self.memory.add_outputs(step["id"], result.output)
            if self.memory.output_key:  # kept for after a restart, sealed
                sealed = seal(self.memory.output_key, self.deployment_id, step["id"], result.output)
                self.store.put_output(self.deployment_id, step["id"], sealed)
        self._step_log(step["id"], result.log)
        return result

    # --- rollback and delete ------------------------------------------------------------------
    def _rollback(self, reason):
        """Call declared plugin rollbacks (dependents first), then remove every object of the
        deployment by label. Failures here are logged and never stop the cleanup."""
        for step_id in reversed(self.order):
            step = self.steps[step_id]
            if step["kind"] == "plugin" and step.get("rollback") and step_id in self.started:
                # A step that failed may have half-done its work: it is asked to undo it too,
                # but keeps its "failed" status; the outcome goes to its log.
                failed_here = self.state.get(step_id) == STEP_FAILED
                try:
                    if not failed_here:
                        self._progress(RUNNING, step_id, "rolling_back", f"rollback after: {reason}")
                    self._run_plugin(step, "rollback")
                    if failed_here:
                        self._step_log(step_id, ["rollback: done"])
                    else:
                        self._progress(RUNNING, step_id, "rolled_back")
                except Exception as exc:  # noqa: BLE001 - keep cleaning up whatever happens
                    message = f"rollback failed: {getattr(exc, 'message', exc)}"
                    if failed_here:
                        self._step_log(step_id, [message])
                    else:
                        self._progress(RUNNING, step_id, "rollback_failed", message)
        try:
            self.executor.teardown(self.deployment_id, order=self.stop_order, graceful=False)
        except Exception:  # noqa: BLE001 - the periodic reconcile removes what is left
            log.exception("teardown after a failed run of %s", self.deployment_id)

    def _settle_owed_rollbacks(self):
        """Roll back what an interrupted run's plugins made, with the memory this run brought
        (secrets, and the outputs of that run, restored): before this run's steps make anew.
        A failure is logged and the run goes on; the step's own run may reuse what is left."""
        spec, step_ids = self.owed
        earlier = PipelineRun(self.executor, self.store, self.hub, spec, self.memory, self.run_id,
                              threading.Event())
        for step_id in step_ids:
            try:
                earlier._run_plugin(earlier.steps[step_id], "rollback")
                self._step_log(step_id, ["rollback of the run the agent's restart interrupted: done"])
            except Exception as exc:  # noqa: BLE001 - this run goes on
                why = getattr(exc, "message", exc)
                self._step_log(step_id, [self.memory.redact(
                    f"rollback of the run the agent's restart interrupted failed: {why}")])
        self.store.settle_rollbacks(self.deployment_id)
        self.memory.outputs = {}  # this run's steps make their own

    def delete(self, undo=None):
        """Tear a deployment down: plugin rollbacks (with the secrets and outputs memory has;
        `undo` names the steps when not all of them: a failed run rolled back already), then
        stop services dependents first with the short grace, then remove everything by label.
        A rollback that fails fails the run after the teardown: what the plugin made outside
        the node may be left, and the deployment must not be reported deleted (the control
        plane retries the delete, rollbacks included)."""
        self._deployment_status(DELETING)
        self._progress(RUNNING, message="deleting")
        self.started = [s for s in self.order if self.steps[s]["kind"] == "plugin"]
        failed = []
        for step_id in reversed(self.order):
            step = self.steps[step_id]
            if step["kind"] == "plugin" and step.get("rollback") and (undo is None or step_id in undo):
                try:
                    self._run_plugin(step, "rollback")
                except Exception as exc:  # noqa: BLE001 - the other rollbacks and the teardown go on
                    message = self.memory.redact(f"rollback failed: {getattr(exc, 'message', exc)}")
                    failed.append(f"{step_id}: {message}")
                    self._progress(RUNNING, step_id, "rollback_failed", message)
        counts = self.executor.teardown(self.deployment_id, order=self.stop_order, graceful=True)
        if failed:
            message = (f"the containers are removed, but {'; '.join(failed)}; what that step made "
                       "may be left (the delete is retried)")
            self.store.finish_run(self.run_id, FAILED, message)
            self._deployment_status(DELETING, message)
            self._progress(FAILED, message=message)
            return FAILED
        self.store.finish_run(self.run_id, SUCCEEDED, None)
        self._deployment_status(DELETED)
        self._progress(SUCCEEDED, message=f"deleted: {counts}")
        return SUCCEEDED


