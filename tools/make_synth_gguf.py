#!/usr/bin/env python3
"""Writes a GGUF file with the shapes of a real model and random quantized weights, for speed comparisons that both
Genesis and llama.cpp can load (genesis bench model / genesis run, llama-cpp-python). Like a Q4_K_M file: experts
and most matrices Q4_K, attn_v / ffn_down_exps / output Q6_K, norms and the router F32. Random blocks carry small
scales (weights of about +-0.02), so the forward pass stays finite. The vocabulary is byte-level BPE: the 256 byte
tokens, two merges, filler tokens up to the model's vocabulary size. Tensors are written one at a time (memory stays
low while a 17 GiB file is written).

The qwen3next preset (Qwen3-Next-80B-A3B) is laid out as llama.cpp's convert_hf_to_gguf.py writes that model: three
of four layers Gated DeltaNet (ssm_in, ssm_ba, ssm_conv1d, ssm_dt, ssm_a, ssm_norm, ssm_out), the fourth gated
attention (attn_q with the gate rows), post_attention_norm, a shared expert (ffn_*_shexp, ffn_gate_inp_shexp).

Usage: python3 tools/make_synth_gguf.py --preset qwen3-30b-a3b --out /path/q30b.gguf [--layers N] [--seed S]
Needs: gguf, numpy.
"""
import argparse
import os
import sys
import time

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

PRESETS = {
    # Qwen3-30B-A3B: config.json of the released model.
    "qwen3-30b-a3b": dict(arch="qwen3moe", vocab=151936, hidden=2048, layers=48, heads=32, kv_heads=4, head_dim=128,
                          experts=128, top_k=8, moe_inter=768, inter=6144, ctx=40960, theta=1e6, eps=1e-6),
    # Qwen3-Next-80B-A3B: config.json of the released model.
    "qwen3next": dict(arch="qwen3next", vocab=151936, hidden=2048, layers=48, heads=16, kv_heads=2, head_dim=256,
                      experts=512, top_k=10, moe_inter=512, inter=5120, ctx=262144, theta=1e7, eps=1e-6,
                      shared_inter=512, interval=4, k_heads=16, v_heads=32, k_dim=128, v_dim=128, conv=4,
                      rotary=64),
    # SmolLM2-135M (dense llama, tied embeddings) as a Q8_0 file: its 576 columns are no multiple of Q4_K's 256.
    "smollm2-135m": dict(arch="llama", vocab=49152, hidden=576, layers=30, heads=9, kv_heads=3, head_dim=64,
                         experts=0, top_k=0, moe_inter=0, inter=1536, ctx=8192, theta=1e5, eps=1e-5, qtype=T.Q8_0),
    # A tiny Qwen3-MoE of the same formats (2.8 MB): the GPU tests' prefill over several MoE layers
    # (tests/golden/gguf/tiny_synth_moe.gguf).
    "tiny-moe": dict(arch="qwen3moe", vocab=512, hidden=256, layers=3, heads=4, kv_heads=2, head_dim=64,
                     experts=6, top_k=2, moe_inter=256, inter=512, ctx=512, theta=1e6, eps=1e-6),
    # OLMoE-1B-7B
    "olmoe": dict(arch="olmoe", vocab=50304, hidden=2048, layers=16, heads=16, kv_heads=16, head_dim=128,
                  experts=64, top_k=8, moe_inter=1024, inter=1024, ctx=4096, theta=1e4, eps=1e-5),
}


def random_blocks(rng, qtype, rows, cols):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    nb = rows * cols // block
    raw = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
    d = rng.uniform(0.5e-5, 2e-5, nb).astype(np.float16)
    if qtype == T.Q4_K:
        raw[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
        raw[:, 2:4] = (d.astype(np.float32) * 7.5).astype(np.float16).view(np.uint8).reshape(-1, 2)  # centres
    elif qtype == T.Q8_0:
        raw[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
    elif qtype == T.Q6_K:
        raw[:, size - 2:size] = (d.astype(np.float32) * 0.5).astype(np.float16).view(np.uint8).reshape(-1, 2)
    else:
        raise ValueError(qtype)
    return raw.reshape(rows, cols // block * size)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="qwen3-30b-a3b")
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, help="fewer layers than the preset (smaller file, same shapes)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    p = dict(PRESETS[a.preset])
    if a.layers:
        p["layers"] = a.layers
    if os.path.exists(a.out):
        sys.exit(f"{a.out} exists; remove it first")
    rng = np.random.default_rng(a.seed)
    arch, H, V, L = p["arch"], p["hidden"], p["vocab"], p["layers"]
    E, MI, HD = p["experts"], p["moe_inter"], p["head_dim"]
    q_dim, kv_dim = p["heads"] * HD, p["kv_heads"] * HD

    # (name, kind, shape in HF order (rows, cols) or (E, rows, cols), qtype); kind: "q" random blocks, "norm", "f32"
    dense = E == 0
    plan = [("token_embd.weight", "q", (V, H), p.get("qtype", T.Q4_K))]
    nxt = arch == "qwen3next"
    for l in range(L) if dense else []:
        g, q8 = f"blk.{l}.", p["qtype"]
        I = p["inter"]
        plan += [(g + "attn_norm.weight", "norm", (H,), T.F32), (g + "ffn_norm.weight", "norm", (H,), T.F32),
                 (g + "attn_q.weight", "q", (q_dim, H), q8), (g + "attn_k.weight", "q", (kv_dim, H), q8),
                 (g + "attn_v.weight", "q", (kv_dim, H), q8), (g + "attn_output.weight", "q", (H, q_dim), q8),
                 (g + "ffn_gate.weight", "q", (I, H), q8), (g + "ffn_up.weight", "q", (I, H), q8),
                 (g + "ffn_down.weight", "q", (H, I), q8)]
    for l in range(L) if not dense else []:
        g = f"blk.{l}."
        linear = nxt and (l + 1) % p["interval"] != 0
        plan += [(g + "attn_norm.weight", "norm", (H,), T.F32),
                 (g + ("post_attention_norm.weight" if nxt else "ffn_norm.weight"), "norm", (H,), T.F32)]
        if linear:  # Gated DeltaNet
            kd, vd = p["k_heads"] * p["k_dim"], p["v_heads"] * p["v_dim"]
            plan += [(g + "ssm_in.weight", "q", (2 * kd + 2 * vd, H), T.Q4_K),
                     (g + "ssm_ba.weight", "f32", (2 * p["v_heads"], H), T.F32),
                     (g + "ssm_conv1d.weight", "f32", (2 * kd + vd, p["conv"]), T.F32),
                     (g + "ssm_dt.bias", "f32", (p["v_heads"],), T.F32),
                     (g + "ssm_a", "neg", (p["v_heads"],), T.F32),
                     (g + "ssm_norm.weight", "norm", (p["v_dim"],), T.F32),
                     (g + "ssm_out.weight", "q", (H, vd), T.Q4_K)]
        else:
            qrows = 2 * q_dim if nxt else q_dim  # qwen3next: the output gate's rows with the query's
            plan += [(g + "attn_q.weight", "q", (qrows, H), T.Q4_K), (g + "attn_k.weight", "q", (kv_dim, H), T.Q4_K),
                     (g + "attn_v.weight", "q", (kv_dim, H), T.Q6_K),
                     (g + "attn_output.weight", "q", (H, q_dim), T.Q4_K)]
        plan += [(g + "ffn_gate_inp.weight", "f32", (E, H), T.F32),
                 (g + "ffn_gate_exps.weight", "q", (E, MI, H), T.Q4_K),
                 (g + "ffn_up_exps.weight", "q", (E, MI, H), T.Q4_K),
                 (g + "ffn_down_exps.weight", "q", (E, H, MI), T.Q6_K)]
        if nxt:
            SI = p["shared_inter"]
            plan += [(g + "ffn_gate_inp_shexp.weight", "f32", (H,), T.F32),
                     (g + "ffn_gate_shexp.weight", "q", (SI, H), T.Q4_K),
                     (g + "ffn_up_shexp.weight", "q", (SI, H), T.Q4_K),
                     (g + "ffn_down_shexp.weight", "q", (H, SI), T.Q6_K)]
            if not linear:
                plan += [(g + "attn_q_norm.weight", "norm", (HD,), T.F32),
                         (g + "attn_k_norm.weight", "norm", (HD,), T.F32)]
        elif arch == "qwen3moe":
            plan += [(g + "attn_q_norm.weight", "norm", (HD,), T.F32), (g + "attn_k_norm.weight", "norm", (HD,), T.F32)]
        else:
            plan += [(g + "attn_q_norm.weight", "norm", (q_dim,), T.F32),
                     (g + "attn_k_norm.weight", "norm", (kv_dim,), T.F32)]
    plan += [("output_norm.weight", "norm", (H,), T.F32)]
    if not dense:  # the dense preset ties the output to the embedding, as SmolLM2 does
        plan += [("output.weight", "q", (V, H), T.Q6_K)]

    w = gguf.GGUFWriter(a.out, arch)
    w.add_name(f"genesis synthetic {a.preset} (random weights)")
    w.add_block_count(L)
    w.add_context_length(p["ctx"])
    w.add_embedding_length(H)
    w.add_feed_forward_length(p["inter"])
    w.add_head_count(p["heads"])
    w.add_head_count_kv(p["kv_heads"])
    w.add_key_length(HD)
    w.add_value_length(HD)
    w.add_rope_freq_base(p["theta"])
    w.add_layer_norm_rms_eps(p["eps"])
    if not dense:
        w.add_expert_count(E)
        w.add_expert_used_count(p["top_k"])
        w.add_expert_feed_forward_length(MI)
    else:
        w.add_rope_dimension_count(HD)
    w.add_vocab_size(V)
    if nxt:
        w.add_expert_shared_feed_forward_length(p["shared_inter"])
        w.add_ssm_conv_kernel(p["conv"])
        w.add_ssm_state_size(p["k_dim"])
        w.add_ssm_group_count(p["k_heads"])
        w.add_ssm_time_step_rank(p["v_heads"])
        w.add_ssm_inner_size(p["v_heads"] * p["v_dim"])
        w.add_full_attention_interval(p["interval"])
        w.add_rope_dimension_count(p["rotary"])
    w.add_file_type(7 if dense else 15)  # MOSTLY_Q8_0, MOSTLY_Q4_K_M
    byte_tokens = [chr(c) for c in range(0x21, 0x7F)] + [chr(c) for c in range(0xA1, 0xAD)] + \
        [chr(c) for c in range(0xAE, 0x100)] + [chr(0x100 + i) for i in range(68)]
    tokens = byte_tokens + ["\u0120t", "he"] + [f"<synth_{i}>" for i in range(V - len(byte_tokens) - 3)] + \
        ["<|endoftext|>"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (V - 1) + [3])
    w.add_token_merges(["\u0120 t", "h e"])
    w.add_eos_token_id(V - 1)
    w.add_bos_token_id(V - 1)
    w.add_add_bos_token(False)

    total = 0
    for name, kind, shape, qtype in plan:
        if kind == "q":
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            nbytes = int(np.prod(shape)) // block * size
            byte_shape = list(shape[:-1]) + [shape[-1] // block * size]  # the writer wants the bytes' shape
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=qtype)
        else:
            nbytes = int(np.prod(shape)) * 4
            w.add_tensor_info(name, list(shape), np.dtype(np.float32), nbytes)
        total += nbytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    t0, done = time.time(), 0
    for name, kind, shape, qtype in plan:
        if kind == "q":
            rows = int(np.prod(shape[:-1]))
            arr = random_blocks(rng, qtype, rows, shape[-1])
        elif kind == "norm":
            arr = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif kind == "neg":  # ssm_a = -exp(A_log): decay rates of about 1
            arr = -np.exp(0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            arr = (0.02 * rng.standard_normal(shape)).astype(np.float32)
        w.write_tensor_data(arr)
        done += arr.nbytes
        print(f"\r{done / 2**30:6.2f} / {total / 2**30:.2f} GiB  {name:32}", end="", file=sys.stderr, flush=True)
    w.close()
    print(f"\nwrote {a.out}: {total / 2**30:.2f} GiB of tensors in {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
