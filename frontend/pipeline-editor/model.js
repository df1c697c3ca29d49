// The editor's rules that are not drawing: node ids, references a node may use, the pipeline
// document sent on save, and the server's validation errors mapped back onto nodes and fields.
// The server stays the judge (app/services/pipelines.py); these only help the admin get there.
import { fromFlow } from "../shared/graph.js";

// agent/spec.py ID_PATTERN: a DNS label, the service's host name in a deployment.
export const ID_PATTERN = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
export const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
export const DRAG_TYPE = "application/x-nullops-step";

export function idProblem(id, takenBy) {
  if (!ID_PATTERN.test(id)) {
    return "use a DNS label: 1-63 lowercase letters, digits or '-', not starting or ending with '-'";
  }
  if (takenBy) return `another node is already ${id}: node ids are unique`;
  return null;
}

// A free id made from a catalog name: the name itself, else name-2, name-3...
export function uniqueId(name, taken) {
  let base = String(name).toLowerCase().replace(/[^a-z0-9-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 63);
  base = base.replace(/-+$/, "") || "step";
  if (!taken.has(base)) return base;
  for (let i = 2; ; i += 1) {
    const suffix = `-${i}`;
    const candidate = base.slice(0, 63 - suffix.length).replace(/-+$/, "") + suffix;
    if (!taken.has(candidate)) return candidate;
  }
}

// Schema defaults of simple parameters, so a new step states what it runs with.
export function schemaDefaults(schema) {
  const params = {};
  for (const [key, prop] of Object.entries((schema && schema.properties) || {})) {
    if (prop && prop.default !== undefined && typeof prop.default !== "object") params[key] = prop.default;
  }
  return params;
}

export function newDefinition(kind, item, id) {
  return kind === "service"
    ? { id, service: item.name, env: {} }
    : { id, plugin: item.name, params: schemaDefaults(item.params_schema) };
}

// The document the versions API takes: empty env and params left out, as an admin writes it.
export function toDefinition(nodes, edges) {
  const definition = fromFlow(nodes, edges);
  for (const node of definition.nodes) {
    for (const key of ["env", "secret_files", "params"]) {
      if (node[key] && typeof node[key] === "object" && !Object.keys(node[key]).length) delete node[key];
    }
  }
  return definition;
}

// Every node that runs before `id` (through edges, transitively).
export function ancestors(id, edges) {
  const found = new Set();
  const todo = [id];
  while (todo.length) {
    const current = todo.pop();
    for (const e of edges) {
      if (e.target === current && !found.has(e.source)) {
        found.add(e.source);
        todo.push(e.source);
      }
    }
  }
  return found;
}

function walkStrings(value, visit) {
  if (typeof value === "string") return visit(value);
  if (Array.isArray(value)) return value.map((v) => walkStrings(v, visit));
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, walkStrings(v, visit)]));
  }
  return value;
}

// Output keys of a plugin step that other nodes already use (the catalog declares none).
function usedOutputs(stepId, nodes) {
  const keys = new Set();
  const pattern = new RegExp(`\\$\\{steps\\.${stepId}\\.outputs\\.([^}]+)\\}`, "g");
  for (const n of nodes) {
    walkStrings(n.data.definition, (s) => { for (const m of s.matchAll(pattern)) keys.add(m[1]); return s; });
  }
  return [...keys].sort();
}

// The references a value of node `id` may use: the project's secrets, upstream service nodes
// (and a service's own), upstream plugin steps' outputs. [{value, label}]
export function referencesFor(id, nodes, edges, catalog) {
  const upstream = ancestors(id, edges);
  const options = (catalog.secrets || []).map((name) => ({ value: `\${secrets.${name}}`, label: "project secret" }));
  const services = Object.fromEntries((catalog.services || []).map((s) => [s.name, s]));
  for (const n of nodes) {
    const def = n.data.definition;
    if (def.service && (upstream.has(n.id) || n.id === id)) {
      const ports = (services[def.service] || {}).ports || [];
      for (const attr of catalog.service_attributes || ["host", "port", "url"]) {
        if (attr === "port" && !ports.length) continue;
        options.push({ value: `\${services.${n.id}.${attr}}`, label: `service ${n.id}` });
      }
    } else if (def.plugin && upstream.has(n.id)) {
      const keys = usedOutputs(n.id, nodes);
      for (const key of keys) options.push({ value: `\${steps.${n.id}.outputs.${key}}`, label: `output of ${n.id}` });
      options.push({ value: `\${steps.${n.id}.outputs.`, label: `an output of ${n.id}: add its key and }` });
    }
  }
  return options;
}

// After a rename, what referred to the old id refers to the new one.
export function renameReferences(definition, oldId, newId) {
  return walkStrings(definition, (s) => s
    .split(`\${services.${oldId}.`).join(`\${services.${newId}.`)
    .split(`\${steps.${oldId}.`).join(`\${steps.${newId}.`));
}

// The server's field-keyed errors (app/services/pipelines.py _Problems: nodes.ID.params.KEY,
// nodes[INDEX].id, edges[INDEX].from, edges, comment...) against the document that was sent:
// {nodes: {id: {field: hint}}, edges: {edgeId: hint}, list: [{field, hint, node, edge}]}.
export function mapProblems(fields, sent) {
  const problems = { nodes: {}, edges: {}, list: [] };
  for (const [field, hint] of Object.entries(fields || {})) {
    let node = null;
    let edge = null;
    let sub = "";
    let m = field.match(/^nodes\.([^.[\]]+)(?:\.(.*))?$/);
    if (m) [node, sub] = [m[1], m[2] || ""];
    m = !m && field.match(/^nodes\[(\d+)\](?:\.(.*))?$/);
    if (m) {
      const sentNode = sent.nodes[Number(m[1])];
      node = sentNode ? sentNode.id : null;
      sub = m[2] || "";
    }
    const e = field.match(/^edges\[(\d+)\]/);
    if (e && sent.edges[Number(e[1])]) {
      const sentEdge = sent.edges[Number(e[1])];
      edge = `${sentEdge.from}->${sentEdge.to}`;
      problems.edges[edge] = hint;
    }
    // jsonschema names a missing required parameter on the params object: put it on the field.
    const required = sub.endsWith("params") && hint.match(/^'([^']+)' is a required property/);
    if (required) sub = `${sub}.${required[1]}`;
    if (node) {
      problems.nodes[node] = problems.nodes[node] || {};
      problems.nodes[node][sub] = hint;
    }
    problems.list.push({ field, hint, node, edge });
  }
  return problems;
}

export const NO_PROBLEMS = { nodes: {}, edges: {}, list: [] };

// The problem of one field of a node, or of a parent inside its section (params.a.b: params.a).
export function fieldProblem(nodeProblems, sub) {
  if (!nodeProblems) return null;
  // Not up to the section itself (params, env): its problem is shown once, above the fields.
  let path = sub;
  while (path.includes(".")) {
    if (nodeProblems[path]) return nodeProblems[path];
    path = path.slice(0, path.lastIndexOf("."));
  }
  return sub.includes(".") ? null : nodeProblems[sub] || null;
}

export function healthSummary(check) {
  if (!check) return "running is enough";
  const timeout = check.timeout_s ? ` (up to ${check.timeout_s} s)` : "";
  switch (check.type) {
    case "http": return `HTTP ${check.path || "/"} on port ${check.port}${timeout}`;
    case "tcp": return `TCP port ${check.port}${timeout}`;
    case "log": return `log line matching ${check.pattern}${timeout}`;
    case "exec": return `command ${(check.command || []).join(" ")}${timeout}`;
    default: return `${check.type}${timeout}`;
  }
}
