"""signaling.ice: source precedence, credential fetching and refresh, failure fallback.

No test reaches the network: every provider gets an httpx.MockTransport (the real httpx
client code path) and a token reader that never touches the hub cache.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable
from urllib.parse import parse_qs

import httpx
import pytest
from aiortc import RTCIceServer
from aiortc.rtcicetransport import connection_kwargs

from signaling import ice
from signaling.ice import IceServer, IceServerProvider, IceServersResponse, to_aiortc

HF_TOKEN = "hf_SECRETtoken123"
TWILIO_SID = "AC0123456789abcdef"
TWILIO_TOKEN = "twilioSECRET456"
PUBLIC_STUN = [IceServer(urls="stun:stun.l.google.com:19302")]
CF_SERVERS = [
    {"urls": ["stun:stun.cloudflare.com:3478"]},
    {
        "urls": [
            "turn:turn.cloudflare.com:3478?transport=udp",
            "turns:turn.cloudflare.com:443?transport=tcp",
        ],
        "username": "cf-user",
        "credential": "cf-SECRETcredential",
    },
]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """MockTransport handler that records requests and replays a scripted reply per call."""

    def __init__(self, *replies: Callable[[httpx.Request], httpx.Response]) -> None:
        self.requests: list[httpx.Request] = []
        self._replies = list(replies)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self._replies[min(len(self.requests), len(self._replies)) - 1]
        return reply(request)


def ok(body: object) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _request: httpx.Response(200, json=body)


def provider(
    env: dict[str, str],
    handler: Callable[[httpx.Request], object] | None = None,
    *,
    host: str = "0.0.0.0",
    token: str | None = None,
    clock: FakeClock | None = None,
    ttl_s: int = 1000,
) -> IceServerProvider:
    return IceServerProvider(
        host=host,
        env=env,
        transport=httpx.MockTransport(handler or Recorder(ok({}))),
        token_reader=lambda: token,
        clock=clock or FakeClock(),
        ttl_s=ttl_s,
    )


# --- source selection --------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "token", "expected"),
    [
        (
            {
                "TURN_URLS": "turn:t:3478",
                "HF_TOKEN": HF_TOKEN,
                "TWILIO_ACCOUNT_SID": TWILIO_SID,
                "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            },
            HF_TOKEN,
            "env",
        ),
        ({"STUN_URLS": "stun:s:3478", "HF_TOKEN": HF_TOKEN}, None, "env"),
        (
            {
                "HF_TOKEN": HF_TOKEN,
                "TWILIO_ACCOUNT_SID": TWILIO_SID,
                "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            },
            None,
            "hf-turn",
        ),
        (
            {"TWILIO_ACCOUNT_SID": TWILIO_SID, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN},
            HF_TOKEN,
            "hf-turn",
        ),
        (
            {"TWILIO_ACCOUNT_SID": TWILIO_SID, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN},
            None,
            "twilio",
        ),
        ({"TWILIO_ACCOUNT_SID": TWILIO_SID}, None, "public-stun"),
        ({"HF_TOKEN": "  ", "TURN_URLS": " , "}, "", "public-stun"),
        ({}, None, "public-stun"),
    ],
)
def test_source_precedence(
    env: dict[str, str], token: str | None, expected: str
) -> None:
    assert provider(env, token=token).source == expected


@pytest.mark.asyncio
async def test_env_turn_urls_are_comma_split_and_carry_credentials() -> None:
    recorder = Recorder(ok({}))
    env = {
        "TURN_URLS": " turn:a.example:3478 ,turns:b.example:5349?transport=tcp,, ",
        "TURN_USERNAME": "user",
        "TURN_CREDENTIAL": "pass",
        "STUN_URLS": "stun:s1.example:3478,stun:s2.example:3478",
        "HF_TOKEN": HF_TOKEN,
    }
    servers = await provider(env, recorder).servers()
    assert servers == [
        IceServer(urls=["stun:s1.example:3478", "stun:s2.example:3478"]),
        IceServer(
            urls=["turn:a.example:3478", "turns:b.example:5349?transport=tcp"],
            username="user",
            credential="pass",
        ),
    ]
    assert (
        recorder.requests == []
    )  # explicit env wins over the HF token: nothing fetched


@pytest.mark.asyncio
async def test_env_turn_without_credentials_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=ice.__name__)
    servers = await provider({"TURN_URLS": "turn:a.example:3478"}).servers()
    assert servers == [IceServer(urls=["turn:a.example:3478"])]
    assert "TURN_CREDENTIAL" in caplog.text


# --- fetched credentials -------------------------------------------------------------


@pytest.mark.asyncio
async def test_hf_token_fetches_cloudflare_turn_with_bearer_and_ttl() -> None:
    def reply(request: httpx.Request) -> httpx.Response:
        assert request.method == "GET"
        assert request.url.copy_with(query=None) == httpx.URL(
            ice.HF_TURN_CREDENTIALS_URL
        )
        assert request.url.params["ttl"] == "3600"
        assert request.headers["Authorization"] == f"Bearer {HF_TOKEN}"
        return httpx.Response(200, json={"iceServers": CF_SERVERS})

    recorder = Recorder(reply)
    p = provider(
        {}, recorder, token=HF_TOKEN, ttl_s=3600
    )  # token from the (fake) hub cache
    assert p.source == "hf-turn"
    servers = await p.servers()
    assert len(recorder.requests) == 1
    assert (
        servers
        == IceServersResponse.model_validate({"iceServers": CF_SERVERS}).iceServers
    )
    await p.aclose()


@pytest.mark.asyncio
async def test_twilio_posts_basic_auth_and_uses_reply_ttl() -> None:
    def reply(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert (
            str(request.url)
            == f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}/Tokens.json"
        )
        basic = base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
        assert request.headers["Authorization"] == f"Basic {basic}"
        assert parse_qs(request.content.decode()) == {"Ttl": ["86400"]}
        return httpx.Response(
            201,
            json={
                "ttl": "10000",  # Twilio sends a string; it overrides the requested 86400
                "ice_servers": [
                    {"url": "stun:global.stun.twilio.com:3478"},
                    {
                        "urls": "turn:global.turn.twilio.com:3478?transport=udp",
                        "username": "u",
                        "credential": "c",
                    },
                    {"username": "no-url"},
                ],
            },
        )

    clock = FakeClock()
    recorder = Recorder(reply)
    env = {"TWILIO_ACCOUNT_SID": TWILIO_SID, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN}
    p = provider(env, recorder, clock=clock, ttl_s=86400)
    assert await p.servers() == [
        IceServer(urls="stun:global.stun.twilio.com:3478"),
        IceServer(
            urls="turn:global.turn.twilio.com:3478?transport=udp",
            username="u",
            credential="c",
        ),
    ]
    # Refresh is due 10% (1000 s) before the reply's 10000 s, not the requested 86400 s.
    clock.now += 8999
    await p.servers()
    assert len(recorder.requests) == 1
    clock.now += 1
    await p.servers()
    assert len(recorder.requests) == 2


@pytest.mark.asyncio
async def test_refresh_happens_after_refresh_point_not_before() -> None:
    second = [{"urls": "turn:new.example:3478", "username": "u2", "credential": "c2"}]
    recorder = Recorder(ok({"iceServers": CF_SERVERS}), ok({"iceServers": second}))
    clock = FakeClock()
    p = provider({"HF_TOKEN": HF_TOKEN}, recorder, clock=clock, ttl_s=86_400)
    first = await p.servers()
    start = clock.now
    refresh_at = start + 86_400 * 0.9  # refetch with 10% of the TTL left

    clock.now = refresh_at - 1
    assert await p.servers() == first
    assert len(recorder.requests) == 1

    clock.now = refresh_at
    assert await p.servers() == [IceServer.model_validate(second[0])]
    assert len(recorder.requests) == 2


@pytest.mark.asyncio
async def test_short_ttl_refreshes_a_few_minutes_early() -> None:
    recorder = Recorder(ok({"iceServers": CF_SERVERS}))
    clock = FakeClock()
    p = provider({"HF_TOKEN": HF_TOKEN}, recorder, clock=clock, ttl_s=600)
    await p.servers()
    clock.now += 299  # 10% of 600 s would be one minute; the margin is 5 minutes
    await p.servers()
    assert len(recorder.requests) == 1
    clock.now += 1
    await p.servers()
    assert len(recorder.requests) == 2


@pytest.mark.asyncio
async def test_concurrent_callers_share_one_fetch() -> None:
    release = asyncio.Event()
    calls = 0

    async def slow(_request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        await release.wait()
        return httpx.Response(200, json={"iceServers": CF_SERVERS})

    p = provider({"HF_TOKEN": HF_TOKEN}, slow)
    tasks = [asyncio.create_task(p.servers()) for _ in range(10)]
    for _ in range(20):  # let every task reach the fetch or the lock
        await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert all(r == results[0] for r in results)
    assert len(results[0]) == 2


# --- failure handling --------------------------------------------------------------


def _connect_error(request: httpx.Request) -> httpx.Response:
    # The message echoes the token, as a proxy URL with userinfo would: it must be redacted.
    raise httpx.ConnectError(
        f"proxy https://u:{HF_TOKEN}@proxy failed", request=request
    )


FAILURES = {
    "status": lambda _r: httpx.Response(500, text=f"boom {HF_TOKEN}"),
    "network": _connect_error,
    "not-json": lambda _r: httpx.Response(200, text="<html>"),
    # pydantic's error text would echo the invalid credential value
    "bad-shape": ok(
        {"iceServers": [{"urls": "turn:x", "credential": ["cf-SECRETcredential"]}]}
    ),
    "empty": ok({"iceServers": []}),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", sorted(FAILURES))
async def test_failure_falls_back_and_logs_once_without_secrets(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx's included
    fail = FAILURES[kind]
    recorder = Recorder(fail, fail, fail, ok({"iceServers": CF_SERVERS}), fail)
    clock = FakeClock()
    p = provider({"HF_TOKEN": HF_TOKEN}, recorder, clock=clock, ttl_s=1000)

    def failure_logs() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name == ice.__name__
            and r.levelno >= logging.WARNING
            and "failed" in r.getMessage()
        ]

    assert await p.servers() == PUBLIC_STUN
    # Within the retry interval the service is not asked again.
    clock.now += ice.RETRY_AFTER_FAILURE_S - 1
    assert await p.servers() == PUBLIC_STUN
    assert len(recorder.requests) == 1
    # Later retries fail again: still the fallback, still one log line.
    for _ in range(2):
        clock.now += ice.RETRY_AFTER_FAILURE_S
        assert await p.servers() == PUBLIC_STUN
    assert len(recorder.requests) == 3
    assert len(failure_logs()) == 1
    # A success, then another failure, logs again.
    clock.now += ice.RETRY_AFTER_FAILURE_S
    assert len(await p.servers()) == 2
    clock.now += 1000  # past expiry: nothing valid left to keep
    assert await p.servers() == PUBLIC_STUN
    assert len(failure_logs()) == 2

    assert HF_TOKEN not in caplog.text
    assert "cf-SECRETcredential" not in caplog.text


@pytest.mark.asyncio
async def test_failure_keeps_previous_list_while_it_is_valid() -> None:
    recorder = Recorder(ok({"iceServers": CF_SERVERS}), _connect_error)
    clock = FakeClock()
    p = provider(
        {"HF_TOKEN": HF_TOKEN}, recorder, host="127.0.0.1", clock=clock, ttl_s=1000
    )
    first = await p.servers()
    clock.now += 950  # refresh due, credentials still valid for 50 s
    assert await p.servers() == first
    assert len(recorder.requests) == 2
    clock.now += 60  # expired, the retry fails too: loopback fallback is no servers
    assert await p.servers() == []
    assert len(recorder.requests) == 3


# --- no configuration ----------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.1.2.3", "localhost", "LOCALHOST", "::1", "[::1]"]
)
async def test_loopback_without_config_serves_nothing_quietly(
    host: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=ice.__name__)
    p = provider({}, host=host)
    assert p.source == "none"
    assert await p.servers() == []
    assert caplog.records == []


@pytest.mark.asyncio
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.com"])
async def test_public_host_without_config_serves_public_stun_and_warns_once(
    host: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=ice.__name__)
    p = provider({}, host=host)
    assert p.source == "public-stun"
    assert await p.servers() == PUBLIC_STUN
    assert await p.servers() == PUBLIC_STUN
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    for var in ("TURN_URLS", "HF_TOKEN", "TWILIO_ACCOUNT_SID"):
        assert var in warnings[0].getMessage()


def test_hub_token_reader_swallows_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def broken() -> str:
        raise OSError("unreadable cache")

    monkeypatch.setattr(huggingface_hub, "get_token", broken)
    assert ice.read_hub_token() is None


# --- wire shape and aiortc -------------------------------------------------------------


def test_response_wire_shape() -> None:
    body = IceServersResponse(
        iceServers=[
            IceServer(urls="stun:s:3478"),
            IceServer(urls=["turn:t"], username="u", credential="c"),
        ]
    )
    assert json.loads(body.model_dump_json()) == {
        "iceServers": [
            {"urls": "stun:s:3478", "username": None, "credential": None},
            {"urls": ["turn:t"], "username": "u", "credential": "c"},
        ]
    }


def test_to_aiortc_keeps_fields() -> None:
    servers = [
        *IceServersResponse.model_validate({"iceServers": CF_SERVERS}).iceServers,
        IceServer(urls="stun:stun.l.google.com:19302"),
    ]
    converted = to_aiortc(servers)
    assert all(isinstance(s, RTCIceServer) for s in converted)
    assert [(s.urls, s.username, s.credential) for s in converted] == [
        (s.urls, s.username, s.credential) for s in servers
    ]
    kwargs = connection_kwargs(converted)  # what aiortc's ICE gatherer does with them
    assert kwargs["turn_server"] == ("turn.cloudflare.com", 3478)
    assert kwargs["turn_password"] == "cf-SECRETcredential"


def test_to_aiortc_drops_urls_aiortc_rejects() -> None:
    servers = [
        IceServer(urls=["stun:a:3478?transport=udp", "stun:b:3478"]),
        IceServer(urls="stun:c:3478?transport=udp"),
        IceServer(urls="https://not-ice"),
    ]
    converted = to_aiortc(servers)
    assert [(s.urls, s.username) for s in converted] == [(["stun:b:3478"], None)]
    connection_kwargs(converted)  # would raise ValueError on the dropped ones
