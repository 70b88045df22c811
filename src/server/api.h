// The OpenAI-compatible request bodies `genesis serve` accepts, parsed and checked into plain structs, and the error
// objects it answers with. No HTTP and no model here: the parser takes bytes (fuzz/server_request_fuzz.cpp feeds it
// anything) and either returns a request or throws ApiError with a status and a message naming the field.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/tokenizer/chat.h"

namespace genesis::server {

// An error answered as {"error": {"message", "type", "param", "code"}} with an HTTP status.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string type = "invalid_request_error", std::string param = "",
           std::string code = "")
      : std::runtime_error(message), status(status), type(std::move(type)), param(std::move(param)),
        code(std::move(code)) {}
  int status;
  std::string type, param, code;
};

nlohmann::json error_json(const ApiError& e);

// Sampling and stopping fields shared by chat and completions; unset fields take the model's defaults
// (generation_config.json, as `genesis run`).
struct GenParams {
  std::optional<int64_t> max_tokens;  // max_tokens or max_completion_tokens
  std::optional<float> temperature, top_p;
  std::optional<int> top_k;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool stream = false, include_usage = false;
  bool ignore_eos = false;  // extension (as llama-server): generate past end-of-sequence tokens
};

struct ChatRequest {
  std::string model;
  std::vector<runtime::ChatMessage> messages;
  GenParams params;
};

struct CompletionRequest {
  std::string model;
  std::optional<std::string> prompt_text;  // a string (or an array of one string)
  std::vector<int32_t> prompt_tokens;      // or token ids
  GenParams params;
};

// Limits on what a body may hold, checked before anything is built from it.
inline constexpr int kMaxJsonDepth = 32;
inline constexpr size_t kMaxMessages = 4096;
inline constexpr size_t kMaxStops = 16;

// Throw ApiError (status 400) for malformed JSON, a body nested deeper than kMaxJsonDepth, missing or mistyped
// fields, out-of-range values and unsupported options (n > 1, logprobs, tools).
ChatRequest parse_chat_request(std::string_view body);
CompletionRequest parse_completion_request(std::string_view body);

}  // namespace genesis::server
