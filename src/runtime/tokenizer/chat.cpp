// Native renderers of the common chat templates; each follows its Jinja source step by step (comments quote the
// parts whose behaviour is easy to get wrong), and detect_chat_template() decides which one a template is.
#include "runtime/tokenizer/chat.h"

#include <regex>

#include "common/error.h"
#include "runtime/tokenizer/text.h"

namespace genesis::runtime {

namespace {

bool has(std::string_view s, std::string_view what) { return s.find(what) != std::string_view::npos; }

bool is_py_space(uint32_t cp) {
  // Python's str.isspace() (what Jinja's trim and str.strip() use).
  return (cp >= 9 && cp <= 13) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Python's s.strip() with no argument.
std::string py_strip(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e) {
    size_t k = b;
    if (!is_py_space(text::next_code_point(s, k))) break;
    b = k;
  }
  while (e > b) {
    size_t k = e - 1;
    while (k > b && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
    size_t kk = k;
    if (!is_py_space(text::next_code_point(s, kk))) break;
    e = k;
  }
  return std::string(s.substr(b, e - b));
}

std::string strip_chars(std::string_view s, char c, bool left, bool right) {
  size_t b = 0, e = s.size();
  if (left)
    while (b < e && s[b] == c) ++b;
  if (right)
    while (e > b && s[e - 1] == c) --e;
  return std::string(s.substr(b, e - b));
}

// Jinja string-literal escapes the default system prompts use.
std::string unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      char n = s[++i];
      out.push_back(n == 'n' ? '\n' : n == 't' ? '\t' : n);
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

[[noreturn]] void template_error(std::string_view name, std::string_view msg) {
  fail("chat template ({}): {}", name, msg);
}

void require_alternation(const std::vector<ChatMessage>& msgs, size_t first, std::string_view name) {
  // {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception(...) }}
  for (size_t i = first; i < msgs.size(); ++i)
    if ((msgs[i].role == "user") != ((i - first) % 2 == 0))
      template_error(name, "Conversation roles must alternate user/assistant/user/assistant/...");
}

std::string render_chatml(const ChatTemplateInfo& info, const std::vector<ChatMessage>& msgs, bool gen) {
  std::string out;
  for (size_t i = 0; i < msgs.size(); ++i) {
    if (i == 0 && msgs[0].role != "system" && !info.default_system.empty())
      out += "<|im_start|>system\n" + info.default_system + "<|im_end|>\n";
    if (msgs[i].role == "tool" && info.tool_responses) {  // Qwen2.5: tool results go back as a user turn
      if (i == 0 || msgs[i - 1].role != "tool") out += "<|im_start|>user";
      out += "\n<tool_response>\n" + msgs[i].content + "\n</tool_response>";
      if (i + 1 == msgs.size() || msgs[i + 1].role != "tool") out += "<|im_end|>\n";
      continue;
    }
    out += "<|im_start|>" + msgs[i].role + "\n" + msgs[i].content + "<|im_end|>\n";
  }
  if (gen) out += "<|im_start|>assistant\n";
  return out;
}

std::string render_qwen3(const std::vector<ChatMessage>& msgs, bool gen, const ChatOptions& opt) {
  std::string out;
  if (!msgs.empty() && msgs[0].role == "system") out += "<|im_start|>system\n" + msgs[0].content + "<|im_end|>\n";
  // The last user message that is not a wrapped tool response; thinking is kept only after it.
  long last_query = static_cast<long>(msgs.size()) - 1;
  for (long i = static_cast<long>(msgs.size()) - 1; i >= 0; --i) {
    const auto& c = msgs[i].content;
    if (msgs[i].role == "user" && !(c.starts_with("<tool_response>") && c.ends_with("</tool_response>"))) {
      last_query = i;
      break;
    }
  }
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    bool last = i + 1 == msgs.size();
    if (m.role == "user" || (m.role == "system" && i != 0)) {
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    } else if (m.role == "assistant") {
      std::string content = m.content, reasoning;
      size_t end_think = content.rfind("</think>");
      if (end_think != std::string::npos) {
        // content.split('</think>')[-1].lstrip('\n'); reasoning: split('</think>')[0].rstrip('\n')
        //   .split('<think>')[-1].lstrip('\n')
        std::string before = m.content.substr(0, m.content.find("</think>"));
        content = strip_chars(m.content.substr(end_think + 8), '\n', true, false);
        before = strip_chars(before, '\n', false, true);
        size_t open = before.rfind("<think>");
        if (open != std::string::npos) before = before.substr(open + 7);
        reasoning = strip_chars(before, '\n', true, false);
      }
      if (static_cast<long>(i) > last_query && (last || !reasoning.empty())) {
        out += "<|im_start|>assistant\n<think>\n" + strip_chars(reasoning, '\n', true, true) + "\n</think>\n\n" +
               strip_chars(content, '\n', true, false);
      } else {
        out += "<|im_start|>assistant\n" + content;
      }
      out += "<|im_end|>\n";
    } else if (m.role == "tool") {
      if (i == 0 || msgs[i - 1].role != "tool") out += "<|im_start|>user";
      out += "\n<tool_response>\n" + m.content + "\n</tool_response>";
      if (last || msgs[i + 1].role != "tool") out += "<|im_end|>\n";
    }
    // Other roles produce nothing in this template.
  }
  if (gen) {
    out += "<|im_start|>assistant\n";
    if (!opt.enable_thinking) out += "<think>\n\n</think>\n\n";
  }
  return out;
}

std::string render_llama3(const std::vector<ChatMessage>& msgs, bool gen, const std::string& bos) {
  std::string out;
  for (size_t i = 0; i < msgs.size(); ++i) {
    if (i == 0) out += bos;
    // message['content'] | trim
    out += "<|start_header_id|>" + msgs[i].role + "<|end_header_id|>\n\n" + py_strip(msgs[i].content) + "<|eot_id|>";
  }
  if (gen) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

std::string render_llama2(const std::vector<ChatMessage>& msgs, const std::string& bos, const std::string& eos) {
  size_t first = 0;
  std::string system;
  bool has_system = !msgs.empty() && msgs[0].role == "system";
  if (has_system) {
    system = msgs[0].content;
    first = 1;
  }
  require_alternation(msgs, first, "llama2");
  std::string out;
  for (size_t i = first; i < msgs.size(); ++i) {
    std::string content = msgs[i].content;
    if (i == first && has_system) content = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content;
    if (msgs[i].role == "user")
      out += bos + "[INST] " + py_strip(content) + " [/INST]";
    else if (msgs[i].role == "assistant")
      out += " " + py_strip(content) + " " + eos;
  }
  return out;  // this template has no generation prompt: the model answers after [/INST]
}

std::string render_mistral(const std::vector<ChatMessage>& msgs, const std::string& bos, const std::string& eos) {
  require_alternation(msgs, 0, "mistral");
  std::string out = bos;
  for (const auto& m : msgs) {
    if (m.role == "user")
      out += "[INST] " + m.content + " [/INST]";
    else if (m.role == "assistant")
      out += m.content + eos;
    else
      template_error("mistral", "Only user and assistant roles are supported!");
  }
  return out;
}

}  // namespace

ChatTemplateInfo detect_chat_template(std::string_view t) {
  constexpr std::string_view kSupported =
      "supported: ChatML (Qwen2/Qwen2.5 <|im_start|>), Qwen3 (<|im_start|> with <think>), Llama-3 "
      "(<|start_header_id|>, without the 3.1 tool/date header), Llama-2 ([INST] with <<SYS>>), Mistral/Mixtral "
      "v0.1 ([INST] without system messages)";
  if (t.empty()) fail("chat template is empty (the model ships none); {}", kSupported);
  auto unsupported = [&](std::string_view why) -> ChatTemplateInfo {
    fail("chat template not supported ({}); {}", why, kSupported);
  };
  if (has(t, "<|im_start|>")) {
    if (has(t, "<think>") || has(t, "</think>")) return {ChatTemplateKind::kQwen3, "qwen3", ""};
    ChatTemplateInfo info{ChatTemplateKind::kChatMl, "chatml", ""};
    // A literal default system prompt: '<|im_start|>system\nYou are ...<|im_end|>\n' (real or escaped newline).
    static const std::regex kDefault(R"(<\|im_start\|>system(\\n|\n)([^'"+{}]*?)<\|im_end\|>)");
    std::match_results<std::string_view::const_iterator> m;
    if (std::regex_search(t.begin(), t.end(), m, kDefault)) info.default_system = unescape(m[2].str());
    info.tool_responses = has(t, "<tool_response>");
    return info;
  }
  if (has(t, "<|start_header_id|>")) {
    if (has(t, "Cutting Knowledge Date") || has(t, "ipython"))
      return unsupported("Llama-3.1/3.2 template with the date/tools system header");
    return {ChatTemplateKind::kLlama3, "llama3", ""};
  }
  if (has(t, "[INST]")) {
    if (has(t, "<<SYS>>")) return {ChatTemplateKind::kLlama2, "llama2", ""};
    if (has(t, "[AVAILABLE_TOOLS]") || has(t, "[SYSTEM_PROMPT]") || has(t, "system_message"))
      return unsupported("Mistral template with tools or system-message handling");
    if (!has(t, "'[INST] '")) return unsupported("[INST] template with unrecognized spacing");
    return {ChatTemplateKind::kMistral, "mistral", ""};
  }
  return unsupported("no known marker: <|im_start|>, <|start_header_id|>, [INST]");
}

std::string apply_chat_template(std::string_view template_text, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt, const std::string& bos, const std::string& eos,
                                const ChatOptions& options) {
  ChatTemplateInfo info = detect_chat_template(template_text);
  switch (info.kind) {
    case ChatTemplateKind::kChatMl:
      return render_chatml(info, messages, add_generation_prompt);
    case ChatTemplateKind::kQwen3:
      return render_qwen3(messages, add_generation_prompt, options);
    case ChatTemplateKind::kLlama3:
      return render_llama3(messages, add_generation_prompt, bos);
    case ChatTemplateKind::kLlama2:
      return render_llama2(messages, bos, eos);
    case ChatTemplateKind::kMistral:
      return render_mistral(messages, bos, eos);
  }
  fail("chat template: unknown kind");
}

}  // namespace genesis::runtime
