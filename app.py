"""LiveV2V server: wiring only. Builds the FastAPI app, includes the API router, mounts the
Gradio UI, and runs uvicorn. `python app.py --help` lists the options."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr
import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from pipeline import LocalPathPolicy, LoraFolder, PipelineService
from signaling.config import ServerSettings
from signaling.consent import end_consent_checks_on_close
from signaling.encoder import encode_at_low_priority, use_live_encoder
from signaling.errors import install_error_handlers
from signaling.ice import IceServerProvider, is_loopback_host
from signaling.jitter import release_frames_on_marker
from signaling.limits import BodyLimitMiddleware
from signaling.loopback import offer_loopback_candidates
from signaling.looplag import LoopLagProbe
from signaling.metrics import OfferOutcomes
from signaling.prefix import ForwardedPrefixMiddleware
from signaling.recording import RecordingLimits
from signaling.routes import ApiContext, build_router
from signaling.sessions import SessionRegistry
from signaling.whip import EXPOSED_HEADERS
from ui.blocks import MOUNT_OPTIONS, build_blocks
from ui.notebook import StudioFrame, Via, embed
from ui.routes import router as ui_router

VERSION = "0.1.0"
log = logging.getLogger("livev2v")


def default_pipeline() -> str:
    """Diffusion when a GPU is there; otherwise the CPU effect, so prompts visibly do something."""
    try:
        import torch

        if torch.cuda.is_available():
            return "streamdiffusion"
    except ImportError:
        pass
    return "cpu-effect"


def create_app(settings: ServerSettings, load_params: dict | None = None) -> FastAPI:
    local = is_loopback_host(settings.host)
    policy = LocalPathPolicy(allow_any=local, models_dir=settings.models_dir)
    service = build_service(settings, policy)
    service.lora_folder = LoraFolder(settings.lora_folder(), policy)
    ice = IceServerProvider(host=settings.host)
    loop_lag = LoopLagProbe()
    sessions = SessionRegistry(service, ice, max_sessions=settings.max_sessions,
                               connect_timeout_s=settings.connect_timeout_s,
                               time_limit_s=settings.session_time_limit_s,
                               recording=settings.recording, front_id=settings.front_id,
                               max_pending=settings.max_pending,
                               # on loopback every client has the same address
                               max_pending_per_client=None if local else
                               settings.max_pending_per_client,
                               ice_idle_s=settings.ice_idle_timeout_s, loop_lag=loop_lag)
    release_frames_on_marker()  # one frame interval less latency per received frame
    end_consent_checks_on_close()  # no consent task left behind by a close during ICE
    use_live_encoder()  # VP8 settings for clean live video: half the encoder's CPU
    if local:
        offer_loopback_candidates()

    ctx = ApiContext(sessions, service, ice, settings, VERSION)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx.logs.install()  # the server's own log lines, for /api/v1/logs
        service.adopt_remote()  # Ray workers another front loaded already
        encode_at_low_priority(asyncio.get_running_loop())
        loop_lag.start()
        service.start()
        if settings.pipeline:  # a no-op when adopted Ray workers have it loaded already
            service.load(settings.pipeline, load_params)
        log.info("ICE servers: %s", ice.source)
        await ctx.osc.start()
        yield
        ctx.stopping.set()
        await ctx.osc.stop()
        await sessions.close_all("Server shutting down")
        service.stop()
        await ice.aclose()
        await loop_lag.stop()
        ctx.logs.uninstall()

    app = FastAPI(title="LiveV2V", version=VERSION, lifespan=lifespan,
                  description="Real-time video-to-video diffusion over WebRTC "
                              "(Daydream Scope-compatible API).")
    app.state.service, app.state.sessions, app.state.ice = service, sessions, ice
    app.state.stopping = ctx.stopping
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       larger={"/api/v1/assets": settings.asset_max_bytes})
    app.add_middleware(OfferOutcomes, metrics=ctx.metrics)  # outside the limit: counts its 413s
    app.add_middleware(CORSMiddleware, allow_origin_regex=settings.cors_origin_regex(),
                       allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
                       allow_headers=["*"], expose_headers=EXPOSED_HEADERS, max_age=600)
    # outermost, so that the others see the root path (FastAPI's own root_path is deprecated)
    app.add_middleware(ForwardedPrefixMiddleware, root_path=settings.root_path)
    # API routes first: Gradio's mount at "/" is a catch-all.
    app.include_router(build_router(ctx))
    app.include_router(ui_router)  # /ui/livev2v.js for pages other than ours
    return gr.mount_gradio_app(app, build_blocks(), path="/", **MOUNT_OPTIONS)


class Server(uvicorn.Server):
    """uvicorn, telling long-lived responses (Scope's OSC event stream) to end as soon as
    shutdown starts; otherwise they would hold it for the whole graceful-shutdown timeout."""

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        stopping = getattr(getattr(self.config.app, "state", None), "stopping", None)
        if stopping is not None:
            stopping.set()
        await super().shutdown(sockets)


def build_service(settings: ServerSettings, path_policy: LocalPathPolicy) -> PipelineService:
    """Local workers (one per --devices entry), or Ray actors with --backend ray."""
    if settings.backend == "ray":
        if settings.devices:
            raise ValueError("--devices is for --backend local; with Ray, workers are placed "
                             "on GPUs by Ray (--ray-workers, --ray-gpus-per-worker)")
        from pipeline.serving.ray_backend import start_engines  # Ray is optional: only here

        engines = start_engines(address=settings.ray_address, workers=settings.ray_workers,
                                gpus_per_worker=settings.ray_gpus_per_worker)
        return PipelineService(engines=engines, path_policy=path_policy)
    return PipelineService(devices=settings.devices, path_policy=path_policy)


@dataclass
class BackgroundServer:
    """A server running on a daemon thread (notebooks, tests). `stop()` shuts it down cleanly."""

    url: str
    app: FastAPI
    server: uvicorn.Server
    thread: threading.Thread
    settings: ServerSettings
    load_params: dict | None = None
    reused: bool = False
    """True when `serve_in_background` returned a server that an earlier call had started."""

    @property
    def running(self) -> bool:
        return self.thread.is_alive() and not self.server.should_exit

    def stop(self, timeout_s: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)
        key = (self.settings.host, self.settings.port)
        with _background_lock:
            if key in _background and _background[key].thread is self.thread:
                del _background[key]

    def iframe(self, width: str | int = "100%", height: int = 860, *, url: str | None = None,
               via: Via = "auto") -> StudioFrame:
        """The studio, for a notebook cell, at the URL the *browser* can load: Colab's proxy,
        Jupyter's jupyter-server-proxy (`{base_url}proxy/PORT/`), or localhost with the port
        forward to run for a remote kernel (the rule: ui/notebook.py, docs/notebooks.md).
        `url=` sets the URL; `via=` forces "colab", "jupyter", "remote" or "local"."""
        turn = self.app.state.ice.source not in ("none", "public-stun")
        return StudioFrame(embed(self.settings.port, self.url, url=url, via=via), width, height,
                           turn=turn)

    def __repr__(self) -> str:
        how = "already running, reused" if self.reused else "started"
        return f"LiveV2V at {self.url} ({how}; pipeline: {self.settings.pipeline or 'none'})"

    def _repr_html_(self) -> str:
        how = "already running, reused" if self.reused else "started"
        return (f'LiveV2V at <a href="{self.url}" target="_blank">{self.url}</a> ({how}; '
                f"pipeline: {self.settings.pipeline or 'none'})")


_background: dict[tuple[str, int], BackgroundServer] = {}
_background_lock = threading.Lock()


def env_port(default: int = 8000) -> int:
    """The port a hosted platform or a notebook's environment asks for."""
    env = os.environ
    return int(env.get("GRADIO_SERVER_PORT") or env.get("PORT") or default)


def serve_in_background(load_params: dict | None = None, **settings: Any) -> BackgroundServer:
    """Start the app on a daemon thread and return once it accepts connections.

    In a notebook: `server = serve_in_background(pipeline="cpu-effect"); server.iframe()`
    (the frame goes through Colab's or Jupyter's proxy when the browser is elsewhere: see
    `BackgroundServer.iframe`). `root_path="/prefix"` serves it under a prefix behind a proxy
    of your own. (Gradio's `launch(inline=True)` cannot serve our FastAPI routes.) The port
    defaults to GRADIO_SERVER_PORT / PORT / 8000. Running the cell again returns the server
    this process already runs on that host and port when the settings are the same (sessions
    and the loaded pipeline carry on), and restarts it when they differ."""
    settings.setdefault("port", env_port())
    config = ServerSettings(**settings)
    key = (config.host, config.port)
    with _background_lock:
        running = _background.get(key)
        if running is not None and running.running:
            if running.settings == config and running.load_params == load_params:
                return replace(running, reused=True)
            log.info("settings changed: restarting the server on %s:%d", *key)
            running.server.should_exit = True
            running.thread.join(15)
        server = _start_background(config, load_params)
        _background[key] = server
        return server


def _start_background(config: ServerSettings, load_params: dict | None) -> BackgroundServer:
    app = create_app(config, load_params)
    server = Server(uvicorn.Config(app, host=config.host, port=config.port,
                                   log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, name="livev2v-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"LiveV2V did not start on {config.host}:{config.port} (is the "
                               "port in use by another process? pass another port=...)")
        time.sleep(0.05)
    shown = "localhost" if is_loopback_host(config.host) else config.host
    return BackgroundServer(f"http://{shown}:{config.port}", app, server, thread, config,
                            load_params)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=env.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="bind address (env GRADIO_SERVER_NAME; default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=env_port(),
                        help="port (env GRADIO_SERVER_PORT or PORT; default 8000)")
    parser.add_argument("--pipeline", default=None,
                        help="pipeline loaded at start; 'none' loads nothing (default: "
                             "streamdiffusion with CUDA, else cpu-effect)")
    parser.add_argument("--load-params", type=json.loads, default=None,
                        help='JSON load_params for --pipeline, e.g. \'{"height": 384}\'')
    parser.add_argument("--cors-origins", default="",
                        help="extra allowed CORS origins, comma-separated (localhost is allowed)")
    parser.add_argument("--max-sessions", type=int, default=None,
                        help="concurrent sessions; past it offers get 503 (default: what the "
                             "pipeline can serve: passthrough 32, cpu-effect 16, "
                             "streamdiffusion 4)")
    parser.add_argument("--max-pending", type=int, default=None,
                        help="sessions answered but not connected yet; past it offers get 503 "
                             "(default: 2 x --max-sessions, at least 16). They do not count "
                             "against --max-sessions")
    parser.add_argument("--max-pending-per-client", type=int, default=4,
                        help="pending sessions per client address on non-loopback binds; past "
                             "it offers get 429 (default 4; 0 turns it off). Behind a proxy set "
                             "FORWARDED_ALLOW_IPS to the proxy's address so clients are told apart")
    parser.add_argument("--session-time-limit", type=float, default=None, metavar="SECONDS",
                        help="end each session after this long (useful on shared Spaces)")
    parser.add_argument("--root-path", default="",
                        help="URL prefix the app is served under behind a proxy, e.g. /v2v "
                             "(default: the proxy's X-Forwarded-Prefix header, if any)")
    parser.add_argument("--api-key", default=env.get("LIVEV2V_API_KEY") or None,
                        help="require this key on every /api/v1 route (env LIVEV2V_API_KEY); "
                             "clients send 'Authorization: Bearer <key>'")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="local model folders under this one may be loaded; without it, "
                             "local folders are allowed only when bound to a loopback host")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder for small per-user state (Scope's onboarding status); "
                             "default: $LIVEV2V_DATA_DIR or ~/.local/share/livev2v")
    parser.add_argument("--assets-dir", type=Path, default=None,
                        help="folder of uploaded reference images (default: DATA_DIR/assets)")
    parser.add_argument("--lora-dir", type=Path, default=None,
                        help="folder of LoRA files: load_params.loras names files in it, "
                             "/api/v1/loras lists and installs them (default: DATA_DIR/loras)")
    parser.add_argument("--lora-max-mb", type=float, default=2048.0,
                        help="largest LoRA file an install downloads (default 2048 MB)")
    parser.add_argument("--asset-max-mb", type=float, default=20.0,
                        help="largest image upload (default 20 MB)")
    parser.add_argument("--recording-max-seconds", type=float, default=600.0,
                        help="server-side recordings stop at this duration (default 600)")
    parser.add_argument("--recording-max-mb", type=float, default=512.0,
                        help="server-side recordings stop at this size (default 512 MB)")
    parser.add_argument("--front-id", default=env.get("LIVEV2V_FRONT_ID") or None,
                        help="this front's name (letters, digits, _): session ids start with "
                             "'NAME-' so that a load balancer can route a session's PATCH and "
                             "DELETE to it (env LIVEV2V_FRONT_ID)")
    parser.add_argument("--devices", type=_device_list, default=None,
                        help="one pipeline worker per device, each with its own copy of the "
                             "pipeline, e.g. cuda:0,cuda:1 (default: one worker, the pipeline's "
                             "own choice of device)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="ray: pipeline workers are Ray actors placed on the cluster's GPUs "
                             "(pip install -r requirements-ray.txt)")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to join, e.g. HEAD:6379 ('auto': the one `ray start` "
                             "made here; default: RAY_ADDRESS, else a `ray start` cluster here, "
                             "else a local cluster started for this server)")
    parser.add_argument("--ray-workers", type=int, default=None,
                        help="pipeline actors (default: one per GPU of the cluster, or one)")
    parser.add_argument("--ray-gpus-per-worker", type=float, default=None,
                        help="GPUs each actor asks Ray for (default 1 if the cluster has GPUs, "
                             "else 0; 0.5 puts two workers on a GPU)")
    parser.add_argument("--osc-port", type=_osc_port, default=None, metavar="PORT|off",
                        help="UDP port for OSC control (TouchDesigner, python-osc; "
                             "docs/osc.md). Default: the --port number on loopback binds, off "
                             "on others (OSC has no authentication); 0 or 'off' turns it off")
    parser.add_argument("--osc-host", default=None,
                        help="address OSC listens on (default: --host)")
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def _device_list(text: str) -> list[str]:
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not devices:
        raise argparse.ArgumentTypeError("give at least one device, e.g. cuda:0,cuda:1")
    return devices


def _osc_port(text: str) -> int:
    if text.strip().lower() in ("off", "0"):
        return 0
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a UDP port number, or 'off'") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError("a UDP port number (1-65535), or 'off'")
    return port


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)  # one line per candidate pair otherwise
    pipeline = args.pipeline or default_pipeline()
    settings = ServerSettings(
        host=args.host, port=args.port,
        pipeline=None if pipeline == "none" else pipeline,
        cors_origins=[o.strip() for o in args.cors_origins.split(",") if o.strip()],
        max_sessions=args.max_sessions, session_time_limit_s=args.session_time_limit,
        max_pending=args.max_pending,
        max_pending_per_client=args.max_pending_per_client or None,
        root_path=args.root_path, api_key=args.api_key, models_dir=args.models_dir,
        data_dir=args.data_dir,
        assets_dir=args.assets_dir, asset_max_bytes=int(args.asset_max_mb * 1024 * 1024),
        lora_dir=args.lora_dir, lora_max_bytes=int(args.lora_max_mb * 1024 * 1024),
        recording=RecordingLimits(max_seconds=args.recording_max_seconds,
                                  max_bytes=int(args.recording_max_mb * 1024 * 1024)),
        front_id=args.front_id,
        devices=args.devices, backend=args.backend, ray_address=args.ray_address,
        ray_workers=args.ray_workers, ray_gpus_per_worker=args.ray_gpus_per_worker,
        osc_port=args.osc_port, osc_host=args.osc_host,
    )
    app = create_app(settings, args.load_params)
    shown = "localhost" if is_loopback_host(args.host) else args.host
    log.info("LiveV2V %s on http://%s:%d (pipeline: %s)", VERSION, shown, args.port,
             settings.pipeline or "none")
    server = Server(uvicorn.Config(app, host=args.host, port=args.port,
                                   log_level=args.log_level.lower(), timeout_graceful_shutdown=5))
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, after a clean shutdown (as uvicorn.run)
        server.run()


if __name__ == "__main__":
    main()
