"""WHIP ingest (RFC 9725): OBS, GStreamer and other WHIP clients send video in.

A WHIP ingest is an ordinary `Session` (same batching, limits, stats, metrics, reaping,
recording): only the way in differs: an `application/sdp` body instead of JSON, `201 Created`
with a `Location`, trickle ICE as `application/trickle-ice-sdpfrag` PATCHes. Audio m-lines are
answered and their packets dropped (the pipeline is video only).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response

from pipeline import LoadingError, NotLoadedError, UnsupportedModeError

from ..messages import MessageError
from ..sdp import SdpError
from ..session import Session
from ..sessions import CapacityError, ClientLimitError
from ..whip import (
    SDP,
    SDPFRAG,
    answer_other_methods,
    apply_fragment,
    etag_of,
    options_response,
    query_parameters,
    read_body,
    with_ice_links,
)
from .context import RETRY_AFTER_S, ApiContext

SDP_BODY = {"content": {SDP: {"schema": {"type": "string"}}}}


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(prefix="/whip", tags=["whip"])
    sessions = ctx.sessions

    @api.options("", status_code=204)
    async def options() -> Response:
        """The ICE servers as `Link: <…>; rel="ice-server"` headers (RFC 9725 §4.6)."""
        return await options_response(ctx.ice)

    @api.post("", status_code=201, responses={201: SDP_BODY, 400: {}, 415: {}, 429: {}, 503: {}},
              openapi_extra={"requestBody": {"required": True, **SDP_BODY}})
    async def ingest(request: Request) -> Response:
        """An SDP offer (video H.264 or VP8; audio accepted and ignored) → `201` with the
        answer. Query parameters are initial `parameters` (`?prompt=ink&noise_scale=0.4`)."""
        sdp = await read_body(request, SDP)
        try:
            initial = query_parameters(request.query_params.multi_items())
        except MessageError as exc:
            raise HTTPException(400, f"Bad query parameters: {exc}") from None
        client = request.client.host if request.client else None
        try:
            session = await sessions.open(sdp, "offer", initial, client, ingest="whip")
        except (SdpError, NotLoadedError, UnsupportedModeError) as exc:
            raise HTTPException(400, str(exc)) from None
        except ClientLimitError as exc:
            raise HTTPException(429, str(exc), headers={"Retry-After": RETRY_AFTER_S}) from None
        except (LoadingError, CapacityError) as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": RETRY_AFTER_S}) from None
        except ValueError as exc:  # aiortc refusing an offer it cannot answer
            raise HTTPException(400, f"Unsupported offer: {exc}") from None
        answer = session.pc.localDescription.sdp
        base = request.scope.get("root_path", "")
        response = Response(answer, status_code=201, media_type=SDP, headers={
            "Location": f"{base}/api/v1/whip/{session.id}", "ETag": etag_of(answer),
            "Accept-Patch": SDPFRAG})
        return await with_ice_links(response, ctx.ice)

    def find(session_id: str) -> Session:
        session = sessions.get(session_id)
        if session is None or session.closing or session.ingest != "whip":
            raise HTTPException(404, f"WHIP session {session_id!r} not found or closed.")
        return session

    @api.patch("/{session_id}", status_code=204, responses={400: {}, 404: {}, 412: {}, 415: {},
                                                            422: {}})
    async def trickle(session_id: str, request: Request) -> Response:
        """Trickled ICE candidates (`application/trickle-ice-sdpfrag`). ICE restarts: 422."""
        return await apply_fragment(find(session_id), request)

    @api.delete("/{session_id}", status_code=200, responses={404: {}})
    async def end(session_id: str) -> Response:
        """End the ingest (its WHEP viewers' connections close with it)."""
        await find(session_id).close(None)
        return Response(status_code=200)

    answer_other_methods(api, "", "OPTIONS, POST")
    answer_other_methods(api, "/{session_id}", "PATCH, DELETE")
    return api
