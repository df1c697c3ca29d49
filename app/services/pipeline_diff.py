"""What changed between two pipeline versions: nodes added, removed and changed (what the admin
wrote and what was resolved from the catalog, e.g. a plugin tag pinned differently), edges
added and removed. Positions (editor layout) are ignored."""
def _flatten(value, prefix=""):
    if isinstance(value, dict) and value:
        flat = {}
        for key, sub in value.items():
            flat.update(_flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, dict):
        return {}
    return {prefix: value}


def _field_changes(before, after):
    old, new = _flatten(before or {}), _flatten(after or {})
    return [{"field": f, "before": old.get(f), "after": new.get(f)}
            for f in sorted(old.keys() | new.keys()) if old.get(f) != new.get(f)]


def _edges(pairs):
    return [{"from": a, "to": b} for a, b in sorted(pairs)]


def diff(version, against=None):
    """What changed from `against` (None: an empty pipeline) to `version`. Positions are the
    editor's business and never count; resolved changes (a plugin tag pinned differently, a
    service's image) are listed apart from what the admin wrote."""
    def parts(v):
        if v is None:
            return {}, {}, set()
        nodes = {n["id"]: {k: val for k, val in n.items() if k not in ("id", "position")}
                 for n in v.definition["nodes"]}
        steps = {s["id"]: {k: val for k, val in s.items() if k not in ("id", "depends_on")}
                 for s in v.resolved["steps"]}
        return nodes, steps, {(e["from"], e["to"]) for e in v.definition["edges"]}

    old_nodes, old_steps, old_edges = parts(against)
    new_nodes, new_steps, new_edges = parts(version)
    changed = []
    for node_id in sorted(old_nodes.keys() & new_nodes.keys()):
        written = _field_changes(old_nodes[node_id], new_nodes[node_id])
        resolved = _field_changes(old_steps[node_id], new_steps[node_id])
        if written or resolved:
            changed.append({"id": node_id, "definition": written, "resolved": resolved})
    return {
        "number": version.number, "against": against.number if against is not None else None,
        "nodes": {"added": sorted(new_nodes.keys() - old_nodes.keys()),
                  "removed": sorted(old_nodes.keys() - new_nodes.keys()), "changed": changed},
        "edges": {"added": _edges(new_edges - old_edges), "removed": _edges(old_edges - new_edges)},
    }


