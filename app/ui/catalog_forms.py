"""Forms of the catalog pages (registries, services, plugins, pipeline import) and the reading
of their text fields into what the services take: comma-separated ports, NAME=value lines, one
argument per line, JSON. Fields carry no WTForms validators: the services check every value and
name every bad field. What cannot even be read is named the same way (the service's field
names), so the page marks both kinds of problem alike."""
import json
import re

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    PasswordField,
    RadioField,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.fields.choices import SelectChoice

from app.models.catalog import DEFAULT_PLUGIN_TIMEOUT_S
from app.services.errors import ValidationFailed

PORTS_HINT = "give port numbers separated by commas, e.g. 8000, 8080"
HEALTH_CHECK_EXAMPLE = '{"type": "http", "port": 8000, "path": "/health"}'
PARAMS_SCHEMA_EXAMPLE = '{"type": "object", "properties": {"database": {"type": "string"}}}'


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --- registries ---------------------------------------------------------------------------------
class RegistryForm(FlaskForm):
    name = StringField("Name")
    url = StringField("URL")
    username = StringField("Username")
    password = PasswordField("Password")


class RegistryEditForm(RegistryForm):
    clear_credentials = BooleanField("Clear the credentials (anonymous access)")


class TagSearchForm(FlaskForm):
    """Listing tags changes nothing: a GET form, without a CSRF token."""

    class Meta:
        csrf = False

    repository = StringField("Repository")
    pattern = StringField("Pattern")


def registry_credentials(form):
    """(username, password) for a new registry; both empty means anonymous access."""
    return (form.username.data or "").strip() or None, form.password.data or None


def registry_changes(form):
    """The registry's changes as registries.update takes them. The username and password are
    write-only: an empty field keeps what is stored."""
    changes = {"name": (form.name.data or "").strip(), "url": (form.url.data or "").strip()}
    username, password = registry_credentials(form)
    if form.clear_credentials.data:
        if username is not None or password is not None:
            raise ValidationFailed(
                "clear the credentials or give new ones, not both",
                {"clear_credentials": "untick it to set new credentials, or empty username and password"})
        changes["username"] = None  # drops the password too
    else:
        if username is not None:
            changes["username"] = username
        if password is not None:
            changes["password"] = password
    return changes


# --- services and plugins -----------------------------------------------------------------------
class _CatalogItemForm(FlaskForm):
    name = StringField("Name")
    description = StringField("Description")
    # Choices are the registries (set by the page); the service checks the id.
    registry_id = SelectField("Registry", coerce=_int_or_none, validate_choice=False)
    image = StringField("Image")


class ServiceForm(_CatalogItemForm):
    tag_mode = RadioField("Tag mode", default="pinned", validate_choice=False, choices=[
        SelectChoice("pinned", "Pinned: one fixed tag"),
        SelectChoice("selectable", "Selectable: users choose a tag when they deploy")])
    tag = StringField("Tag (pinned)")
    tag_pattern = StringField("Tag pattern (selectable)")
    ports = StringField("Ports")
    exposed_ports = StringField("Exposed ports")
    env = TextAreaField("Environment")
    command = TextAreaField("Command")
    health_check = TextAreaField("Health check")


class PluginForm(_CatalogItemForm):
    tag = StringField("Tag")
    params_schema = TextAreaField("Parameters schema")
    cpus = StringField("CPUs", default="0.5")
    memory_mb = StringField("Memory (MB)", default="256")
    timeout_s = StringField("Timeout (seconds)", default=str(DEFAULT_PLUGIN_TIMEOUT_S))
    network = BooleanField("Joins the deployment's network")
    rollback = BooleanField("Runs again on rollback and delete")


class PipelineImportForm(FlaskForm):
    yaml = TextAreaField("Pipeline YAML")


class _Problems(dict):
    """{field: hint} of what could not be read; raised before the service is asked."""

    def raise_any(self, what):
        if self:
            listed = "; ".join(f"{field}: {hint}" for field, hint in self.items())
            raise ValidationFailed(f"the {what} is invalid: {listed}", dict(self))


def _text(field):
    return (field.data or "").strip()


def _lines(text):
    return [line.rstrip("\r") for line in text.split("\n")]


def _json(text, field, problems, example):
    try:
        return json.loads(text)
    except ValueError as exc:
        where = (f" at line {exc.lineno}, column {exc.colno}"
                 if isinstance(exc, json.JSONDecodeError) else "")
        problems.setdefault(field, f"not valid JSON{where}; e.g. {example}")
    except RecursionError:
        problems.setdefault(field, f"nested too deeply; e.g. {example}")
    return None


def _ports(text, field, problems):
    parts = [p for p in re.split(r"[\s,]+", text.strip()) if p]
    if not all(re.fullmatch(r"[0-9]{1,9}", p) for p in parts):
        problems.setdefault(field, PORTS_HINT)
        return []
    return [int(p) for p in parts]


def _env(text, problems):
    """NAME=value lines (values as written, spaces kept), or a JSON object for values that
    span lines."""
    if text.strip().startswith("{"):
        env = _json(text, "env", problems, '{"LOG_LEVEL": "info"}')
        return env if env is not None else {}
    env = {}
    for number, line in enumerate(_lines(text), 1):
        if not line.strip():
            continue
        name, equals, value = line.partition("=")
        name = name.strip()
        if not equals or not name:
            problems.setdefault("env", f"line {number}: write NAME=value, one variable a line")
        elif name in env:
            problems.setdefault("env", f"line {number}: {name} is set twice; keep one")
        else:
            env[name] = value
    return env


def _command(text):
    """One argument a line (blank lines skipped), or a JSON list; nothing: the image's own."""
    if not text.strip():
        return None
    if text.strip().startswith("["):
        try:
            arguments = json.loads(text)
        except (ValueError, RecursionError):
            arguments = None
        if isinstance(arguments, list) and all(isinstance(a, str) for a in arguments):
            return arguments
    return [line for line in _lines(text) if line.strip()]


def _number(text, kind):
    """The number, or the text itself: the service refuses it with the allowed range."""
    try:
        return kind(text)
    except ValueError:
        return text


def _tag_fields(form):
    """The tag mode decides which of the two fields counts; the other one is ignored."""
    mode = form.tag_mode.data
    tag, pattern = _text(form.tag) or None, _text(form.tag_pattern) or None
    if mode == "pinned":
        pattern = None
    elif mode == "selectable":
        tag = None
    return {"tag_mode": mode, "tag": tag, "tag_pattern": pattern}


def service_values(form):
    """Every field of the service as service_catalog.create/update take them."""
    problems = _Problems()
    health_check = _text(form.health_check)
    values = {
        "name": _text(form.name), "description": _text(form.description),
        "registry_id": form.registry_id.data, "image": _text(form.image), **_tag_fields(form),
        "ports": _ports(form.ports.data or "", "ports", problems),
        "exposed_ports": _ports(form.exposed_ports.data or "", "exposed_ports", problems),
        "env": _env(form.env.data or "", problems), "command": _command(form.command.data or ""),
        "health_check": (_json(health_check, "health_check", problems, HEALTH_CHECK_EXAMPLE)
                         if health_check else None),
    }
    problems.raise_any("service")
    return values


def plugin_values(form):
    """Every field of the plugin as plugins.create/update take them."""
    problems = _Problems()
    schema = _text(form.params_schema)
    values = {
        "name": _text(form.name), "description": _text(form.description),
        "registry_id": form.registry_id.data, "image": _text(form.image), "tag": _text(form.tag),
        "params_schema": (_json(schema, "params_schema", problems, PARAMS_SCHEMA_EXAMPLE)
                          if schema else {}),
        "cpus": _number(_text(form.cpus), float), "memory_mb": _number(_text(form.memory_mb), int),
        "timeout_s": _number(_text(form.timeout_s), int), "network": bool(form.network.data),
        "rollback": bool(form.rollback.data),
    }
    problems.raise_any("plugin")
    return values


# --- filling the forms from stored rows ---------------------------------------------------------
def _env_text(env):
    if any("\n" in v or "\r" in v for v in env.values()):
        return json.dumps(env, indent=2, ensure_ascii=False)
    return "\n".join(f"{name}={value}" for name, value in env.items())


def _command_text(command):
    if not command:
        return ""
    if (command[0].strip().startswith("[")
            or any(not a.strip() or "\n" in a or "\r" in a for a in command)):
        return json.dumps(command, ensure_ascii=False)
    return "\n".join(command)


def service_data(service):
    return {
        "name": service.name, "description": service.description, "registry_id": service.registry_id,
        "image": service.image, "tag_mode": service.tag_mode, "tag": service.tag or "",
        "tag_pattern": service.tag_pattern or "",
        "ports": ", ".join(map(str, service.ports)),
        "exposed_ports": ", ".join(map(str, service.exposed_ports)),
        "env": _env_text(service.env), "command": _command_text(service.command),
        "health_check": json.dumps(service.health_check) if service.health_check else "",
    }


def plugin_data(plugin):
    return {
        "name": plugin.name, "description": plugin.description, "registry_id": plugin.registry_id,
        "image": plugin.image, "tag": plugin.tag,
        "params_schema": json.dumps(plugin.params_schema, indent=2) if plugin.params_schema else "",
        "cpus": f"{plugin.cpus:g}", "memory_mb": str(plugin.memory_mb),
        "timeout_s": str(plugin.timeout_s), "network": plugin.network,
        "rollback": plugin.rollback,
    }
