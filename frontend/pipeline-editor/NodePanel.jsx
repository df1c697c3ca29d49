// The side panel: the selected node's id, what runs before it, and its settings (a service's env
// overrides and catalog facts, a plugin's params form), each with the server's problem beside it.
import { useEffect, useState } from "react";
import SchemaForm, { Problem } from "./SchemaForm.jsx";
import { ENV_NAME, fieldProblem, healthSummary, idProblem } from "./model.js";

function IdField({ node, taken, onRename, problem, readOnly }) {
  const [draft, setDraft] = useState(node.id);
  const [local, setLocal] = useState(null);
  useEffect(() => { setDraft(node.id); setLocal(null); }, [node.id]);
  const commit = () => {
    if (draft === node.id) { setLocal(null); return; }
    const why = idProblem(draft, taken.has(draft));
    setLocal(why);
    if (!why) onRename(node.id, draft);
  };
  const shown = local || problem;
  return (
    <div className="pe-field" data-field="id">
      <label htmlFor="pe-node-id">Node id</label>
      <input id="pe-node-id" type="text" value={draft} readOnly={readOnly} spellCheck="false" autoComplete="off"
             aria-invalid={shown ? "true" : undefined} aria-describedby="pe-node-id-help pe-node-id-error"
             onChange={(e) => setDraft(e.target.value.trim())} onBlur={commit}
             onKeyDown={(e) => { if (e.key === "Enter") { e.preventDefault(); commit(); } }} />
      <small id="pe-node-id-help" className="pe-help">
        A DNS label; for a service, its host name in the deployment. References to it follow a rename.
      </small>
      <Problem id="pe-node-id-error" text={shown} />
    </div>
  );
}

function RunsAfter({ node, nodes, edges, onToggle, readOnly, problem }) {
  const others = nodes.filter((n) => n.id !== node.id);
  if (!others.length) return null;
  const before = new Set(edges.filter((e) => e.target === node.id).map((e) => e.source));
  return (
    <fieldset className="pe-field pe-after" data-field="after">
      <legend>Runs after</legend>
      {others.map((n) => (
        <label key={n.id}>
          <input type="checkbox" checked={before.has(n.id)} disabled={readOnly}
                 onChange={(e) => onToggle(n.id, node.id, e.target.checked)} />
          {n.id}
        </label>
      ))}
      <Problem id="pe-after-error" text={problem} />
    </fieldset>
  );
}

// One editor for a service's name -> text maps: its env overrides and its secret files
// (issue 17 item 8: files under /run/secrets on a tmpfs, kept out of `docker inspect`).
const MAP_FIELDS = {
  env: { legend: "Environment overrides", what: "Variable", placeholder: "NAME", cls: "pe-env",
    rule: (k) => !ENV_NAME.test(k) && "use letters, digits and '_', not starting with a digit" },
  secret_files: { legend: "Secret files (/run/secrets/<name>, not in docker inspect)", what: "File",
    placeholder: "db_password", cls: "pe-secret-files",
    rule: (k) => !FILE_NAME.test(k) && "use letters, digits, '_', '.' and '-', not starting with '.' or '-'" },
};
const FILE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

function EnvEditor({ node, catalogEnv, onChange, problems, listId, readOnly, field = "env" }) {
  const { legend, what, placeholder, cls, rule } = MAP_FIELDS[field];
  const toRows = (env) => Object.entries(env || {}).map(([key, value]) => ({ key, value }));
  const env = node.data.definition[field];
  const [rows, setRows] = useState(() => toRows(env));
  useEffect(() => { setRows(toRows(node.data.definition[field])); }, [node.id]); // eslint-disable-line
  const publish = (next, name) => {
    setRows(next);
    onChange(Object.fromEntries(next.filter((r) => r.key).map((r) => [r.key, r.value])), name);
  };
  const keys = rows.map((r) => r.key);
  const catalogKeys = Object.keys(catalogEnv || {}).filter((k) => !keys.includes(k));
  const lower = what.toLowerCase();
  return (
    <fieldset className={`pe-field ${cls}`} data-field={field}>
      <legend>{legend}</legend>
      <Problem id={`${cls}-error`} text={problems && problems[field]} />
      {rows.map((row, i) => {
        const problem = (row.key && rule(row.key))
          || (row.key && keys.indexOf(row.key) !== i && "this name is given twice: the last one wins")
          || (row.key && fieldProblem(problems, `${field}.${row.key}`));
        return (
          <div className="pe-env-row" key={i} data-field={`${field}.${row.key}`}>
            <input type="text" aria-label={`${what} ${i + 1} name`} value={row.key} readOnly={readOnly} spellCheck="false"
                   autoComplete="off" placeholder={placeholder} aria-invalid={problem ? "true" : undefined}
                   onChange={(e) => publish(rows.map((r, j) => (j === i ? { ...r, key: e.target.value.trim() } : r)), `${field}.${row.key}`)} />
            <input type="text" aria-label={`${what} ${row.key || i + 1} value`} value={row.value} readOnly={readOnly}
                   list={listId} spellCheck="false" autoComplete="off"
                   placeholder={catalogEnv && catalogEnv[row.key] !== undefined ? catalogEnv[row.key] : field === "env" ? "value" : "${secrets.NAME}"}
                   aria-invalid={problem ? "true" : undefined} aria-describedby={problem ? `${cls}-${i}-error` : undefined}
                   onChange={(e) => publish(rows.map((r, j) => (j === i ? { ...r, value: e.target.value } : r)), `${field}.${row.key}`)} />
            {!readOnly && (
              <button type="button" className="secondary outline pe-small" aria-label={`Remove ${lower} ${row.key || i + 1}`}
                      onClick={() => publish(rows.filter((_, j) => j !== i), `${field}.${row.key}`)}>×</button>
            )}
            <Problem id={`${cls}-${i}-error`} text={problem} />
          </div>
        );
      })}
      {!readOnly && (
        <button type="button" className="secondary outline pe-small" onClick={() => setRows([...rows, { key: "", value: "" }])}>
          Add {lower}
        </button>
      )}
      {catalogKeys.length > 0 && (
        <>
          <p className="pe-help">From the catalog (override by adding the same name):</p>
          <ul className="pe-catalog-env">
            {catalogKeys.map((k) => (
              <li key={k}><code>{k}={catalogEnv[k]}</code><Problem id={`pe-catalog-env-${k}`} text={fieldProblem(problems, `env.${k}`)} /></li>
            ))}
          </ul>
        </>
      )}
    </fieldset>
  );
}

// A node's own limits (issue 18 item 1): empty shares the project's; the server checks them
// against the project's limits on save and names the numbers.
function OwnLimits({ node, item, problems, readOnly, onChange }) {
  const def = node.data.definition;
  const fallback = node.data.kind === "service" ? "shares the project's" : "as the catalog's";
  const field = (key, label, step, catalogValue) => (
    <label key={key}>
      {label}
      <input type="number" min={step} step={step} data-field={key} disabled={readOnly}
             aria-invalid={problems && problems[key] ? "true" : undefined}
             placeholder={catalogValue !== undefined ? `catalog: ${catalogValue}` : fallback}
             value={def[key] ?? ""}
             onChange={(e) => onChange({ [key]: e.target.value === "" ? undefined : Number(e.target.value) }, key)} />
      {problems && problems[key] && <Problem id={`pe-${key}-error`} text={problems[key]} />}
    </label>
  );
  return (
    <fieldset className="pe-limits" data-testid="own-limits">
      <legend>Own limits</legend>
      <div className="grid">
        {field("cpus", "CPUs", 0.05, node.data.kind === "plugin" && item ? item.cpus : undefined)}
        {field("memory_mb", "Memory (MB)", 1, node.data.kind === "plugin" && item ? item.memory_mb : undefined)}
      </div>
    </fieldset>
  );
}

function ServiceFacts({ service }) {
  if (!service) return <p className="pe-error">This service is not in the catalog any more.</p>;
  return (
    <dl className="pe-facts" data-testid="service-facts">
      <dt>Ports</dt><dd>{service.ports.length ? service.ports.join(", ") : "none"}</dd>
      <dt>Published at its URL</dt><dd>{service.exposed_ports.length ? service.exposed_ports.join(", ") : "none"}</dd>
      <dt>Ready when</dt><dd>{healthSummary(service.health_check)}</dd>
      <dt>Tag</dt><dd>{service.tag_mode === "pinned" ? "pinned in the catalog" : "chosen at deploy time"}</dd>
    </dl>
  );
}

function References({ id, references }) {
  return (
    <>
      <datalist id={id}>
        {references.map((r) => <option key={r.value} value={r.value} label={r.label} />)}
      </datalist>
      {references.length > 0 && (
        <details className="pe-refs">
          <summary>References this node may use</summary>
          <ul>{references.map((r) => <li key={r.value}><code>{r.value}</code> <small>{r.label}</small></li>)}</ul>
          <p className="pe-help">Value fields offer them as you type <code>$</code>.</p>
        </details>
      )}
    </>
  );
}

export default function NodePanel({ node, nodes, edges, catalog, problems, readOnly, references, onRename,
  onDefinition, onToggleEdge, onDelete }) {
  const def = node.data.definition;
  const kind = node.data.kind;
  const item = kind === "service"
    ? catalog.services.find((s) => s.name === def.service)
    : catalog.plugins.find((p) => p.name === def.plugin);
  const listId = `pe-refs-${node.id}`;
  const taken = new Set(nodes.map((n) => n.id));
  const nodeLevel = [problems && problems[""], problems && problems[kind], problems && problems.position].filter(Boolean);
  return (
    <div className="pe-node-panel" data-testid="node-panel" data-node={node.id}>
      <h3>{kind === "service" ? "Service" : "Plugin step"} <code>{node.id}</code></h3>
      <p className="pe-help">
        {kind}: <strong>{kind === "service" ? def.service : def.plugin}</strong>
        {item && item.description ? ` — ${item.description}` : ""}
      </p>
      {nodeLevel.map((text, i) => <Problem key={i} id={`pe-node-error-${i}`} text={text} />)}
      <IdField node={node} taken={taken} onRename={onRename} problem={problems && problems.id} readOnly={readOnly} />
      <RunsAfter node={node} nodes={nodes} edges={edges} onToggle={onToggleEdge} readOnly={readOnly} />
      {kind === "service" ? (
        <>
          <EnvEditor node={node} catalogEnv={item && item.env} problems={problems} listId={listId} readOnly={readOnly}
                     onChange={(env, field) => onDefinition(node.id, { env }, field)} />
          <EnvEditor node={node} field="secret_files" problems={problems} listId={listId} readOnly={readOnly}
                     onChange={(files, field) => onDefinition(node.id, { secret_files: files }, field)} />
          {problems && problems.command && <Problem id="pe-command-error" text={problems.command} />}
          <ServiceFacts service={item} />
        </>
      ) : (
        <fieldset className="pe-params" data-field="params">
          <legend>Parameters</legend>
          {item
            ? <SchemaForm nodeId={node.id} schema={item.params_schema} params={def.params || {}} problems={problems}
                          listId={listId} readOnly={readOnly}
                          onChange={(params, field) => onDefinition(node.id, { params }, field)} />
            : <p className="pe-error">This plugin is not in the catalog any more.</p>}
        </fieldset>
      )}
      <OwnLimits node={node} item={item} problems={problems} readOnly={readOnly}
                 onChange={(patch, field) => onDefinition(node.id, patch, field)} />
      {!readOnly && <References id={listId} references={references} />}
      {!readOnly && (
        <button type="button" className="secondary pe-delete" onClick={onDelete}>Delete node {node.id}</button>
      )}
    </div>
  );
}
