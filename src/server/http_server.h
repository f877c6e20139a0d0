#pragma once
// The OpenAI-compatible HTTP server (cpp-httplib): /v1/completions, /v1/chat/completions (JSON or SSE
// streams), /v1/models, /health, /metrics. It can listen before the model is loaded: /health answers 503
// with the loading stage until set_engine(), and the API answers 503 meanwhile. start_draining() turns
// new API requests away (503) while running ones finish; wait_until_idle() says when they have.
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/metrics.h"

namespace atom {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                      // 0: any free port (see bind())
  std::string api_key;                  // non-empty: /v1/* need "Authorization: Bearer <key>"
  std::vector<std::string> model_names;  // names a request's "model" may use; the first is the one listed
  int http_threads = 128;               // a streaming request holds a thread for its whole duration
  bool log_requests = false;            // one line per request on stderr
  std::size_t max_body_bytes = 8u << 20;
  // A request must arrive whole (headers and body) within request_timeout of its first byte; a kept-alive
  // connection may stay silent for idle_timeout between requests. Waiting clients hold no worker thread.
  std::chrono::milliseconds request_timeout{10000};
  std::chrono::milliseconds idle_timeout{5000};
};

class OpenAIServer {
 public:
  OpenAIServer(ServerOptions options, MetricsRegistry& metrics);
  ~OpenAIServer();
  OpenAIServer(const OpenAIServer&) = delete;
  OpenAIServer& operator=(const OpenAIServer&) = delete;

  // Loading progress shown by /health until the engine is set.
  void set_loading(const std::string& stage, double fraction);
  // The engine serving requests from now on (not owned; it must outlive the server's listening).
  void set_engine(Engine* engine);

  // Binds host:port (throws atom::Error naming them when it cannot); returns the port bound.
  int bind();
  // Serves on the bound socket until stop(); call bind() first.
  void listen();
  void stop();

  void start_draining();
  // True when no API request is in flight (streams included) within `timeout`.
  bool wait_until_idle(std::chrono::milliseconds timeout);
  int in_flight() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace atom
