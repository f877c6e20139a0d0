#pragma once
// The OpenAI HTTP API as Atom serves it: request parsing and validation for /v1/completions and
// /v1/chat/completions, response and stream-chunk bodies, and the error shape
// {"error": {"message", "type", "param", "code"}}. No HTTP here: the server (http_server.h) wires it.
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/request.h"
#include "engine/text_codec.h"

namespace atom {

// A request the API refuses, with its HTTP status.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string type = "invalid_request_error", std::string param = "",
           std::string code = "");
  int status() const { return status_; }
  const std::string& type() const { return type_; }
  const std::string& param() const { return param_; }  // "" -> null
  const std::string& code() const { return code_; }    // "" -> null
  nlohmann::json body() const;

 private:
  int status_;
  std::string type_, param_, code_;
};

enum class ApiEndpoint { completions, chat_completions };

struct ApiRequest {
  ApiEndpoint endpoint = ApiEndpoint::completions;
  std::string model;
  // completions: the prompt as text, or as token ids (prompt_tokens set, prompt_text empty)
  std::string prompt_text;
  std::optional<std::vector<std::int32_t>> prompt_tokens;
  std::vector<ChatMessage> messages;  // chat
  GenerationParams params;            // params.max_tokens is the request's value or the default below
  bool max_tokens_given = false;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

// Parses and type-checks a request body (throws ApiError 400 naming the field). Values that need the
// model (context length, model name) are checked by the server.
ApiRequest parse_api_request(ApiEndpoint endpoint, const nlohmann::json& body);
// Parses the raw body text (400 with the parser's message when it is not JSON).
ApiRequest parse_api_request(ApiEndpoint endpoint, const std::string& body);

// OpenAI's finish_reason for an engine FinishReason ("stop", "length"; null for none).
nlohmann::json finish_reason_json(FinishReason reason);

struct ResponseMeta {
  std::string id;  // "cmpl-..." / "chatcmpl-..."
  std::int64_t created = 0;
  std::string model;
};

nlohmann::json usage_json(int prompt_tokens, int completion_tokens);

// Logprobs of generated tokens (RequestOutput::logprobs; null when empty) in OpenAI's shapes. Chat:
// {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}. Completions:
// {tokens, token_logprobs, top_logprobs: [{token: logprob}] (the sampled token included), text_offset};
// `text_offset` is the offset (in characters) of the first token in the completion's text, advanced past
// these tokens (a stream carries it from chunk to chunk). A token's text is its decode with special tokens
// kept, bytes its UTF-8 bytes.
std::string token_text(const TextCodec& codec, std::int32_t token);
nlohmann::json chat_logprobs(const std::vector<SampledToken>& tokens, const TextCodec& codec);
nlohmann::json completion_logprobs(const std::vector<SampledToken>& tokens, const TextCodec& codec,
                                   std::size_t& text_offset);

// Whole (non-streaming) response bodies; `logprobs` from the functions above.
nlohmann::json completion_response(const ResponseMeta& meta, const RequestOutput& output,
                                   const nlohmann::json& logprobs = nullptr);
nlohmann::json chat_completion_response(const ResponseMeta& meta, const RequestOutput& output,
                                        const nlohmann::json& logprobs = nullptr);
// Stream chunks: text increments (finish_reason null until the last), the chat stream's first chunk
// (role only), and the usage chunk (empty choices) sent when stream_options.include_usage is set.
nlohmann::json completion_chunk(const ResponseMeta& meta, const std::string& text, FinishReason finish,
                                const nlohmann::json& logprobs = nullptr);
nlohmann::json chat_chunk(const ResponseMeta& meta, const std::string& text, FinishReason finish,
                          bool role_chunk = false, const nlohmann::json& logprobs = nullptr);
nlohmann::json usage_chunk(const ResponseMeta& meta, ApiEndpoint endpoint, int prompt_tokens,
                           int completion_tokens);
// One server-sent event: "data: <json>\n\n".
std::string sse_event(const nlohmann::json& data);
inline constexpr const char* kSseDone = "data: [DONE]\n\n";

}  // namespace atom
