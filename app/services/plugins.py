"""Plugins: images that read JSON on stdin and write JSON on stdout (docs/plugins.md).

A plugin's image and tag are pinned; saving a pipeline copies them into the pipeline version,
so changing a plugin never changes what existing versions run. When a plugin is added or its
image changes, every enabled node is asked to pull the new image ahead of any run (spec:
"When plugin list changes, control plane notifies all agents"): a "prepull" NodeCommand per
node that the controller carries out over the node's live link (app/controller/manager.py).
"""
import json

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from sqlalchemy import select

from app.extensions import db
from app.models import Node, NodeCommand, Plugin
from app.models.catalog import DEFAULT_PLUGIN_TIMEOUT_S
from app.services import audit
from app.services.catalog import keyring
from app.services.registries import reveal_password
from app.services.service_catalog import (
    Problems,
    check_description,
    check_image,
    check_name,
    check_registry,
    check_tag,
    check_unique,
)
from app.services.specs import image_reference

PREPULL = "prepull"
PAYLOAD_CONTEXT = NodeCommand.__encrypted__["payload_ciphertext"]
CPUS_RANGE = (0.05, 64)
MEMORY_MB_RANGE = (16, 256 * 1024)
TIMEOUT_S_RANGE = (1, 24 * 60 * 60)
PARAMS_SCHEMA_MAX_BYTES = 64 * 1024
FIELDS = ("name", "description", "registry_id", "image", "tag", "params_schema", "cpus", "memory_mb",
          "timeout_s", "network", "rollback")
# A change to any of these is a different image on the nodes: pull it again.
IMAGE_FIELDS = ("registry_id", "image", "tag")


def _number(problems, field, value, bounds, integer):
    low, high = bounds
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        what = "a whole number" if integer else "a number"
        problems.add(field, f"use {what} from {low} to {high}")
        return value
    return value if integer else float(value)


def _params_schema(problems, schema):
    if not isinstance(schema, dict):
        problems.add("params_schema", 'give a JSON Schema object, e.g. {"type": "object", "properties": '
                                      '{"database": {"type": "string"}}}, or {} to accept any params')
        return
    if len(json.dumps(schema).encode()) > PARAMS_SCHEMA_MAX_BYTES:
        problems.add("params_schema", f"keep the schema under {PARAMS_SCHEMA_MAX_BYTES // 1024} KiB")
        return
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = exc.json_path  # "$" is the schema itself, "$.properties.port" a part of it
        problems.add("params_schema", f"not a valid JSON Schema (draft 2020-12) at {where}: {exc.message}")


def _checked(values, plugin_id=None):
    problems = Problems("plugin")
    check_name(problems, values["name"])
    check_description(problems, values["description"])
    check_registry(problems, values["registry_id"])
    check_image(problems, values["image"])
    check_tag(problems, values["tag"])
    _params_schema(problems, values["params_schema"])
    values["cpus"] = _number(problems, "cpus", values["cpus"], CPUS_RANGE, integer=False)
    values["memory_mb"] = _number(problems, "memory_mb", values["memory_mb"], MEMORY_MB_RANGE, integer=True)
    values["timeout_s"] = _number(problems, "timeout_s", values["timeout_s"], TIMEOUT_S_RANGE, integer=True)
    if not isinstance(values["network"], bool):
        problems.add("network", "use true (the plugin joins the deployment's network) or false")
    if not isinstance(values["rollback"], bool):
        problems.add("rollback", "use true (run again with action rollback on rollback and delete) or false")
    problems.raise_any()
    check_unique(Plugin, values["name"], plugin_id)
    return values


def _queue_prepull(plugin):
    """A prepull command for every enabled node; returns how many. The payload carries the
    registry's credentials, so it is encrypted and never audited."""
    registry = plugin.registry
    item = {"image": image_reference(registry, plugin.image, plugin.tag)}
    if registry.has_credentials:
        item["auth"] = {"username": registry.username, "password": reveal_password(registry)}
    node_ids = db.session.scalars(select(Node.id).where(Node.enabled.is_(True)).order_by(Node.id)).all()
    payload = json.dumps([item])
    for node_id in node_ids:
        # A fresh nonce per node: each row stands alone (key rotation re-encrypts them one by one).
        db.session.add(NodeCommand(node_id=node_id, kind=PREPULL,
                                   payload_ciphertext=keyring().encrypt(payload, PAYLOAD_CONTEXT)))
    return len(node_ids)


def create(actor, name, registry_id, image, tag, *, description="", params_schema=None, cpus=0.5,
           memory_mb=256, timeout_s=DEFAULT_PLUGIN_TIMEOUT_S, network=False, rollback=False):
    values = _checked({
        "name": name, "description": description, "registry_id": registry_id, "image": image,
        "tag": tag, "params_schema": {} if params_schema is None else params_schema, "cpus": cpus,
        "memory_mb": memory_mb, "timeout_s": timeout_s, "network": network, "rollback": rollback,
    })
    plugin = Plugin(**values)
    db.session.add(plugin)
    db.session.flush()
    queued = _queue_prepull(plugin)
    details = {key: values[key] for key in FIELDS if key not in ("name", "description", "params_schema")}
    audit.record(actor, "plugin.create", "plugin", plugin, {**details, "prepull_nodes": queued})
    db.session.commit()
    return plugin


def update(actor, plugin, **changes):
    """Change the fields given. Pipeline versions keep the copies they made when saved."""
    unknown = changes.keys() - set(FIELDS)
    if unknown:
        raise TypeError(f"a plugin has no fields {sorted(unknown)}")
    current = {key: getattr(plugin, key) for key in FIELDS}
    values = _checked({**current, **changes}, plugin.id)
    changed = {key: [current[key], values[key]] for key in FIELDS if values[key] != current[key]}
    for key in changed:
        setattr(plugin, key, values[key])
    if changed:
        if "params_schema" in changed:
            changed["params_schema"] = "changed"  # the schema itself may be long; it is on the plugin
        if set(IMAGE_FIELDS) & changed.keys():
            db.session.flush()
            db.session.expire(plugin, ["registry"])  # registry_id may have moved
            changed["prepull_nodes"] = _queue_prepull(plugin)
        audit.record(actor, "plugin.update", "plugin", plugin, changed)
    db.session.commit()
    return plugin


def delete(actor, plugin):
    audit.record(actor, "plugin.delete", "plugin", plugin, {"image": plugin.image, "tag": plugin.tag})
    db.session.delete(plugin)
    db.session.commit()
