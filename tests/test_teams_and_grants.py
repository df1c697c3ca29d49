"""Teams, grants and the access module, around the spec's QA Team / SE Team example."""
from sqlalchemy import select

from app import access
from app.extensions import db
from app.models import Environment, Grant, Project, Team


def test_spec_example_read_only_team_views_and_full_team_deploys(spec_example):
    ex = spec_example
    for target in (ex["project"], ex["environment"]):
        assert access.can(ex["reader"], "view", target)
        assert not access.can(ex["reader"], "deploy", target)
        assert access.can(ex["writer"], "view", target)
        assert access.can(ex["writer"], "deploy", target)
        assert not access.can(ex["outsider"], "view", target)
        for user in (ex["reader"], ex["writer"]):
            assert not access.can(user, "manage", target)
        assert access.can(ex["admin"], "manage", target)


def test_spec_example_through_the_api(client, spec_example, bearer):
    ex = spec_example
    url = f"/api/v1/projects/{ex['project'].id}/access"
    assert client.get(url, headers=bearer(ex["reader"])).json == {
        "level": "read_only", "view": True, "deploy": False, "manage": False}
    assert client.get(url, headers=bearer(ex["writer"])).json == {
        "level": "full", "view": True, "deploy": True, "manage": False}
    assert client.get(url, headers=bearer(ex["outsider"])).status_code == 404


def test_strongest_grant_wins_when_a_user_is_in_several_teams(spec_example):
    ex = spec_example
    from app.services import teams

    teams.add_member(ex["admin"], ex["se"], ex["reader"])
    assert access.can(ex["reader"], "deploy", ex["project"])
    teams.remove_member(ex["admin"], ex["se"], ex["reader"])
    assert not access.can(ex["reader"], "deploy", ex["project"])


def test_a_request_sees_the_grant_changes_it_makes(app, spec_example):
    """Within a request the grants are read once and kept (app/access.py); a change made in the
    same request must not be answered from what was kept."""
    ex = spec_example
    from app.services import teams

    with app.test_request_context():
        assert not access.can(ex["reader"], "deploy", ex["project"])
        teams.add_member(ex["admin"], ex["se"], ex["reader"])
        assert access.can(ex["reader"], "deploy", ex["project"])
        full = db.session.scalar(select(Grant).where(Grant.team_id == ex["se"].id,
                                                     Grant.project_id == ex["project"].id))
        teams.change_level(ex["admin"], full, "read_only")
        assert not access.can(ex["reader"], "deploy", ex["project"])
        assert access.can(ex["reader"], "deploy", ex["environment"])
        teams.delete(ex["admin"], ex["se"])
        assert not access.can(ex["reader"], "deploy", ex["environment"])
        assert not access.can(ex["writer"], "view", ex["project"])
        teams.grant(ex["admin"], ex["qa"], ex["other_project"], "full")
        assert access.can(ex["reader"], "deploy", ex["other_project"])


def test_lists_show_only_what_the_user_may_see(client, spec_example, bearer):
    ex = spec_example
    names = [p["name"] for p in client.get("/api/v1/projects", headers=bearer(ex["reader"])).json["items"]]
    assert names == ["shop"]
    assert client.get("/api/v1/projects", headers=bearer(ex["outsider"])).json["total"] == 0
    assert client.get("/api/v1/projects", headers=bearer(ex["admin"])).json["total"] == 2
    teams = client.get("/api/v1/teams", headers=bearer(ex["reader"])).json["items"]
    assert [t["name"] for t in teams] == ["QA Team"]


def test_hidden_objects_answer_exactly_like_missing_ones(client, spec_example, bearer):
    ex = spec_example
    headers = bearer(ex["outsider"])
    hidden = client.get(f"/api/v1/projects/{ex['project'].id}", headers=headers)
    missing = client.get("/api/v1/projects/999999", headers=headers)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json["error"]["code"] == missing.json["error"]["code"] == "not_found"
    assert hidden.json["error"]["message"].replace(str(ex["project"].id), "N") == \
        missing.json["error"]["message"].replace("999999", "N")


def test_another_teams_object_in_a_request_field_answers_as_missing(client, spec_example, bearer):
    ex = spec_example
    # The reader may not see the writer's token: revoking it by id is "not found".
    from app.services import auth

    token, _ = auth.create_token(ex["writer"], ex["writer"], "private")
    response = client.delete(f"/api/v1/tokens/{token.id}", headers=bearer(ex["reader"]))
    assert response.status_code == 404
    assert db.session.get(type(token), token.id).revoked_at is None


def test_admin_grants_a_team_and_duplicate_grants_are_refused(client, spec_example, bearer):
    ex = spec_example
    headers = bearer(ex["admin"])
    body = {"team_id": ex["qa"].id, "project_id": ex["other_project"].id, "level": "read_only"}
    created = client.post("/api/v1/grants", json=body, headers=headers)
    assert created.status_code == 201
    again = client.post("/api/v1/grants", json=body, headers=headers)
    assert again.status_code == 409 and "project_id" in again.json["error"]["fields"]
    listed = client.get(f"/api/v1/grants?project_id={ex['other_project'].id}", headers=headers)
    assert [g["team_id"] for g in listed.json["items"]] == [ex["qa"].id]


def test_several_teams_hold_grants_on_one_environment(client, spec_example, bearer):
    ex = spec_example
    listed = client.get(f"/api/v1/grants?environment_id={ex['environment'].id}",
                        headers=bearer(ex["admin"])).json
    assert {(g["team_id"], g["level"]) for g in listed["items"]} == {
        (ex["qa"].id, "read_only"), (ex["se"].id, "full")}


def test_grant_needs_exactly_one_target_and_existing_ids(client, spec_example, bearer):
    ex = spec_example
    headers = bearer(ex["admin"])
    both = client.post("/api/v1/grants", headers=headers, json={
        "team_id": ex["qa"].id, "project_id": ex["project"].id,
        "environment_id": ex["environment"].id, "level": "full"})
    assert both.status_code == 422 and "exactly one" in both.json["error"]["message"]
    ghost = client.post("/api/v1/grants", headers=headers, json={
        "team_id": 424242, "project_id": ex["project"].id, "level": "full"})
    assert ghost.status_code == 404 and "team 424242" in ghost.json["error"]["message"]


def test_deleting_a_team_removes_its_grants_and_access(client, spec_example, bearer):
    ex = spec_example
    se_id = ex["se"].id
    assert client.delete(f"/api/v1/teams/{se_id}", headers=bearer(ex["admin"])).status_code == 204
    assert db.session.scalar(db.select(db.func.count(Grant.id)).where(Grant.team_id == se_id)) == 0
    assert not access.can(ex["writer"], "view", db.session.get(Project, ex["project"].id))


def test_deleting_a_project_removes_its_grants(client, spec_example, bearer):
    ex = spec_example
    project_id = ex["project"].id
    assert client.delete(f"/api/v1/projects/{project_id}", headers=bearer(ex["admin"])).status_code == 204
    assert db.session.scalar(
        db.select(db.func.count(Grant.id)).where(Grant.project_id == project_id)) == 0


def test_disabled_admin_can_do_nothing(spec_example):
    ex = spec_example
    ex["admin"].is_active = False
    assert not access.can(ex["admin"], "view", ex["project"])
    assert db.session.scalars(access.visible(ex["admin"], Team)).all() == []
    assert db.session.scalars(access.visible(None, Environment)).all() == []
    db.session.rollback()


def test_may_deploy_somewhere_agrees_with_asking_every_project_and_environment(spec_example):
    """The deployments pages ask these once instead of can_deploy_to over every pair."""
    qa, se = spec_example["qa"], spec_example["se"]
    extra = Environment(name="perf")
    db.session.add(extra)
    db.session.flush()
    # qa: read-only on the project and a full grant on an environment only: it may deploy there
    db.session.add(Grant(team_id=qa.id, environment_id=extra.id, level="full"))
    db.session.commit()
    projects = db.session.scalars(select(Project)).all()
    environments = db.session.scalars(select(Environment)).all()
    for who in ("reader", "writer", "outsider", "admin"):
        user = spec_example[who]
        brute = any(access.can_deploy_to(user, p, e) for p in projects for e in environments)
        assert access.may_deploy_somewhere(user) == brute, who
        # deployable_projects: the new deployment page's list, from the grants once
        for among in (environments, environments[:1], environments[1:], []):
            expected = {p.id for p in projects if any(access.can_deploy_to(user, p, e) for e in among)}
            assert access.deployable_projects(
                user, [p.id for p in projects], [e.id for e in among]) == expected, (who, among)
    assert access.may_deploy_somewhere(spec_example["outsider"]) is False
    db.session.delete(db.session.get(Grant, db.session.scalar(
        select(Grant.id).where(Grant.team_id == se.id, Grant.environment_id.is_not(None)))))
    db.session.commit()
    # se: full on the project but no environment left: nowhere to deploy
    assert access.may_deploy_somewhere(spec_example["writer"]) is False
    assert not any(access.can_deploy_to(spec_example["writer"], p, e) for p in projects for e in environments)
