// The catalog's services and plugins: drag one onto the canvas (HTML5 drag and drop, placed
// where it is dropped), or press its Add button (keyboard), which places it beside the others.
import { useState } from "react";
import { DRAG_TYPE } from "./model.js";

function Item({ kind, item, onAdd }) {
  return (
    <li className={`pe-palette-item pe-${kind}`} draggable title={item.description || undefined}
        data-testid={`palette-${kind}-${item.name}`}
        onDragStart={(event) => {
          event.dataTransfer.setData(DRAG_TYPE, JSON.stringify({ kind, name: item.name }));
          event.dataTransfer.effectAllowed = "copy";
        }}>
      <span className="pe-palette-name">{item.name}</span>
      <button type="button" className="secondary outline pe-small" aria-label={`Add ${kind} ${item.name}`}
              onClick={() => onAdd(kind, item)}>Add</button>
    </li>
  );
}

export default function Palette({ catalog, onAdd }) {
  const [filter, setFilter] = useState("");
  const match = (item) => !filter || item.name.includes(filter.toLowerCase())
    || (item.description || "").toLowerCase().includes(filter.toLowerCase());
  const services = catalog.services.filter(match);
  const plugins = catalog.plugins.filter(match);
  return (
    <div className="pe-palette" role="region" aria-label="Catalog palette" data-testid="palette">
      <input type="search" placeholder="Filter" aria-label="Filter the catalog" value={filter}
             onChange={(e) => setFilter(e.target.value)} />
      <p className="pe-help">Drag onto the canvas, or Add.</p>
      <h3 id="pe-services">Services</h3>
      <ul aria-labelledby="pe-services">
        {services.map((s) => <Item key={s.name} kind="service" item={s} onAdd={onAdd} />)}
        {!services.length && <li className="pe-help">{catalog.services.length ? "none match" : "none in the catalog"}</li>}
      </ul>
      <h3 id="pe-plugins">Plugins</h3>
      <ul aria-labelledby="pe-plugins">
        {plugins.map((p) => <Item key={p.name} kind="plugin" item={p} onAdd={onAdd} />)}
        {!plugins.length && <li className="pe-help">{catalog.plugins.length ? "none match" : "none in the catalog"}</li>}
      </ul>
    </div>
  );
}
