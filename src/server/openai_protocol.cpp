#include "server/openai_protocol.h"

#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "common/error.h"
#include "io/json_file.h"
#include "tokenizer/unicode.h"

namespace atom {

using json = nlohmann::json;

ApiError::ApiError(int status, std::string message, std::string type, std::string param, std::string code)
    : std::runtime_error(std::move(message)),
      status_(status),
      type_(std::move(type)),
      param_(std::move(param)),
      code_(std::move(code)) {}

json ApiError::body() const {
  json error = {{"message", what()}, {"type", type_}, {"param", nullptr}, {"code", nullptr}};
  if (!param_.empty()) error["param"] = param_;
  if (!code_.empty()) error["code"] = code_;
  return json{{"error", error}};
}

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) {
  throw ApiError(400, message, "invalid_request_error", param);
}

[[noreturn]] void unsupported(const std::string& param, const std::string& message) {
  throw ApiError(400, message, "invalid_request_error", param, "unsupported_parameter");
}

// The field, or nullptr when absent or null (OpenAI treats null as "not given").
const json* field(const json& body, const char* name) {
  const auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

[[noreturn]] void wrong_type(const char* name, const char* expected, const json& value) {
  bad(name, fmt::format("'{}' must be {}, got {}", name, expected, value.type_name()));
}

std::optional<std::int64_t> integer(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number_integer()) {
    // 3.0 is an integer to Python clients too (but 1e300 is out of range, and casting it would be undefined).
    if (v->is_number_float()) {
      const double d = v->get<double>();
      if (std::isfinite(d) && std::trunc(d) == d) {
        if (!(d >= -9.2e18 && d <= 9.2e18)) bad(name, fmt::format("'{}' is out of range: {}", name, d));
        return static_cast<std::int64_t>(d);
      }
    }
    wrong_type(name, "an integer", *v);
  }
  if (v->is_number_unsigned() && v->get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
    bad(name, fmt::format("'{}' is out of range", name));
  }
  return v->get<std::int64_t>();
}

std::optional<double> number(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) wrong_type(name, "a number", *v);
  return v->get<double>();
}

std::optional<bool> boolean(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) wrong_type(name, "a boolean", *v);
  return v->get<bool>();
}

std::optional<std::string> string(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_string()) wrong_type(name, "a string", *v);
  return v->get<std::string>();
}

std::vector<std::int32_t> token_array(const json& array, const char* name) {
  std::vector<std::int32_t> tokens;
  for (const json& t : array) {
    if (!t.is_number_integer()) bad(name, fmt::format("'{}' token ids must be integers, got {}", name, t.type_name()));
    const std::int64_t id = t.get<std::int64_t>();
    if (id < 0 || id > std::numeric_limits<std::int32_t>::max()) {
      bad(name, fmt::format("'{}' token id {} is out of range", name, id));
    }
    tokens.push_back(static_cast<std::int32_t>(id));
  }
  return tokens;
}

void parse_prompt(const json& body, ApiRequest& request) {
  const json* prompt = field(body, "prompt");
  if (!prompt) bad("prompt", "'prompt' is required");
  if (prompt->is_string()) {
    request.prompt_text = prompt->get<std::string>();
  } else if (prompt->is_array()) {
    if (prompt->empty()) bad("prompt", "'prompt' must not be empty");
    const json& first = prompt->front();
    if (first.is_number()) {
      request.prompt_tokens = token_array(*prompt, "prompt");
    } else if (prompt->size() != 1) {
      bad("prompt", "batched prompts (a list of several prompts) are not supported: send one prompt per request");
    } else if (first.is_string()) {
      request.prompt_text = first.get<std::string>();
    } else if (first.is_array()) {
      request.prompt_tokens = token_array(first, "prompt");
    } else {
      bad("prompt", fmt::format("'prompt' must be a string, a list of token ids, or a list holding one of these; "
                                "got a list of {}", first.type_name()));
    }
  } else {
    wrong_type("prompt", "a string or a list of token ids", *prompt);
  }
  if (request.prompt_tokens ? request.prompt_tokens->empty() : request.prompt_text.empty()) {
    bad("prompt", "'prompt' must not be empty");
  }
}

std::string message_content(const json& message, std::size_t index, const std::string& role) {
  const json* content = field(message, "content");
  const std::string name = fmt::format("messages[{}].content", index);
  if (!content) {
    if (role == "assistant") return "";
    bad(name, fmt::format("'{}' is required", name));
  }
  if (content->is_string()) return content->get<std::string>();
  if (!content->is_array()) bad(name, fmt::format("'{}' must be a string or a list of content parts, got {}", name, content->type_name()));
  std::string text;
  for (const json& part : *content) {
    const json* type = part.is_object() ? field(part, "type") : nullptr;
    if (!type || !type->is_string()) bad(name, fmt::format("each part of '{}' must be an object with a 'type'", name));
    if (type->get<std::string>() != "text") {
      unsupported(name, fmt::format("content parts of type '{}' are not supported: this model reads text only",
                                    type->get<std::string>()));
    }
    const json* part_text = field(part, "text");
    if (!part_text || !part_text->is_string()) bad(name, fmt::format("a text part of '{}' needs a string 'text'", name));
    if (!text.empty()) text += "\n";
    text += part_text->get<std::string>();
  }
  return text;
}

void parse_messages(const json& body, ApiRequest& request) {
  const json* messages = field(body, "messages");
  if (!messages) bad("messages", "'messages' is required");
  if (!messages->is_array()) wrong_type("messages", "a list of messages", *messages);
  if (messages->empty()) bad("messages", "'messages' must hold at least one message");
  for (std::size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string at = fmt::format("messages[{}]", i);
    if (!m.is_object()) bad(at, fmt::format("'{}' must be an object, got {}", at, m.type_name()));
    const json* role = field(m, "role");
    if (!role || !role->is_string()) bad(at + ".role", fmt::format("'{}.role' must be a string", at));
    std::string r = role->get<std::string>();
    if (r == "developer") r = "system";  // OpenAI's newer name for the system role
    if (r == "tool" || r == "function") unsupported(at + ".role", "tool and function messages are not supported");
    if (r != "system" && r != "user" && r != "assistant") {
      bad(at + ".role", fmt::format("'{}.role' must be one of system, developer, user, assistant; got '{}'", at, r));
    }
    request.messages.push_back({r, message_content(m, i, r)});
  }
}

// completions: "logprobs": n (top tokens besides the sampled one); chat: "logprobs": true and
// "top_logprobs": n. Both at most kMaxLogprobs (OpenAI: 20 for chat, 5 for completions; vLLM: 20 for both).
void parse_logprobs(const json& body, ApiEndpoint endpoint, GenerationParams& p) {
  if (endpoint == ApiEndpoint::completions) {
    if (const auto n = integer(body, "logprobs")) {
      if (*n < 0 || *n > kMaxLogprobs) {
        bad("logprobs", fmt::format("'logprobs' must be between 0 and {}, got {}", kMaxLogprobs, *n));
      }
      p.logprobs = static_cast<int>(*n);
    }
    return;
  }
  const bool wanted = boolean(body, "logprobs").value_or(false);
  if (const auto n = integer(body, "top_logprobs")) {
    if (*n < 0 || *n > kMaxLogprobs) {
      bad("top_logprobs", fmt::format("'top_logprobs' must be between 0 and {}, got {}", kMaxLogprobs, *n));
    }
    if (!wanted) bad("top_logprobs", "'top_logprobs' needs 'logprobs' set to true");
    p.logprobs = static_cast<int>(*n);
  } else if (wanted) {
    p.logprobs = 0;
  }
}

void refuse_unsupported(const json& body, ApiEndpoint endpoint) {
  if (const auto n = integer(body, "n")) {
    if (*n != 1) unsupported("n", fmt::format("n = {} is not supported: this server returns exactly one choice per request (n = 1)", *n));
  }
  if (const auto best_of = integer(body, "best_of")) {
    if (*best_of != 1) unsupported("best_of", "best_of > 1 is not supported");
  }
  if (const json* bias = field(body, "logit_bias")) {
    if (!bias->is_object()) wrong_type("logit_bias", "an object", *bias);
    if (!bias->empty()) unsupported("logit_bias", "logit_bias is not supported");
  }
  if (endpoint == ApiEndpoint::completions) {
    if (boolean(body, "echo").value_or(false)) unsupported("echo", "echo is not supported");
    if (const auto suffix = string(body, "suffix")) {
      if (!suffix->empty()) unsupported("suffix", "suffix is not supported");
    }
  } else {
    for (const char* tools : {"tools", "functions"}) {
      if (const json* t = field(body, tools)) {
        if (!t->is_array()) wrong_type(tools, "a list", *t);
        if (!t->empty()) unsupported(tools, "tool and function calling is not supported");
      }
    }
    if (const json* format = field(body, "response_format")) {
      const json* type = format->is_object() ? field(*format, "type") : nullptr;
      if (!type || !type->is_string()) bad("response_format", "'response_format' must be an object with a 'type'");
      if (type->get<std::string>() != "text") unsupported("response_format", "only response_format {\"type\": \"text\"} is supported");
    }
  }
}

}  // namespace

ApiRequest parse_api_request(ApiEndpoint endpoint, const json& body) {
  if (!body.is_object()) {
    throw ApiError(400, fmt::format("the request body must be a JSON object, got {}", body.type_name()));
  }
  ApiRequest request;
  request.endpoint = endpoint;
  const auto model = string(body, "model");
  if (!model) bad("model", "'model' is required");
  request.model = *model;
  if (endpoint == ApiEndpoint::completions) {
    parse_prompt(body, request);
  } else {
    parse_messages(body, request);
  }
  refuse_unsupported(body, endpoint);

  GenerationParams& p = request.params;
  // Chat's newer name wins over the older one.
  const char* max_name = "max_tokens";
  std::optional<std::int64_t> max_tokens = integer(body, "max_tokens");
  if (endpoint == ApiEndpoint::chat_completions) {
    if (const auto newer = integer(body, "max_completion_tokens")) {
      max_tokens = newer;
      max_name = "max_completion_tokens";
    }
  }
  if (max_tokens) {
    if (*max_tokens < 1) bad(max_name, fmt::format("'{}' must be at least 1, got {}", max_name, *max_tokens));
    if (*max_tokens > std::numeric_limits<std::int32_t>::max()) bad(max_name, fmt::format("'{}' is too large: {}", max_name, *max_tokens));
    p.max_tokens = static_cast<int>(*max_tokens);
    request.max_tokens_given = true;
  } else {
    p.max_tokens = 16;  // OpenAI's completions default; chat's default is set from the context by the server
  }
  if (const auto t = number(body, "temperature")) {
    if (!(*t >= 0.0 && *t <= 2.0)) bad("temperature", fmt::format("'temperature' must be between 0 and 2, got {}", *t));
    p.temperature = static_cast<float>(*t);
  }
  if (const auto top_p = number(body, "top_p")) {
    if (!(*top_p > 0.0 && *top_p <= 1.0)) bad("top_p", fmt::format("'top_p' must be in (0, 1], got {}", *top_p));
    p.top_p = static_cast<float>(*top_p);
  }
  if (const auto top_k = integer(body, "top_k")) {  // vLLM's extension; -1 or 0 is off
    if (*top_k < -1 || *top_k > std::numeric_limits<std::int32_t>::max()) {
      bad("top_k", fmt::format("'top_k' must be -1 (off) or >= 0, got {}", *top_k));
    }
    p.top_k = *top_k < 0 ? 0 : static_cast<int>(*top_k);
  }
  if (const auto min_p = number(body, "min_p")) {  // vLLM's extension
    if (!(*min_p >= 0.0 && *min_p <= 1.0))
      bad("min_p", fmt::format("'min_p' must be in [0, 1], got {}", *min_p));
    p.min_p = static_cast<float>(*min_p);
  }
  if (const auto penalty = number(body, "repetition_penalty")) {  // vLLM's extension
    if (!(*penalty > 0.0 && *penalty <= 1e6)) {
      bad("repetition_penalty", fmt::format("'repetition_penalty' must be > 0 (1 = off), got {}", *penalty));
    }
    p.repetition_penalty = static_cast<float>(*penalty);
  }
  auto openai_penalty = [&](const char* name, float& out) {
    if (const auto penalty = number(body, name)) {
      if (!(*penalty >= -2.0 && *penalty <= 2.0)) {
        bad(name, fmt::format("'{}' must be between -2 and 2, got {}", name, *penalty));
      }
      out = static_cast<float>(*penalty);
    }
  };
  openai_penalty("presence_penalty", p.presence_penalty);
  openai_penalty("frequency_penalty", p.frequency_penalty);
  parse_logprobs(body, endpoint, p);
  if (const auto seed = integer(body, "seed"))
    p.seed = static_cast<std::uint64_t>(*seed);  // negative: two's complement
  if (const json* stop = field(body, "stop")) {
    if (stop->is_string()) {
      p.stop = {stop->get<std::string>()};
    } else if (stop->is_array()) {
      if (stop->size() > 16) bad("stop", fmt::format("'stop' may hold at most 16 strings, got {}", stop->size()));
      for (const json& s : *stop) {
        if (!s.is_string()) bad("stop", fmt::format("'stop' must be a string or a list of strings, found a {}", s.type_name()));
        p.stop.push_back(s.get<std::string>());
      }
    } else {
      wrong_type("stop", "a string or a list of strings", *stop);
    }
  }
  if (const json* ids = field(body, "stop_token_ids")) {  // vLLM's extension
    if (!ids->is_array()) wrong_type("stop_token_ids", "a list of token ids", *ids);
    p.stop_token_ids = token_array(*ids, "stop_token_ids");
  }
  p.ignore_eos = boolean(body, "ignore_eos").value_or(false);  // vLLM's extension
  request.stream = boolean(body, "stream").value_or(false);
  if (const json* options = field(body, "stream_options")) {
    if (!request.stream) bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
    if (!options->is_object()) wrong_type("stream_options", "an object", *options);
    if (const json* usage = field(*options, "include_usage")) {
      if (!usage->is_boolean()) bad("stream_options.include_usage", "'stream_options.include_usage' must be a boolean");
      request.include_usage = usage->get<bool>();
    }
  }
  return request;
}

ApiRequest parse_api_request(ApiEndpoint endpoint, const std::string& body) {
  json parsed;
  try {
    // Nesting bounded, numbers in range (1e999 is an error, not a 500), a repeated key: the last wins.
    parsed = parse_json(body, "body", /*reject_duplicate_keys=*/false);
  } catch (const Error& e) {
    throw ApiError(400, fmt::format("the request body is not valid JSON: {}", e.what()));
  }
  return parse_api_request(endpoint, parsed);
}

json finish_reason_json(FinishReason reason) {
  switch (reason) {
    case FinishReason::stop: return "stop";
    case FinishReason::length: return "length";
    // Not OpenAI values: a cut-short stream ends with an error event instead (see the server), and a
    // whole response is never sent for these; "length" (the completion is incomplete) if it ever is.
    case FinishReason::cancelled:
      return "length";
    case FinishReason::error:
      return "length";
    case FinishReason::none: return nullptr;
  }
  return nullptr;
}

json usage_json(int prompt_tokens, int completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

namespace {

json envelope(const ResponseMeta& meta, const char* object) {
  return {{"id", meta.id}, {"object", object}, {"created", meta.created}, {"model", meta.model}};
}

}  // namespace

namespace {

// JSON has no -inf: vLLM's floor for a logprob.
double logprob_value(float logprob) { return std::isfinite(logprob) ? logprob : -9999.0; }

json utf8_bytes(const std::string& text) {
  json bytes = json::array();
  for (char c : text) bytes.push_back(static_cast<unsigned char>(c));
  return bytes;
}

std::size_t code_points(const std::string& text) {
  std::size_t n = 0;
  for (char c : text) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

}  // namespace

std::string token_text(const TextCodec& codec, std::int32_t token) {
  // One token may hold part of a UTF-8 character: its text then has U+FFFD there (as vLLM's).
  return utf8_lossy(codec.decode(std::span<const std::int32_t>(&token, 1), /*skip_special_tokens=*/false));
}

json chat_logprobs(const std::vector<SampledToken>& tokens, const TextCodec& codec) {
  if (tokens.empty()) return nullptr;
  auto entry = [&](std::int32_t token, float logprob) {
    const std::string text = token_text(codec, token);
    return json{{"token", text}, {"logprob", logprob_value(logprob)}, {"bytes", utf8_bytes(text)}};
  };
  json content = json::array();
  for (const SampledToken& t : tokens) {
    json item = entry(t.token, t.logprob);
    json top = json::array();
    for (const TokenLogprob& alt : t.top_logprobs) top.push_back(entry(alt.token, alt.logprob));
    item["top_logprobs"] = std::move(top);
    content.push_back(std::move(item));
  }
  return json{{"content", std::move(content)}};
}

json completion_logprobs(const std::vector<SampledToken>& tokens, const TextCodec& codec,
                         std::size_t& text_offset) {
  if (tokens.empty()) return nullptr;
  json texts = json::array(), logprobs = json::array(), tops = json::array(), offsets = json::array();
  for (const SampledToken& t : tokens) {
    const std::string text = token_text(codec, t.token);
    texts.push_back(text);
    logprobs.push_back(logprob_value(t.logprob));
    // The sampled token is always in its entry, so it holds up to logprobs + 1 tokens (OpenAI's shape).
    json top = json::object();
    for (const TokenLogprob& alt : t.top_logprobs)
      top[token_text(codec, alt.token)] = logprob_value(alt.logprob);
    top[text] = logprob_value(t.logprob);
    tops.push_back(std::move(top));
    offsets.push_back(text_offset);
    text_offset += code_points(text);
  }
  return json{{"tokens", std::move(texts)},
              {"token_logprobs", std::move(logprobs)},
              {"top_logprobs", std::move(tops)},
              {"text_offset", std::move(offsets)}};
}

json completion_response(const ResponseMeta& meta, const RequestOutput& output, const json& logprobs) {
  json body = envelope(meta, "text_completion");
  body["choices"] = json::array({{{"index", 0},
                                  {"text", output.text},
                                  {"logprobs", logprobs},
                                  {"finish_reason", finish_reason_json(output.finish_reason)}}});
  body["usage"] = usage_json(output.prompt_tokens, output.completion_tokens);
  return body;
}

json chat_completion_response(const ResponseMeta& meta, const RequestOutput& output, const json& logprobs) {
  json body = envelope(meta, "chat.completion");
  body["choices"] = json::array({{{"index", 0},
                                  {"message", {{"role", "assistant"}, {"content", output.text}}},
                                  {"logprobs", logprobs},
                                  {"finish_reason", finish_reason_json(output.finish_reason)}}});
  body["usage"] = usage_json(output.prompt_tokens, output.completion_tokens);
  return body;
}

json completion_chunk(const ResponseMeta& meta, const std::string& text, FinishReason finish,
                      const json& logprobs) {
  json body = envelope(meta, "text_completion");
  body["choices"] = json::array({{{"index", 0},
                                  {"text", text},
                                  {"logprobs", logprobs},
                                  {"finish_reason", finish_reason_json(finish)}}});
  return body;
}

json chat_chunk(const ResponseMeta& meta, const std::string& text, FinishReason finish, bool role_chunk,
                const json& logprobs) {
  json body = envelope(meta, "chat.completion.chunk");
  json delta = json::object();
  if (role_chunk) {
    delta = {{"role", "assistant"}, {"content", ""}};
  } else if (!text.empty()) {
    delta = {{"content", text}};
  }
  body["choices"] = json::array({{{"index", 0},
                                  {"delta", delta},
                                  {"logprobs", logprobs},
                                  {"finish_reason", finish_reason_json(finish)}}});
  return body;
}

json usage_chunk(const ResponseMeta& meta, ApiEndpoint endpoint, int prompt_tokens, int completion_tokens) {
  json body = envelope(meta, endpoint == ApiEndpoint::completions ? "text_completion" : "chat.completion.chunk");
  body["choices"] = json::array();
  body["usage"] = usage_json(prompt_tokens, completion_tokens);
  return body;
}

std::string sse_event(const json& data) {
  // dump() escapes control characters, so the event has no raw newline inside.
  return "data: " + data.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace atom
