"""The agent's behaviour behind the link: requests from the control plane, runs, reconcile.

The link layer (server.py) handles the handshake, ping, acks and token rotation and delegates
every other request to `AgentService.handle`. Runs go on in their own threads whether or not a
control plane is connected; their events wait in the store's outbox.
"""
import hashlib
import json
import logging
import queue
import threading
import time
import uuid

import psutil

from agent import cgroups, protocol
from agent.docker_exec import Executor
from agent.errors import AgentError
from agent.netguard import INGRESS_PEER, NetworkGuardError
from agent.pipeline import (
    DEGRADED,
    DELETED,
    DELETING,
    DEPLOY_FAILED,
    FAILED,
    INTERRUPTED,
    READY,
    RUNNING,
    SUCCEEDED,
    PipelineRun,
    RunMemory,
)
from agent.spec import SpecError, secret_names, topological_order, validate

log = logging.getLogger("nullops.agent.service")

# A stream batch stops growing past this; one more line (the engine splits lines at 16 KiB:
# 96 KiB on the wire at most) keeps it within the frame budget.
STREAM_BATCH_BYTES = protocol.FRAME_BUDGET_BYTES // 2


def spec_hash(spec):
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


class MinuteFigures:
    """The host's CPU use and available memory over the last minute, from the samples taken for
    resources frames (every 15 s): the control plane judges "actually free" on these, so that a
    spike (an image pull, a test run) does not turn deployments away (issue 18 item 2). Until a
    minute has passed it averages over what it has; with one sample it says nothing."""

    WINDOW_S = 60.0

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._samples = []  # (at, busy seconds, total seconds, memory available)
        self._lock = threading.Lock()  # frames and stats.get answers sample from their own threads

    def sample(self, cpu_times, memory_available):
        with self._lock:
            return self._sample(cpu_times, memory_available)

    def _sample(self, cpu_times, memory_available):
        now = self._clock()
        total = sum(cpu_times)
        busy = total - cpu_times.idle - getattr(cpu_times, "iowait", 0.0)
        self._samples.append((now, busy, total, memory_available))
        # Keep the newest sample at least a minute old: the base the minute is measured from.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.WINDOW_S:
            self._samples.pop(0)
        if len(self._samples) < 2:
            return {}
        first, last = self._samples[0], self._samples[-1]
        elapsed = last[2] - first[2]
        recent = self._samples[1:]   # the base sample ends the minute before
        figures = {"memory_available_1m": int(sum(s[3] for s in recent) / len(recent))}
        if elapsed > 0:
            figures["cpu_percent_1m"] = round(min(100.0, max(0.0, 100 * (last[1] - first[1]) / elapsed)), 1)
        return figures

class ActiveRun:
    def __init__(self, run_id, kind, thread, cancel, spec_digest):
        self.run_id = run_id
        self.kind = kind
        self.thread = thread
        self.cancel = cancel
        self.spec_digest = spec_digest


class AgentService:
    def __init__(self, settings, store, hub, docker_client, executor=None, guard=None):
        self.settings = settings
        self.guard = guard  # agent.netguard.NetworkGuard, checked again every reconcile round
        self.store = store
        self._minute = MinuteFigures()
        self.hub = hub
        self.docker = docker_client
        self.executor = executor or Executor(
            docker_client, settings.node_id, subnet_pool=settings.subnet_pool,
            publish_host=settings.publish_host, stop_grace_s=settings.stop_grace,
            cgroups=cgroups.choose(settings.deployment_cgroups, docker_client, settings.node_id),
            secrets_dir=settings.secrets_dir,
        )
        self.memory = {}   # deployment id -> RunMemory (secrets, credentials, outputs)
        self.active = {}   # deployment id -> ActiveRun
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._reconciler = None
        self.streams = {}  # stream id -> threading.Event that ends it

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self):
        self.recover_interrupted_runs()
        self.reconcile()
        self._reconciler = threading.Thread(target=self._reconcile_loop, name="reconcile", daemon=True)
        self._reconciler.start()

    def stop(self, timeout=10):
        self._stop.set()
        with self._lock:
            for stop in self.streams.values():
                stop.set()
        with self._lock:
            runs = list(self.active.values())
        for run in runs:
            run.thread.join(timeout)

    def link_up(self, peer):
        """The control plane linked from `peer` (after it proved the token): with `link` in
        AGENT_INGRESS_FROM, Caddy beside it may now reach published ports (agent/netguard.py).
        Before the link's first answer, so the routes the controller then pushes work."""
        if self.guard is None or not self.settings.ingress_link:
            return
        try:
            if self.guard.set_ingress_peer(peer):
                self.store.set_meta(INGRESS_PEER, peer)
                log.info("published ports are open to the control plane's address %s", peer)
        except NetworkGuardError as exc:  # the link still works; its next start tries again
            log.error("network isolation rules: %s", exc)

    def _reconcile_loop(self):
        while not self._stop.wait(self.settings.reconcile_interval):
            if self.guard is not None:
                try:
                    self.guard.ensure()  # a firewall reload or a flush removed them
                except NetworkGuardError as exc:  # the next round tries again
                    log.error("network isolation rules: %s", exc)
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("reconcile failed")

    # --- requests -------------------------------------------------------------------------------
    def handle(self, method, params):
        handler = {
            protocol.DEPLOYMENT_APPLY: self.apply,
            protocol.DEPLOYMENT_DELETE: self.delete,
            protocol.DEPLOYMENT_LIST: self.list_deployments,
            protocol.STATE_SYNC: self.sync,
            protocol.RUN_GET: self.get_run,
            protocol.LOGS_TAIL: self.logs_tail,
            protocol.LOGS_UNFOLLOW: self.unfollow_logs,
            protocol.STATS_GET: self.stats,
            protocol.PLUGINS_PREPULL: self.prepull,
        }.get(method)
        if handler is None:
            raise protocol.ProtocolError(f"unknown method {method!r}", protocol.UNKNOWN_METHOD)
        return handler(params)

    def apply(self, params):
        spec = params.get("deployment")
        try:
            validate(spec)
        except SpecError as exc:
            code = protocol.REFUSED if exc.refused else protocol.BAD_REQUEST
            raise protocol.ProtocolError(exc.message, code) from None
        secrets, registries, output_key = _run_material(params)
        missing = secret_names(spec) - set(secrets)
        deployment_id = spec["deployment_id"]
        digest = spec_hash(spec)
        with self._lock:
            current = self.active.get(deployment_id)
            if current is not None:
                if current.kind == "apply" and current.spec_digest == digest:
                    return {"run_id": current.run_id, "status": RUNNING}
                raise protocol.ProtocolError(
                    f"deployment {deployment_id} has a {current.kind} run in progress; wait or delete it",
                    protocol.BUSY)
            known = self.store.get_deployment(deployment_id)
            if known and known["status"] in (READY, DEGRADED) and spec_hash(known["spec"]) == digest:
                # Kept as it is, even when a secret it was made with is gone from the project:
                # it runs without it; only a new run would need it. A degraded one too: the
                # reconcile recreates what it misses once this memory is back; a new run would
                # redo its setup steps (seed data twice, or roll it all back on a failure).
                memory = _merge_memory(self.memory.get(deployment_id), secrets, registries, output_key)
                memory.restore_outputs(self.store, deployment_id)
                self.memory[deployment_id] = memory
                return {"run_id": None, "status": known["status"]}
            if missing:
                raise protocol.ProtocolError(f"secrets not sent: {', '.join(sorted(missing))}")
            memory = RunMemory(secrets, registries, output_key)
            self.memory[deployment_id] = memory
            owed = self.store.owed_rollbacks(deployment_id)
            if owed is not None:
                memory.restore_outputs(self.store, deployment_id)  # the interrupted run's, for its rollbacks
            self.store.put_deployment(deployment_id, spec, "deploying")
            self.store.drop_outputs(deployment_id)  # a new run: every step runs again
            run_id = self._new_run(deployment_id, "apply")
            cancel = threading.Event()
            run = PipelineRun(self.executor, self.store, self.hub, spec, memory, run_id, cancel, owed=owed)
            self._spawn(deployment_id, run_id, "apply", cancel, digest, run.apply)
        return {"run_id": run_id, "status": RUNNING}

    def delete(self, params):
        """Delete a deployment; `secrets`, `registries` and `output_key`, when sent, are what its
        rollback plugins get after an agent restart emptied the memory."""
        deployment_id = params.get("deployment_id")
        if not isinstance(deployment_id, str):
            raise protocol.ProtocolError("deployment_id must be a string")
        secrets, registries, output_key = _run_material(params)
        with self._lock:
            current = self.active.get(deployment_id)
            if current is not None and current.kind == "delete":
                return {"run_id": current.run_id, "status": RUNNING}
            known = self.store.get_deployment(deployment_id)
            if known is None and deployment_id not in self.executor.deployment_ids():
                return {"run_id": None, "status": DELETED}
            spec = known["spec"] if known else {"deployment_id": deployment_id, "steps": []}
            undo = None
            if known and known["status"] == DEPLOY_FAILED:  # its failed run rolled back already,
                owed = self.store.owed_rollbacks(deployment_id)  # all but what a restart cut short
                undo = owed[1] if owed else []
            run_id = self._new_run(deployment_id, "delete")
            cancel = threading.Event()
            previous = current

            def work():
                if previous is not None:  # cancel = delete with rollback (spec)
                    previous.cancel.set()
                    previous.thread.join()
                memory = _merge_memory(self.memory.get(deployment_id), secrets, registries, output_key)
                memory.restore_outputs(self.store, deployment_id)
                run = PipelineRun(self.executor, self.store, self.hub, spec, memory, run_id, cancel)
                status = run.delete(undo)
                if status == SUCCEEDED:  # else kept, with its outputs, for the delete's retry
                    self.store.delete_deployment(deployment_id)
                    self.memory.pop(deployment_id, None)
                return status

            self._spawn(deployment_id, run_id, "delete", cancel, None, work)
        return {"run_id": run_id, "status": RUNNING}

    def sync(self, params):
        """One part of the desired state (sent on every connect, in parts that fit a frame): its
        deployments are applied; the last part's `keep` names every deployment this node should
        run, and the others are removed then."""
        desired = params.get("deployments")
        if not isinstance(desired, list):
            raise protocol.ProtocolError("deployments must be a list")
        keep = params.get("keep")
        if keep is not None and not (isinstance(keep, list) and all(isinstance(k, str) for k in keep)):
            raise protocol.ProtocolError("keep must be a list of deployment ids")
        wanted = {}
        for item in desired:
            spec = item.get("deployment") if isinstance(item, dict) else None
            if not isinstance(spec, dict) or not isinstance(spec.get("deployment_id"), str):
                raise protocol.ProtocolError("each entry needs a deployment spec with a deployment_id")
            wanted[spec["deployment_id"]] = item
        result = {"applied": [], "kept": [], "degraded": [], "deleted": [], "errors": {}}
        for deployment_id, item in wanted.items():
            try:
                outcome = self.apply(item)
            except protocol.ProtocolError as exc:
                result["errors"][deployment_id] = exc.message
                continue
            result["kept" if outcome["run_id"] is None else "applied"].append(deployment_id)
            if outcome["status"] == DEGRADED:
                result["degraded"].append(deployment_id)
        if keep is None:
            return result
        local = {d["deployment_id"] for d in self.store.list_deployments()} | self.executor.deployment_ids()
        for deployment_id in sorted(local - set(wanted) - set(keep)):
            self.delete({"deployment_id": deployment_id})
            result["deleted"].append(deployment_id)
        return result

    def list_deployments(self, _params=None):
        with self._lock:
            active = {k: v.run_id for k, v in self.active.items()}
        return {"deployments": [
            {"deployment_id": d["deployment_id"], "status": d["status"], "message": d.get("message"),
             "run_id": active.get(d["deployment_id"])}
            for d in self.store.list_deployments()
        ]}

    def get_run(self, params):
        run = self.store.get_run(params.get("run_id"))
        if run is None:
            raise protocol.ProtocolError(f"run {params.get('run_id')!r} is unknown", protocol.NOT_FOUND)
        return {"run": run}

    def _log_request(self, params, default_tail, least_tail):
        """(deployment id, step id, tail) of a logs request, checked."""
        deployment_id, step_id = params.get("deployment_id"), params.get("step_id")
        tail = params.get("tail", default_tail)
        if not isinstance(tail, int) or not least_tail <= tail <= 10000:
            raise protocol.ProtocolError(f"tail must be a number from {least_tail} to 10000")
        if self.store.get_deployment(deployment_id) is None:
            raise protocol.ProtocolError(f"deployment {deployment_id!r} is unknown", protocol.NOT_FOUND)
        return deployment_id, step_id, tail

    def logs_tail(self, params):
        deployment_id, step_id, tail = self._log_request(params, default_tail=200, least_tail=1)
        memory = self.memory.get(deployment_id)
        lines = self.executor.logs(deployment_id, step_id, tail=tail)
        if memory:
            lines = [memory.redact(line) for line in lines]
        # 10,000 lines of 16 KiB (or of binary bytes, six on the wire each) exceed any frame.
        lines, omitted = protocol.newest_within(lines, protocol.FRAME_BUDGET_BYTES - 1024)
        if omitted:
            lines.insert(0, f"[nullops: {omitted} older lines left out: one answer carries at most "
                            f"{protocol.FRAME_BUDGET_BYTES // 1024} KiB]")
        return {"lines": lines}

    def follow_logs(self, params, send, batch_s=0.1, max_streams=32):
        """Stream a service's log lines to the link through `send(frame) -> bool` until the
        control plane unfollows, the container ends or the link goes."""
        deployment_id, step_id, tail = self._log_request(params, default_tail=100, least_tail=0)
        with self._lock:
            if len(self.streams) >= max_streams:
                raise protocol.ProtocolError(f"at most {max_streams} log streams at once; unfollow one",
                                             protocol.BUSY)
            stream_id = f"logs-{uuid.uuid4().hex[:12]}"
            stop = self.streams[stream_id] = threading.Event()
        if step_id not in self.executor.service_containers(deployment_id):
            with self._lock:
                self.streams.pop(stream_id, None)
            raise protocol.ProtocolError(f"deployment {deployment_id!r} has no service {step_id!r}",
                                         protocol.NOT_FOUND)
        memory = self.memory.get(deployment_id)
        pending = queue.Queue()
        ended = object()

        def read():
            try:
                for line in self.executor.follow_logs(deployment_id, step_id, stop, tail=tail):
                    pending.put(memory.redact(line) if memory else line)
            except AgentError as exc:
                log.warning("following %s/%s: %s", deployment_id, step_id, exc.message)
            finally:
                pending.put(ended)

        def pump():
            # Lines go out in batches at most `batch_s` apart, so a burst is one frame.
            reason = "container ended"
            try:
                while True:
                    try:
                        first = pending.get(timeout=0.5)
                    except queue.Empty:
                        if stop.is_set():
                            reason = "unfollowed"
                            return
                        continue
                    batch, done = [], first is ended
                    if not done:
                        batch.append(first)
                        size = protocol.encoded_size(first)
                        flush_at = time.monotonic() + batch_s
                        # Bounded by bytes too: 500 lines of binary output exceed a frame.
                        while (len(batch) < 500 and size < STREAM_BATCH_BYTES
                               and (left := flush_at - time.monotonic()) > 0):
                            try:
                                item = pending.get(timeout=left)
                            except queue.Empty:
                                break
                            if item is ended:
                                done = True
                                break
                            batch.append(item)
                            size += protocol.encoded_size(item) + 1
                    if batch and not send({"type": protocol.STREAM, "stream_id": stream_id, "lines": batch}):
                        reason = "link closed"
                        return
                    if done:
                        reason = "unfollowed" if stop.is_set() else "container ended"
                        return
            finally:
                stop.set()
                with self._lock:
                    self.streams.pop(stream_id, None)
                send({"type": protocol.STREAM, "stream_id": stream_id, "end": True, "reason": reason})

        threading.Thread(target=read, name=f"{stream_id}-read", daemon=True).start()
        threading.Thread(target=pump, name=stream_id, daemon=True).start()
        return {"stream_id": stream_id}

    def unfollow_logs(self, params):
        with self._lock:
            stop = self.streams.get(params.get("stream_id"))
        if stop is None:
            raise protocol.ProtocolError(f"stream {params.get('stream_id')!r} is unknown", protocol.NOT_FOUND)
        stop.set()
        return {}

    def resources(self):
        """Host figures (psutil) and what this node's deployments hold by their limits: the
        control plane admits a deployment only where both leave room (ARCHITECTURE.md)."""
        vm = psutil.virtual_memory()
        minute = self._minute.sample(psutil.cpu_times(), vm.available)
        cpus = memory_mb = 0.0
        for deployment in self.store.list_deployments():
            if deployment["status"] in (DELETED, DEPLOY_FAILED):  # nothing of it runs
                continue
            spec = deployment["spec"]
            for step in spec["steps"]:
                if step["kind"] == "service":
                    cpus += step.get("cpus", spec["limits"]["cpus"])
                    memory_mb += step.get("memory_mb", spec["limits"]["memory_mb"])
        return {
            "host": {"cpus": psutil.cpu_count() or 1, "cpu_percent": psutil.cpu_percent(interval=None),
                     "memory_total": vm.total, "memory_available": vm.available, **minute},
            "allocated": {"cpus": round(cpus, 3), "memory_mb": int(memory_mb)},
        }

    def stats(self, _params=None):
        return {
            **self.resources(),
            "containers": self.executor.container_stats(),
            "engine": self.executor.engine_health(),
        }

    def prepull(self, params):
        pulled, failed = [], {}
        for item in params.get("images", []):
            image = item.get("image") if isinstance(item, dict) else None
            if not isinstance(image, str):
                raise protocol.ProtocolError("images must be a list of {image, auth?}")
            try:
                self.executor.pull(image, item.get("auth"))
                pulled.append(image)
            except AgentError as exc:
                failed[image] = exc.message
        return {"pulled": pulled, "failed": failed}

    # --- runs -------------------------------------------------------------------------------------
    def _new_run(self, deployment_id, kind):
        run_id = f"run-{uuid.uuid4().hex[:12]}"
        self.store.create_run(run_id, deployment_id, kind)
        return run_id

    def _spawn(self, deployment_id, run_id, kind, cancel, digest, work):
        def target():
            try:
                work()
            except AgentError as exc:  # typed: its message is safe to tell the control plane
                log.error("%s run %s failed: %s", kind, run_id, exc.message)
                self._run_failed(deployment_id, run_id, exc.message)
            except Exception:  # noqa: BLE001 - a crashed run must not kill the agent
                log.exception("%s run %s crashed", kind, run_id)
                self._run_failed(deployment_id, run_id, "internal error; see the agent log")
            finally:
                with self._lock:
                    if self.active.get(deployment_id) and self.active[deployment_id].run_id == run_id:
                        del self.active[deployment_id]

        thread = threading.Thread(target=target, name=f"{kind}-{deployment_id}", daemon=True)
        self.active[deployment_id] = ActiveRun(run_id, kind, thread, cancel, digest)
        thread.start()

    def _run_failed(self, deployment_id, run_id, message):
        """A run that ended by an exception: stored and told at once (a failed delete becomes
        the deployment's cleanup_failed reason on the control plane)."""
        memory = self.memory.get(deployment_id)
        message = memory.redact(message) if memory is not None else message
        self.store.finish_run(run_id, FAILED, message)
        self.hub.publish(protocol.RUN_PROGRESS, {"run_id": run_id, "deployment_id": deployment_id,
                                                 "status": FAILED, "message": message})

    def wait_idle(self, deployment_id, timeout=None):
        """Block until no run is active for a deployment (tests, shutdown)."""
        with self._lock:
            run = self.active.get(deployment_id)
        if run is not None:
            run.thread.join(timeout)

    # --- reconcile --------------------------------------------------------------------------------
    def recover_interrupted_runs(self):
        """Runs cut short by a crash cannot go on: their secrets were in memory only. An apply
        is rolled back by label and the control plane resends the deployment to retry. A delete
        is left as it is, still known here: the control plane sends it again with what its
        rollback plugins need, and they run before the teardown, as in any delete."""
        for run in self.store.runs_in_state(RUNNING):
            deployment_id = run["deployment_id"]
            if run["kind"] == "delete" and self.store.get_deployment(deployment_id) is not None:
                message = "the agent restarted during this delete; the control plane sends it again"
                self.store.finish_run(run["run_id"], INTERRUPTED, message)
                self.store.set_deployment_status(deployment_id, DELETING, message)
                self.hub.publish(protocol.RUN_PROGRESS, {"run_id": run["run_id"],
                                                         "deployment_id": deployment_id,
                                                         "status": INTERRUPTED, "message": message})
                continue
            known = self.store.get_deployment(deployment_id)
            if known is not None:
                self._owe_rollbacks(known["spec"], run["run_id"])
            self.executor.teardown(deployment_id, graceful=False)
            message = "the agent restarted during this run; its objects were removed. Deploy again to retry."
            self.store.finish_run(run["run_id"], INTERRUPTED, message)
            if run["kind"] == "delete" or self.store.get_deployment(deployment_id) is None:
                self.store.delete_deployment(deployment_id)
                status = DELETED
            else:
                self.store.set_deployment_status(deployment_id, DEPLOY_FAILED, message)
                status = DEPLOY_FAILED
            self.hub.publish(protocol.RUN_PROGRESS, {"run_id": run["run_id"], "deployment_id": deployment_id,
                                                     "status": INTERRUPTED, "message": message})
            self.hub.publish(protocol.DEPLOYMENT_STATUS, {"deployment_id": deployment_id, "status": status,
                                                          "message": message})

    def _owe_rollbacks(self, spec, run_id):
        """Note the plugin steps with a rollback that the interrupted run had started."""
        started = {s["step_id"] for s in (self.store.get_run(run_id) or {}).get("steps", [])
                   if s["status"] not in ("pending", "skipped", "cancelled")}
        undoable = {s["id"] for s in spec["steps"] if s["kind"] == "plugin" and s.get("rollback")}
        undo = [step_id for step_id in reversed(topological_order(spec["steps"]))
                if step_id in started & undoable]
        if undo:
            self.store.owe_rollbacks(spec["deployment_id"], spec, undo)

    def reconcile(self):
        """Level-triggered: restart dead services of ready deployments, recreate missing ones
        when the run's memory is still here, remove objects of deployments that should not exist."""
        with self._lock:
            busy = set(self.active)
        known = {d["deployment_id"]: d for d in self.store.list_deployments()}
        for deployment_id, deployment in known.items():
            if deployment_id in busy or deployment["status"] not in (READY, DEGRADED):
                continue
            try:
                self._heal(deployment)
            except Exception:  # noqa: BLE001 - one deployment's trouble must not stop the others'
                log.exception("healing %s failed", deployment_id)
        removed = self.executor.remove_orphans(self._kept)
        if removed:
            log.info("removed orphaned objects: %s", removed)

    def _kept(self):
        """The deployments whose objects stay: known to the store or running now. Asked after
        the engine's listing: a run registers itself before it makes its first container, so a
        run that started during this round is never taken for an orphan (under load a round
        outlasted several creates, whose PostgreSQL was killed mid-start)."""
        with self._lock:
            busy = set(self.active)
        return busy | {d["deployment_id"] for d in self.store.list_deployments()}

    def _heal(self, deployment):
        deployment_id = deployment["deployment_id"]
        spec = deployment["spec"]
        restarted = self.executor.restart_dead(deployment_id)
        present = self.executor.service_containers(deployment_id)
        services = [s for s in spec["steps"] if s["kind"] == "service"]
        missing = [s for s in services if s["id"] not in present]
        memory = self.memory.get(deployment_id)
        if missing and memory is None:
            self._degraded(deployment, f"services {', '.join(s['id'] for s in missing)} are gone and the "
                                       "agent restarted since the deployment was made; the control "
                                       "plane's next sync restores them")
            return
        failed = []
        if missing:
            run = PipelineRun(self.executor, self.store, self.hub, spec, memory, "reconcile",
                              threading.Event())
            for step in missing:
                try:
                    run.run_service(step)
                except (AgentError, SpecError) as exc:
                    failed.append(f"{step['id']}: {memory.redact(exc.message)}")
        if failed:
            self._degraded(deployment, f"could not recreate {'; '.join(failed)}")
            return
        if restarted or missing or deployment["status"] == DEGRADED:
            ports = {sid: {"ports": {str(k): v for k, v in self.executor.published_ports(c).items()}}
                     for sid, c in self.executor.service_containers(deployment_id).items()}
            self.store.set_deployment_status(deployment_id, READY, None)
            healed = sorted(set(restarted) | {s["id"] for s in missing})
            self.hub.publish(protocol.DEPLOYMENT_STATUS, {"deployment_id": deployment_id, "status": READY,
                                                          "services": ports, "healed": healed})


    def _degraded(self, deployment, message):
        if (deployment["status"], deployment["message"]) != (DEGRADED, message):
            self.store.set_deployment_status(deployment["deployment_id"], DEGRADED, message)
            self.hub.publish(protocol.DEPLOYMENT_STATUS, {"deployment_id": deployment["deployment_id"],
                                                          "status": DEGRADED, "message": message})


def _run_material(params):
    """(secrets, registries, output key) of an apply, sync entry or delete, checked."""
    secrets, registries = params.get("secrets", {}), params.get("registries", {})
    output_key = params.get("output_key")
    if not isinstance(secrets, dict) or not all(isinstance(v, str) for v in secrets.values()):
        raise protocol.ProtocolError("secrets must map names to strings")
    if not isinstance(registries, dict):
        raise protocol.ProtocolError("registries must map names to credentials")
    if output_key is not None and not protocol.valid_output_key(output_key):
        raise protocol.ProtocolError("output_key must be 64 lowercase hex digits")
    return secrets, registries, output_key


def _merge_memory(memory, secrets, registries, output_key):
    """What was sent now, plus what the memory already knew (outputs, secret values, and the
    secrets and credentials a bare delete does not carry)."""
    if memory is None:
        return RunMemory(secrets, registries, output_key)
    fresh = RunMemory({**memory.secrets, **secrets}, {**memory.registries, **registries},
                      output_key or memory.output_key)
    fresh.outputs = memory.outputs
    fresh.secret_values |= memory.secret_values
    return fresh

