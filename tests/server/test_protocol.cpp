#include <gtest/gtest.h>

#include <limits>

#include "../engine/fake_model.h"
#include "server/openai_protocol.h"

namespace atom {
namespace {

using json = nlohmann::json;

ApiRequest completion(const json& body) { return parse_api_request(ApiEndpoint::completions, body); }
ApiRequest chat(const json& body) { return parse_api_request(ApiEndpoint::chat_completions, body); }

// The ApiError a body raises (fails the test when it raises none).
ApiError error_of(ApiEndpoint endpoint, const json& body) {
  try {
    parse_api_request(endpoint, body);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "no error for " << body.dump();
  return ApiError(0, "");
}

void expect_bad(ApiEndpoint endpoint, const json& body, const std::string& param, const std::string& words) {
  const ApiError e = error_of(endpoint, body);
  EXPECT_EQ(e.status(), 400) << body.dump();
  EXPECT_EQ(e.param(), param) << body.dump() << ": " << e.what();
  EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
}

TEST(Protocol, ParsesACompletionRequestWithEveryField) {
  const ApiRequest r = completion({{"model", "m"},
                                   {"prompt", "Hello"},
                                   {"max_tokens", 7},
                                   {"temperature", 0.5},
                                   {"top_p", 0.9},
                                   {"top_k", 40},
                                   {"seed", 1234},
                                   {"stop", {"\n", "END"}},
                                   {"stop_token_ids", {5, 6}},
                                   {"ignore_eos", true},
                                   {"stream", true},
                                   {"stream_options", {{"include_usage", true}}},
                                   {"n", 1},
                                   {"logprobs", nullptr},
                                   {"user", "someone"},
                                   {"presence_penalty", 0}});
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(r.prompt_text, "Hello");
  EXPECT_FALSE(r.prompt_tokens);
  EXPECT_EQ(r.params.max_tokens, 7);
  EXPECT_TRUE(r.max_tokens_given);
  EXPECT_FLOAT_EQ(r.params.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.params.top_p, 0.9f);
  EXPECT_EQ(r.params.top_k, 40);
  EXPECT_EQ(r.params.seed, 1234u);
  EXPECT_EQ(r.params.stop, (std::vector<std::string>{"\n", "END"}));
  EXPECT_EQ(r.params.stop_token_ids, (std::vector<std::int32_t>{5, 6}));
  EXPECT_TRUE(r.params.ignore_eos);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
}

TEST(Protocol, DefaultsFollowOpenAI) {
  const ApiRequest r = completion({{"model", "m"}, {"prompt", "x"}});
  EXPECT_EQ(r.params.max_tokens, 16);
  EXPECT_FALSE(r.max_tokens_given);
  EXPECT_FLOAT_EQ(r.params.temperature, 1.0f);
  EXPECT_FLOAT_EQ(r.params.top_p, 1.0f);
  EXPECT_FALSE(r.params.seed);
  EXPECT_FALSE(r.stream);
  const ApiRequest top_k_off = completion({{"model", "m"}, {"prompt", "x"}, {"top_k", -1}, {"max_tokens", nullptr}});
  EXPECT_EQ(top_k_off.params.top_k, 0);
  EXPECT_FALSE(top_k_off.max_tokens_given);
}

TEST(Protocol, AcceptsEveryPromptForm) {
  EXPECT_EQ(completion({{"model", "m"}, {"prompt", {"one"}}}).prompt_text, "one");
  EXPECT_EQ(*completion({{"model", "m"}, {"prompt", {1, 2, 3}}}).prompt_tokens, (std::vector<std::int32_t>{1, 2, 3}));
  EXPECT_EQ(*completion({{"model", "m"}, {"prompt", {{4, 5}}}}).prompt_tokens, (std::vector<std::int32_t>{4, 5}));
  const auto c = ApiEndpoint::completions;
  expect_bad(c, {{"model", "m"}}, "prompt", "required");
  expect_bad(c, {{"model", "m"}, {"prompt", ""}}, "prompt", "empty");
  expect_bad(c, {{"model", "m"}, {"prompt", json::array()}}, "prompt", "empty");
  expect_bad(c, {{"model", "m"}, {"prompt", {"a", "b"}}}, "prompt", "one prompt per request");
  expect_bad(c, {{"model", "m"}, {"prompt", 5}}, "prompt", "got number");
  expect_bad(c, {{"model", "m"}, {"prompt", {1, "x"}}}, "prompt", "integers");
  expect_bad(c, {{"model", "m"}, {"prompt", {-1}}}, "prompt", "out of range");
  expect_bad(c, {{"model", "m"}, {"prompt", {{{"a", 1}}}}}, "prompt", "list of object");
}

TEST(Protocol, ParsesChatMessagesAndContentParts) {
  const ApiRequest r = chat({{"model", "m"},
                             {"messages",
                              {{{"role", "developer"}, {"content", "Be brief."}},
                               {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}},
                               {{"role", "assistant"}, {"content", nullptr}}}},
                             {"max_completion_tokens", 9},
                             {"max_tokens", 100}});
  ASSERT_EQ(r.messages.size(), 3u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "a\nb");
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(r.params.max_tokens, 9);
  const auto c = ApiEndpoint::chat_completions;
  expect_bad(c, {{"model", "m"}}, "messages", "required");
  expect_bad(c, {{"model", "m"}, {"messages", json::array()}}, "messages", "at least one");
  expect_bad(c, {{"model", "m"}, {"messages", "hi"}}, "messages", "got string");
  expect_bad(c, {{"model", "m"}, {"messages", {{{"content", "x"}}}}}, "messages[0].role", "must be a string");
  expect_bad(c, {{"model", "m"}, {"messages", {{{"role", "wizard"}, {"content", "x"}}}}}, "messages[0].role", "wizard");
  expect_bad(c, {{"model", "m"}, {"messages", {{{"role", "user"}}}}}, "messages[0].content", "required");
  expect_bad(c, {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", 3}}}}}, "messages[0].content", "got number");
  expect_bad(c, {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", {{{"type", "image_url"}}}}}}}},
             "messages[0].content", "image_url");
  expect_bad(c, {{"model", "m"}, {"messages", {{{"role", "tool"}, {"content", "x"}}}}}, "messages[0].role", "tool");
}

TEST(Protocol, RefusesWrongTypesAndValuesNamingTheField) {
  const auto c = ApiEndpoint::completions;
  const json base = {{"model", "m"}, {"prompt", "x"}};
  auto with = [&](const char* key, json value) {
    json b = base;
    b[key] = std::move(value);
    return b;
  };
  expect_bad(c, {{"prompt", "x"}}, "model", "required");
  expect_bad(c, with("model", 3), "model", "must be a string");
  expect_bad(c, with("temperature", "hot"), "temperature", "must be a number, got string");
  expect_bad(c, with("temperature", 2.5), "temperature", "between 0 and 2");
  expect_bad(c, with("temperature", -0.1), "temperature", "between 0 and 2");
  expect_bad(c, with("top_p", 0), "top_p", "(0, 1]");
  expect_bad(c, with("top_p", 1.5), "top_p", "(0, 1]");
  expect_bad(c, with("top_k", -2), "top_k", "-1 (off)");
  expect_bad(c, with("max_tokens", 0), "max_tokens", "at least 1");
  expect_bad(c, with("max_tokens", -5), "max_tokens", "at least 1");
  expect_bad(c, with("max_tokens", "10"), "max_tokens", "must be an integer, got string");
  expect_bad(c, with("max_tokens", 2.5), "max_tokens", "must be an integer, got number");
  expect_bad(c, with("max_tokens", 1e12), "max_tokens", "too large");
  expect_bad(c, with("seed", true), "seed", "must be an integer, got boolean");
  expect_bad(c, with("stream", "yes"), "stream", "must be a boolean");
  expect_bad(c, with("stream_options", {{"include_usage", true}}), "stream_options", "only allowed when 'stream'");
  expect_bad(c, with("stop", 5), "stop", "a string or a list of strings");
  expect_bad(c, with("stop", {"a", 1}), "stop", "found a number");
  expect_bad(c, with("ignore_eos", 1), "ignore_eos", "boolean");
  expect_bad(c, with("stop_token_ids", "eos"), "stop_token_ids", "list of token ids");
  EXPECT_EQ(completion(with("max_tokens", 3.0)).params.max_tokens, 3);  // an integral float is an integer
}

TEST(Protocol, SaysWhatIsNotSupported) {
  const json base = {{"model", "m"}, {"prompt", "x"}};
  auto with = [&](const char* key, json value) {
    json b = base;
    b[key] = std::move(value);
    return b;
  };
  const ApiError n = error_of(ApiEndpoint::completions, with("n", 2));
  EXPECT_EQ(n.status(), 400);
  EXPECT_EQ(n.param(), "n");
  EXPECT_EQ(n.code(), "unsupported_parameter");
  EXPECT_NE(std::string(n.what()).find("n = 2 is not supported"), std::string::npos) << n.what();
  for (const auto& [key, value] : std::vector<std::pair<const char*, json>>{
           {"best_of", 3}, {"echo", true}, {"suffix", "end"}, {"logit_bias", {{"5", 10}}}}) {
    const ApiError e = error_of(ApiEndpoint::completions, with(key, value));
    EXPECT_EQ(e.param(), key);
    EXPECT_EQ(e.code(), "unsupported_parameter") << key;
  }
  const json chat_base = {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "x"}}}}};
  for (const auto& [key, value] : std::vector<std::pair<const char*, json>>{
           {"tools", {{{"type", "function"}}}}, {"response_format", {{"type", "json_object"}}}}) {
    json b = chat_base;
    b[key] = value;
    EXPECT_EQ(error_of(ApiEndpoint::chat_completions, b).code(), "unsupported_parameter") << key;
  }
  json fine = chat_base;
  fine["logprobs"] = false;
  fine["tools"] = json::array();
  fine["response_format"] = {{"type", "text"}};
  EXPECT_NO_THROW(chat(fine));
}

TEST(Protocol, ParsesPenaltiesMinPAndLogprobs) {
  const json base = {{"model", "m"}, {"prompt", "x"}};
  auto with = [&](json extra) {
    json b = base;
    b.update(extra);
    return b;
  };
  const ApiRequest r = completion(with({{"presence_penalty", 0.5},
                                        {"frequency_penalty", -1.25},
                                        {"repetition_penalty", 1.3},
                                        {"min_p", 0.05},
                                        {"logprobs", 3}}));
  EXPECT_FLOAT_EQ(r.params.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.params.frequency_penalty, -1.25f);
  EXPECT_FLOAT_EQ(r.params.repetition_penalty, 1.3f);
  EXPECT_FLOAT_EQ(r.params.min_p, 0.05f);
  EXPECT_EQ(r.params.logprobs, 3);
  EXPECT_EQ(completion(base).params.logprobs, -1);
  EXPECT_EQ(completion(with({{"logprobs", 0}})).params.logprobs, 0);
  const auto c = ApiEndpoint::completions;
  expect_bad(c, with({{"presence_penalty", 2.5}}), "presence_penalty", "between -2 and 2, got 2.5");
  expect_bad(c, with({{"frequency_penalty", -3}}), "frequency_penalty", "between -2 and 2");
  expect_bad(c, with({{"repetition_penalty", 0}}), "repetition_penalty", "must be > 0");
  expect_bad(c, with({{"min_p", 1.5}}), "min_p", "in [0, 1], got 1.5");
  expect_bad(c, with({{"logprobs", 21}}), "logprobs", "between 0 and 20, got 21");
  expect_bad(c, with({{"logprobs", true}}), "logprobs", "must be an integer");

  const json chat_base = {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "x"}}}}};
  auto chat_with = [&](json extra) {
    json b = chat_base;
    b.update(extra);
    return b;
  };
  EXPECT_EQ(chat(chat_base).params.logprobs, -1);
  EXPECT_EQ(chat(chat_with({{"logprobs", false}})).params.logprobs, -1);
  EXPECT_EQ(chat(chat_with({{"logprobs", true}})).params.logprobs, 0);
  EXPECT_EQ(chat(chat_with({{"logprobs", true}, {"top_logprobs", 5}})).params.logprobs, 5);
  const auto h = ApiEndpoint::chat_completions;
  expect_bad(h, chat_with({{"top_logprobs", 2}}), "top_logprobs", "needs 'logprobs' set to true");
  expect_bad(h, chat_with({{"logprobs", true}, {"top_logprobs", 30}}), "top_logprobs", "between 0 and 20");
  expect_bad(h, chat_with({{"logprobs", 2}}), "logprobs", "must be a boolean");
}

TEST(Protocol, LogprobsInOpenAIsShapes) {
  const testing::FakeCodec codec;
  // Tokens 8 "h", 9 "i" and 30 (the first byte of "é": alone, not a character).
  std::vector<SampledToken> tokens(3);
  tokens[0] = {8, -0.25f, {{8, -0.25f}, {9, -1.5f}}};
  tokens[1] = {9, -0.5f, {{1, -0.375f}, {9, -0.5f}}};
  tokens[2] = {30, -std::numeric_limits<float>::infinity(), {}};
  const json chat_lp = chat_logprobs(tokens, codec);
  EXPECT_EQ(chat_lp, json::parse(R"({"content": [
      {"token": "h", "logprob": -0.25, "bytes": [104],
       "top_logprobs": [{"token": "h", "logprob": -0.25, "bytes": [104]},
                        {"token": "i", "logprob": -1.5, "bytes": [105]}]},
      {"token": "i", "logprob": -0.5, "bytes": [105],
       "top_logprobs": [{"token": "a", "logprob": -0.375, "bytes": [97]},
                        {"token": "i", "logprob": -0.5, "bytes": [105]}]},
      {"token": "�", "logprob": -9999.0, "bytes": [239, 191, 189], "top_logprobs": []}]})"));
  std::size_t offset = 0;
  const json first =
      completion_logprobs(std::vector<SampledToken>(tokens.begin(), tokens.begin() + 2), codec, offset);
  EXPECT_EQ(first, json::parse(R"({"tokens": ["h", "i"], "token_logprobs": [-0.25, -0.5],
                                    "top_logprobs": [{"h": -0.25, "i": -1.5}, {"a": -0.375, "i": -0.5}],
                                    "text_offset": [0, 1]})"));
  // A stream's next chunk carries on from the offset where the last one ended.
  const json second =
      completion_logprobs(std::vector<SampledToken>(tokens.begin() + 2, tokens.end()), codec, offset);
  EXPECT_EQ(second["text_offset"], json::parse("[2]"));
  EXPECT_EQ(offset, 3u);
  EXPECT_TRUE(chat_logprobs({}, codec).is_null());

  const ResponseMeta meta{"cmpl-1", 1700000000, "m"};
  RequestOutput out;
  out.text = "hi";
  out.finished = true;
  out.finish_reason = FinishReason::length;
  EXPECT_EQ(chat_completion_response(meta, out, chat_lp)["choices"][0]["logprobs"], chat_lp);
  EXPECT_EQ(completion_response(meta, out, first)["choices"][0]["logprobs"], first);
  EXPECT_EQ(chat_chunk(meta, "hi", FinishReason::none, false, chat_lp)["choices"][0]["logprobs"], chat_lp);
  EXPECT_EQ(completion_chunk(meta, "hi", FinishReason::none, first)["choices"][0]["logprobs"], first);
  EXPECT_TRUE(completion_response(meta, out)["choices"][0]["logprobs"].is_null());
}

TEST(Protocol, BadJsonAndNonObjectBodies) {
  try {
    parse_api_request(ApiEndpoint::completions, std::string("{\"model\": "));
    FAIL();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_NE(std::string(e.what()).find("not valid JSON"), std::string::npos);
  }
  EXPECT_EQ(error_of(ApiEndpoint::completions, json::array()).status(), 400);
}

TEST(Protocol, ErrorBodiesHaveOpenAIsShape) {
  const json body = ApiError(404, "no such model", "invalid_request_error", "model", "model_not_found").body();
  EXPECT_EQ(body, json::parse(R"({"error": {"message": "no such model", "type": "invalid_request_error",
                                           "param": "model", "code": "model_not_found"}})"));
  const json plain = ApiError(400, "bad").body();
  EXPECT_TRUE(plain["error"]["param"].is_null());
  EXPECT_TRUE(plain["error"]["code"].is_null());
}

TEST(Protocol, ResponsesAndChunks) {
  const ResponseMeta meta{"cmpl-1", 1700000000, "m"};
  RequestOutput out;
  out.text = "Hi";
  out.finished = true;
  out.finish_reason = FinishReason::length;
  out.prompt_tokens = 3;
  out.completion_tokens = 2;
  const json c = completion_response(meta, out);
  EXPECT_EQ(c["object"], "text_completion");
  EXPECT_EQ(c["choices"][0]["text"], "Hi");
  EXPECT_EQ(c["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(c["usage"], json::parse(R"({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})"));
  const json chat_body = chat_completion_response(meta, out);
  EXPECT_EQ(chat_body["object"], "chat.completion");
  EXPECT_EQ(chat_body["choices"][0]["message"], json::parse(R"({"role": "assistant", "content": "Hi"})"));
  const json role = chat_chunk(meta, "", FinishReason::none, true);
  EXPECT_EQ(role["object"], "chat.completion.chunk");
  EXPECT_EQ(role["choices"][0]["delta"], json::parse(R"({"role": "assistant", "content": ""})"));
  EXPECT_TRUE(role["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(chat_chunk(meta, "", FinishReason::stop)["choices"][0]["delta"], json::object());
  EXPECT_EQ(usage_chunk(meta, ApiEndpoint::completions, 3, 2)["choices"], json::array());
  EXPECT_EQ(sse_event(json{{"a", "x\ny"}}), "data: {\"a\":\"x\\ny\"}\n\n");
  EXPECT_EQ(sse_event(json{{"a", std::string("\xff")}}), "data: {\"a\":\"\xEF\xBF\xBD\"}\n\n");  // never throws
}

}  // namespace
}  // namespace atom
