// libFuzzer target: the control socket (docs/control.md) of a real Daemon — two vhost-user
// ports, the learning switch, one worker — fed whatever a client writes: the bytes go through
// the socket and ControlClient's line framing, NestingDepth, the JSON parse, the request's
// shape and Daemon::Handle's checks of every command's arguments.
//
// Checks: no crash, hang or sanitizer report; every reply is one JSON object per line,
// {"ok": true, "result": ...} or {"ok": false, "error": {"code", "message"}} with a code of the
// protocol's and a message; exactly one reply per request line (the last one without its
// newline included, as the client half-closes), unless a request over kMaxRequestBytes closed
// the connection or a capture turned it into a stream; and after the input, the daemon still
// answers port.list with its ports on a new connection. One daemon serves the whole run: after
// each input the ports it added go and the two it removed come back.
//
// What would reach outside this process is not sent (the line is dropped before it goes): an
// upgrade (it starts a binary), a port.add that is not a vhost-user port with its socket in
// this target's own directory (an input names it "@D"). Everything else the daemon does for real: ports added and
// removed (their workers paused), MAC tables flushed, captures started and ended.
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "base/event_loop.h"
#include "base/log.h"
#include "control/control_server.h"
#include "control/daemon.h"
#include "port/port_spec.h"

namespace {

using nlohmann::json;

const std::string& Dir() {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/nicmux-control-fuzz.XXXXXX";
    if (!mkdtemp(tmpl)) abort();
    nicmux::SetLogLevel(nicmux::LogLevel::kError);
    return std::string(tmpl);
  }();
  return dir;
}

// The request's cmd as the server will read it, or "" when the line is not one (the server
// answers those with an error itself).
std::string CmdOf(std::string_view line, json* request) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  *request = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (!request->is_object()) return "";
  auto it = request->find("cmd");
  if (it == request->end() || !it->is_string()) return "";
  return it->get<std::string>();
}

// A port.add whose effects stay inside Dir(): a vhost-user port listening (or connecting) there.
bool AddStaysInside(const json& request) {
  auto args = request.find("args");
  if (args == request.end() || !args->is_object()) return true;  // refused: no spec
  auto spec_text = args->find("spec");
  if (spec_text == args->end() || !spec_text->is_string()) return true;
  auto spec = nicmux::ParsePortSpec(spec_text->get<std::string>());
  if (!spec) return true;  // refused by the same parser
  if (spec->kind != "vhost-user") return false;
  auto sock = spec->options.find("socket");
  if (sock == spec->options.end()) return true;  // refused: socket= is required
  return sock->second.rfind(Dir() + "/", 0) == 0 && sock->second.find("..") == std::string::npos &&
         sock->second.find('\0') == std::string::npos;
}

bool IsBlank(std::string_view s) { return s.find_first_not_of(" \t\r") == std::string_view::npos; }

void CheckReply(const json& r) {
  if (!r.is_object() || !r.contains("ok") || !r["ok"].is_boolean()) abort();
  if (r["ok"].get<bool>()) {
    if (!r.contains("result")) abort();
    return;
  }
  const json& e = r.value("error", json());
  if (!e.is_object() || !e.contains("code") || !e["code"].is_string()) abort();
  if (!e.contains("message") || !e["message"].is_string() || e["message"].get<std::string>().empty()) abort();
  static const char* kCodes[] = {nicmux::kCodeBadRequest, nicmux::kCodeNotFound, nicmux::kCodeExists,
                                 nicmux::kCodeInvalid,    nicmux::kCodeFailed,   nicmux::kCodeDenied};
  const std::string code = e["code"].get<std::string>();
  for (const char* c : kCodes) {
    if (code == c) return;
  }
  abort();
}

// One daemon for the whole run (making its ports anew for every input would cost more than
// the input): two vhost-user ports, restored after each input.
nicmux::PortSpec BasePort(int i) {
  auto spec = nicmux::ParsePortSpec("vhost-user:vm" + std::to_string(i + 1) + ":socket=" + Dir() + "/vm" +
                                    std::to_string(i + 1) + ".sock");
  if (!spec) abort();
  return *spec;
}

struct Fixture {
  std::unique_ptr<nicmux::EventLoop> loop;
  std::unique_ptr<nicmux::Daemon> daemon;
  std::string control_path;
};

Fixture& State() {
  static Fixture* f = [] {
    auto* f = new Fixture;
    auto loop = nicmux::EventLoop::Create();
    if (!loop) abort();
    f->loop = std::move(*loop);
    nicmux::DaemonOptions o;
    o.workers = 1;
    o.control_path = f->control_path = Dir() + "/ctl.sock";
    o.ports = {BasePort(0), BasePort(1)};
    auto daemon = nicmux::Daemon::Create(o, f->loop.get());
    if (!daemon) {
      fprintf(stderr, "control_fuzz: %s\n", daemon.error().message().c_str());
      abort();
    }
    f->daemon = std::move(*daemon);
    // At exit the daemon goes (its sockets with it), then the directory.
    std::atexit([] {
      State().daemon.reset();
      std::error_code ec;
      std::filesystem::remove_all(Dir(), ec);
    });
    return f;
  }();
  return *f;
}

// Connects to the control socket, writes `out`, half-closes, and reads until the daemon closes.
std::string Exchange(const std::string& out) {
  Fixture& f = State();
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) abort();
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", f.control_path.c_str());
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) abort();
  // Watched by the daemon's own loop, so that a round ends as soon as replies come.
  if (!f.loop->Watch(fd, EPOLLIN | EPOLLRDHUP, [](uint32_t) {})) abort();

  std::string got;
  size_t sent = 0;
  bool eof = false, half_closed = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!eof) {
    if (std::chrono::steady_clock::now() > deadline) {
      fprintf(stderr, "control_fuzz: no end of the replies after 20 s (sent %zu of %zu bytes, got %zu)\n", sent,
              out.size(), got.size());
      abort();  // a hang is a finding
    }
    if (sent < out.size()) {
      ssize_t n = send(fd, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
      if (n > 0) sent += static_cast<size_t>(n);
      if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) sent = out.size();  // closed on us
      else if (n < 0 && errno != EAGAIN) abort();
    }
    if (sent == out.size() && !half_closed) {
      shutdown(fd, SHUT_WR);
      half_closed = true;
    }
    char buf[65536];
    for (;;) {
      ssize_t n = read(fd, buf, sizeof(buf));
      if (n > 0) {
        got.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n == 0 || (n < 0 && errno == ECONNRESET)) eof = true;
      break;
    }
    if (!eof) f.loop->RunOnce(sent < out.size() ? 1 : 50);
  }
  f.loop->Unwatch(fd);
  close(fd);
  return got;
}

// The reply lines: each a JSON value ending with its newline.
std::vector<json> Lines(const std::string& got) {
  std::vector<json> lines;
  for (size_t p = 0; p < got.size();) {
    size_t nl = got.find('\n', p);
    if (nl == std::string::npos) abort();
    json r = json::parse(got.begin() + static_cast<std::ptrdiff_t>(p), got.begin() + static_cast<std::ptrdiff_t>(nl),
                         nullptr, false);
    if (r.is_discarded()) abort();
    lines.push_back(std::move(r));
    p = nl + 1;
  }
  return lines;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = Dir();
  // "@D" stands for this target's directory (mkdtemp's, different in every run), so that the
  // corpus can name sockets there.
  std::string text(reinterpret_cast<const char*>(data), size);
  for (size_t at = text.find("@D"); at != std::string::npos; at = text.find("@D", at + dir.size())) {
    text.replace(at, 2, dir);
  }
  std::string_view in(text);

  // The lines that go, and how many requests among them.
  std::string out;
  size_t requests = 0;
  bool stream_or_close = false;
  size_t pos = 0;
  while (pos <= in.size()) {
    size_t nl = in.find('\n', pos);
    const bool last = nl == std::string_view::npos;
    std::string_view line = in.substr(pos, last ? std::string_view::npos : nl - pos);
    pos = last ? in.size() + 1 : nl + 1;
    if (last && line.empty()) break;
    json request;
    const std::string cmd = CmdOf(line, &request);
    if (cmd == "upgrade" || (cmd == "port.add" && !AddStaysInside(request))) continue;
    if (cmd == "capture") stream_or_close = true;
    if (line.size() > nicmux::kMaxRequestBytes) stream_or_close = true;
    if (!IsBlank(line)) ++requests;
    out.append(line);
    if (!last) out.push_back('\n');  // a last line without one is served at the half-close
  }
  const std::string got = Exchange(out);

  size_t replies = 0;
  for (const json& r : Lines(got)) {
    if (r.contains("pkt") || r.contains("end")) continue;  // a capture's stream
    CheckReply(r);
    ++replies;
  }
  if (stream_or_close ? replies > requests : replies != requests) {
    fprintf(stderr, "control_fuzz: %zu replies to %zu requests\n", replies, requests);
    abort();
  }

  // The daemon still answers, on a new connection; then it gets back its two ports as they
  // were (a vm1 removed and added again with other options is made again) and only them, and
  // its directory holds nothing else, for the next input.
  const std::vector<json> list = Lines(Exchange("{\"cmd\":\"port.list\"}\n"));
  if (list.size() != 1 || !list[0].value("ok", false) || !list[0]["result"].contains("ports")) abort();
  bool have[2] = {false, false};
  for (const json& port : list[0]["result"]["ports"]) {
    const std::string name = port.value("name", "");
    const int base = name == "vm1" ? 0 : name == "vm2" ? 1 : -1;
    if (base >= 0 && port.value("spec", "") == nicmux::SpecToString(BasePort(base))) {
      have[base] = true;
    } else if (auto e = State().daemon->DelPort(name)) {
      fprintf(stderr, "control_fuzz: port.del %s: %s\n", name.c_str(), e->message.c_str());
      abort();
    }
  }
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(Dir(), ec)) {
    const std::string f = e.path().filename().string();
    if (f != "ctl.sock" && f != "vm1.sock" && f != "vm2.sock") std::filesystem::remove_all(e.path(), ec);
  }
  for (int i = 0; i < 2; ++i) {
    if (have[i]) continue;
    if (auto e = State().daemon->AddPort(BasePort(i), false)) {
      fprintf(stderr, "control_fuzz: port.add vm%d: %s\n", i + 1, e->message.c_str());
      abort();
    }
  }
  return 0;
}
