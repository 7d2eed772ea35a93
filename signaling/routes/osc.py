"""OSC control, seen over HTTP: the listener's status and Scope's live reference of addresses
(`/osc/paths` as JSON, `/osc/docs` as a page), for the pipeline loaded now."""

from __future__ import annotations

import html
import json
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict

from ..osc_addresses import SESSION_PREFIX, OscAddress
from .context import ApiContext


class OscStatusResponse(BaseModel):
    enabled: bool
    listening: bool
    port: int | None
    host: str | None
    log_all_messages: bool = False
    """Log every message received (else only problems, rate-limited)."""


class OscSettingsRequest(BaseModel):
    """Scope's `PUT /osc/settings`."""

    model_config = ConfigDict(extra="ignore")

    log_all_messages: bool


class OscPathsResponse(BaseModel):
    """Scope's shape (`active` / `available` groups of addresses), plus how to reach them."""

    active: dict[str, list[OscAddress]]
    """What the loaded pipeline acts on: Scope's runtime keys, LiveV2V's, the pipeline's own."""
    available: dict[str, list[OscAddress]]
    """Runtime parameters of the other pipelines (they apply once one of them is loaded)."""
    active_pipeline_ids: list[str]
    listening: bool
    host: str | None
    port: int | None
    session_address: str = f"{SESSION_PREFIX}{{session_id}}/{{key}}"
    """Every `/scope/<key>` also exists per session, for one session only. Live session ids
    are not listed here: an id lets its holder stop the session (`DELETE /webrtc/offer/{id}`),
    so only the session's own client knows it."""


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(prefix="/osc", tags=["osc"])

    def status() -> OscStatusResponse:
        osc = ctx.osc
        return OscStatusResponse(enabled=osc.bind is not None, listening=osc.listening,
                                 port=osc.port if osc.listening else None,
                                 host=osc.bind[0] if osc.bind else None,
                                 log_all_messages=osc.log_all_messages)

    @api.get("/status", response_model=OscStatusResponse)
    async def osc_status() -> OscStatusResponse:
        """Whether OSC listens, and where (UDP)."""
        return status()

    @api.put("/settings", response_model=OscStatusResponse, responses={422: {}})
    async def osc_settings(body: OscSettingsRequest) -> OscStatusResponse:
        """Log every OSC message received (at info level), or only problems (the default)."""
        ctx.osc.log_all_messages = body.log_all_messages
        return status()

    @api.get("/paths", response_model=OscPathsResponse)
    async def osc_paths() -> OscPathsResponse:
        """Every address with its type, range, default and an example value."""
        return paths()

    @api.get("/docs", response_class=HTMLResponse,
             responses={200: {"content": {"text/html": {}}}})
    async def osc_docs() -> HTMLResponse:
        """The same reference as a page (Scope's `/osc/docs`), with python-osc examples."""
        return HTMLResponse(render(paths()))

    def paths() -> OscPathsResponse:
        osc = ctx.osc
        catalogue = osc.catalogue()
        return OscPathsResponse(active=catalogue.active, available=catalogue.available,
                                active_pipeline_ids=catalogue.active_pipeline_ids,
                                listening=osc.listening,
                                host=osc.bind[0] if osc.bind else None,
                                port=osc.port if osc.listening else None)

    return api


def _range(entry: OscAddress) -> str:
    if entry.enum:
        return " | ".join(entry.enum)
    if entry.min is None and entry.max is None:
        return ""
    return f"{_number(entry.min)} … {_number(entry.max)}"


def _number(value: int | float | None) -> str:
    return "" if value is None else str(value) if isinstance(value, int) else f"{value:g}"


def _python(entry: OscAddress, host: str, port: int) -> str:
    return (f'SimpleUDPClient("{host}", {port}).send_message("{entry.osc_address}", '
            f"{entry.example!r})")


def _value(value: Any) -> str:
    return "—" if value is None else f"<code>{html.escape(json.dumps(value))}</code>"


def _table(title: str, entries: list[OscAddress], host: str, port: int) -> str:
    rows = "".join(
        f"<tr><td><code>{html.escape(e.osc_address)}</code></td><td>{e.type}</td>"
        f"<td>{html.escape(_range(e))}</td><td>{_value(e.default)}</td>"
        f"<td>{html.escape(e.description)}</td>"
        f"<td><code>{html.escape(_python(e, host, port))}</code></td></tr>" for e in entries)
    return (f"<h3>{html.escape(title)}</h3><table><thead><tr><th>Address</th><th>Type</th>"
            "<th>Range</th><th>Default</th><th>Description</th><th>python-osc</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")


def render(paths: OscPathsResponse) -> str:
    """A self-contained page (no scripts, no external assets)."""
    port = paths.port or 8000
    host = paths.host if paths.host and paths.host not in ("0.0.0.0", "::") else "127.0.0.1"
    if paths.listening:
        where = (f"Listening on <code>udp://{html.escape(paths.host or '')}:{port}</code>.")
    else:
        where = ("OSC is <b>not listening</b> on this server (start it with "
                 "<code>--osc-port PORT</code>; it is on by default on loopback binds).")
    active = "".join(_table(name, entries, host, port)
                     for name, entries in paths.active.items())
    available = "".join(_table(f"{name} (not loaded)", entries, host, port)
                        for name, entries in paths.available.items())
    loaded = ", ".join(paths.active_pipeline_ids) or "none"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>LiveV2V — OSC reference</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; line-height: 1.45; }}
table {{ border-collapse: collapse; width: 100%; font-size: .9rem; margin-bottom: 1.5rem; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .35rem .5rem; text-align: left;
         vertical-align: top; }}
code {{ background: #f3f3f6; padding: 0 .2rem; border-radius: 3px; }}
</style></head><body>
<h1>OSC reference</h1>
<p>{where} Pipeline loaded: <b>{html.escape(loaded)}</b>.</p>
<p><code>/scope/&lt;key&gt; value</code> changes every live session;
<code>{html.escape(paths.session_address)}</code> changes one (the session id is the
<code>sessionId</code> its client got with the answer).
Numbers may be sent as float or int (a bool takes 0/1, an integer a whole float), as
TouchDesigner's OSC Out CHOP sends them. Bad values and unknown addresses are logged and
counted in <code>/metrics</code> (<code>livev2v_osc_messages</code>). Send
<code>from pythonosc.udp_client import SimpleUDPClient</code> first for the examples.</p>
<h2>Active</h2>{active}
<h2>Available</h2>{available or "<p>None.</p>"}
</body></html>"""
