"""docs/reliability.md from the chaos suite's results (tests/chaos/harness.py writes them; `make
chaos` runs the suite with full counts and then this).

Usage: python scripts/chaos_report.py RESULTS.json OUT.md
"""
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

# The scenarios of issue 14, in the order the doc lists them, with what makes each fault.
SCENARIOS = [
    ("agent_kill", "tests/chaos/test_agent_kill.py",
     "SIGKILL of the node agent at a random moment (0-6 s) after a deployment was created, some "
     "kills during deletes of earlier ones; the agent is started again on its data directory"),
    ("controller_kill", "tests/chaos/test_controller_kill.py",
     "SIGKILL of the active `nullops controller` process (of two) 0-2.5 s after 1-3 creates and "
     "0-2 deletes; the killed one is started again as the standby"),
    ("controller_freeze", "tests/chaos/test_controller_kill.py",
     "SIGSTOP of the active controller, a create and a delete while it is frozen, SIGCONT after "
     "the standby took over"),
    ("link_cut_close", "tests/chaos/test_link_cut.py",
     "the controller-agent link through a TCP proxy of the test's, every connection closed (FIN) "
     "and new ones closed at once, while a run is in its plugin step"),
    ("link_cut_blackhole", "tests/chaos/test_link_cut.py",
     "the same link blackholed: no byte forwarded, nothing closed, new connections unanswered"),
    ("docker_restart", "tests/chaos/test_docker_restart.py",
     "dockerd stopped (SIGTERM: it stops every container) and started again as "
     "scripts/docker-engine.sh does, under ready deployments"),
    ("caddy_outage", "tests/chaos/test_caddy_outage.py",
     "Caddy stopped while a deployment is deleted and another created, then started with "
     "`--resume` (its saved routes are stale)"),
    ("cycles", "tests/chaos/test_cycles.py",
     "create/delete cycles, each a run that ends ready, one that fails and one cancelled at a "
     "random moment, with the ingress on a real Caddy"),
    ("log_flood", "tests/chaos/test_log_flood.py",
     "a service writing a log flood and another writing random bytes, followed and tailed over "
     "the link, and a plugin writing megabytes of binary stderr"),
]


WRITTEN = "## What the runs found"   # a written section below the figures, kept as it is


def seconds(summary):
    if not summary or not summary.get("n"):
        return "-"
    return f"{summary['p50']:.1f} s / {summary['max']:.1f} s"


def render(results):
    scenarios = results.get("scenarios", {})
    machine = results.get("machine", {})
    finished = sorted(s.get("finished_at", "") for s in scenarios.values())
    day = (finished[-1] if finished and finished[-1] else datetime.now(UTC).isoformat())[:10]
    lines = [
        "# Reliability",
        "",
        "What the chaos suite (`tests/chaos/`, issue 14) measured with its full counts. Rerun with "
        "`make chaos` (about half an hour); `make test` runs the same scenarios with small counts. "
        "Every part is real: agent and controller processes, PostgreSQL, the Docker engine, Caddy; "
        "each scenario prints its random seed, and `NULLOPS_CHAOS_SEED=<seed>` replays its draws.",
        "",
        f"Run of {day} on `{machine.get('host', '?')}`: {machine.get('cpus', '?')} cores, "
        f"{machine.get('memory_gb', '?')} GiB, {machine.get('platform', '?')}, Python "
        f"{machine.get('python', '?')}; load average at the end "
        f"{', '.join(str(x) for x in machine.get('load_at_end', [])) or '?'} (the machine is shared "
        "with other test runs: times are upper bounds).",
        "",
        "| scenario | variant | iterations | converged | leaked objects | time to converge p50 / max "
        "| link drops (expected) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, _module, _fault in SCENARIOS:
        figures = scenarios.get(name)
        if figures is None:
            lines.append(f"| {name} | not run | | | | | |")
            continue
        lines.append(
            f"| {name} | {figures['variant']} | {figures['iterations']} | {figures['converged']} | "
            f"{figures['leaked']} | {seconds(figures['converge_s'])} | "
            f"{figures['link_drops']} ({figures['expected_link_drops']}) |")
    lines += [
        "",
        "## What the figures mean",
        "",
        "- **iterations**: faults injected (kills, cuts, outages, restarts, cycles, floods).",
        "- **converged**: iterations after which every deployment involved reached the status it "
        "must (ready, or failed with everything rolled back, or deleted), ready ones with their "
        "services running, within the scenario's deadline, and the scenario's own bound held "
        "(takeover, offline and back-in-sync times, routes right after Caddy's return).",
        "- **leaked objects**: containers, networks and volumes labelled "
        "`org.nullops.node=<the node>` whose deployment the database does not know or has in a "
        "status that holds nothing on the node (failed, deleted), routes in Caddy for deployments "
        "that are gone, live deployment rows and agent records left after everything was deleted.",
        "- **time to converge**: from the fault (the kill, the heal, Caddy's return, the engine "
        "answering again; a cycle's creation) until the above held; median and worst.",
        "- **link drops**: the node's moves to offline the controller recorded (its `node.offline` "
        "audit entries), and for the flood also new links in the agent's log; in brackets how many "
        "the fault itself causes (a killed agent drops its link; a killed controller's standby "
        "links again without the database seeing the node offline).",
        "",
        "## Scenarios",
        "",
    ]
    for name, module, fault in SCENARIOS:
        figures = scenarios.get(name)
        lines.append(f"### {name}")
        lines.append("")
        lines.append(f"`{module}`: {fault}.")
        lines.append("")
        if figures is None:
            lines.append("Not run in this pass (see its module for the switch that enables it).")
            lines.append("")
            continue
        lines.append(f"{figures['title']}; {figures['variant']} counts, seed {figures['seed']}, "
                     f"{figures['wall_s']:.0f} s of wall time.")
        lines.append("")
        if figures.get("measures"):
            lines.append("| measure | n | p50 | max |")
            lines.append("|---|---|---|---|")
            for measure, summary in figures["measures"].items():
                lines.append(f"| {measure} | {summary['n']} | {summary['p50']:.2f} s "
                             f"| {summary['max']:.2f} s |")
            lines.append("")
        if figures.get("counts"):
            counts = ", ".join(f"{k} {v}" for k, v in sorted(figures["counts"].items()))
            lines.append(f"Counts: {counts}.")
            lines.append("")
        if figures.get("leaked_objects"):
            lines.append("Leaked: " + "; ".join(figures["leaked_objects"][:10]) + ".")
            lines.append("")
        for note in figures.get("notes", [])[:10]:
            lines.append(f"- {note}")
        if figures.get("notes"):
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    results = json.loads(Path(argv[1]).read_text())
    out = Path(argv[2])
    text = render(results)
    # What people wrote about a run (causes, defects, what changed) stays across renders.
    kept = out.read_text().partition(f"\n{WRITTEN}")[2] if out.exists() else ""
    if kept:
        text += f"\n{WRITTEN}{kept}"
    out.write_text(text)
    print(f"wrote {argv[2]} from {argv[1]} ({len(results.get('scenarios', {}))} scenarios)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
