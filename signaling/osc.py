"""OSC control over UDP: TouchDesigner, Resolume, Max or a python-osc script move the live
sessions' parameters, with Scope's addresses (`signaling.osc_addresses`).

`/scope/<key> value` applies to every live session, `/livev2v/<session_id>/<key> value` to one.
A change arrives exactly as one made over `POST /session/parameters`: the session's client gets
Scope's `parameters_updated` and our `parameters_applied`. Packets are parsed with python-osc on
the server's event loop (one small datagram at a time; no thread). Nothing a datagram holds can
stop the listener: a bad value, an unknown address or garbage is logged (rate-limited) and
counted in `/metrics` (`livev2v_osc_messages{outcome}`). OSC has no authentication: anyone who
can reach the UDP port can steer the sessions, which is why it is off on public binds unless
asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pythonosc
from pydantic import ValidationError
from pythonosc.osc_packet import OscPacket

from pipeline import ParameterRejectedError, ParameterUpdate, PipelineService
from pipeline.resources.loras import LoraParams

from .ice import is_loopback_host
from .osc_addresses import (
    SCOPE_PREFIX,
    SESSION_PREFIX,
    Catalogue,
    OscValueError,
    PromptSettings,
    build_catalogue,
    convert,
    is_setting,
    lora_ref,
    lora_update,
    to_settings,
    to_update,
)
from .session import Session
from .sessions import SessionRegistry

log = logging.getLogger(__name__)

Outcome = Literal["applied", "no_session", "unknown_session", "unknown_address", "bad_value",
                  "refused", "malformed"]
OUTCOMES: tuple[Outcome, ...] = ("applied", "no_session", "unknown_session", "unknown_address",
                                 "bad_value", "refused", "malformed")
MAX_DATAGRAM_BYTES = 64 * 1024
COALESCE_S = 0.03
"""Changes to one session closer together than this are merged: the first applies at once, the
others together at the end of the window (the latest value of each key wins). That is faster
than any pipeline's frame rate, so nothing visible is lost, and a controller that sends every
channel on every frame costs each session at most ~33 notifications a second."""


def osc_bind(host: str, port: int, osc_host: str | None,
             osc_port: int | None) -> tuple[str, int] | None:
    """Where OSC listens, or None when it is off. Without `osc_port` it is on for loopback
    binds only, on UDP at the HTTP port number (as Scope does); `osc_port` 0 turns it off, any
    other number turns it on there, on any bind. The host defaults to the HTTP host."""
    if osc_port is None:
        osc_port = port if is_loopback_host(host) else 0
    if osc_port == 0:
        return None
    osc_host = osc_host or host
    # "localhost" may resolve to ::1 first; controllers send to 127.0.0.1.
    return ("127.0.0.1" if osc_host.strip().lower() == "localhost" else osc_host, osc_port)


@dataclass
class _LogLimiter:
    """At most `burst` lines per kind of problem every `window_s`; then one line with how many
    were left out (a controller sending a bad value 60 times a second must not flood the log)."""

    window_s: float = 10.0
    burst: int = 5
    _windows: dict[str, list[float]] = field(default_factory=dict)  # kind → [start, shown, left]

    def warning(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        window = self._windows.get(kind)
        if window is None or now - window[0] >= self.window_s:
            if window is not None and window[2]:
                log.warning("OSC: %d more %s messages not logged", int(window[2]), kind)
            window = self._windows[kind] = [now, 0, 0]
        if window[1] < self.burst:
            window[1] += 1
            log.warning(message, *args)
        else:
            window[2] += 1


class OscControl:
    """The OSC listener of one server, and the prompt settings it keeps per session."""

    def __init__(self, sessions: SessionRegistry, service: PipelineService,
                 bind: tuple[str, int] | None,
                 count: Callable[[Outcome], None] = lambda outcome: None) -> None:
        self.sessions = sessions
        self.service = service
        self.bind = bind
        self._count = count
        self._transport: asyncio.DatagramTransport | None = None
        self.port: int | None = None
        """The UDP port bound, once listening."""
        self._all = PromptSettings()
        self._per_session: dict[str, PromptSettings] = {}
        self._catalogue: tuple[Hashable, Catalogue] | None = None
        self._limiter = _LogLimiter()
        self._windows: dict[str, asyncio.TimerHandle] = {}  # session id → end of its window
        self._held: dict[str, dict[str, Any]] = {}  # session id → changes merged meanwhile
        self.log_all_messages = False
        """Log every message and what came of it (Scope's switch; `PUT /osc/settings`)."""

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._transport is not None

    async def start(self) -> None:
        """Bind the UDP socket. A port in use is logged, not fatal: HTTP and WebRTC carry on."""
        if self.bind is None:
            log.info("OSC: off (--osc-port PORT turns it on)")
            return
        host, port = self.bind
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(self), local_addr=(host, port))
        except OSError as exc:
            log.error("OSC: cannot listen on udp://%s:%d (%s); OSC control is off", host, port,
                      exc.strerror or exc)
            return
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        shown = f"[{host}]" if ":" in host else host
        log.info("OSC: listening on udp://%s:%d (/scope/<param> for every session, "
                 "/livev2v/<session_id>/<param> for one; reference: /api/v1/osc/docs)",
                 shown, self.port)
        if not is_loopback_host(host):
            log.warning("OSC: udp://%s:%d has no authentication; anyone who reaches it can "
                        "change the sessions' parameters", shown, self.port)

    async def stop(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        for window in self._windows.values():
            window.cancel()
        self._windows.clear()
        self._held.clear()

    # --- the address space --------------------------------------------------------------------

    def catalogue(self) -> Catalogue:
        """The addresses for the pipeline loaded now and its LoRAs (rebuilt when they
        change)."""
        cls, params = self.service.pipeline_class, self.service.load_params
        loras = tuple(params.lora_specs()) if isinstance(params, LoraParams) else ()
        if self._catalogue is None or self._catalogue[0] != (cls, loras):
            self._catalogue = ((cls, loras), build_catalogue(cls, params))
        return self._catalogue[1]

    # --- messages -----------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """One datagram: a message or a bundle of them (applied at once, timetags ignored)."""
        try:
            if len(data) > MAX_DATAGRAM_BYTES:
                raise ValueError(f"{len(data)} bytes")
            with _parser_warnings() as warnings:
                messages = [timed.message for timed in OscPacket(data).messages]
            if warnings:  # content python-osc skipped: a broken bundle, an unknown type tag
                raise ValueError(warnings[0])
        except Exception as exc:  # noqa: BLE001 - whatever the parser trips on, the listener lives
            self._count("malformed")
            self._limiter.warning("malformed", "OSC: ignored a datagram that is not OSC "
                                  "(%d bytes: %s)", len(data), str(exc)[:120])
            return
        for message in messages:
            self.handle(message.address, message.params)

    def handle(self, address: str, args: Sequence[Any]) -> Outcome:
        """Apply one message; returns (and counts) what came of it."""
        outcome = self._handle(address, list(args))
        self._count(outcome)
        if self.log_all_messages:
            log.info("OSC: %s %s → %s", address[:120], _shown(args), outcome)
        return outcome

    def _handle(self, address: str, args: list[Any]) -> Outcome:
        target: str | None = None
        address = "/" + address.lstrip("/")  # a TouchDesigner channel named "/scope/x" or "scope/x"
        if address.startswith(SCOPE_PREFIX):
            key = address[len(SCOPE_PREFIX):]
        elif address.startswith(SESSION_PREFIX):
            target, _, key = address[len(SESSION_PREFIX):].partition("/")
        else:
            key = ""
        catalogue = self.catalogue()
        entry = catalogue.find(key) if key and target != "" else None
        if entry is None:
            if lora_ref(key) is not None:
                self._limiter.warning("unknown_address", "OSC: %s: no such LoRA is loaded "
                                      "(loaded: %s)", address[:120], catalogue.lora_names())
            else:
                self._limiter.warning("unknown_address", "OSC: unknown address %r (the list: "
                                      "GET /api/v1/osc/docs)", address[:120])
            return "unknown_address"
        sessions = self.sessions.live()
        if target is not None:
            session = self.sessions.get(target)
            if session is None or session.closing:
                self._limiter.warning("unknown_session", "OSC: %s: no live session %r",
                                      address[:120], target[:64])
                return "unknown_session"
            sessions = [session]
        try:
            value = convert(entry, args)
            if is_setting(key):
                self._set(key, value, target)
                return "applied"
            if entry.lora_path is not None:  # one LoRA's scale: the same for every session
                update = lora_update(entry, value, catalogue)
                updates = [(s, update) for s in sessions]
            else:
                to_update(key, value, self._all)  # a bad value is bad with or without sessions
                updates = [(s, to_update(key, value, self._settings(s.id))) for s in sessions]
        except OscValueError as exc:
            self._limiter.warning("bad_value", "OSC: %s %s: %s", address[:120],
                                  _shown(args), exc)
            return "bad_value"
        if not updates:
            return "no_session"
        refused = 0
        for session, update in updates:
            try:
                self._apply(session, update)
            except ParameterRejectedError as exc:  # a mode it lacks, a LoRA it does not have
                refused += 1
                self._limiter.warning("refused", "OSC: %s refused by session %s: %s",
                                      address[:120], session.id, exc)
        return "refused" if refused == len(updates) else "applied"

    def _apply(self, session: Session, update: ParameterUpdate) -> None:
        """Now, or at the end of the session's window (see COALESCE_S). Raises
        ParameterRejectedError."""
        if session.id in self._windows:
            self._held[session.id] = _merge(self._held.get(session.id, {}), update.given())
            return
        session.apply_from_elsewhere(update)
        self._open_window(session.id)

    def _open_window(self, session_id: str) -> None:
        self._windows[session_id] = asyncio.get_running_loop().call_later(
            COALESCE_S, self._release, session_id)

    def _release(self, session_id: str) -> None:
        del self._windows[session_id]
        held = self._held.pop(session_id, None)
        session = self.sessions.get(session_id)
        if not held or session is None or session.closing:
            return
        try:
            session.apply_from_elsewhere(ParameterUpdate.model_validate(held))
        except (ParameterRejectedError, ValidationError) as exc:
            self._limiter.warning("refused", "OSC: session %s refused %s: %s", session_id,
                                  sorted(held), str(exc)[:120])
            return
        self._open_window(session_id)

    def _settings(self, session_id: str) -> PromptSettings:
        return self._per_session.get(session_id, self._all)

    def _set(self, key: str, value: Any, target: str | None) -> None:
        """A prompt setting, for one session or (bare address) for all, now and later."""
        if target is not None:
            self._per_session[target] = to_settings(key, value, self._settings(target))
        else:
            self._all = to_settings(key, value, self._all)
            self._per_session = {sid: to_settings(key, value, s)
                                 for sid, s in self._per_session.items()}
        live = {s.id for s in self.sessions.live()}
        self._per_session = {k: v for k, v in self._per_session.items() if k in live}


class _ParserWarnings(logging.Filter):
    """python-osc reports some broken content (a bundle element that is neither a message nor
    a bundle, an unknown type tag) with `logging.warning` on the root logger and skips it. This
    filter, on the root logger, takes those records out of the log while this thread parses a
    datagram, so that garbage is counted and logged rate-limited like any other problem."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        caught: list[str] | None = getattr(self._local, "caught", None)
        if caught is None or not record.pathname.startswith(_PYTHONOSC):
            return True
        caught.append(record.getMessage()[:120])
        return False

    @contextlib.contextmanager
    def catching(self) -> Iterator[list[str]]:
        self._local.caught = caught = []
        try:
            yield caught
        finally:
            self._local.caught = None


_PYTHONOSC = os.path.dirname(pythonosc.__file__)
_FILTER = _ParserWarnings()


def _parser_warnings() -> contextlib.AbstractContextManager[list[str]]:
    logging.getLogger().addFilter(_FILTER)  # once: a logger keeps one copy of a filter
    return _FILTER.catching()


def _merge(held: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Two changes as one: the later value of each key, a new prompt list replacing a pending
    transition (and the reverse), a pending one-shot reset kept, and LoRA scales merged by
    LoRA (two faders moved together both count)."""
    merged = {**held, **new}
    if "lora_scales" in held and "lora_scales" in new:
        by_path = {item["path"]: item for item in held["lora_scales"] + new["lora_scales"]}
        merged["lora_scales"] = list(by_path.values())
    if "prompts" in new:
        merged.pop("transition", None)
    if "transition" in new:
        merged.pop("prompts", None)
    if held.get("reset_cache"):
        merged["reset_cache"] = True
    return merged


def _shown(args: Sequence[Any]) -> str:
    return repr(list(args))[:80]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, control: OscControl) -> None:
        self.control = control

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # Nothing may escape into asyncio's transport (it would log and drop the datagram,
        # but a bug here must not go unseen either).
        try:
            self.control.receive(data)
        except Exception:  # the listener outlives any one datagram
            log.exception("OSC: a datagram raised")

    def error_received(self, exc: Exception) -> None:
        with contextlib.suppress(Exception):
            log.debug("OSC: socket error %s", exc)
