"""Who saved a pipeline version, on the pipeline page, when the version's row no longer says:
NullOps itself for the demo seed (it saves with no user), the deleted author's name otherwise
(issue 15: the seed's version read "a deleted user")."""
import re

from app.models import Project
from app.services import catalog, pipelines, users
from tests.access.pipelines import definition, make_catalog


def test_versions_saved_by_nullops_or_a_deleted_user_say_who(client, login, admin, make_user):
    make_catalog()
    project = catalog.create(None, Project, "shop")
    catalog.put_secret(None, project, "DB_PASSWORD", "pw-1")
    pipelines.save_version(None, project, definition(), "seeded")  # as app/demo.py seeds it
    anna = make_user("anna", role="admin")
    pipelines.save_version(anna, project, definition(), "by anna")
    users.delete(admin, anna)
    pipelines.save_version(admin, project, definition(), "by admin")
    login("admin")
    page = client.get(f"/projects/{project.id}/pipeline").text
    authors = dict(re.findall(r'<tr data-version="(\d)">\s*<td>[^\n]*</td>\s*'
                              r"(?:\{#[^#]*#\}\s*)?<td>(.*?)</td>", page))
    assert authors == {"3": "admin", "2": 'anna <small class="muted">(deleted user)</small>',
                       "1": "NullOps"}
