// Tests of the Prometheus endpoint (MetricsServer) over real TCP sockets on 127.0.0.1, the
// EventLoop run in the test thread between the client's steps; and of MetricsText's format.
#include "control/metrics.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

namespace nicmux {
namespace {

class MetricsServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto l = EventLoop::Create();
    ASSERT_TRUE(l.has_value());
    loop_ = std::move(*l);
  }
  void Start(uint64_t timeout_ms = kMetricsClientTimeoutMs) {
    auto s = MetricsServer::Create("127.0.0.1:0", loop_.get(), [this] { return page_; }, timeout_ms);
    ASSERT_TRUE(s.has_value()) << s.error().message();
    server_ = std::move(*s);
    ASSERT_NE(server_->port(), 0);
  }
  UniqueFd Connect() {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(server_->port());
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    return fd;
  }
  void Send(const UniqueFd& fd, const std::string& s) {
    ASSERT_EQ(::send(fd.get(), s.data(), s.size(), MSG_NOSIGNAL), static_cast<ssize_t>(s.size()));
  }
  // Reads until EOF, running the loop meanwhile; gives up after max_ms.
  std::string ReadAll(const UniqueFd& fd, int max_ms = 5000) {
    std::string out;
    ::fcntl(fd.get(), F_SETFL, O_NONBLOCK);
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(max_ms);
    while (std::chrono::steady_clock::now() < end) {
      loop_->RunOnce(5);
      char buf[65536];
      const ssize_t n = ::read(fd.get(), buf, sizeof buf);
      if (n > 0) {
        out.append(buf, static_cast<size_t>(n));
      } else if (n == 0) {
        eof_ = true;
        return out;
      } else if (errno != EAGAIN) {
        eof_ = true;  // reset by the server
        return out;
      }
    }
    eof_ = false;
    return out;
  }
  std::string Get(const std::string& request) {
    UniqueFd fd = Connect();
    Send(fd, request);
    return ReadAll(fd);
  }

  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<MetricsServer> server_;
  std::string page_ = "# HELP x a metric\n# TYPE x gauge\nx 1\n";
  bool eof_ = false;
};

TEST_F(MetricsServerTest, GetMetricsAnswersThePageInTheTextFormatAndCloses) {
  Start();
  const std::string r = Get("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n");
  EXPECT_TRUE(eof_);
  EXPECT_EQ(r.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << r;
  EXPECT_NE(r.find("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), std::string::npos);
  EXPECT_NE(r.find("Content-Length: " + std::to_string(page_.size()) + "\r\n"), std::string::npos);
  EXPECT_EQ(r.substr(r.find("\r\n\r\n") + 4), page_);
  EXPECT_EQ(server_->scrapes(), 1u);
  // A query string is ignored; a bare LF request (netcat) works too; HEAD has no body.
  EXPECT_EQ(Get("GET /metrics?x=1 HTTP/1.0\n\n").substr(0, 15), "HTTP/1.1 200 OK");
  const std::string h = Get("HEAD /metrics HTTP/1.1\r\n\r\n");
  EXPECT_EQ(h.rfind("HTTP/1.1 200 OK\r\n", 0), 0u);
  EXPECT_EQ(h.substr(h.find("\r\n\r\n") + 4), "");
  EXPECT_EQ(server_->scrapes(), 3u);
  EXPECT_EQ(server_->num_clients(), 0u);
}

TEST_F(MetricsServerTest, WrongRequestsGetTheirStatusAndNothingElse) {
  Start();
  EXPECT_EQ(Get("GET /other HTTP/1.1\r\n\r\n").substr(0, 22), "HTTP/1.1 404 Not Found");
  const std::string post = Get("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(post.substr(0, 31), "HTTP/1.1 405 Method Not Allowed");
  EXPECT_NE(post.find("Allow: GET, HEAD\r\n"), std::string::npos);
  EXPECT_EQ(Get("hello\r\n\r\n").substr(0, 24), "HTTP/1.1 400 Bad Request");
  EXPECT_EQ(Get("GET /metrics\r\n\r\n").substr(0, 24), "HTTP/1.1 400 Bad Request");
  EXPECT_EQ(Get(std::string(100, '\0') + "\r\n\r\n").substr(0, 24), "HTTP/1.1 400 Bad Request");
  // A head that never ends: answered 431 once it passes the bound, then closed.
  UniqueFd fd = Connect();
  Send(fd, "GET /metrics HTTP/1.1\r\n");
  for (int i = 0; i < 10; ++i) Send(fd, "X-Filler: " + std::string(1000, 'a') + "\r\n");
  const std::string r = ReadAll(fd);
  EXPECT_EQ(r.substr(0, 12), "HTTP/1.1 431") << r.substr(0, 100);
  EXPECT_TRUE(eof_);
  EXPECT_EQ(server_->scrapes(), 0u);
}

TEST_F(MetricsServerTest, ConnectionsAreBoundedAndASilentClientIsClosedAtItsDeadline) {
  Start(/*timeout_ms=*/300);
  std::vector<UniqueFd> idle;
  for (size_t i = 0; i < kMaxMetricsClients; ++i) idle.push_back(Connect());
  for (int i = 0; i < 20; ++i) loop_->RunOnce(5);
  EXPECT_EQ(server_->num_clients(), kMaxMetricsClients);
  // One more: the oldest silent one makes room, and the newcomer (a scraper) is served.
  UniqueFd extra = Connect();
  Send(extra, "GET /metrics HTTP/1.1\r\n\r\n");
  EXPECT_EQ(ReadAll(extra, 2000).substr(0, 15), "HTTP/1.1 200 OK");
  EXPECT_EQ(ReadAll(idle[0], 1000), "");
  EXPECT_TRUE(eof_);
  // The other silent ones are closed at their deadline; then a scrape is served again.
  EXPECT_EQ(ReadAll(idle[1], 3000), "");
  EXPECT_TRUE(eof_);
  for (int i = 0; i < 20; ++i) loop_->RunOnce(5);
  EXPECT_EQ(server_->num_clients(), 0u);
  EXPECT_EQ(Get("GET /metrics HTTP/1.1\r\n\r\n").substr(0, 15), "HTTP/1.1 200 OK");
}

TEST_F(MetricsServerTest, ABigPageReachesASlowReaderWithoutBlockingTheLoop) {
  page_.assign(8 << 20, 'x');
  Start();
  UniqueFd fd = Connect();
  Send(fd, "GET /metrics HTTP/1.1\r\n\r\n");
  // The loop answers and returns although the client reads nothing yet.
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 10; ++i) loop_->RunOnce(5);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  EXPECT_EQ(server_->num_clients(), 1u);
  const std::string r = ReadAll(fd, 10000);
  ASSERT_TRUE(eof_);
  EXPECT_EQ(r.size() - (r.find("\r\n\r\n") + 4), page_.size());
}

TEST_F(MetricsServerTest, AHalfClosedClientThatReadsNothingDoesNotSpinTheLoop) {
  page_.assign(8 << 20, 'x');  // more than the socket buffers take
  Start(/*timeout_ms=*/1500);
  UniqueFd fd = Connect();
  int small = 4096;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  Send(fd, "GET /metrics HTTP/1.1\r\n\r\n");
  ::shutdown(fd.get(), SHUT_WR);
  // The loop sleeps between events: a few hundred rounds at most in 0.5 s, not a busy spin.
  int rounds = 0;
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  while (std::chrono::steady_clock::now() < end) {
    loop_->RunOnce(50);
    ++rounds;
  }
  EXPECT_LT(rounds, 200);
  EXPECT_EQ(server_->num_clients(), 1u);
  // It is closed at its deadline.
  for (int i = 0; i < 60 && server_->num_clients() > 0; ++i) loop_->RunOnce(50);
  EXPECT_EQ(server_->num_clients(), 0u);
}

TEST_F(MetricsServerTest, AClientThatHangsUpEarlyLeavesNothingBehind) {
  Start();
  for (int i = 0; i < 50; ++i) {
    UniqueFd fd = Connect();
    if (i % 2) Send(fd, "GET /met");
    loop_->RunOnce(0);  // accepts (the backlog is 16)
  }
  for (int i = 0; i < 50; ++i) loop_->RunOnce(5);
  EXPECT_EQ(server_->num_clients(), 0u);
}

TEST(MetricsAddress, ParsesIPv4IPv6AndAnyAndNamesWhatIsWrong) {
  auto a = ParseMetricsAddress("127.0.0.1:9469");
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 9469);
  EXPECT_FALSE(a->v6);
  auto b = ParseMetricsAddress("[::1]:80");
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->host, "::1");
  EXPECT_TRUE(b->v6);
  auto c = ParseMetricsAddress(":9469");
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->host, "");
  for (const char* bad : {"", "9469", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:x", "::1:80", "[::1]80",
                          "[::1", "localhost:9469", "1.2.3:9", "[1.2.3.4]:9"}) {
    auto r = ParseMetricsAddress(bad);
    EXPECT_FALSE(r.has_value()) << bad;
    if (!r.has_value()) {
      EXPECT_NE(r.error().message().find("metrics address"), std::string::npos);
    }
  }
  auto busy = MetricsServer::Create("203.0.113.7:9469", nullptr, [] { return std::string(); });
  ASSERT_FALSE(busy.has_value());
  EXPECT_NE(busy.error().message().find("no interface of this host has that address"), std::string::npos)
      << busy.error().message();
}

TEST(MetricsText, WritesFamiliesOnceAndEscapesLabelValues) {
  MetricsText m;
  m.Family("nicmux_x_total", "counter", "a help\nline with \\");
  m.Sample({{"port", "vm\"1"}, {"queue", "0"}}, uint64_t{42});
  m.Sample({{"port", "a\\b\nc"}}, 1.5);
  m.Gauge("nicmux_y", "y", 3);
  EXPECT_EQ(m.text(),
            "# HELP nicmux_x_total a help\\nline with \\\\\n"
            "# TYPE nicmux_x_total counter\n"
            "nicmux_x_total{port=\"vm\\\"1\",queue=\"0\"} 42\n"
            "nicmux_x_total{port=\"a\\\\b\\nc\"} 1.5\n"
            "# HELP nicmux_y y\n# TYPE nicmux_y gauge\nnicmux_y 3\n");
}

}  // namespace
}  // namespace nicmux
