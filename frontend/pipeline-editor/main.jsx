// The visual pipeline editor, mounted on #pipeline-editor (app/templates/ui/pipeline.html).
//
// Built the way React Flow's examples build a node editor: a palette of draggable catalog items,
// onDrop + screenToFlowPosition to place a node, onConnect for edges, the drawing kept in React
// Flow's node and edge state and turned into the pipeline document only on save. It reads the
// catalog from GET .../pipeline/editor and saves through POST .../pipeline/versions, like any
// other client; the server judges validity and its field-keyed errors come back onto the nodes.
// Viewers who may not manage the project get the same canvas read-only.
import { createRoot } from "react-dom/client";
import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import {
  Background, Controls, ReactFlow, ReactFlowProvider, addEdge, useEdgesState, useNodesInitialized,
  useNodesState, useReactFlow,
} from "@xyflow/react";
import "../shared/flow.css";
import "./editor.css";
import StepNode from "../shared/StepNode.jsx";
import { NODE_HEIGHT, NODE_WIDTH, api, layout, toFlow } from "../shared/graph.js";
import Palette from "./Palette.jsx";
import NodePanel from "./NodePanel.jsx";
import {
  DRAG_TYPE, NO_PROBLEMS, mapProblems, newDefinition, referencesFor, renameReferences, toDefinition, uniqueId,
} from "./model.js";

const nodeTypes = { step: StepNode };
const edgeId = (from, to) => `${from}->${to}`;

// After a save, the server-rendered parts of the page (versions table, YAML) are fetched again.
async function refreshSections(pageUrl) {
  try {
    const response = await fetch(pageUrl, { credentials: "same-origin" });
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const part of document.querySelectorAll("[data-refresh]")) {
      const replacement = fresh.getElementById(part.id);
      if (replacement) part.replaceWith(document.importNode(replacement, true));
    }
  } catch {
    // The editor already says the version was saved; a reload shows the rest.
  }
}

function ProblemList({ problems, onSelect }) {
  if (!problems.list.length) return null;
  const count = problems.list.length;
  return (
    <div className="pe-problems" role="alert" data-testid="save-problems">
      <strong>The server found {count} problem{count > 1 ? "s" : ""} (select one to go to its node):</strong>
      <ul>
        {problems.list.map(({ field, hint, node }) => (
          <li key={field}>
            {node
              ? <button type="button" className="pe-link" onClick={() => onSelect(node)}><code>{field}</code></button>
              : <code>{field}</code>}: {hint}
          </li>
        ))}
      </ul>
    </div>
  );
}

function EdgePanel({ edge, problem, readOnly, onDelete }) {
  return (
    <div className="pe-node-panel" data-testid="edge-panel">
      <h3>Edge <code>{edge.source}</code> → <code>{edge.target}</code></h3>
      <p className="pe-help">{edge.target} runs after {edge.source}.</p>
      {problem && <small className="pe-error">{problem}</small>}
      {!readOnly && <button type="button" className="secondary" onClick={onDelete}>Delete edge</button>}
    </div>
  );
}

function Editor({ urls, requested }) {
  const { screenToFlowPosition, deleteElements, fitView } = useReactFlow();
  const nodesInitialized = useNodesInitialized();
  const canvasRef = useRef(null);
  const panelRef = useRef(null);
  const [catalog, setCatalog] = useState(null);
  const [failed, setFailed] = useState(null);
  const [nodes, setNodes, onNodesChange] = useNodesState([]);
  const [edges, setEdges, onEdgesChange] = useEdgesState([]);
  const [baseline, setBaseline] = useState(null);
  const [problems, setProblems] = useState(NO_PROBLEMS);
  const [status, setStatus] = useState(null);
  const [comment, setComment] = useState("");
  const [saving, setSaving] = useState(false);
  const [shown, setShown] = useState({ number: requested, latest: null });
  const [fitWanted, setFitWanted] = useState(false);

  useEffect(() => {
    Promise.all([api(urls.editor), urls.version ? api(urls.version) : null]).then(async ([data, version]) => {
      const graph = toFlow(version ? version.definition : { nodes: [], edges: [] });
      const placed = await layout(graph.nodes, graph.edges);
      setCatalog(data);
      setNodes(placed);
      setEdges(graph.edges);
      setBaseline(JSON.stringify(toDefinition(placed, graph.edges)));
      setShown({ number: version ? version.number : null, latest: data.latest });
      // An empty canvas keeps zoom 1, so the first drops land where they are let go.
      setFitWanted(placed.length > 0);
    }).catch((error) => setFailed(error.message));
  }, [urls.editor, urls.version]);

  useEffect(() => {
    if (fitWanted && nodesInitialized) {
      fitView({ padding: 0.2, maxZoom: 1.2 });
      setFitWanted(false);
    }
  }, [fitWanted, nodesInitialized, fitView]);

  const readOnly = !catalog || !catalog.can_manage;
  const current = useMemo(() => JSON.stringify(toDefinition(nodes, edges)), [nodes, edges]);
  const dirty = baseline !== null && current !== baseline;

  useEffect(() => {
    if (!dirty) return undefined;
    const warn = (event) => { event.preventDefault(); event.returnValue = ""; };
    window.addEventListener("beforeunload", warn);
    return () => window.removeEventListener("beforeunload", warn);
  }, [dirty]);

  const clearProblem = useCallback((id, field) => {
    setProblems((p) => {
      if (!p.nodes[id] || !(field in p.nodes[id])) return p;
      const mine = { ...p.nodes[id] };
      delete mine[field];
      return { ...p, nodes: { ...p.nodes, [id]: mine } };
    });
  }, []);

  const addNode = useCallback((kind, item, position) => {
    let at = position;
    if (!at) {
      const rect = canvasRef.current.getBoundingClientRect();
      const shift = (nodes.length % 6) * 24;
      at = screenToFlowPosition({ x: rect.left + rect.width / 2 + shift, y: rect.top + rect.height / 2 + shift });
      at = { x: at.x - NODE_WIDTH / 2, y: at.y - NODE_HEIGHT / 2 };
    }
    const id = uniqueId(item.name, new Set(nodes.map((n) => n.id)));
    const node = {
      id, type: "step", position: at, selected: true,
      data: { definition: newDefinition(kind, item, id), kind, label: id, catalogName: item.name },
    };
    setNodes((ns) => [...ns.map((n) => (n.selected ? { ...n, selected: false } : n)), node]);
    setEdges((es) => es.map((e) => (e.selected ? { ...e, selected: false } : e)));
    setStatus({ kind: "info", text: `Added ${kind} ${item.name} as node ${id}.` });
  }, [nodes, screenToFlowPosition, setNodes, setEdges]);

  const onDragOver = useCallback((event) => {
    if (readOnly) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  }, [readOnly]);

  const onDrop = useCallback((event) => {
    if (readOnly) return;
    const raw = event.dataTransfer.getData(DRAG_TYPE);
    if (!raw) return;
    event.preventDefault();
    const { kind, name } = JSON.parse(raw);
    const item = (kind === "service" ? catalog.services : catalog.plugins).find((i) => i.name === name);
    if (!item) return;
    const at = screenToFlowPosition({ x: event.clientX, y: event.clientY });
    addNode(kind, item, { x: at.x - NODE_WIDTH / 2, y: at.y - NODE_HEIGHT / 2 });
  }, [readOnly, catalog, screenToFlowPosition, addNode]);

  const onConnect = useCallback((connection) => {
    if (connection.source === connection.target) return;
    setEdges((es) => addEdge({ ...connection, id: edgeId(connection.source, connection.target) }, es));
  }, [setEdges]);

  const toggleEdge = useCallback((from, to, on) => {
    setEdges((es) => {
      const rest = es.filter((e) => e.id !== edgeId(from, to));
      return on ? [...rest, { id: edgeId(from, to), source: from, target: to }] : rest;
    });
  }, [setEdges]);

  const rename = useCallback((oldId, newId) => {
    setNodes((ns) => ns.map((n) => {
      const definition = renameReferences(n.data.definition, oldId, newId);
      if (n.id !== oldId) return { ...n, data: { ...n.data, definition } };
      return { ...n, id: newId, data: { ...n.data, label: newId, definition: { ...definition, id: newId } } };
    }));
    setEdges((es) => es.map((e) => {
      const source = e.source === oldId ? newId : e.source;
      const target = e.target === oldId ? newId : e.target;
      return { ...e, source, target, id: edgeId(source, target) };
    }));
    setProblems((p) => {
      const nodeProblems = { ...p.nodes };
      delete nodeProblems[oldId];
      return { ...p, nodes: nodeProblems };
    });
  }, [setNodes, setEdges]);

  const updateDefinition = useCallback((id, patch, field) => {
    setNodes((ns) => ns.map((n) => (n.id === id
      ? { ...n, data: { ...n.data, definition: { ...n.data.definition, ...patch } } } : n)));
    if (field) clearProblem(id, field);
  }, [setNodes, clearProblem]);

  const selectedNodes = nodes.filter((n) => n.selected);
  const selectedEdges = edges.filter((e) => e.selected);
  const selected = selectedNodes.length === 1 ? selectedNodes[0] : null;
  const selectedEdge = !selectedNodes.length && selectedEdges.length === 1 ? selectedEdges[0] : null;

  const deleteSelected = useCallback(() => {
    deleteElements({ nodes: selectedNodes.map((n) => ({ id: n.id })), edges: selectedEdges.map((e) => ({ id: e.id })) });
  }, [deleteElements, selectedNodes, selectedEdges]);

  const selectNode = useCallback((id) => {
    setNodes((ns) => ns.map((n) => ({ ...n, selected: n.id === id })));
    setEdges((es) => es.map((e) => (e.selected ? { ...e, selected: false } : e)));
    fitView({ nodes: [{ id }], maxZoom: 1.2, duration: 200 });
    setTimeout(() => panelRef.current && panelRef.current.focus(), 0);
  }, [setNodes, setEdges, fitView]);

  const tidy = useCallback(async () => {
    setNodes(await layout(nodes, edges, true));
    setFitWanted(true);
  }, [nodes, edges, setNodes]);

  const save = useCallback(async () => {
    const definition = toDefinition(nodes, edges);
    setSaving(true);
    setStatus({ kind: "info", text: "Saving…" });
    try {
      const version = await api(urls.save, { method: "POST", body: { definition, comment } });
      setBaseline(JSON.stringify(definition));
      setProblems(NO_PROBLEMS);
      setComment("");
      setShown({ number: version.number, latest: version.number });
      setStatus({ kind: "ok", text: `Version ${version.number} saved.` });
      // A reload shows the latest (the one just saved), not the ?version= this drawing began from.
      const address = new URL(window.location.href);
      if (address.searchParams.has("version")) {
        address.searchParams.delete("version");
        window.history.replaceState(null, "", address);
      }
      refreshSections(urls.page);
    } catch (error) {
      // The drawing stays as it is: only the problems are new.
      const found = mapProblems(error.body && error.body.fields, definition);
      setProblems(found);
      const count = found.list.length;
      setStatus({ kind: "error", text: count
        ? `Not saved: ${count} problem${count > 1 ? "s" : ""}, listed below and marked in red.`
        : `Not saved: ${error.message}` });
    } finally {
      setSaving(false);
    }
  }, [nodes, edges, comment, urls.save, urls.page]);

  const shownNodes = useMemo(() => nodes.map((n) => {
    const mine = problems.nodes[n.id];
    const list = mine ? Object.values(mine) : [];
    return list.length ? { ...n, data: { ...n.data, problems: list } } : n;
  }), [nodes, problems]);
  const shownEdges = useMemo(() => edges.map((e) => (problems.edges[e.id]
    ? { ...e, className: "pe-edge-problem", ariaLabel: `Edge ${e.source} to ${e.target}: ${problems.edges[e.id]}` }
    : e)), [edges, problems]);

  if (failed) return <p className="flash flash-error" role="alert">The editor could not load: {failed}</p>;
  if (!catalog) return <p aria-busy="true">Loading the editor…</p>;

  const references = selected ? referencesFor(selected.id, nodes, edges, catalog) : [];
  const commentProblem = problems.list.find((p) => p.field === "comment");
  const next = (shown.latest || 0) + 1;
  return (
    <div className={`pe-editor${readOnly ? " pe-read-only" : ""}`} data-testid="editor" data-dirty={dirty ? "1" : "0"}>
      {!readOnly && <Palette catalog={catalog} onAdd={(kind, item) => addNode(kind, item)} />}
      <div className="pe-main">
        {!readOnly && (
          <form className="pe-save" onSubmit={(e) => { e.preventDefault(); save(); }}>
            <label htmlFor="pe-comment">Comment</label>
            <input id="pe-comment" type="text" maxLength={500} value={comment} placeholder="What changed and why"
                   aria-invalid={commentProblem ? "true" : undefined} onChange={(e) => setComment(e.target.value)} />
            <button type="submit" disabled={saving || !nodes.length} aria-busy={saving ? "true" : undefined}>
              Save as version {next}
            </button>
            {commentProblem && <small className="pe-error">{commentProblem.hint}</small>}
            {shown.number && shown.latest && shown.number !== shown.latest && (
              <small className="pe-help">Saving makes version {next} from this drawing of version {shown.number}.</small>
            )}
          </form>
        )}
        <div className="pe-toolbar" role="toolbar" aria-label="Canvas">
          <button type="button" className="secondary outline" onClick={tidy} disabled={!nodes.length}>Tidy layout</button>
          {!readOnly && (
            <button type="button" className="secondary outline" onClick={deleteSelected}
                    disabled={!selectedNodes.length && !selectedEdges.length}>Delete selected</button>
          )}
          <span className="pe-version" data-testid="shown-version">
            {shown.number ? `Version ${shown.number}` : "No version yet"}
            {shown.number && shown.latest && shown.number !== shown.latest ? ` (the latest is ${shown.latest})` : ""}
            {dirty ? " · unsaved changes" : ""}
          </span>
        </div>
        {/* Always there (live regions announce changes, and the canvas does not jump). */}
        <p className={`pe-status pe-status-${status ? status.kind : "none"}`}
           role={status && status.kind === "error" ? "alert" : "status"} data-testid="editor-status">
          {status ? status.text : ""}
        </p>
        <ProblemList problems={problems} onSelect={selectNode} />
        <div className="pe-canvas island-canvas" ref={canvasRef} onDragOver={onDragOver} onDrop={onDrop}>
          <ReactFlow nodes={shownNodes} edges={shownEdges} nodeTypes={nodeTypes}
                     onNodesChange={onNodesChange} onEdgesChange={onEdgesChange} onConnect={onConnect}
                     isValidConnection={(c) => c.source !== c.target}
                     nodesDraggable={!readOnly} nodesConnectable={!readOnly} elementsSelectable
                     deleteKeyCode={readOnly ? null : ["Delete", "Backspace"]} minZoom={0.2}
                     aria-label="Pipeline graph">
            <Background />
            <Controls showInteractive={false} />
          </ReactFlow>
          {!nodes.length && (
            <p className="pe-empty">
              {readOnly ? "No pipeline yet." : "Drag services and plugins from the palette here, connect a right handle to a left one (that node runs after), and save."}
            </p>
          )}
        </div>
      </div>
      <aside className="pe-panel" aria-label="Selected element" ref={panelRef} tabIndex={-1}>
        {selected ? (
          <NodePanel key={selected.id} node={selected} nodes={nodes} edges={edges} catalog={catalog}
                     problems={problems.nodes[selected.id]} readOnly={readOnly} references={references}
                     onRename={rename} onDefinition={updateDefinition} onToggleEdge={toggleEdge}
                     onDelete={() => deleteElements({ nodes: [{ id: selected.id }] })} />
        ) : selectedEdge ? (
          <EdgePanel edge={selectedEdge} problem={problems.edges[selectedEdge.id]} readOnly={readOnly}
                     onDelete={() => deleteElements({ edges: [{ id: selectedEdge.id }] })} />
        ) : selectedNodes.length + selectedEdges.length > 1 ? (
          <div className="pe-help">
            <h3>{selectedNodes.length} nodes and {selectedEdges.length} edges selected</h3>
            <p>Select one to see its settings.</p>
            {!readOnly && <button type="button" className="secondary" onClick={deleteSelected}>Delete them</button>}
          </div>
        ) : (
          <div className="pe-help">
            <h3>Nothing selected</h3>
            <p>Select a node (click it, or Tab to it and press Enter) to see {readOnly ? "its settings" : "and change its settings"}.</p>
            {!readOnly && <p>Connect a node&apos;s right handle to another&apos;s left handle: the second runs after the first.
              Delete or Backspace removes what is selected.</p>}
          </div>
        )}
      </aside>
    </div>
  );
}

const mount = document.getElementById("pipeline-editor");
if (mount) {
  const urls = {
    editor: mount.dataset.editorUrl, version: mount.dataset.versionUrl, save: mount.dataset.saveUrl,
    page: mount.dataset.pageUrl,
  };
  const requested = mount.dataset.shownVersion ? Number(mount.dataset.shownVersion) : null;
  createRoot(mount).render(<ReactFlowProvider><Editor urls={urls} requested={requested} /></ReactFlowProvider>);
}
