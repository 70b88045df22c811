#!/usr/bin/env python3
"""Writes tests/golden/gguf/: tiny GGUF models as llama.cpp's converter lays them out, and what a reference gives
for them, for the C++ GGUF loading tests (src/runtime/model/gguf_test.cpp; they need no Python).

For each model:
  <name>.gguf     metadata (architecture, sizes, rope, experts, a byte-level BPE tokenizer, a chat template) and
                  tensors under GGUF names, quantized as real files are: Q8_0 / Q4_0 / Q4_1 / Q5_0 quantized with the
                  `gguf` package, Q4_K / Q5_K / Q6_K as random blocks (the package has no K-quantizer), F16 / F32;
                  llama's q/k rows permuted the way convert_hf_to_gguf.py does; experts as 3-D [E, rows, cols].
  <name>.json     the reference: a transformers model whose weights are the `gguf` package's dequantization of
                  exactly those tensors (q/k un-permuted by construction: the HF model never saw the permutation),
                  its fp32 logits for fixed token ids and its greedy continuation; for MoE models also the logits
                  with every expert matrix NF4-quantized and dequantized (what Genesis does at load), and for all
                  the logits with the low-bit non-expert matrices NF4 as well (genesis --dense nf4); token ids
                  that the
                  `tokenizers` library gives for test strings with the same vocabulary, merges and pre-tokenizer.

Usage: python3 tools/make_gguf_models.py [--out tests/golden/gguf]
Needs: torch, transformers (4.57 or 5.x), tokenizers, gguf, numpy.
"""
import argparse
import json
import os

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as T
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
import transformers
from make_golden_models import nf4_roundtrip  # bitsandbytes' NF4 rules in numpy (same tools/ folder)
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

TOKENS = [5, 17, 42, 99, 7, 77, 23, 64, 8, 120, 33, 51]
NEW_TOKENS = 8
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs.",
    "Mixture-of-experts models route each token to a few experts: 8 of 128 in Qwen3-30B-A3B.",
    "Numbers like 2024, 3.14159 and 1000000 are split into digits by some tokenizers.",
    "We're testing don't, it's, they'll and I'd -- contractions -- and   spaces\n\nand newlines.",
]
TEST_STRINGS = [
    "The quick brown fox",
    "Hello world! 12345 apples, they're 3.5kg.",
    "  leading spaces and\ttabs\n\nnew lines  ",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "Ünïcödé — 日本語 and emoji 🙂",
]
QWEN2_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
               "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def train_tokenizer(vocab_size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def reference_tokenizer(trained, pre):
    """A tokenizer with the trained vocabulary/merges and the pre-tokenizer the model's `pre` names, built the way
    the models' own tokenizer.json files spell it (not the way Genesis does)."""
    data = json.loads(trained.to_str())
    tok = Tokenizer(models.BPE(vocab=data["model"]["vocab"],
                               merges=[tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
                                       for m in data["model"]["merges"]]))
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    elif pre == "qwen2":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        raise ValueError(pre)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return tok


def vocab_lists(trained):
    data = json.loads(trained.to_str())
    vocab = data["model"]["vocab"]
    for a in data["added_tokens"]:
        vocab[a["content"]] = a["id"]
    n = max(vocab.values()) + 1
    tokens = [""] * n
    for t, i in vocab.items():
        tokens[i] = t
    types = [3 if t in SPECIALS else 1 for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return tokens, types, merges


def random_kquant(rng, qtype, shape):
    """Random blocks of a K-quant with small positive scales (values of roughly +-0.3) and their dequantization."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape))
    raw = rng.integers(0, 256, size=(n // block, size), dtype=np.uint8)
    f16 = lambda v: np.asarray(v, dtype=np.float16).view(np.uint8).reshape(-1, 2)
    nb = n // block
    if qtype in (T.Q4_K, T.Q5_K):
        raw[:, 0:2] = f16(rng.uniform(1e-4, 3e-4, nb))
        raw[:, 2:4] = f16(rng.uniform(1e-4, 3e-4, nb))
    elif qtype == T.Q6_K:
        raw[:, size - 2:size] = f16(rng.uniform(-1e-4, 1e-4, nb))
    else:
        raise ValueError(qtype)
    packed = raw.reshape(*shape[:-1], shape[-1] // block * size)
    return packed, gguf.quants.dequantize(packed, qtype).astype(np.float32).reshape(shape)


def llama_permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute (HF rotate-half rows -> ggml adjacent pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class Builder:
    def __init__(self, rng):
        self.rng = rng
        self.tensors = []  # (gguf name, array, raw_dtype or None)
        self.state = {}    # HF name -> dequantized fp32 (HF layout)
        self.qtypes = {}   # HF name -> storage type

    def add(self, gguf_name, hf_name, w, qtype, permute_heads=0):
        """w: the HF fp32 weight. Quantizes (or draws random K-quant blocks), records the dequantized HF value."""
        w = np.asarray(w, dtype=np.float32)
        if hf_name is not None:
            self.qtypes[hf_name] = qtype
        if qtype in (T.Q4_K, T.Q5_K, T.Q6_K):
            packed, deq = random_kquant(self.rng, qtype, w.shape)
            self.tensors.append((gguf_name, packed, qtype))
            hf = llama_unpermute(deq, permute_heads) if permute_heads else deq
        else:
            g = llama_permute(w, permute_heads) if permute_heads else w
            if qtype == T.F32:
                self.tensors.append((gguf_name, g, None))
                deq = g
            elif qtype == T.F16:
                self.tensors.append((gguf_name, g.astype(np.float16), None))
                deq = g.astype(np.float16).astype(np.float32)
            else:
                packed = gguf.quants.quantize(g, qtype)
                self.tensors.append((gguf_name, packed, qtype))
                deq = gguf.quants.dequantize(packed, qtype).astype(np.float32).reshape(g.shape)
            hf = llama_unpermute(deq, permute_heads) if permute_heads else deq
        if hf_name is not None:
            self.state[hf_name] = hf

    def write(self, path, arch, meta):
        w = gguf.GGUFWriter(path, arch)
        for key, (kind, value) in meta.items():
            getattr(w, "add_" + kind)(key, value)
        for name, arr, qtype in self.tensors:
            if qtype is None:
                w.add_tensor(name, arr)
            else:
                w.add_tensor(name, arr, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def tokenizer_meta(tokens, types, merges, pre):
    return {
        "tokenizer.ggml.model": ("string", "gpt2"),
        "tokenizer.ggml.pre": ("string", pre),
        "tokenizer.ggml.tokens": ("array", tokens),
        "tokenizer.ggml.token_type": ("array", types),
        "tokenizer.ggml.merges": ("array", merges),
        "tokenizer.ggml.eos_token_id": ("uint32", tokens.index("<|im_end|>")),
        "tokenizer.ggml.bos_token_id": ("uint32", tokens.index("<|endoftext|>")),
        "tokenizer.ggml.add_bos_token": ("bool", False),
        "tokenizer.chat_template": ("string", CHAT_TEMPLATE),
    }


def reference(model, vocab_tok):
    model.eval()
    with torch.no_grad():
        ids = torch.tensor([TOKENS])
        logits = model(ids).logits[0].float().numpy()
        seq = list(TOKENS)
        margins = []
        for _ in range(NEW_TOKENS):
            l = model(torch.tensor([seq])).logits[0, -1].float().numpy()
            top = np.sort(l)[-2:]
            margins.append(float(top[1] - top[0]))
            seq.append(int(np.argmax(l)))
    return {
        "generator": f"tools/make_gguf_models.py, transformers {transformers.__version__}, gguf package",
        "tokens": TOKENS,
        "logits_f32": [float(x) for x in logits.reshape(-1)],
        "greedy_f32": seq[len(TOKENS):],
        "greedy_margin_f32": min(margins),
        "tokenizer": [{"text": s, "ids": vocab_tok.encode(s).ids} for s in TEST_STRINGS],
    }


LOW_BIT = (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K)
NF4_DENSE = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "mlp.gate_proj.weight",
             "mlp.up_proj.weight", "mlp.down_proj.weight", "lm_head.weight", "linear_attn.in_proj_qkvz.weight",
             "linear_attn.out_proj.weight", "shared_expert.gate_proj.weight", "shared_expert.up_proj.weight",
             "shared_expert.down_proj.weight")


def nf4_dense_state(b):
    """What Genesis holds with --dense nf4: experts NF4 (round trip), and the non-expert matrices the file stores in
    6 bits or fewer (attention, dense MLP, untied output; rows a multiple of 16, columns of 64) NF4 as well."""
    out = {}
    for k, v in b.state.items():
        expert = ".experts." in k
        dense = k.endswith(NF4_DENSE) and b.qtypes.get(k) in LOW_BIT and v.ndim == 2 and \
            v.shape[0] % 16 == 0 and v.shape[1] % 64 == 0
        out[k] = nf4_roundtrip(v.reshape(-1, v.shape[-1])).reshape(v.shape) if expert or dense else v
    return out


def logits_with(model, state):
    load_state(model, state)
    with torch.no_grad():
        return [float(x) for x in model(torch.tensor([TOKENS])).logits[0].float().numpy().reshape(-1)]


def add_nf4_expert_logits(model, b, ref):
    """The logits with every expert matrix NF4-quantized and dequantized (what Genesis holds by default)."""
    ref["logits_nf4"] = logits_with(model, {k: (nf4_roundtrip(v.reshape(-1, v.shape[-1])).reshape(v.shape)
                                                if ".experts." in k else v) for k, v in b.state.items()})


def add_nf4_dense_logits(model, b, ref):
    ref["logits_nf4_dense"] = logits_with(model, nf4_dense_state(b))
    ref["nf4_blocksize"] = 64


def load_state(model, state):
    sd = model.state_dict()
    missing = [k for k in sd if k not in state and not k.endswith("rotary_emb.inv_freq")]
    if missing:
        raise SystemExit(f"no GGUF tensor for {missing[:5]}")
    model.load_state_dict({k: torch.from_numpy(state[k]) for k in sd if k in state}, strict=False)


def make_llama(out, rng, trained):
    tokens, types, merges = vocab_lists(trained)
    V, H, I, L, NH, NKV = len(tokens), 256, 512, 2, 4, 2
    cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=L,
                      num_attention_heads=NH, num_key_value_heads=NKV, max_position_embeddings=256,
                      rms_norm_eps=1e-5, rope_theta=10000.0, initializer_range=0.1, tie_word_embeddings=False,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg).float()
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    b = Builder(rng)
    b.add("token_embd.weight", "model.embed_tokens.weight", sd["model.embed_tokens.weight"], T.Q8_0)
    b.add("output_norm.weight", "model.norm.weight", 1 + 0.1 * rng.standard_normal(H), T.F32)
    b.add("output.weight", "lm_head.weight", sd["lm_head.weight"], T.Q6_K)
    for l in range(L):
        p, g = f"model.layers.{l}.", f"blk.{l}."
        b.add(g + "attn_norm.weight", p + "input_layernorm.weight", 1 + 0.1 * rng.standard_normal(H), T.F32)
        b.add(g + "ffn_norm.weight", p + "post_attention_layernorm.weight", 1 + 0.1 * rng.standard_normal(H), T.F32)
        b.add(g + "attn_q.weight", p + "self_attn.q_proj.weight", sd[p + "self_attn.q_proj.weight"], T.Q4_0, NH)
        b.add(g + "attn_k.weight", p + "self_attn.k_proj.weight", sd[p + "self_attn.k_proj.weight"], T.Q8_0, NKV)
        b.add(g + "attn_v.weight", p + "self_attn.v_proj.weight", sd[p + "self_attn.v_proj.weight"], T.Q5_0)
        b.add(g + "attn_output.weight", p + "self_attn.o_proj.weight", sd[p + "self_attn.o_proj.weight"], T.Q4_1)
        b.add(g + "ffn_gate.weight", p + "mlp.gate_proj.weight", sd[p + "mlp.gate_proj.weight"], T.Q4_K)
        b.add(g + "ffn_up.weight", p + "mlp.up_proj.weight", sd[p + "mlp.up_proj.weight"], T.Q5_K)
        b.add(g + "ffn_down.weight", p + "mlp.down_proj.weight", sd[p + "mlp.down_proj.weight"], T.Q6_K)
    meta = {
        "general.name": ("string", "genesis tiny llama (random weights)"),
        "llama.block_count": ("uint32", L), "llama.context_length": ("uint32", 256),
        "llama.embedding_length": ("uint32", H), "llama.feed_forward_length": ("uint32", I),
        "llama.attention.head_count": ("uint32", NH), "llama.attention.head_count_kv": ("uint32", NKV),
        "llama.rope.freq_base": ("float32", 10000.0), "llama.attention.layer_norm_rms_epsilon": ("float32", 1e-5),
        "llama.vocab_size": ("uint32", V), "llama.rope.dimension_count": ("uint32", H // NH),
    }
    meta.update(tokenizer_meta(tokens, types, merges, "smollm"))
    b.write(os.path.join(out, "tiny_llama.gguf"), "llama", meta)
    cfg.rms_norm_eps = float(np.float32(1e-5))
    model = LlamaForCausalLM(cfg).float()
    load_state(model, b.state)
    ref = reference(model, reference_tokenizer(trained, "smollm"))
    add_nf4_dense_logits(model, b, ref)
    return ref


def make_qwen3moe(out, rng, trained):
    tokens, types, merges = vocab_lists(trained)
    V, H, MI, L, NH, NKV, HD, E, K = len(tokens), 256, 256, 2, 4, 2, 64, 4, 2
    cfg = Qwen3MoeConfig(vocab_size=V, hidden_size=H, intermediate_size=512, moe_intermediate_size=MI,
                         num_hidden_layers=L, num_attention_heads=NH, num_key_value_heads=NKV, head_dim=HD,
                         num_experts=E, num_experts_per_tok=K, norm_topk_prob=True, decoder_sparse_step=1,
                         mlp_only_layers=[], max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=1000000.0,
                         initializer_range=0.1, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
                         pad_token_id=None)
    torch.manual_seed(2)
    model = Qwen3MoeForCausalLM(cfg).float()
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    b = Builder(rng)
    b.add("token_embd.weight", "model.embed_tokens.weight", sd["model.embed_tokens.weight"], T.F16)
    b.state["lm_head.weight"] = b.state["model.embed_tokens.weight"]
    b.add("output_norm.weight", "model.norm.weight", 1 + 0.1 * rng.standard_normal(H), T.F32)
    for l in range(L):
        p, g = f"model.layers.{l}.", f"blk.{l}."
        b.add(g + "attn_norm.weight", p + "input_layernorm.weight", 1 + 0.1 * rng.standard_normal(H), T.F32)
        b.add(g + "ffn_norm.weight", p + "post_attention_layernorm.weight", 1 + 0.1 * rng.standard_normal(H), T.F32)
        b.add(g + "attn_q.weight", p + "self_attn.q_proj.weight", sd[p + "self_attn.q_proj.weight"], T.Q8_0)
        b.add(g + "attn_k.weight", p + "self_attn.k_proj.weight", sd[p + "self_attn.k_proj.weight"], T.Q4_0)
        b.add(g + "attn_v.weight", p + "self_attn.v_proj.weight", sd[p + "self_attn.v_proj.weight"], T.Q8_0)
        b.add(g + "attn_output.weight", p + "self_attn.o_proj.weight", sd[p + "self_attn.o_proj.weight"], T.Q5_0)
        b.add(g + "attn_q_norm.weight", p + "self_attn.q_norm.weight", 1 + 0.1 * rng.standard_normal(HD), T.F32)
        b.add(g + "attn_k_norm.weight", p + "self_attn.k_norm.weight", 1 + 0.1 * rng.standard_normal(HD), T.F32)
        b.add(g + "ffn_gate_inp.weight", p + "mlp.gate.weight", sd[p + "mlp.gate.weight"], T.F32)
        for kind, qtype, shape in (("gate", T.Q4_K, (E, MI, H)), ("up", T.Q4_K, (E, MI, H)),
                                   ("down", T.Q6_K, (E, H, MI))):
            packed, deq = random_kquant(rng, qtype, shape)
            b.tensors.append((g + f"ffn_{kind}_exps.weight", packed, qtype))
            fused = p + "mlp.experts." + ("down_proj" if kind == "down" else "gate_up_proj")
            for e in range(E):
                b.state[f"{p}mlp.experts.{e}.{kind}_proj.weight"] = deq[e]
            if kind == "up":  # transformers 5.x keeps experts fused: gate rows, then up rows
                b.state[fused] = np.concatenate([b.state[f"{p}mlp.experts.{e}.gate_proj.weight"][None] for e in
                                                 range(E)], 0)
                b.state[fused] = np.concatenate([b.state[fused], deq], 1)
            elif kind == "down":
                b.state[fused] = deq
    meta = {
        "general.name": ("string", "genesis tiny qwen3moe (random weights)"),
        "qwen3moe.block_count": ("uint32", L), "qwen3moe.context_length": ("uint32", 256),
        "qwen3moe.embedding_length": ("uint32", H), "qwen3moe.feed_forward_length": ("uint32", 512),
        "qwen3moe.attention.head_count": ("uint32", NH), "qwen3moe.attention.head_count_kv": ("uint32", NKV),
        "qwen3moe.attention.key_length": ("uint32", HD), "qwen3moe.attention.value_length": ("uint32", HD),
        "qwen3moe.rope.freq_base": ("float32", 1000000.0),
        "qwen3moe.attention.layer_norm_rms_epsilon": ("float32", 1e-6),
        "qwen3moe.expert_count": ("uint32", E), "qwen3moe.expert_used_count": ("uint32", K),
        "qwen3moe.expert_feed_forward_length": ("uint32", MI),
    }
    meta.update(tokenizer_meta(tokens, types, merges, "qwen2"))
    b.write(os.path.join(out, "tiny_qwen3moe.gguf"), "qwen3moe", meta)
    cfg.rms_norm_eps = float(np.float32(1e-6))
    model = Qwen3MoeForCausalLM(cfg).float()
    load_state(model, b.state)
    ref = reference(model, reference_tokenizer(trained, "qwen2"))
    add_nf4_expert_logits(model, b, ref)
    add_nf4_dense_logits(model, b, ref)
    return ref


HF_TO_GGUF = [  # (suffix of a Hugging Face layer tensor, GGUF suffix, storage type)
    ("input_layernorm.weight", "attn_norm.weight", T.F32), ("post_attention_layernorm.weight", "ffn_norm.weight", T.F32),
    ("self_attn.q_proj.weight", "attn_q.weight", T.Q4_0), ("self_attn.q_proj.bias", "attn_q.bias", T.F32),
    ("self_attn.k_proj.weight", "attn_k.weight", T.Q8_0), ("self_attn.k_proj.bias", "attn_k.bias", T.F32),
    ("self_attn.v_proj.weight", "attn_v.weight", T.Q5_1), ("self_attn.v_proj.bias", "attn_v.bias", T.F32),
    ("self_attn.o_proj.weight", "attn_output.weight", T.Q4_1),
    ("self_attn.q_norm.weight", "attn_q_norm.weight", T.F32), ("self_attn.k_norm.weight", "attn_k_norm.weight", T.F32),
    ("mlp.gate_proj.weight", "ffn_gate.weight", T.Q4_0), ("mlp.up_proj.weight", "ffn_up.weight", T.Q5_0),
    ("mlp.down_proj.weight", "ffn_down.weight", T.Q8_0),
    ("mlp.gate.weight", "ffn_gate_inp.weight", T.F32), ("block_sparse_moe.gate.weight", "ffn_gate_inp.weight", T.F32),
]
EXPERT_NAMES = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down", "w1": "gate", "w3": "up", "w2": "down"}
EXPERT_TYPES = {"gate": T.Q5_0, "up": T.Q4_1, "down": T.Q8_0}


def make_small(out, name, gguf_arch, model_cls, cfg, meta_extra, pre, trained, permute, seed):
    """A small model of any architecture from its transformers class: every HF tensor mapped to its GGUF name and
    quantized with block-32 formats (so sizes can stay small), experts stacked into 3-D tensors, llama's q/k
    permuted when `permute`. Returns the reference (fp32 and, for MoE models, NF4-experts logits)."""
    import re
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = model_cls(cfg).float()
    sd = {k: v.float().numpy() for k, v in model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    b = Builder(rng)
    heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}
    experts = {}  # (layer, kind) -> {e: array}
    expert_keys = {}
    for k, v in sd.items():
        if k in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
            continue
        m = re.match(r"model\.layers\.(\d+)\.(.*)$", k)
        if not m:
            raise SystemExit(f"unmapped tensor {k}")
        layer, rest = int(m.group(1)), m.group(2)
        e = re.match(r"(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(\w+)\.weight$", rest)
        if e:
            kind = EXPERT_NAMES[e.group(2)]
            experts.setdefault((layer, kind), {})[int(e.group(1))] = v
            expert_keys[(layer, kind, int(e.group(1)))] = k
            continue
        for hf, gg, qtype in HF_TO_GGUF:
            if rest == hf:
                base = gg.split(".")[0]
                if "norm" in hf:
                    v = 1 + 0.1 * rng.standard_normal(v.shape)
                elif hf.endswith(".bias"):
                    v = 0.1 * rng.standard_normal(v.shape)
                b.add(f"blk.{layer}.{gg}", k, v, qtype, heads.get(base, 0) if permute else 0)
                break
        else:
            raise SystemExit(f"unmapped tensor {k}")
    for (layer, kind), by_e in sorted(experts.items()):
        stacked = np.stack([by_e[i] for i in range(len(by_e))]).astype(np.float32)
        packed = gguf.quants.quantize(stacked, EXPERT_TYPES[kind])
        deq = gguf.quants.dequantize(packed, EXPERT_TYPES[kind]).astype(np.float32).reshape(stacked.shape)
        b.tensors.append((f"blk.{layer}.ffn_{kind}_exps.weight", packed, EXPERT_TYPES[kind]))
        for i in range(len(by_e)):
            b.state[expert_keys[(layer, kind, i)]] = deq[i]
    b.add("token_embd.weight", "model.embed_tokens.weight", sd["model.embed_tokens.weight"], T.Q8_0)
    b.add("output_norm.weight", "model.norm.weight", 1 + 0.1 * rng.standard_normal(cfg.hidden_size), T.F32)
    if cfg.tie_word_embeddings:
        b.state["lm_head.weight"] = b.state["model.embed_tokens.weight"]
    else:
        b.add("output.weight", "lm_head.weight", sd["lm_head.weight"], T.Q8_0)
    tokens, types, merges = vocab_lists(trained)
    A = gguf_arch + "."
    meta = {A + "block_count": ("uint32", cfg.num_hidden_layers), A + "context_length": ("uint32", 256),
            A + "embedding_length": ("uint32", cfg.hidden_size),
            A + "attention.head_count": ("uint32", cfg.num_attention_heads),
            A + "attention.head_count_kv": ("uint32", cfg.num_key_value_heads),
            A + "rope.freq_base": ("float32", float(cfg.rope_theta)),
            A + "attention.layer_norm_rms_epsilon": ("float32", float(cfg.rms_norm_eps)),
            "general.name": ("string", f"genesis {name} (random weights)")}
    meta.update({A + k: v for k, v in meta_extra.items()})
    meta.update(tokenizer_meta(tokens, types, merges, pre))
    b.write(os.path.join(out, name + ".gguf"), gguf_arch, meta)
    cfg.rms_norm_eps = float(np.float32(cfg.rms_norm_eps))
    model = model_cls(cfg).float()
    load_state(model, b.state)
    ref = reference(model, reference_tokenizer(trained, pre))
    if experts:
        add_nf4_expert_logits(model, b, ref)
    add_nf4_dense_logits(model, b, ref)
    return ref


def small_models(trained):
    from transformers import MixtralConfig, MixtralForCausalLM, OlmoeConfig, OlmoeForCausalLM, Qwen2Config, \
        Qwen2ForCausalLM
    V = len(vocab_lists(trained)[0])
    common = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, initializer_range=0.1, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None)
    yield ("tiny_mixtral", "llama", MixtralForCausalLM,
           MixtralConfig(**common, intermediate_size=128, num_local_experts=4, num_experts_per_tok=2,
                         rms_norm_eps=1e-5, rope_theta=1e6, tie_word_embeddings=False, sliding_window=None),
           {"feed_forward_length": ("uint32", 128), "expert_count": ("uint32", 4), "expert_used_count": ("uint32", 2),
            "rope.dimension_count": ("uint32", 16)}, "smollm", True)
    yield ("tiny_olmoe", "olmoe", OlmoeForCausalLM,
           OlmoeConfig(**common, intermediate_size=128, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False,
                       rms_norm_eps=1e-5, rope_theta=1e4, tie_word_embeddings=False, clip_qkv=None),
           {"feed_forward_length": ("uint32", 128), "expert_count": ("uint32", 4), "expert_used_count": ("uint32", 2),
            "rope.dimension_count": ("uint32", 16)}, "qwen2", False)
    from transformers import Qwen3Config, Qwen3ForCausalLM
    yield ("tiny_qwen3", "qwen3", Qwen3ForCausalLM,
           Qwen3Config(**common, intermediate_size=128, head_dim=32, rms_norm_eps=1e-6, rope_theta=1e6,
                       tie_word_embeddings=True, use_sliding_window=False),
           {"feed_forward_length": ("uint32", 128), "attention.key_length": ("uint32", 32),
            "attention.value_length": ("uint32", 32), "rope.dimension_count": ("uint32", 32)}, "qwen2", False)
    yield ("tiny_qwen2", "qwen2", Qwen2ForCausalLM,
           Qwen2Config(**common, intermediate_size=128, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True,
                       use_sliding_window=False),
           {"feed_forward_length": ("uint32", 128)}, "qwen2", False)


def make_qwen3next(out, rng, trained):
    """Qwen3-Next in llama.cpp's qwen3next layout (convert_hf_to_gguf.py's Qwen3NextModel): in_proj_qkvz as ssm_in,
    in_proj_ba as ssm_ba, the conv1d weight squeezed to [channels, kernel] (F32), dt_bias as ssm_dt.bias, -exp(A_log)
    as ssm_a, the gated norm as ssm_norm, out_proj as ssm_out; post_attention_layernorm as post_attention_norm; the
    shared expert as ffn_*_shexp with its gate ffn_gate_inp_shexp ([hidden]); every RMSNorm but ssm_norm stored as
    1 + w. Four layers: Gated DeltaNet, gated attention, Gated DeltaNet with a dense MLP, gated attention. Also
    tiny_qwen3next_split.gguf: the same weights with ssm_in split as newer converters do (attn_qkv + attn_gate)."""
    import re
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM
    tokens, types, merges = vocab_lists(trained)
    V, H, L = len(tokens), 64, 4
    cfg = Qwen3NextConfig(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=16, intermediate_size=128, moe_intermediate_size=64,
                          shared_expert_intermediate_size=64, num_experts=4, num_experts_per_tok=2,
                          norm_topk_prob=True, mlp_only_layers=[2],
                          layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
                          linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                          linear_value_head_dim=16, linear_conv_kernel_dim=4, partial_rotary_factor=0.25,
                          rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=256, initializer_range=0.1,
                          tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(13)
    model = Qwen3NextForCausalLM(cfg).float()
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    b = Builder(rng)

    def offset_norm(gguf_name, hf_name, n):
        stored = (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)
        b.tensors.append((gguf_name, stored, None))
        b.state[hf_name] = (stored - np.float32(1)).astype(np.float32)  # exact: 1 + (s - 1) == s in fp32

    simple = {  # HF suffix -> (GGUF suffix, type)
        "self_attn.q_proj.weight": ("attn_q.weight", T.Q4_0), "self_attn.k_proj.weight": ("attn_k.weight", T.Q8_0),
        "self_attn.v_proj.weight": ("attn_v.weight", T.Q5_1), "self_attn.o_proj.weight": ("attn_output.weight", T.Q4_1),
        "linear_attn.in_proj_qkvz.weight": ("ssm_in.weight", T.Q8_0),
        "linear_attn.in_proj_ba.weight": ("ssm_ba.weight", T.Q8_0),
        "linear_attn.out_proj.weight": ("ssm_out.weight", T.Q4_0),
        "mlp.gate.weight": ("ffn_gate_inp.weight", T.F32),
        "mlp.shared_expert.gate_proj.weight": ("ffn_gate_shexp.weight", T.Q5_0),
        "mlp.shared_expert.up_proj.weight": ("ffn_up_shexp.weight", T.Q8_0),
        "mlp.shared_expert.down_proj.weight": ("ffn_down_shexp.weight", T.Q4_1),
        "mlp.gate_proj.weight": ("ffn_gate.weight", T.Q4_0), "mlp.up_proj.weight": ("ffn_up.weight", T.Q5_0),
        "mlp.down_proj.weight": ("ffn_down.weight", T.Q8_0),
    }
    for k, v in sd.items():
        m = re.match(r"model\.layers\.(\d+)\.(.*)$", k)
        if not m:
            continue
        g, rest = f"blk.{m.group(1)}.", m.group(2)
        if rest in ("input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_norm.weight",
                    "self_attn.k_norm.weight"):
            gg = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight":
                  "post_attention_norm.weight", "self_attn.q_norm.weight": "attn_q_norm.weight",
                  "self_attn.k_norm.weight": "attn_k_norm.weight"}[rest]
            offset_norm(g + gg, k, v.shape[0])
        elif rest == "linear_attn.norm.weight":
            b.add(g + "ssm_norm.weight", k, 1 + 0.1 * rng.standard_normal(v.shape), T.F32)
        elif rest == "linear_attn.A_log":
            a_log = torch.from_numpy((0.5 * rng.standard_normal(v.shape) - 1.0).astype(np.float32))
            b.tensors.append((g + "ssm_a", (-torch.exp(a_log)).numpy(), None))  # what transformers computes
            b.state[k] = a_log.numpy()
        elif rest == "linear_attn.dt_bias":
            b.add(g + "ssm_dt.bias", k, 0.3 * rng.standard_normal(v.shape), T.F32)
        elif rest == "linear_attn.conv1d.weight":
            w = (0.3 * rng.standard_normal(v.shape)).astype(np.float32)
            b.tensors.append((g + "ssm_conv1d.weight", w[:, 0, :].copy(), None))
            b.state[k] = w
        elif rest == "mlp.shared_expert_gate.weight":
            b.add(g + "ffn_gate_inp_shexp.weight", None, v[0], T.F32)
            b.state[k] = v.astype(np.float32)
        elif rest in simple:
            gg, qtype = simple[rest]
            b.add(g + gg, k, v, qtype)
        elif rest in ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"):
            continue  # below
        else:
            raise SystemExit(f"unmapped tensor {k}")
    for l in range(L):
        p, g = f"model.layers.{l}.", f"blk.{l}."
        if p + "mlp.experts.gate_up_proj" not in sd:
            continue
        gu, down = sd[p + "mlp.experts.gate_up_proj"], sd[p + "mlp.experts.down_proj"]
        I = gu.shape[1] // 2
        deq = {}
        for kind, arr in (("gate", gu[:, :I]), ("up", gu[:, I:]), ("down", down)):
            arr = np.ascontiguousarray(arr, dtype=np.float32)
            packed = gguf.quants.quantize(arr, EXPERT_TYPES[kind])
            deq[kind] = gguf.quants.dequantize(packed, EXPERT_TYPES[kind]).astype(np.float32).reshape(arr.shape)
            b.tensors.append((g + f"ffn_{kind}_exps.weight", packed, EXPERT_TYPES[kind]))
        b.state[p + "mlp.experts.gate_up_proj"] = np.concatenate([deq["gate"], deq["up"]], 1)
        b.state[p + "mlp.experts.down_proj"] = deq["down"]
    b.add("token_embd.weight", "model.embed_tokens.weight", sd["model.embed_tokens.weight"], T.Q8_0)
    offset_norm("output_norm.weight", "model.norm.weight", H)
    b.add("output.weight", "lm_head.weight", sd["lm_head.weight"], T.Q8_0)
    A = "qwen3next."
    meta = {A + "block_count": ("uint32", L), A + "context_length": ("uint32", 256),
            A + "embedding_length": ("uint32", H), A + "feed_forward_length": ("uint32", 128),
            A + "attention.head_count": ("uint32", 4), A + "attention.head_count_kv": ("uint32", 2),
            A + "attention.key_length": ("uint32", 16), A + "attention.value_length": ("uint32", 16),
            A + "rope.freq_base": ("float32", 1e6), A + "rope.dimension_count": ("uint32", 4),
            A + "attention.layer_norm_rms_epsilon": ("float32", 1e-6),
            A + "expert_count": ("uint32", 4), A + "expert_used_count": ("uint32", 2),
            A + "expert_feed_forward_length": ("uint32", 64), A + "expert_shared_feed_forward_length": ("uint32", 64),
            A + "ssm.conv_kernel": ("uint32", 4), A + "ssm.state_size": ("uint32", 16),
            A + "ssm.group_count": ("uint32", 2), A + "ssm.time_step_rank": ("uint32", 4),
            A + "ssm.inner_size": ("uint32", 64), A + "full_attention_interval": ("uint32", 2),
            "general.name": ("string", "genesis tiny qwen3next (random weights)")}
    meta.update(tokenizer_meta(tokens, types, merges, "qwen2"))
    b.write(os.path.join(out, "tiny_qwen3next.gguf"), "qwen3next", meta)
    # The same model as newer converters write it: ssm_in split into attn_qkv (rows in the conv channels' order: every
    # key head's q, then k, then every value head's v) and attn_gate (z). Whole Q8_0 rows move: the same weights.
    fused = list(b.tensors)
    nk, nv, dk, dv = 2, 4, 16, 16
    r, group = nv // nk, 2 * dk + 2 * (nv // nk) * dv
    rows = lambda g, lo, n: [g * group + lo + i for i in range(n)]
    qkv_rows = sum((rows(g, 0, dk) for g in range(nk)), []) + sum((rows(g, dk, dk) for g in range(nk)), []) + \
        sum((rows(g, 2 * dk, r * dv) for g in range(nk)), [])
    z_rows = sum((rows(g, 2 * dk + r * dv, r * dv) for g in range(nk)), [])
    b.tensors = []
    for name, arr, qtype in fused:
        if name.endswith(".ssm_in.weight"):
            blk = name[:-len("ssm_in.weight")]
            b.tensors.append((blk + "attn_qkv.weight", np.ascontiguousarray(arr[qkv_rows]), qtype))
            b.tensors.append((blk + "attn_gate.weight", np.ascontiguousarray(arr[z_rows]), qtype))
        else:
            b.tensors.append((name, arr, qtype))
    b.write(os.path.join(out, "tiny_qwen3next_split.gguf"), "qwen3next", meta)
    b.tensors = fused
    model = Qwen3NextForCausalLM(cfg).float()
    load_state(model, b.state)
    ref = reference(model, reference_tokenizer(trained, "qwen2"))
    ref["logits_nf4"] = logits_with(model, {k: (nf4_roundtrip(v.reshape(-1, v.shape[-1])).reshape(v.shape)
                                                if ".experts." in k else v) for k, v in b.state.items()})
    add_nf4_dense_logits(model, b, ref)
    return ref


SPM_STRINGS = ["the quick brown fox", "Hello world!", " jumps  over the lazy dog 42", "tokenizer \u00e9\u00e9 \u65e5"]


def make_spm_vocab(out):
    """A vocabulary-only llama GGUF with a sentencepiece-style tokenizer (tokenizer.ggml.model = llama: scores, byte
    tokens, no merges) and the ids transformers' GGUF tokenizer converter gives for SPM_STRINGS (llama.cpp gives the
    same ids; checked by hand with llama-cpp-python's vocab_only mode)."""
    sp = "\u2581"
    rng = np.random.default_rng(0)
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0] * len(pieces)
    normal = set(sp + "abcdefghijklmnopqrstuvwxyz,.!?0123456789")
    for w in ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hello", "world", "token", "izer"]:
        t = sp + w
        normal.update(t[i:j] for i in range(len(t)) for j in range(i + 1, len(t) + 1))
    for p in sorted(normal, key=lambda x: (len(x), x)):
        pieces.append(p)
        types.append(1)
        scores.append(float(-0.5 * len(p) + rng.uniform(-0.4, 0.4)) if len(p) > 1 else -100.0 - rng.uniform(0, 1))
    H = 32
    b = Builder(rng)
    b.add("token_embd.weight", None, np.zeros((len(pieces), H)), T.F16)
    meta = {"llama.block_count": ("uint32", 1), "llama.context_length": ("uint32", 64),
            "llama.embedding_length": ("uint32", H), "llama.feed_forward_length": ("uint32", 64),
            "llama.attention.head_count": ("uint32", 4), "llama.attention.head_count_kv": ("uint32", 4),
            "llama.attention.layer_norm_rms_epsilon": ("float32", 1e-5),
            "tokenizer.ggml.model": ("string", "llama"), "tokenizer.ggml.tokens": ("array", pieces),
            "tokenizer.ggml.scores": ("array", scores), "tokenizer.ggml.token_type": ("array", types),
            "tokenizer.ggml.bos_token_id": ("uint32", 1), "tokenizer.ggml.eos_token_id": ("uint32", 2),
            "tokenizer.ggml.unknown_token_id": ("uint32", 0), "tokenizer.ggml.add_bos_token": ("bool", True)}
    path = os.path.join(out, "tiny_spm_vocab.gguf")
    b.write(path, "llama", meta)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out, gguf_file="tiny_spm_vocab.gguf")
    ref = {"generator": f"tools/make_gguf_models.py, transformers {transformers.__version__} GGUF tokenizer",
           "tokenizer": [{"text": s, "ids": tok.encode(s)} for s in SPM_STRINGS]}
    with open(os.path.join(out, "tiny_spm_vocab.json"), "w") as f:
        json.dump(ref, f, indent=1)


def make_fuzz_seed(path):
    """A small whole model (2 tiny layers, a 264-token vocabulary) for fuzz/gguf_model_fuzz.cpp to start from."""
    rng = np.random.default_rng(3)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    byte_tokens = list(pre_tokenizers.ByteLevel.alphabet())
    tokens = sorted(byte_tokens) + ["\u0120t", "he", "\u0120the"] + specials
    types = [3 if t in specials else 1 for t in tokens]
    merges = ["\u0120 t", "h e", "\u0120t he"]
    H, I, V = 32, 64, len(tokens)
    b = Builder(rng)
    b.add("token_embd.weight", None, rng.standard_normal((V, H)) * 0.1, T.Q8_0)
    b.add("output_norm.weight", None, np.ones(H), T.F32)
    for l in range(2):
        g = f"blk.{l}."
        for n, shape, q in (("attn_norm", (H,), T.F32), ("ffn_norm", (H,), T.F32), ("attn_q", (H, H), T.Q4_0),
                            ("attn_k", (16, H), T.Q4_1), ("attn_v", (16, H), T.Q5_0), ("attn_output", (H, H), T.Q8_0),
                            ("ffn_gate", (I, H), T.Q5_1), ("ffn_up", (I, H), T.F16), ("ffn_down", (H, I), T.Q8_0)):
            b.add(g + n + ".weight", None, rng.standard_normal(shape) * 0.1, q)
    meta = {"llama.block_count": ("uint32", 2), "llama.context_length": ("uint32", 64),
            "llama.embedding_length": ("uint32", H), "llama.feed_forward_length": ("uint32", I),
            "llama.attention.head_count": ("uint32", 4), "llama.attention.head_count_kv": ("uint32", 2),
            "llama.attention.layer_norm_rms_epsilon": ("float32", 1e-5), "llama.rope.freq_base": ("float32", 1e4)}
    meta.update(tokenizer_meta(tokens, types, merges, "llama-bpe"))
    b.write(path, "llama", meta)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/golden/gguf")
    ap.add_argument("--fuzz-seed", help="also write the fuzzer's seed model here (fuzz/seeds/gguf/tiny_model.gguf)")
    ap.add_argument("--only", nargs="*", help="write only these models (e.g. tiny_qwen3next)")
    a = ap.parse_args()
    if a.only:
        os.makedirs(a.out, exist_ok=True)
        trained = train_tokenizer(300)
        for name in a.only:
            fn = {"tiny_qwen3next": make_qwen3next, "tiny_llama": make_llama, "tiny_qwen3moe": make_qwen3moe}[name]
            ref = fn(a.out, np.random.default_rng(len(name)), trained)
            with open(os.path.join(a.out, name + ".json"), "w") as f:
                json.dump(ref, f)
            print(f"{name}: greedy {ref['greedy_f32']} (margin {ref['greedy_margin_f32']:.4f})")
        return
    if a.fuzz_seed:
        make_fuzz_seed(a.fuzz_seed)
    os.makedirs(a.out, exist_ok=True)
    trained = train_tokenizer(300)
    for name, fn in (("tiny_llama", make_llama), ("tiny_qwen3moe", make_qwen3moe), ("tiny_qwen3next", make_qwen3next)):
        ref = fn(a.out, np.random.default_rng(len(name)), trained)
        with open(os.path.join(a.out, name + ".json"), "w") as f:
            json.dump(ref, f)
        print(f"{name}: greedy {ref['greedy_f32']} (margin {ref['greedy_margin_f32']:.4f})")
    for seed, (name, arch, cls, cfg, meta, pre, permute) in enumerate(small_models(trained)):
        ref = make_small(a.out, name, arch, cls, cfg, meta, pre, trained, permute, 10 + seed)
        with open(os.path.join(a.out, name + ".json"), "w") as f:
            json.dump(ref, f)
        print(f"{name}: greedy {ref['greedy_f32']} (margin {ref['greedy_margin_f32']:.4f})")
    make_spm_vocab(a.out)


if __name__ == "__main__":
    main()
