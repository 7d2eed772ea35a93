"""WebRTC signaling: ICE servers, offers, trickled candidates, closing a session."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response

from pipeline import LoadingError, NotLoadedError, UnsupportedModeError

from ..ice import IceServersResponse
from ..models import CandidatesRequest, OfferRequest, OfferResponse
from ..sdp import SdpError
from ..sessions import CapacityError, ClientLimitError
from .context import RETRY_AFTER_S, ApiContext
from .whep import open_viewer


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(prefix="/webrtc", tags=["webrtc"])
    sessions = ctx.sessions

    @api.get("/ice-servers", response_model=IceServersResponse, response_model_exclude_none=False)
    async def ice_servers() -> IceServersResponse:
        return IceServersResponse(iceServers=await ctx.ice.servers())

    @api.post("/offer", response_model=OfferResponse,
              responses={400: {}, 404: {}, 429: {}, 503: {}})
    async def offer(body: OfferRequest, request: Request) -> OfferResponse:
        client = request.client.host if request.client else None
        if body.watch is not None:
            return await watch(body, client)
        try:
            session = await sessions.open(body.sdp, body.type, body.initialParameters, client)
        except (SdpError, NotLoadedError, UnsupportedModeError) as exc:
            raise HTTPException(400, str(exc)) from None
        except ClientLimitError as exc:  # this client's own excess, not the server's capacity
            raise HTTPException(429, str(exc), headers={"Retry-After": RETRY_AFTER_S}) from None
        except (LoadingError, CapacityError) as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": RETRY_AFTER_S}) from None
        except ValueError as exc:  # aiortc rejecting an offer it cannot answer
            raise HTTPException(400, f"Unsupported offer: {exc}") from None
        answer = session.pc.localDescription
        return OfferResponse(sdp=answer.sdp, sessionId=session.id)

    async def watch(body: OfferRequest, client: str | None) -> OfferResponse:
        """A recvonly offer watching another session: the same viewer as WHEP's."""
        viewer = await open_viewer(sessions, body.watch, body.sdp, body.type, client)
        return OfferResponse(sdp=viewer.pc.localDescription.sdp, sessionId=viewer.id)

    @api.patch("/offer/{session_id}", status_code=204, responses={400: {}, 404: {}})
    async def add_candidates(session_id: str, body: CandidatesRequest) -> Response:
        session = sessions.peer(session_id)  # a session or a viewer
        if session is None or session.closed.is_set():
            raise HTTPException(404, f"Session {session_id!r} not found or closed.")
        try:
            await session.add_candidates(body.candidates)
        except SdpError as exc:
            raise HTTPException(400, str(exc)) from None
        return Response(status_code=204)

    @api.delete("/offer/{session_id}", status_code=204)
    async def close_session(session_id: str) -> Response:
        peer = sessions.peer(session_id)
        if peer is not None:
            await peer.close()
        return Response(status_code=204)

    return api
