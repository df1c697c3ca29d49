"""Density: how many demo deployments one node of this machine holds with admission as shipped
(issue 18), each answering with its seeded rows through Caddy, and why it refuses the next.

The stack is real: the demo project as `make run` seeds it (app/demo.py: 0.5 CPU and 256 MB
per deployment), a real agent process on the local engine with its default
`--deployment-cgroups auto` (one cgroup per deployment here), the real controller with a real
Caddy as the ingress, the service layer's create (what POST /api/v1/deployments calls).
Nothing of admission is overridden: the node's CPUs and memory are what the agent reports, the
environment's CPU overcommit ratio and the node's memory reserve are the defaults, and the
agent's minute figures count (a node busy 90% over the last minute takes nothing new: such a
refusal is waited out and counted, as a user would retry). Registry tag lookups are answered
from the local images (no registry needs to run).

1. `--together` (30) created at once: seconds until all are ready and answer through Caddy;
2. more, `--batch` at a time, until admission refuses one for lack of room (or `--max`): how
   many were held, the refusal's words, each web's rows through Caddy;
3. what they hold: memory per deployment from its cgroup (usage and RSS), CPU of all of them
   idle over `--idle-s`, the host's load;
4. with `--memory-phase-ratio R` (default 32) the node's CPU overcommit is then raised to R (a
   node override, docs/deployments.md) and creates go on until memory runs out: the refusal
   names memory. Skipped when the first refusal already named memory;
5. all deleted at once until every row is `deleted`.

Run from the repository root (Docker, PostgreSQL with the nullops_test role, Caddy, the demo
images of scripts/demo-images.sh present locally):

    .venv/bin/python -m benchmarks.density

The results go into docs/benchmarks.md between the density markers (--no-docs: printed only).
"""
import argparse
import datetime
import json
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from benchmarks.api_latency import write_docs
from benchmarks.deploy_vs_compose import NullOps
from tests.caddytools import CaddyProcess

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- density:begin -->", "<!-- density:end -->"
SECTION = "## Density: demo deployments on one node (issue 18)"
CGROUP = "/sys/fs/cgroup"
SATURATED_WAIT_S = 900      # how long a "saturated" refusal is waited out before giving up


def log(message):
    print(f"[density] {message}", file=sys.stderr, flush=True)


class Stack(NullOps):
    """deploy_vs_compose's stack with Caddy as the ingress and admission untouched."""

    def __init__(self, workdir, poll_s):
        super().__init__(workdir, poll_s)
        self.caddy = CaddyProcess(workdir)
        self.caddy.start()
        self.app.config.update(NULLOPS_CADDY_ADMIN_URL=self.caddy.admin_url,
                               NULLOPS_INGRESS_LISTEN=self.caddy.listen,
                               NULLOPS_INGRESS_PAGES_UPSTREAM="127.0.0.1:9")
        self.refusals_waited = 0
        self.failed = {}   # deployment id -> status message

    def start(self):
        from app.models import nodes as node_model

        real = node_model.reported_free
        super().start()
        node_model.reported_free = real   # NullOps.start turns the CPU figure off; not here

    def create_one(self, name):
        """The deployment's id, or the refusal's message when admission finds no room. A node
        saturated by the last minute's work is waited out (counted)."""
        from app.services import deployments
        from app.services.errors import InsufficientResources

        deadline = time.monotonic() + SATURATED_WAIT_S
        while True:
            try:
                return deployments.create(self.admin, self.project, self.environment, name, {"web": "1.0"}).id
            except InsufficientResources as exc:
                self.db.session.rollback()
                if "saturated" not in str(exc) or time.monotonic() > deadline:
                    return str(exc)
                self.refusals_waited += 1
                time.sleep(5)

    def wait_each(self, ids, timeout):
        """Until each of `ids` is ready or failed; the failed ones with their messages (one
        failure does not end the run: it is counted and reported)."""
        from sqlalchemy import select

        from app.models import Deployment

        deadline = time.monotonic() + timeout
        while True:
            self.db.session.expire_all()
            rows = self.db.session.execute(select(Deployment.id, Deployment.status, Deployment.status_message)
                                           .where(Deployment.id.in_(ids))).all()
            if all(r.status in ("ready", "failed") for r in rows):
                failed = {r.id: r.status_message for r in rows if r.status == "failed"}
                for deployment_id, message in failed.items():
                    log(f"deployment {deployment_id} failed: {message}")
                self.failed.update(failed)
                return [i for i in ids if i not in failed]
            if time.monotonic() > deadline:
                waiting = [r for r in rows if r.status != "ready"]
                raise RuntimeError(f"not ready after {timeout} s: {waiting[:3]}")
            time.sleep(0.2)

    def url(self, deployment_id):
        from app.models import Deployment
        from app.services.specs import service_urls

        return service_urls(self.db.session.get(Deployment, deployment_id))["web"]

    def set_node_ratio(self, ratio):
        node = self._node()
        node.cpu_overcommit = ratio
        self.db.session.commit()

    def stop(self):
        try:
            super().stop()
        finally:
            self.caddy.stop()


def rows_through_caddy(caddy, url, timeout=60.0):
    """The web's seeded rows through Caddy (Host header, loopback), waiting out 502/503 while
    the route is new."""
    host = url.split("://", 1)[1].split(":")[0]
    request = urllib.request.Request(f"http://{caddy.listen}/api/items", headers={"Host": host})
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return [item["title"] for item in json.loads(response.read())["items"]]
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)


def answering(stack, ids):
    return sum(len(rows_through_caddy(stack.caddy, stack.url(i)) or []) == 3 for i in ids)


def cgroup_dir(stack, controller, deployment_id=None):
    path = f"{CGROUP}/{controller}/nullops/{stack.node_id}"
    return path if deployment_id is None else f"{path}/dep-{deployment_id}"


def memory_of(stack, deployment_id):
    """(working set MB, RSS MB, limit MB) of the deployment's cgroup (cgroup v1); the working
    set as `docker stats` counts it: usage less inactive page cache."""
    path = cgroup_dir(stack, "memory", deployment_id)
    usage = int(Path(path, "memory.usage_in_bytes").read_text())
    limit = int(Path(path, "memory.limit_in_bytes").read_text())
    stat = dict(line.split() for line in Path(path, "memory.stat").read_text().splitlines())
    working = usage - int(stat["total_inactive_file"])
    return working / 2**20, int(stat["total_rss"]) / 2**20, limit / 2**20


class OomWatch(threading.Thread):
    """Counts the kernel's OOM kills in each deployment's cgroup (memory.oom_control) while they
    live: a deployment whose service is killed for memory is rolled back, its cgroup with it."""

    def __init__(self, stack):
        super().__init__(name="oom-watch", daemon=True)
        self.root, self.kills, self.stopping = Path(cgroup_dir(stack, "memory")), {}, threading.Event()

    def run(self):
        while not self.stopping.wait(0.5):
            try:
                children = [p for p in self.root.iterdir() if p.is_dir()]
            except OSError:
                continue
            for child in children:
                try:
                    text_ = (child / "memory.oom_control").read_text()
                    fields = dict(line.split() for line in text_.splitlines())
                except (OSError, ValueError):
                    continue
                self.kills[child.name] = max(self.kills.get(child.name, 0), int(fields.get("oom_kill", 0)))

    def stop(self):
        self.stopping.set()
        self.join(5)
        return {name: count for name, count in self.kills.items() if count}


def idle_cpu(stack, seconds):
    """CPUs all the node's deployments used together over `seconds` (their parent cgroup)."""
    path = Path(cgroup_dir(stack, "cpuacct"), "cpuacct.usage")
    before, since = int(path.read_text()), time.monotonic()
    time.sleep(seconds)
    return (int(path.read_text()) - before) / 1e9 / (time.monotonic() - since)


def host_used_mb():
    memory = psutil.virtual_memory()
    return (memory.total - memory.available) / 2**20


def fill(stack, ids, start, limit, batch, ready_timeout):
    """Create `batch` at a time until a refusal or `limit` deployments; (refusal or None)."""
    index = start
    while len(ids) < limit:
        made = []
        for _ in range(min(batch, limit - len(ids))):
            result = stack.create_one(f"d{index}")
            index += 1
            if isinstance(result, str):
                log(f"refused after {len(ids) + len(made)}: {result}")
                ids += stack.wait_each(made, ready_timeout)
                return result, index
            made.append(result)
        ids += stack.wait_each(made, ready_timeout)
        log(f"{len(ids)} ready; load {os.getloadavg()[0]:.1f}")
    return None, index


def run(args):
    load_before = os.getloadavg()
    results = {"date": datetime.date.today().isoformat(), "load_before": load_before}
    with tempfile.TemporaryDirectory(prefix="density-") as tmp:
        stack = Stack(Path(tmp), args.poll_s)
        watch = None
        try:
            stack.start()
            if args.ignore_saturation:
                from app.services import admission

                admission.SATURATED_PERCENT = 1000.0   # no node is ever that busy
            results["ignore_saturation"] = args.ignore_saturation
            agent_line = [line for line in stack.agent.log.splitlines() if "deployment limits" in line]
            results["limits_way"] = agent_line[0].split("deployment limits: ", 1)[1] if agent_line else "?"
            node = stack._node()
            results["node"] = {"cpus": node.reported_cpus, "memory_mb": node.reported_memory_mb,
                               "reserve_mb": node.memory_reserve_mb,
                               "ratio": stack.environment.cpu_overcommit}
            results["project"] = {"cpus": stack.project.cpus, "memory_mb": stack.project.memory_mb}
            log(f"node {results['node']}, project {results['project']}, {results['limits_way']}")

            watch = OomWatch(stack)
            watch.start()
            results["together"] = args.together
            started = time.perf_counter()
            ids = [stack.create_one(f"d{i}") for i in range(args.together)]
            assert all(isinstance(i, int) for i in ids), [i for i in ids if not isinstance(i, int)][:1]
            ids = stack.wait_each(ids, args.ready_timeout)
            results["together_ready_s"] = time.perf_counter() - started
            results["together_answering"] = answering(stack, ids)
            results["together_answered_s"] = time.perf_counter() - started
            results["load_together"] = os.getloadavg()
            log(f"{args.together} at once: ready after {results['together_ready_s']:.1f} s, "
                f"{results['together_answering']} answer through Caddy after "
                f"{results['together_answered_s']:.1f} s")

            refusal, index = fill(stack, ids, args.together, args.max, args.batch, args.ready_timeout)
            results["held"], results["refusal"] = len(ids), refusal
            results["load_held"] = os.getloadavg()
            time.sleep(args.settle_s)
            results["answering"] = answering(stack, ids)
            memory = [memory_of(stack, i) for i in ids]
            results["memory_usage_mb"] = sorted(m[0] for m in memory)
            results["memory_rss_mb"] = sorted(m[1] for m in memory)
            results["memory_limit_mb"] = memory[0][2]
            results["idle_cpus"] = idle_cpu(stack, args.idle_s)
            results["host_used_mb"] = host_used_mb()
            log(f"held {len(ids)}, {results['answering']} answer; idle CPUs {results['idle_cpus']:.3f}; "
                f"memory per deployment median {results['memory_usage_mb'][len(ids) // 2]:.0f} MB")

            if args.memory_phase_ratio > results["node"]["ratio"] and refusal:
                stack.set_node_ratio(args.memory_phase_ratio)
                before = len(ids)
                refusal2, index = fill(stack, ids, index, args.memory_phase_max, args.batch,
                                       args.ready_timeout)
                results["memory_phase"] = {"ratio": args.memory_phase_ratio, "held": len(ids),
                                           "added": len(ids) - before, "refusal": refusal2,
                                           "answering": answering(stack, ids),
                                           "load": os.getloadavg(),
                                           "host_used_mb": host_used_mb()}
                log(f"memory phase: {results['memory_phase']}")
            results["saturated_waits"] = stack.refusals_waited
            results["oom_kills"] = watch.stop()
            results["failed"] = stack.failed

            started = time.perf_counter()
            stack.down(ids + list(stack.failed), wake=False)
            results["down_s"] = time.perf_counter() - started
            results["down_count"] = len(ids)
        finally:
            if watch is not None:
                log(f"OOM kills seen per deployment cgroup: {watch.stop()}")
            if stack.agent is not None:
                Path("/tmp/density-agent.log").write_text(stack.agent.log)   # for a failure's why
            stack.stop()
    results["load_after"] = os.getloadavg()
    return results


def block(r, command):
    def load(values):
        return f"{values[0]:.1f}"

    usage, rss = r["memory_usage_mb"], r["memory_rss_mb"]
    lines = [BEGIN, f"`{command}` ({r['date']}; {os.cpu_count()} cores, "
                    f"{psutil.virtual_memory().total / 2**30:.1f} GiB; load average "
                    f"{load(r['load_before'])} before the run, shared with other work)", "",
             f"Node as the agent reports it: {r['node']['cpus']:g} CPUs, {r['node']['memory_mb']:,} MB; "
             f"memory reserve {r['node']['reserve_mb']} MB, CPU overcommit {r['node']['ratio']:g} (the "
             f"defaults). Demo project as seeded: {r['project']['cpus']:g} CPU and "
             f"{r['project']['memory_mb']} MB per deployment. Agent: {r['limits_way']}."
             + (" Run with --ignore-saturation: the host's CPU use (others' work on this shared "
                "machine) was not asked about; allocation (the ratio, the memory) was."
                if r.get("ignore_saturation") else ""), "",
             "| measure | result |", "|---|---|",
             f"| {r['together']} demo deployments created at once (service layer) until all are "
             f"`ready` | {r['together_ready_s']:.1f} s |",
             f"| ... until each web answered with its 3 seeded rows through Caddy | "
             f"{r['together_answered_s']:.1f} s ({r['together_answering']} of {r['together']}) |",
             f"| held at once | **{r['held']}**, {r['answering']} answering "
             f"with their 3 seeded rows through Caddy |",
             f"| the next one refused | {r['refusal'] or 'not tried (the --max bound)'} |",
             f"| memory per deployment (its cgroup: working set as docker stats counts it / RSS), "
             f"median (min-max) | "
             f"{usage[len(usage) // 2]:.0f} MB ({usage[0]:.0f}-{usage[-1]:.0f}) / "
             f"{rss[len(rss) // 2]:.0f} MB ({rss[0]:.0f}-{rss[-1]:.0f}); "
             f"limit {r['memory_limit_mb']:.0f} MB |",
             f"| CPU of all {r['held']} idle together | {r['idle_cpus']:.3f} CPUs "
             f"({r['idle_cpus'] / r['held'] * 1000:.1f} milli-CPU each) |",
             f"| host memory in use with them (all other work included) | {r['host_used_mb']:,.0f} MB |",
             f"| load average: with the first batch ready / all held | {load(r['load_together'])} / "
             f"{load(r['load_held'])} |",
             f"| creates refused because the node was busy over the last minute, waited out | "
             f"{r['saturated_waits']} |",
             f"| processes the kernel killed for memory in a deployment's cgroup | "
             f"{sum(r['oom_kills'].values())} |",
             f"| deployments that failed (not counted as held) | {len(r['failed'])}"
             + "".join(f"; {message}" for message in list(r["failed"].values())[:1]) + " |"]
    phase = r.get("memory_phase")
    if phase:
        lines += [f"| then with the node's CPU overcommit raised to {phase['ratio']:g}: held | "
                  f"**{phase['held']}** ({phase['answering']} answering), host memory in use "
                  f"{phase['host_used_mb']:,.0f} MB, load {load(phase['load'])} |",
                  f"| ... the next one refused | {phase['refusal'] or 'not tried (the bound)'} |"]
    lines += [f"| all {r['down_count']} deleted at once until every row is `deleted` | {r['down_s']:.1f} s |",
              END]
    return "\n".join(lines)


SECTION_TEXT = f"""{SECTION}

`benchmarks/density.py` fills one node of this machine with demo deployments with admission as
shipped (no overrides) and reports how many it held, why it refused the next, what each holds
and how long a batch created at once takes to be ready (docs/deployments.md "Admission",
"Limits").

"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--together", type=int, default=30)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--max", type=int, default=100, help="stop creating at this many (as shipped)")
    parser.add_argument("--memory-phase-ratio", type=float, default=32.0,
                        help="node CPU overcommit for the memory phase (0: skip it)")
    parser.add_argument("--memory-phase-max", type=int, default=160)
    parser.add_argument("--ready-timeout", type=float, default=1200)
    parser.add_argument("--settle-s", type=float, default=20)
    parser.add_argument("--idle-s", type=float, default=30)
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument("--ignore-saturation", action="store_true",
                        help="admission without the agent's CPU-use figure (a host others keep busy); "
                             "the docs say so")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    command = ".venv/bin/python -m benchmarks.density"
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    text_ = block(results, command)
    print(text_)
    if not args.no_docs:
        write_docs(args.docs, text_, BEGIN, END, SECTION_TEXT)
        log(f"written into {args.docs}")
    return 0 if results["held"] >= 60 and results["answering"] == results["held"] else 1


if __name__ == "__main__":
    sys.exit(main())
