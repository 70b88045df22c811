#!/usr/bin/env python3
"""Writes src/quant/testdata/ggml_golden.gguf: one small tensor per ggml storage type Genesis dequantizes, each
followed by "<name>.expected", the F32 values the `gguf` package's reference dequantizer (gguf.quants.dequantize)
gives for it, plus metadata values of every GGUF type. Quantized blocks are random bytes with finite scales, so every
code path of a format is reached. The C++ tests compare Genesis's dequantization with .expected bit for bit.
Usage: make_gguf_golden.py OUT.gguf   (needs: pip install gguf numpy)"""
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T


def random_blocks(rng, qtype, n_elems):
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    nb = n_elems // block
    raw = rng.integers(0, 256, size=(nb, type_size), dtype=np.uint8)
    # Overwrite the fp16 scale fields with finite values of moderate size.
    def f16(v):
        return np.array(v, dtype=np.float16).view(np.uint8).reshape(-1, 2)
    scale = rng.uniform(-0.05, 0.05, size=nb)
    mins = rng.uniform(-0.05, 0.05, size=nb)
    if qtype in (T.Q4_0, T.Q5_0, T.Q8_0):
        raw[:, 0:2] = f16(scale)
    elif qtype in (T.Q4_1, T.Q5_1):
        raw[:, 0:2] = f16(scale)
        raw[:, 2:4] = f16(mins)
    elif qtype in (T.Q4_K, T.Q5_K):
        raw[:, 0:2] = f16(np.abs(scale))
        raw[:, 2:4] = f16(np.abs(mins))
    elif qtype == T.Q6_K:
        raw[:, type_size - 2:type_size] = f16(scale)
    return raw.reshape(-1)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(sys.argv[1], "llama")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.15625)
    w.add_uint64("test.u64", 2**60 + 3)
    w.add_int64("test.i64", -(2**60) - 3)
    w.add_float64("test.f64", 2.718281828459045)
    w.add_bool("test.bool", True)
    w.add_string("test.str", "héllo, GGUF")
    w.add_array("test.arr_i32", [1, -2, 3])
    w.add_array("test.arr_str", ["a", "bc", ""])
    rows, cols = 3, 512  # K-quants need 256-element blocks
    f = rng.standard_normal((rows, cols)).astype(np.float32)
    w.add_tensor("t.f32", f)
    w.add_tensor("t.f32.expected", f)
    w.add_tensor("t.f16", f.astype(np.float16))
    w.add_tensor("t.f16.expected", f.astype(np.float16).astype(np.float32))
    for name, qt in [("bf16", T.BF16), ("q8_0", T.Q8_0), ("q4_0", T.Q4_0), ("q4_1", T.Q4_1), ("q5_0", T.Q5_0),
                     ("q5_1", T.Q5_1), ("q4_k", T.Q4_K), ("q5_k", T.Q5_K), ("q6_k", T.Q6_K)]:
        if qt == T.BF16:
            raw = rng.standard_normal(rows * cols).astype(np.float32).view(np.uint32) >> 16
            raw = raw.astype(np.uint16).view(np.uint8)
        else:
            raw = random_blocks(rng, qt, rows * cols)
        data = raw.reshape(rows, -1)
        w.add_tensor(f"t.{name}", data, raw_dtype=qt)
        deq = gguf.quants.dequantize(data, qt).astype(np.float32).reshape(rows, cols)
        w.add_tensor(f"t.{name}.expected", deq)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {sys.argv[1]} (gguf {getattr(gguf, '__version__', '?')})")


if __name__ == "__main__":
    main()
