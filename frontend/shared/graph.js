// A pipeline definition ({nodes, edges} as the API keeps it) to React Flow nodes and edges, and
// back. Node positions live in the definition; nodes without one are laid out by elkjs.
import ELK from "elkjs/lib/elk.bundled.js";

export const NODE_WIDTH = 180;
export const NODE_HEIGHT = 56;

export function kindOf(node) {
  return node.plugin ? "plugin" : "service";
}

export function toFlow(definition) {
  const nodes = (definition.nodes || []).map((n) => ({
    id: n.id,
    type: "step",
    position: n.position ? { x: n.position.x, y: n.position.y } : null,
    data: { definition: n, kind: kindOf(n), label: n.id, catalogName: n.plugin || n.service },
  }));
  const edges = (definition.edges || []).map((e) => ({
    id: `${e.from}->${e.to}`, source: e.from, target: e.to,
  }));
  return { nodes, edges };
}

export function fromFlow(nodes, edges) {
  return {
    nodes: nodes.map((n) => ({
      ...n.data.definition,
      id: n.id,
      position: { x: Math.round(n.position.x), y: Math.round(n.position.y) },
    })),
    edges: edges.map((e) => ({ from: e.source, to: e.target })),
  };
}

const elk = new ELK();

// Positions for every node (left to right, in dependency order); `force` lays out all of them,
// otherwise only a graph with a node lacking a position is laid out.
export async function layout(nodes, edges, force = false) {
  if (!force && nodes.every((n) => n.position)) return nodes;
  const graph = {
    id: "root",
    layoutOptions: {
      "elk.algorithm": "layered",
      "elk.direction": "RIGHT",
      "elk.spacing.nodeNode": "40",
      "elk.layered.spacing.nodeNodeBetweenLayers": "60",
    },
    children: nodes.map((n) => ({ id: n.id, width: NODE_WIDTH, height: NODE_HEIGHT })),
    edges: edges.map((e) => ({ id: e.id, sources: [e.source], targets: [e.target] })),
  };
  const placed = await elk.layout(graph);
  const at = Object.fromEntries(placed.children.map((c) => [c.id, { x: c.x, y: c.y }]));
  return nodes.map((n) => ({ ...n, position: at[n.id] || { x: 0, y: 0 } }));
}

// The JSON API: its answer, or an Error carrying the error document (`body.error`).
export async function api(url, options = {}) {
  const csrf = document.querySelector('meta[name="csrf-token"]');
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  if (csrf && options.method && options.method !== "GET") headers["X-CSRFToken"] = csrf.content;
  const response = await fetch(url, {
    credentials: "same-origin", ...options, headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error((body.error && body.error.message) || `the server answered ${response.status}`);
    error.status = response.status;
    error.body = body.error || {};
    throw error;
  }
  return body;
}
