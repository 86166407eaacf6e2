"""The dashboard page over real HTTP: served at / and /accept-invite, self-contained (no
external resources), its script calling only same-origin session endpoints that exist."""

from __future__ import annotations

import base64
import hashlib
import re

import httpx
import pytest

from tests.support import Tenant

SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
# Quoted strings ('…', "…" or `…`) that start with a slash: paths the script names.
PATH_LITERAL = re.compile(r"""(['"`])(/[^'"`\s]*)\1""")
API_CALL = re.compile(r"""api\('(GET|POST|PUT|PATCH|DELETE)', (['`])([^'`]+)\2""")
PARAM = re.compile(r"\$?\{[^}]*\}")  # `${expr}` in the script, `{name}` in OpenAPI


def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10, follow_redirects=False)


@pytest.fixture(scope="module")
def page(api_url: str) -> httpx.Response:
    r = _get(api_url + "/")
    assert r.status_code == 200, r.text
    return r


def _script(html: str) -> str:
    scripts = SCRIPT.findall(html)
    assert len(scripts) == 1
    return scripts[0]  # type: ignore[no-any-return]


def test_root_serves_the_dashboard(page: httpx.Response) -> None:
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>Retenshun</title>" in page.text
    for section in ("view-auth", "view-accept", "view-overview", "view-keys", "view-team",
                    "view-mail"):
        assert f'id="{section}"' in page.text
    assert 'href="/docs"' in page.text


def test_page_loads_nothing_from_other_hosts(page: httpx.Response) -> None:
    html = page.text
    urls = re.findall(r"""\b(?:src|href|action|srcset)\s*=\s*["']?([^"'\s>]+)""", html)
    assert urls, "expected same-origin links such as /docs"
    for url in urls:
        assert not re.match(r"(?i)([a-z][a-z0-9+.-]*:)?//", url), url
    assert "http://" not in html and "https://" not in html
    assert "@import" not in html and "url(" not in html
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"


def test_csp_allows_exactly_the_inline_script(page: httpx.Response) -> None:
    digest = hashlib.sha256(_script(page.text).encode()).digest()
    expected = f"script-src 'sha256-{base64.b64encode(digest).decode()}';"
    assert expected in page.headers["content-security-policy"]
    assert "unsafe-inline" not in page.headers["content-security-policy"].split("script-src")[1] \
        .split(";")[0]


def test_accept_invite_serves_the_same_page(api_url: str, page: httpx.Response) -> None:
    r = _get(api_url + "/accept-invite?token=x")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.text == page.text


def test_an_invite_link_opens_the_page(tenant: Tenant) -> None:
    r = tenant.dashboard.post("/team/invites", json={"email": "page-invitee@example.com"})
    assert r.status_code == 201, r.text
    url = r.json()["invite"]["acceptUrl"]
    assert url.startswith(tenant.base + "/accept-invite?token=")
    opened = _get(url)
    assert opened.status_code == 200
    assert 'id="accept-form"' in opened.text


def test_script_names_only_same_origin_api_paths(page: httpx.Response) -> None:
    script = _script(page.text)
    paths = {m.group(2) for m in PATH_LITERAL.finditer(script)}
    assert "/api/v1/auth/me" in paths and "/dev/mail" in paths
    page_routes = {"/", "/#overview", "/accept-invite"}
    for path in paths - page_routes:
        assert path.startswith("/api/v1/") or path == "/dev/mail", path
    assert not [p for p in paths if p.startswith("//")]  # no protocol-relative URL
    assert script.count("fetch(") == 1  # everything goes through api(), same-origin


def test_script_calls_documented_session_routes(api_url: str, page: httpx.Response) -> None:
    spec = httpx.get(api_url + "/openapi.json", timeout=10).json()
    documented = {(m.upper(), PARAM.sub("{}", path))
                  for path, ops in spec["paths"].items() for m in ops}
    calls = [(m, PARAM.sub("{}", path)) for m, _, path in API_CALL.findall(_script(page.text))]
    assert len(calls) >= 10
    for call in calls:
        assert call in documented, call
    used = {path for _, path in calls}
    assert {"/api/v1/auth/signup", "/api/v1/auth/login", "/api/v1/auth/logout",
            "/api/v1/auth/me", "/api/v1/auth/accept-invite", "/api/v1/api-keys",
            "/api/v1/team", "/api/v1/team/invites", "/api/v1/projects",
            "/api/v1/projects/{}/switch", "/dev/mail"} <= used
    # Session endpoints only: no API-key data calls from the dashboard.
    assert not used & {"/api/v1/events", "/api/v1/users"}


def test_script_never_parses_data_as_html(page: httpx.Response) -> None:
    script = _script(page.text)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    # Caught mail is shown in an iframe with an empty sandbox (no scripts, opaque origin).
    assert "h('iframe', { sandbox: '', srcdoc: m.html" in script
    assert "X-CSRF-Token" in script and "sessionStorage" in script


def test_pages_do_not_shadow_api_errors(api_url: str) -> None:
    r = _get(api_url + "/no-such-page")
    assert r.status_code == 404
    assert r.json()["status"] == 404
    r = httpx.post(api_url + "/", timeout=10)
    assert r.status_code == 405
    assert r.json()["status"] == 405
