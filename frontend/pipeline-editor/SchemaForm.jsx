// A plugin step's params as a form generated from the plugin's JSON Schema (its params_schema):
// text, number, integer, boolean and enum fields with required marks, descriptions and
// defaults; anything more complex (objects, arrays, oneOf...) is a JSON text area.
import { useEffect, useState } from "react";
import { fieldProblem } from "./model.js";

const SIMPLE = new Set(["string", "number", "integer", "boolean"]);

function typeOf(prop) {
  if (!prop || typeof prop !== "object") return null;
  if (prop.oneOf || prop.anyOf || prop.allOf || prop.$ref) return null;
  if (Array.isArray(prop.enum) && prop.enum.every((v) => v === null || typeof v !== "object")) return "enum";
  const types = Array.isArray(prop.type) ? prop.type.filter((t) => t !== "null") : [prop.type];
  return types.length === 1 && SIMPLE.has(types[0]) ? types[0] : null;
}

function fieldId(nodeId, name) {
  return `param-${nodeId}-${name}`.replace(/[^A-Za-z0-9_-]/g, "_");
}

export function Problem({ id, text }) {
  if (!text) return null;
  return <small id={id} className="pe-error" data-testid="field-error">{text}</small>;
}

function describedBy(...ids) {
  const list = ids.filter(Boolean);
  return list.length ? list.join(" ") : undefined;
}

// Text the admin is typing in a number or JSON field stays as typed until it parses.
function useDraft(value, format) {
  const [draft, setDraft] = useState(format(value));
  useEffect(() => { setDraft(format(value)); }, [JSON.stringify(value)]); // eslint-disable-line
  return [draft, setDraft];
}

function JsonField({ id, value, onChange, invalid, describe, readOnly, rows = 4 }) {
  const format = (v) => (v === undefined ? "" : JSON.stringify(v, null, 2));
  const [draft, setDraft] = useDraft(value, format);
  const [bad, setBad] = useState(null);
  const commit = () => {
    if (!draft.trim()) { setBad(null); onChange(undefined); return; }
    try { onChange(JSON.parse(draft)); setBad(null); } catch (e) { setBad(`not JSON: ${e.message}`); }
  };
  return (
    <>
      <textarea id={id} rows={rows} spellCheck="false" value={draft} readOnly={readOnly}
                aria-invalid={invalid || bad ? "true" : undefined} aria-describedby={describedBy(describe, bad && `${id}-json`)}
                onChange={(e) => setDraft(e.target.value)} onBlur={commit} />
      <Problem id={`${id}-json`} text={bad} />
    </>
  );
}

function NumberField({ id, type, prop, value, onChange, invalid, describe, readOnly, required }) {
  const [draft, setDraft] = useDraft(value, (v) => (v === undefined || v === null ? "" : String(v)));
  return (
    <input id={id} type="number" step={type === "integer" ? 1 : "any"} value={draft} readOnly={readOnly}
           min={prop.minimum} max={prop.maximum} aria-required={required || undefined}
           placeholder={prop.default !== undefined ? String(prop.default) : undefined}
           aria-invalid={invalid ? "true" : undefined} aria-describedby={describe}
           onChange={(e) => {
             setDraft(e.target.value);
             if (e.target.value === "") onChange(undefined);
             else if (!Number.isNaN(Number(e.target.value))) onChange(Number(e.target.value));
           }} />
  );
}

function SchemaField({ nodeId, name, prop, required, value, onChange, problem, listId, readOnly }) {
  const id = fieldId(nodeId, name);
  const type = typeOf(prop);
  const description = prop.description && !/[.!?]$/.test(prop.description) ? `${prop.description}.` : prop.description;
  const help = [description, prop.default !== undefined ? `Default: ${JSON.stringify(prop.default)}.` : ""]
    .filter(Boolean).join(" ");
  const helpId = help ? `${id}-help` : null;
  const errorId = problem ? `${id}-error` : null;
  const describe = describedBy(helpId, errorId);
  const common = { id, "aria-invalid": problem ? "true" : undefined, "aria-describedby": describe };
  const label = (
    <>{prop.title || name}{required && <abbr title="required" className="pe-required"> *</abbr>}</>
  );
  let input;
  if (type === "boolean") {
    return (
      <div className="pe-field" data-field={`params.${name}`}>
        <label htmlFor={id}>
          <input {...common} type="checkbox" role="switch" disabled={readOnly}
                 checked={Boolean(value ?? prop.default ?? false)} onChange={(e) => onChange(e.target.checked)} />
          {label}
        </label>
        {help && <small id={helpId} className="pe-help">{help}</small>}
        <Problem id={errorId} text={problem} />
      </div>
    );
  }
  if (type === "enum") {
    const index = prop.enum.findIndex((v) => v === value);
    input = (
      <select {...common} value={index < 0 ? "" : String(index)} disabled={readOnly} aria-required={required || undefined}
              onChange={(e) => onChange(e.target.value === "" ? undefined : prop.enum[Number(e.target.value)])}>
        <option value="">{prop.default !== undefined ? `(default: ${JSON.stringify(prop.default)})` : "(not set)"}</option>
        {prop.enum.map((v, i) => <option key={i} value={String(i)}>{v === null ? "null" : String(v)}</option>)}
      </select>
    );
  } else if (type === "number" || type === "integer") {
    input = <NumberField id={id} type={type} prop={prop} value={value} onChange={onChange} invalid={Boolean(problem)}
                         describe={describe} readOnly={readOnly} required={required} />;
  } else if (type === "string") {
    input = (
      <input {...common} type="text" list={listId} value={value === undefined || value === null ? "" : String(value)}
             readOnly={readOnly} aria-required={required || undefined} spellCheck="false" autoComplete="off"
             maxLength={prop.maxLength} placeholder={prop.default !== undefined ? String(prop.default) : undefined}
             onChange={(e) => onChange(e.target.value === "" ? undefined : e.target.value)} />
    );
  } else {
    input = <JsonField id={id} value={value} onChange={onChange} invalid={Boolean(problem)} describe={describe}
                       readOnly={readOnly} />;
  }
  return (
    <div className="pe-field" data-field={`params.${name}`}>
      <label htmlFor={id}>{label}{!type && <small className="pe-help"> (JSON)</small>}</label>
      {input}
      {help && <small id={helpId} className="pe-help">{help}</small>}
      <Problem id={errorId} text={problem} />
    </div>
  );
}

export default function SchemaForm({ nodeId, schema, params, onChange, problems, listId, readOnly }) {
  const properties = (schema && typeof schema.properties === "object" && schema.properties) || null;
  const sectionProblem = problems && problems.params;
  if (!properties) {
    const id = fieldId(nodeId, "all-params");
    return (
      <div className="pe-field" data-field="params">
        <label htmlFor={id}>Parameters (JSON)</label>
        <JsonField id={id} rows={6} value={params} readOnly={readOnly} invalid={Boolean(sectionProblem)}
                   describe={sectionProblem ? `${id}-error` : undefined}
                   onChange={(v) => onChange(v && typeof v === "object" ? v : {}, "params")} />
        <Problem id={`${id}-error`} text={sectionProblem} />
      </div>
    );
  }
  const required = new Set(Array.isArray(schema.required) ? schema.required : []);
  const set = (name) => (v) => {
    const next = { ...params };
    if (v === undefined) delete next[name]; else next[name] = v;
    onChange(next, `params.${name}`);
  };
  const extraKeys = Object.keys(params).filter((k) => !(k in properties));
  const extraId = fieldId(nodeId, "other-params");
  const extra = Object.fromEntries(extraKeys.map((k) => [k, params[k]]));
  return (
    <>
      <Problem id={`${fieldId(nodeId, "params")}-error`} text={sectionProblem} />
      {Object.entries(properties).map(([name, prop]) => (
        <SchemaField key={`${nodeId}-${name}`} nodeId={nodeId} name={name} prop={prop || {}}
                     required={required.has(name)} value={params[name]} onChange={set(name)}
                     problem={fieldProblem(problems, `params.${name}`)} listId={listId} readOnly={readOnly} />
      ))}
      {(extraKeys.length > 0 || (schema.additionalProperties !== false && !readOnly)) && (
        <div className="pe-field" data-field="params-other">
          <label htmlFor={extraId}>Other parameters (JSON object)</label>
          <JsonField id={extraId} rows={2} value={extraKeys.length ? extra : undefined} readOnly={readOnly}
                     onChange={(v) => {
                       const next = Object.fromEntries(Object.entries(params).filter(([k]) => k in properties));
                       onChange({ ...next, ...(v && typeof v === "object" && !Array.isArray(v) ? v : {}) }, "params");
                     }} />
          {extraKeys.map((k) => <Problem key={k} id={`${extraId}-${k}`} text={fieldProblem(problems, `params.${k}`)} />)}
        </div>
      )}
    </>
  );
}
