// The server over real HTTP on the loopback, with the fake model of the engine tests.
#include <gtest/gtest.h>

#include <httplib.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <thread>

#include "../engine/fake_model.h"
#include "server/http_server.h"
#include "server/openai_protocol.h"

namespace atom {
namespace {

using json = nlohmann::json;
using testing::FakeCodec;
using testing::FakeRunner;
using testing::fake_text;
using testing::reference_generate;

constexpr int kContext = 256;

class ServerTest : public ::testing::Test {
 protected:
  void start(const std::string& api_key = "", bool with_engine = true) {
    std::signal(SIGPIPE, SIG_IGN);
    ServerOptions options;
    options.host = "127.0.0.1";
    options.port = 0;
    options.api_key = api_key;
    options.model_names = {"fake-model", "/models/fake.gguf"};
    if (http_threads) options.http_threads = http_threads;
    if (request_timeout.count()) options.request_timeout = request_timeout;
    server = std::make_unique<OpenAIServer>(options, metrics);
    port = server->bind();
    thread = std::thread([this] { server->listen(); });
    if (with_engine) attach_engine();
  }
  void attach_engine(int max_batch = 8) {
    EngineConfig config;
    config.limits.max_batch = max_batch;
    config.limits.max_batched_tokens = 64;
    config.num_kv_blocks = kv_blocks;
    auto owned = std::make_unique<FakeRunner>(kContext);
    runner = owned.get();
    engine = std::make_unique<Engine>(std::move(owned), codec, config, &metrics);
    engine->start();
    server->set_engine(engine.get());
  }
  void TearDown() override {
    if (server) server->stop();
    if (thread.joinable()) thread.join();
    if (engine) engine->shutdown();
  }
  httplib::Client client() {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(30, 0);
    return c;
  }
  httplib::Result post(const std::string& path, const json& body, const httplib::Headers& headers = {}) {
    return client().Post(path.c_str(), headers, body.dump(), "application/json");
  }
  // Sends a streaming request; returns the data payloads of the events in order ("[DONE]" included).
  std::vector<std::string> stream_events(const std::string& path, const json& body, int* status = nullptr) {
    std::string raw;
    httplib::Request req;
    req.method = "POST";
    req.path = path;
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char* data, std::size_t n, std::uint64_t, std::uint64_t) {
      raw.append(data, n);
      return true;
    };
    auto result = client().send(req);
    if (status) *status = result ? result->status : -1;
    if (!result) ADD_FAILURE() << "HTTP client error: " << httplib::to_string(result.error());
    std::vector<std::string> events;
    std::size_t at = 0;
    while ((at = raw.find("\n\n")) != std::string::npos) {
      const std::string event = raw.substr(0, at);
      raw.erase(0, at + 2);
      if (event.rfind("data: ", 0) == 0) events.push_back(event.substr(6));
    }
    EXPECT_TRUE(raw.empty()) << "trailing bytes: " << raw;
    return events;
  }
  double metric(const std::string& series) {
    const std::string text = client().Get("/metrics")->body;
    const std::size_t at = text.find("\n" + series + " ");
    if (at == std::string::npos) return -1;
    return std::stod(text.substr(at + series.size() + 2));
  }

  MetricsRegistry metrics;
  std::shared_ptr<FakeCodec> codec = std::make_shared<FakeCodec>();
  FakeRunner* runner = nullptr;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<OpenAIServer> server;
  std::thread thread;
  int port = 0;
  int kv_blocks = 128;
  int http_threads = 0;  // 0: the default
  std::chrono::milliseconds request_timeout{0};
};

// A raw loopback connection, for what httplib's client cannot send (pipelining, bad framing, slow bytes).
class RawConnection {
 public:
  explicit RawConnection(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~RawConnection() { ::close(fd_); }
  bool connected() const { return connected_; }
  bool send(const std::string& bytes) {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }
  // Everything received until the peer closes or `timeout` passes.
  std::string receive_all(std::chrono::milliseconds timeout) {
    std::string out;
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) break;
      out.append(buf, static_cast<std::size_t>(n));
    }
    return out;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

int count_of(const std::string& text, const std::string& needle) {
  int n = 0;
  for (std::size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

json completion_body(const std::string& prompt, int max_tokens, bool stream = false) {
  return {{"model", "fake-model"}, {"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0},
          {"ignore_eos", true}, {"stream", stream}};
}

TEST_F(ServerTest, HealthShowsLoadingThenReady) {
  start("", /*with_engine=*/false);
  server->set_loading("loading weights", 0.25);
  auto health = client().Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 503);
  const json loading = json::parse(health->body);
  EXPECT_EQ(loading["status"], "loading");
  EXPECT_EQ(loading["stage"], "loading weights");
  EXPECT_DOUBLE_EQ(loading["progress"].get<double>(), 0.25);
  auto early = post("/v1/completions", completion_body("hi", 2));
  EXPECT_EQ(early->status, 503);
  EXPECT_EQ(json::parse(early->body)["error"]["type"], "service_unavailable");
  attach_engine();
  health = client().Get("/health");
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(json::parse(health->body)["status"], "ok");
  auto models = client().Get("/v1/models");
  ASSERT_EQ(models->status, 200);
  const json list = json::parse(models->body);
  EXPECT_EQ(list["object"], "list");
  EXPECT_EQ(list["data"][0]["id"], "fake-model");
  EXPECT_EQ(list["data"][0]["max_model_len"], kContext);
}

TEST_F(ServerTest, CompletionsAndChatMatchTheEngine) {
  start();
  const auto prompt_ids = codec->encode("hello world", true);
  const std::string expected = fake_text(reference_generate(prompt_ids, 12));
  auto res = post("/v1/completions", completion_body("hello world", 12));
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
  const json body = json::parse(res->body);
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["model"], "fake-model");
  EXPECT_EQ(body["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  EXPECT_EQ(body["choices"][0]["text"], expected);
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["usage"]["prompt_tokens"], prompt_ids.size());
  EXPECT_EQ(body["usage"]["completion_tokens"], 12);
  // The model may also be named by its path; token-id prompts skip the tokenizer.
  json by_ids = completion_body("", 12);
  by_ids["model"] = "/models/fake.gguf";
  by_ids["prompt"] = prompt_ids;
  EXPECT_EQ(json::parse(post("/v1/completions", by_ids)->body)["choices"][0]["text"], expected);

  const json chat = {{"model", "fake-model"},
                     {"messages", {{{"role", "user"}, {"content", "hi"}}}},
                     {"max_tokens", 10},
                     {"temperature", 0},
                     {"ignore_eos", true}};
  const auto chat_ids = codec->encode(codec->apply_chat_template({{"user", "hi"}}), false);
  res = post("/v1/chat/completions", chat);
  ASSERT_EQ(res->status, 200) << res->body;
  const json chat_body = json::parse(res->body);
  EXPECT_EQ(chat_body["object"], "chat.completion");
  EXPECT_EQ(chat_body["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(chat_body["choices"][0]["message"]["content"], fake_text(reference_generate(chat_ids, 10)));
  EXPECT_EQ(chat_body["usage"]["prompt_tokens"], chat_ids.size());
}

TEST_F(ServerTest, StreamsServerSentEventsEndingWithDone) {
  start();
  const std::string expected = fake_text(reference_generate(codec->encode("stream me", true), 20));
  json body = completion_body("stream me", 20, /*stream=*/true);
  body["stream_options"] = {{"include_usage", true}};
  int status = 0;
  const auto events = stream_events("/v1/completions", body, &status);
  EXPECT_EQ(status, 200);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  for (std::size_t i = 0; i + 2 < events.size(); ++i) {
    const json chunk = json::parse(events[i]);
    EXPECT_EQ(chunk["object"], "text_completion");
    text += chunk["choices"][0]["text"].get<std::string>();
    EXPECT_EQ(chunk["choices"][0]["finish_reason"].is_null(), i + 3 < events.size()) << events[i];
  }
  EXPECT_EQ(text, expected);
  const json usage = json::parse(events[events.size() - 2]);
  EXPECT_EQ(usage["choices"], json::array());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 20);

  const json chat = {{"model", "fake-model"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}},
                     {"max_tokens", 10},      {"temperature", 0},
                     {"ignore_eos", true},    {"stream", true}};
  const auto chat_events = stream_events("/v1/chat/completions", chat);
  ASSERT_GE(chat_events.size(), 3u);
  EXPECT_EQ(json::parse(chat_events[0])["choices"][0]["delta"]["role"], "assistant");
  std::string chat_text;
  for (std::size_t i = 1; i + 1 < chat_events.size(); ++i) {
    const json chunk = json::parse(chat_events[i]);
    EXPECT_EQ(chunk["object"], "chat.completion.chunk");
    chat_text += chunk["choices"][0]["delta"].value("content", "");
  }
  EXPECT_EQ(json::parse(chat_events[chat_events.size() - 2])["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(chat_text, fake_text(reference_generate(codec->encode(codec->apply_chat_template({{"user", "hi"}}), false), 10)));
  EXPECT_EQ(chat_events.back(), "[DONE]");
}

TEST_F(ServerTest, LogprobsComeBackInOpenAIsShapesStreamingToo) {
  start();
  json body = completion_body("hello", 8);
  body["logprobs"] = 2;
  auto res = post("/v1/completions", body);
  ASSERT_EQ(res->status, 200) << res->body;
  const json choice = json::parse(res->body)["choices"][0];
  const json& lp = choice["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 8u) << lp.dump();
  std::string joined;
  for (std::size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(lp["text_offset"][i], joined.size());
    joined += lp["tokens"][i].get<std::string>();
    EXPECT_LE(lp["token_logprobs"][i].get<double>(), 0.0);
    EXPECT_GE(lp["top_logprobs"][i].size(),
              2u);  // the two most likely and the sampled token (greedy: one of them)
    EXPECT_EQ(lp["top_logprobs"][i][lp["tokens"][i].get<std::string>()], lp["token_logprobs"][i]);
  }
  EXPECT_EQ(joined, choice["text"]);

  const json chat = {{"model", "fake-model"},
                     {"messages", {{{"role", "user"}, {"content", "hi"}}}},
                     {"max_tokens", 6},
                     {"temperature", 0.7},
                     {"seed", 5},
                     {"ignore_eos", true},
                     {"logprobs", true},
                     {"top_logprobs", 3},
                     {"presence_penalty", 0.5},
                     {"repetition_penalty", 1.2}};
  res = post("/v1/chat/completions", chat);
  ASSERT_EQ(res->status, 200) << res->body;
  const json whole = json::parse(res->body)["choices"][0];
  ASSERT_EQ(whole["logprobs"]["content"].size(), 6u);
  std::string content_text;
  for (const json& item : whole["logprobs"]["content"]) {
    EXPECT_EQ(item["top_logprobs"].size(), 3u);
    EXPECT_GE(item["top_logprobs"][0]["logprob"].get<double>(),
              item["top_logprobs"][2]["logprob"].get<double>());
    content_text += item["token"].get<std::string>();
  }
  EXPECT_EQ(content_text, whole["message"]["content"]);

  // The same request streamed: the same tokens (same seed), their logprobs spread over the chunks.
  json streamed = chat;
  streamed["stream"] = true;
  const auto events = stream_events("/v1/chat/completions", streamed);
  json items = json::array();
  for (std::size_t i = 0; i + 1 < events.size(); ++i) {
    const json chunk = json::parse(events[i]);
    const json& chunk_lp = chunk["choices"][0]["logprobs"];
    if (!chunk_lp.is_null())
      for (const json& item : chunk_lp["content"]) items.push_back(item);
  }
  EXPECT_EQ(items, whole["logprobs"]["content"]);

  json bad = chat;
  bad["top_logprobs"] = 21;
  res = post("/v1/chat/completions", bad);
  EXPECT_EQ(res->status, 400);
  EXPECT_EQ(json::parse(res->body)["error"]["param"], "top_logprobs");
}

TEST_F(ServerTest, AnswersErrorsInOpenAIsShapeWithTheRightStatus) {
  start();
  auto check = [&](httplib::Result res, int status, const std::string& param, const std::string& code) {
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, status) << res->body;
    const json body = json::parse(res->body);
    ASSERT_TRUE(body.contains("error")) << res->body;
    const json& e = body["error"];
    EXPECT_TRUE(e["message"].is_string());
    EXPECT_TRUE(e["type"].is_string());
    if (param.empty()) EXPECT_TRUE(e["param"].is_null()) << res->body;
    else EXPECT_EQ(e["param"], param) << res->body;
    if (code.empty()) EXPECT_TRUE(e["code"].is_null()) << res->body;
    else EXPECT_EQ(e["code"], code) << res->body;
  };
  check(client().Post("/v1/completions", "{not json", "application/json"), 400, "", "");
  json unknown = completion_body("x", 2);
  unknown["model"] = "gpt-4";
  check(post("/v1/completions", unknown), 404, "model", "model_not_found");
  check(post("/v1/completions", completion_body(std::string(300, 'a'), 2)), 400, "prompt", "context_length_exceeded");
  check(post("/v1/completions", completion_body("short", kContext)), 400, "max_tokens", "context_length_exceeded");
  check(post("/v1/completions", completion_body("short", 0)), 400, "max_tokens", "");
  json two = completion_body("x", 2);
  two["n"] = 2;
  check(post("/v1/completions", two), 400, "n", "unsupported_parameter");
  json hot = completion_body("x", 2);
  hot["temperature"] = "hot";
  check(post("/v1/completions", hot), 400, "temperature", "");
  json ids = completion_body("", 2);
  ids["prompt"] = {1, 2, 999};
  check(post("/v1/completions", ids), 400, "prompt", "");
  check(client().Get("/v1/completions"), 405, "", "method_not_allowed");
  check(client().Get("/v1/nothing"), 404, "", "not_found");
  // A chat without max_tokens gets the rest of the context.
  const json chat = {{"model", "fake-model"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}},
                     {"temperature", 0}, {"ignore_eos", true}};
  auto res = post("/v1/chat/completions", chat);
  ASSERT_EQ(res->status, 200) << res->body;
  const json usage = json::parse(res->body)["usage"];
  EXPECT_EQ(usage["total_tokens"], kContext);
  EXPECT_EQ(json::parse(res->body)["choices"][0]["finish_reason"], "length");
}

TEST_F(ServerTest, ApiKeyGuardsTheApiOnly) {
  start("sekret");
  auto res = post("/v1/completions", completion_body("x", 2));
  EXPECT_EQ(res->status, 401);
  EXPECT_EQ(json::parse(res->body)["error"]["code"], "invalid_api_key");
  EXPECT_EQ(post("/v1/completions", completion_body("x", 2), {{"Authorization", "Bearer wrong"}})->status, 401);
  EXPECT_EQ(client().Get("/v1/models")->status, 401);
  EXPECT_EQ(post("/v1/completions", completion_body("x", 2), {{"Authorization", "Bearer sekret"}})->status, 200);
  EXPECT_EQ(client().Get("/health")->status, 200);
  EXPECT_EQ(client().Get("/metrics")->status, 200);
}

TEST_F(ServerTest, AClientLeavingMidStreamCancelsItsRequest) {
  start();
  runner->set_step_delay_ms(20);  // 240 tokens would take 5 s
  std::string raw;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = completion_body("go on", 240, /*stream=*/true).dump();
  req.set_header("Content-Type", "application/json");
  int received = 0;
  req.content_receiver = [&](const char* data, std::size_t n, std::uint64_t, std::uint64_t) {
    raw.append(data, n);
    return ++received < 3;  // hang up after a few chunks
  };
  const auto start_time = std::chrono::steady_clock::now();
  client().send(req);
  EXPECT_EQ(raw.rfind("data: ", 0), 0u) << "received: " << raw;
  // The engine notices within a few tokens: nothing runs, and the request counts as cancelled.
  while (metric("atom_requests_finished_total{finished_reason=\"cancelled\"}") < 1) {
    ASSERT_LT(std::chrono::steady_clock::now() - start_time, std::chrono::seconds(4)) << "request still running";
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(server->wait_until_idle(std::chrono::seconds(2)));
  EXPECT_EQ(engine->stats().running, 0);
  EXPECT_EQ(engine->stats().kv_blocks_used, 0);
  EXPECT_LT(metric("atom_generation_tokens_total"), 120);
}

TEST_F(ServerTest, DrainingRefusesNewRequestsAndFinishesRunningOnes) {
  start();
  runner->set_step_delay_ms(5);
  std::vector<std::string> events;
  std::thread streaming([&] { events = stream_events("/v1/completions", completion_body("keep going", 60, true)); });
  while (engine->stats().running == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  server->start_draining();
  EXPECT_EQ(server->in_flight(), 1);
  auto refused = post("/v1/completions", completion_body("late", 2));
  EXPECT_EQ(refused->status, 503);
  EXPECT_EQ(client().Get("/health")->status, 503);
  EXPECT_TRUE(server->wait_until_idle(std::chrono::seconds(20)));
  streaming.join();
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  for (std::size_t i = 0; i + 1 < events.size(); ++i) text += json::parse(events[i])["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(text, fake_text(reference_generate(codec->encode("keep going", true), 60)));
}

TEST_F(ServerTest, ManyConcurrentStreamsAllComplete) {
  start();
  std::vector<std::thread> clients;
  std::atomic<int> good{0};
  for (int i = 0; i < 24; ++i) {  // all at once: the listen backlog must take the burst
    clients.emplace_back([&, i] {
      const std::string prompt = "client " + std::string(1, static_cast<char>('a' + i));
      int status = 0;
      const auto events = stream_events("/v1/completions", completion_body(prompt, 15, true), &status);
      if (status != 200) ADD_FAILURE() << "status " << status << (events.empty() ? "" : events[0]);
      std::string text;
      for (std::size_t e = 0; e + 1 < events.size(); ++e) text += json::parse(events[e])["choices"][0]["text"].get<std::string>();
      if (!events.empty() && events.back() == "[DONE]" &&
          text == fake_text(reference_generate(codec->encode(prompt, true), 15))) {
        ++good;
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(good.load(), 24);
  EXPECT_LE(runner->max_batch_seen(), 8);
  ASSERT_TRUE(server->wait_until_idle(std::chrono::seconds(5)));  // requests are counted as they close
  EXPECT_GE(metric("atom_http_requests_total{endpoint=\"/v1/completions\",status=\"200\"}"), 24);
  const std::string text = client().Get("/metrics")->body;
  for (const char* name : {"atom_time_to_first_token_seconds_bucket", "atom_time_per_output_token_seconds_sum",
                           "atom_num_requests_running", "atom_num_requests_waiting", "atom_kv_cache_blocks_used",
                           "atom_prompt_tokens_total", "atom_generation_tokens_total"}) {
    EXPECT_NE(text.find(name), std::string::npos) << name;
  }
}

}  // namespace
}  // namespace atom

namespace atom {
namespace {

TEST_F(ServerTest, PipelinedRequestsOnOneConnectionAreAllAnswered) {
  start();
  RawConnection c(port);
  ASSERT_TRUE(c.connected());
  const std::string body = completion_body("hi", 2).dump();
  ASSERT_TRUE(
      c.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
             "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: " +
             std::to_string(body.size()) + "\r\n\r\n" + body +
             "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  const std::string answers = c.receive_all(std::chrono::seconds(10));
  EXPECT_EQ(count_of(answers, "HTTP/1.1 200"), 3) << answers;
  EXPECT_NE(answers.find("text_completion"), std::string::npos);
  EXPECT_NE(answers.find("\"object\":\"list\""), std::string::npos);
}

TEST_F(ServerTest, AmbiguousBodyFramingIsRefused) {
  start();
  for (const char* headers : {"Content-Length: 5\r\nContent-Length: 6\r\n", "Content-Length: 5, 6\r\n",
                              "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"}) {
    RawConnection c(port);
    ASSERT_TRUE(c.send(std::string("POST /v1/completions HTTP/1.1\r\nHost: x\r\n") + headers + "\r\n{}    "));
    const std::string answer = c.receive_all(std::chrono::seconds(5));
    EXPECT_EQ(answer.rfind("HTTP/1.1 400", 0), 0u) << headers << " -> " << answer;
  }
  // A body over the limit is refused from its headers (413), before it is sent.
  RawConnection big(port);
  ASSERT_TRUE(big.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 9000000\r\n\r\n{"));
  const std::string too_large = big.receive_all(std::chrono::seconds(5));
  EXPECT_EQ(too_large.rfind("HTTP/1.1 413", 0), 0u) << too_large;
  EXPECT_NE(too_large.find("\"error\""), std::string::npos) << too_large;
  // Repeating the same length is harmless.
  RawConnection same(port);
  const std::string body = completion_body("hi", 2).dump();
  ASSERT_TRUE(same.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: " +
                        std::to_string(body.size()) + "\r\nContent-Length: " + std::to_string(body.size()) +
                        "\r\n\r\n" + body));
  EXPECT_EQ(same.receive_all(std::chrono::seconds(5)).rfind("HTTP/1.1 200", 0), 0u);
}

TEST_F(ServerTest, BearerSchemeIsCaseInsensitiveButTheKeyIsNot) {
  start("sekret");
  for (const char* auth : {"Bearer sekret", "bearer sekret", "BEARER sekret", "Bearer  sekret"}) {
    EXPECT_EQ(post("/v1/completions", completion_body("x", 2), {{"Authorization", auth}})->status, 200)
        << auth;
  }
  for (const char* auth : {"Bearer Sekret", "Basic sekret", "Bearer", "Bearer ", "Bearersekret", "sekret"}) {
    EXPECT_EQ(post("/v1/completions", completion_body("x", 2), {{"Authorization", auth}})->status, 401)
        << auth;
  }
}

TEST_F(ServerTest, SlowClientsHoldNoWorkerAndTimeOut) {
  http_threads = 4;
  request_timeout = std::chrono::milliseconds(1500);
  start();
  // Three times as many slow clients as workers, each sending one byte of its headers every 300 ms.
  std::vector<std::unique_ptr<RawConnection>> slow;
  for (int i = 0; i < 12; ++i) slow.push_back(std::make_unique<RawConnection>(port));
  const std::string request = "POST /v1/completions HTTP/1.1\r\nHost: x\r\n";
  std::atomic<bool> done{false};
  std::thread trickle([&] {
    for (std::size_t i = 0; i < request.size() && !done; ++i) {
      for (auto& c : slow) c->send(request.substr(i, 1));
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    auto c = client();
    c.set_read_timeout(2, 0);
    auto health = c.Get("/health");
    ASSERT_TRUE(health) << "/health got no answer while slow clients are connected";
    EXPECT_EQ(health->status, 200);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(1000));
  }
  // Past the request deadline the slow clients get 408 and are closed.
  const std::string answer = slow[0]->receive_all(std::chrono::seconds(4));
  EXPECT_EQ(answer.rfind("HTTP/1.1 408", 0), 0u) << answer;
  done = true;
  trickle.join();
}

TEST_F(ServerTest, ANonStreamingClientLeavingCancelsItsRequest) {
  start();
  runner->set_step_delay_ms(20);  // 240 tokens would take 5 s
  {
    auto c = client();
    c.set_read_timeout(0, 300000);  // gives up after 0.3 s and closes the connection
    auto res = c.Post("/v1/completions", completion_body("go on", 240).dump(), "application/json");
    EXPECT_FALSE(res);
  }
  const auto start_time = std::chrono::steady_clock::now();
  while (metric("atom_requests_finished_total{finished_reason=\"cancelled\"}") < 1) {
    ASSERT_LT(std::chrono::steady_clock::now() - start_time, std::chrono::seconds(3))
        << "request still running";
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(server->wait_until_idle(std::chrono::seconds(2)));
  EXPECT_EQ(engine->stats().running, 0);
  EXPECT_LT(metric("atom_generation_tokens_total"), 120);
}

TEST_F(ServerTest, StopBeforeListenDoesNotHang) {
  for (int i = 0; i < 20; ++i) {
    ServerOptions options;
    options.port = 0;
    OpenAIServer s(options, metrics);
    s.bind();
    std::thread listening([&] { s.listen(); });
    if (i % 2) std::this_thread::sleep_for(std::chrono::milliseconds(i));
    s.stop();  // before or after the thread got to listen
    listening.join();
  }
  ServerOptions options;
  options.port = 0;
  OpenAIServer never(options, metrics);
  never.bind();
  never.stop();
  never.listen();  // returns at once
}

TEST_F(ServerTest, DefaultMaxTokensFitTheKvPool) {
  kv_blocks = 4;  // 64 tokens of 16-token blocks, well below the context of 256
  start();
  auto chat = post("/v1/chat/completions", {{"model", "fake-model"},
                                            {"messages", {{{"role", "user"}, {"content", "hello"}}}},
                                            {"temperature", 0},
                                            {"ignore_eos", true}});
  ASSERT_EQ(chat->status, 200) << chat->body;
  const json usage = json::parse(chat->body)["usage"];
  EXPECT_EQ(usage["total_tokens"].get<int>(), 64);
  EXPECT_EQ(json::parse(chat->body)["choices"][0]["finish_reason"], "length");
  // A given max_tokens beyond the pool is still refused, with a 400.
  EXPECT_EQ(post("/v1/completions", completion_body("hello", 100))->status, 400);
  // A prompt filling the whole pool leaves no room.
  auto full = post("/v1/completions", {{"model", "fake-model"}, {"prompt", std::string(70, 'a')}});
  EXPECT_EQ(full->status, 400) << full->body;
}

TEST_F(ServerTest, OutOfRangeNumbersAndDeepNestingAre400) {
  start();
  const std::string head = R"({"model": "fake-model", "prompt": "x", )";
  for (const std::string tail :
       {R"("max_tokens": 1e999})", R"("max_tokens": -1e999})", R"("temperature": 1e999})",
        R"("seed": 1e999})", R"("seed": 1e300})", R"("max_tokens": 1e300})", R"("top_k": 1e30})",
        R"("seed": 18446744073709551616})"}) {
    auto res = client().Post("/v1/completions", head + tail, "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 400) << tail << " -> " << res->body;
    EXPECT_EQ(json::parse(res->body)["error"]["type"], "invalid_request_error");
  }
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  for (const std::string& body : {deep, head + R"("stop": )" + deep + "}"}) {
    auto res = client().Post("/v1/completions", body, "application/json");
    ASSERT_TRUE(res) << "no answer to a deeply nested body";
    EXPECT_EQ(res->status, 400);
    EXPECT_NE(res->body.find("nested deeper"), std::string::npos) << res->body.substr(0, 300);
  }
  EXPECT_EQ(client().Get("/health")->status, 200);
}

TEST_F(ServerTest, AStreamCutShortByShutdownEndsWithAnErrorNotAbort) {
  start();
  runner->set_step_delay_ms(20);
  std::vector<std::string> events;
  std::thread streaming(
      [&] { events = stream_events("/v1/completions", completion_body("keep going", 200, true)); });
  while (engine->stats().running == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  server->start_draining();
  engine->shutdown();  // what `atom serve` does when the drain times out
  streaming.join();
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  bool error_event = false;
  for (std::size_t i = 0; i + 1 < events.size(); ++i) {
    const json e = json::parse(events[i]);
    if (e.contains("error")) {
      error_event = true;
      continue;
    }
    const json& finish = e["choices"][0]["finish_reason"];
    EXPECT_TRUE(finish.is_null() || finish == "stop" || finish == "length") << events[i];
  }
  EXPECT_TRUE(error_event);
}

}  // namespace
}  // namespace atom
