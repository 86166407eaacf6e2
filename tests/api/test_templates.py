"""Templates through real HTTP: CRUD, filters, compile checks, sandbox, preview rendering."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import Tenant, assert_error, signup

WELCOME = {
    "name": "Welcome Email", "channel": "EMAIL", "subject": "Welcome to {{company}}!",
    "body": "<h1>Hi {{name}}</h1><p>Thanks for joining.</p>", "tags": ["onboarding"],
}


def create(tenant: Tenant, **fields: Any) -> dict[str, Any]:
    r = tenant.sk.post("/templates", json={**WELCOME, **fields})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def preview(tenant: Tenant, template_id: str, **body: Any) -> dict[str, Any]:
    r = tenant.sk.post(f"/templates/{template_id}/preview", json=body)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_create_get_and_shape(tenant: Tenant) -> None:
    tpl = create(tenant)
    assert tpl["id"].startswith("tpl_")
    assert {k: tpl[k] for k in WELCOME} == WELCOME
    assert tpl["ai"] is False
    assert tpl["createdAt"].endswith("Z") and tpl["updatedAt"].endswith("Z")
    assert tenant.sk.get(f"/templates/{tpl['id']}").json() == tpl
    push = create(tenant, channel="PUSH", subject=None, body="Hi", tags=["a", "a", "b"],
                  ai=True)
    assert push["subject"] is None and push["tags"] == ["a", "b"] and push["ai"] is True


def test_list_filters_and_pagination(tenant: Tenant) -> None:
    email = create(tenant, name="e")
    push = create(tenant, name="p", channel="PUSH", subject="T", body="B", ai=True)
    sms = create(tenant, name="s", channel="SMS", subject=None, body="code {{code}}")
    in_app = create(tenant, name="i", channel="IN_APP", subject="Title", body="x", ai=True)
    everything = tenant.sk.get("/templates").json()
    assert [t["id"] for t in everything["templates"]] == [
        in_app["id"], sms["id"], push["id"], email["id"]]  # newest first
    assert (everything["total"], everything["page"], everything["limit"]) == (4, 1, 50)

    def ids(**query: str) -> list[str]:
        listed = tenant.sk.get("/templates", params=query).json()["templates"]
        return [t["id"] for t in listed]

    assert ids(channel="PUSH") == [push["id"]]
    assert ids(channel="SMS") == [sms["id"]]
    assert ids(ai="true") == [in_app["id"], push["id"]]
    assert ids(ai="false") == [sms["id"], email["id"]]
    assert ids(channel="IN_APP", ai="false") == []
    paged = tenant.sk.get("/templates", params={"limit": 3, "page": 2}).json()
    assert (paged["total"], [t["id"] for t in paged["templates"]]) == (4, [email["id"]])
    assert_error(tenant.sk.get("/templates", params={"channel": "FAX"}), 400)
    assert_error(tenant.sk.get("/templates", params={"ai": "maybe"}), 400)


def test_patch_merges_put_replaces_delete(tenant: Tenant) -> None:
    tpl = create(tenant, ai=True)
    patched = tenant.sk.patch(f"/templates/{tpl['id']}",
                              json={"subject": "Welcome aboard, {{name}}!"})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["subject"] == "Welcome aboard, {{name}}!"
    assert (body["name"], body["body"], body["tags"], body["ai"]) == (
        tpl["name"], tpl["body"], tpl["tags"], True)
    assert body["updatedAt"] >= tpl["updatedAt"] and body["createdAt"] == tpl["createdAt"]
    put = tenant.sk.put(f"/templates/{tpl['id']}",
                        json={"name": "Push now", "channel": "PUSH", "body": "Hey"}).json()
    assert (put["name"], put["channel"], put["subject"], put["body"], put["tags"], put["ai"]) \
        == ("Push now", "PUSH", None, "Hey", [], False)
    assert tenant.sk.delete(f"/templates/{tpl['id']}").json() == {"deleted": True}
    assert_error(tenant.sk.get(f"/templates/{tpl['id']}"), 404)
    assert_error(tenant.sk.delete(f"/templates/{tpl['id']}"), 404)


def test_validation_on_create_and_patch(tenant: Tenant) -> None:
    assert_error(tenant.sk.post("/templates", json={**WELCOME, "subject": None}), 400)
    assert_error(tenant.sk.post("/templates", json={**WELCOME, "channel": "FAX"}), 400)
    body = assert_error(tenant.sk.post("/templates", json={**WELCOME, "subjet": "x"}), 400)
    assert body["details"][0]["field"] == "subjet"
    assert_error(tenant.sk.post("/templates", json={**WELCOME, "body": ""}), 400)
    assert_error(tenant.sk.post("/templates", json={**WELCOME, "name": "x" * 201}), 400)
    assert_error(tenant.sk.post("/templates", json={**WELCOME, "tags": [1]}), 400)

    tpl = create(tenant)
    url = f"/templates/{tpl['id']}"
    # An EMAIL template keeps needing a subject, whether cleared or blanked.
    assert "subject" in assert_error(tenant.sk.patch(url, json={"subject": None}), 400)["message"]
    assert_error(tenant.sk.patch(url, json={"subject": "  "}), 400)
    # Non-nullable fields: null is refused, omission keeps them.
    for name in ("name", "channel", "body", "tags", "ai"):
        err = assert_error(tenant.sk.patch(url, json={name: None}), 400)
        assert err["details"][0]["field"] == name
    assert_error(tenant.sk.patch(url, json={"bogus": 1}), 400)
    # A compile error in a PATCH names the field and the line, and changes nothing.
    err = assert_error(tenant.sk.patch(url, json={"body": "ok\nfine\n{% if %}"}), 400)
    assert "body" in err["message"] and "line 3" in err["message"]
    err = assert_error(tenant.sk.patch(url, json={"subject": "Hi {{ name "}), 400)
    assert "subject" in err["message"] and "line 1" in err["message"]
    assert tenant.sk.get(url).json() == tpl
    # Switching to PUSH lets the subject go.
    pushed = tenant.sk.patch(url, json={"channel": "PUSH", "subject": None})
    assert pushed.status_code == 200 and pushed.json()["subject"] is None
    # ...and switching back to EMAIL without one is refused.
    assert_error(tenant.sk.patch(url, json={"channel": "EMAIL"}), 400)
    assert_error(tenant.sk.put(url, json={"name": "n", "channel": "EMAIL", "body": "b"}), 400)


def test_size_limit(tenant: Tenant) -> None:
    err = assert_error(tenant.sk.post("/templates", json={**WELCOME, "body": "x" * 100_001}), 400)
    assert "body" in err["message"]


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ x.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ ''['__class__'] }}",
])
def test_sandbox_escapes_refused_at_save(tenant: Tenant, source: str) -> None:
    for fields in ({"body": source}, {"subject": source}):
        err = assert_error(tenant.sk.post("/templates", json={**WELCOME, **fields}), 400)
        assert "not allowed" in err["message"]
    tpl = create(tenant, channel="SMS", subject=None, body="ok")
    assert_error(tenant.sk.patch(f"/templates/{tpl['id']}", json={"body": source}), 400)


@pytest.mark.parametrize("source", [
    "{{ ''|attr('__class__') }}",
    "{{ (''|attr('__class__'))|attr('__mro__') }}",
    "{{ ''['__cl' ~ 'ass__'] }}",
    "{{ cycler|attr('__init__')|attr('__globals__') }}",
])
def test_sandbox_escapes_refused_at_preview(tenant: Tenant, source: str) -> None:
    for channel in ("EMAIL", "SMS"):
        r = tenant.sk.post("/templates", json={**WELCOME, "channel": channel, "body": source})
        if r.status_code == 400:  # refused at save is just as good
            continue
        assert r.status_code == 201, r.text
        err = assert_error(tenant.sk.post(f"/templates/{r.json()['id']}/preview", json={}), 400)
        assert "not allowed" in err["message"]
        assert "<class" not in err["message"] and "object" not in err["message"]


def test_render_errors_are_clear_400s(tenant: Tenant) -> None:
    tpl = create(tenant, channel="SMS", subject=None, body="{{ 1/0 }}")
    err = assert_error(tenant.sk.post(f"/templates/{tpl['id']}/preview", json={}), 400)
    assert "body" in err["message"] and "division" in err["message"]
    tpl = create(tenant, channel="PUSH", subject="{% for i in range(10**7) %}x{% endfor %}",
                 body="b")
    err = assert_error(tenant.sk.post(f"/templates/{tpl['id']}/preview", json={}), 400)
    assert "subject" in err["message"]
    huge = create(tenant, channel="SMS", subject=None,
                  body="{% for i in range(99999) %}{{ 'x' * 100 }}{% endfor %}")
    err = assert_error(tenant.sk.post(f"/templates/{huge['id']}/preview", json={}), 400)
    assert "output" in err["message"]


def test_preview_context_and_escaping(tenant: Tenant) -> None:
    tenant.pk.post("/identify", json={
        "userId": "ann", "email": "ann@example.com",
        "properties": {"name": "<script>alert(1)</script>", "plan": "pro",
                       "address": {"city": "Oslo"}},
    })
    email = create(tenant, subject="{{ name }} @ {{company}}",
                   body="<p>{{ name }}</p><p>{{ plan|upper }} {{ user.email }} {{ user.id }} "
                        "{{ address.city }} {{ data_key }} {{ user.properties.plan }}</p>")
    out = preview(tenant, email["id"], userId="ann", data={"data_key": "D&D"})
    assert out["subject"] == "<script>alert(1)</script> @ Acme"  # subject is never escaped
    assert out["body"] == ("<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"
                           "<p>PRO ann@example.com ann Oslo D&amp;D pro</p>")
    for channel in ("PUSH", "SMS", "IN_APP"):
        tpl = create(tenant, channel=channel, subject="{{ name }}", body="{{ name }} & co")
        out = preview(tenant, tpl["id"], userId="ann")
        assert out == {"subject": "<script>alert(1)</script>",
                       "body": "<script>alert(1)</script> & co"}


def test_preview_missing_variables_default_and_filters(tenant: Tenant) -> None:
    tpl = create(tenant, channel="PUSH", subject='Hi {{ name | default("there") }}',
                 body="[{{ missing }}][{{ missing.deep.er }}][{{ user.properties.nope }}]"
                      "{{ items|join(', ') }} {{ total|round(1) }} {{ 'abc'|title }} "
                      "{{ items|length }} {% if vip %}VIP{% else %}regular{% endif %}")
    out = preview(tenant, tpl["id"], data={"items": ["a", "b"], "total": 3.14159})
    assert out["subject"] == "Hi there"
    assert out["body"] == "[][][]a, b 3.1 Abc 2 regular"
    # A profile value wins over the default; data wins over a profile property;
    # the reserved names (user, company) cannot be overridden by data.
    tenant.pk.post("/identify", json={"userId": "bo", "properties": {"name": "Bo", "vip": 1}})
    tpl = create(tenant, channel="SMS", subject=None,
                 body='{{ name | default("there") }} {{ company }} {{ user.id }} '
                      '{% if vip %}VIP{% endif %}')
    assert preview(tenant, tpl["id"], userId="bo")["body"] == "Bo Acme bo VIP"
    assert preview(tenant, tpl["id"], userId="bo",
                   data={"name": "Data", "company": "Evil", "user": {"id": "x"}})["body"] \
        == "Data Acme bo VIP"


def test_preview_errors(tenant: Tenant) -> None:
    tpl = create(tenant)
    assert_error(tenant.sk.post(f"/templates/{tpl['id']}/preview", json={"userId": "ghost"}),
                 404)
    assert_error(tenant.sk.post(f"/templates/{tpl['id']}/preview", json={"user": "x"}), 400)
    assert_error(tenant.sk.post(f"/templates/{tpl['id']}/preview", json={"data": [1]}), 400)
    assert_error(tenant.sk.post("/templates/tpl_nope/preview", json={}), 404)


def test_other_projects_and_public_key(tenant: Tenant) -> None:
    tpl = create(tenant)
    other = signup(tenant.base, project="Other")
    url = f"/templates/{tpl['id']}"
    assert_error(other.sk.get(url), 404)
    assert_error(other.sk.patch(url, json={"name": "stolen"}), 404)
    assert_error(other.sk.put(url, json={**WELCOME}), 404)
    assert_error(other.sk.delete(url), 404)
    assert_error(other.sk.post(f"{url}/preview", json={}), 404)
    assert other.sk.get("/templates").json()["total"] == 0
    # A user of the other project is not visible to this project's preview either.
    other.pk.post("/identify", json={"userId": "theirs"})
    assert_error(tenant.sk.post(f"{url}/preview", json={"userId": "theirs"}), 404)
    assert tenant.sk.get(url).json()["name"] == WELCOME["name"]
    assert_error(tenant.pk.get("/templates"), 403)
    assert_error(tenant.pk.post("/templates", json=WELCOME), 403)
    assert_error(tenant.client().get("/templates"), 401)
