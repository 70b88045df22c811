// Chat templates for `--chat`: the common templates (ChatML / Qwen2, Qwen3 with its think handling, Llama-3,
// Llama-2, Mistral / Mixtral [INST]) are recognized by their text and rendered natively, producing what
// transformers' apply_chat_template produces. There is no Jinja engine: any other template is a genesis::Error.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace genesis::runtime {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" (Qwen3 also "tool")
  std::string content;
};

enum class ChatTemplateKind { kChatMl, kQwen3, kLlama3, kLlama2, kMistral };

struct ChatTemplateInfo {
  ChatTemplateKind kind;
  std::string name;             // "chatml", "qwen3", "llama3", "llama2", "mistral"
  std::string default_system;   // ChatML: the system prompt the template adds when none is given ("" if none)
  bool tool_responses = false;  // ChatML: "tool" messages are wrapped in <tool_response> (Qwen2.5)
};

// Recognizes a template by its text; throws genesis::Error naming the supported kinds when it cannot.
ChatTemplateInfo detect_chat_template(std::string_view template_text);

struct ChatOptions {
  // Qwen3: false adds the empty think block after the generation prompt, as enable_thinking=False does.
  bool enable_thinking = true;
};

// Renders messages as the template would. Conversations the template itself refuses (roles that do not
// alternate, a system message where none is allowed) are a genesis::Error with the template's message.
std::string apply_chat_template(std::string_view template_text, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt, const std::string& bos, const std::string& eos,
                                const ChatOptions& options = {});

}  // namespace genesis::runtime
