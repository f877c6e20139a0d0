#include "server/tokenize_api.h"

#include <limits>

#include <fmt/format.h>

#include "common/error.h"

namespace atom {

using json = nlohmann::json;

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) {
  throw ApiError(400, message, "invalid_request_error", param);
}

json parse_object(const std::string& body) {
  json parsed;
  try {
    parsed = json::parse(body);
  } catch (const json::parse_error& e) {
    throw ApiError(400, fmt::format("the request body is not valid JSON: {}", e.what()));
  }
  if (!parsed.is_object())
    bad("", fmt::format("the request body must be a JSON object, got {}", parsed.type_name()));
  return parsed;
}

// The field, or nullptr when absent or null.
const json* field(const json& body, const char* name) {
  const auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

bool flag(const json& body, const char* name, bool fallback) {
  const json* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_boolean()) bad(name, fmt::format("'{}' must be a boolean, got {}", name, v->type_name()));
  return v->get<bool>();
}

void check_model(const json& body, const KnownModel& known_model) {
  const json* model = field(body, "model");
  if (!model) return;  // optional, as in vLLM
  if (!model->is_string()) bad("model", fmt::format("'model' must be a string, got {}", model->type_name()));
  if (!known_model(model->get<std::string>())) {
    throw ApiError(404,
                   fmt::format("The model '{}' does not exist on this server", model->get<std::string>()),
                   "invalid_request_error", "model", "model_not_found");
  }
}

}  // namespace

json answer_tokenize(const std::string& body, const TextCodec& codec, int max_model_len,
                     const KnownModel& known_model) {
  const json request = parse_object(body);
  check_model(request, known_model);
  if (flag(request, "return_token_strs", false)) {
    throw ApiError(400, "'return_token_strs' is not supported", "invalid_request_error", "return_token_strs",
                   "unsupported_parameter");
  }
  const json* prompt = field(request, "prompt");
  const json* messages = field(request, "messages");
  if (prompt && messages) bad("messages", "give either 'prompt' or 'messages', not both");
  if (!prompt && !messages) bad("prompt", "'prompt' (text) or 'messages' (a chat) is required");
  std::vector<std::int32_t> tokens;
  if (prompt) {
    if (!prompt->is_string())
      bad("prompt", fmt::format("'prompt' must be a string, got {}", prompt->type_name()));
    const bool add_special = flag(request, "add_special_tokens", true);
    try {
      tokens = codec.encode(prompt->get<std::string>(), add_special);
    } catch (const Error& e) {
      bad("prompt", e.what());
    }
  } else {
    // The chat endpoint's message parsing and checks (roles, content parts), on the messages alone.
    const ApiRequest chat =
        parse_api_request(ApiEndpoint::chat_completions, json{{"model", ""}, {"messages", *messages}});
    const bool add_generation_prompt = flag(request, "add_generation_prompt", true);
    const bool add_special = flag(request, "add_special_tokens", false);  // the template writes its own BOS
    std::string text;
    try {
      text = codec.chat_prompt(chat.messages, add_generation_prompt);
    } catch (const Error& e) {
      bad("messages", e.what());
    }
    try {
      tokens = codec.encode(text, add_special);
    } catch (const Error& e) {
      bad("messages", e.what());
    }
  }
  return json{{"count", tokens.size()}, {"max_model_len", max_model_len}, {"tokens", tokens}};
}

json answer_detokenize(const std::string& body, const TextCodec& codec, const KnownModel& known_model) {
  const json request = parse_object(body);
  check_model(request, known_model);
  const json* tokens = field(request, "tokens");
  if (!tokens) bad("tokens", "'tokens' (a list of token ids) is required");
  if (!tokens->is_array())
    bad("tokens", fmt::format("'tokens' must be a list of token ids, got {}", tokens->type_name()));
  const int vocab = codec.vocab_size();
  std::vector<std::int32_t> ids;
  ids.reserve(tokens->size());
  for (std::size_t i = 0; i < tokens->size(); ++i) {
    const json& t = (*tokens)[i];
    const std::string at = fmt::format("tokens[{}]", i);
    if (!t.is_number_integer())
      bad(at, fmt::format("'{}' must be an integer token id, got {}", at, t.type_name()));
    const bool negative = t.is_number_integer() && !t.is_number_unsigned() && t.get<std::int64_t>() < 0;
    if (negative || t.get<std::uint64_t>() >= static_cast<std::uint64_t>(vocab)) {
      bad(at, fmt::format("'{}' is {}, outside the vocabulary [0, {})", at, t.dump(), vocab));
    }
    ids.push_back(t.get<std::int32_t>());
  }
  std::string text;
  try {
    text = codec.decode(ids, /*skip_special_tokens=*/false);
  } catch (const Error& e) {
    bad("tokens", e.what());
  }
  return json{{"prompt", text}};
}

}  // namespace atom
