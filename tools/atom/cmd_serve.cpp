// atom serve: the OpenAI-compatible HTTP server over the serving engine (CPU or CUDA backend).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "commands.h"
#include "common/error.h"
#include "engine/engine.h"
#include "serving_backend.h"
#include "server/http_server.h"

namespace atom::cli {
namespace {

struct ServeOptions {
  std::string model;
  std::string served_model_name;
  std::string host = "127.0.0.1";
  int port = 8000;
  int max_batch = 64;
  int max_batched_tokens = 512;
  int max_context = 0;
  BackendOptions backend;
  double kv_cache_mb = 1024;
  int kv_blocks = 0;
  int block_size = 16;
  bool prefix_caching = true;
  std::string api_key;
  int http_threads = 128;
  double drain_timeout_s = 30;
  bool quiet = false;
};

// SIGTERM / SIGINT: the handler writes the signal number to a pipe (async-signal-safe; works whichever thread
// the kernel picks, including the BLAS and OpenMP threads that exist before main), a thread reads it.
int g_signal_pipe[2] = {-1, -1};
// Until the engine serves there is nothing to drain: a signal then ends the process at once (loading a
// large checkpoint can take minutes, and nothing would read the signal before it is done).
std::atomic<bool> g_serving{false};

extern "C" void on_shutdown_signal(int signal) {
  const unsigned char byte = static_cast<unsigned char>(signal);
  [[maybe_unused]] const ssize_t written = write(g_signal_pipe[1], &byte, 1);
}

class ShutdownSignal {
 public:
  ShutdownSignal() {
    if (pipe(g_signal_pipe) != 0) fail("cannot create the signal pipe");
    struct sigaction action = {};
    action.sa_handler = on_shutdown_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &action, nullptr);
    sigaction(SIGINT, &action, nullptr);
    std::thread([state = state_] {
      unsigned char byte = 0;
      while (read(g_signal_pipe[0], &byte, 1) != 1) {
      }
      if (!g_serving) {
        const char message[] = "atom serve: signal received while loading: exiting\n";
        [[maybe_unused]] const ssize_t n = write(STDERR_FILENO, message, sizeof message - 1);
        _exit(128 + byte);
      }
      // A second signal ends the process at once (no second drain).
      signal(SIGTERM, SIG_DFL);
      signal(SIGINT, SIG_DFL);
      {
        std::lock_guard lock(state->mutex);
        state->signal = byte;
      }
      state->raised.notify_all();
    }).detach();
  }
  int wait() {
    std::unique_lock lock(state_->mutex);
    state_->raised.wait(lock, [&] { return state_->signal != 0; });
    return state_->signal;
  }

 private:
  struct State {
    std::mutex mutex;
    std::condition_variable raised;
    int signal = 0;
  };
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

void log(const std::string& line) { std::fprintf(stderr, "atom serve: %s\n", line.c_str()); }

void run_serve(const ServeOptions& opt) {
  ShutdownSignal shutdown;
  signal(SIGPIPE, SIG_IGN);  // a client hanging up must not kill the server: writes fail instead

  MetricsRegistry metrics;
  ServerOptions server_options;
  server_options.host = opt.host;
  server_options.port = opt.port;
  server_options.api_key = opt.api_key;
  server_options.http_threads = opt.http_threads;
  server_options.log_requests = !opt.quiet;
  const std::string file_name = std::filesystem::path(opt.model).filename().string();
  server_options.model_names = {opt.served_model_name.empty() ? file_name : opt.served_model_name, opt.model,
                                file_name};
  OpenAIServer server(server_options, metrics);
  const int port = server.bind();
  std::thread http([&] { server.listen(); });
  log(fmt::format("listening on http://{}:{} (model '{}'{})", opt.host, port, server_options.model_names.front(),
                  opt.api_key.empty() ? "" : ", API key required"));
  auto stop_http = [&] {
    server.stop();
    if (http.joinable()) http.join();
  };

  std::unique_ptr<Engine> engine;
  try {
    log(fmt::format("loading {}", opt.model));
    const ServingBackend model = load_serving_backend(opt.model, opt.backend, [&](const std::string& stage, double fraction) {
      server.set_loading(stage, fraction);
      if (!opt.quiet) log(fmt::format("{} ({:.0f}%)", stage, 100 * fraction));
    });
    EngineConfig config;
    config.limits.max_batch = opt.max_batch;
    config.limits.max_batched_tokens = opt.max_batched_tokens;
    config.max_context = opt.max_context;
    config.block_size = opt.block_size;
    config.num_kv_blocks = opt.kv_blocks;
    config.kv_cache_bytes = static_cast<std::size_t>(opt.kv_cache_mb * 1048576.0);
    config.enable_prefix_caching = opt.prefix_caching;
    server.set_loading("allocating KV cache", 0.99);
    std::unique_ptr<ModelRunner> runner = model.make_runner(config);
    engine = std::make_unique<Engine>(std::move(runner), model.codec, config, &metrics);
    engine->start();
    log(fmt::format("ready: {}; max batch {}, {} batched tokens, context {}, prefix caching {}",
                    engine->runner().describe(), opt.max_batch, opt.max_batched_tokens, engine->max_context(),
                    opt.prefix_caching ? "on" : "off"));
    server.set_engine(engine.get());
    g_serving = true;
  } catch (...) {
    stop_http();
    throw;
  }

  const int signal = shutdown.wait();
  log(fmt::format("{}: draining {} request(s) in flight (up to {} s)", signal == SIGINT ? "SIGINT" : "SIGTERM",
                  server.in_flight(), opt.drain_timeout_s));
  server.start_draining();
  const bool drained = server.wait_until_idle(std::chrono::milliseconds(static_cast<long>(opt.drain_timeout_s * 1000)));
  if (!drained) log(fmt::format("drain timeout: cancelling {} request(s)", server.in_flight()));
  engine->shutdown();  // cancels whatever is left; their streams end
  server.wait_until_idle(std::chrono::seconds(5));
  stop_http();
  log("stopped");
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto opt = std::make_shared<ServeOptions>();
  auto* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions)");
  cmd->add_option("--model,-m", opt->model, "GGUF file, Hugging Face directory or Atom checkpoint")->required();
  cmd->add_option("--served-model-name", opt->served_model_name,
                  "Name clients use in \"model\" (default: the checkpoint's file name; the path works too)");
  cmd->add_option("--host", opt->host, "Address to bind (default loopback only)")->capture_default_str();
  cmd->add_option("--port", opt->port, "TCP port")->check(CLI::Range(0, 65535))->capture_default_str();
  cmd->add_option("--max-batch", opt->max_batch, "Most sequences in a batch")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--max-batched-tokens", opt->max_batched_tokens, "Most tokens in one engine step (chunked prefill)")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--max-context", opt->max_context, "Most positions per request (0: the model's)")
      ->check(non_negative_number())
      ->capture_default_str();
  add_backend_options(cmd, opt->backend);
  cmd->add_option("--kv-cache-mb", opt->kv_cache_mb, "KV cache size in MiB")
      ->check(positive_number())
      ->capture_default_str();
  cmd->add_option("--kv-blocks", opt->kv_blocks, "KV cache size in blocks (overrides --kv-cache-mb)")
      ->check(non_negative_number());
  cmd->add_option("--block-size", opt->block_size, "Tokens per KV block")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  cmd->add_flag("--enable-prefix-caching,!--no-prefix-caching", opt->prefix_caching,
                "Reuse the KV blocks of prompt prefixes computed before (default: on)");
  cmd->add_option("--api-key", opt->api_key, "Require 'Authorization: Bearer KEY' on /v1/* (default: off)")
      ->envname("ATOM_API_KEY");
  cmd->add_option("--http-threads", opt->http_threads, "HTTP worker threads (each open stream holds one)")
      ->check(CLI::Range(4, 4096))
      ->capture_default_str();
  cmd->add_option("--drain-timeout", opt->drain_timeout_s, "Seconds SIGTERM waits for running requests")
      ->check(non_negative_number())
      ->capture_default_str();
  cmd->add_flag("--quiet,-q", opt->quiet, "No per-request log lines");
  cmd->callback([opt] { run_serve(*opt); });
}

}  // namespace atom::cli
