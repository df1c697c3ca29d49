// The deployment page's island, mounted on #deployment-graph (app/templates/ui/deployment.html):
// the pipeline graph (read-only, each step coloured by its state), kept live by polling the
// deployment's live state every 2 s (GET /api/v1/deployments/<id>/live: one indexed query). The
// same answers fill the service cards' health, and when anything changed the page's
// server-rendered parts are asked again (htmx, on the `deployment-changed` event). CPU and
// memory charts come from the node's figures every 5 s (an agent call: slower on purpose).
import { createRoot } from "react-dom/client";
import { useEffect, useMemo, useState } from "react";
import { ReactFlow, ReactFlowProvider, Background, Controls, useReactFlow } from "@xyflow/react";
import "../shared/flow.css";
import "./graph.css";
import StepNode from "../shared/StepNode.jsx";
import { layout, toFlow } from "../shared/graph.js";
import { poll } from "./live.js";
import { Charts, shownHealth, showHealth } from "./services.js";

const nodeTypes = { step: StepNode };
const LIVE_MS = 2000;
const METRICS_MS = 5000;
// Statuses with no containers to measure (the metrics poll stops; the live poll goes on).
const NOTHING_RUNS = ["deleting", "cleanup_failed", "deleted", "failed"];

// A step's state for its colour: a service's health, a plugin's progress, or what the
// deployment's status implies for a step the run has not reported.
function stateOf(step, live, running) {
  const service = live.services[step];
  if (service) return shownHealth(service, step, running).health;
  if (live.steps[step]) return live.steps[step];
  if (live.status === "deleted") return "removed";
  return ["ready", "degraded"].includes(live.status) ? "done" : "waiting";
}

const clock = (date) => date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });

const FIT = { maxZoom: 1.25, padding: 0.15 };

function Graph({ definition, live, running, note }) {
  const [laidOut, setLaidOut] = useState(null);
  const flow = useReactFlow();
  useEffect(() => { // a phone turned, a window resized: the whole pipeline stays in view
    let timer = null;
    const refit = () => { clearTimeout(timer); timer = setTimeout(() => flow.fitView(FIT), 150); };
    window.addEventListener("resize", refit);
    return () => { clearTimeout(timer); window.removeEventListener("resize", refit); };
  }, [flow]);
  useEffect(() => {
    const { nodes, edges } = toFlow(definition);
    layout(nodes, edges).then((nodes) => setLaidOut({ nodes, edges }));
  }, [definition]);
  const nodes = useMemo(() => (laidOut ? laidOut.nodes.map((n) => {
    const state = stateOf(n.id, live, running);
    return { ...n, ariaLabel: `${n.id} (${n.data.kind}): ${state}`, data: { ...n.data, state } };
  }) : []), [laidOut, live, running]);
  return (
    <>
      <div className="island-canvas">
        {laidOut && (
          <ReactFlow nodes={nodes} edges={laidOut.edges} nodeTypes={nodeTypes} fitView fitViewOptions={FIT}
                     nodesDraggable={false} nodesConnectable={false} elementsSelectable={false}
                     nodesFocusable edgesFocusable={false} panOnDrag={false} zoomOnScroll={false}
                     preventScrolling={false} proOptions={{ hideAttribution: true }}>
            <Background />
            <Controls showInteractive={false} />
          </ReactFlow>
        )}
      </div>
      <p className={`live-note${note.problem ? " problem" : ""}`} data-testid="live-note">{note.text}</p>
    </>
  );
}

function Island({ mount }) {
  const definition = useMemo(() => JSON.parse(mount.dataset.graph), [mount]);
  const [live, setLive] = useState(() => JSON.parse(mount.dataset.live));
  const [running, setRunning] = useState(null); // step ids with a running container, once measured
  const [note, setNote] = useState({ text: "Live: following the deployment.", problem: false });

  useEffect(() => {
    // What a change is: not status_changed_at, which the page's JSON writes as an HTTP date.
    const keyOf = (state) => JSON.stringify([state.status, state.status_message, state.steps, state.services]);
    let seen = keyOf(JSON.parse(mount.dataset.live));
    let status = live.status;
    let stopMetrics = () => {};
    const charts = new Charts();
    const startMetrics = () => {
      if (mount.dataset.metrics !== "on" || !document.querySelector(".chart[data-chart]")) return;
      stopMetrics = poll(mount.dataset.metricsUrl, {
        interval: METRICS_MS,
        onAnswer: (answer) => setRunning(charts.add(answer.at, answer.containers)),
        onProblem: (error) => { charts.problem(error.message); setRunning(null); },
        done: () => NOTHING_RUNS.includes(status),
        maxBackoff: 15000,
      });
    };
    if (!NOTHING_RUNS.includes(status)) startMetrics();
    const stopLive = poll(mount.dataset.liveUrl, {
      interval: LIVE_MS,
      onAnswer: (answer) => {
        const key = keyOf(answer);
        setNote({ text: answer.status === "deleted" ? "The deployment is deleted; nothing more to follow."
          : `Live: last checked ${clock(new Date())}.`, problem: false });
        if (key === seen) return;
        seen = key;
        status = answer.status;
        setLive(answer);
        document.body.dispatchEvent(new CustomEvent("deployment-changed", { detail: answer }));
        if (status === "deleted") { // what the server renders only for a live deployment (clone)
          document.querySelectorAll("[data-hidden-when-deleted]").forEach((el) => { el.hidden = true; });
        }
        // Asked again at once after a change (a node back online, a retry), backoff or not.
        stopMetrics();
        if (!NOTHING_RUNS.includes(status)) startMetrics();
      },
      onProblem: (error, wait) => setNote({
        text: `Live updates interrupted (${error.message}); trying again in ${Math.round(wait / 1000)} s.`,
        problem: true }),
      onGone: () => setNote({ text: "This deployment is no longer there for you; reload the page.", problem: true }),
      done: (answer) => answer.status === "deleted",
    });
    return () => { stopLive(); stopMetrics(); };
  }, [mount]);

  useEffect(() => showHealth(live.services, running), [live, running]);
  return <Graph definition={definition} live={live} running={running} note={note} />;
}

const mount = document.getElementById("deployment-graph");
if (mount) createRoot(mount).render(<ReactFlowProvider><Island mount={mount} /></ReactFlowProvider>);
