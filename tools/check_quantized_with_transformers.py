#!/usr/bin/env python3
"""Loads `genesis quantize` output with transformers + bitsandbytes and compares its logits with the reference
logits of the same model (tests/golden/<arch>/reference.json: transformers with the experts NF4-quantized and
dequantized, fp32). Needs torch, transformers and bitsandbytes (bitsandbytes >= 0.45 runs 4-bit on the CPU too).
Usage: check_quantized_with_transformers.py QUANTIZED_DIR REFERENCE_JSON"""
import json
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    qdir, ref_path = sys.argv[1], sys.argv[2]
    ref = json.load(open(ref_path))
    import bitsandbytes
    print(f"transformers {transformers.__version__}, bitsandbytes {bitsandbytes.__version__}, torch {torch.__version__}")
    dev = "cuda:0" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(qdir, device_map=dev, dtype=torch.float32)
    n4 = sum(1 for m in model.modules() if m.__class__.__name__ == "Linear4bit")
    print(f"{qdir}: {n4} Linear4bit modules")
    ids = torch.tensor([ref["tokens"]], device=dev)
    with torch.no_grad():
        logits = model(ids).logits[0].float().cpu()
    want = torch.tensor(ref["logits_nf4"]).reshape(logits.shape)
    rel = (logits - want).abs().max().item() / want.abs().max().item()
    agree = (logits.argmax(-1) == want.argmax(-1)).float().mean().item()
    print(f"max |logit diff| / max |logit| = {rel:.3g}; argmax agrees at {100 * agree:.0f}% of positions")


if __name__ == "__main__":
    main()
