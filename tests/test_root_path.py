"""The app under a URL prefix: `--root-path` (a proxy that keeps the prefix, or a user who
types it) and a proxy's `X-Forwarded-Prefix` (jupyter-server-proxy strips the prefix and says
what it was). Scope clients calling the API at the root are unaffected."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from app import parse_args
from signaling.prefix import forwarded_prefix
from tests.conftest import Server, serve_in_thread
from tests.studio_checks import stop, stream_and_steer


@pytest.mark.parametrize(("value", "expected"), [
    ("/user/alice/proxy/8000", "/user/alice/proxy/8000"),
    ("/user/alice%40example.org/proxy/8000/", "/user/alice%40example.org/proxy/8000"),
    ("/a, /b", "/a"),  # chained proxies: the outermost
    ("", None), ("/", None), ("user/x", None), ("//evil.example/x", None),
    ("/x/../y", None), ('/x"><script>alert(1)</script>', None), ("/x y", None),
    ("https://evil.example/x", None),
])
def test_forwarded_prefix_takes_plain_paths_only(value: str, expected: str | None) -> None:
    assert forwarded_prefix(value) == expected


def _gradio_root(page: str) -> str:
    config = re.search(r"window\.gradio_config\s*=\s*(\{.*?\});</script>", page, re.S)
    assert config is not None, page[:500]
    return json.loads(config.group(1))["root"]


@pytest.fixture(scope="module")
def effect() -> Iterator[Server]:
    with serve_in_thread(pipeline="cpu-effect") as server:
        yield server


def test_forwarded_prefix_header_prefixes_the_page_and_the_docs(effect: Server) -> None:
    prefix = "/user/alice/proxy/8000"
    # a stripping proxy: the request path has no prefix, the header says what it was
    page = httpx.get(f"{effect.url}/", headers={"X-Forwarded-Prefix": prefix}, timeout=30)
    assert page.status_code == 200
    assert urlsplit(_gradio_root(page.text)).path == prefix
    docs = httpx.get(f"{effect.url}/docs", headers={"X-Forwarded-Prefix": prefix}, timeout=10)
    assert f"'{prefix}/openapi.json'" in docs.text
    # without the header, or with a bogus one, the page is the root's
    assert urlsplit(_gradio_root(httpx.get(f"{effect.url}/", timeout=30).text)).path == ""
    bogus = httpx.get(f"{effect.url}/", headers={"X-Forwarded-Prefix": '/x"><b>'}, timeout=30)
    assert bogus.status_code == 200 and urlsplit(_gradio_root(bogus.text)).path == ""
    # the API answers as before, with or without the header; body limits still apply
    status = httpx.get(f"{effect.url}/api/v1/pipeline/status",
                       headers={"X-Forwarded-Prefix": prefix}, timeout=10)
    assert status.json()["pipeline_id"] == "cpu-effect"
    big = httpx.post(f"{effect.url}/api/v1/webrtc/offer", headers={"X-Forwarded-Prefix": prefix},
                     content=b"x" * (300 * 1024), timeout=10)
    assert big.status_code == 413


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_studio_streams_under_root_path(browser: Any) -> None:
    assert parse_args(["--root-path", "/lab/v2v"]).root_path == "/lab/v2v"  # → the settings'
    with serve_in_thread(pipeline="cpu-effect", root_path="/lab/v2v") as server:
        # Scope's clients at the root are unaffected
        assert httpx.get(f"{server.url}/api/v1/pipeline/status", timeout=10).status_code == 200
        # the prefixed URLs reach the same routes (a proxy that keeps the prefix)
        prefixed = f"{server.url}/lab/v2v"
        assert httpx.get(f"{prefixed}/api/v1/pipelines/schemas", timeout=10).status_code == 200
        # the configured root path wins over a proxy's header
        page = httpx.get(f"{prefixed}/", headers={"X-Forwarded-Prefix": "/other"}, timeout=30)
        assert urlsplit(_gradio_root(page.text)).path == "/lab/v2v"
        # an offer body over the limit is refused under the prefix too
        big = httpx.post(f"{prefixed}/api/v1/webrtc/offer", content=b"x" * (300 * 1024),
                         timeout=10)
        assert big.status_code == 413

        context = browser.new_context(viewport={"width": 1440, "height": 960})
        page = context.new_page()
        requests: list[str] = []
        errors: list[str] = []
        page.on("request", lambda r: requests.append(f"{r.method} {r.url}"))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        try:
            page.goto(f"{prefixed}/")
            colours = stream_and_steer(page)
            assert colours["blue"][2] > colours["red"][2] + 6, colours
            session = page.evaluate("() => window.liveV2V.client.sessionId")
            stop(page)
        finally:
            context.close()
        ours = [r for r in requests if r.split(" ", 1)[1].startswith(server.url)]
        assert f"POST {prefixed}/api/v1/webrtc/offer" in ours
        assert f"PATCH {prefixed}/api/v1/webrtc/offer/{session}" in ours  # ICE candidates
        stray = [r for r in ours if not r.split(" ", 1)[1].startswith(f"{prefixed}/")]
        assert stray == [], stray  # every call the page made went to the prefixed URLs
        assert session and errors == [], errors
