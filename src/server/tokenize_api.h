#pragma once
// Tokenizer access over HTTP, with vLLM's request and response shapes:
//   POST /tokenize    {"model"?, "prompt": str, "add_special_tokens"?: bool = true}
//                  or {"model"?, "messages": [...], "add_generation_prompt"?: bool = true,
//                      "add_special_tokens"?: bool = false}   (the chat template applied first)
//                  -> {"count": n, "max_model_len": positions, "tokens": [ids]}
//   POST /detokenize  {"model"?, "tokens": [ids]} -> {"prompt": text}   (special tokens kept, as HF decode)
// Bad input (wrong types, ids outside the tokenizer's vocabulary, both or neither of prompt and messages)
// throws ApiError 400 naming the field; an unknown "model" 404.
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/text_codec.h"
#include "server/openai_protocol.h"

namespace atom {

using KnownModel = std::function<bool(const std::string& name)>;

nlohmann::json answer_tokenize(const std::string& body, const TextCodec& codec, int max_model_len,
                               const KnownModel& known_model);
nlohmann::json answer_detokenize(const std::string& body, const TextCodec& codec,
                                 const KnownModel& known_model);

}  // namespace atom
