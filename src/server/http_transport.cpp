#include "server/http_transport.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>

namespace atom {

using Clock = std::chrono::steady_clock;

struct GatheringHttpServer::Connection {
  explicit Connection(int s) : sock(s) {}
  ~Connection() {
    ::shutdown(sock, SHUT_RDWR);
    ::close(sock);
  }
  const int sock;
  std::string buffer;  // bytes received and not yet read by the parser, from `offset`
  std::size_t offset = 0;
  bool request_started = false;  // a byte of the next request arrived
  Clock::time_point deadline;
  int served = 0;

  std::size_t buffered() const { return buffer.size() - offset; }
  void compact() {
    buffer.erase(0, offset);
    offset = 0;
  }
};

namespace {

thread_local GatheringHttpServer::Connection* t_connection = nullptr;

int millis_until(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<long long>(left, 0, 1 << 30));
}

bool wait_for(int sock, short events, int timeout_ms) {
  pollfd p{sock, events, 0};
  int r;
  do {
    r = ::poll(&p, 1, timeout_ms);
  } while (r < 0 && errno == EINTR);
  return r > 0 && (p.revents & (events | POLLHUP | POLLERR));
}

// Connected unless the peer hung up (a pending byte, or none, means connected).
bool socket_alive(int sock) {
  pollfd p{sock, POLLIN, 0};
  if (::poll(&p, 1, 0) <= 0) return true;
  if (p.revents & (POLLERR | POLLNVAL)) return false;
  char byte;
  const ssize_t n = ::recv(sock, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR));
}

void ip_and_port(int sock, bool peer, std::string& ip, int& port) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  const int r = peer ? ::getpeername(sock, reinterpret_cast<sockaddr*>(&addr), &len)
                     : ::getsockname(sock, reinterpret_cast<sockaddr*>(&addr), &len);
  if (r != 0) return;
  char host[NI_MAXHOST], serv[NI_MAXSERV];
  if (::getnameinfo(reinterpret_cast<sockaddr*>(&addr), len, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
    ip = host;
    port = std::atoi(serv);
  }
}

// The stream httplib parses a request from and writes its response to: the connection's buffer first,
// then the socket, never past the connection's deadline.
class ConnectionStream final : public httplib::Stream {
 public:
  ConnectionStream(GatheringHttpServer::Connection& c, std::chrono::milliseconds write_timeout)
      : c_(c), write_timeout_ms_(static_cast<int>(write_timeout.count())) {}
  bool is_readable() const override {
    return c_.buffered() > 0 || wait_for(c_.sock, POLLIN, millis_until(c_.deadline));
  }
  bool is_writable() const override {
    return wait_for(c_.sock, POLLOUT, write_timeout_ms_) && socket_alive(c_.sock);
  }
  ssize_t read(char* ptr, size_t size) override {
    if (c_.buffered() > 0) {
      const std::size_t n = std::min(size, c_.buffered());
      std::memcpy(ptr, c_.buffer.data() + c_.offset, n);
      c_.offset += n;
      return static_cast<ssize_t>(n);
    }
    if (!wait_for(c_.sock, POLLIN, millis_until(c_.deadline))) return -1;  // past the request deadline
    ssize_t n;
    do {
      n = ::recv(c_.sock, ptr, size, 0);
    } while (n < 0 && errno == EINTR);
    return n;
  }
  ssize_t write(const char* ptr, size_t size) override {
    if (!is_writable()) return -1;
    ssize_t n;
    do {
      n = ::send(c_.sock, ptr, size, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n;
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    ip_and_port(c_.sock, true, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    ip_and_port(c_.sock, false, ip, port);
  }
  socket_t socket() const override { return c_.sock; }

 private:
  GatheringHttpServer::Connection& c_;
  int write_timeout_ms_;
};

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& ch : out) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

enum class Readiness { incomplete, ready, reject };

struct Verdict {
  Readiness readiness = Readiness::incomplete;
  int status = 0;  // for reject
  const char* reason = "";
};

// Whether the buffered bytes hold a whole request (a worker can answer it without waiting on the client).
Verdict check_request(const GatheringHttpServer::Connection& c, const TransportLimits& limits) {
  const std::string_view data(c.buffer.data() + c.offset, c.buffered());
  std::size_t end = data.find("\r\n\r\n");
  std::size_t header_bytes = end == std::string_view::npos ? 0 : end + 4;
  if (const std::size_t lf = data.find("\n\n");
      lf != std::string_view::npos && (end == std::string_view::npos || lf < end)) {
    end = lf;
    header_bytes = lf + 2;
  }
  if (end == std::string_view::npos) {
    if (data.size() > limits.max_header_bytes)
      return {Readiness::reject, 431, "Request Header Fields Too Large"};
    return {};
  }
  if (header_bytes > limits.max_header_bytes)
    return {Readiness::reject, 431, "Request Header Fields Too Large"};
  std::optional<std::string> content_length;
  bool transfer_encoding = false, expect_continue = false;
  std::size_t pos = data.find('\n');  // skip the request line
  while (pos != std::string_view::npos && pos + 1 < end) {
    const std::size_t next = data.find('\n', pos + 1);
    const std::string_view line =
        data.substr(pos + 1, (next == std::string_view::npos ? end : next) - pos - 1);
    pos = next;
    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;  // httplib rejects it
    const std::string name = lower(trim(line.substr(0, colon)));
    const std::string_view value = trim(line.substr(colon + 1));
    if (name == "content-length") {
      if (value.empty() || value.size() > 18 ||
          !std::all_of(value.begin(), value.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
        return {Readiness::reject, 400, "Bad Request (invalid Content-Length)"};
      }
      if (content_length && *content_length != value) {
        return {Readiness::reject, 400, "Bad Request (conflicting Content-Length headers)"};
      }
      content_length = std::string(value);
    } else if (name == "transfer-encoding") {
      transfer_encoding = true;
    } else if (name == "expect" && lower(value) == "100-continue") {
      expect_continue = true;
    }
  }
  if (content_length && transfer_encoding) {
    return {Readiness::reject, 400, "Bad Request (both Content-Length and Transfer-Encoding)"};
  }
  if (!content_length || transfer_encoding || expect_continue) return {Readiness::ready};
  const std::uint64_t length = std::stoull(*content_length);
  // Refused here, with the connection closed: the unread body must not be taken for the next request.
  if (length > limits.max_body_bytes) return {Readiness::reject, 413, "Payload Too Large"};
  if (data.size() - header_bytes >= length) return {Readiness::ready};
  return {};
}

// An answer written by the transport itself (the connection is closed after it), in OpenAI's error shape.
void send_status(int sock, int status, const char* reason) {
  const std::string body = fmt::format(
      "{{\"error\": {{\"message\": \"{}\", \"type\": \"invalid_request_error\", \"param\": null, \"code\": "
      "null}}}}",
      reason);
  const std::string text = fmt::format(
      "HTTP/1.1 {} {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
      status, reason, body.size(), body);
  [[maybe_unused]] const ssize_t n = ::send(sock, text.data(), text.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

}  // namespace

// One thread gathering the bytes of every connection between requests (poll over all of them).
struct GatheringHttpServer::Poller {
  using Dispatch = std::function<void(std::shared_ptr<Connection>)>;

  Poller(TransportLimits limits, Dispatch dispatch) : limits(limits), dispatch(std::move(dispatch)) {
    if (::pipe(wake) != 0) wake[0] = wake[1] = -1;
    thread = std::thread([this] { run(); });
  }
  ~Poller() { stop(); }

  void park(std::shared_ptr<Connection> c) {
    {
      std::lock_guard lock(mutex);
      if (stopping) return;  // dropping it closes it
      incoming.push_back(std::move(c));
    }
    poke();
  }
  void stop() {
    {
      std::lock_guard lock(mutex);
      if (stopping) return;
      stopping = true;
    }
    poke();
    if (thread.joinable()) thread.join();
    if (wake[0] >= 0) ::close(wake[0]), ::close(wake[1]);
  }

 private:
  void poke() {
    const char byte = 1;
    [[maybe_unused]] const ssize_t n = ::write(wake[1], &byte, 1);
  }

  // Reads what the client sent; false when the connection is done for (closed, error, refused).
  bool receive(Connection& c) {
    char chunk[16384];
    const ssize_t n = ::recv(c.sock, chunk, sizeof chunk, MSG_DONTWAIT);
    if (n == 0) return false;
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    if (!c.request_started) {
      c.request_started = true;
      c.deadline = Clock::now() + limits.request_timeout;
    }
    c.buffer.append(chunk, static_cast<std::size_t>(n));
    return true;
  }

  void run() {
    std::vector<std::shared_ptr<Connection>> parked;
    std::vector<pollfd> fds;
    while (true) {
      {
        std::lock_guard lock(mutex);
        if (stopping) break;
        for (auto& c : incoming) parked.push_back(std::move(c));
        incoming.clear();
      }
      fds.assign(1, pollfd{wake[0], POLLIN, 0});
      for (const auto& c : parked) fds.push_back(pollfd{c->sock, POLLIN, 0});
      const int r = ::poll(fds.data(), fds.size(), 100);
      if (r < 0 && errno != EINTR) break;
      if (fds[0].revents & POLLIN) {
        char drain[64];
        [[maybe_unused]] const ssize_t n = ::read(wake[0], drain, sizeof drain);
      }
      const auto now = Clock::now();
      std::vector<std::shared_ptr<Connection>> keep;
      keep.reserve(parked.size());
      for (std::size_t i = 0; i < parked.size(); ++i) {
        std::shared_ptr<Connection>& c = parked[i];
        if (fds[i + 1].revents & (POLLIN | POLLHUP | POLLERR)) {
          if (!receive(*c)) continue;  // closed by the client: drop (closes)
          const Verdict v = check_request(*c, limits);
          if (v.readiness == Readiness::ready) {
            dispatch(std::move(c));
            continue;
          }
          if (v.readiness == Readiness::reject) {
            send_status(c->sock, v.status, v.reason);
            continue;
          }
        }
        if (now >= c->deadline) {
          if (c->request_started) send_status(c->sock, 408, "Request Timeout");
          continue;  // an idle kept-alive connection just closes
        }
        keep.push_back(std::move(c));
      }
      parked.swap(keep);
    }
    std::lock_guard lock(mutex);
    incoming.clear();  // closes them (and `parked` goes with this frame)
  }

  const TransportLimits limits;
  const Dispatch dispatch;
  int wake[2] = {-1, -1};
  std::mutex mutex;
  bool stopping = false;
  std::vector<std::shared_ptr<Connection>> incoming;
  std::thread thread;
};

namespace {

// The worker pool httplib's listen() creates and shuts down; it also owns the poller's lifetime, so that
// the poller stops (and hands out no more work) before the workers are joined.
class GatheringQueue final : public httplib::TaskQueue {
 public:
  GatheringQueue(int threads, std::shared_ptr<GatheringHttpServer::Poller>& slot,
                 const TransportLimits& limits,
                 std::function<void(std::shared_ptr<GatheringHttpServer::Connection>)> serve)
      : pool_(static_cast<std::size_t>(threads)), slot_(slot) {
    slot_ = std::make_shared<GatheringHttpServer::Poller>(
        limits, [this, serve = std::move(serve)](std::shared_ptr<GatheringHttpServer::Connection> c) {
          pool_.enqueue([serve, c = std::move(c)]() mutable { serve(std::move(c)); });
        });
    poller_ = slot_;
  }
  void enqueue(std::function<void()> fn) override { pool_.enqueue(std::move(fn)); }
  void shutdown() override {
    poller_->stop();
    pool_.shutdown();
  }

 private:
  httplib::ThreadPool pool_;
  std::shared_ptr<GatheringHttpServer::Poller>& slot_;
  std::shared_ptr<GatheringHttpServer::Poller> poller_;
};

}  // namespace

GatheringHttpServer::GatheringHttpServer() {
  new_task_queue = [this] {
    return new GatheringQueue(worker_threads_, poller_, limits_,
                              [this](std::shared_ptr<Connection> c) { serve(std::move(c)); });
  };
}

GatheringHttpServer::~GatheringHttpServer() {
  if (poller_) poller_->stop();
}

bool GatheringHttpServer::client_connected() { return !t_connection || socket_alive(t_connection->sock); }

bool GatheringHttpServer::process_and_close_socket(socket_t sock) {
  auto c = std::make_shared<Connection>(sock);
  c->deadline = Clock::now() + limits_.idle_timeout;
  if (auto poller = poller_) poller->park(std::move(c));
  return true;
}

void GatheringHttpServer::serve(std::shared_ptr<Connection> c) {
  ConnectionStream stream(*c, std::chrono::milliseconds(5000));
  t_connection = c.get();
  while (svr_sock_ != INVALID_SOCKET) {
    c->deadline = Clock::now() + limits_.request_timeout;  // for a body the worker still has to read
    const bool close_connection = c->served + 1 >= static_cast<int>(keep_alive_max_count_);
    bool connection_closed = false;
    const bool ok = process_request(stream, close_connection, connection_closed, nullptr);
    ++c->served;
    c->compact();
    if (!ok || connection_closed || close_connection) break;
    // Pipelined: the next request may be here already.
    c->request_started = c->buffered() > 0;
    const Verdict v = check_request(*c, limits_);
    if (v.readiness == Readiness::ready) continue;
    if (v.readiness == Readiness::reject) {
      send_status(c->sock, v.status, v.reason);
      break;
    }
    c->deadline = Clock::now() + (c->request_started ? limits_.request_timeout : limits_.idle_timeout);
    t_connection = nullptr;
    if (auto poller = poller_) poller->park(std::move(c));
    return;
  }
  t_connection = nullptr;
}

}  // namespace atom
