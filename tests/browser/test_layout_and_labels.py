"""Every page, as an admin and as a Read-Only member, at a laptop's 1366×768 and a phone's 390
px: nothing widens the page past the window (wide tables scroll inside their figure), and
every form control has a label a screen reader announces (issue 15, item 4)."""
import re
from pathlib import Path

import pytest

from app.services import audit, catalog, nodes
from tests.access.deployments import add_deployment, add_node, pipeline_version, service_step
from tests.access.pipelines import make_catalog

pytestmark = pytest.mark.browser

SHOTS = Path("/tmp/nullops-shots")
NAV_ROWS = """Math.round(document.querySelector('header nav').getBoundingClientRect().height
    / Math.max(...[...document.querySelectorAll('header nav li')]
                 .map((li) => li.getBoundingClientRect().height)))"""
VIEWPORTS = {"laptop": {"width": 1366, "height": 768}, "phone": {"width": 390, "height": 844}}

# Form controls without a name a screen reader can announce: no <label>, aria-label or
# aria-labelledby (hidden inputs and buttons, which are named by their text, are left out).
UNLABELLED = """() => [...document.querySelectorAll('main input, main select, main textarea')]
  .filter((el) => el.type !== 'hidden' && !(el.labels && el.labels.length)
          && !el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby'))
  .map((el) => `${el.tagName.toLowerCase()}[name=${el.name}]`)"""
TOO_WIDE = """() => {
  const scrolls = (el) => { for (let p = el.parentElement; p; p = p.parentElement) {
    if (['auto', 'scroll'].includes(getComputedStyle(p).overflowX)) return true; } return false; };
  return document.documentElement.scrollWidth <= window.innerWidth ? [] :
    [...document.querySelectorAll('body *')]
    .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 1 && !scrolls(el))
    .map((el) => `${el.tagName}.${el.className} ${(el.textContent || '').trim().slice(0, 30)}`)
    .slice(0, 4); }"""


@pytest.fixture
def seeded(spec_example, admin):
    ex = spec_example
    rows = make_catalog()
    catalog.put_secret(admin, ex["project"], "DB_PASSWORD", "pw-1")
    node, _token, _command = nodes.add(admin, ex["environment"], "node-1", "10.0.0.5")
    online = add_node(ex["environment"], "node-2")
    version = pipeline_version(ex["project"], [service_step("web")])
    deployment = add_deployment(version, ex["environment"], online, "feature-login-with-a-long-name")
    audit.record(admin, "project.update", "project", ex["project"],
                 {"description": ["a long old description " * 4, "new"]})
    from app.extensions import db
    db.session.commit()
    return {"project": ex["project"].id, "environment": ex["environment"].id, "node": node.id,
            "deployment": deployment.id, "service": rows["db"].id, "plugin": rows["mkdb"].id,
            "team": ex["qa"].id}


ADMIN_PAGES = ["/", "/projects", "/projects/{project}", "/projects/{project}/pipeline",
               "/deployments", "/deployments/new", "/deployments/{deployment}", "/environments",
               "/environments/{environment}", "/nodes/{node}", "/teams", "/teams/{team}",
               "/admin/users", "/registries", "/services", "/services/{service}", "/plugins",
               "/plugins/{plugin}", "/audit", "/settings"]
READER_PAGES = ["/", "/projects", "/projects/{project}", "/deployments",
                "/deployments/{deployment}", "/environments/{environment}", "/teams/{team}"]


@pytest.mark.parametrize(("who", "paths"), [("admin", ADMIN_PAGES), ("qa-anna", READER_PAGES)])
def test_every_page_fits_laptop_and_phone_and_labels_every_control(live_server, browser_login,
                                                                   seeded, who, paths):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser_login(who)
    problems = {}
    for size, viewport in VIEWPORTS.items():
        page.set_viewport_size(viewport)
        for template in paths:
            path = template.format(**seeded)
            response = page.goto(path)
            assert response.status == 200, (path, response.status)
            wide, unlabelled = page.evaluate(TOO_WIDE), page.evaluate(UNLABELLED)
            # On a laptop the navigation is one row (the admin's has the most links): content
            # does not start lower than on other pages, and the editor's canvas stays in view.
            nav_rows = 1 if size == "phone" else page.evaluate(NAV_ROWS)
            if wide or unlabelled or nav_rows > 1:
                problems[(size, path)] = {"too wide": wide, "unlabelled": unlabelled, "nav rows": nav_rows}
            if size == "phone" and who == "admin":
                name = re.sub(r"\W+", "-", path.strip("/")) or "overview"
                page.screenshot(path=SHOTS / f"phone-{name}.png", full_page=True)
    assert not problems, "\n".join(f"{key}: {found}" for key, found in problems.items())
