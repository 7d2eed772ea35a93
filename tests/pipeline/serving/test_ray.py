"""The Ray backend on a local cluster on loopback (no GPU): two CPU pipeline workers as actors.

One cluster for the whole module (starting one takes seconds). Service-level tests name their
actors uniquely so that no state carries over between tests."""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray

from pipeline import InputFrame, PipelineService, Stream
from pipeline.base import LoadParams
from pipeline.models.passthrough import PassthroughPipeline
from pipeline.params import ParameterState, ParameterUpdate
from pipeline.serving.engine import Job
from pipeline.serving.ray_backend import NAMESPACE, RayEngine, shared_frames, start_engines
from pipeline.serving.ray_backend import front as ray_front
from pipeline.serving.ray_backend.shared_frames import SharedBlock
from signaling.client import LiveV2VClient, NumberedFrames, read_number
from tests.conftest import serve_in_thread
from tests.pipeline.serving.test_failures import EventSink, check_guarantee, churn
from tests.pipelines import RecordingSink
from tests.worker_pipelines import DevicePipeline  # noqa: F401 - registers test-device, test-flaky


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=4, num_gpus=0, include_dashboard=False, log_to_driver=False,
             namespace=NAMESPACE, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


@pytest.fixture
def ray_service(cluster: None) -> Iterator[PipelineService]:
    service = _front(f"t{uuid.uuid4().hex[:8]}")
    yield service
    service.stop()
    for worker in service.workers:
        ray.kill(worker.engine.actor)  # type: ignore[attr-defined]


def _front(prefix: str) -> PipelineService:
    """A front: a pipeline service on the actors `prefix-0`, `prefix-1` (made or joined)."""
    engines = start_engines(workers=2, gpus_per_worker=0, name_prefix=prefix)
    service = PipelineService(engines=engines, text_fps=50)
    service.adopt_remote()
    service.start()
    return service


def frame(value: int, pts: int, size: int = 32) -> InputFrame:
    image = np.full((size, size, 3), value, np.uint8)
    return InputFrame(decode=lambda: image, pts=pts, time_base=Fraction(1, 90_000),
                      arrived=time.monotonic())


def wait_for(condition: Callable[[], bool], what: str, feed: Callable[[], None],
             timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        feed()
        time.sleep(0.02)


def feeder(streams: list[Stream], value: int = 10) -> Callable[[], None]:
    counter = iter(range(1, 10**9))

    def feed() -> None:
        pts = next(counter) * 3000
        for stream in streams:
            stream.push(frame(value, pts))
    return feed


def marker(sink: RecordingSink, index: int = -1) -> tuple[int, int, int]:
    """(batch size, calls of that copy, actor pid mod 256) from an output frame."""
    return tuple(int(v) for v in sink.frames[index].image[0, 0])  # type: ignore[return-value]


def test_placement_and_batching_on_ray_workers(ray_service: PipelineService) -> None:
    status = ray_service.load_blocking("test-device", {"delay_s": 0.05}, timeout=120)
    assert status.status == "loaded", status
    assert [w.status for w in status.workers] == ["loaded", "loaded"]
    sinks = [RecordingSink() for _ in range(4)]
    streams = [ray_service.open_stream(s, offers_video=True) for s in sinks]
    assert [s.worker.index for s in streams] == [0, 1, 0, 1]
    feed = feeder(streams)
    wait_for(lambda: all(s.frames and marker(s)[0] == 2 for s in sinks),
             "each worker to batch its two sessions", feed)
    pids = {marker(s)[2] for s in sinks}
    assert len(pids) == 2 and os.getpid() % 256 not in pids  # two actor processes did the work
    assert all(int(s.frames[-1].image[1, 1, 0]) == 245 for s in sinks)  # inverted, uint8
    workers = ray_service.status().workers
    assert all(w.sessions == 2 and w.fps_out > 0 and w.overhead_ms is not None for w in workers)
    assert all(w.shared_memory is True for w in workers)  # the actors run on this machine


def test_a_pipeline_swap_while_sessions_stream(ray_service: PipelineService) -> None:
    ray_service.load_blocking("test-device", {"delay_s": 0}, timeout=120)
    sinks = [RecordingSink() for _ in range(2)]
    streams = [ray_service.open_stream(s, offers_video=True) for s in sinks]
    feed = feeder(streams)
    wait_for(lambda: all(s.frames for s in sinks), "frames before the swap", feed)
    assert all(int(s.frames[-1].image[1, 1, 0]) == 245 for s in sinks)
    ray_service.load("passthrough")
    wait_for(lambda: all(int(s.frames[-1].image[1, 1, 0]) == 10 for s in sinks),
             "frames from the new pipeline", feed)
    assert not any(s.stopped for s in sinks)
    assert ray_service.status().pipeline_id == "passthrough"


def test_an_idle_worker_that_restarts_reloads_and_serves_again(
        ray_service: PipelineService) -> None:
    """Killed with no session on it, Ray restarts the process; the front notices (the health
    check sees a new process), loads the pipeline on it again, and places sessions there."""
    ray_service.load_blocking("test-device", {"delay_s": 0}, timeout=120)
    victim = ray_service.workers[1]
    os.kill(victim.engine.describe()["pid"], signal.SIGKILL)  # type: ignore[attr-defined]
    errors: list[str] = []

    def back() -> bool:
        if victim.state == "error" and victim.error:
            errors.append(victim.error)
        return bool(errors) and victim.state == "loaded"

    wait_for(back, "the restarted worker to be loaded again", lambda: None, timeout_s=120)
    assert "died" in errors[0] or "restarted" in errors[0]
    sinks = [RecordingSink(), RecordingSink()]
    streams = [ray_service.open_stream(s, offers_video=True) for s in sinks]
    assert sorted(s.worker.index for s in streams) == [0, 1]
    feed = feeder(streams)
    wait_for(lambda: all(s.frames for s in sinks), "frames from both workers", feed)
    assert not any(s.stopped for s in sinks)


def test_a_call_that_raises_in_an_actor_stops_exactly_its_sessions(
        ray_service: PipelineService) -> None:
    """The failure guarantee through the Ray hop: `test-flaky` raises inside the actors and says
    which sessions (frame values) were in the call; each of those, and only those, is stopped
    once with that message, soon after, and gets no frame after it. Others carry on."""
    status = ray_service.load_blocking("test-flaky", {"fail_rate": 0.2, "kinds": ["raise"],
                                                      "batch": 2}, timeout=120)
    assert status.status == "loaded", status

    def messages(sinks: dict[int, EventSink]) -> set[str]:
        return {m for sink in sinks.values() for m, _ in sink.stops}

    sinks = churn(ray_service, 6, lambda sinks: len(messages(sinks)) >= 10, timeout_s=120)
    failures = [_parse_injected(m) for m in messages(sinks)]
    check_guarantee(sinks, [("raise", at, values) for at, values in failures])


def _parse_injected(message: str) -> tuple[float, list[int]]:
    """`... injected raise at <time> in [v1, v2]` → (time, values)."""
    match = re.search(r"injected raise at ([0-9.]+) in \[([0-9, ]*)\]", message)
    assert match, message
    return float(match.group(1)), [int(v) for v in match.group(2).split(",") if v.strip()]


def test_two_fronts_share_the_workers_and_their_batches(cluster: None) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    first = _front(prefix)
    second = None
    try:
        first.load_blocking("test-device", {"delay_s": 0.05}, timeout=120)
        second = _front(prefix)  # joins the same actors and adopts what they have loaded
        assert second.status().status == "loaded"
        assert second.status().pipeline_id == "test-device"
        sinks = [RecordingSink(), RecordingSink()]
        streams = [first.open_stream(sinks[0], offers_video=True),
                   second.open_stream(sinks[1], offers_video=True)]
        assert [s.worker.index for s in streams] == [0, 0]  # each front's least-loaded worker
        feed = feeder(streams)
        wait_for(lambda: any(marker(s, i)[0] == 2 for s in sinks for i in range(len(s.frames))),
                 "one batch holding both fronts' sessions", feed)
        # A swap made from one front reaches the other front's sessions and status.
        first.load("passthrough")
        wait_for(lambda: second.status().pipeline_id == "passthrough"
                 and all(int(s.frames[-1].image[1, 1, 0]) == 10 for s in sinks),
                 "both fronts on the new pipeline", feed)
        assert not any(s.stopped for s in sinks)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        for worker in first.workers:
            ray.kill(worker.engine.actor)  # type: ignore[attr-defined]


async def test_sessions_through_ray_and_a_killed_worker(cluster: None) -> None:
    """WebRTC sessions end to end through the app with --backend ray: frames come back processed
    by an actor; killing one actor's process stops its session with a reason within seconds,
    the other session and the server carry on, and the stopped client reconnects."""
    with serve_in_thread(pipeline="test-device", load_params={"delay_s": 0},
                         backend="ray", ray_workers=2, ray_gpus_per_worker=0) as server:
        service: PipelineService = server.app.state.service
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            status = (await http.get("/api/v1/pipeline/status")).json()
        assert status["status"] == "loaded"
        assert [w["status"] for w in status["workers"]] == ["loaded", "loaded"]
        clients = [LiveV2VClient(server.url), LiveV2VClient(server.url)]
        tracks = [NumberedFrames(size=128, fps=20), NumberedFrames(size=128, fps=20)]
        try:
            for client, track in zip(clients, tracks, strict=True):
                await client.connect(track, {"prompts": [{"text": "x", "weight": 1.0}]})
            for client, track in zip(clients, tracks, strict=True):
                for _ in range(3):
                    image = (await client.recv(timeout_s=30)).to_ndarray(format="rgb24")
                # The actor inverted the number the client drew.
                assert read_number(255 - image) in track.sent
            assert [w.stream_count for w in service.workers] == [1, 1]

            victim = service.workers[0]
            pid = victim.engine.describe()["pid"]  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)
            stopped = await clients[0].message("stream_stopped", timeout_s=30)
            assert "died" in stopped["error_message"] or "restarted" in stopped["error_message"]
            for _ in range(5):  # the other worker's session carries on
                await clients[1].recv(timeout_s=30)
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                assert (await http.get("/health")).status_code == 200

            await clients[0].close()
            clients[0] = LiveV2VClient(server.url)
            track = NumberedFrames(size=128, fps=20)
            await clients[0].connect(track, {"prompts": [{"text": "x", "weight": 1.0}]})
            image = (await clients[0].recv(timeout_s=30)).to_ndarray(format="rgb24")
            assert read_number(255 - image) in track.sent
        finally:
            for client in clients:
                await client.close()
        for worker in service.workers:
            ray.kill(worker.engine.actor)  # type: ignore[attr-defined]


@pytest.fixture
def passthrough_engine(cluster: None) -> Iterator[RayEngine]:
    """One actor with `passthrough` loaded, driven directly (no service): the engine's hop."""
    (engine,) = start_engines(workers=1, gpus_per_worker=0,
                              name_prefix=f"t{uuid.uuid4().hex[:8]}")
    engine.load(PassthroughPipeline, LoadParams(), lambda *_: None)
    yield engine
    ray.kill(engine.actor)


def job(key: str, frames: np.ndarray, index: int = 0) -> Job:
    params = ParameterState(None).snapshot(ParameterUpdate())
    return Job(key=key, frames=frames, size=frames.shape[1:3], params=params, index=index)


@pytest.mark.parametrize("shared", [True, False], ids=["shared-memory", "in-the-call"])
def test_frames_cross_through_shared_memory_or_inside_the_call(
        cluster: None, shared: bool, monkeypatch: pytest.MonkeyPatch,
        request: pytest.FixtureRequest) -> None:
    """On one machine the frames of a round go through shared memory (the call carries only
    where they lie); with LIVEV2V_RAY_SHARED_MEMORY=0 (as between machines) inside the call.
    Either way every session gets its own frames back, including frames larger than the
    blocks first made (they grow), and chunks of several frames."""
    monkeypatch.setattr(ray_front, "SHARED_MEMORY", shared)
    engine: RayEngine = request.getfixturevalue("passthrough_engine")
    rng = np.random.default_rng(1)
    for size, frames in ((32, 1), (1024, 1), (64, 3), (1024, 1)):
        chunks = [rng.integers(0, 256, (frames, size, size, 3), np.uint8) for _ in range(3)]
        results = engine.run([job(f"s{i}", c) for i, c in enumerate(chunks)])
        assert [r.error for r in results] == [None] * 3
        for chunk, result in zip(chunks, results, strict=True):
            assert result.chunk is not None
            assert np.array_equal(result.chunk[-1], chunk[-1])  # passthrough: the newest
    assert engine.shares_memory is shared


def test_without_room_in_shared_memory_frames_go_inside_the_call(
        passthrough_engine: RayEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared_frames, "HEADROOM", 1 << 60)  # /dev/shm "full"
    (result,) = passthrough_engine.run([job("a", np.full((1, 32, 32, 3), 9, np.uint8))])
    assert result.chunk is not None and int(result.chunk[0, 0, 0, 0]) == 9
    assert not passthrough_engine.shares_memory


def test_an_actor_that_cannot_map_the_frames_gets_them_inside_the_call(
        passthrough_engine: RayEngine) -> None:
    """An actor restarted on another machine cannot map the front's blocks: the round is sent
    again with the frames inside the call, and the front stops using shared memory."""
    engine = passthrough_engine
    frames = np.full((1, 32, 32, 3), 42, np.uint8)
    assert engine.run([job("a", frames)])[0].chunk is not None
    assert engine.shares_memory
    gone = SharedBlock(), SharedBlock()  # mapped here, but their names are gone
    for block in gone:
        block._block.unlink()
    engine._blocks = gone  # as if the actor now ran where these names do not exist
    (result,) = engine.run([job("a", frames, index=1)])
    assert result.chunk is not None and int(result.chunk[0, 0, 0, 0]) == 42
    assert not engine.shares_memory


# --- an in-place LoRA change that fails, across the Ray hop -----------------------------------

@pytest.fixture(scope="module")
def lora_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.pipeline.models.test_streamdiffusion_loras import write_wider
    from tests.tiny_loras import write_kohya_lora, write_peft_lora
    from tests.tiny_models import build_tiny_sd

    root = tmp_path_factory.mktemp("ray-lora-models")
    sd = build_tiny_sd(root / "sd")
    loras = root / "loras"
    peft = write_peft_lora(sd, loras / "peft_style.safetensors")
    write_kohya_lora(sd, loras / "kohya_style.safetensors")
    write_wider(peft, loras / "wider.safetensors")  # a LoRA for a model with wider layers
    return {"sd": sd, "loras": loras}


def test_a_failed_lora_change_in_an_actor_keeps_serving_the_session(
        cluster: None, lora_models: dict[str, Path]) -> None:
    """A load that only changes the LoRAs is made in place inside the actor. A LoRA for another
    model's shapes fails there: the status says so in words a person can act on, the actor's
    pipeline (same process, same LoRA) keeps serving the streaming session with the same
    look, and a good LoRA change afterwards is made in place and changes the look."""
    from pipeline.models.streamdiffusion import StreamDiffusionPipeline  # noqa: F401 - registers
    from pipeline.resources.loras import LoraFolder
    from tests.pipeline.models.test_streamdiffusion import SIZE, picture

    (engine,) = start_engines(workers=1, gpus_per_worker=0,
                              name_prefix=f"t{uuid.uuid4().hex[:8]}")
    service = PipelineService(engines=[engine], text_fps=50,
                              lora_folder=LoraFolder(lora_models["loras"]))
    service.start()
    try:
        def params(lora: str) -> dict[str, Any]:
            # the full VAE: random TAESD weights hide most of a latent change from the pixels
            return {"model_id": str(lora_models["sd"]), "vae_id": "full",
                    "height": SIZE, "width": SIZE, "loras": [{"path": lora}],
                    "lora_merge_mode": "runtime_peft"}

        status = service.load_blocking("streamdiffusion", params("peft_style"), timeout=300)
        assert status.status == "loaded", status.error
        pid = engine.describe()["pid"]
        sink = RecordingSink()
        stream = service.open_stream(sink, offers_video=True)
        stream.update(ParameterUpdate.model_validate({"noise_scale": 0.0}))
        image = picture(3, (SIZE, SIZE))
        pushed = [0]

        def look(count: int = 3) -> np.ndarray:
            """The last of `count` more frames of the same still picture."""
            want = len(sink.frames) + count
            while len(sink.frames) < want:
                stream.push(InputFrame(decode=lambda: image, pts=pushed[0] * 4500,
                                       time_base=Fraction(1, 90_000), arrived=time.monotonic()))
                pushed[0] += 1
                sink.wait(min(want, len(sink.frames) + 1), timeout=60)
                assert not sink.stopped, sink.stopped
            return sink.frames[-1].image.astype(int)

        before = look()
        status = service.load_blocking("streamdiffusion", params("wider"), timeout=300)
        assert status.status == "loaded", status
        assert status.error is not None
        assert "still serving the previous LoRAs" in status.error
        assert "wider.safetensors does not fit this model" in status.error
        assert "Traceback" not in status.error and "ray" not in status.error.lower()
        assert [Path(a["path"]).name for a in status.loaded_lora_adapters] == [
            "peft_style.safetensors"]
        kept = look()  # frames keep arriving from the same process, with the same look
        assert not sink.stopped and engine.describe()["pid"] == pid
        assert np.abs(kept - before).mean() < 1.0
        assert [w.status for w in service.status().workers] == ["loaded"]
        loaded = engine.describe()["loaded"]
        assert loaded is not None and Path(loaded[1]["loras"][0]["path"]).name == (
            "peft_style.safetensors")

        status = service.load_blocking("streamdiffusion", params("kohya_style"), timeout=300)
        assert status.status == "loaded" and status.error is None, status
        assert [Path(a["path"]).name for a in status.loaded_lora_adapters] == [
            "kohya_style.safetensors"]
        changed = look()
        assert not sink.stopped and engine.describe()["pid"] == pid
        print(f"mean pixel difference to the first look: {np.abs(kept - before).mean():.2f} "
              f"after the failed change, {np.abs(changed - before).mean():.2f} after the good one")
        assert np.abs(changed - before).mean() > 3.0  # another LoRA, another look
        stream.close()
    finally:
        service.stop()
        ray.kill(engine.actor)
