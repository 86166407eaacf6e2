"""Projects: an account can own several; data and keys never cross between them."""

from __future__ import annotations

from tests.support import Tenant, assert_error, signup


def test_create_switch_and_isolate_projects(tenant: Tenant) -> None:
    listed = tenant.dashboard.get("/projects").json()["projects"]
    assert [(p["id"], p["role"], p["current"]) for p in listed] == [
        (tenant.project_id, "ADMIN", True)]
    created = tenant.dashboard.post("/projects", json={"name": "Second"})
    assert created.status_code == 201, created.text
    second = created.json()
    assert second["current"] is True and second["role"] == "ADMIN"
    # The session now works on the new project: its keys and data are its own.
    assert tenant.dashboard.get("/auth/me").json()["project"]["id"] == second["id"]
    key = tenant.dashboard.post("/api-keys", json={"name": "s", "type": "secret"}).json()["key"]
    with tenant.client(key) as sk2:
        assert sk2.get("/events").json()["total"] == 0
    tenant.pk.post("/events", json={"userId": "u", "eventName": "first-project-only"})
    with tenant.client(key) as sk2:
        assert sk2.get("/events").json()["total"] == 0
    back = tenant.dashboard.post(f"/projects/{tenant.project_id}/switch")
    assert back.status_code == 200 and back.json()["current"] is True
    assert tenant.dashboard.get("/auth/me").json()["project"]["id"] == tenant.project_id
    assert len(tenant.dashboard.get("/projects").json()["projects"]) == 2


def test_cannot_switch_into_someone_elses_project(api_url: str, tenant: Tenant) -> None:
    other = signup(api_url)
    assert_error(tenant.dashboard.post(f"/projects/{other.project_id}/switch"), 404)
    assert_error(tenant.sk.get("/projects"), 403)  # session only
    assert_error(tenant.dashboard.post("/projects", json={"name": ""}), 400)
