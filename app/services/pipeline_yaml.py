"""Pipelines as YAML, so admins can keep them in git: an export with a fixed key order that
diffs well, and an import that refuses what YAML would silently accept (duplicate keys, alias
bombs, dates) before saving a version like any other."""
import yaml

from app.services.errors import ValidationFailed
from app.services.pipelines import MAX_BYTES, NODE_KEYS, TooLarge, save_version


def _sorted(value):
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


class _Edge(dict):
    """An edge, written on one line: {from: db, to: mkdb}."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper, with edges on one line and multi-line text as | blocks (the emitter falls
    back to quoting when a block cannot hold the text exactly)."""


_Dumper.add_representer(_Edge, lambda dumper, edge: dumper.represent_mapping(
    "tag:yaml.org,2002:map", edge.items(), flow_style=True))
_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def export_yaml(version):
    """The version's definition as YAML: fixed key order, sorted maps, no line wrapping, so
    that saved files diff well in git. Header lines are comments; import ignores them."""
    author = version.created_by.username if version.created_by is not None else "someone"
    header = [f"# NullOps pipeline of project {version.project.name}, version {version.number}",
              f"# saved by {author} at {version.created_at:%Y-%m-%d %H:%M} UTC"]
    header += ["# " + "".join(c if c.isprintable() else " " for c in line)
               for line in version.comment.splitlines()]
    return "\n".join(header) + "\n" + _body(version.id, version.created_at, version.definition)


def _dump(definition):
    document = {
        "nodes": [{k: _sorted(n[k]) if k != "position" else {"x": n[k]["x"], "y": n[k]["y"]}
                   for k in NODE_KEYS if k in n} for n in definition["nodes"]],
        "edges": [_Edge(e) for e in definition["edges"]],
    }
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=1 << 20)


_bodies = {}


def _body(version_id, created_at, definition):
    """The YAML of a version's definition, dumped once per process: versions never change (the
    pipeline page shows the latest's on every view). The header, with names that may change,
    is written each time."""
    key = (version_id, created_at)
    body = _bodies.get(key)
    if body is None:
        body = _dump(definition)
        if len(_bodies) >= 256:
            _bodies.pop(next(iter(_bodies)))
        _bodies[key] = body
    return body


def _line_of(text, position):
    return text.count("\n", 0, position) + 1


def _duplicate_key(text):
    """YAML keeps the last of two equal keys silently; a lost `env:` should be an error."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    todo, seen = [root] if root is not None else [], set()
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in keys:
                        return key.value, key.start_mark.line + 1
                    keys.add(key.value)
                todo.extend((key, value))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)
    return None


def parse_yaml(data):
    """(definition, comment) from an imported YAML text (bytes)."""
    if len(data) > MAX_BYTES:
        raise TooLarge(f"the YAML is larger than {MAX_BYTES // 1024} KiB", {"body": "send a smaller file"})
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationFailed(f"the body is not UTF-8 text (byte {exc.start})",
                               {"body": "save the file as UTF-8"}) from None
    try:
        duplicate = _duplicate_key(text)
        loaded = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "malformed"
        if exc.context and exc.context_mark is not None and exc.problem:
            problem += f" ({exc.context} from line {exc.context_mark.line + 1})"
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "an unknown line"
        raise ValidationFailed(f"the YAML is malformed at {where}: {problem}",
                               {"body": f"{where}: {problem}"}) from None
    except yaml.reader.ReaderError as exc:
        line = _line_of(text, exc.position)
        raise ValidationFailed(f"the YAML is malformed at line {line}: {exc.reason} {exc.character!r}",
                               {"body": f"line {line}: remove the character {exc.character!r}"}) from None
    except (yaml.YAMLError, RecursionError):
        raise ValidationFailed("the YAML could not be read: it is malformed or nested too deeply",
                               {"body": "send a pipeline of nodes and edges"}) from None
    if duplicate is not None:
        key, line = duplicate
        raise ValidationFailed(f"the YAML repeats the key {key!r} at line {line}",
                               {"body": f"line {line}: {key!r} appears twice in the same map; keep one"})
    if not isinstance(loaded, dict):
        raise ValidationFailed("the YAML must be a map with nodes, edges and an optional comment",
                               {"body": "start with nodes: and edges: (export a version to see one)"})
    comment = loaded.pop("comment", "")
    return loaded, comment


def import_yaml(actor, project, data):
    definition, comment = parse_yaml(data)
    if comment is None:
        comment = ""
    return save_version(actor, project, definition, comment, via="import")
