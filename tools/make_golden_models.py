#!/usr/bin/env python3
"""Builds tiny random models of each architecture Genesis runs with Hugging Face transformers (the reference
implementation), saves them under tests/golden/<arch>/ (config.json + model.safetensors in bf16) and records, in
reference.json, transformers' fp32 logits for fixed token ids and its greedy continuation; for MoE models also the
same with every expert matrix NF4-quantized and dequantized (bitsandbytes' rules: blockwise absmax over the
flattened [out, in] matrix, nearest of the 16 NF4 codes with ties to the lower code, reproduced here in numpy
because bitsandbytes is not used on this CPU-only machine). Also rope.json: inverse frequencies and attention
scaling of each supported rope type from transformers' ROPE_INIT_FUNCTIONS.

Qwen3-Next (Gated DeltaNet + gated attention, MoE with a shared expert) runs 70 tokens, so that transformers'
chunked delta rule (chunks of 64) crosses a chunk boundary; its RMSNorm weights are drawn around 0 (applied as 1 + w)
and the gated norm's around 1 (applied as is), so that a missing or misplaced offset shows.

Usage: python3 tools/make_golden_models.py [--out tests/golden] [--only qwen3_next ...]
(needs torch, transformers, safetensors, numpy)
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
                          Qwen3MoeConfig, Qwen3MoeForCausalLM, Qwen3NextConfig, Qwen3NextForCausalLM)
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
# Longer for the models whose prefill is chunked (Qwen3-Next's delta rule: chunks of 64 rows).
TOKENS_LONG = TOKENS + [(i * 37 + 11) % 128 for i in range(58)]
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
    # Four layers: Gated DeltaNet, gated attention, Gated DeltaNet with a dense MLP (mlp_only_layers), gated
    # attention; 2 key heads serving 4 value heads; partial rotary 0.25 of head_dim 16.
    yield "qwen3_next", Qwen3NextForCausalLM, Qwen3NextConfig(
        **{**COMMON, "max_position_embeddings": 128}, intermediate_size=64, moe_intermediate_size=64,
        shared_expert_intermediate_size=64, num_hidden_layers=4, head_dim=16, num_experts=4, num_experts_per_tok=2,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[2],
        layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
        linear_conv_kernel_dim=4, partial_rotary_factor=0.25, rope_theta=10000.0)


# Qwen3-Next's model has twice the layers and six times the tokens of the others: smaller weights keep its fp32
# rounding from being amplified beyond what a 2e-6 check can see through (0.15: transformers' fp32 logits 3.1e-6 from
# float64).
WEIGHT_SCALE = {"qwen3_next": float(os.environ.get("Q3N_SCALE", "0.1"))}


def randomize(model, seed):
    """Random weights (norm weights too, so that they are tested), rounded to bf16 so the saved file is exact."""
    g = torch.Generator().manual_seed(seed)
    offset_norms = model.config.model_type == "qwen3_next"  # RMSNorm as (1 + w), but for the gated norm
    with torch.no_grad():
        for name, p in model.named_parameters():
            if offset_norms and name.endswith("norm.weight") and not name.endswith("linear_attn.norm.weight"):
                v = 0.2 * torch.randn(p.shape, generator=g)
            elif name.endswith(".A_log"):
                v = 0.5 * torch.randn(p.shape, generator=g) - 1.0  # decays exp(-exp(A_log) softplus(.)) near 0.8
            elif name.endswith(".dt_bias"):
                v = 0.3 * torch.randn(p.shape, generator=g)
            elif name.endswith("norm.weight"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=g)
            elif name.endswith(".bias"):
                v = 0.1 * torch.randn(p.shape, generator=g)
            else:
                v = WEIGHT_SCALE.get(model.config.model_type, 0.15) * torch.randn(p.shape, generator=g)
            p.copy_(v.to(torch.bfloat16).to(torch.float32))


def is_expert(name):
    return ".experts." in name


def reset_dynamic_rope(model):
    """Dynamic rope in transformers keeps the frequencies of the longest sequence seen; start each reference fresh."""
    for m in model.modules():
        if hasattr(m, "original_inv_freq") and hasattr(m, "max_seq_len_cached"):
            m.inv_freq = m.original_inv_freq.clone()
            m.max_seq_len_cached = m.original_max_seq_len


def reference(model, tokens):
    reset_dynamic_rope(model)
    ids = torch.tensor([tokens])
    with torch.no_grad():
        logits = model(ids).logits[0].float().numpy()
        # An explicit mask: generate() would otherwise mask every prompt token equal to pad_token_id.
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, pad_token_id=0)
    greedy = out[0, len(tokens):].tolist()
    # Smallest gap between the best and second-best logit along the greedy path: how safe a token-exact check is.
    with torch.no_grad():
        full = model(out[:, :-1]).logits[0, len(tokens) - 1:].float()
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
    ap.add_argument("--only", nargs="*", help="write only these architectures (and not rope.json)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    for i, (arch, cls, cfg) in enumerate(models()):
        if args.only and arch not in args.only:
            continue
        tokens = TOKENS_LONG if arch == "qwen3_next" else TOKENS
        torch.manual_seed(1234 + i)
        model = cls._from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
        randomize(model, 1000 + i)
        d = os.path.join(args.out, arch)
        os.makedirs(d, exist_ok=True)
        logits, greedy, margin = reference(model, tokens)
        ref = dict(generator=f"tools/make_golden_models.py (transformers {transformers.__version__}, "
                             f"torch {torch.__version__})",
                   tokens=tokens, new_tokens=NEW_TOKENS, logits_f32=floats(logits), greedy_f32=greedy,
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
            logits, greedy, margin = reference(model, tokens)
            ref.update(nf4_blocksize=BLOCKSIZE, logits_nf4=floats(logits), greedy_nf4=greedy,
                       greedy_margin_nf4=margin)
        if arch == "qwen3_next":
            # The same weights in float64: how far transformers' own fp32 logits are from exact (a 4-layer random
            # model over 70 tokens amplifies rounding more than the 2-layer goldens over 12).
            m64 = cls.from_pretrained(d, dtype=torch.float64, attn_implementation="eager",
                                      experts_implementation="eager").eval()
            with torch.no_grad():
                ref["logits_f64"] = [float(x) for x in m64(torch.tensor([tokens])).logits[0].numpy().reshape(-1)]
        for extra in ("generation_config.json",):
            if os.path.exists(os.path.join(d, extra)):
                os.remove(os.path.join(d, extra))
        with open(os.path.join(d, "reference.json"), "w") as f:
            json.dump(ref, f)
        print(f"{arch}: greedy {ref['greedy_f32']} (margin {margin:.4f})")
    if args.only:
        return
    with open(os.path.join(args.out, "rope.json"), "w") as f:
        json.dump(dict(generator=f"tools/make_golden_models.py (transformers {transformers.__version__})",
                       cases=rope_cases()), f, indent=0)


if __name__ == "__main__":
    main()
