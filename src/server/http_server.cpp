#include "server/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <random>

#include <fmt/format.h>

#include "common/error.h"
#include "io/json_file.h"
#include "server/http_transport.h"
#include "server/openai_protocol.h"
#include "server/tokenize_api.h"

namespace atom {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kJson = "application/json";
// How long a stream may stay silent before a comment line goes out; writing is how a closed connection
// is noticed, so this bounds how long a request of a vanished client can wait in the queue.
constexpr auto kStreamKeepAlive = std::chrono::milliseconds(1000);
constexpr auto kStreamPoll = std::chrono::milliseconds(100);

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), kJson);
}

void send_error(httplib::Response& res, const ApiError& error) { send_json(res, error.status(), error.body()); }

// The credentials of "Authorization: Bearer KEY"; the scheme is case-insensitive (RFC 7235), the key
// is not. Empty when the header is absent or another scheme.
std::string bearer_token(const std::string& header) {
  constexpr std::string_view kScheme = "bearer";
  if (header.size() <= kScheme.size() || header[kScheme.size()] != ' ') return "";
  for (std::size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(header[i])) != kScheme[i]) return "";
  }
  const std::size_t start = header.find_first_not_of(' ', kScheme.size());
  return start == std::string::npos ? "" : header.substr(start);
}

std::int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

struct OpenAIServer::Impl {
  Impl(ServerOptions opts, MetricsRegistry& registry)
      : options(std::move(opts)),
        metrics(registry),
        in_flight_gauge(registry.gauge("atom_http_requests_in_flight", "API requests being answered (streams included)")),
        rng(std::random_device{}()) {
    if (options.model_names.empty()) options.model_names.push_back("atom");
  }

  ServerOptions options;
  MetricsRegistry& metrics;
  Gauge& in_flight_gauge;
  GatheringHttpServer http;
  std::atomic<bool> stop_requested{false};
  std::atomic<Engine*> engine{nullptr};
  int listen_socket = -1;
  std::atomic<bool> draining{false};
  std::int64_t created = unix_seconds();

  std::mutex mutex;  // guards what follows
  std::condition_variable idle;
  int in_flight = 0;
  std::string loading_stage = "starting";
  double loading_fraction = 0.0;
  std::mt19937_64 rng;

  // ---- bookkeeping
  void enter() {
    std::lock_guard lock(mutex);
    ++in_flight;
    in_flight_gauge.set(in_flight);
  }
  void leave() {
    {
      std::lock_guard lock(mutex);
      --in_flight;
      in_flight_gauge.set(in_flight);
    }
    idle.notify_all();
  }
  std::string new_id(const char* prefix) {
    std::lock_guard lock(mutex);
    return fmt::format("{}{:016x}{:08x}", prefix, rng(), static_cast<std::uint32_t>(rng()));
  }
  bool known_model(const std::string& name) const {
    return std::find(options.model_names.begin(), options.model_names.end(), name) != options.model_names.end();
  }

  void count_request(const httplib::Request& req, const httplib::Response& res) {
    std::string endpoint = req.path;
    static const std::vector<std::string> known = {
        "/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics",
        "/tokenize",       "/detokenize"};
    if (std::find(known.begin(), known.end(), endpoint) == known.end()) endpoint = "other";
    metrics.counter("atom_http_requests_total", "HTTP requests answered, by endpoint and status",
                    {{"endpoint", endpoint}, {"status", std::to_string(res.status)}})
        .inc();
    if (options.log_requests) {
      std::fprintf(stderr, "atom serve: %s %s %d\n", req.method.c_str(), req.path.c_str(), res.status);
    }
  }

  void install_routes();
  void handle_generate(ApiEndpoint endpoint, const httplib::Request& req, httplib::Response& res);
  std::vector<std::int32_t> prompt_tokens(const ApiRequest& request, const Engine& engine) const;
  // POST /tokenize and /detokenize (server/tokenize_api.h).
  void handle_tokenizer(const httplib::Request& req, httplib::Response& res, bool detokenize) {
    try {
      Engine* e = engine.load();
      if (!e) throw ApiError(503, "the model is still loading: see /health", "service_unavailable");
      const KnownModel known = [this](const std::string& name) { return known_model(name); };
      send_json(res, 200,
                detokenize ? answer_detokenize(req.body, e->codec(), known)
                           : answer_tokenize(req.body, e->codec(), e->max_context(), known));
    } catch (const ApiError& error) {
      send_error(res, error);
    }
  }
};

void OpenAIServer::Impl::install_routes() {
  http.set_worker_threads(options.http_threads);
  TransportLimits limits;
  limits.max_body_bytes = options.max_body_bytes;
  limits.request_timeout = options.request_timeout;
  limits.idle_timeout = options.idle_timeout;
  http.set_limits(limits);
  http.set_payload_max_length(options.max_body_bytes);
  http.set_tcp_nodelay(true);
  http.set_socket_options([this](int socket) {
    const int yes = 1;  // what cpp-httplib does by default, plus remembering the listening socket
    setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_socket = socket;
  });

  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    const bool guarded =
        req.path.rfind("/v1/", 0) == 0 || req.path == "/tokenize" || req.path == "/detokenize";
    if (options.api_key.empty() || !guarded) return httplib::Server::HandlerResponse::Unhandled;
    // RFC 7235: the scheme is case-insensitive ("bearer KEY" is as good as "Bearer KEY"); the key is not.
    if (bearer_token(req.get_header_value("Authorization")) == options.api_key) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    send_error(res, ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                             "invalid_request_error", "", "invalid_api_key"));
    return httplib::Server::HandlerResponse::Handled;
  });
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 404) {
      send_error(res, ApiError(404, fmt::format("no route for {} {}", req.method, req.path), "invalid_request_error",
                               "", "not_found"));
    } else if (res.status == 413) {
      send_error(res, ApiError(413, "the request body is too large"));
    } else {
      send_error(res, ApiError(res.status, fmt::format("HTTP error {}", res.status)));
    }
  });
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_error(res, ApiError(500, fmt::format("internal server error: {}", what), "server_error"));
  });
  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) { count_request(req, res); });

  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (draining) {
      send_json(res, 503, {{"status", "draining"}});
      return;
    }
    Engine* e = engine.load();
    if (!e) {
      std::lock_guard lock(mutex);
      send_json(res, 503, {{"status", "loading"}, {"stage", loading_stage}, {"progress", loading_fraction}});
      return;
    }
    const EngineStats stats = e->stats();
    send_json(res, 200,
              {{"status", "ok"},
               {"model", options.model_names.front()},
               {"running", stats.running},
               {"waiting", stats.waiting},
               {"kv_blocks_used", stats.kv_blocks_used},
               {"kv_blocks_total", stats.kv_blocks_total}});
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.render_prometheus(), "text/plain; version=0.0.4; charset=utf-8");
  });
  http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    json model = {{"id", options.model_names.front()}, {"object", "model"}, {"created", created}, {"owned_by", "atom"}};
    if (Engine* e = engine.load()) model["max_model_len"] = e->max_context();
    send_json(res, 200, {{"object", "list"}, {"data", json::array({model})}});
  });
  http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generate(ApiEndpoint::completions, req, res);
  });
  http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generate(ApiEndpoint::chat_completions, req, res);
  });
  http.Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) {
    handle_tokenizer(req, res, /*detokenize=*/false);
  });
  http.Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) {
    handle_tokenizer(req, res, /*detokenize=*/true);
  });
  for (const char* path : {"/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"}) {
    http.Get(path, [](const httplib::Request& req, httplib::Response& res) {
      send_error(res, ApiError(405, fmt::format("{} takes POST requests", req.path), "invalid_request_error", "",
                               "method_not_allowed"));
    });
  }
}

std::vector<std::int32_t> OpenAIServer::Impl::prompt_tokens(const ApiRequest& request, const Engine& engine) const {
  const TextCodec& codec = engine.codec();
  if (request.endpoint == ApiEndpoint::chat_completions) {
    std::string prompt;
    try {
      prompt = codec.apply_chat_template(request.messages);
    } catch (const Error& e) {
      throw ApiError(400, e.what(), "invalid_request_error", "messages");
    }
    return codec.encode(prompt, /*add_special=*/false);  // the template writes its own BOS
  }
  if (request.prompt_tokens) {
    const int vocab = engine.runner().vocab_size();
    for (std::int32_t t : *request.prompt_tokens) {
      if (t >= vocab) throw ApiError(400, fmt::format("prompt token id {} is outside the vocabulary (size {})", t, vocab),
                                     "invalid_request_error", "prompt");
    }
    return *request.prompt_tokens;
  }
  try {
    return codec.encode(request.prompt_text, /*add_special=*/true);
  } catch (const Error& e) {
    throw ApiError(400, e.what(), "invalid_request_error", "prompt");
  }
}

namespace {

// What a stream's content provider keeps between calls.
struct StreamState {
  Engine* engine = nullptr;
  std::shared_ptr<RequestStream> stream;
  ApiEndpoint endpoint = ApiEndpoint::completions;
  ResponseMeta meta;
  bool include_usage = false;
  std::size_t text_offset = 0;  // completions logprobs: characters of the tokens sent so far
  bool role_sent = false;
  bool finished = false;
  Clock::time_point last_write = Clock::now();
};

}  // namespace

void OpenAIServer::Impl::handle_generate(ApiEndpoint endpoint, const httplib::Request& req, httplib::Response& res) {
  enter();
  bool handed_to_stream = false;
  struct Leave {
    Impl* impl;
    bool& skip;
    ~Leave() {
      if (!skip) impl->leave();
    }
  } leave_guard{this, handed_to_stream};

  try {
    if (draining) throw ApiError(503, "the server is shutting down", "service_unavailable");
    Engine* e = engine.load();
    if (!e) throw ApiError(503, "the model is still loading: see /health", "service_unavailable");
    ApiRequest request = parse_api_request(endpoint, req.body);
    if (!known_model(request.model)) {
      throw ApiError(404, fmt::format("The model '{}' does not exist: this server serves '{}'", request.model,
                                      options.model_names.front()),
                     "invalid_request_error", "model", "model_not_found");
    }
    GenerationRequest generation;
    generation.prompt = prompt_tokens(request, *e);
    generation.params = request.params;
    const auto prompt_length = static_cast<std::int64_t>(generation.prompt.size());
    const std::int64_t context = e->max_context();
    // What one request can hold: its positions within the context, its KV blocks within the pool.
    const std::int64_t capacity = e->max_request_tokens();
    const char* prompt_param = endpoint == ApiEndpoint::chat_completions ? "messages" : "prompt";
    if (prompt_length >= context) {
      throw ApiError(400,
                     fmt::format("This model's maximum context length is {} tokens. However, your {} is {} tokens, "
                                 "which leaves no room for a completion. Please shorten it.",
                                 context, prompt_param, prompt_length),
                     "invalid_request_error", prompt_param, "context_length_exceeded");
    }
    if (request.max_tokens_given) {
      if (prompt_length + generation.params.max_tokens > context) {
        throw ApiError(400,
                       fmt::format("This model's maximum context length is {} tokens. However, you requested {} "
                                   "tokens ({} in the {}, {} for the completion). Please reduce the length of the "
                                   "{} or the completion.",
                                   context, prompt_length + generation.params.max_tokens, prompt_length, prompt_param,
                                   generation.params.max_tokens, prompt_param),
                       "invalid_request_error", "max_tokens", "context_length_exceeded");
      }
    } else {
      // Chat: as long as the context and the KV pool allow; completions: OpenAI's 16, within both.
      const std::int64_t room = capacity - prompt_length;
      if (room < 1) {
        throw ApiError(
            400,
            fmt::format("The KV cache holds at most {} tokens for one request, and your {} is {} tokens, "
                        "which leaves no room for a completion. Please shorten it.",
                        capacity, prompt_param, prompt_length),
            "invalid_request_error", prompt_param, "context_length_exceeded");
      }
      generation.params.max_tokens = static_cast<int>(
          endpoint == ApiEndpoint::chat_completions ? room : std::min<std::int64_t>(generation.params.max_tokens, room));
    }

    std::shared_ptr<RequestStream> stream;
    try {
      stream = e->submit(std::move(generation));
    } catch (const Error& error) {
      throw ApiError(400, error.what());
    }
    ResponseMeta meta{new_id(endpoint == ApiEndpoint::completions ? "cmpl-" : "chatcmpl-"), unix_seconds(),
                      request.model};

    if (!request.stream) {
      // Wait for the end, but stop generating for a client that hung up (nobody reads the answer).
      while (true) {
        const std::optional<RequestOutput> out = stream->next(kStreamPoll);
        if (out && out->finished) break;
        if (!GatheringHttpServer::client_connected()) {
          e->cancel(stream->id());
          stream->wait();
          res.status = 499;  // never sent: the connection is gone
          return;
        }
      }
      const RequestOutput output = stream->wait();
      if (output.finish_reason == FinishReason::error) {
        throw ApiError(500, fmt::format("generation failed: {}", output.error), "server_error");
      }
      if (output.finish_reason == FinishReason::cancelled) {
        throw ApiError(503, "the request was cancelled: the server is shutting down", "service_unavailable");
      }
      std::size_t text_offset = 0;
      send_json(res, 200,
                endpoint == ApiEndpoint::completions
                    ? completion_response(meta, output,
                                          completion_logprobs(output.logprobs, e->codec(), text_offset))
                    : chat_completion_response(meta, output, chat_logprobs(output.logprobs, e->codec())));
      return;
    }

    auto state = std::make_shared<StreamState>();
    state->engine = e;
    state->stream = stream;
    state->endpoint = endpoint;
    state->meta = meta;
    state->include_usage = request.include_usage;
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    handed_to_stream = true;  // the releaser below leaves
    res.set_chunked_content_provider(
        "text/event-stream",
        [state](std::size_t /*offset*/, httplib::DataSink& sink) {
          std::string payload;
          if (state->endpoint == ApiEndpoint::chat_completions && !state->role_sent) {
            payload += sse_event(chat_chunk(state->meta, "", FinishReason::none, /*role_chunk=*/true));
            state->role_sent = true;
          }
          std::optional<RequestOutput> out = state->stream->next(kStreamPoll);
          if (out) {
            // A stream cut short (generation failed, or the server shut down before the end) says so with
            // an error event: finish_reason only ever carries OpenAI's values.
            const bool cut_short =
                out->finish_reason == FinishReason::error || out->finish_reason == FinishReason::cancelled;
            if (out->finish_reason == FinishReason::error) {
              payload += sse_event(ApiError(500, "generation failed: " + out->error, "server_error").body());
            } else if (out->finish_reason == FinishReason::cancelled) {
              payload += sse_event(ApiError(503, "the server is shutting down: the generation was cut short",
                                            "service_unavailable")
                                       .body());
            }
            // A token whose text is held back (a possible stop string, half a character) still brings its
            // logprobs in the increment it arrived with.
            const bool has_content = !out->text.empty() || !out->logprobs.empty();
            auto chunk = [&](FinishReason finish) {
              const TextCodec& codec = state->engine->codec();
              return state->endpoint == ApiEndpoint::completions
                         ? completion_chunk(state->meta, out->text, finish,
                                            completion_logprobs(out->logprobs, codec, state->text_offset))
                         : chat_chunk(state->meta, out->text, finish, false,
                                      chat_logprobs(out->logprobs, codec));
            };
            if (cut_short && has_content) {
              payload += sse_event(chunk(FinishReason::none));
            } else if (!cut_short && (has_content || out->finished)) {
              payload += sse_event(chunk(out->finished ? out->finish_reason : FinishReason::none));
            }
            if (out->finished) {
              if (state->include_usage) {
                payload += sse_event(usage_chunk(state->meta, state->endpoint, out->prompt_tokens, out->completion_tokens));
              }
              payload += kSseDone;
            }
          } else if (Clock::now() - state->last_write >= kStreamKeepAlive) {
            payload += ": keep-alive\n\n";  // an SSE comment: clients ignore it
          }
          if (!payload.empty()) {
            if (!sink.write(payload.data(), payload.size())) return false;  // the client went away
            state->last_write = Clock::now();
          }
          if (out && out->finished) {
            state->finished = true;
            sink.done();
          }
          return true;
        },
        [this, state](bool /*success*/) {
          // A stream that ends before its request did (client gone, write failure): stop generating.
          if (!state->finished) state->engine->cancel(state->stream->id());
          leave();
        });
  } catch (const ApiError& error) {
    send_error(res, error);
  }
}

OpenAIServer::OpenAIServer(ServerOptions options, MetricsRegistry& metrics)
    : impl_(std::make_unique<Impl>(std::move(options), metrics)) {
  impl_->install_routes();
}

OpenAIServer::~OpenAIServer() { stop(); }

void OpenAIServer::set_loading(const std::string& stage, double fraction) {
  std::lock_guard lock(impl_->mutex);
  impl_->loading_stage = stage;
  impl_->loading_fraction = fraction;
}

void OpenAIServer::set_engine(Engine* engine) { impl_->engine.store(engine); }

int OpenAIServer::bind() {
  const ServerOptions& o = impl_->options;
  int port = o.port;
  if (o.port == 0) {
    port = impl_->http.bind_to_any_port(o.host);
    if (port < 0) fail("cannot bind a port on host '{}'", o.host);
  } else if (!impl_->http.bind_to_port(o.host, o.port)) {
    fail("cannot listen on {}:{} (address in use, or not an address of this machine?)", o.host, o.port);
  }
  // cpp-httplib 0.11 listens with a backlog of 5: a burst of clients connecting at once would see
  // connections dropped. Listening again on the bound socket raises the backlog.
  if (impl_->listen_socket >= 0) ::listen(impl_->listen_socket, SOMAXCONN);
  return port;
}

void OpenAIServer::listen() {
  if (impl_->stop_requested) return;
  impl_->http.listen_after_bind();
}

void OpenAIServer::stop() {
  // stop() may come before the listening thread got to listen(): then listen() returns at once, and a
  // listen() already past its check finds the socket shut down (accept fails and the loop ends).
  if (!impl_->stop_requested.exchange(true) && impl_->listen_socket >= 0) {
    ::shutdown(impl_->listen_socket, SHUT_RDWR);
  }
  if (impl_->http.is_running()) impl_->http.stop();
}

void OpenAIServer::start_draining() { impl_->draining = true; }

bool OpenAIServer::wait_until_idle(std::chrono::milliseconds timeout) {
  std::unique_lock lock(impl_->mutex);
  return impl_->idle.wait_for(lock, timeout, [&] { return impl_->in_flight == 0; });
}

int OpenAIServer::in_flight() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->in_flight;
}

}  // namespace atom
