// Chat templates: native rendering against transformers' apply_chat_template output recorded by
// tools/tokenizer_golden.py (testdata/chat_golden.json), refusals, and template recognition.
#include "runtime/tokenizer/chat.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"

namespace genesis::runtime {
namespace {

using Json = nlohmann::json;

std::string read_testdata(const std::string& name) {
  std::ifstream f(std::string(GENESIS_TOKENIZER_TESTDATA) + "/" + name, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + name);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(ChatTemplate, MatchesTransformersGolden) {
  Json golden = Json::parse(read_testdata("chat_golden.json"));
  std::vector<std::vector<ChatMessage>> convs;
  for (const auto& c : golden["conversations"]) {
    std::vector<ChatMessage> msgs;
    for (const auto& m : c) msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    convs.push_back(std::move(msgs));
  }
  int checked = 0, refusals = 0;
  for (const auto& c : golden["cases"]) {
    std::string name = c["template"].get<std::string>();
    std::string tmpl = read_testdata("chat_template_" + name + ".jinja");
    const auto& msgs = convs.at(c["conversation"].get<size_t>());
    bool gen = c["add_generation_prompt"].get<bool>();
    std::string bos = c["bos"].get<std::string>(), eos = c["eos"].get<std::string>();
    SCOPED_TRACE(name + " conversation " + std::to_string(c["conversation"].get<int>()) + (gen ? " +gen" : ""));
    ++checked;
    if (c.contains("error")) {
      ++refusals;
      try {
        apply_chat_template(tmpl, msgs, gen, bos, eos);
        ADD_FAILURE() << "expected an error like: " << c["error"];
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(c["error"].get<std::string>()), std::string::npos) << e.what();
      }
    } else {
      EXPECT_EQ(apply_chat_template(tmpl, msgs, gen, bos, eos), c["text"].get<std::string>());
    }
  }
  std::printf("chat templates: %d cases compared (%d refusals)\n", checked, refusals);
  EXPECT_GT(checked, 70);
}

TEST(ChatTemplate, DetectsKindsAndDefaults) {
  EXPECT_EQ(detect_chat_template(read_testdata("chat_template_qwen3.jinja")).kind, ChatTemplateKind::kQwen3);
  auto chatml = detect_chat_template(read_testdata("chat_template_chatml.jinja"));
  EXPECT_EQ(chatml.kind, ChatTemplateKind::kChatMl);
  EXPECT_EQ(chatml.default_system, "You are a helpful assistant.");
  // The Qwen2.5 form of the default, with the newline escaped as Jinja writes it in tokenizer_config.json.
  auto q25 = detect_chat_template(
      R"({{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }})");
  EXPECT_EQ(q25.default_system, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  EXPECT_EQ(detect_chat_template(read_testdata("chat_template_llama3.jinja")).kind, ChatTemplateKind::kLlama3);
  EXPECT_EQ(detect_chat_template(read_testdata("chat_template_llama2.jinja")).kind, ChatTemplateKind::kLlama2);
  EXPECT_EQ(detect_chat_template(read_testdata("chat_template_mixtral.jinja")).kind, ChatTemplateKind::kMistral);
}

TEST(ChatTemplate, Qwen3ThinkingSwitch) {
  std::string tmpl = read_testdata("chat_template_qwen3.jinja");
  std::vector<ChatMessage> msgs = {{"user", "hi"}};
  EXPECT_EQ(apply_chat_template(tmpl, msgs, true, "", "<|im_end|>", {.enable_thinking = false}),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
}

TEST(ChatTemplate, UnsupportedTemplatesAreErrors) {
  auto expect_unsupported = [](std::string_view t) {
    try {
      apply_chat_template(t, {{"user", "x"}}, true, "", "");
      ADD_FAILURE() << "accepted: " << t;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("supported"), std::string::npos) << e.what();
    }
  };
  expect_unsupported("");
  expect_unsupported("{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>{% endfor %}");
  expect_unsupported("<|start_header_id|>system<|end_header_id|>Cutting Knowledge Date: December 2023");
  expect_unsupported("[AVAILABLE_TOOLS] [INST] '[INST] '");
}

}  // namespace
}  // namespace genesis::runtime
