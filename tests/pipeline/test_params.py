"""Parameter validation, the per-session parameter state, and prompt blending."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.models.blending import blend, conditioning, interpolate, slerp
from pipeline.params import ParameterState, ParameterUpdate, WeightedPrompt

DEFAULTS = ParameterUpdate(prompts=[WeightedPrompt(text="default")], denoising_step_list=[700, 500],
                           noise_scale=0.5)


def update(**kw: object) -> ParameterUpdate:
    return ParameterUpdate.model_validate(kw)


@pytest.mark.parametrize("bad", [
    {"prompts": []},
    {"prompts": [{"text": "a", "weight": -1}]},
    {"prompts": [{"text": "a", "weight": 0}, {"text": "b", "weight": 0}]},
    {"prompts": [{"text": "a", "weight": "1"}]},
    {"prompts": [{"text": "a", "weight": float("nan")}]},
    {"prompts": "a cat"},
    {"prompts": [{"text": "x" * 5000}]},
    {"denoising_step_list": [500, 700]},
    {"denoising_step_list": [700, 700]},
    {"denoising_step_list": [0]},
    {"denoising_step_list": [1001]},
    {"denoising_step_list": []},
    {"noise_scale": 1.5},
    {"noise_scale": float("inf")},
    {"seed": -1},
    {"seed": 1.5},
    {"paused": "yes"},
    {"input_mode": "audio"},
    {"prompt_interpolation_method": "cubic"},
    {"transition": {"target_prompts": [], "num_steps": 4}},
    {"transition": {"target_prompts": [{"text": "a"}], "num_steps": -1}},
])
def test_invalid_updates_are_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        ParameterUpdate.model_validate(bad)


def test_scope_client_values_are_accepted() -> None:
    # Scope's receive-only quick start sends 1000 and keys we only pass through.
    u = update(prompts=[{"text": "a", "weight": 1}], denoising_step_list=[1000, 750, 500, 250],
               manage_cache=True, some_future_key=1)
    assert u.denoising_step_list == [1000, 750, 500, 250]
    assert u.manage_cache is True
    assert "some_future_key" not in u.given()


def test_defaults_fill_what_the_session_did_not_set() -> None:
    state = ParameterState(update(seed=7))
    snap = state.snapshot(DEFAULTS)
    assert [p.text for p in snap.prompts] == ["default"]
    assert snap.denoising_step_list == (700, 500)
    assert snap.noise_scale == 0.5
    assert snap.seed == 7


def test_updates_are_sticky_and_latest_wins() -> None:
    state = ParameterState()
    state.apply(update(noise_scale=0.1))
    state.apply(update(seed=3))
    state.apply(update(noise_scale=0.9))
    snap = state.snapshot(DEFAULTS)
    assert (snap.noise_scale, snap.seed) == (0.9, 3)


def test_reset_cache_is_one_shot() -> None:
    state = ParameterState(update(reset_cache=True))
    assert state.snapshot(DEFAULTS).reset_cache is True
    assert state.snapshot(DEFAULTS).reset_cache is False


def test_transition_advances_one_step_per_frame_then_lands() -> None:
    state = ParameterState(update(prompts=[{"text": "a"}]))
    state.apply(update(transition={"target_prompts": [{"text": "b"}], "num_steps": 4,
                                   "temporal_interpolation_method": "slerp"}))
    alphas = []
    for _ in range(3):
        snap = state.snapshot(DEFAULTS)
        assert [p.text for p in snap.prompts] == ["a"]
        assert snap.transition is not None and snap.transition.method == "slerp"
        alphas.append(snap.transition.alpha)
    assert alphas == [0.25, 0.5, 0.75]
    final = state.snapshot(DEFAULTS)
    assert final.transition is None and [p.text for p in final.prompts] == ["b"]
    assert [p.text for p in state.snapshot(DEFAULTS).prompts] == ["b"]


def test_zero_step_transition_applies_at_once_and_new_prompts_cancel() -> None:
    state = ParameterState(update(prompts=[{"text": "a"}]))
    state.apply(update(transition={"target_prompts": [{"text": "b"}], "num_steps": 0}))
    assert [p.text for p in state.snapshot(DEFAULTS).prompts] == ["b"]
    state.apply(update(transition={"target_prompts": [{"text": "c"}], "num_steps": 10}))
    state.snapshot(DEFAULTS)
    state.apply(update(prompts=[{"text": "d"}]))
    snap = state.snapshot(DEFAULTS)
    assert snap.transition is None and [p.text for p in snap.prompts] == ["d"]


def test_effective_reports_running_transition_without_advancing() -> None:
    state = ParameterState(update(prompts=[{"text": "a"}]))
    state.apply(update(transition={"target_prompts": [{"text": "b"}], "num_steps": 2}))
    eff = state.effective(DEFAULTS)
    assert eff["prompts"] == [{"text": "a", "weight": 1.0}]
    assert eff["transition"]["completed_steps"] == 0
    assert state.effective(DEFAULTS)["transition"]["completed_steps"] == 0


def test_linear_blend_is_the_normalised_weighted_sum() -> None:
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    out = blend([a, b], [3.0, 1.0], "linear")
    assert np.allclose(out, [0.75, 0.25])


def test_slerp_keeps_the_norm_between_unit_vectors() -> None:
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    mid = slerp(a, b, 0.5)
    assert np.allclose(mid, [math.sqrt(0.5), math.sqrt(0.5)])
    assert np.isclose(np.linalg.norm(interpolate(a, b, 0.3, "slerp")), 1.0)
    assert np.isclose(np.linalg.norm(interpolate(a, b, 0.5, "linear")), math.sqrt(0.5))


def test_slerp_blend_of_equal_weights_is_the_midpoint_and_ignores_zero_weights() -> None:
    a, b, c = np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([5.0, 5.0])
    assert np.allclose(blend([a, b, c], [1.0, 1.0, 0.0], "slerp"), slerp(a, b, 0.5))


def test_blend_works_on_torch_tensors_too() -> None:
    torch = pytest.importorskip("torch")
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    out = blend([a, b], [1.0, 1.0], "slerp")
    assert torch.allclose(out, torch.tensor([math.sqrt(0.5)] * 2))


def test_conditioning_moves_towards_the_transition_target() -> None:
    vectors = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0])}
    state = ParameterState(update(prompts=[{"text": "a"}]))
    state.apply(update(transition={"target_prompts": [{"text": "b"}], "num_steps": 4}))
    seen = [conditioning(state.snapshot(DEFAULTS), vectors.__getitem__) for _ in range(4)]
    assert np.allclose([s[1] for s in seen], [0.25, 0.5, 0.75, 1.0])
