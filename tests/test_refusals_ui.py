"""A change refused for lack of rights is the 403 page and says what was refused: "you may not
delete this service", never "manage" or "deploy" for a delete (issue 15)."""
import html
import re

import pytest

from tests.access.deployments import add_node
from tests.access.deployments import registry as make_registry
from tests.access.pipelines import make_catalog
from tests.conftest import csrf_from


@pytest.fixture
def ids(spec_example):
    rows = make_catalog()
    node = add_node(spec_example["environment"], "node-1")
    return {"registry": make_registry("team").id, "service": rows["db"].id,
            "plugin": rows["mkdb"].id, "project": spec_example["project"].id,
            "environment": spec_example["environment"].id, "node": node.id}


@pytest.mark.parametrize(("path", "message"), [
    ("/services/{service}/delete", "you may not delete this service"),
    ("/services/{service}", "you may not change this service"),
    ("/plugins/{plugin}/delete", "you may not delete this plugin"),
    ("/plugins/{plugin}", "you may not change this plugin"),
    ("/projects/{project}/pipeline/import", "you may not import a pipeline into this project"),
    ("/environments/{environment}/settings", "you may not change this environment"),
    ("/nodes/{node}/delete", "you may not delete this node"),
    ("/nodes/{node}/disable", "you may not disable this node"),
    ("/nodes/{node}/rotate-token", "you may not rotate the token of this node"),
])
def test_a_refused_change_answers_403_naming_the_action(client, login, ids, path, message):
    login("se-bob")  # Full Access on the project and the environment: still no admin
    token = csrf_from(client.get("/").text)
    response = client.post(path.format(**ids), data={"csrf_token": token, "name": "x"})
    assert response.status_code == 403
    assert f"{message}; ask an admin for access" in html.unescape(response.text)
    assert re.search(r"you may not (manage|deploy) ", response.text) is None
