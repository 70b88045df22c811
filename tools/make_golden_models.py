#!/usr/bin/env python3
"""Builds tiny random models of each architecture Genesis runs with Hugging Face transformers (the reference
implementation), saves them under tests/golden/<arch>/ (config.json + model.safetensors in bf16) and records, in
reference.json, transformers' fp32 logits for fixed token ids and its greedy continuation; for MoE models also the
same with every expert matrix NF4-quantized and dequantized (bitsandbytes' rules: blockwise absmax over the
flattened [out, in] matrix, nearest of the 16 NF4 codes with ties to the lower code, reproduced here in numpy
because bitsandbytes is not used on this CPU-only machine). Also rope.json: inverse frequencies and attention
scaling of each supported rope type from transformers' ROPE_INIT_FUNCTIONS.

Usage: python3 tools/make_golden_models.py [--out tests/golden]   (needs torch, transformers, safetensors, numpy)
The C++ tests (src/runtime/model/model_test.cpp) read these files; they need no Python.
"""
import argparse
import json
import os

import numpy as np
import torch
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM, OlmoeConfig,
                          OlmoeForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM,
                          Qwen3MoeConfig, Qwen3MoeForCausalLM)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

NF4_CODES = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=np.float32)
# Decision thresholds between neighbouring codes, as float32 (ties go to the lower code).
NF4_MIDS = ((NF4_CODES[:-1].astype(np.float64) + NF4_CODES[1:].astype(np.float64)) / 2).astype(np.float32)
BLOCKSIZE = 64

TOKENS = [1, 17, 42, 99, 5, 77, 23, 64, 8, 120, 33, 51]
NEW_TOKENS = 8
VOCAB = 128

COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=64, rms_norm_eps=1e-6, initializer_range=0.15, tie_word_embeddings=False,
              bos_token_id=None, eos_token_id=None, pad_token_id=None)


def nf4_roundtrip(w):
    """Quantize a [out, in] fp32 matrix to NF4 and back, as bitsandbytes' quantize_4bit / dequantize_4bit."""
    flat = w.astype(np.float32).reshape(-1)
    assert flat.size % BLOCKSIZE == 0
    blocks = flat.reshape(-1, BLOCKSIZE)
    absmax = np.abs(blocks).max(axis=1).astype(np.float32)
    safe = np.where(absmax > 0, absmax, np.float32(1))
    scaled = (blocks * (np.float32(1) / safe)[:, None]).astype(np.float32)
    codes = (scaled[..., None] > NF4_MIDS).sum(axis=-1)
    codes = np.where(absmax[:, None] > 0, codes, 7)
    return (NF4_CODES[codes] * absmax[:, None]).astype(np.float32).reshape(w.shape)


def models():
    yield "llama", LlamaForCausalLM, LlamaConfig(
        **COMMON, intermediate_size=64, num_hidden_layers=2, rope_theta=10000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=16))
    yield "qwen2", Qwen2ForCausalLM, Qwen2Config(
        **COMMON, intermediate_size=64, num_hidden_layers=2, rope_theta=10000.0,
        rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16))
    yield "qwen3", Qwen3ForCausalLM, Qwen3Config(
        **COMMON, intermediate_size=64, num_hidden_layers=2, head_dim=16, rope_theta=10000.0,
        rope_scaling=dict(rope_type="linear", factor=2.0))
    yield "qwen3_moe", Qwen3MoeForCausalLM, Qwen3MoeConfig(
        **COMMON, intermediate_size=64, moe_intermediate_size=64, num_hidden_layers=2, head_dim=16,
        num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[1],
        rope_theta=1000000.0)
    yield "olmoe", OlmoeForCausalLM, OlmoeConfig(
        **{**COMMON, "max_position_embeddings": 8}, intermediate_size=64, num_hidden_layers=2, num_experts=4,
        num_experts_per_tok=2, norm_topk_prob=False, rope_theta=10000.0,
        rope_scaling=dict(rope_type="dynamic", factor=2.0))
    yield "mixtral", MixtralForCausalLM, MixtralConfig(
        **COMMON, intermediate_size=64, num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2,
        sliding_window=5, rope_theta=10000.0)


def randomize(model, seed):
    """Random weights (norm weights too, so that they are tested), rounded to bf16 so the saved file is exact."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=g)
            elif name.endswith(".bias"):
                v = 0.1 * torch.randn(p.shape, generator=g)
            else:
                v = 0.15 * torch.randn(p.shape, generator=g)
            p.copy_(v.to(torch.bfloat16).to(torch.float32))


def is_expert(name):
    return ".experts." in name


def reset_dynamic_rope(model):
    """Dynamic rope in transformers keeps the frequencies of the longest sequence seen; start each reference fresh."""
    for m in model.modules():
        if hasattr(m, "original_inv_freq") and hasattr(m, "max_seq_len_cached"):
            m.inv_freq = m.original_inv_freq.clone()
            m.max_seq_len_cached = m.original_max_seq_len


def reference(model):
    reset_dynamic_rope(model)
    ids = torch.tensor([TOKENS])
    with torch.no_grad():
        logits = model(ids).logits[0].float().numpy()
        out = model.generate(ids, do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             pad_token_id=0)
    greedy = out[0, len(TOKENS):].tolist()
    # Smallest gap between the best and second-best logit along the greedy path: how safe a token-exact check is.
    with torch.no_grad():
        full = model(out[:, :-1]).logits[0, len(TOKENS) - 1:].float()
    top2 = torch.topk(full, 2, dim=-1).values
    margin = float((top2[:, 0] - top2[:, 1]).min())
    return logits, greedy, margin


def floats(a):
    return [float(np.float32(x)) for x in np.asarray(a).reshape(-1)]


def rope_cases():
    base = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                num_hidden_layers=1, vocab_size=32, max_position_embeddings=32, rope_theta=10000.0)
    cases = [
        ("default", None, None),
        ("linear", dict(rope_type="linear", factor=4.0), None),
        ("dynamic_short", dict(rope_type="dynamic", factor=2.0), 16),
        ("dynamic_long", dict(rope_type="dynamic", factor=2.0), 100),
        ("llama3", dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                        original_max_position_embeddings=8), None),
        ("yarn", dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=8), None),
        ("yarn_mscale", dict(rope_type="yarn", factor=8.0, original_max_position_embeddings=8, mscale=1.0,
                             mscale_all_dim=0.5, beta_fast=16, beta_slow=2), None),
    ]
    out = []
    for name, scaling, seq_len in cases:
        cfg = LlamaConfig(**base, rope_scaling=scaling)
        rt = cfg.rope_parameters.get("rope_type", "default")
        if rt == "default":
            inv, scale = LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
        else:
            inv, scale = ROPE_INIT_FUNCTIONS[rt](cfg, None, seq_len=seq_len)
        out.append(dict(name=name, config=json.loads(cfg.to_json_string()), seq_len=seq_len or 0,
                        inv_freq=floats(inv), attention_scaling=float(scale)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "golden"))
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    for i, (arch, cls, cfg) in enumerate(models()):
        torch.manual_seed(1234 + i)
        model = cls._from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
        randomize(model, 1000 + i)
        d = os.path.join(args.out, arch)
        os.makedirs(d, exist_ok=True)
        logits, greedy, margin = reference(model)
        ref = dict(generator=f"tools/make_golden_models.py (transformers {transformers.__version__}, "
                             f"torch {torch.__version__})",
                   tokens=TOKENS, new_tokens=NEW_TOKENS, logits_f32=floats(logits), greedy_f32=greedy,
                   greedy_margin_f32=margin)
        # Save bf16 copies of the weights; the model itself stays fp32 (model.to(bf16) would also round its rope
        # buffers, and the NF4 reference below would no longer be an fp32 computation).
        bf16 = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
        model.save_pretrained(d, state_dict=bf16)
        if any(is_expert(n) for n, _ in model.named_parameters()):
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if not is_expert(n):
                        continue
                    w = p.detach().numpy()
                    q = np.stack([nf4_roundtrip(m) for m in w]) if w.ndim == 3 else nf4_roundtrip(w)
                    p.copy_(torch.from_numpy(q))
            logits, greedy, margin = reference(model)
            ref.update(nf4_blocksize=BLOCKSIZE, logits_nf4=floats(logits), greedy_nf4=greedy,
                       greedy_margin_nf4=margin)
        for extra in ("generation_config.json",):
            if os.path.exists(os.path.join(d, extra)):
                os.remove(os.path.join(d, extra))
        with open(os.path.join(d, "reference.json"), "w") as f:
            json.dump(ref, f)
        print(f"{arch}: greedy {ref['greedy_f32']} (margin {margin:.4f})")
    with open(os.path.join(args.out, "rope.json"), "w") as f:
        json.dump(dict(generator=f"tools/make_golden_models.py (transformers {transformers.__version__})",
                       cases=rope_cases()), f, indent=0)


if __name__ == "__main__":
    main()
