#include "control/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "base/check.h"
#include "base/log.h"

namespace nicmux {

namespace {

bool ValidName(std::string_view n) {
  if (n.empty()) return false;
  for (size_t i = 0; i < n.size(); ++i) {
    const char c = n[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
                    (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

// A double as the format wants it: integers without an exponent, NaN and infinities spelled.
std::string FormatDouble(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.15g", v);  // 15 digits: exact for counters below 1e15, no 0.1 noise
  return buf;
}

// How long the listener rests after accept() ran out of fds before trying again.
constexpr uint64_t kAcceptRetryMs = 100;
// Connections taken per wake-up of the listener.
constexpr size_t kAcceptsPerEvent = 32;

}  // namespace

std::string MetricsText::EscapeLabel(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void MetricsText::Family(std::string_view name, std::string_view type, std::string_view help) {
  NICMUX_CHECK(ValidName(name));
  family_.assign(name);
  out_ += "# HELP ";
  out_ += name;
  out_ += ' ';
  // HELP text escapes only \ and newline.
  for (char c : help) {
    if (c == '\\') {
      out_ += "\\\\";
    } else if (c == '\n') {
      out_ += "\\n";
    } else {
      out_ += c;
    }
  }
  out_ += "\n# TYPE ";
  out_ += name;
  out_ += ' ';
  out_ += type;
  out_ += '\n';
}

void MetricsText::Name(const Labels& labels) {
  NICMUX_CHECK(!family_.empty());
  out_ += family_;
  if (labels.empty()) return;
  out_ += '{';
  bool first = true;
  for (const auto& [k, v] : labels) {
    NICMUX_CHECK(ValidName(k));
    if (!first) out_ += ',';
    first = false;
    out_ += k;
    out_ += "=\"";
    out_ += EscapeLabel(v);
    out_ += '"';
  }
  out_ += '}';
}

void MetricsText::Sample(const Labels& labels, double value) {
  Name(labels);
  out_ += ' ';
  out_ += FormatDouble(value);
  out_ += '\n';
}

void MetricsText::Sample(const Labels& labels, uint64_t value) {
  Name(labels);
  out_ += ' ';
  out_ += std::to_string(value);
  out_ += '\n';
}

void MetricsText::Gauge(std::string_view name, std::string_view help, double value) {
  Family(name, "gauge", help);
  Sample({}, value);
}

Result<MetricsAddress> ParseMetricsAddress(std::string_view text) {
  const std::string what = "metrics address \"" + std::string(text) + "\"";
  MetricsAddress a;
  std::string_view port;
  if (!text.empty() && text[0] == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return Error(what + ": expected [IPV6]:PORT");
    }
    a.host.assign(text.substr(1, close - 1));
    a.v6 = true;
    port = text.substr(close + 2);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return Error(what + ": expected ADDR:PORT, [IPV6]:PORT or :PORT");
    a.host.assign(text.substr(0, colon));
    if (a.host.find(':') != std::string::npos) return Error(what + ": an IPv6 address goes in brackets: [::1]:PORT");
    port = text.substr(colon + 1);
  }
  unsigned p = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || p > 65535) {
    return Error(what + ": the port must be 0..65535, not \"" + std::string(port) + "\"");
  }
  a.port = static_cast<uint16_t>(p);
  if (!a.host.empty()) {
    unsigned char buf[sizeof(in6_addr)];
    if (::inet_pton(a.v6 ? AF_INET6 : AF_INET, a.host.c_str(), buf) != 1) {
      return Error(what + ": \"" + a.host + "\" is not an IPv" + (a.v6 ? "6" : "4") +
                   " address (names are not resolved)");
    }
  }
  return a;
}

MetricsServer::MetricsServer(EventLoop* loop, Render render, UniqueFd fd, std::string bound, uint16_t port,
                             uint64_t timeout_ms)
    : loop_(loop),
      render_(std::move(render)),
      listen_fd_(std::move(fd)),
      bound_(std::move(bound)),
      port_(port),
      timeout_ms_(timeout_ms) {}

Result<std::unique_ptr<MetricsServer>> MetricsServer::Create(std::string_view address, EventLoop* loop,
                                                             Render render, uint64_t timeout_ms) {
  auto parsed = ParseMetricsAddress(address);
  if (!parsed) return parsed.error();
  MetricsAddress a = *parsed;
  const std::string where = "metrics address " + std::string(address);
  // ":PORT": every address, IPv6 and IPv4 on one socket where the host has IPv6.
  const bool any = a.host.empty();
  if (any) {
    UniqueFd probe(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
    a.v6 = probe.valid();
  }
  sockaddr_storage ss{};
  socklen_t len;
  if (a.v6) {
    auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(a.port);
    s6->sin6_addr = in6addr_any;
    if (!a.host.empty()) ::inet_pton(AF_INET6, a.host.c_str(), &s6->sin6_addr);
    len = sizeof *s6;
  } else {
    auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
    s4->sin_family = AF_INET;
    s4->sin_port = htons(a.port);
    s4->sin_addr.s_addr = htonl(INADDR_ANY);
    if (!a.host.empty()) ::inet_pton(AF_INET, a.host.c_str(), &s4->sin_addr);
    len = sizeof *s4;
  }
  UniqueFd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return Error::FromErrno(where + ": socket");
  const int one = 1, zero = 0;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (a.v6 && any) ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&ss), len) < 0) {
    const int e = errno;
    if (e == EADDRINUSE) return Error(where + ": in use (another nicmuxd, or another exporter on that port)", e);
    if (e == EADDRNOTAVAIL) return Error(where + ": no interface of this host has that address", e);
    return Error::FromErrno(where + ": bind", e);
  }
  if (::listen(fd.get(), 16) < 0) return Error::FromErrno(where + ": listen");
  return Adopt(std::move(fd), loop, std::move(render), timeout_ms);
}

Result<std::unique_ptr<MetricsServer>> MetricsServer::Adopt(UniqueFd fd, EventLoop* loop, Render render,
                                                            uint64_t timeout_ms) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  int listening = 0;
  socklen_t ll = sizeof listening;
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len) < 0 ||
      (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) ||
      ::getsockopt(fd.get(), SOL_SOCKET, SO_ACCEPTCONN, &listening, &ll) < 0 || !listening) {
    return Error("metrics: the socket handed over is not a listening TCP socket");
  }
  char host[INET6_ADDRSTRLEN] = "";
  uint16_t port;
  std::string bound;
  if (ss.ss_family == AF_INET6) {
    auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
    ::inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
    port = ntohs(s6->sin6_port);
    bound = "[" + std::string(host) + "]:" + std::to_string(port);
  } else {
    auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
    ::inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
    port = ntohs(s4->sin_port);
    bound = std::string(host) + ":" + std::to_string(port);
  }
  const int lfd = fd.get();
  std::unique_ptr<MetricsServer> s(new MetricsServer(loop, std::move(render), std::move(fd), bound, port, timeout_ms));
  MetricsServer* raw = s.get();
  NICMUX_TRY(loop->Watch(lfd, EPOLLIN, [raw](uint32_t) { raw->OnAccept(); }));
  NICMUX_LOG(kInfo, "metrics: serving http://%s/metrics", bound.c_str());
  return s;
}

MetricsServer::~MetricsServer() {
  while (!conns_.empty()) Close(conns_.begin()->first);
  if (retry_timer_) loop_->Cancel(retry_timer_);
  loop_->Unwatch(listen_fd_.get());
}

void MetricsServer::OnAccept() {
  size_t accepted = 0;
  for (;;) {
    if (accepted++ == kAcceptsPerEvent) return;  // the rest next round: the loop has other work
    UniqueFd fd(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd) {
      const int e = errno;
      if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
        // Out of fds: rest, or the level-triggered listener would spin the loop.
        NICMUX_LOG_RATELIMITED(kWarning, "metrics: accept on %s: %s", bound_.c_str(), std::strerror(e));
        loop_->Unwatch(listen_fd_.get());
        retry_timer_ = loop_->After(kAcceptRetryMs, [this] {
          retry_timer_ = 0;
          if (auto r = loop_->Watch(listen_fd_.get(), EPOLLIN, [this](uint32_t) { OnAccept(); }); !r) {
            NICMUX_LOG(kError, "metrics: %s stops serving: %s", bound_.c_str(), r.error().message().c_str());
          }
        });
      }
      return;  // EAGAIN, or a connection that went away before we took it
    }
    if (conns_.size() >= kMaxMetricsClients) {
      // Full: the oldest connection still sending its request head makes room (16 silent
      // connections must not lock Prometheus out); if every one is being answered, the new
      // one is closed at once and the scraper retries.
      int oldest = -1;
      uint64_t oldest_seq = UINT64_MAX;
      for (const auto& [cfd, cc] : conns_) {
        if (!cc->answered && cc->seq < oldest_seq) {
          oldest = cfd;
          oldest_seq = cc->seq;
        }
      }
      if (oldest < 0) continue;
      Close(oldest);
    }
    const int raw = fd.get();
    auto c = std::make_unique<Conn>();
    c->fd = std::move(fd);
    c->seq = next_seq_++;
    if (!loop_->Watch(raw, EPOLLIN | EPOLLRDHUP, [this, raw](uint32_t ev) { OnEvents(raw, ev); })) continue;
    c->deadline = loop_->After(timeout_ms_, [this, raw] {
      auto it = conns_.find(raw);
      if (it != conns_.end()) it->second->deadline = 0;
      Close(raw);
    });
    conns_[raw] = std::move(c);
  }
}

void MetricsServer::OnEvents(int fd, uint32_t events) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  if (c.answered) {
    if (!Flush(c)) return;
    if (events & (EPOLLERR | EPOLLHUP)) Close(fd);
    return;
  }
  // UNTRUSTED: the request; read into a buffer bounded by kMaxMetricsRequestBytes (one byte
  // more and the client gets 431 and the connection closes).
  char buf[2048];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      c.in.append(buf, static_cast<size_t>(n));
      // The head ends at the first empty line; it must end within the bound.
      const size_t crlf = c.in.find("\r\n\r\n"), lf = c.in.find("\n\n");
      const size_t end = std::min(crlf == std::string::npos ? crlf : crlf + 4, lf == std::string::npos ? lf : lf + 2);
      if (end <= kMaxMetricsRequestBytes) {
        Answer(c);
        return;
      }
      if (c.in.size() > kMaxMetricsRequestBytes) {
        Respond(c, 431, "Request Header Fields Too Large", "text/plain",
                "request head over " + std::to_string(kMaxMetricsRequestBytes) + " bytes\n", false);
        return;
      }
      continue;
    }
    if (n == 0) {  // the client went away (or half-closed) before a whole request
      Close(fd);
      return;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN) Close(fd);
    return;
  }
}

void MetricsServer::Answer(Conn& c) {
  // UNTRUSTED: the request line: METHOD SP TARGET SP VERSION, each checked; headers ignored.
  const size_t eol = c.in.find('\n');
  std::string_view line(c.in.data(), eol);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.substr(sp2 + 1).substr(0, 5) != "HTTP/") {
    Respond(c, 400, "Bad Request", "text/plain", "expected \"GET /metrics HTTP/1.1\"\n", false);
    return;
  }
  const std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  if (const size_t q = target.find('?'); q != std::string_view::npos) target = target.substr(0, q);
  const bool head = method == "HEAD";
  if (method != "GET" && !head) {
    Respond(c, 405, "Method Not Allowed", "text/plain", "only GET and HEAD\n", false);
    return;
  }
  if (target == "/") {
    Respond(c, 200, "OK", "text/html; charset=utf-8",
            "<html><head><title>nicmuxd</title></head><body><a href=\"/metrics\">/metrics</a></body></html>\n", head);
    return;
  }
  if (target != "/metrics") {
    Respond(c, 404, "Not Found", "text/plain", "nicmuxd serves /metrics only\n", head);
    return;
  }
  ++scrapes_;
  Respond(c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", render_(), head);
}

void MetricsServer::Respond(Conn& c, int status, std::string_view reason, std::string_view type, std::string body,
                            bool head_only) {
  c.answered = true;
  c.in.clear();
  c.out = "HTTP/1.1 " + std::to_string(status) + " " + std::string(reason) + "\r\nContent-Type: " +
          std::string(type) + "\r\nContent-Length: " + std::to_string(body.size()) +
          "\r\nConnection: close\r\n" + (status == 405 ? "Allow: GET, HEAD\r\n" : "") + "\r\n";
  if (!head_only) c.out += body;
  c.off = 0;
  // EPOLLOUT only: a client that half-closed (EPOLLRDHUP, level-triggered) and reads nothing
  // would otherwise wake the loop without end; HUP and ERR come anyway and send() fails then.
  if (Flush(c)) (void)loop_->Modify(c.fd.get(), EPOLLOUT);
}

bool MetricsServer::Flush(Conn& c) {
  while (c.off < c.out.size()) {
    const ssize_t n = ::send(c.fd.get(), c.out.data() + c.off, c.out.size() - c.off, MSG_NOSIGNAL);
    if (n > 0) {
      c.off += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return true;  // EPOLLOUT brings us back
    Close(c.fd.get());
    return false;
  }
  // All written: a client that sends more is ignored; close (Connection: close).
  ::shutdown(c.fd.get(), SHUT_WR);
  Close(c.fd.get());
  return false;
}

void MetricsServer::Close(int fd) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  if (it->second->deadline) loop_->Cancel(it->second->deadline);
  loop_->Unwatch(fd);
  conns_.erase(it);
}

}  // namespace nicmux
