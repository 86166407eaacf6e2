from tests.support import Tenant


def test_track_then_list(tenant: Tenant) -> None:
    r = tenant.pk.post("/events", json={"userId": "u1", "eventName": "signed_up",
                                         "properties": {"plan": "pro"}})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "ok"
    listed = tenant.sk.get("/events").json()
    assert [e["eventName"] for e in listed["events"]] == ["signed_up"]
    user = tenant.sk.get("/users/u1").json()
    assert user["eventCount"] == 1 and user["sessionCount"] == 1
