// libFuzzer harness: any bytes as a GGUF model file, through everything the runtime does with one: metadata -> config,
// tensors -> Hugging Face names (dequantized, q/k un-permuted), weights loaded (fp32 experts, --keep-quant blocks),
// one token forward, and the tokenizer built from tokenizer.ggml.* and run on a short text. Each stage ends cleanly
// or in genesis::Error.
#include <cstdint>
#include <cstdlib>

#include "common/error.h"
#include "runtime/io/gguf.h"
#include "runtime/model/forward.h"
#include "runtime/model/gguf_model.h"
#include "runtime/tokenizer/gguf_vocab.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace rt = genesis::runtime;
  std::shared_ptr<const rt::GgufFile> f;
  try {
    f = rt::GgufFile::parse(data, size, "fuzz");
  } catch (const genesis::Error&) {
    return 0;
  }
  try {
    auto tok = rt::Tokenizer::from_vocab(rt::tokenizer_spec_from_gguf(f->metadata(), "fuzz"));
    const auto ids = tok.encode("Hello 123 <|im_end|> world", true, true);
    (void)tok.decode(ids);
  } catch (const genesis::Error&) {
  }
  try {
    rt::ModelConfig c = rt::parse_config(rt::gguf_config_json(*f), "fuzz");
    if (c.num_layers > 64 || c.hidden_size > 4096 || c.vocab_size > (1 << 20)) return 0;  // time, not safety
    // Twice: --keep-quant (read_ggml + ggml_gemv on hostile blocks) and the defaults (the blocks as stored on
    // kq_gemv: its load-time rearrangement and kernels on hostile blocks).
    for (int pass = 0; pass < 2; ++pass) {
      try {
        rt::LoadOptions opt;
        opt.use_kb = false;
        if (pass == 0) {
          opt.experts = rt::ExpertMode::f32;
          opt.keep_quant = true;
        } else {
          rt::set_dense_mode("stored", opt);
          rt::set_expert_mode("stored", opt);
        }
        auto src = rt::gguf_tensor_source(f, c, true);
        auto m = rt::Model::from_source(c, *src, opt, "fuzz");
        rt::Session s(*m, 4, nullptr);
        const int32_t t = 0;
        std::vector<float> logits(size_t(c.vocab_size));
        s.forward(std::span<const int32_t>(&t, 1), logits.data());
      } catch (const genesis::Error&) {
      }
    }
  } catch (const genesis::Error&) {
  }
  return 0;
}
