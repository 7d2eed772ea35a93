"""ICE server list shared by aiortc and the browser (`GET /api/v1/webrtc/ice-servers`).

Sources, first match wins:
  1. env: TURN_URLS / TURN_USERNAME / TURN_CREDENTIAL and/or STUN_URLS (comma-separated URLs);
  2. a Hugging Face token (HF_TOKEN or the cached hub login) -> short-lived Cloudflare TURN
     credentials from the fastrtc credential service;
  3. TWILIO_ACCOUNT_SID + TWILIO_AUTH_TOKEN -> a Twilio network traversal token;
  4. nothing: no servers on a loopback bind (host candidates suffice), else a public STUN server.

Fetched credentials expire, so they are cached with their expiry and fetched again before it.
Secrets (HF token, Twilio auth token, TURN credentials) never reach the logs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping

import httpx
from aiortc import RTCIceServer
from aiortc.rtcicetransport import parse_stun_turn_uri
from pydantic import BaseModel, ValidationError

logger = logging.getLogger(__name__)

# The fastrtc credential service. fastrtc's own helpers call https://turn.fastrtc.org/credentials,
# but that name's DNS has been dead since 2026-06 with a dangling Route53 delegation
# (gradio-app/fastrtc#429): whoever claims it would receive our bearer token. The Space it
# aliased is addressed directly instead.
HF_TURN_CREDENTIALS_URL = "https://fastrtc-turn-service.hf.space/credentials"
TWILIO_TOKENS_URL = "https://api.twilio.com/2010-04-01/Accounts/{sid}/Tokens.json"
PUBLIC_STUN_URL = "stun:stun.l.google.com:19302"

DEFAULT_TTL_S = 86_400
# A failed fetch is retried no sooner than this, so a dead service costs one timeout per
# interval rather than one per WebRTC offer.
RETRY_AFTER_FAILURE_S = 30.0
HTTP_TIMEOUT_S = 10.0


class IceServer(BaseModel):
    """One RTCIceServer as the browser's RTCPeerConnection takes it (also the response item)."""

    urls: str | list[str]
    username: str | None = None
    credential: str | None = None


class IceServersResponse(BaseModel):
    """Body of GET /api/v1/webrtc/ice-servers; also the shape the fastrtc service replies with."""

    iceServers: list[IceServer]  # wire name, as RTCConfiguration spells it


class _TwilioIceServer(BaseModel):
    # Twilio sends both `url` (legacy) and `urls`; either may be the only one present.
    urls: str | list[str] | None = None
    url: str | None = None
    username: str | None = None
    credential: str | None = None


class _TwilioToken(BaseModel):
    ice_servers: list[_TwilioIceServer]
    ttl: int | None = None  # seconds; Twilio sends it as a string, pydantic coerces


def to_aiortc(servers: list[IceServer]) -> list[RTCIceServer]:
    """Convert for aiortc's RTCConfiguration.

    URLs aiortc cannot parse (e.g. `stun:...?transport=udp`, which some services send) are
    dropped here: aiortc raises on them when gathering, which would fail every connection.
    Browsers still get the full list.
    """
    out: list[RTCIceServer] = []
    for server in servers:
        urls = [server.urls] if isinstance(server.urls, str) else server.urls
        usable = [url for url in urls if _aiortc_accepts(url)]
        if len(usable) < len(urls):
            logger.debug(
                "dropping ICE URLs aiortc cannot parse: %s",
                sorted(set(urls) - set(usable)),
            )
        if not usable:
            continue
        out.append(
            RTCIceServer(
                urls=server.urls if len(usable) == len(urls) else usable,
                username=server.username,
                credential=server.credential,
            )
        )
    return out


def _aiortc_accepts(url: str) -> bool:
    try:
        parse_stun_turn_uri(url)
    except ValueError:
        return False
    return True


def is_loopback_host(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def read_hub_token() -> str | None:
    """The token of `huggingface-cli login`; None when absent or huggingface_hub fails."""
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - no usable hub login is not an error
        return None


async def fetch_hf_turn(
    client: httpx.AsyncClient, token: str, ttl_s: int
) -> tuple[list[IceServer], int]:
    """Cloudflare TURN credentials minted by the fastrtc service for an HF account."""
    response = await client.get(
        HF_TURN_CREDENTIALS_URL,
        params={"ttl": ttl_s},
        headers={"Authorization": f"Bearer {token}"},
    )
    response.raise_for_status()
    # The reply carries no ttl of its own; the requested one is what was granted.
    return IceServersResponse.model_validate(response.json()).iceServers, ttl_s


async def fetch_twilio(
    client: httpx.AsyncClient, sid: str, auth_token: str, ttl_s: int
) -> tuple[list[IceServer], int]:
    """A Twilio Network Traversal Service token: STUN/TURN servers with temporary credentials."""
    response = await client.post(
        TWILIO_TOKENS_URL.format(sid=sid),
        auth=(sid, auth_token),
        data={"Ttl": str(ttl_s)},
    )
    response.raise_for_status()
    token = _TwilioToken.model_validate(response.json())
    servers = [
        IceServer(
            urls=entry.urls or entry.url,
            username=entry.username,
            credential=entry.credential,
        )
        for entry in token.ice_servers
        if entry.urls or entry.url
    ]
    return servers, token.ttl or ttl_s


class _EmptyReply(Exception):
    pass


def _describe_failure(exc: Exception, secrets: list[str]) -> str:
    # Our own wording where the exception's text could echo the reply (and so credentials).
    if isinstance(exc, httpx.HTTPStatusError):
        text = f"HTTP {exc.response.status_code}"
    elif isinstance(exc, json.JSONDecodeError):
        text = "reply is not JSON"
    elif isinstance(exc, ValidationError):
        text = f"reply has an unexpected shape ({exc.error_count()} errors)"
    elif isinstance(exc, _EmptyReply):
        text = "reply lists no ICE servers"
    else:
        text = f"{type(exc).__name__}: {exc}"
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class IceServerProvider:
    """Resolves the ICE source once, then serves its list, fetching credentials as they age."""

    def __init__(
        self,
        *,
        host: str,
        env: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        token_reader: Callable[[], str | None] | None = None,
        clock: Callable[[], float] = time.time,
        ttl_s: int = DEFAULT_TTL_S,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        env = os.environ if env is None else env
        self._clock = clock
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._lock = asyncio.Lock()
        self._secrets: list[str] = []  # redacted from failure messages, belt and braces
        self._static: list[IceServer] = []
        self._fetch: (
            Callable[[httpx.AsyncClient], Awaitable[tuple[list[IceServer], int]]] | None
        ) = None
        self._cached: list[IceServer] = []
        self._expires_at = -math.inf
        self._refresh_at = -math.inf
        self._retry_at = -math.inf
        self._failing = False  # a failure was logged and no success has happened since

        if is_loopback_host(host):
            self._fallback: list[IceServer] = []
            fallback_source = "none"
        else:
            self._fallback = [IceServer(urls=PUBLIC_STUN_URL)]
            fallback_source = "public-stun"

        turn_urls = _split_urls(env.get("TURN_URLS", ""))
        stun_urls = _split_urls(env.get("STUN_URLS", ""))
        sid = env.get("TWILIO_ACCOUNT_SID", "").strip()
        twilio_token = env.get("TWILIO_AUTH_TOKEN", "").strip()
        if turn_urls or stun_urls:
            self._source = "env"
            if stun_urls:
                self._static.append(IceServer(urls=stun_urls))
            if turn_urls:
                username = env.get("TURN_USERNAME") or None
                credential = env.get("TURN_CREDENTIAL") or None
                self._static.append(
                    IceServer(urls=turn_urls, username=username, credential=credential)
                )
                if not (username and credential):
                    # Browsers throw InvalidAccessError on a TURN server without credentials.
                    logger.warning(
                        "TURN_URLS is set without TURN_USERNAME and TURN_CREDENTIAL"
                    )
            return
        hf_token = (env.get("HF_TOKEN") or "").strip() or (
            (token_reader or read_hub_token)() or ""
        ).strip()
        if hf_token:
            self._source = "hf-turn"
            self._secrets.append(hf_token)
            self._fetch = lambda client: fetch_hf_turn(client, hf_token, ttl_s)
        elif sid and twilio_token:
            self._source = "twilio"
            self._secrets.append(twilio_token)
            self._fetch = lambda client: fetch_twilio(client, sid, twilio_token, ttl_s)
        else:
            self._source = fallback_source
            self._static = self._fallback
            if fallback_source == "public-stun":
                logger.warning(
                    "No TURN server configured: using public STUN only, so browsers behind NAT or "
                    "firewalls that block direct UDP will fail to connect. Set TURN_URLS, "
                    "TURN_USERNAME and TURN_CREDENTIAL (or STUN_URLS), or HF_TOKEN, or "
                    "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN."
                )

    @property
    def source(self) -> str:
        """One of env, hf-turn, twilio, none, public-stun (for a startup log line)."""
        return self._source

    async def servers(self) -> list[IceServer]:
        """The current list; fetches fresh credentials when due. Never raises."""
        if self._fetch is None:
            return list(self._static)
        if self._clock() < self._refresh_at:
            return list(self._cached)
        async with self._lock:
            # Callers that queued behind a fetch see its result here instead of fetching again.
            now = self._clock()
            if now < self._refresh_at:
                return list(self._cached)
            if now < self._retry_at:
                return self._still_valid_or_fallback(now)
            try:
                servers, ttl_s = await self._fetch(self._http())
                if not servers:
                    raise _EmptyReply
            except Exception as exc:  # noqa: BLE001 - any failure falls back, logged once
                self._retry_at = now + RETRY_AFTER_FAILURE_S
                fallback = self._still_valid_or_fallback(now)
                if not self._failing:
                    self._failing = True
                    logger.warning(
                        "Fetching %s ICE credentials failed (%s); "
                        "serving %s until a retry succeeds",
                        self._source,
                        _describe_failure(exc, self._secrets),
                        "the previous credentials"
                        if now < self._expires_at
                        else _describe(fallback),
                    )
                return fallback
            if self._failing:
                self._failing = False
                logger.info("Fetching %s ICE credentials works again", self._source)
            self._cached = servers
            self._expires_at = now + ttl_s
            self._refresh_at = self._expires_at - _refresh_margin(ttl_s)
            return list(servers)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport, timeout=HTTP_TIMEOUT_S
            )
        return self._client

    def _still_valid_or_fallback(self, now: float) -> list[IceServer]:
        return list(self._cached if now < self._expires_at else self._fallback)


def _split_urls(value: str) -> list[str]:
    return [url.strip() for url in value.split(",") if url.strip()]


def _refresh_margin(ttl_s: float) -> float:
    # 10% of the TTL, but at least a few minutes (capped at half a short TTL), so a browser
    # handed the list just before a refresh still has time to connect with it.
    return max(ttl_s * 0.1, min(300.0, ttl_s / 2))


def _describe(servers: list[IceServer]) -> str:
    return "public STUN only" if servers else "no ICE servers (host candidates only)"
