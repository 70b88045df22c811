#!/usr/bin/env python3
"""Writes src/runtime/io/testdata/bnb_golden.safetensors: weights quantized by the real bitsandbytes (CPU backend),
saved under the tensor names transformers uses (Params4bit + QuantState.as_dict(packed=True)), next to their bf16
source and bitsandbytes' own fp32 dequantization. bnb_test.cpp loads it with no Python. Re-run only to refresh:
  pip install torch bitsandbytes safetensors && python3 tools/make_bnb_golden.py
"""
import json
import os

import bitsandbytes as bnb
import bitsandbytes.functional as F
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute, _get_4bit_code
import torch
from safetensors.torch import save_file

torch.manual_seed(1234)
out = {}
cases = [
    # name, shape, blocksize, double quant
    ("plain", (48, 64), 64, False),      # whole blocks
    ("tail", (10, 30), 64, False),       # 300 elements: last block holds 44, odd shapes
    ("dq", (65, 128), 32, True),         # 260 blocks -> two nested blocks of 256
    ("dq64", (24, 96), 64, True),        # one nested block
    ("zerotail", (3, 50), 64, False),    # partial last block of zeros: bnb stores absmax 1e-38 there
]
meta = {}
for name, shape, bs, dq in cases:
    w = (torch.randn(shape) * 0.02).to(torch.bfloat16)
    if name == "tail":
        w[9, 20:] = 0  # zeros inside the partial last block
    if name == "zerotail":
        w[2, 22:] = 0  # the whole partial last block (elements 128..149) is zero
    packed, qs = F.quantize_4bit(w, blocksize=bs, compress_statistics=dq, quant_type="nf4")
    out[f"src.{name}"] = w.contiguous()
    out[f"{name}.weight"] = packed.contiguous()
    for k, v in qs.as_dict(packed=True).items():
        out[f"{name}.weight.{k}"] = v.contiguous()
    # The absmax bnb's dequantize_4bit multiplies by (decoded from the double quantization when there is one).
    absmax = qs.absmax.float().clone()
    if dq:
        absmax = F.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
        out[f"{name}.offset_f32"] = qs.offset.reshape(1).float()
    out[f"{name}.decoded_absmax"] = absmax.contiguous()
    # bnb dequantizes to the weight dtype (bf16). Its generic (pure torch) path is the reference: the C++ CPU kernel of
    # bitsandbytes 0.50.2 gets rows wrong when a block straddles two rows (e.g. [24, 96] with blocksize 64).
    ref = _dequantize_4bit_compute(packed.reshape(-1), absmax, _get_4bit_code("nf4", "cpu"), bs, shape, torch.bfloat16)
    kernel = F.dequantize_4bit(packed, qs)
    print(f"{name}: bnb CPU kernel dequantization differs from the generic path in",
          int((kernel != ref).sum()), "of", ref.numel(), "elements")
    out[f"{name}.dequant_bf16"] = ref.contiguous()
    meta[name] = json.dumps({"shape": list(shape), "blocksize": bs, "double_quant": dq})
meta["bitsandbytes"] = bnb.__version__
meta["torch"] = torch.__version__
path = os.path.join(os.path.dirname(__file__), "..", "src", "runtime", "io", "testdata", "bnb_golden.safetensors")
save_file(out, path, metadata=meta)
print("wrote", os.path.normpath(path), os.path.getsize(path), "bytes")
for k in sorted(out):
    print(f"  {k}: {out[k].dtype} {list(out[k].shape)}")
print(bytes(out["dq.weight.quant_state.bitsandbytes__nf4"].tolist()).decode())
