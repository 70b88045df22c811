// Request bodies -> ChatRequest / CompletionRequest, with a message naming the field for anything wrong.
#include "server/api.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>

namespace genesis::server {

using nlohmann::json;

json error_json(const ApiError& e) {
  json err = {{"message", e.what()}, {"type", e.type}, {"param", nullptr}, {"code", nullptr}};
  if (!e.param.empty()) err["param"] = e.param;
  if (!e.code.empty()) err["code"] = e.code;
  return {{"error", err}};
}

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError(400, message, "invalid_request_error", param); }

// Nesting depth of arrays and objects outside strings: a hostile body of a million '[' is refused before parsing.
int json_depth(std::string_view s) {
  int depth = 0, max_depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      max_depth = std::max(max_depth, ++depth);
      if (max_depth > kMaxJsonDepth) return max_depth;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return max_depth;
}

json parse_body(std::string_view body) {
  if (json_depth(body) > kMaxJsonDepth) bad("", fmt::format("the JSON body nests deeper than {} levels", kMaxJsonDepth));
  json j = json::parse(body.begin(), body.end(), nullptr, false);
  if (j.is_discarded()) bad("", "the body is not valid JSON");
  if (!j.is_object()) bad("", "the body must be a JSON object");
  return j;
}

const json* field(const json& j, const char* name) {
  auto it = j.find(name);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

std::optional<int64_t> opt_int(const json& j, const char* name, int64_t lo, int64_t hi) {
  const json* v = field(j, name);
  if (!v) return std::nullopt;
  if (v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    if (u > uint64_t(hi) || int64_t(u) < lo) bad(name, fmt::format("{} must be an integer in [{}, {}], got {}", name, lo, hi, u));
    return int64_t(u);
  }
  if (!v->is_number_integer()) bad(name, fmt::format("{} must be an integer", name));
  const int64_t x = v->get<int64_t>();
  if (x < lo || x > hi) bad(name, fmt::format("{} must be an integer in [{}, {}], got {}", name, lo, hi, x));
  return x;
}

std::optional<float> opt_num(const json& j, const char* name, double lo, double hi, bool lo_open) {
  const json* v = field(j, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad(name, fmt::format("{} must be a number", name));
  const double x = v->get<double>();
  if (!std::isfinite(x) || x > hi || x < lo || (lo_open && x == lo))
    bad(name, fmt::format("{} must be a number in {}{}, {}], got {}", name, lo_open ? "(" : "[", lo, hi, x));
  return float(x);
}

bool opt_bool(const json& j, const char* name) {
  const json* v = field(j, name);
  if (!v) return false;
  if (!v->is_boolean()) bad(name, fmt::format("{} must be true or false", name));
  return v->get<bool>();
}

std::string opt_string(const json& j, const char* name) {
  const json* v = field(j, name);
  if (!v) return "";
  if (!v->is_string()) bad(name, fmt::format("{} must be a string", name));
  return v->get<std::string>();
}

GenParams parse_params(const json& j) {
  GenParams p;
  constexpr int64_t kMaxTokens = int64_t(1) << 30;
  p.max_tokens = opt_int(j, "max_tokens", 1, kMaxTokens);
  if (auto m = opt_int(j, "max_completion_tokens", 1, kMaxTokens)) p.max_tokens = m;
  p.temperature = opt_num(j, "temperature", 0, 2, false);
  p.top_p = opt_num(j, "top_p", 0, 1, true);
  if (auto k = opt_int(j, "top_k", 0, std::numeric_limits<int32_t>::max())) p.top_k = int(*k);
  if (const json* s = field(j, "seed")) {
    if (s->is_number_unsigned())
      p.seed = s->get<uint64_t>();
    else if (s->is_number_integer())
      p.seed = uint64_t(s->get<int64_t>());
    else
      bad("seed", "seed must be an integer");
  }
  if (const json* s = field(j, "stop")) {
    if (s->is_string()) {
      p.stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      if (s->size() > kMaxStops) bad("stop", fmt::format("stop holds at most {} strings, got {}", kMaxStops, s->size()));
      for (const json& e : *s) {
        if (!e.is_string()) bad("stop", "stop must be a string or an array of strings");
        p.stop.push_back(e.get<std::string>());
      }
    } else {
      bad("stop", "stop must be a string or an array of strings");
    }
    for (const std::string& s2 : p.stop)
      if (s2.empty()) bad("stop", "stop strings must not be empty");
  }
  p.stream = opt_bool(j, "stream");
  if (const json* so = field(j, "stream_options")) {
    if (!so->is_object()) bad("stream_options", "stream_options must be an object");
    p.include_usage = opt_bool(*so, "include_usage");
  }
  p.ignore_eos = opt_bool(j, "ignore_eos");
  if (auto n = opt_int(j, "n", 1, 1 << 20); n && *n != 1) bad("n", "only n = 1 is supported");
  if (const json* l = field(j, "logprobs"); l && !(l->is_boolean() && !l->get<bool>()))
    bad("logprobs", "logprobs are not supported");
  if (field(j, "tools") || field(j, "functions")) bad("tools", "tools and function calling are not supported");
  return p;
}

}  // namespace

ChatRequest parse_chat_request(std::string_view body) {
  const json j = parse_body(body);
  ChatRequest r;
  r.model = opt_string(j, "model");
  const json* ms = field(j, "messages");
  if (!ms || !ms->is_array() || ms->empty()) bad("messages", "messages must be a non-empty array");
  if (ms->size() > kMaxMessages) bad("messages", fmt::format("messages holds at most {} entries", kMaxMessages));
  for (size_t i = 0; i < ms->size(); ++i) {
    const json& m = (*ms)[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!m.is_object()) bad("messages", where + " must be an object");
    runtime::ChatMessage cm;
    const json* role = field(m, "role");
    if (!role || !role->is_string()) bad("messages", where + ".role must be a string");
    cm.role = role->get<std::string>();
    if (cm.role == "developer") cm.role = "system";  // OpenAI's newer name for the system role
    if (cm.role != "system" && cm.role != "user" && cm.role != "assistant" && cm.role != "tool")
      bad("messages", fmt::format("{}.role '{}' is not one of system, developer, user, assistant, tool", where, cm.role));
    if (const json* c = field(m, "content")) {
      if (c->is_string()) {
        cm.content = c->get<std::string>();
      } else if (c->is_array()) {
        // Content parts: text only.
        for (const json& part : *c) {
          if (!part.is_object() || opt_string(part, "type") != "text" || !field(part, "text") ||
              !part["text"].is_string())
            bad("messages", where + ".content parts must be {\"type\": \"text\", \"text\": ...} (text only)");
          cm.content += part["text"].get<std::string>();
        }
      } else {
        bad("messages", where + ".content must be a string or an array of text parts");
      }
    } else if (cm.role != "assistant") {
      bad("messages", where + ".content is missing");
    }
    r.messages.push_back(std::move(cm));
  }
  r.params = parse_params(j);
  return r;
}

CompletionRequest parse_completion_request(std::string_view body) {
  const json j = parse_body(body);
  CompletionRequest r;
  r.model = opt_string(j, "model");
  const json* p = field(j, "prompt");
  if (!p) bad("prompt", "prompt is missing");
  if (p->is_string()) {
    r.prompt_text = p->get<std::string>();
  } else if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) {
    r.prompt_text = (*p)[0].get<std::string>();
  } else if (p->is_array() && !p->empty() && (*p)[0].is_number()) {
    for (const json& t : *p) {
      if (!t.is_number_integer() && !t.is_number_unsigned()) bad("prompt", "prompt token ids must be integers");
      const int64_t id = t.is_number_unsigned() ? int64_t(std::min<uint64_t>(t.get<uint64_t>(), uint64_t(1) << 40))
                                                : t.get<int64_t>();
      if (id < 0 || id > std::numeric_limits<int32_t>::max()) bad("prompt", fmt::format("prompt token id {} is out of range", id));
      r.prompt_tokens.push_back(int32_t(id));
    }
  } else {
    bad("prompt", "prompt must be a string, an array of one string, or an array of token ids (one prompt per request)");
  }
  if (opt_bool(j, "echo")) bad("echo", "echo is not supported");
  if (const json* s = field(j, "suffix"); s && !(s->is_string() && s->get<std::string>().empty()))
    bad("suffix", "suffix is not supported");
  r.params = parse_params(j);
  return r;
}

}  // namespace genesis::server
