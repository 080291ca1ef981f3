// MetricsServer: nicmuxd's Prometheus endpoint (docs/metrics.md). A plain HTTP/1.1 listener on
// a TCP address that answers GET /metrics with the text exposition format (version 0.0.4)
// and closes the connection. It runs on the EventLoop's thread and never touches a worker:
// the page is rendered from counters the workers publish with relaxed atomics.
//
// Everything a client sends is hostile: the request head is bounded (kMaxMetricsRequestBytes),
// connections are bounded (kMaxMetricsClients; one more evicts the oldest that has not sent its
// whole request, or is closed at once when all are being answered) and each has a
// deadline (kMetricsClientTimeoutMs) to send its request and read the answer; a client that
// does not read never blocks the loop (non-blocking writes, EPOLLOUT).
//
// MetricsText builds a page: families (HELP, TYPE) and samples with escaped label values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/event_loop.h"
#include "base/result.h"
#include "base/unique_fd.h"

namespace nicmux {

inline constexpr size_t kMaxMetricsRequestBytes = 8 * 1024;
inline constexpr size_t kMaxMetricsClients = 16;
inline constexpr uint64_t kMetricsClientTimeoutMs = 10'000;

// The text exposition format. Family() starts a metric family (its # HELP and # TYPE lines);
// Sample() adds a line of the family started last. A family is written once however many
// samples it has; names must match [a-zA-Z_:][a-zA-Z0-9_:]* (checked: a bad one is a bug).
class MetricsText {
 public:
  using Labels = std::vector<std::pair<std::string_view, std::string_view>>;
  void Family(std::string_view name, std::string_view type, std::string_view help);
  void Sample(const Labels& labels, double value);
  void Sample(const Labels& labels, uint64_t value);
  // A family with one unlabelled sample.
  void Gauge(std::string_view name, std::string_view help, double value);

  std::string Take() { return std::move(out_); }
  const std::string& text() const { return out_; }

  // "a\"b\\c\nd" as a label value: \\, \" and \n escaped.
  static std::string EscapeLabel(std::string_view v);

 private:
  void Name(const Labels& labels);
  std::string out_;
  std::string family_;
};

// "ADDR:PORT" for --metrics: an IPv4 address, a bracketed IPv6 address ("[::1]:9469"), or no
// address (":9469", every address). PORT 0 lets the kernel choose (tests).
struct MetricsAddress {
  std::string host;  // as given, without brackets; "" for every address
  uint16_t port = 0;
  bool v6 = false;
};
Result<MetricsAddress> ParseMetricsAddress(std::string_view text);

class MetricsServer {
 public:
  // Renders the page; called on the loop thread for each GET /metrics.
  using Render = std::function<std::string()>;

  // Binds and listens (SO_REUSEADDR); errors name the address. timeout_ms: how long a client
  // has to send its request and read the answer.
  static Result<std::unique_ptr<MetricsServer>> Create(std::string_view address, EventLoop* loop,
                                                       Render render,
                                                       uint64_t timeout_ms = kMetricsClientTimeoutMs);
  // Live upgrade (docs/upgrade.md): serves on a listening socket the old nicmuxd handed over.
  static Result<std::unique_ptr<MetricsServer>> Adopt(UniqueFd fd, EventLoop* loop, Render render,
                                                      uint64_t timeout_ms = kMetricsClientTimeoutMs);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The address bound, "HOST:PORT" ("[::1]:PORT" for IPv6), with the port the kernel chose.
  const std::string& address() const { return bound_; }
  uint16_t port() const { return port_; }
  size_t num_clients() const { return conns_.size(); }
  uint64_t scrapes() const { return scrapes_; }
  int listen_fd() const { return listen_fd_.get(); }

 private:
  struct Conn {
    UniqueFd fd;
    std::string in;   // the request head so far
    std::string out;  // the answer; out[off..] is unsent
    size_t off = 0;
    bool answered = false;
    uint64_t seq = 0;  // accept order
    EventLoop::TimerId deadline = 0;
  };

  MetricsServer(EventLoop* loop, Render render, UniqueFd fd, std::string bound, uint16_t port,
                uint64_t timeout_ms);
  void OnAccept();
  void OnEvents(int fd, uint32_t events);
  void Answer(Conn& c);
  void Respond(Conn& c, int status, std::string_view reason, std::string_view type, std::string body,
               bool head_only);
  bool Flush(Conn& c);  // false: the connection is done (closed)
  void Close(int fd);

  EventLoop* loop_;
  Render render_;
  UniqueFd listen_fd_;
  std::string bound_;
  uint16_t port_;
  std::map<int, std::unique_ptr<Conn>> conns_;
  uint64_t timeout_ms_;
  uint64_t scrapes_ = 0;
  EventLoop::TimerId retry_timer_ = 0;
  uint64_t next_seq_ = 0;
};

}  // namespace nicmux
