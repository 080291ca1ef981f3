// Tests of ControlServer over real UNIX sockets, with the EventLoop run in the test thread
// (RunOnce) between the client's writes and reads; and of nicmuxctl against a test handler
// that answers like nicmuxd (ControlTool.* tests, run as a child process).
#include "control/control_server.h"

#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "base/log.h"
#include "control/pcap.h"

extern char** environ;

namespace nicmux {
namespace {

using json = nlohmann::json;

struct Conn {
  UniqueFd fd;
  std::string buf;
};

class ControlServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/nicmux-ctl-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/run/ctl.sock";  // run/ does not exist: Create makes it
    auto loop = EventLoop::Create();
    ASSERT_TRUE(loop);
    loop_ = std::move(*loop);
  }

  void TearDown() override {
    server_.reset();
    std::filesystem::remove_all(dir_);
  }

  // The handler used unless a test sets its own: a few commands exercising the paths.
  ControlServer::HandlerResult Handle(const std::string& cmd, const json& args,
                                      const std::shared_ptr<ControlClient>& client) {
    ++requests_;
    last_client_ = client;
    if (cmd == "echo") return args;
    if (cmd == "port.show") {
      // args.value() throws on a non-string "name": the server's safety net answers.
      std::string name = args.value("name", "");
      if (name == "vm1") {
        json p = Port("vm1", 1);
        p["mtu"] = 1500;
        p["vlan"] = 10;
        p["options"] = {{"socket", "/run/vm1.sock"}};
        return p;
      }
      return ControlError::NotFound("no port named \"" + name + "\"");
    }
    if (cmd == "port.list" || cmd == "stats") {
      ++stats_calls_;  // each sample: 1 s later on the daemon's clock, 1000 packets more
      json ports = json::array({Port("vm1", stats_calls_), Port("vm2", stats_calls_)});
      return json{{"time_ns", stats_calls_ * 1'000'000'000ull}, {"ports", ports}};
    }
    if (cmd == "port.add") {
      std::string spec = args.at("spec").get<std::string>();
      if (spec.rfind("vhost-user:vm1:", 0) == 0) return ControlError::Exists("port vm1 exists");
      if (spec.rfind("vhost-user:", 0) != 0) return ControlError::Invalid("bad spec " + spec);
      return json::object();
    }
    if (cmd == "port.del") return json::object();
    if (cmd == "fdb.show") {
      return json{{"entries",
                   {{{"mac", "02:00:00:00:00:02"}, {"vlan", 0}, {"port", "vm2"}, {"age_s", 3}},
                    {{"mac", "02:00:00:00:00:01"}, {"vlan", 0}, {"port", "vm1"}, {"age_s", 12}}}},
                  {"size", 2},
                  {"capacity", 4096}};
    }
    if (cmd == "fdb.flush") return json{{"flushed", args.contains("port") ? 1 : 2}};
    if (cmd == "capture") {
      if (args.value("port", "") != "vm1") return ControlError::NotFound("no port named x");
      uint64_t count = args.value("count", uint64_t{0});
      client->BeginStream();
      auto sent = std::make_shared<uint64_t>(0);
      client->SetOnClose([client, sent] { client->Finish(CaptureEndLine(*sent, 7)); });
      PacketTimer(client, sent, count);
      return json::object();
    }
    if (cmd == "throw.type") return json(args.at("x").get<std::string>());
    if (cmd == "throw.runtime") throw std::runtime_error("boom");
    if (cmd == "stream") {
      stream_ = client;
      client->BeginStream();
      client->Send(json{{"first", true}});  // must come after the ok reply
      client->SetOnClose([this] {
        ++on_close_;
        if (stream_) stream_->Finish(CaptureEndLine(42, stream_->dropped()));
      });
      return json::object();
    }
    if (cmd == "finish") {
      client->Finish(json{{"bye", true}});
      return json("finishing");
    }
    return ControlError::BadRequest("unknown command \"" + cmd + "\"");
  }

  static json Port(const std::string& name, uint64_t k) {
    return json{{"name", name},
                {"kind", "vhost-user"},
                {"state", "connected"},
                {"queues", 2},
                {"spec", "vhost-user:" + name + ":socket=/run/x"},
                {"rx_packets", 1000 * k},
                {"rx_bytes", 1'000'000 * k},
                {"tx_packets", 500 * k},
                {"tx_bytes", 250'000 * k},
                {"rx_dropped", 2 * k},
                {"tx_dropped", 1},
                {"drops", {{"no_buffers", 2 * k}, {"bad_chain", 1}}}};
  }

  // A capture: one 60-byte packet a millisecond until count (then "end") or the client ends.
  void PacketTimer(std::shared_ptr<ControlClient> client, std::shared_ptr<uint64_t> sent,
                   uint64_t count) {
    loop_->After(1, [this, client, sent, count] {
      if (client->closed()) return;
      std::vector<std::byte> frame(60, std::byte{0x42});
      client->Send(CapturePacketLine(1'700'000'000'000'000'000ull + *sent * 1000, *sent % 2 == 1,
                                     60, frame));
      if (++*sent == count) {
        client->Finish(CaptureEndLine(*sent, 0));
        return;
      }
      PacketTimer(client, sent, count);
    });
  }

  void StartServer() {
    auto s = ControlServer::Create(
        path_, loop_.get(),
        [this](const std::string& cmd, const json& args, const std::shared_ptr<ControlClient>& c) {
          return Handle(cmd, args, c);
        });
    ASSERT_TRUE(s) << s.error().message();
    server_ = std::move(*s);
  }

  static UniqueFd ConnectTo(const std::string& path) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) return {};
    return fd;
  }

  Conn Connect() {
    Conn c{ConnectTo(path_), {}};
    EXPECT_TRUE(c.fd.valid()) << std::strerror(errno);
    loop_->RunOnce(0);  // accept
    return c;
  }

  static void Write(Conn& c, const std::string& bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
      ssize_t n = ::send(c.fd.get(), bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      ASSERT_GT(n, 0) << std::strerror(errno);
      off += size_t(n);
    }
  }

  // The next line from the server, running the loop meanwhile; nullopt on EOF or after 5 s.
  std::optional<std::string> ReadRaw(Conn& c, int timeout_ms = 5000) {
    uint64_t deadline = MonotonicNowNs() + uint64_t(timeout_ms) * 1'000'000;
    for (;;) {
      size_t nl = c.buf.find('\n');
      if (nl != std::string::npos) {
        std::string line = c.buf.substr(0, nl);
        c.buf.erase(0, nl + 1);
        return line;
      }
      if (MonotonicNowNs() > deadline) return std::nullopt;
      loop_->RunOnce(1);
      char chunk[65536];
      ssize_t n = ::recv(c.fd.get(), chunk, sizeof chunk, MSG_DONTWAIT);
      if (n > 0) c.buf.append(chunk, size_t(n));
      if (n == 0) return std::nullopt;
    }
  }

  json ReadJson(Conn& c) {
    auto line = ReadRaw(c);
    if (!line) return json("<eof or timeout>");
    return json::parse(*line, nullptr, false);
  }

  // True when the server closed the connection (after whatever was still to read).
  bool SeesEof(Conn& c) {
    uint64_t deadline = MonotonicNowNs() + 5'000'000'000;
    while (MonotonicNowNs() < deadline) {
      loop_->RunOnce(1);
      char chunk[65536];
      ssize_t n = ::recv(c.fd.get(), chunk, sizeof chunk, MSG_DONTWAIT);
      if (n == 0) return true;
      if (n > 0) c.buf.append(chunk, size_t(n));
      if (n < 0 && errno != EAGAIN) return true;
    }
    return false;
  }

  static std::string ErrorCode(const json& reply) {
    if (!reply.is_object() || reply.value("ok", true))
      return "<not an error: " + reply.dump() + ">";
    return reply["error"]["code"].get<std::string>();
  }

  std::string dir_, path_;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<ControlServer> server_;
  std::shared_ptr<ControlClient> stream_;
  std::shared_ptr<ControlClient> last_client_;
  int requests_ = 0;
  int on_close_ = 0;
  uint64_t stats_calls_ = 0;
};

TEST_F(ControlServerTest, OkReply) {
  StartServer();
  Conn c = Connect();
  Write(c, R"({"cmd": "echo", "args": {"a": [1, "x"]}})"
           "\n");
  json r = ReadJson(c);
  EXPECT_EQ(r, json::parse(R"({"ok": true, "result": {"a": [1, "x"]}})"));
  Write(c, R"({"cmd": "echo"})"
           "\n");  // args optional: the handler gets {}
  EXPECT_EQ(ReadJson(c), json::parse(R"({"ok": true, "result": {}})"));
}

TEST_F(ControlServerTest, ErrorReply) {
  StartServer();
  Conn c = Connect();
  Write(c, R"({"cmd": "port.show", "args": {"name": "vm9"}})"
           "\n");
  json r = ReadJson(c);
  EXPECT_EQ(ErrorCode(r), "not_found");
  EXPECT_EQ(r["error"]["message"], "no port named \"vm9\"");
  Write(c, R"({"cmd": "nope"})"
           "\n");
  EXPECT_EQ(ErrorCode(ReadJson(c)), "bad_request");
}

TEST_F(ControlServerTest, GarbageIsBadRequestAndTheConnectionLives) {
  StartServer();
  Conn c = Connect();
  const std::vector<std::string> garbage = {
      "hello",
      std::string("\0\xff\xfe{", 4),
      "[1, 2]",
      "42",
      R"({"cmd": 5})",
      R"({"args": {}})",
      R"({"cmd": "echo", "args": 3})",
      R"({"cmd": "echo", "args": null})",
      "{\"cmd\": \"echo\", \"args\": {\"s\": \"\xff\xfe\"}}",  // invalid UTF-8
      R"({"cmd": "echo"} {"cmd": "echo"})",                    // two values on a line
      std::string(40, '[') + std::string(40, ']'),             // too deep
  };
  for (const std::string& g : garbage) {
    Write(c, g + "\n");
    json r = ReadJson(c);
    EXPECT_EQ(ErrorCode(r), "bad_request")
        << "for " << json(g).dump(-1, ' ', false, json::error_handler_t::replace);
    EXPECT_FALSE(r["error"]["message"].get<std::string>().empty());
  }
  Write(c, "\n  \r\n");  // blank lines are not requests: no reply
  Write(c, R"({"cmd": "echo", "args": {"still": "alive"}})"
           "\r\n");
  EXPECT_EQ(ReadJson(c)["result"]["still"], "alive");
  EXPECT_EQ(requests_, 1);
}

TEST_F(ControlServerTest, NestingWithinTheLimitIsFine) {
  StartServer();
  Conn c = Connect();
  std::string nested = std::string(30, '[') + std::string(30, ']');
  Write(c, R"({"cmd": "echo", "args": {"x": )" + nested + "}}\n");
  EXPECT_TRUE(ReadJson(c)["ok"].get<bool>());
}

TEST_F(ControlServerTest, TooLongRequestIsRefusedAndClosed) {
  StartServer();
  Conn c = Connect();
  std::string big = R"({"cmd": "echo", "args": {"x": ")" + std::string(70000, 'a');
  Write(c, big.substr(0, 30000));  // in pieces, no newline yet
  loop_->RunOnce(1);
  Write(c, big.substr(30000));
  json r = ReadJson(c);
  EXPECT_EQ(ErrorCode(r), "bad_request");
  EXPECT_NE(r["error"]["message"].get<std::string>().find("request too long"), std::string::npos);
  EXPECT_TRUE(SeesEof(c));
  EXPECT_EQ(server_->num_clients(), 0u);

  Conn d = Connect();  // a complete line that is too long: the same
  Write(d, big + "\"}}\n");
  EXPECT_EQ(ErrorCode(ReadJson(d)), "bad_request");
  EXPECT_TRUE(SeesEof(d));
}

TEST_F(ControlServerTest, ExactlyTheLimitIsAccepted) {
  StartServer();
  Conn c = Connect();
  std::string head = R"({"cmd": "echo", "args": {"x": ")", tail = "\"}}";
  std::string line = head + std::string(kMaxRequestBytes - head.size() - tail.size(), 'b') + tail;
  ASSERT_EQ(line.size(), kMaxRequestBytes);
  Write(c, line + "\n");
  EXPECT_TRUE(ReadJson(c)["ok"].get<bool>());
}

TEST_F(ControlServerTest, PipelinedRequestsAreAnsweredInOrder) {
  StartServer();
  Conn c = Connect();
  std::string all;
  for (int i = 0; i < 200; ++i)
    all += R"({"cmd": "echo", "args": {"i": )" + std::to_string(i) + "}}\n";
  Write(c, all);
  for (int i = 0; i < 200; ++i) ASSERT_EQ(ReadJson(c)["result"]["i"], i);
}

TEST_F(ControlServerTest, RequestSplitAcrossWrites) {
  StartServer();
  Conn c = Connect();
  std::string req = R"({"cmd": "echo", "args": {"split": true}})"
                    "\n";
  for (char ch : req) {
    Write(c, std::string(1, ch));
    loop_->RunOnce(0);
  }
  EXPECT_EQ(ReadJson(c)["result"]["split"], true);
}

TEST_F(ControlServerTest, LastRequestWithoutNewlineAtHalfClose) {
  StartServer();
  Conn c = Connect();
  Write(c, R"({"cmd": "echo", "args": {"n": 1}})"
           "\n"
           R"({"cmd": "echo", "args": {"n": 2}})");
  ::shutdown(c.fd.get(), SHUT_WR);
  EXPECT_EQ(ReadJson(c)["result"]["n"], 1);
  EXPECT_EQ(ReadJson(c)["result"]["n"], 2);
  EXPECT_TRUE(SeesEof(c));
  EXPECT_EQ(server_->num_clients(), 0u);
}

TEST_F(ControlServerTest, HandlerExceptionsBecomeErrorReplies) {
  StartServer();
  Conn c = Connect();
  Write(c, R"({"cmd": "port.show", "args": {"name": 5}})"
           "\n");  // value(): type_error
  json r = ReadJson(c);
  EXPECT_EQ(ErrorCode(r), "bad_request");
  EXPECT_NE(r["error"]["message"].get<std::string>().find("port.show"), std::string::npos);
  Write(c, R"({"cmd": "throw.type", "args": {}})"
           "\n");  // at(): out_of_range
  EXPECT_EQ(ErrorCode(ReadJson(c)), "bad_request");
  Write(c, R"({"cmd": "throw.runtime"})"
           "\n");
  EXPECT_EQ(ErrorCode(ReadJson(c)), "failed");
  Write(c, R"({"cmd": "echo", "args": {"ok": 1}})"
           "\n");
  EXPECT_EQ(ReadJson(c)["result"]["ok"], 1);
}

TEST_F(ControlServerTest, StreamToAClientThatDoesNotReadIsBounded) {
  StartServer();
  Conn c = Connect();
  Write(c, R"({"cmd": "stream"})"
           "\n");
  json r = ReadJson(c);
  ASSERT_EQ(r, json::parse(R"({"ok": true, "result": {}})"));
  EXPECT_EQ(ReadJson(c), json::parse(R"({"first": true})"));
  ASSERT_TRUE(stream_);
  EXPECT_TRUE(stream_->streaming());

  std::vector<std::byte> payload(1500, std::byte{0x5a});
  const int kLines = 10000;  // ~2 KiB each: ~20 MiB offered
  for (int i = 0; i < kLines; ++i) {
    stream_->Send(CapturePacketLine(uint64_t(i), i % 2 == 1, 1500, payload));
    if (i % 100 == 0) loop_->RunOnce(0);  // the loop flushes what the socket takes
    ASSERT_LE(stream_->unsent_bytes(), kMaxClientOutputBytes);
  }
  EXPECT_GT(stream_->dropped(), 0u);
  uint64_t dropped = stream_->dropped();

  // Now read everything: every line that was not dropped arrives whole, in order.
  uint64_t got = 0;
  int64_t last_ts = -1;
  while (got < kLines - dropped) {
    auto line = ReadRaw(c);
    ASSERT_TRUE(line) << "after " << got << " lines";
    json pkt = json::parse(*line, nullptr, false);
    ASSERT_TRUE(pkt.contains("pkt")) << line->substr(0, 100);
    int64_t ts = pkt["pkt"]["ts_ns"].get<int64_t>();
    ASSERT_GT(ts, last_ts);
    last_ts = ts;
    auto data = Base64Decode(pkt["pkt"]["data"].get<std::string>());
    ASSERT_TRUE(data);
    ASSERT_EQ(data->size(), 1500u);
    ++got;
  }
  EXPECT_EQ(stream_->unsent_bytes(), 0u);
  // Half-close ends the stream; the on-close callback still gets its "end" line through.
  ::shutdown(c.fd.get(), SHUT_WR);
  json end = ReadJson(c);
  EXPECT_EQ(end, CaptureEndLine(42, dropped));
  EXPECT_TRUE(SeesEof(c));
  EXPECT_EQ(on_close_, 1);
  EXPECT_TRUE(stream_->closed());
  stream_->Send(json{{"late", true}});  // a no-op, not a crash
  EXPECT_EQ(server_->num_clients(), 0u);
}

TEST_F(ControlServerTest, StreamClientVanishing) {
  StartServer();
  Conn c = Connect();
  Write(c, R"({"cmd": "stream"})"
           "\n");
  ASSERT_TRUE(ReadJson(c)["ok"].get<bool>());
  for (int i = 0; i < 1000; ++i) stream_->Send(json{{"pkt", {{"i", i}}}});
  c.fd.Reset();  // gone, with output pending: EPIPE on the server side
  for (int i = 0; i < 50 && server_->num_clients() > 0; ++i) loop_->RunOnce(1);
  EXPECT_EQ(server_->num_clients(), 0u);
  EXPECT_EQ(on_close_, 1);
  EXPECT_TRUE(stream_->closed());
}

TEST_F(ControlServerTest, FinishFromTheHandlerComesAfterTheReply) {
  StartServer();
  Conn c = Connect();
  Write(c, R"({"cmd": "finish"})"
           "\n"
           R"({"cmd": "echo"})"
           "\n");
  EXPECT_EQ(ReadJson(c)["result"], "finishing");
  EXPECT_EQ(ReadJson(c), json::parse(R"({"bye": true})"));
  EXPECT_TRUE(SeesEof(c));  // and the pipelined echo is not served
  EXPECT_EQ(requests_, 1);
}

TEST_F(ControlServerTest, PipelinedClientThatDoesNotReadIsBounded) {
  StartServer();
  Conn c = Connect();
  // Many requests with big replies, never reading: once the output for this client is over
  // the limit the server stops reading its requests, instead of queueing replies without bound.
  std::string req = R"({"cmd": "echo", "args": {"x": ")" + std::string(60000, 'x') + "\"}}\n";
  ::fcntl(c.fd.get(), F_SETFL, O_NONBLOCK);
  size_t sent = 0;
  size_t max_unsent = 0;
  for (int round = 0; round < 3000; ++round) {
    size_t off = sent % req.size();
    ssize_t n = ::send(c.fd.get(), req.data() + off, req.size() - off, MSG_NOSIGNAL);
    if (n > 0) sent += size_t(n);
    loop_->RunOnce(0);
    if (last_client_) max_unsent = std::max(max_unsent, last_client_->unsent_bytes());
  }
  ASSERT_EQ(server_->num_clients(), 1u);
  EXPECT_GT(max_unsent, kMaxClientOutputBytes);                     // it did fill up...
  EXPECT_LE(max_unsent, kMaxClientOutputBytes + req.size() + 100);  // ...by one reply at most
  EXPECT_LT(size_t(requests_), sent / req.size());  // and requests wait in the socket
  // Reading drains it and the server catches up with the rest, in order.
  ::fcntl(c.fd.get(), F_SETFL, 0);
  size_t expected = sent / req.size();
  for (size_t replies = 0; replies < expected; ++replies) {
    auto line = ReadRaw(c);
    ASSERT_TRUE(line) << replies << " of " << expected;
    ASSERT_GT(line->size(), 60000u) << replies;
  }
  EXPECT_EQ(size_t(requests_), expected);
}

TEST_F(ControlServerTest, SocketModeAndDirectory) {
  StartServer();
  struct stat st;
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  ASSERT_EQ(::stat((dir_ + "/run").c_str(), &st), 0);
  mode_t mask = ::umask(0);
  ::umask(mask);
  EXPECT_EQ(st.st_mode & 07777, 0750u & ~mask);
}

TEST_F(ControlServerTest, SecondServerOnAPathInUseFails) {
  StartServer();
  auto second = ControlServer::Create(path_, loop_.get(), nullptr);
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error().message(), "control socket " + path_ + " is in use by another nicmuxd");
  // The first one is untouched and still answers.
  Conn c = Connect();
  Write(c, R"({"cmd": "echo"})"
           "\n");
  EXPECT_TRUE(ReadJson(c)["ok"].get<bool>());
}

TEST_F(ControlServerTest, StaleSocketIsReplaced) {
  std::filesystem::create_directories(dir_ + "/run");
  {  // bound, never listening, closed: what a crashed daemon leaves
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  }
  StartServer();
  Conn c = Connect();
  Write(c, R"({"cmd": "echo"})"
           "\n");
  EXPECT_TRUE(ReadJson(c)["ok"].get<bool>());
}

TEST_F(ControlServerTest, NonSocketFileIsNotReplaced) {
  std::filesystem::create_directories(dir_ + "/run");
  { std::ofstream(path_) << "precious"; }
  auto s = ControlServer::Create(path_, loop_.get(), nullptr);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message().find(path_), std::string::npos);
  EXPECT_NE(s.error().message().find("not a socket"), std::string::npos);
  std::ifstream in(path_);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "precious");
}

TEST_F(ControlServerTest, MissingGrandparentIsAnError) {
  auto s = ControlServer::Create(dir_ + "/a/b/ctl.sock", loop_.get(), nullptr);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message().find(dir_ + "/a/b"), std::string::npos);
}

TEST_F(ControlServerTest, DestructorClosesClientsAndRemovesTheSocket) {
  StartServer();
  Conn c = Connect();
  Write(c, R"({"cmd": "stream"})"
           "\n");
  ASSERT_TRUE(ReadJson(c)["ok"].get<bool>());
  server_.reset();
  EXPECT_EQ(on_close_, 1);
  EXPECT_TRUE(stream_->closed());
  EXPECT_NE(::access(path_.c_str(), F_OK), 0);
  char ch;
  // Flush of our first line may or may not have happened; the connection is closed either way.
  ssize_t n;
  do n = ::recv(c.fd.get(), &ch, 1, 0);
  while (n > 0);
  EXPECT_EQ(n, 0);
}

TEST_F(ControlServerTest, DestructorLeavesAnotherDaemonsSocket) {
  StartServer();
  ASSERT_EQ(::unlink(path_.c_str()), 0);  // someone removed ours and took the path
  UniqueFd other(::socket(AF_UNIX, SOCK_STREAM, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path_.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(::bind(other.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  server_.reset();
  EXPECT_EQ(::access(path_.c_str(), F_OK), 0);
}

TEST_F(ControlServerTest, AtMost64Clients) {
  StartServer();
  std::vector<Conn> conns;
  for (size_t i = 0; i < kMaxControlClients; ++i) conns.push_back(Connect());
  for (int i = 0; i < 10; ++i) loop_->RunOnce(1);
  EXPECT_EQ(server_->num_clients(), kMaxControlClients);
  Conn extra = Connect();
  json r = ReadJson(extra);
  EXPECT_EQ(ErrorCode(r), "failed");
  EXPECT_NE(r["error"]["message"].get<std::string>().find("too many"), std::string::npos);
  EXPECT_TRUE(SeesEof(extra));
  // The others still work; once one leaves there is room again.
  Write(conns[0], R"({"cmd": "echo"})"
                  "\n");
  EXPECT_TRUE(ReadJson(conns[0])["ok"].get<bool>());
  conns.pop_back();
  for (int i = 0; i < 10; ++i) loop_->RunOnce(1);
  Conn again = Connect();
  Write(again, R"({"cmd": "echo"})"
               "\n");
  EXPECT_TRUE(ReadJson(again)["ok"].get<bool>());
}

TEST_F(ControlServerTest, OtherUsersAreDenied) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to connect as another uid";
  StartServer();
  ASSERT_EQ(::chmod(path_.c_str(), 0666), 0);  // let the file mode pass: SO_PEERCRED decides
  ASSERT_EQ(::chmod((dir_ + "/run").c_str(), 0755), 0);
  ASSERT_EQ(::chmod(dir_.c_str(), 0755), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // nobody:nogroup, no supplementary groups; then connect and expect "denied" and EOF.
    if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) _exit(10);
    UniqueFd fd = ConnectTo(path_);
    if (!fd) _exit(11);
    std::string req = "{\"cmd\": \"echo\"}\n";
    (void)!::send(fd.get(), req.data(), req.size(), MSG_NOSIGNAL);
    std::string got;
    char buf[512];
    ssize_t n;
    while ((n = ::recv(fd.get(), buf, sizeof buf, 0)) > 0) got.append(buf, size_t(n));
    _exit(got.find("\"denied\"") != std::string::npos ? 0 : 12);
  }
  int status = 0;
  uint64_t deadline = MonotonicNowNs() + 10'000'000'000;
  while (::waitpid(child, &status, WNOHANG) == 0 && MonotonicNowNs() < deadline) {
    loop_->RunOnce(5);
  }
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(requests_, 0);
}

TEST(ControlBase64, RoundTripAndStrictDecoding) {
  for (size_t len = 0; len < 10; ++len) {
    std::vector<std::byte> data;
    for (size_t i = 0; i < len; ++i) data.push_back(std::byte(0xf0 + i));
    std::string text = Base64Encode(data);
    EXPECT_EQ(text.size() % 4, 0u);
    auto back = Base64Decode(text);
    ASSERT_TRUE(back);
    EXPECT_EQ(*back, data);
  }
  const char* hello = "hello";
  EXPECT_EQ(Base64Encode(std::as_bytes(std::span(hello, 5))), "aGVsbG8=");
  EXPECT_FALSE(Base64Decode("aGVsbG8"));   // length
  EXPECT_FALSE(Base64Decode("aGV*bG8="));  // alphabet
  EXPECT_FALSE(Base64Decode("aG=sbG8="));  // padding in the middle
  EXPECT_FALSE(Base64Decode("a===bG8="));  // padding not at the end
}

TEST(ControlDumpJsonLine, ReplacesInvalidUtf8) {
  json j = {{"s", std::string("a\xff"
                              "b")}};
  EXPECT_EQ(DumpJsonLine(j),
            "{\"s\":\"a\xEF\xBF\xBD"
            "b\"}\n");
}

// ---------------------------------------------------------------------------------------------
// nicmuxctl against the test handler above.

struct ToolRun {
  int exit_code = -1;
  std::string out, err;
};

class ControlToolTest : public ControlServerTest {
 protected:
  void SetUp() override {
#ifndef NICMUXCTL_PATH
    GTEST_SKIP() << "built without NICMUXCTL_PATH";
#else
    ControlServerTest::SetUp();
#endif
  }

  // Runs nicmuxctl with NICMUX_CONTROL=path_ while the loop serves it. act runs once, when
  // ready(output so far) first holds (e.g. to send it a signal).
  ToolRun Run(std::vector<std::string> args,
              const std::function<bool(const ToolRun&)>& ready = nullptr,
              const std::function<void(pid_t)>& act = nullptr) {
    ToolRun run;
#ifdef NICMUXCTL_PATH
    int out[2], err[2];
    EXPECT_EQ(::pipe2(out, O_CLOEXEC | O_NONBLOCK), 0);
    EXPECT_EQ(::pipe2(err, O_CLOEXEC | O_NONBLOCK), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    std::vector<std::string> env_strings = {"NICMUX_CONTROL=" + path_};
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::strncmp(*e, "NICMUX_CONTROL=", 15) != 0) env_strings.push_back(*e);
    }
    args.insert(args.begin(), NICMUXCTL_PATH);
    std::vector<char*> argv, envp;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env_strings) envp.push_back(e.data());
    envp.push_back(nullptr);
    pid_t pid;
    int rc = posix_spawn(&pid, NICMUXCTL_PATH, &fa, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    ::close(out[1]);
    ::close(err[1]);
    EXPECT_EQ(rc, 0);
    auto drain = [&] {
      char buf[4096];
      ssize_t n;
      while ((n = ::read(out[0], buf, sizeof buf)) > 0) run.out.append(buf, size_t(n));
      while ((n = ::read(err[0], buf, sizeof buf)) > 0) run.err.append(buf, size_t(n));
    };
    bool started = false;
    int status = 0;
    uint64_t deadline = MonotonicNowNs() + 30'000'000'000ull;
    for (;;) {
      loop_->RunOnce(1);
      drain();
      if (!started && act && ready(run)) {
        started = true;
        act(pid);
      }
      if (::waitpid(pid, &status, WNOHANG) == pid) break;
      if (MonotonicNowNs() > deadline) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
        ADD_FAILURE() << "nicmuxctl did not finish";
        break;
      }
    }
    for (int i = 0; i < 10; ++i) loop_->RunOnce(1);  // let the server see the close
    drain();
    ::close(out[0]);
    ::close(err[0]);
    run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
#endif
    return run;
  }

  static bool Contains(const std::string& s, const std::string& part) {
    return s.find(part) != std::string::npos;
  }
};

TEST_F(ControlToolTest, HelpAndUsageErrors) {
  ToolRun help = Run({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_TRUE(Contains(help.out, "exit status:"));
  EXPECT_TRUE(Contains(help.out, "capture PORT -w FILE"));
  const std::vector<std::vector<std::string>> bad = {
      {},
      {"port"},
      {"port", "show"},
      {"port", "list", "extra"},
      {"frob"},
      {"--bogus", "port", "list"},
      {"stats", "--interval", "0"},
      {"stats", "--interval", "abc"},
      {"port", "list", "--watch"},
      {"capture", "vm1"},
      {"capture", "vm1", "-w", "/tmp/x.pcap", "-c", "-3"},
      {"fdb", "show", "-c", "3"},
      {"--socket"},
  };
  for (const auto& args : bad) {
    ToolRun r = Run(args);
    EXPECT_EQ(r.exit_code, 2) << ::testing::PrintToString(args) << r.err;
    EXPECT_TRUE(Contains(r.err, "nicmuxctl: ")) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
}

TEST_F(ControlToolTest, NoDaemonIsExit3WithTheSocketPath) {
  ToolRun r = Run({"--socket", dir_ + "/nope.sock", "port", "list"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_TRUE(Contains(r.err, "cannot connect to " + dir_ + "/nope.sock")) << r.err;
  EXPECT_TRUE(Contains(r.err, "No such file or directory")) << r.err;
  EXPECT_TRUE(Contains(r.err, "is nicmuxd running?")) << r.err;
  EXPECT_TRUE(Contains(r.err, "NICMUX_CONTROL")) << r.err;

  // A socket nobody listens on: connection refused, also 3.
  std::filesystem::create_directories(dir_ + "/run");
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path_.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  r = Run({"port", "list"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_TRUE(Contains(r.err, "Connection refused")) << r.err;
}

TEST_F(ControlToolTest, PortListShowAddDel) {
  StartServer();
  ToolRun r = Run({"port", "list"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(Contains(r.out, "NAME  KIND        STATE      QUEUES  RX pkts")) << r.out;
  EXPECT_TRUE(Contains(r.out, "vm1   vhost-user  connected       2     1000")) << r.out;

  r = Run({"port", "show", "vm1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(Contains(r.out, "name:        vm1\n")) << r.out;
  EXPECT_TRUE(Contains(r.out, "vlan:        10\n")) << r.out;
  EXPECT_TRUE(Contains(r.out, "options:     {\"socket\":\"/run/vm1.sock\"}\n")) << r.out;
  EXPECT_TRUE(Contains(r.out, "drops:\n  no_buffers:  2\n  bad_chain:   1\n")) << r.out;

  r = Run({"port", "show", "vm9"});
  EXPECT_EQ(r.exit_code, 4);
  EXPECT_EQ(r.err, "nicmuxctl: no port named \"vm9\"\n");

  r = Run({"port", "add", "vhost-user:vm3:socket=/run/vm3.sock"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "added port vm3\n");
  r = Run({"port", "add", "vhost-user:vm1:socket=/run/vm1.sock"});
  EXPECT_EQ(r.exit_code, 5);
  r = Run({"port", "add", "bogus"});
  EXPECT_EQ(r.exit_code, 6);
  EXPECT_EQ(r.err, "nicmuxctl: bad spec bogus\n");
  r = Run({"port", "del", "vm2"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, "removed port vm2\n");
}

TEST_F(ControlToolTest, JsonPrintsTheRawResult) {
  StartServer();
  ToolRun r = Run({"--json", "port", "list"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json j = json::parse(r.out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j["ports"][1]["name"], "vm2");
  r = Run({"stats", "vm1", "--json"});  // one sample, no waiting
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(json::parse(r.out, nullptr, false).contains("ports"));
}

TEST_F(ControlToolTest, Fdb) {
  StartServer();
  ToolRun r = Run({"fdb", "show"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "MAC                VLAN  PORT  AGE (s)\n"
            "02:00:00:00:00:01     0  vm1        12\n"
            "02:00:00:00:00:02     0  vm2         3\n"
            "2 entries (capacity 4096)\n");
  r = Run({"fdb", "flush", "vm1"});
  EXPECT_EQ(r.out, "flushed 1 entry of port vm1\n");
  r = Run({"fdb", "flush"});
  EXPECT_EQ(r.out, "flushed 2 entries\n");
}

TEST_F(ControlToolTest, StatsRatesFromTwoSamples) {
  StartServer();
  ToolRun r = Run({"stats", "--interval", "0.1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Between samples (1 s apart on the daemon's clock): 1000 rx packets, 8 Mbit, 2 drops.
  EXPECT_TRUE(Contains(r.out, "PORT  RX pps  RX Mbit/s  TX pps  TX Mbit/s  DROPS\n")) << r.out;
  EXPECT_TRUE(Contains(r.out, "vm1     1000       8.00     500       2.00      5\n")) << r.out;
  EXPECT_TRUE(Contains(r.out, "drops by reason (total): no_buffers 8 bad_chain 2\n")) << r.out;
  EXPECT_EQ(stats_calls_, 2u);
}

TEST_F(ControlToolTest, StatsWatchUntilCtrlC) {
  StartServer();
  ToolRun r = Run(
      {"stats", "--watch", "--interval", "0.05"},
      [this](const ToolRun&) { return stats_calls_ >= 4; }, [](pid_t pid) { ::kill(pid, SIGINT); });
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // Not a terminal: no escape codes, one table after another.
  EXPECT_FALSE(Contains(r.out, "\033[")) << r.out;
  EXPECT_TRUE(Contains(r.out, "every 0.05 s on " + path_ + ", Ctrl-C to stop\n")) << r.out;
  EXPECT_TRUE(Contains(r.out, "PORT  RX pps  RX Mbit/s  TX pps  TX Mbit/s  DROPS/s\n")) << r.out;
  EXPECT_GE(stats_calls_, 4u);
}

TEST_F(ControlToolTest, CaptureCount) {
  StartServer();
  std::string file = dir_ + "/cap.pcap";
  ToolRun r = Run({"capture", "vm1", "-w", file, "-c", "5"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "5 packets captured (0 dropped)\n");
  EXPECT_EQ(std::filesystem::file_size(file), 24u + 5 * (16 + 60));
}

TEST_F(ControlToolTest, CaptureDurationEndsWithTheDaemonsEndLine) {
  StartServer();
  std::string file = dir_ + "/cap.pcap";
  ToolRun r = Run({"capture", "vm1", "-w", file, "--duration", "0.3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  unsigned long n = 0;
  ASSERT_EQ(std::sscanf(r.out.c_str(), "%lu packets captured (7 dropped)", &n), 1) << r.out;
  EXPECT_GT(n, 0u);
  EXPECT_EQ(std::filesystem::file_size(file), 24u + n * (16 + 60));
}

TEST_F(ControlToolTest, CaptureCtrlCLeavesAValidFile) {
  StartServer();
  std::string file = dir_ + "/cap.pcap";
  auto capturing = [](const ToolRun& so_far) {
    return so_far.err.find("capturing on vm1") != std::string::npos;
  };
  ToolRun r = Run({"capture", "vm1", "-w", file}, capturing, [&](pid_t pid) {
    for (int i = 0; i < 100; ++i) loop_->RunOnce(1);  // some packets first
    ::kill(pid, SIGINT);
  });
  ASSERT_EQ(r.exit_code, 0) << r.err;
  unsigned long n = 0;
  ASSERT_EQ(std::sscanf(r.out.c_str(), "%lu packets captured (7 dropped)", &n), 1) << r.out;
  EXPECT_GT(n, 0u);
  EXPECT_EQ(std::filesystem::file_size(file), 24u + n * (16 + 60));
}

TEST_F(ControlToolTest, CaptureOfAnUnknownPortRemovesTheFile) {
  StartServer();
  std::string file = dir_ + "/cap.pcap";
  ToolRun r = Run({"capture", "vm7", "-w", file});
  EXPECT_EQ(r.exit_code, 4);
  EXPECT_FALSE(std::filesystem::exists(file));
}

TEST_F(ControlToolTest, NoReplyWithin10sIsExit1) {
  std::filesystem::create_directories(dir_ + "/run");
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM, 0));  // listens, never answers
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path_.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(fd.get(), 4), 0);
  uint64_t start = MonotonicNowNs();
  ToolRun r = Run({"port", "list"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(Contains(r.err, "no reply from nicmuxd on " + path_ + " within 10 s")) << r.err;
  EXPECT_GE(MonotonicNowNs() - start, 9'900'000'000ull);
}

}  // namespace
}  // namespace nicmux
