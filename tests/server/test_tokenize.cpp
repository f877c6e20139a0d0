// POST /tokenize and /detokenize: vLLM's shapes, errors naming the field, over real HTTP with the fake model.
#include <gtest/gtest.h>

#include <httplib.h>

#include <csignal>
#include <thread>

#include "../engine/fake_model.h"
#include "server/http_server.h"
#include "server/tokenize_api.h"

namespace atom {
namespace {

using json = nlohmann::json;
using testing::FakeCodec;
using testing::FakeRunner;

const KnownModel kKnown = [](const std::string& name) { return name == "fake-model"; };

// The ApiError a body gets, as {status, param}.
std::pair<int, std::string> error_of(bool detokenize, const std::string& body) {
  const FakeCodec codec;
  try {
    if (detokenize) {
      answer_detokenize(body, codec, kKnown);
    } else {
      answer_tokenize(body, codec, 256, kKnown);
    }
  } catch (const ApiError& e) {
    EXPECT_FALSE(std::string(e.what()).empty());
    return {e.status(), e.param()};
  }
  ADD_FAILURE() << "accepted: " << body;
  return {200, ""};
}

TEST(TokenizeApi, TokenizesPromptsAndChatsLikeTheCodec) {
  const FakeCodec codec;
  const json plain = answer_tokenize(R"({"model": "fake-model", "prompt": "hi there"})", codec, 256, kKnown);
  EXPECT_EQ(plain["tokens"].get<std::vector<std::int32_t>>(), codec.encode("hi there", true));
  EXPECT_EQ(plain["count"], codec.encode("hi there", true).size());
  EXPECT_EQ(plain["max_model_len"], 256);
  const json bare = answer_tokenize(R"({"prompt": "hi", "add_special_tokens": false})", codec, 256, kKnown);
  EXPECT_EQ(bare["tokens"].get<std::vector<std::int32_t>>(), codec.encode("hi", false));
  const json chat =
      answer_tokenize(R"({"messages": [{"role": "user", "content": "hi"}]})", codec, 256, kKnown);
  EXPECT_EQ(chat["tokens"].get<std::vector<std::int32_t>>(),
            codec.encode(codec.apply_chat_template({{"user", "hi"}}), false));
  const json empty = answer_tokenize(R"({"prompt": "", "add_special_tokens": false})", codec, 256, kKnown);
  EXPECT_EQ(empty["count"], 0);
}

TEST(TokenizeApi, DetokenizesIdsBackToText) {
  const FakeCodec codec;
  const json text =
      answer_detokenize(R"({"model": "fake-model", "tokens": [8, 9, 27, 30, 31]})", codec, kKnown);
  EXPECT_EQ(text["prompt"], "hi \xC3\xA9");
  EXPECT_EQ(answer_detokenize(R"({"tokens": []})", codec, kKnown)["prompt"], "");
}

TEST(TokenizeApi, RefusesBadInputNamingTheField) {
  EXPECT_EQ(error_of(false, "not json").first, 400);
  EXPECT_EQ(error_of(false, "[1, 2]").first, 400);
  EXPECT_EQ(error_of(false, "{}"), std::make_pair(400, std::string("prompt")));
  EXPECT_EQ(error_of(false, R"({"prompt": 5})"), std::make_pair(400, std::string("prompt")));
  EXPECT_EQ(error_of(false, R"({"prompt": ["a"]})"), std::make_pair(400, std::string("prompt")));
  EXPECT_EQ(error_of(false, R"({"prompt": "a", "messages": []})"),
            std::make_pair(400, std::string("messages")));
  EXPECT_EQ(error_of(false, R"({"messages": "hi"})"), std::make_pair(400, std::string("messages")));
  EXPECT_EQ(error_of(false, R"({"messages": [{"role": "wizard", "content": "x"}]})"),
            std::make_pair(400, std::string("messages[0].role")));
  EXPECT_EQ(error_of(false, R"({"prompt": "a", "add_special_tokens": "yes"})"),
            std::make_pair(400, std::string("add_special_tokens")));
  EXPECT_EQ(
      error_of(false, R"({"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": 1})"),
      std::make_pair(400, std::string("add_generation_prompt")));
  EXPECT_EQ(error_of(false, R"({"model": "other", "prompt": "a"})"),
            std::make_pair(404, std::string("model")));
  EXPECT_EQ(error_of(false, R"({"model": 3, "prompt": "a"})"), std::make_pair(400, std::string("model")));
  EXPECT_EQ(error_of(true, "{}"), std::make_pair(400, std::string("tokens")));
  EXPECT_EQ(error_of(true, R"({"tokens": "8 9"})"), std::make_pair(400, std::string("tokens")));
  EXPECT_EQ(error_of(true, R"({"tokens": [8, "9"]})"), std::make_pair(400, std::string("tokens[1]")));
  EXPECT_EQ(error_of(true, R"({"tokens": [8, 1.5]})"), std::make_pair(400, std::string("tokens[1]")));
  EXPECT_EQ(error_of(true, R"({"tokens": [-1]})"), std::make_pair(400, std::string("tokens[0]")));
  EXPECT_EQ(error_of(true, R"({"tokens": [8, 64]})"), std::make_pair(400, std::string("tokens[1]")));
  EXPECT_EQ(error_of(true, R"({"tokens": [18446744073709551615]})"),
            std::make_pair(400, std::string("tokens[0]")));
  EXPECT_EQ(error_of(true, R"({"model": "other", "tokens": [1]})"),
            std::make_pair(404, std::string("model")));
}

TEST(TokenizeApi, ServedOverHttpBehindTheApiKey) {
  std::signal(SIGPIPE, SIG_IGN);
  MetricsRegistry metrics;
  ServerOptions options;
  options.port = 0;
  options.api_key = "sekret";
  options.model_names = {"fake-model"};
  OpenAIServer server(options, metrics);
  const int port = server.bind();
  std::thread thread([&] { server.listen(); });
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(30, 0);
  const httplib::Headers auth = {{"Authorization", "Bearer sekret"}};
  const std::string body = R"({"model": "fake-model", "prompt": "abc"})";
  auto loading = client.Post("/tokenize", auth, body, "application/json");
  ASSERT_TRUE(loading);
  EXPECT_EQ(loading->status, 503);

  EngineConfig config;
  config.num_kv_blocks = 16;
  Engine engine(std::make_unique<FakeRunner>(256), std::make_shared<FakeCodec>(), config, &metrics);
  server.set_engine(&engine);
  EXPECT_EQ(client.Post("/tokenize", body, "application/json")->status, 401);
  auto res = client.Post("/tokenize", auth, body, "application/json");
  ASSERT_EQ(res->status, 200) << res->body;
  const json tokens = json::parse(res->body);
  EXPECT_EQ(tokens["tokens"], json({58, 1, 2, 3}));
  EXPECT_EQ(tokens["count"], 4);
  EXPECT_EQ(tokens["max_model_len"], 256);
  res = client.Post("/detokenize", auth, json{{"tokens", tokens["tokens"]}}.dump(), "application/json");
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(json::parse(res->body)["prompt"], "0abc");
  res = client.Post("/detokenize", auth, R"({"tokens": [1, 99]})", "application/json");
  EXPECT_EQ(res->status, 400);
  EXPECT_EQ(json::parse(res->body)["error"]["param"], "tokens[1]");
  EXPECT_EQ(client.Get("/tokenize", auth)->status, 405);
  EXPECT_NE(client.Get("/metrics")->body.find("endpoint=\"/detokenize\""), std::string::npos);
  server.stop();
  thread.join();
  engine.shutdown();
}

}  // namespace
}  // namespace atom
