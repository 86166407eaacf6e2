"""News feed items through real HTTP: drafts, publishing, the public feed."""

from __future__ import annotations

from typing import Any

from tests.support import Tenant, assert_error, signup

DARK = {"title": "New Feature: Dark Mode", "body": "We just launched dark mode!"}


def create(tenant: Tenant, **fields: Any) -> dict[str, Any]:
    r = tenant.sk.post("/news", json={**DARK, **fields})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def feed_ids(client: Any, **params: Any) -> list[str]:
    r = client.get("/news/feed", params=params)
    assert r.status_code == 200, r.text
    return [i["id"] for i in r.json()["items"]]


def test_create_shapes_and_get(tenant: Tenant) -> None:
    draft = create(tenant)
    assert draft["id"].startswith("news_")
    assert (draft["title"], draft["body"], draft["url"]) == (DARK["title"], DARK["body"], None)
    assert draft["published"] is False and draft["publishedAt"] is None
    assert draft["createdAt"].endswith("Z") and draft["updatedAt"].endswith("Z")
    live = create(tenant, published=True, url="https://example.com/dark")
    assert live["published"] is True and live["publishedAt"].endswith("Z")
    assert live["url"] == "https://example.com/dark"
    assert tenant.sk.get(f"/news/{live['id']}").json() == live


def test_draft_never_in_feed_until_published(tenant: Tenant) -> None:
    draft = create(tenant, title="Draft")
    assert feed_ids(tenant.sk) == []
    assert feed_ids(tenant.pk) == []
    # Editing a draft keeps it out of the feed.
    edited = tenant.sk.patch(f"/news/{draft['id']}", json={"body": "still a draft"}).json()
    assert edited["published"] is False and edited["publishedAt"] is None
    assert feed_ids(tenant.pk) == []
    published = tenant.sk.patch(f"/news/{draft['id']}", json={"published": True})
    assert published.status_code == 200, published.text
    item = published.json()
    assert item["published"] is True and item["publishedAt"] is not None
    assert item["title"] == "Draft" and item["body"] == "still a draft"  # merged
    feed = tenant.pk.get("/news/feed").json()
    assert feed["total"] == 1 and feed["page"] == 1 and feed["limit"] == 50
    assert feed["items"] == [{"id": draft["id"], "title": "Draft", "body": "still a draft",
                              "url": None, "publishedAt": item["publishedAt"]}]
    # Editing a published item keeps its publishedAt; unpublishing clears it.
    again = tenant.sk.patch(f"/news/{draft['id']}", json={"title": "Live", "published": True})
    assert again.json()["publishedAt"] == item["publishedAt"]
    hidden = tenant.sk.patch(f"/news/{draft['id']}", json={"published": False}).json()
    assert hidden["published"] is False and hidden["publishedAt"] is None
    assert feed_ids(tenant.pk) == []
    republished = tenant.sk.patch(f"/news/{draft['id']}", json={"published": True}).json()
    assert republished["publishedAt"] > item["publishedAt"]


def test_feed_order_is_newest_published_first(tenant: Tenant) -> None:
    first = create(tenant, title="first")
    second = create(tenant, title="second", published=True)
    create(tenant, title="draft")
    tenant.sk.patch(f"/news/{first['id']}", json={"published": True})  # published last
    assert feed_ids(tenant.pk) == [first["id"], second["id"]]
    assert feed_ids(tenant.pk, limit=1, page=2) == [second["id"]]
    assert tenant.pk.get("/news/feed", params={"limit": 1}).json()["total"] == 2
    # The management list has every item, newest created first.
    listed = tenant.sk.get("/news").json()
    assert [i["title"] for i in listed["items"]] == ["draft", "second", "first"]
    assert (listed["total"], listed["page"], listed["limit"]) == (3, 1, 50)
    assert [i["title"] for i in tenant.sk.get("/news", params={"limit": 2, "page": 2})
            .json()["items"]] == ["first"]


def test_put_replaces_and_delete(tenant: Tenant) -> None:
    item = create(tenant, url="https://example.com", published=True)
    put = tenant.sk.put(f"/news/{item['id']}", json={"title": "T", "body": "B"}).json()
    assert (put["title"], put["body"], put["url"], put["published"], put["publishedAt"]) \
        == ("T", "B", None, False, None)
    assert put["createdAt"] == item["createdAt"]
    assert tenant.sk.delete(f"/news/{item['id']}").json() == {"deleted": True}
    assert_error(tenant.sk.get(f"/news/{item['id']}"), 404)
    assert_error(tenant.sk.delete(f"/news/{item['id']}"), 404)
    assert_error(tenant.sk.patch(f"/news/{item['id']}", json={"title": "x"}), 404)


def test_validation(tenant: Tenant) -> None:
    assert_error(tenant.sk.post("/news", json={"title": "only title"}), 400)
    assert_error(tenant.sk.post("/news", json={**DARK, "title": ""}), 400)
    assert_error(tenant.sk.post("/news", json={**DARK, "title": "x" * 301}), 400)
    err = assert_error(tenant.sk.post("/news", json={**DARK, "publish": True}), 400)
    assert err["details"][0]["field"] == "publish"
    for bad in ("javascript:alert(1)", " JavaScript:alert(1)", "data:text/html,x", "  "):
        assert_error(tenant.sk.post("/news", json={**DARK, "url": bad}), 400)
    assert create(tenant, url="myapp://news/1")["url"] == "myapp://news/1"
    item = create(tenant, url="/changelog")
    for name in ("title", "body", "published"):
        err = assert_error(tenant.sk.patch(f"/news/{item['id']}", json={name: None}), 400)
        assert err["details"][0]["field"] == name
    cleared = tenant.sk.patch(f"/news/{item['id']}", json={"url": None}).json()
    assert cleared["url"] is None


def test_keys_and_other_projects(tenant: Tenant) -> None:
    item = create(tenant, published=True)
    # The public key reads the feed, and nothing else of news.
    assert feed_ids(tenant.pk) == [item["id"]]
    assert_error(tenant.pk.get("/news"), 403)
    assert_error(tenant.pk.post("/news", json=DARK), 403)
    assert_error(tenant.pk.get(f"/news/{item['id']}"), 403)
    assert_error(tenant.pk.patch(f"/news/{item['id']}", json={"title": "x"}), 403)
    assert_error(tenant.pk.delete(f"/news/{item['id']}"), 403)
    assert_error(tenant.client().get("/news/feed"), 401)
    assert_error(tenant.client("pk_live_nope").get("/news/feed"), 401)
    other = signup(tenant.base, project="Other")
    assert feed_ids(other.pk) == [] and other.sk.get("/news").json()["total"] == 0
    for call in (other.sk.get, other.sk.delete):
        assert_error(call(f"/news/{item['id']}"), 404)
    assert_error(other.sk.put(f"/news/{item['id']}", json=DARK), 404)
    assert tenant.sk.get(f"/news/{item['id']}").json()["published"] is True
