// The request parser: valid chat / completion bodies become requests with every field; malformed, mistyped,
// out-of-range and hostile bodies are ApiError 400 naming the field; every kept fuzz input parses or is an ApiError.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "server/api.h"

namespace genesis::server {
namespace {

TEST(ServerApi, ChatRequestFields) {
  const ChatRequest r = parse_chat_request(R"({"model": "m", "messages": [
      {"role": "system", "content": "be brief"},
      {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
      {"role": "assistant", "content": null}, {"role": "developer", "content": "x"}],
      "max_completion_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "seed": -3,
      "stop": ["a", "b"], "stream": true, "stream_options": {"include_usage": true}, "user": "ignored"})");
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[1].content, "hi there");
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(r.messages[3].role, "system");
  EXPECT_EQ(*r.params.max_tokens, 7);
  EXPECT_FLOAT_EQ(*r.params.temperature, 0.5f);
  EXPECT_FLOAT_EQ(*r.params.top_p, 0.9f);
  EXPECT_EQ(*r.params.top_k, 40);
  EXPECT_EQ(*r.params.seed, uint64_t(-3));
  EXPECT_EQ(r.params.stop, (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(r.params.stream);
  EXPECT_TRUE(r.params.include_usage);
  const ChatRequest d = parse_chat_request(R"({"messages": [{"role": "user", "content": "x"}], "stop": "\n"})");
  EXPECT_FALSE(d.params.max_tokens || d.params.temperature || d.params.seed || d.params.stream);
  EXPECT_EQ(d.params.stop, std::vector<std::string>{"\n"});
}

TEST(ServerApi, CompletionPrompts) {
  EXPECT_EQ(*parse_completion_request(R"({"prompt": "abc", "max_tokens": 3})").prompt_text, "abc");
  EXPECT_EQ(*parse_completion_request(R"({"prompt": ["abc"]})").prompt_text, "abc");
  EXPECT_EQ(parse_completion_request(R"({"prompt": [1, 2, 3]})").prompt_tokens, (std::vector<int32_t>{1, 2, 3}));
}

int status_of(const std::string& body, bool chat, std::string* message = nullptr) {
  try {
    if (chat)
      parse_chat_request(body);
    else
      parse_completion_request(body);
  } catch (const ApiError& e) {
    if (message) *message = e.what();
    return e.status;
  }
  return 200;
}

TEST(ServerApi, BadBodiesAre400WithTheField) {
  const std::vector<std::pair<std::string, std::string>> chat = {
      {"", "not valid JSON"},
      {"{", "not valid JSON"},
      {"[]", "JSON object"},
      {R"({"messages": []})", "messages"},
      {R"({"messages": "hi"})", "messages"},
      {R"({"messages": [1]})", "messages[0]"},
      {R"({"messages": [{"content": "x"}]})", "messages[0].role"},
      {R"({"messages": [{"role": "wizard", "content": "x"}]})", "wizard"},
      {R"({"messages": [{"role": "user"}]})", "content is missing"},
      {R"({"messages": [{"role": "user", "content": 5}]})", "content"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", "text only"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0})", "max_tokens"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5})", "max_tokens"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": "9"})", "max_tokens"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 99999999999999999999})", "max_tokens"},
      {R"({"messages": [{"role": "user", "content": "x"}], "temperature": -1})", "temperature"},
      {R"({"messages": [{"role": "user", "content": "x"}], "temperature": 1e999})", "not valid JSON"},
      {R"({"messages": [{"role": "user", "content": "x"}], "top_p": 0})", "top_p"},
      {R"({"messages": [{"role": "user", "content": "x"}], "top_k": -2})", "top_k"},
      {R"({"messages": [{"role": "user", "content": "x"}], "seed": "s"})", "seed"},
      {R"({"messages": [{"role": "user", "content": "x"}], "stop": [1]})", "stop"},
      {R"({"messages": [{"role": "user", "content": "x"}], "stop": ""})", "stop"},
      {R"({"messages": [{"role": "user", "content": "x"}], "stream": "yes"})", "stream"},
      {R"({"messages": [{"role": "user", "content": "x"}], "n": 2})", "n = 1"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true})", "logprobs"},
      {R"({"messages": [{"role": "user", "content": "x"}], "tools": []})", "tools"},
      {std::string(100000, '['), "deeper"},
      {"{\"messages\": \"\xff\xfe\"}", "not valid JSON"},
  };
  for (const auto& [body, want] : chat) {
    std::string msg;
    EXPECT_EQ(status_of(body, true, &msg), 400) << body.substr(0, 80);
    EXPECT_NE(msg.find(want), std::string::npos) << body.substr(0, 80) << " -> " << msg;
  }
  for (const std::string body : {R"({})", R"({"prompt": 5})", R"({"prompt": ["a", "b"]})", R"({"prompt": [1, -1]})",
                                 R"({"prompt": [1, 2.5]})", R"({"prompt": "x", "echo": true})", R"({"prompt": []})"})
    EXPECT_EQ(status_of(body, false), 400) << body;
}

TEST(ServerApi, ErrorJsonIsOpenAiShaped) {
  const auto j = error_json(ApiError(429, "busy", "rate_limit_error", "", "queue_full"));
  EXPECT_EQ(j.at("error").at("message"), "busy");
  EXPECT_EQ(j.at("error").at("type"), "rate_limit_error");
  EXPECT_TRUE(j.at("error").at("param").is_null());
  EXPECT_EQ(j.at("error").at("code"), "queue_full");
}

// The kept fuzz inputs (fuzz/seeds/server_request, fuzz/regressions/server_request): a request or an ApiError.
TEST(ServerApi, FuzzInputsParseOrAreApiErrors) {
  namespace fs = std::filesystem;
  int n = 0;
  for (const char* d : {"seeds", "regressions"}) {
    const fs::path dir = fs::path(GENESIS_FUZZ_DIR) / d / "server_request";
    if (!fs::exists(dir)) continue;
    for (const auto& e : fs::directory_iterator(dir)) {
      std::ifstream f(e.path(), std::ios::binary);
      std::stringstream ss;
      ss << f.rdbuf();
      for (bool chat : {true, false}) {
        const int st = status_of(ss.str(), chat);
        EXPECT_TRUE(st == 200 || st == 400) << e.path();
      }
      ++n;
    }
  }
  EXPECT_GT(n, 0);
}

}  // namespace
}  // namespace genesis::server
