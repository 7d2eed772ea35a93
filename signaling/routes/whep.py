"""WHEP playback: a receive-only peer that plays a session's output (OBS browser source,
GStreamer, any WHEP player). Viewers share one encode of the output (`signaling.fanout`); they
join and leave without disturbing the session or each other, and their connections close when
the session ends. `POST /whep` plays the most recent WHIP ingest, so OBS can keep one URL.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response

from ..sdp import SdpError
from ..sessions import CapacityError, SessionRegistry, UnknownSessionError
from ..viewer import Viewer
from ..whip import (
    SDP,
    SDPFRAG,
    answer_other_methods,
    apply_fragment,
    etag_of,
    options_response,
    read_body,
    with_ice_links,
)
from .context import RETRY_AFTER_S, ApiContext
from .whip import SDP_BODY


async def open_viewer(sessions: SessionRegistry, session_id: str | None, sdp: str, sdp_type: str,
                      client: str | None) -> Viewer:
    """A viewer of a session's output (WHEP, or a Scope offer with `watch`), or the HTTP error
    that says why not."""
    try:
        return await sessions.watch(session_id, sdp, sdp_type, client)
    except SdpError as exc:
        raise HTTPException(400, str(exc)) from None
    except UnknownSessionError as exc:
        raise HTTPException(404, str(exc)) from None
    except CapacityError as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": RETRY_AFTER_S}) from None
    except ValueError as exc:  # aiortc refusing an offer it cannot answer
        raise HTTPException(400, f"Unsupported offer: {exc}") from None


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(prefix="/whep", tags=["whep"])
    sessions = ctx.sessions

    async def options() -> Response:
        """The ICE servers as `Link: <…>; rel="ice-server"` headers."""
        return await options_response(ctx.ice)

    async def play(session_id: str | None, request: Request) -> Response:
        sdp = await read_body(request, SDP)
        client = request.client.host if request.client else None
        viewer = await open_viewer(sessions, session_id, sdp, "offer", client)
        answer = viewer.pc.localDescription.sdp
        base = request.scope.get("root_path", "")
        response = Response(answer, status_code=201, media_type=SDP, headers={
            "Location": f"{base}/api/v1/whep/{viewer.watching}/{viewer.id}",
            "ETag": etag_of(answer), "Accept-Patch": SDPFRAG})
        return await with_ice_links(response, ctx.ice)

    responses = {201: SDP_BODY, 400: {}, 404: {}, 415: {}, 503: {}}
    extra = {"requestBody": {"required": True, **SDP_BODY}}

    @api.post("", status_code=201, responses=responses, openapi_extra=extra)
    async def play_latest(request: Request) -> Response:
        """Play the most recent live WHIP ingest's output (a recvonly SDP offer, VP8)."""
        return await play(None, request)

    @api.post("/{session_id}", status_code=201, responses=responses, openapi_extra=extra)
    async def play_session(session_id: str, request: Request) -> Response:
        """Play this session's output (any session: WHIP ingest or Scope-style offer)."""
        return await play(session_id, request)

    api.add_api_route("", options, methods=["OPTIONS"], status_code=204)
    api.add_api_route("/{session_id}", options, methods=["OPTIONS"], status_code=204)

    def find(session_id: str, viewer_id: str) -> Viewer:
        viewer = sessions.peer(viewer_id)
        if not isinstance(viewer, Viewer) or viewer.watching != session_id or viewer.closing:
            raise HTTPException(404, f"WHEP viewer {viewer_id!r} not found or closed.")
        return viewer

    @api.patch("/{session_id}/{viewer_id}", status_code=204,
               responses={400: {}, 404: {}, 412: {}, 415: {}, 422: {}})
    async def trickle(session_id: str, viewer_id: str, request: Request) -> Response:
        """Trickled ICE candidates (`application/trickle-ice-sdpfrag`). ICE restarts: 422."""
        return await apply_fragment(find(session_id, viewer_id), request)

    @api.delete("/{session_id}/{viewer_id}", status_code=200, responses={404: {}})
    async def stop(session_id: str, viewer_id: str) -> Response:
        """Stop watching (the session and its other viewers carry on)."""
        await find(session_id, viewer_id).close()
        return Response(status_code=200)

    answer_other_methods(api, "", "OPTIONS, POST")
    answer_other_methods(api, "/{session_id}", "OPTIONS, POST")
    answer_other_methods(api, "/{session_id}/{viewer_id}", "PATCH, DELETE")
    return api
