// ControlServer and ControlClient: see control_server.h and docs/control.md.
//
// Memory per client is bounded: input holds at most one partial request (kMaxRequestBytes)
// plus one read chunk of complete lines; output holds kMaxClientOutputBytes of droppable
// lines plus replies, and a client whose output is over the limit is not read from (so it
// cannot make us queue more replies) until it catches up.
//
// Re-entrancy: Send() and Finish() only queue and schedule a flush on the loop; the socket is
// written, and a connection closed, only from the client's own loop callbacks (fd events and
// its timers), which hold a shared_ptr to it for their duration.
#include "control/control_server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "base/log.h"

namespace nicmux {
namespace {

using json = nlohmann::json;

constexpr size_t kReadChunk = 16 * 1024;
constexpr int kReadsPerEvent = 16;  // then let other fds run; level-triggered brings us back
constexpr int kAcceptsPerEvent = 16;
constexpr uint64_t kAcceptRetryMs = 100;

constexpr char kB64Alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

json ErrorReply(const std::string& code, const std::string& message) {
  return json{{"ok", false}, {"error", {{"code", code}, {"message", message}}}};
}

// Deepest [ / { nesting outside strings. Exact for valid JSON; for invalid JSON the parser
// refuses the line anyway.
int NestingDepth(std::string_view s) {
  int depth = 0, max_depth = 0;
  bool in_string = false, escaped = false;
  for (char c : s) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      max_depth = std::max(max_depth, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return max_depth;
}

bool IsBlank(std::string_view s) { return s.find_first_not_of(" \t\r") == std::string_view::npos; }

// For log lines: a peer-chosen command name, printable and short.
std::string Printable(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 64)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (s.size() > 64) out += "...";
  return out;
}

// The supplementary groups of pid, from /proc/<pid>/status ("Groups:\t1 2 3").
std::vector<gid_t> SupplementaryGroups(pid_t pid) {
  std::vector<gid_t> groups;
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Groups:", 0) != 0) continue;
    std::istringstream fields(line.substr(7));
    unsigned long g;
    while (fields >> g) groups.push_back(static_cast<gid_t>(g));
    break;
  }
  return groups;
}

}  // namespace

std::string DumpJsonLine(const json& line) {
  std::string s = line.dump(-1, ' ', false, json::error_handler_t::replace);
  s += '\n';
  return s;
}

std::string Base64Encode(std::span<const std::byte> data) {
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= data.size(); i += 3) {
    uint32_t v = (std::to_integer<uint32_t>(data[i]) << 16) |
                 (std::to_integer<uint32_t>(data[i + 1]) << 8) |
                 std::to_integer<uint32_t>(data[i + 2]);
    out += kB64Alphabet[(v >> 18) & 63];
    out += kB64Alphabet[(v >> 12) & 63];
    out += kB64Alphabet[(v >> 6) & 63];
    out += kB64Alphabet[v & 63];
  }
  size_t rest = data.size() - i;
  if (rest > 0) {
    uint32_t v = std::to_integer<uint32_t>(data[i]) << 16;
    if (rest == 2) v |= std::to_integer<uint32_t>(data[i + 1]) << 8;
    out += kB64Alphabet[(v >> 18) & 63];
    out += kB64Alphabet[(v >> 12) & 63];
    out += rest == 2 ? kB64Alphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

Result<std::vector<std::byte>> Base64Decode(std::string_view text) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  if (text.size() % 4 != 0) {
    return Error("base64 text of " + std::to_string(text.size()) +
                 " characters (not a multiple of 4)");
  }
  std::vector<std::byte> out;
  out.reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    bool last = i + 4 == text.size();
    int pad = 0;
    if (last && text[i + 3] == '=') pad = text[i + 2] == '=' ? 2 : 1;
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      int d = k >= 4 - pad ? 0 : value(text[i + k]);
      if (d < 0) return Error("invalid base64 character at offset " + std::to_string(i + k));
      v = (v << 6) | static_cast<uint32_t>(d);
    }
    out.push_back(static_cast<std::byte>(v >> 16));
    if (pad < 2) out.push_back(static_cast<std::byte>(v >> 8));
    if (pad < 1) out.push_back(static_cast<std::byte>(v));
  }
  return out;
}

json CapturePacketLine(uint64_t ts_ns, bool tx, uint32_t orig_len,
                       std::span<const std::byte> data) {
  return json{{"pkt",
               {{"ts_ns", ts_ns},
                {"dir", tx ? "tx" : "rx"},
                {"len", orig_len},
                {"data", Base64Encode(data)}}}};
}

json CaptureEndLine(uint64_t packets, uint64_t dropped) {
  return json{{"end", {{"packets", packets}, {"dropped", dropped}}}};
}

// ---------------------------------------------------------------------------------------------
// ControlClient

ControlClient::ControlClient(ControlServer* server, EventLoop* loop, UniqueFd fd, uid_t uid,
                             gid_t gid, pid_t pid)
    : server_(server), loop_(loop), fd_(std::move(fd)), uid_(uid), gid_(gid), pid_(pid) {}

// Closed by CloseNow() (the server's destructor closes every client first); the fd itself is
// owned by fd_ either way.
ControlClient::~ControlClient() = default;

Result<void> ControlClient::Start() {
  watched_events_ = EPOLLIN;
  std::weak_ptr<ControlClient> weak = weak_from_this();
  NICMUX_TRY(loop_->Watch(fd_.get(), watched_events_, [weak](uint32_t ev) {
    if (auto self = weak.lock()) self->OnEvents(ev);
  }));
  return Ok();
}

void ControlClient::UpdateWatch() {
  if (state_ == State::kClosed) return;
  uint32_t want = 0;
  bool reading = state_ == State::kStreaming || (state_ == State::kOpen && !input_paused());
  if (reading) want |= EPOLLIN;
  if (write_blocked_) want |= EPOLLOUT;
  if (want == watched_events_) return;
  // EventLoop has no "modify": re-register. Only on transitions (output blocked, input paused).
  loop_->Unwatch(fd_.get());
  std::weak_ptr<ControlClient> weak = weak_from_this();
  auto r = loop_->Watch(fd_.get(), want, [weak](uint32_t ev) {
    if (auto self = weak.lock()) self->OnEvents(ev);
  });
  if (!r) {
    NICMUX_LOG_RATELIMITED(kWarning, "control: %s", r.error().message().c_str());
    // Unwatched now, so no callback would ever close it: do it on the loop.
    loop_->After(0, [weak] {
      if (auto self = weak.lock()) self->CloseNow();
    });
    return;
  }
  watched_events_ = want;
}

void ControlClient::OnEvents(uint32_t events) {
  std::shared_ptr<ControlClient> self = shared_from_this();  // CloseNow() may drop the owner
  if (state_ == State::kClosed) return;
  if ((events & EPOLLOUT) || ((events & (EPOLLERR | EPOLLHUP)) && unsent_bytes() > 0)) {
    write_blocked_ = false;
    Flush();
    if (state_ == State::kClosed) return;
  }
  if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) ReadInput();
  if (state_ == State::kClosed) return;
  if (events & EPOLLERR) {
    RunOnClose();
    CloseNow();
  }
}

void ControlClient::ReadInput() {
  char buf[kReadChunk];
  for (int i = 0; i < kReadsPerEvent; ++i) {
    bool reading =
        state_ == State::kStreaming || (state_ == State::kOpen && !input_paused() && !peer_eof_);
    if (!reading) return;
    ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
    if (n > 0) {
      if (state_ == State::kStreaming) continue;  // stream mode: input only tells us about EOF
      in_.append(buf, static_cast<size_t>(n));
      ProcessLines();
      continue;
    }
    if (n == 0) {
      peer_eof_ = true;
      if (state_ == State::kStreaming) {
        PeerEnded();
      } else {
        ProcessLines();  // serves what is left, then ends
      }
      return;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    NICMUX_LOG(kDebug, "control: client pid %d: recv: %s", static_cast<int>(pid_),
               std::strerror(errno));
    RunOnClose();
    CloseNow();
    return;
  }
}

void ControlClient::ProcessLines() {
  size_t pos = 0;
  while (state_ == State::kOpen && !input_paused()) {
    size_t nl = in_.find('\n', pos);
    if (nl == std::string::npos) break;
    std::string_view line(in_.data() + pos, nl - pos);
    pos = nl + 1;
    if (line.size() > kMaxRequestBytes) {
      TooLong();
      return;
    }
    HandleLine(line);
  }
  if (state_ == State::kClosed) return;
  if (state_ != State::kOpen) {
    in_.clear();  // streaming or ending: no more requests
  } else {
    in_.erase(0, pos);
    if (!input_paused()) {
      // Every complete line is served: what is left is one partial request.
      // UNTRUSTED: its length is bounded here, before we read more of it.
      if (in_.size() > kMaxRequestBytes) {
        TooLong();
        return;
      }
      if (peer_eof_) {
        // A last request without its newline (`printf ... | socat`) is still a request.
        if (!in_.empty()) {
          std::string last = std::move(in_);
          in_.clear();
          HandleLine(last);
          if (state_ == State::kClosed) return;
        }
        PeerEnded();
        return;
      }
    }
  }
  if (state_ == State::kStreaming && peer_eof_) {
    PeerEnded();
    return;
  }
  UpdateWatch();
}

void ControlClient::TooLong() {
  NICMUX_LOG_RATELIMITED(kWarning, "control: client pid %d sent a request over %zu bytes",
                         static_cast<int>(pid_), kMaxRequestBytes);
  Reply(ErrorReply(kCodeBadRequest, "request too long (more than " +
                                        std::to_string(kMaxRequestBytes) +
                                        " bytes); closing the connection"));
  in_.clear();
  StartDraining();
}

void ControlClient::HandleLine(std::string_view line) {
  std::shared_ptr<ControlClient> self = shared_from_this();
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (IsBlank(line)) return;  // keep-alive or a typing human: not a request

  // UNTRUSTED: the line is at most kMaxRequestBytes; depth bounded before anything recurses.
  if (NestingDepth(line) > kMaxRequestDepth) {
    Reply(ErrorReply(kCodeBadRequest, "request nested more than " +
                                          std::to_string(kMaxRequestDepth) + " levels deep"));
    return;
  }
  json request = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (request.is_discarded()) {
    Reply(ErrorReply(kCodeBadRequest, "request is not valid JSON (UTF-8, one object per line)"));
    return;
  }
  if (!request.is_object()) {
    Reply(ErrorReply(kCodeBadRequest,
                     std::string("request must be a JSON object, not ") + request.type_name()));
    return;
  }
  auto cmd_it = request.find("cmd");
  if (cmd_it == request.end() || !cmd_it->is_string()) {
    Reply(ErrorReply(kCodeBadRequest, "request has no \"cmd\" string"));
    return;
  }
  json args = json::object();
  if (auto args_it = request.find("args"); args_it != request.end()) {
    if (!args_it->is_object()) {
      Reply(ErrorReply(kCodeBadRequest,
                       std::string("\"args\" must be an object, not ") + args_it->type_name()));
      return;
    }
    args = std::move(*args_it);
  }
  std::string cmd = cmd_it->get<std::string>();

  ControlServer::HandlerResult result = ControlError::Failed("no handler");
  in_handler_ = true;
  // The last safety net: the daemon must never die from a request. No exceptions are thrown
  // in src/, but nlohmann's accessors throw on a type mismatch the handler failed to check.
  try {
    if (server_ != nullptr) result = server_->handler_(cmd, args, self);
  } catch (const json::exception& e) {
    NICMUX_LOG_RATELIMITED(kWarning, "control: %s from pid %d: %s", Printable(cmd).c_str(),
                           static_cast<int>(pid_), e.what());
    result = ControlError::BadRequest(cmd + ": " + e.what());
  } catch (const std::exception& e) {
    NICMUX_LOG_RATELIMITED(kError, "control: %s from pid %d: internal error: %s",
                           Printable(cmd).c_str(), static_cast<int>(pid_), e.what());
    result = ControlError::Failed(cmd + ": internal error: " + e.what());
  } catch (...) {
    NICMUX_LOG_RATELIMITED(kError, "control: %s from pid %d: internal error",
                           Printable(cmd).c_str(), static_cast<int>(pid_));
    result = ControlError::Failed(cmd + ": internal error");
  }
  in_handler_ = false;

  if (state_ == State::kClosed) return;
  if (auto* err = std::get_if<ControlError>(&result)) {
    Reply(ErrorReply(err->code.empty() ? kCodeFailed : err->code, err->message));
  } else {
    Reply(json{{"ok", true}, {"result", std::move(std::get<json>(result))}});
  }
  for (const std::string& line_out : deferred_) Append(line_out, /*over_limit_ok=*/false);
  deferred_.clear();
  if (finish_line_) {
    std::string last = std::move(*finish_line_);
    finish_line_.reset();
    Append(last, /*over_limit_ok=*/true);
    StartDraining();
  }
}

void ControlClient::Reply(json reply) {
  // Replies are never dropped: the client asked for them, and input_paused() stops it from
  // asking for more while it is not reading.
  Append(DumpJsonLine(reply), /*over_limit_ok=*/true);
}

void ControlClient::Send(const json& line) {
  if (closed()) return;
  if (in_handler_) {
    deferred_.push_back(DumpJsonLine(line));
    return;
  }
  Append(DumpJsonLine(line), /*over_limit_ok=*/false);
}

void ControlClient::BeginStream() {
  if (state_ == State::kOpen) state_ = State::kStreaming;
}

void ControlClient::Finish(const json& last_line) {
  if (closed()) return;
  if (in_handler_) {
    finish_line_ = DumpJsonLine(last_line);  // after the reply
    return;
  }
  Append(DumpJsonLine(last_line), /*over_limit_ok=*/true);
  StartDraining();
}

void ControlClient::WriteNow(const json& line, int timeout_ms) {
  if (closed()) return;
  Append(DumpJsonLine(line), /*over_limit_ok=*/true);
  const uint64_t deadline = MonotonicNowNs() + uint64_t(timeout_ms) * 1000000;
  while (unsent_bytes() > 0) {
    ssize_t n = ::send(fd_.get(), out_.data() + out_off_, unsent_bytes(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      out_off_ += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    const uint64_t now = MonotonicNowNs();
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && now < deadline) {
      pollfd p{fd_.get(), POLLOUT, 0};
      ::poll(&p, 1, static_cast<int>((deadline - now) / 1000000 + 1));
      continue;
    }
    return;  // the peer is gone, or the time is up
  }
}

void ControlClient::SetOnClose(std::function<void()> cb) {
  if (on_close_ran_) {
    cb();  // already ended: tell the caller at once
    return;
  }
  on_close_ = std::move(cb);
}

void ControlClient::Append(const std::string& bytes, bool over_limit_ok) {
  if (state_ == State::kClosed) return;
  if (!over_limit_ok && unsent_bytes() + bytes.size() > kMaxClientOutputBytes) {
    ++dropped_;
    return;
  }
  if (out_off_ == out_.size()) {
    out_.clear();
    out_off_ = 0;
  }
  out_ += bytes;
  ScheduleFlush();
}

void ControlClient::ScheduleFlush() {
  if (flush_scheduled_ || write_blocked_ || state_ == State::kClosed) return;
  flush_scheduled_ = true;
  std::weak_ptr<ControlClient> weak = weak_from_this();
  flush_timer_ = loop_->After(0, [weak] {
    if (auto self = weak.lock()) {
      self->flush_scheduled_ = false;
      self->flush_timer_ = 0;
      self->Flush();
    }
  });
}

void ControlClient::Flush() {
  if (state_ == State::kClosed) return;
  while (unsent_bytes() > 0) {
    ssize_t n =
        ::send(fd_.get(), out_.data() + out_off_, unsent_bytes(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      out_off_ += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      write_blocked_ = true;
      break;
    }
    // EPIPE, ECONNRESET: the peer is gone; nothing queued can be delivered.
    NICMUX_LOG(kDebug, "control: client pid %d: send: %s", static_cast<int>(pid_),
               std::strerror(errno));
    out_.clear();
    out_off_ = 0;
    RunOnClose();
    CloseNow();
    return;
  }
  if (unsent_bytes() == 0) {
    write_blocked_ = false;
    out_.clear();
    out_off_ = 0;
    if (out_.capacity() > 1024 * 1024) std::string().swap(out_);  // give a burst's memory back
    if (state_ == State::kDraining) {
      CloseNow();
      return;
    }
  } else if (out_off_ > 1024 * 1024 && out_off_ > out_.size() / 2) {
    out_.erase(0, out_off_);
    out_off_ = 0;
  }
  // Output below the limit again: serve the requests that waited for it.
  if (state_ == State::kOpen && !input_paused() && (!in_.empty() || peer_eof_)) {
    ProcessLines();
    return;
  }
  UpdateWatch();
}

void ControlClient::PeerEnded() {
  if (state_ == State::kDraining || state_ == State::kClosed) return;
  RunOnClose();  // may still Send() or Finish(): the client may only have half-closed
  StartDraining();
}

void ControlClient::StartDraining() {
  if (state_ == State::kDraining || state_ == State::kClosed) return;
  state_ = State::kDraining;
  in_.clear();
  if (unsent_bytes() == 0) {
    CloseNow();
    return;
  }
  std::weak_ptr<ControlClient> weak = weak_from_this();
  linger_timer_ = loop_->After(kCloseLingerMs, [weak] {
    if (auto self = weak.lock()) {
      self->linger_timer_ = 0;
      self->CloseNow();
    }
  });
  UpdateWatch();  // stop reading
}

void ControlClient::RunOnClose() {
  if (on_close_ran_) return;
  on_close_ran_ = true;
  std::function<void()> cb = std::move(on_close_);
  on_close_ = nullptr;
  if (!cb) return;
  try {
    cb();
  } catch (const std::exception& e) {
    NICMUX_LOG_RATELIMITED(kError, "control: on-close callback: internal error: %s", e.what());
  }
}

void ControlClient::CloseNow() {
  if (state_ == State::kClosed) return;
  RunOnClose();
  state_ = State::kClosed;
  if (flush_timer_ != 0) loop_->Cancel(flush_timer_);
  if (linger_timer_ != 0) loop_->Cancel(linger_timer_);
  flush_timer_ = linger_timer_ = 0;
  flush_scheduled_ = false;
  loop_->Unwatch(fd_.get());
  fd_.Reset();
  std::string().swap(out_);
  std::string().swap(in_);
  out_off_ = 0;
  deferred_.clear();
  finish_line_.reset();
  ControlServer* server = std::exchange(server_, nullptr);
  if (server != nullptr) server->Remove(this);  // may destroy *this: callers hold a shared_ptr
}

// ---------------------------------------------------------------------------------------------
// ControlServer

ControlServer::ControlServer(std::string path, EventLoop* loop, Handler handler, UniqueFd listen_fd)
    : path_(std::move(path)),
      loop_(loop),
      handler_(std::move(handler)),
      listen_fd_(std::move(listen_fd)) {}

Result<std::unique_ptr<ControlServer>> ControlServer::Create(const std::string& path,
                                                             EventLoop* loop, Handler handler) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    return Error("control socket path \"" + path + "\" is empty or longer than " +
                 std::to_string(sizeof addr.sun_path - 1) + " bytes");
  }
  std::memcpy(addr.sun_path, path.data(), path.size());

  // The parent directory: made if missing (the last component only: a missing /run/nicmux is
  // normal after boot, a missing /run is a mistake).
  size_t slash = path.rfind('/');
  std::string parent = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  struct stat st;
  if (::stat(parent.c_str(), &st) < 0) {
    if (errno != ENOENT) return Error::FromErrno("control socket directory " + parent);
    if (::mkdir(parent.c_str(), 0750) < 0 && errno != EEXIST) {
      return Error::FromErrno("creating control socket directory " + parent);
    }
  } else if (!S_ISDIR(st.st_mode)) {
    return Error("control socket directory " + parent + " is not a directory");
  }

  // Something already at path: another nicmuxd (leave it alone), a stale socket from one that
  // died (replace it), or a file that is not ours to remove.
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Error("control socket path " + path + " exists and is not a socket");
    }
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!probe) return Error::FromErrno("socket");
    if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0 ||
        errno == EAGAIN || errno == EINPROGRESS) {  // EAGAIN: its backlog is full, so it lives
      return Error("control socket " + path + " is in use by another nicmuxd", EADDRINUSE);
    }
    if (errno != ECONNREFUSED) return Error::FromErrno("checking control socket " + path);
    NICMUX_LOG(kInfo, "control: replacing stale socket %s", path.c_str());
    if (::unlink(path.c_str()) < 0 && errno != ENOENT) {
      return Error::FromErrno("removing stale control socket " + path);
    }
  } else if (errno != ENOENT) {
    return Error::FromErrno("control socket path " + path);
  }

  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return Error::FromErrno("socket");
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) < 0) {
    if (errno == EADDRINUSE) {  // someone bound it between our check and now
      return Error("control socket " + path + " is in use by another nicmuxd", EADDRINUSE);
    }
    return Error::FromErrno("binding control socket " + path);
  }
  // Between bind and chmod the file has the umask's mode; the SO_PEERCRED check covers that
  // window.
  if (::chmod(path.c_str(), 0660) < 0 || ::stat(path.c_str(), &st) < 0) {
    Error e = Error::FromErrno("chmod control socket " + path);
    ::unlink(path.c_str());
    return e;
  }
  if (::listen(fd.get(), 16) < 0) {
    Error e = Error::FromErrno("listen on control socket " + path);
    ::unlink(path.c_str());
    return e;
  }
  int listen_fd = fd.get();
  std::unique_ptr<ControlServer> server(
      new ControlServer(path, loop, std::move(handler), std::move(fd)));
  server->sock_dev_ = st.st_dev;  // from here on the destructor unlinks the file
  server->sock_ino_ = st.st_ino;
  ControlServer* s = server.get();
  NICMUX_TRY(loop->Watch(listen_fd, EPOLLIN, [s](uint32_t) { s->OnAccept(); }));
  NICMUX_LOG(kInfo, "control: listening on %s", path.c_str());
  return server;
}

Result<std::unique_ptr<ControlServer>> ControlServer::Adopt(const std::string& path, UniqueFd fd, EventLoop* loop,
                                                            Handler handler) {
  int listening = 0;
  socklen_t len = sizeof listening;
  sockaddr_un addr{};
  socklen_t alen = sizeof addr;
  if (::getsockopt(fd.get(), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0 || !listening ||
      ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &alen) < 0 || addr.sun_family != AF_UNIX) {
    return Error("control: the socket handed over is not a listening UNIX socket");
  }
  const int listen_fd = fd.get();
  std::unique_ptr<ControlServer> server(new ControlServer(path, loop, std::move(handler), std::move(fd)));
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
    server->sock_dev_ = st.st_dev;
    server->sock_ino_ = st.st_ino;
  }
  ControlServer* s = server.get();
  NICMUX_TRY(loop->Watch(listen_fd, EPOLLIN, [s](uint32_t) { s->OnAccept(); }));
  NICMUX_LOG(kInfo, "control: serving %s (handed over)", path.c_str());
  return server;
}

ControlServer::~ControlServer() {
  std::map<ControlClient*, std::shared_ptr<ControlClient>> clients;
  clients.swap(clients_);
  for (auto& [raw, client] : clients) {
    client->server_ = nullptr;
    client->CloseNow();
  }
  if (accept_retry_timer_ != 0) loop_->Cancel(accept_retry_timer_);
  loop_->Unwatch(listen_fd_.get());
  listen_fd_.Reset();
  // Only our own file: after a takeover the path may be another daemon's socket.
  struct stat st;
  if (::lstat(path_.c_str(), &st) == 0 && st.st_dev == sock_dev_ && st.st_ino == sock_ino_) {
    ::unlink(path_.c_str());
  }
}

void ControlServer::Remove(ControlClient* client) { clients_.erase(client); }

void ControlServer::Refuse(int fd, const char* code, const std::string& message) {
  // One line into a fresh socket's empty buffer: it fits, so a non-blocking send is enough.
  std::string line = DumpJsonLine(ErrorReply(code, message));
  (void)!::send(fd, line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

bool ControlServer::PeerAllowed(uid_t uid, gid_t gid, pid_t pid) const {
  if (uid == 0 || uid == ::geteuid()) return true;
  // Otherwise membership of the socket file's group, as the file mode (0660) says.
  struct stat st;
  if (::stat(path_.c_str(), &st) < 0) return false;
  if (gid == st.st_gid) return true;
  // UNTRUSTED: pid comes from the kernel (SO_PEERCRED), but the process may have exited and
  // the pid been reused; it can only grant what that other process's groups grant.
  for (gid_t g : SupplementaryGroups(pid)) {
    if (g == st.st_gid) return true;
  }
  return false;
}

void ControlServer::OnAccept() {
  for (int i = 0; i < kAcceptsPerEvent; ++i) {
    int raw = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (raw < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      // EMFILE and friends: the connection stays queued and the listening fd stays readable,
      // so stop watching it for a while instead of spinning.
      NICMUX_LOG_RATELIMITED(kWarning, "control: accept on %s: %s", path_.c_str(),
                             std::strerror(errno));
      loop_->Unwatch(listen_fd_.get());
      accept_retry_timer_ = loop_->After(kAcceptRetryMs, [this] {
        accept_retry_timer_ = 0;
        auto r = loop_->Watch(listen_fd_.get(), EPOLLIN, [this](uint32_t) { OnAccept(); });
        if (!r) NICMUX_LOG(kError, "control: %s", r.error().message().c_str());
      });
      return;
    }
    UniqueFd fd(raw);
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
      Refuse(fd.get(), kCodeDenied, "cannot read the peer's credentials");
      continue;
    }
    if (!PeerAllowed(cred.uid, cred.gid, cred.pid)) {
      NICMUX_LOG_RATELIMITED(kWarning, "control: refused uid %u pid %d on %s",
                             static_cast<unsigned>(cred.uid), static_cast<int>(cred.pid),
                             path_.c_str());
      Refuse(fd.get(), kCodeDenied,
             "uid " + std::to_string(cred.uid) + " may not use " + path_ +
                 " (root, the daemon's user or the socket's group only)");
      continue;
    }
    if (clients_.size() >= kMaxControlClients) {
      NICMUX_LOG_RATELIMITED(kWarning, "control: refused pid %d: %zu connections already",
                             static_cast<int>(cred.pid), clients_.size());
      Refuse(fd.get(), kCodeFailed,
             "too many control connections (" + std::to_string(kMaxControlClients) + ")");
      continue;
    }
    std::shared_ptr<ControlClient> client(
        new ControlClient(this, loop_, std::move(fd), cred.uid, cred.gid, cred.pid));
    if (auto r = client->Start(); !r) {
      NICMUX_LOG_RATELIMITED(kWarning, "control: %s", r.error().message().c_str());
      continue;
    }
    NICMUX_LOG(kDebug, "control: connection from uid %u pid %d", static_cast<unsigned>(cred.uid),
               static_cast<int>(cred.pid));
    clients_.emplace(client.get(), std::move(client));
  }
}

}  // namespace nicmux
