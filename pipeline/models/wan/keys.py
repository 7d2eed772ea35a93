"""Wan2.1 weight names: training checkpoints unwrapped, original names ↔ diffusers'.

Training checkpoints of the Self-Forcing lineage nest the generator (`{"generator": {...}}`) and
prefix its keys (`model.`, FSDP / activation-checkpoint / torch.compile wrapper names); `unwrap`
finds the tensors. Original Wan names (blocks.0.self_attn.q, ffn.0, head.head) become diffusers'
through diffusers' own single-file converter; `to_original_keys` is its inverse (to test the
conversion and to write files in the layouts trainers publish).
"""

from __future__ import annotations

from typing import Any

import torch

_NESTS = ("generator", "generator_ema", "generator_lora", "model", "state_dict", "module")
"""Where training checkpoints keep the generator, most wanted first: LongLive's and
StreamDiffusionV2's inference scripts load `generator` (LongLive's `use_ema: false`)."""
_PREFIXES = ("base_model.model.", "module.", "model.", "diffusion_model.")
_WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
"""Names FSDP, activation checkpointing and torch.compile insert anywhere in a key (an FSDP
unit per block gives `model.blocks.0._fsdp_wrapped_module.self_attn...`)."""


def unwrap(obj: Any) -> dict[str, torch.Tensor]:
    """The tensor dict inside a training checkpoint, with wrapper prefixes removed."""
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        nest = next((k for k in _NESTS if isinstance(obj.get(k), dict)), None)
        if nest is None and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
            nest = next(iter(obj))
        if nest is None:
            break
        obj = obj[nest]
    if not isinstance(obj, dict) or not obj:
        raise ValueError("no tensors found (expected a state dict, possibly under "
                         f"{', '.join(_NESTS)})")
    tensors = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            name = str(key)
            for wrapper in _WRAPPERS:
                name = name.replace(wrapper, "")
            tensors[name] = value
    changed = True
    while changed:  # strip a prefix every key shares, e.g. "model." of WanDiffusionWrapper
        changed = False
        for prefix in _PREFIXES:
            if tensors and all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix):]: v for k, v in tensors.items()}
                changed = True
    return tensors


def is_original_naming(keys: Any) -> bool:
    """True for original Wan names (self_attn, ffn.0, head.head), False for diffusers names."""
    markers = (".self_attn.", ".cross_attn.", ".ffn.0.", ".ffn.2.")
    return any(k.startswith("head.") or any(m in k for m in markers) for k in keys)


def to_diffusers_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original Wan names → diffusers `WanTransformer3DModel` names (diffusers' converter)."""
    if not is_original_naming(state_dict):
        return dict(state_dict)
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers(dict(state_dict))


_INVERSE = [  # diffusers → original, applied in order to each key (inverse of diffusers' table)
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    ("attn2", "cross_attn"), ("attn1", "self_attn"),
    (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
    (".add_k_proj.", ".k_img."), (".add_v_proj.", ".v_img."), (".norm_added_k.", ".norm_k_img."),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
    ("norm2", "norm__swap"), ("norm3", "norm2"), ("norm__swap", "norm3"),
]


def to_original_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers names → original Wan names (what training repos save; used to test the
    conversion and to export)."""
    out = {}
    for key, value in state_dict.items():
        new = key
        if key.startswith("scale_shift_table"):
            new = "head.modulation"
        elif key.startswith("proj_out."):
            new = "head.head." + key[len("proj_out."):]
        elif key.startswith("vace_blocks.") and (".proj_in." in key or ".proj_out." in key):
            new = key.replace(".proj_in.", ".before_proj.").replace(".proj_out.", ".after_proj.")
        else:
            new = new.replace(".scale_shift_table", ".modulation")
        for old, repl in _INVERSE:
            new = new.replace(old, repl)
        out[new] = value
    return out
