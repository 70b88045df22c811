#!/usr/bin/env python3
"""Checks `genesis quantize` output against bitsandbytes itself: loads the quantized directory with transformers +
bitsandbytes (transformers 4.x: MoE experts are nn.Linear there; 5.x fuses experts into 3-D parameters and does not
load 4-bit per-expert tensors), and for every Linear4bit compares bitsandbytes' dequantization of the stored weight
with bitsandbytes quantizing the original weight itself (quantize_4bit, nf4, same blocksize): packed codes,
absmax and code book must be identical. Then runs both models
on the same ids and reports the logit difference (the original model with its Linear4bit weights dequantized).
Usage: check_quantized_with_bnb.py ORIGINAL_DIR QUANTIZED_DIR"""
import sys

import bitsandbytes as bnb
import torch
import transformers
from transformers import AutoModelForCausalLM


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    orig_dir, q_dir = sys.argv[1], sys.argv[2]
    print(f"transformers {transformers.__version__}, bitsandbytes {bnb.__version__}, torch {torch.__version__}")
    orig = AutoModelForCausalLM.from_pretrained(orig_dir, dtype=torch.float32)
    q = AutoModelForCausalLM.from_pretrained(q_dir, dtype=torch.float32, device_map="cpu")
    osd = dict(orig.named_modules())
    n = same = 0
    for name, m in q.named_modules():
        if m.__class__.__name__ != "Linear4bit":
            continue
        n += 1
        st = m.weight.quant_state
        ours = bnb.functional.dequantize_4bit(m.weight.data, st).float()
        w = osd[name].weight.data.float()
        qw, st2 = bnb.functional.quantize_4bit(w, blocksize=st.blocksize, quant_type="nf4")
        # Same packed codes, same absmax and code book (dequantized outputs differ only by the stored dtype).
        same += bool(torch.equal(m.weight.data.flatten(), qw.flatten()) and torch.equal(st.absmax, st2.absmax)
                     and torch.equal(st.code, st2.code))
        # The original model gets the NF4 weights, so both forward passes use the same values.
        osd[name].weight.data = ours.reshape(w.shape)
    print(f"{q_dir}: {same} of {n} Linear4bit weights (codes, absmax, code book) equal bitsandbytes' own quantization")
    ids = torch.tensor([[1, 17, 42, 99, 5, 77, 23, 64]])
    with torch.no_grad():
        a, b = q(ids).logits[0], orig(ids).logits[0]
    rel = ((a - b).abs().max() / b.abs().max()).item()
    print(f"logits, bitsandbytes 4-bit forward vs the same weights dequantized: max rel diff {rel:.3g}, "
          f"argmax agrees {100 * (a.argmax(-1) == b.argmax(-1)).float().mean().item():.0f}%")


if __name__ == "__main__":
    main()
