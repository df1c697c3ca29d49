"""Small HTML fragments that list pages repeat on every row, written in Python: a Jinja macro
call costs about as much as a query, and the deployments list and the environment page call
several per row (docs/benchmarks.md, "Page latency"). Each returns Markup; every value that
comes from a user is escaped."""
from flask import request, url_for
from markupsafe import Markup, escape

from app.ui import bp


@bp.app_template_global()
def options(rows, selected=None):
    """The <option>s of (id, name) rows, `selected` (an id) marked."""
    return Markup("".join(
        f'<option value="{row[0]}"{" selected" if row[0] == selected else ""}>{escape(row[1])}</option>'
        for row in rows))


def _status_badge(status, testid):
    return Markup(f'<span class="badge status status-{escape(status)}" data-testid="{testid}">'
                  f'{escape(status.replace("_", " "))}</span>')


@bp.app_template_global()
def status_badge(status):
    """A deployment's status as a badge: ready green, on its way amber, trouble red, gone muted."""
    return _status_badge(status, "deployment-status")


@bp.app_template_global()
def node_status_badge(status):
    """A node's status as a badge: online green, offline grey, trouble red, disabled muted."""
    return _status_badge(status, "node-status")


def duration(seconds):
    """'1d 2h 3m 4s' (days and hours only when there are some), or 'due now'."""
    if seconds <= 0:
        return "due now"
    days, hours, minutes = seconds // 86400, seconds % 86400 // 3600, seconds % 3600 // 60
    return (f"{days}d " if days else "") + (f"{hours}h " if days or hours else "") \
        + f"{minutes}m {seconds % 60}s"


@bp.app_template_global()
def countdown(seconds):
    """Time left before auto-cleanup; app.js counts it down every second."""
    if seconds is None:
        return Markup('<span class="muted">–</span>')
    return Markup(f'<span class="countdown" data-remaining="{int(seconds)}" data-testid="countdown">'
                  f'{duration(int(seconds))}</span>')


@bp.app_template_global()
def url_links(urls):
    """A deployment's service URLs as links, one per line."""
    if not urls:
        return Markup('<span class="muted">none exposed</span>')
    return Markup("<br>".join(
        f'<a href="{escape(url)}" target="_blank" rel="noopener" data-service="{escape(step)}">'
        f'{escape(url)}</a>' for step, url in urls.items()))


@bp.app_template_global()
def when(moment, empty="never"):
    """A moment (UTC) as a <time>, or `empty`."""
    if not moment:
        return empty
    return Markup(f'<time datetime="{moment.isoformat()}">{moment:%Y-%m-%d %H:%M:%S} UTC</time>')


@bp.app_template_global()
def minutes(m):
    """A duration in minutes in the largest whole unit: '2 days', '1 hour', '90 minutes'."""
    for size, unit in ((1440, "day"), (60, "hour")):
        if m % size == 0:
            return f"{m // size} {unit}{'s' if m != size else ''}"
    return f"{m} minutes"


@bp.app_template_global()
def draining_badge(node):
    """A disabled node that still holds deployments keeps its link status: say it is draining."""
    if node.enabled or node.status == "disabled":
        return ""
    return Markup(' <span class="badge status status-disabled" data-testid="node-draining" title="disabled:'
                  ' no new deployments; linked until the last one here is deleted">draining</span>')


@bp.app_template_global()
def capacity(node):
    """What admission counts with: the admin's override, else what the agent reported."""
    cpus, memory = node.capacity_cpus, node.capacity_memory_mb
    if cpus is None and memory is None:
        return "not reported yet"
    text = f"{'?' if cpus is None else f'{cpus:g}'} CPUs, {'?' if memory is None else memory} MB"
    if node.cpus_override is not None or node.memory_mb_override is not None:
        return Markup(f"{text} <small>(override)</small>")
    return text


_NAV = (("ui.project_list", "Projects", False), ("ui.deployment_list", "Deployments", False),
        ("ui.environment_list", "Environments", False), ("ui.team_list", "Teams", False),
        ("ui.admin_users", "Users", True), ("ui.registry_list", "Registries", True),
        ("ui.service_list", "Services", True), ("ui.plugin_list", "Plugins", True),
        ("ui.audit_log", "Audit log", True))
_nav_built = {}


@bp.app_template_global()
def nav_links(is_admin):
    """The nav's page links (admins see more), built once per role: every page has nine, and
    url_for costs about as much as a small query."""
    key = (request.script_root, bool(is_admin))
    if key not in _nav_built:
        _nav_built[key] = Markup("\n".join(
            f'<li><a href="{url_for(endpoint)}">{label}</a></li>'
            for endpoint, label, admin_only in _NAV if is_admin or not admin_only))
    return _nav_built[key]
