"""The link manager: keeps exactly one NodeLink per node that should be linked, runs the
commands the web tier left for nodes, and drives deployments: each round applies the pending
ones and deletes (then checks) the deleting ones on online nodes; each link's state.sync sends
the node's full desired state; agent events update progress and statuses. A round only starts
work: node commands and deployment calls run as their own tasks, so none waits on another."""
import asyncio
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from agent import protocol
from app import wakeup
from app.controller import deployments, runtime, state
from app.controller.links import (
    HANDSHAKES_AT_ONCE,
    LinkDown,
    NodeLink,
    RequestFailed,
    client_ssl_context,
)
from app.extensions import db
from app.models.types import utcnow
from app.services import nodes

log = logging.getLogger("nullops.controller")
RESOURCES_WRITE_S = 1.0  # resources frames are written together at most this late
# A delete run the controller heard nothing of for this long is asked about (run.get): a run
# that crashes on the agent sends no event. Still running after DELETE_GIVE_UP_S: cleanup_failed.
DELETE_CHECK_S = 30.0
DELETE_GIVE_UP_S = 900.0
FINISHED_RUNS_KEPT = 5000


class Batched:
    """Calls of a state function gathered while the previous batch is being written: one
    worker-thread call and one transaction for all (`many`, given the list of argument tuples).
    If that fails, each is tried alone (`one`), so one bad row does not fail the others. Awaiting
    a call returns once its row is committed, as `manager.db(one, *args)` would, with its result:
    `many` returns None or one result per call, in order."""

    def __init__(self, manager, many, one, touches=None):
        self.manager, self.many, self.one = manager, many, one
        self.touches = touches  # args -> the deployment id the call may change the routes of
        self._queue = []   # (args, future)
        self._writer = None

    async def __call__(self, *args):
        done = asyncio.get_running_loop().create_future()
        self._queue.append((args, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return await done

    async def _write(self):
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                results = await self.manager.db(self.many, [args for args, _done in batch])
                outcomes = [(result, None) for result in (results or [None] * len(batch))]
            except Exception as exc:  # noqa: BLE001 - handed to the callers
                outcomes = [(None, exc)] if len(batch) == 1 else [
                    await self._alone(args) for args, _done in batch]
            self.manager.changed([self.touches(args) for args, _done in batch] if self.touches else ())
            for (_args, done), (result, error) in zip(batch, outcomes, strict=True):
                if done.done():  # its caller was cancelled meanwhile
                    continue
                if error is None:
                    done.set_result(result)
                else:
                    done.set_exception(error)

    async def _alone(self, args):
        try:
            return await self.manager.db(self.one, *args), None
        except Exception as exc:  # noqa: BLE001 - that caller fails with it
            return None, exc


@dataclass
class DeleteInFlight:
    """A delete run the agent is doing for a deployment, on one link (a new link syncs anew)."""
    node_id: int
    ws: object
    run_id: str
    started: float
    checked: float


class LinkManager:
    def __init__(self, app, poll_s=1.0, fence=None):
        self.app = app
        self.poll_s = poll_s
        self.fence = fence  # LeaderLock.fence(): what leader-only writes check
        self.links = {}   # node id -> NodeLink
        self.tasks = {}   # node id -> asyncio.Task running the link
        self.ssl_context = client_ssl_context()
        self.handshakes = None
        self._wake = None
        self.loop = None
        self.polls = 0  # rounds started by the poll rather than a wake-up (tests, issue 19)
        self._streams = {}  # (node id, stream id) -> callback(frame)
        self.on_change = None  # called after deployment or node writes (the ingress follows them)
        self._resources = {}  # node id -> (latest resources frame, received at), not yet written
        self._unusable_figures = set()  # node ids warned about, until they send usable figures
        # One worker-thread write per link coming up, or per command done, held 1,000 nodes back
        # (benchmarks/agent_fleet.py): these gather what arrives while the last batch is written.
        self.mark_online = Batched(self, state.mark_online_many, state.mark_online)
        self.finish_command = Batched(self, state.finish_commands, state.finish_command)
        # Deployments: a fleet linking at once syncs at once, and every event is stored before
        # it is acknowledged.
        self.desired = Batched(self, deployments.desired_states, deployments.desired_state)
        self.synced = Batched(self, deployments.record_syncs, deployments.record_sync)
        self.store_event = Batched(self, deployments.apply_events, deployments.apply_event,
                                   touches=lambda args: deployments.id_of(args[2].get("deployment_id")))
        self.applied = Batched(self, deployments.record_applies, deployments.record_apply)
        self.delete_answered = Batched(self, deployments.record_deletes, deployments.record_delete)
        self.cleanup_failed = Batched(self, deployments.fail_cleanups, deployments.fail_cleanup)
        self._deletes = {}   # deployment id -> DeleteInFlight
        self._finished_runs = OrderedDict()  # run id -> (status, message) of recently ended runs
        self._working = {}   # deployment id -> task of an apply, delete or check in progress
        self._commanding = {}  # node id -> task running that node's commands, in order
        self.open_files = None  # the soft limit (runtime.raise_open_files), None: not checked
        self._files_warned = False

    # --- database from the event loop ----------------------------------------------------------
    def _in_app(self, fn, *args):
        with wakeup.quiet(), self.app.app_context():  # its own writes do not wake it
            try:
                return fn(*args)
            finally:
                db.session.remove()

    async def db(self, fn, *args):
        return await asyncio.to_thread(self._in_app, fn, *args)

    def note_resources(self, node_id, frame):
        """A resources frame: kept until the next batch write (a newer one replaces it)."""
        self._resources[node_id] = (frame, utcnow())

    async def _write_resources(self, stopping):
        """One statement per second for every node's latest figures: one write per frame, each
        in a worker thread, held 1,000 linking nodes back (measured: benchmarks/agent_fleet.py)."""
        while True:
            stopped = stopping.is_set()
            batch, self._resources = self._resources, {}
            try:
                self._warn_unusable(batch, await self.db(state.store_resources, batch))
            except Exception:  # noqa: BLE001 - the database may be away: the next frames come
                log.exception("writing %d nodes' resource figures failed", len(batch))
            if stopped:
                return
            try:
                await asyncio.wait_for(stopping.wait(), RESOURCES_WRITE_S)
            except TimeoutError:
                pass

    def _warn_unusable(self, batch, unusable):
        """A warning when a node starts sending figures out of range (store_resources leaves them
        out), not one every 15 s while it goes on; again if it does after usable ones."""
        self._unusable_figures -= batch.keys() - unusable.keys()
        for node_id, figures in unusable.items():
            if node_id not in self._unusable_figures:
                self._unusable_figures.add(node_id)
                link = self.links.get(node_id)
                log.warning("node %s sent resource figures out of range (%s): they are not used "
                            "until it sends good ones", link.target["name"] if link else node_id,
                            ", ".join(figures))

    # --- the loop ------------------------------------------------------------------------------
    def changed(self, deployment_ids=()):
        """Deployments or nodes were written: whoever follows them looks now (at these
        deployments too: an event may change one's published ports, not its status)."""
        if self.on_change is not None:
            self.on_change(deployment_ids)

    def wake(self):
        """Look at the nodes now rather than at the next poll (thread-safe)."""
        if self.loop is not None and self._wake is not None:
            self.loop.call_soon_threadsafe(self._wake.set)

    async def run(self, stopping):
        self.loop = asyncio.get_running_loop()
        self.handshakes = asyncio.Semaphore(HANDSHAKES_AT_ONCE)
        self._wake = asyncio.Event()
        writer = asyncio.create_task(self._write_resources(stopping))
        try:
            while not stopping.is_set():
                try:
                    await self._reconcile_links()
                    await self._run_commands()
                    await self._run_deployments()
                except Exception:  # noqa: BLE001 - the database may be away: try again
                    log.exception("controller round failed")
                self._wake.clear()
                waiters = {asyncio.create_task(self._wake.wait()), asyncio.create_task(stopping.wait())}
                done, pending = await asyncio.wait(waiters, timeout=self.poll_s,
                                                   return_when=asyncio.FIRST_COMPLETED)
                for task in pending | done:
                    task.cancel()
                if not done:
                    self.polls += 1  # nothing woke it: the safety net found whatever there is
        finally:
            # Calls in flight first, so none goes out on a link while the links close.
            working = [*self._working.values(), *self._commanding.values()]
            for task in working:
                task.cancel()
            await self.close_all()
            await asyncio.gather(*working, return_exceptions=True)
            if stopping.is_set():
                await writer  # the last figures
            else:
                writer.cancel()

    async def _reconcile_links(self):
        targets = await self.db(state.link_targets)
        if (self.open_files is not None and not self._files_warned
                and len(targets) + runtime.SPARE_FILES > self.open_files):
            self._files_warned = True  # once: the links over the limit fail with EMFILE meanwhile
            runtime.raise_open_files(len(targets))
        for node_id in list(self.links):
            link, task, target = self.links.get(node_id), self.tasks.get(node_id), targets.get(node_id)
            if link is None or task is None:
                continue  # dropped meanwhile, by a command (drop_link, reconnect)
            finished = task.done()
            # The thumbprint this link pinned itself is no move: the database has it as soon as
            # mark_online commits, a moment before the link's own copy is updated; and `targets`,
            # read before that commit, may still say None (seen with 1,000 nodes linking at once).
            moved = target is not None and (
                (target["host"], target["port"]) != (link.target["host"], link.target["port"])
                or target["thumbprint"] not in (None, link.target["thumbprint"], link.thumbprint))
            if target is None or moved or finished:
                await self._drop(node_id)
            else:  # a rotation: used from the next connect
                link.target["verifier"] = target["verifier"]
                link.target["previous_verifier"] = target["previous_verifier"]
        for node_id, target in targets.items():
            if node_id not in self.links:
                link = NodeLink(self, target)
                self.links[node_id] = link
                self.tasks[node_id] = asyncio.create_task(link.run(), name=f"link-{node_id}")

    async def _drop(self, node_id):
        link, task = self.links.pop(node_id, None), self.tasks.pop(node_id, None)
        if link is not None:
            await link.stop()
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - it is going away
                pass

    async def close_all(self):
        # Together: one by one, 1,000 close handshakes took 2.5 s (more with unresponsive peers,
        # each up to the close timeout) while the remaining links kept reconnecting.
        await asyncio.gather(*(self._drop(node_id) for node_id in list(self.links)))

    async def _run_commands(self):
        # Read before the commands: a node not busy now has its commands' ends committed (a task
        # leaves _commanding only after finish_command), so none read below is in flight.
        busy = set(self._commanding)
        commands = await self.db(state.open_commands)
        by_node = {}
        for command in commands:
            if command["node_id"] not in busy:
                by_node.setdefault(command["node_id"], []).append(command)
        # Not awaited: a prepull waits up to 10 minutes for the agent's image pulls, and the
        # deployments, the links and other nodes must not wait with it. One task per node keeps
        # its commands in order; the next ones start in the first round after it ends.
        for node_id, items in by_node.items():
            self._commanding[node_id] = asyncio.create_task(
                self._run_node_commands(node_id, items), name=f"commands-{node_id}")

    async def _run_node_commands(self, node_id, commands):
        try:
            for command in commands:
                kind, link = command["kind"], self.links.get(node_id)
                if kind == "rotate_token":
                    result = await self._push_rotation(link, command["payload"])
                    if result is None:
                        continue  # open until it reaches the agent; the node's other commands go on
                elif kind in ("drop_link", "reconnect"):
                    await self._drop(node_id)  # "reconnect": the next round links it again
                    result = "link dropped" if kind == "drop_link" else "reconnecting"
                elif kind == "prepull":
                    result = await self._prepull(link, command["payload"])
                else:
                    result = f"unknown command {kind!r}"
                await self.finish_command(command["id"], result)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the database may be away: a later round runs it again
            log.exception("node %s: running its commands failed", node_id)
        finally:
            if self._commanding.get(node_id) is asyncio.current_task():
                del self._commanding[node_id]

    async def _prepull(self, link, payload):
        """A plugin catalog change: the agent pulls the plugin images ahead of any run."""
        if link is None or not link.online:
            return "node offline: it pulls the images when a run needs them"
        try:
            result = await link.call(protocol.PLUGINS_PREPULL, {"images": json.loads(payload or "[]")},
                                     timeout=600)
        except (LinkDown, RequestFailed) as exc:
            return f"prepull failed: {exc}"
        failed = result.get("failed") or {}
        return f"pulled {len(result.get('pulled') or [])}, failed {len(failed)}" + (
            f": {json.dumps(failed)[:300]}" if failed else "")

    async def _push_rotation(self, link, payload):
        """The new verifier to the agent over its live link; None while it cannot be (offline, or
        the link dropped before the answer): the command stays open, and the next link, made
        with the new verifier or the previous one, pushes it (docs/protocol.md, token.rotate)."""
        verifier, _previous = nodes.read_rotation(payload)
        if link is None or not link.online:
            return None
        try:
            await link.call(protocol.TOKEN_ROTATE, {"verifier": verifier})
        except LinkDown:
            return None
        except RequestFailed as exc:
            return f"the agent refused the new token ({exc}); configure it by hand"
        link.target["verifier"], link.target["previous_verifier"] = verifier, None
        return "pushed to the agent over the live link"

    # --- deployments ---------------------------------------------------------------------------
    async def desired_state(self, node_id):
        """The deployments this node should run, as state.sync entries (secrets included)."""
        return await self.desired(node_id)

    async def on_sync(self, link, result):
        """The agent's answer to the desired state: applied, kept, deleted, refused."""
        await self.synced(link.node_id, result)
        self.wake()  # deleted ones that are deleting here get checked

    async def _run_deployments(self):
        online = {node_id: link for node_id, link in self.links.items() if link.online}
        self._check_deletes()
        busy = set(self._working) | set(self._deletes)
        to_apply, to_delete = await self.db(deployments.due_work, set(online), busy, utcnow())
        # Not awaited here: a slow node must not hold the round (and the other nodes) up.
        for deployment_id, node_id, params in to_apply:
            self._start(deployment_id, self._apply(online[node_id], deployment_id, params))
        for deployment_id, node_id, params in to_delete:
            self._start(deployment_id, self._delete(online[node_id], deployment_id, params))

    def _start(self, deployment_id, work):
        async def guarded():
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the database may be away: the next round retries
                log.exception("deployment %s: the controller's call failed", deployment_id)
            finally:
                if self._working.get(deployment_id) is task:
                    del self._working[deployment_id]

        task = asyncio.create_task(guarded(), name=f"deployment-{deployment_id}")
        self._working[deployment_id] = task

    async def _apply(self, link, deployment_id, params):
        try:
            result = await link.call(protocol.DEPLOYMENT_APPLY, params)
        except LinkDown:
            return  # stays pending: this link's sync or a later round sends it
        except RequestFailed as exc:
            if exc.code != protocol.BUSY:  # busy: another run of it; the next round tries again
                await self.applied(deployment_id, None, exc.message)
            return
        await self.applied(deployment_id, result, None)

    async def _delete(self, link, deployment_id, params):
        ws = link.ws
        try:
            answer = await link.call(protocol.DEPLOYMENT_DELETE, params)
        except LinkDown:
            return
        except RequestFailed as exc:
            await self.cleanup_failed(deployment_id, f"the agent refused the delete ({exc.message})")
            return
        if await self.delete_answered(deployment_id, answer) != deployments.WAITING:
            return
        run_id = answer.get("run_id")
        ended = self._finished_runs.get(run_id)  # its events may have come before this answer
        if ended is None:
            now = time.monotonic()
            self._deletes[deployment_id] = DeleteInFlight(link.node_id, ws, run_id, now, now)
        elif ended[0] in ("failed", "cancelled"):
            await self.cleanup_failed(deployment_id, f"the agent's delete run {ended[0]}: {ended[1]}")
        else:
            self.wake()  # over already: the next round checks what is left

    def _check_deletes(self):
        """Delete runs in flight: forgotten with their link (the next link's sync and round take
        over), asked about when they have been quiet for DELETE_CHECK_S."""
        now = time.monotonic()
        for deployment_id, entry in list(self._deletes.items()):
            link = self.links.get(entry.node_id)
            if link is None or not link.online or link.ws is not entry.ws:
                del self._deletes[deployment_id]
            elif now - entry.checked >= DELETE_CHECK_S and deployment_id not in self._working:
                entry.checked = now
                self._start(deployment_id, self._check_delete(link, deployment_id, entry))

    async def _check_delete(self, link, deployment_id, entry):
        try:
            run = (await link.call(protocol.RUN_GET, {"run_id": entry.run_id})).get("run") or {}
        except LinkDown:
            return
        except RequestFailed:
            run = {}  # unknown to the agent: a delete of our own tells what is left
        status = run.get("status")
        if status == "running" and time.monotonic() - entry.started < DELETE_GIVE_UP_S:
            return
        if self._deletes.get(deployment_id) is entry:
            del self._deletes[deployment_id]
        if status == "running":
            await self.cleanup_failed(deployment_id, f"the agent's delete run {entry.run_id} has not "
                                                     f"finished after {DELETE_GIVE_UP_S / 60:.0f} minutes")
        elif status in ("failed", "cancelled"):
            await self.cleanup_failed(deployment_id, f"the agent's delete run {status} "
                                                     f"({run.get('error') or 'no reason given'})")
        else:
            self.wake()

    async def on_event(self, link, frame):
        """An event from an agent (run progress, deployment status), stored before the link
        acknowledges it: if it cannot be stored, the link drops and the agent replays it on the
        next one. Step log lines are live data for the UI, not stored here."""
        name, data = frame.get("event"), frame.get("data")
        if name not in (protocol.RUN_PROGRESS, protocol.DEPLOYMENT_STATUS) or not isinstance(data, dict):
            return
        deployment_id = deployments.id_of(data.get("deployment_id"))
        if deployment_id is None:
            return
        run_ended = name == protocol.RUN_PROGRESS and data.get("status") in deployments.RUN_ENDED
        if run_ended:
            self._finished_runs[data.get("run_id")] = (data.get("status"), str(data.get("message") or ""))
            while len(self._finished_runs) > FINISHED_RUNS_KEPT:
                self._finished_runs.popitem(last=False)
        deleted = name == protocol.DEPLOYMENT_STATUS and data.get("status") == "deleted"
        entry = self._deletes.get(deployment_id)
        if entry is not None and entry.node_id == link.node_id and (
                deleted or (run_ended and data.get("run_id") == entry.run_id)):
            del self._deletes[deployment_id]
        await self.store_event(link.node_id, name, data, frame.get("seq"))
        if deleted or run_ended:
            self.wake()  # a deleting one is checked by the next round

    def on_stream(self, link, frame):
        """A live log line batch: to whoever follows that stream (the internal endpoint)."""
        key = (link.node_id, frame.get("stream_id"))
        callback = self._streams.get(key)
        if callback is not None:
            callback(frame)
            if frame.get("end"):
                self._streams.pop(key, None)

    def subscribe(self, node_id, stream_id, callback):
        self._streams[(node_id, stream_id)] = callback

    def unsubscribe(self, node_id, stream_id):
        self._streams.pop((node_id, stream_id), None)

    # --- for others ----------------------------------------------------------------------------
    def online_node_ids(self):
        return {node_id for node_id, link in self.links.items() if link.online}
