"""A tiny random-weight Wan2.1-style model saved in diffusers layout (no downloads).

`build_tiny_wan(path)` writes model_index.json, tokenizer/ (a T5TokenizerFast built offline
from a `tokenizers` Unigram model), text_encoder/ (UMT5EncoderModel), vae/ (AutoencoderKLWan),
scheduler/ and transformer/ (WanTransformer3DModel), so the pipelines load it through
`model_id` alone, exactly as they load Wan-AI/Wan2.1-T2V-1.3B-Diffusers. Sizes keep a 32×32
chunk at a few tens of milliseconds per transformer call on a 2-core CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

TEXT_DIM = 32
TEXT_LEN = 16
WORDS = ["a", "red", "fox", "blue", "whale", "cat", "dog", "the", "sea", "forest", "city",
         "night", "painting", "watercolor", "neon", "snow"]


def write_tiny_t5_tokenizer(path: Path) -> int:
    """A T5TokenizerFast over a small Unigram vocabulary; returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import T5TokenizerFast

    pieces = ["<pad>", "</s>", "<unk>", *(f"▁{w}" for w in WORDS), *"abcdefghijklmnopqrstuvwxyz",
              "▁"]
    vocab = [(p, 0.0 if i < 3 else -float(i)) for i, p in enumerate(pieces)]
    model = models.Unigram(vocab, unk_id=2)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    fast = T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                           unk_token="<unk>", extra_ids=0, model_max_length=TEXT_LEN)
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(path)
    return len(pieces)


def tiny_transformer_config(layers: int = 2) -> dict[str, Any]:
    return {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 8,
            "in_channels": 4, "out_channels": 4, "text_dim": TEXT_DIM, "freq_dim": 16,
            "ffn_dim": 32, "num_layers": layers, "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 64}


def build_tiny_wan(path: Path | str, *, seed: int = 0, layers: int = 2) -> Path:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    root = Path(path)
    torch.manual_seed(seed)
    vocab = write_tiny_t5_tokenizer(root / "tokenizer")
    UMT5EncoderModel(UMT5Config(
        vocab_size=vocab, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )).save_pretrained(root / "text_encoder")
    AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.05, 0.0], latents_std=[1.5, 2.0, 0.8, 1.2],
    ).save_pretrained(root / "vae")
    WanTransformer3DModel.from_config(tiny_transformer_config(layers)).save_pretrained(
        root / "transformer")
    FlowMatchEulerDiscreteScheduler(shift=5.0).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "WanPipeline", "_diffusers_version": "0.42.1",
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
    }), encoding="utf-8")
    return root
