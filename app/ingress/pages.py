"""The pages the ingress answers with when it does not proxy: a deployment's landing page, its
offline and not-ready pages, the unknown-name page and the not-answering page. Rendered by the
web tier's page view (and the last one into Caddy's config). Everything shown is escaped."""
from html import escape

_STYLE = ("body{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;"
          "color:#222}h1{font-size:1.4rem}.muted{color:#666}li{margin:.3rem 0}code{background:#f3f3f3;"
          "padding:0 .2rem}")


def _page(title, body, refresh=None):
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}'
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>{body}"
            '<p class="muted">NullOps ingress</p></body></html>')


def _when(moment):
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "an unknown time"


def offline(deployment, host):
    return _page(f"{deployment} is offline", (
        f"<h1>Deployment <code>{escape(deployment)}</code> is offline</h1>"
        f"<p>Its node has been unreachable since {escape(_when(host['since']))}. The deployment is "
        "kept and comes back when the node reconnects; this page reloads by itself.</p>"), refresh=15)


def not_ready(deployment, status, login_url=None):
    """Never the deployment's status message: it can hold agent errors, image references and
    plugin stderr, and this page is public (issue 17 item 5). Its users read it in NullOps."""
    detail = ""
    if status in ("failed", "degraded", "cleanup_failed"):
        where = (f'<a href="{escape(login_url)}">log in to NullOps</a>' if login_url
                 else "log in to NullOps")
        detail = f"<p class=\"muted\">To see why, {where} and open the deployment.</p>"
    return _page(f"{deployment} is {status}", (
        f"<h1>Deployment <code>{escape(deployment)}</code> is {escape(status)}</h1>"
        f"<p>The service answers here once the deployment is ready.</p>{detail}"),
        refresh=5 if status in ("pending", "deploying", "degraded", "starting") else None)


def not_exposed(deployment, step):
    return _page(f"{step} has no URL", (
        f"<h1><code>{escape(step)}</code> of <code>{escape(deployment)}</code> has no URL</h1>"
        "<p>The service exposes no port, so it is reachable only from inside the deployment.</p>"))


def unknown():
    return _page("No deployment here", (
        "<h1>No deployment answers at this address</h1>"
        "<p>It may have been deleted (or cleaned up after its inactivity period), or the name is "
        "misspelt. Addresses look like <code>service.deployment.environment.domain</code>.</p>"))


def landing(deployment, environment, status, services):
    """The deployment's own address: its services, their links and status.
    `services`: [(step id, url or None, why there is no url)]."""
    items = []
    for step_id, url, why in services:
        if url:
            items.append(f'<li><a href="{escape(url)}">{escape(step_id)}</a> '
                         f'<span class="muted">{escape(url)}</span></li>')
        else:
            items.append(f'<li>{escape(step_id)} <span class="muted">({escape(why)})</span></li>')
    listing = "<ul>" + "".join(items) + "</ul>" if items else "<p>No services.</p>"
    return _page(f"{deployment}.{environment}", (
        f"<h1>Deployment <code>{escape(deployment)}</code> in {escape(environment)}</h1>"
        f"<p>Status: <strong>{escape(status)}</strong></p>{listing}"),
        refresh=5 if status in ("pending", "deploying") else None)


def unreachable():
    return _page("Not answering", (
        "<h1>The service is not answering</h1>"
        "<p>The deployment is there but did not answer this request (it may be restarting). "
        "Try again in a moment; the deployment's page shows its status.</p>"), refresh=10)
