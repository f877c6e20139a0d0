#pragma once
// The connection handling under the OpenAI server: cpp-httplib parses and answers requests, but its
// own loop gives each connection a worker thread from accept to close. Here a worker only ever sees a
// connection whose request is complete in memory (headers, and the body when its length is given):
// one poller thread gathers the bytes of every connection that is between requests, with deadlines.
// So slow or idle clients hold no worker (a client sending one byte every few seconds cannot starve
// /health), pipelined requests on one connection are all answered, in order, and framing that could be
// read two ways (conflicting Content-Length headers, Content-Length with Transfer-Encoding) is refused
// with 400 before any handler runs.
#include <chrono>
#include <cstddef>
#include <memory>

#include <httplib.h>

namespace atom {

struct TransportLimits {
  std::chrono::milliseconds idle_timeout{5000};  // a kept-alive connection may wait this long for a request
  std::chrono::milliseconds request_timeout{
      10000};  // from a request's first byte to its last (headers + body)
  std::size_t max_header_bytes = 64 << 10;
  std::size_t max_body_bytes = 8 << 20;  // bodies up to this are gathered before a worker is used
};

class GatheringHttpServer : public httplib::Server {
 public:
  GatheringHttpServer();
  ~GatheringHttpServer() override;
  void set_limits(const TransportLimits& limits) { limits_ = limits; }
  void set_worker_threads(int threads) { worker_threads_ = threads; }

  // In a handler: whether the client of the request being answered is still connected (a hang-up is
  // noticed without writing). True outside handlers.
  static bool client_connected();

  struct Poller;
  struct Connection;

 private:
  bool process_and_close_socket(socket_t sock) override;
  void serve(std::shared_ptr<Connection> connection);

  TransportLimits limits_;
  int worker_threads_ = 64;
  std::shared_ptr<Poller> poller_;
};

}  // namespace atom
