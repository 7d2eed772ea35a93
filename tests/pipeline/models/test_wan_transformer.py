"""The block-causal Wan transformer (pipeline/models/wan) against diffusers' full-sequence forward.

Tiny random-weight `WanTransformer3DModel` / `WanVACETransformer3DModel` (2 layers, 2 heads of 12
channels, 2×2-patch latents of 4×4) go through save_pretrained → from_pretrained. The reference is
diffusers' unmodified `forward` over the whole sequence with the block-causal mask
(`attention_mask`: windowed, with sinks, with kv bias) injected into every self-attention; the
streaming side generates the same frames chunk by chunk through the KV cache. Equality proves the
cache discipline, the RoPE frame offsets and the per-frame timesteps at once.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel, WanVACETransformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from pipeline.models.wan import CausalWanTransformer, FrameWindow, attention_mask
from pipeline.models.wan.rope import chunk_rotary

CHANNELS, TEXT_DIM, HEIGHT, WIDTH = 4, 16, 4, 4
TOKENS_PER_FRAME = (HEIGHT // 2) * (WIDTH // 2)
CONFIG = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "in_channels": CHANNELS,
    "out_channels": CHANNELS,
    "text_dim": TEXT_DIM,
    "freq_dim": 16,
    "ffn_dim": 32,
    "num_layers": 2,
    "rope_max_seq_len": 64,
}
VACE_CONFIG = {**CONFIG, "vace_layers": [0, 1], "vace_in_channels": 12}
ATOL = 2e-5


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wan") / "transformer"
    torch.manual_seed(0)
    WanTransformer3DModel(**CONFIG).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vace_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wan_vace") / "transformer"
    torch.manual_seed(1)
    WanVACETransformer3DModel(**VACE_CONFIG).save_pretrained(path)
    return path


class _MaskedSelfAttention:
    """diffusers' own Wan attention with a fixed mask on self-attention (the reference)."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask
        self.plain = WanAttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 rotary_emb=None):
        mask = self.mask if encoder_hidden_states is None else None
        return self.plain(attn, hidden_states, encoder_hidden_states, mask, rotary_emb)


def _reference(model, mask: torch.Tensor, **inputs) -> torch.Tensor:
    for module in model.modules():
        if hasattr(module, "set_processor") and not module.is_cross_attention:
            module.set_processor(_MaskedSelfAttention(mask))
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def _latents(frames: int, seed: int, batch: int = 1, channels: int = CHANNELS) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, frames, HEIGHT, WIDTH, generator=generator)


def _text(seed: int, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 8, TEXT_DIM, generator=torch.Generator().manual_seed(seed))


def _offsets(chunks: list[int]) -> list[tuple[int, int]]:
    starts = [sum(chunks[:i]) for i in range(len(chunks))]
    return [(s, s + n) for s, n in zip(starts, chunks, strict=True)]


def _per_token(timesteps: torch.Tensor) -> torch.Tensor:
    return timesteps.repeat_interleave(TOKENS_PER_FRAME, dim=1)


def test_window_rule() -> None:
    """Frame 5 of a one-frame-chunk stream with local_attn_size 4, 1 sink sees 0, 3, 4, 5."""
    mask = attention_mask([1] * 6, 1, FrameWindow(4, 1))
    assert (mask[5] == 0).tolist() == [True, False, False, True, True, True]
    # early on, sinks and window overlap: everything so far
    assert (mask[2] == 0).tolist() == [True, True, True, False, False, False]
    chunked = attention_mask([2, 2], 1, FrameWindow(), kv_bias=0.5)
    assert torch.allclose(chunked[3], torch.tensor([0.5, 0.5, 1, 1]).log())
    assert chunked[1, 2] == -torch.inf  # block-causal: no attention to a later chunk
    with pytest.raises(ValueError, match="local_attn_size"):
        FrameWindow(2, 2)


@pytest.mark.parametrize(
    ("local_attn_size", "sink_size", "chunks", "kv_bias"),
    [
        (-1, 0, [2, 2, 2], 1.0),  # unbounded, block-causal
        (4, 0, [2, 1, 2, 2, 1], 1.0),  # sliding window, uneven chunks
        (5, 2, [2, 2, 2, 2, 2], 1.0),  # window with attention sinks
        (5, 2, [3, 2, 3], 0.3),  # … and kv_cache_attention_bias
    ],
)
def test_chunks_through_the_cache_equal_one_masked_pass(
    wan_dir: Path, local_attn_size: int, sink_size: int, chunks: list[int], kv_bias: float
) -> None:
    window = FrameWindow(local_attn_size, sink_size)
    frames = sum(chunks)
    latents, text = _latents(frames, 1), _text(2)
    # a different timestep per frame (diffusers takes one per token): exercises the per-frame path
    timesteps = torch.randint(0, 1000, (1, frames), generator=torch.Generator().manual_seed(3))
    mask = attention_mask(chunks, TOKENS_PER_FRAME, window, kv_bias=kv_bias)
    expected = _reference(
        WanTransformer3DModel.from_pretrained(wan_dir), mask, hidden_states=latents,
        timestep=_per_token(timesteps), encoder_hidden_states=text,
    )

    causal = CausalWanTransformer(
        WanTransformer3DModel.from_pretrained(wan_dir),
        local_attn_size=local_attn_size, sink_size=sink_size,
    )
    cache = causal.new_cache()
    outputs = []
    for start, end in _offsets(chunks):
        assert cache.frames == start
        chunk_t = timesteps[:, start:end]
        noisy = _latents(end - start, 100 + start)
        # denoising passes read the cache and leave it as it was …
        first = causal(noisy, chunk_t, text, cache, kv_bias=kv_bias)
        again = causal(noisy, chunk_t, text, cache, kv_bias=kv_bias)
        assert torch.equal(first, again) and cache.frames == start
        # … the committing pass appends the chunk's keys/values
        outputs.append(causal(latents[:, :, start:end], chunk_t, text, cache, commit=True,
                              kv_bias=kv_bias))
        for layer in cache.self_attn.values():  # eviction: never more than the window can reach
            assert len(layer.frames) <= (window.local_attn_size - 1 if window.bounded else end)
    torch.testing.assert_close(torch.cat(outputs, dim=2), expected, atol=ATOL, rtol=1e-4)


def test_denoising_pass_equals_the_masked_pass_over_its_prefix(wan_dir: Path) -> None:
    """A non-committing pass on noisy latents sees exactly the committed clean past."""
    text, clean, noisy = _text(2), _latents(4, 1), _latents(2, 7)
    causal = CausalWanTransformer(WanTransformer3DModel.from_pretrained(wan_dir))
    cache = causal.new_cache()
    for start in (0, 2):
        causal(clean[:, :, start:start + 2], torch.zeros(1), text, cache, commit=True)
    got = causal(noisy, torch.tensor([750.0]), text, cache)

    sequence = torch.cat([clean, noisy], dim=2)
    timesteps = torch.tensor([[0.0] * 4 + [750.0] * 2])
    expected = _reference(
        WanTransformer3DModel.from_pretrained(wan_dir),
        attention_mask([2, 2, 2], TOKENS_PER_FRAME, FrameWindow()),
        hidden_states=sequence, timestep=_per_token(timesteps), encoder_hidden_states=text,
    )
    torch.testing.assert_close(got, expected[:, :, 4:], atol=ATOL, rtol=1e-4)


def test_rope_phases_are_those_of_the_full_sequence(wan_dir: Path) -> None:
    """A chunk at frame 5 gets the rotary phases diffusers gives frames 5.. in a full pass; alone
    (a window holding only the chunk) it is translation-invariant, since RoPE is relative: the
    offset matters only against cached keys, which the equivalence tests above cover."""
    model = WanTransformer3DModel.from_pretrained(wan_dir)
    full_cos, full_sin = model.rope(_latents(8, 0))
    cos, sin = chunk_rotary(model.rope, 5, 3, HEIGHT // 2, WIDTH // 2, torch.device("cpu"))
    tokens = slice(5 * TOKENS_PER_FRAME, 8 * TOKENS_PER_FRAME)
    torch.testing.assert_close(cos, full_cos[:, tokens, :, 0::2].float())
    torch.testing.assert_close(sin, full_sin[:, tokens, :, 1::2].float())

    causal = CausalWanTransformer(model, local_attn_size=2)
    text, chunk, filler = _text(2), _latents(2, 5), _latents(6, 6)
    cache = causal.new_cache()
    at_zero = causal(chunk, torch.tensor([500.0]), text, cache)
    for start in (0, 2, 4):
        causal(filler[:, :, start:start + 2], torch.tensor([0.0]), text, cache, commit=True)
    torch.testing.assert_close(causal(chunk, torch.tensor([500.0]), text, cache), at_zero,
                               atol=ATOL, rtol=1e-4)


def test_kv_bias_one_is_off_and_lower_changes_only_attention_to_the_past(wan_dir: Path) -> None:
    causal = CausalWanTransformer(WanTransformer3DModel.from_pretrained(wan_dir))
    text, latents = _text(2), _latents(4, 1)
    results = {}
    for bias in (1.0, 0.2):
        cache = causal.new_cache()
        first = causal(latents[:, :, :2], torch.zeros(1), text, cache, commit=True, kv_bias=bias)
        second = causal(latents[:, :, 2:], torch.zeros(1), text, cache, kv_bias=bias)
        results[bias] = first, second
    cache = causal.new_cache()
    causal(latents[:, :, :2], torch.zeros(1), text, cache, commit=True)
    plain = causal(latents[:, :, 2:], torch.zeros(1), text, cache)
    assert torch.equal(plain, results[1.0][1])  # kv_bias=1 is exactly no bias
    assert torch.equal(results[1.0][0], results[0.2][0])  # no past: nothing to bias
    assert not torch.allclose(results[1.0][1], results[0.2][1], atol=1e-4)
    with pytest.raises(ValueError, match="kv_bias"):
        causal(latents[:, :, 2:], torch.zeros(1), text, cache, kv_bias=0.0)


def test_cross_attention_cache_is_reused_until_the_text_changes(wan_dir: Path) -> None:
    causal = CausalWanTransformer(WanTransformer3DModel.from_pretrained(wan_dir))
    text, latents, t = _text(2), _latents(2, 1), torch.tensor([300.0])
    cache = causal.new_cache()
    first = causal(latents, t, text, cache)
    cached = {name: kv[0] for name, kv in cache.cross_attn.items()}
    assert set(cached) == {"blocks.0", "blocks.1"}
    # an equal embedding (a new tensor): reused, same result
    assert torch.equal(causal(latents, t, text.clone(), cache), first)
    assert all(cache.cross_attn[name][0] is key for name, key in cached.items())
    # a new prompt: recomputed, and the output is that of a fresh cache
    other = _text(9)
    changed = causal(latents, t, other, cache)
    assert cache.cross_attn["blocks.0"][0] is not cached["blocks.0"]
    assert torch.equal(changed, causal(latents, t, other, causal.new_cache()))
    assert not torch.allclose(changed, first, atol=1e-4)
    # an embedding modified in place is noticed too
    other.mul_(2)
    assert torch.equal(causal(latents, t, other, cache), causal(latents, t, other,
                                                                causal.new_cache()))


def test_batched_streams_match_single_streams(wan_dir: Path) -> None:
    causal = CausalWanTransformer(WanTransformer3DModel.from_pretrained(wan_dir),
                                  local_attn_size=3, sink_size=1)
    latents, texts = _latents(4, 1, batch=2), _text(2, batch=2)
    t = torch.tensor([[0.0, 0.0], [900.0, 100.0]])
    batched = causal.new_cache(batch_size=2)
    singles = [causal.new_cache() for _ in range(2)]
    for start in (0, 2):
        chunk = latents[:, :, start:start + 2]
        together = causal(chunk, t, texts, batched, commit=True)
        for i, cache in enumerate(singles):
            alone = causal(chunk[i:i + 1], t[i:i + 1], texts[i:i + 1], cache, commit=True)
            torch.testing.assert_close(together[i:i + 1], alone, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_on_cpu(wan_dir: Path, dtype: torch.dtype) -> None:
    reference = CausalWanTransformer(WanTransformer3DModel.from_pretrained(wan_dir),
                                     local_attn_size=3, sink_size=1)
    half = CausalWanTransformer(
        WanTransformer3DModel.from_pretrained(wan_dir, torch_dtype=dtype),
        local_attn_size=3, sink_size=1,
    )
    assert half.dtype == dtype
    caches = reference.new_cache(), half.new_cache()
    assert caches[1].dtype == dtype
    text, latents = _text(2), _latents(6, 1)
    for start in (0, 2, 4):
        chunk = latents[:, :, start:start + 2]
        want = reference(chunk, torch.tensor([0.0]), text, caches[0], commit=True, kv_bias=0.5)
        got = half(chunk.to(dtype), torch.tensor([0.0]), text.to(dtype), caches[1], commit=True,
                   kv_bias=0.5)
        assert got.dtype == dtype and torch.isfinite(got).all()
        assert all(layer.key.dtype == dtype for layer in caches[1].self_attn.values())
        torch.testing.assert_close(got.float(), want, atol=0.1, rtol=0.1)


def test_model_forward_is_unchanged_by_wrapping(wan_dir: Path) -> None:
    plain = WanTransformer3DModel.from_pretrained(wan_dir)
    wrapped = CausalWanTransformer(WanTransformer3DModel.from_pretrained(wan_dir)).model
    inputs = {"hidden_states": _latents(3, 1), "timestep": torch.tensor([400]),
              "encoder_hidden_states": _text(2), "return_dict": False}
    with torch.no_grad():
        assert torch.equal(plain(**inputs)[0], wrapped(**inputs)[0])


def test_errors_a_caller_can_act_on(wan_dir: Path) -> None:
    causal = CausalWanTransformer(WanTransformer3DModel.from_pretrained(wan_dir),
                                  local_attn_size=3, sink_size=1)
    cache, text, t = causal.new_cache(), _text(2), torch.zeros(1)
    with pytest.raises(ValueError, match="does not fit the attention window"):
        causal(_latents(3, 1), t, text, cache)
    causal(_latents(2, 1), t, text, cache, commit=True)
    small = torch.zeros(1, CHANNELS, 1, 2, 2)
    with pytest.raises(ValueError, match="latent size changed"):
        causal(small, t, text, cache)
    cache.reset()
    assert cache.frames == 0 and not cache.self_attn
    causal(small, t, text, cache)  # a new stream may change size
    with pytest.raises(ValueError, match="batch"):
        causal(_latents(2, 1, batch=2), torch.zeros(2), text, cache)
    with pytest.raises(ValueError, match="VACE"):
        causal(_latents(2, 1), t, text, cache, vace_context=_latents(2, 1))
    with pytest.raises(ValueError, match="I2V"):
        CausalWanTransformer(WanTransformer3DModel(**{**CONFIG, "image_dim": 8,
                                                      "added_kv_proj_dim": 24}))


def _control(frames: int, seed: int) -> torch.Tensor:
    return _latents(frames, seed, channels=VACE_CONFIG["vace_in_channels"])


@pytest.mark.parametrize("references", [0, 1])
def test_vace_chunks_equal_one_masked_pass(vace_dir: Path, references: int) -> None:
    """VACE blocks run chunk-causally with their own KV caches: the same as diffusers'
    WanVACETransformer3DModel over the whole sequence (reference frames prepended) with the mask."""
    window, chunks, scale = FrameWindow(5, 1), [2, 2, 2], 0.7
    latents, control, text = _latents(6, 1), _control(6, 2), _text(3)
    refs = _latents(references, 4)
    sequence, full_control = latents, control
    if references:
        sequence = torch.cat([refs, latents], dim=2)
        ref_control = torch.cat([refs, torch.zeros_like(_control(references, 0)[:, CHANNELS:])],
                                dim=1)
        full_control = torch.cat([ref_control, control], dim=2)
    mask = attention_mask([references, *chunks] if references else chunks, TOKENS_PER_FRAME,
                          window)
    expected = _reference(
        WanVACETransformer3DModel.from_pretrained(vace_dir), mask, hidden_states=sequence,
        timestep=torch.zeros(1), encoder_hidden_states=text, control_hidden_states=full_control,
        control_hidden_states_scale=torch.full((2,), scale),
    )

    causal = CausalWanTransformer(WanVACETransformer3DModel.from_pretrained(vace_dir),
                                  local_attn_size=window.local_attn_size,
                                  sink_size=window.sink_size)
    cache = causal.new_cache()
    if references:
        causal.add_reference_frames(refs, text, cache, vace_scale=scale)
        assert cache.frames == references
    outputs = []
    for start, end in _offsets(chunks):
        outputs.append(causal(latents[:, :, start:end], torch.zeros(1), text, cache, commit=True,
                              vace_context=control[:, :, start:end], vace_scale=scale))
    assert {name.split(".")[0] for name in cache.self_attn} == {"blocks", "vace_blocks"}
    torch.testing.assert_close(torch.cat(outputs, dim=2), expected[:, :, references:],
                               atol=ATOL, rtol=1e-4)


def test_vace_scale_zero_is_no_vace_and_hints_change_the_output(vace_dir: Path) -> None:
    causal = CausalWanTransformer(WanVACETransformer3DModel.from_pretrained(vace_dir))
    text, latents, control, t = _text(3), _latents(2, 1), _control(2, 2), torch.tensor([600.0])
    plain = causal(latents, t, text, causal.new_cache())
    off = causal(latents, t, text, causal.new_cache(), vace_context=control, vace_scale=0.0)
    on = causal(latents, t, text, causal.new_cache(), vace_context=control)
    other = causal(latents, t, text, causal.new_cache(), vace_context=_control(2, 3))
    assert torch.equal(off, plain)
    assert not torch.allclose(on, plain, atol=1e-4)
    assert not torch.allclose(on, other, atol=1e-4)
    with pytest.raises(ValueError, match="vace_context must be"):
        causal(latents, t, text, causal.new_cache(), vace_context=_control(1, 2))
    cache = causal.new_cache()
    causal(latents, torch.zeros(1), text, cache, commit=True)
    with pytest.raises(ValueError, match="before the stream's first chunk"):
        causal.add_reference_frames(_latents(1, 4), text, cache)


def test_compiled_blocks_match_and_stop_recompiling(wan_dir: Path) -> None:
    """torch.compile'd blocks (as the pipelines' `compile` option does; Dynamo's eager backend,
    so no code generation here) give the same outputs, and the graph count settles once the
    cache is full: the cache bookkeeping stays outside the blocks."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    eager = CausalWanTransformer(WanTransformer3DModel.from_pretrained(wan_dir),
                                 local_attn_size=4, sink_size=1)
    compiled = CausalWanTransformer(WanTransformer3DModel.from_pretrained(wan_dir),
                                    local_attn_size=4, sink_size=1)
    for block in compiled.model.blocks:
        block.compile(backend="eager")
    caches = eager.new_cache(), compiled.new_cache()
    text = _text(2)
    graphs = []
    try:
        for chunk in range(5):
            x = _latents(1, chunk)
            for t, commit in ((700.0, False), (0.0, True)):
                want = eager(x, torch.tensor([t]), text, caches[0], commit=commit, kv_bias=0.5)
                got = compiled(x, torch.tensor([t]), text, caches[1], commit=commit, kv_bias=0.5)
                torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)
            graphs.append(counters["stats"]["unique_graphs"])
    finally:
        torch._dynamo.reset()
    # shared by both blocks, well under Dynamo's recompile limit (8), and no longer growing
    assert graphs[-1] <= 6 and graphs[-1] == graphs[-3], graphs


def test_adjacent_sinks_sit_just_before_the_window(tmp_path: Path) -> None:
    """sink_positions="adjacent": a chunk sees the sinks as if they came right before its window.
    With one layer, cached keys depend only on their own frame, so the chunk at frame 7 (window
    of 4 with 1 sink: frames 0, 5, 6 and itself) equals diffusers' pass over frames 0, 5, 6, 7
    laid out as a contiguous 4-frame clip."""
    torch.manual_seed(4)
    WanTransformer3DModel(**{**CONFIG, "num_layers": 1}).save_pretrained(tmp_path)
    text, latents = _text(2), _latents(8, 1)
    adjacent = CausalWanTransformer(WanTransformer3DModel.from_pretrained(tmp_path),
                                    local_attn_size=4, sink_size=1, sink_positions="adjacent")
    absolute = CausalWanTransformer(WanTransformer3DModel.from_pretrained(tmp_path),
                                    local_attn_size=4, sink_size=1)
    caches = adjacent.new_cache(), absolute.new_cache()
    for frame in range(8):
        chunk, t = latents[:, :, frame:frame + 1], torch.tensor([0.0])
        near = adjacent(chunk, t, text, caches[0], commit=True)
        far = absolute(chunk, t, text, caches[1], commit=True)
        if frame < 4:  # nothing evicted yet: the sinks are where they always were
            torch.testing.assert_close(near, far, atol=ATOL, rtol=1e-4)
    assert not torch.allclose(near, far, atol=1e-4)
    clip = latents[:, :, [0, 5, 6, 7]]
    expected = _reference(
        WanTransformer3DModel.from_pretrained(tmp_path),
        attention_mask([1, 1, 1, 1], TOKENS_PER_FRAME, FrameWindow()),
        hidden_states=clip, timestep=torch.zeros(1), encoder_hidden_states=text,
    )
    torch.testing.assert_close(near, expected[:, :, 3:], atol=ATOL, rtol=1e-4)



@pytest.mark.parametrize("sink_positions", ["absolute", "adjacent"])
def test_streams_at_different_frames_batch_together(wan_dir: Path, sink_positions: str) -> None:
    """Three sessions' caches (fresh, two chunks in, six chunks in with frames evicted), each
    with its own prompt, run as one batch: every output and every cache afterwards equals running
    them one by one (padding of the shorter pasts is masked out)."""
    options = {"local_attn_size": 4, "sink_size": 1, "sink_positions": sink_positions}
    causal = CausalWanTransformer(WanTransformer3DModel.from_pretrained(wan_dir), **options)
    texts = _text(5, batch=3)

    def sessions() -> list:
        caches = [causal.new_cache() for _ in range(3)]
        for i, chunks in enumerate((0, 2, 6)):
            for c in range(chunks):
                causal(_latents(1, 10 * i + c), torch.zeros(1), texts[i:i + 1], caches[i],
                       commit=True)
        return caches

    alone, together = sessions(), sessions()
    for step, (t, commit, bias) in enumerate(((900.0, False, 0.4), (600.0, False, 1.0),
                                               (0.0, True, 1.0), (700.0, False, 1.0))):
        x = _latents(1, 50 + step, batch=3)
        timesteps = torch.full((3,), t)
        want = torch.cat([
            causal(x[i:i + 1], timesteps[i:i + 1], texts[i:i + 1], alone[i], commit=commit,
                   kv_bias=bias)
            for i in range(3)
        ])
        got = causal(x, timesteps, texts, together, commit=commit, kv_bias=bias)
        torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)
    assert [c.frames for c in together] == [c.frames for c in alone] == [1, 3, 7]
    with pytest.raises(ValueError, match="batch"):
        causal(_latents(1, 0, batch=2), torch.zeros(2), texts[:1], together)

# --- CUDA (run by benchmarks/gpu_check.sh; skipped here) ----------------------------------------

CUDA_CONFIG = {**CONFIG, "num_attention_heads": 2, "attention_head_dim": 64, "ffn_dim": 256}


def _kernels(half: bool, kv_bias: float):
    """Half precision: the flash kernel only without a bias, the memory-efficient one only with
    it (each raises if it cannot take the call); float32: any kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not half:
        return contextlib.nullcontext()
    if kv_bias == 1.0:
        return sdpa_kernel([SDPBackend.FLASH_ATTENTION])
    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_streaming_matches_cpu(tmp_path: Path, dtype: torch.dtype) -> None:
    """On CUDA the chunked stream (window with sinks, adjacent sink positions, kv bias on the
    denoising passes) matches the CPU float32 stream that the masked-pass tests pin down, with
    half precision forced onto the flash / memory-efficient kernels."""
    device = torch.device("cuda")
    torch.manual_seed(5)
    WanTransformer3DModel(**CUDA_CONFIG).save_pretrained(tmp_path)
    options = {"local_attn_size": 4, "sink_size": 1, "sink_positions": "adjacent"}
    cpu = CausalWanTransformer(WanTransformer3DModel.from_pretrained(tmp_path), **options)
    gpu = CausalWanTransformer(
        WanTransformer3DModel.from_pretrained(tmp_path, torch_dtype=dtype).to(device), **options
    )
    caches = cpu.new_cache(), gpu.new_cache()
    assert gpu.device.type == caches[1].device.type == device.type
    text, latents = _text(2), _latents(8, 1)
    half = dtype != torch.float32
    tolerance = {"atol": 0.1, "rtol": 0.1} if half else {"atol": 1e-4, "rtol": 1e-3}
    for start in range(0, 8, 2):
        chunk = latents[:, :, start:start + 2]
        for t, commit, bias in ((800.0, False, 0.5), (0.0, True, 1.0)):
            want = cpu(chunk, torch.tensor([t]), text, caches[0], commit=commit, kv_bias=bias)
            with _kernels(half, bias):
                got = gpu(chunk.to(device, dtype), torch.tensor([t], device=device),
                          text.to(device, dtype), caches[1], commit=commit, kv_bias=bias)
            assert got.device.type == device.type and got.dtype == dtype
            torch.testing.assert_close(got.float().cpu(), want, **tolerance)
