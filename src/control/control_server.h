// ControlServer: the daemon's end of the JSON control protocol (docs/control.md): a UNIX
// stream socket, one JSON object per line each way, requests answered in order, and a
// "stream" mode in which the daemon pushes lines (capture) until either side ends it.
//
// Everything a client sends is hostile until checked (DESIGN.md "Errors, three kinds"):
// lines are bounded (kMaxRequestBytes), nesting is bounded, the shape {"cmd": string,
// "args": object} is checked before the handler runs, and the handler runs inside a catch-all
// so that a nlohmann type error becomes a `bad_request` reply instead of killing the daemon.
// Output to a client is bounded too (kMaxClientOutputBytes): a client that does not read
// loses stream lines (counted), stops getting its requests served, and never grows memory.
//
// Threading: everything here runs on the EventLoop's thread, including Send(). A capture fed
// from a worker thread must hand its packets to the loop thread first. The EventLoop must
// outlive the ControlServer.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "base/event_loop.h"
#include "base/result.h"
#include "base/unique_fd.h"

namespace nicmux {

// A request line (or an unterminated request) longer than this is refused and the connection
// closed: the client is either broken or hostile.
inline constexpr size_t kMaxRequestBytes = 64 * 1024;
// Unsent output per client above which Send() drops lines and requests are not read.
inline constexpr size_t kMaxClientOutputBytes = 8 * 1024 * 1024;
inline constexpr size_t kMaxControlClients = 64;
// Deepest [ / { nesting accepted in a request (nlohmann's dump recurses).
inline constexpr int kMaxRequestDepth = 32;
// How long a closing connection may take to write out what is queued for it.
inline constexpr uint64_t kCloseLingerMs = 5000;

// Error codes of the protocol (docs/control.md "Errors").
inline constexpr const char* kCodeBadRequest = "bad_request";  // not JSON, bad shape, unknown cmd
inline constexpr const char* kCodeNotFound = "not_found";      // unknown port, ...
inline constexpr const char* kCodeExists = "exists";           // name clash, socket in use
inline constexpr const char* kCodeInvalid = "invalid";         // bad port spec or option
inline constexpr const char* kCodeFailed = "failed";           // the environment failed
inline constexpr const char* kCodeDenied = "denied";           // peer credentials

// A request that failed: the reply's {"code", "message"}. The message names the problem
// ("no port named \"vm9\"").
struct ControlError {
  std::string code;
  std::string message;

  static ControlError BadRequest(std::string m) { return {kCodeBadRequest, std::move(m)}; }
  static ControlError NotFound(std::string m) { return {kCodeNotFound, std::move(m)}; }
  static ControlError Exists(std::string m) { return {kCodeExists, std::move(m)}; }
  static ControlError Invalid(std::string m) { return {kCodeInvalid, std::move(m)}; }
  static ControlError Failed(std::string m) { return {kCodeFailed, std::move(m)}; }
  // An environment failure reported through Result<T>.
  static ControlError Failed(const Error& e) { return {kCodeFailed, e.message()}; }
};

// One line of the protocol: compact JSON, invalid UTF-8 replaced (never throws), plus '\n'.
std::string DumpJsonLine(const nlohmann::json& line);

// Base64 (RFC 4648, with padding) for the capture stream's "data".
std::string Base64Encode(std::span<const std::byte> data);
// Strict: only the standard alphabet, length a multiple of 4, padding only at the end.
Result<std::vector<std::byte>> Base64Decode(std::string_view text);

// A capture stream's packet line: {"pkt": {"ts_ns", "dir": "rx"|"tx", "len", "data"}}.
// orig_len is the packet's length on the wire; data may be a prefix of it (snap length).
nlohmann::json CapturePacketLine(uint64_t ts_ns, bool tx, uint32_t orig_len,
                                 std::span<const std::byte> data);
// A capture stream's last line: {"end": {"packets", "dropped"}}.
nlohmann::json CaptureEndLine(uint64_t packets, uint64_t dropped);

class ControlServer;

// One accepted connection. The server owns it; a handler may keep the shared_ptr to stream to
// it later (it then stays valid after the connection closes: Send() becomes a no-op).
class ControlClient : public std::enable_shared_from_this<ControlClient> {
 public:
  ~ControlClient();
  ControlClient(const ControlClient&) = delete;
  ControlClient& operator=(const ControlClient&) = delete;

  // Queues one line; never blocks and never closes the connection from inside the call (write
  // errors are handled on the loop). If the unsent output would exceed kMaxClientOutputBytes
  // the line is dropped and counted in dropped(). A Send() from inside the handler is written
  // after the handler's reply. No-op once closed().
  void Send(const nlohmann::json& line);

  // Puts the connection in stream mode (call from the handler of the request that starts the
  // stream). From then on the client's input is read and discarded, only to notice when it
  // closes or half-closes (shutdown(SHUT_WR)), which runs the on-close callback.
  void BeginStream();
  bool streaming() const { return state_ == State::kStreaming; }

  // Ends the connection from the daemon's side: queues last_line even over the output limit
  // (a stream's "end" line, which the client waits for), stops reading, and closes once all
  // is written (or after kCloseLingerMs). No-op once closed().
  void Finish(const nlohmann::json& last_line);

  // Writes what is queued and then line straight to the socket, waiting up to timeout_ms: the
  // last words of a process that exits next (a live upgrade's old nicmuxd), whose loop will
  // not run again. No-op once closed().
  void WriteNow(const nlohmann::json& line, int timeout_ms);

  // True once nothing more will be delivered: the peer went away, Finish() was called, or the
  // server was destroyed.
  bool closed() const { return state_ == State::kDraining || state_ == State::kClosed; }
  uint64_t dropped() const { return dropped_; }
  size_t unsent_bytes() const { return out_.size() - out_off_; }

  // Sets (replaces) the callback that runs once, on the loop, when the connection ends for
  // any reason: the peer closed or half-closed, an I/O error, Finish(), too long a request,
  // the server destroyed. When the peer ended it, cb runs before the connection is marked
  // closed(), so cb can still Send() or Finish() (with the stream's "end" line: a half-closed
  // client still reads it). Never runs from inside Send() or Finish(). If the connection has
  // already ended, cb runs at once.
  void SetOnClose(std::function<void()> cb);

  // SO_PEERCRED of the peer, as of connect().
  uid_t uid() const { return uid_; }
  gid_t gid() const { return gid_; }
  pid_t pid() const { return pid_; }

 private:
  friend class ControlServer;
  enum class State { kOpen, kStreaming, kDraining, kClosed };

  ControlClient(ControlServer* server, EventLoop* loop, UniqueFd fd, uid_t uid, gid_t gid,
                pid_t pid);

  Result<void> Start();
  void OnEvents(uint32_t events);
  void ReadInput();
  void ProcessLines();
  void HandleLine(std::string_view line);
  void TooLong();
  void Reply(nlohmann::json reply);
  void Append(const std::string& bytes, bool over_limit_ok);
  void ScheduleFlush();
  void Flush();
  void UpdateWatch();
  void PeerEnded();
  void StartDraining();
  void RunOnClose();
  void CloseNow();
  bool input_paused() const { return unsent_bytes() > kMaxClientOutputBytes; }

  ControlServer* server_;  // null once closed
  EventLoop* loop_;
  UniqueFd fd_;
  uid_t uid_;
  gid_t gid_;
  pid_t pid_;
  State state_ = State::kOpen;

  std::string in_;   // received, not yet processed (bounded, see .cc)
  std::string out_;  // queued output; out_[out_off_..] is unsent
  size_t out_off_ = 0;
  std::vector<std::string> deferred_;       // Send()s made while the handler runs
  std::optional<std::string> finish_line_;  // Finish() called by the handler
  bool in_handler_ = false;
  bool peer_eof_ = false;  // the peer shut down its side; serve what is left
  uint64_t dropped_ = 0;

  uint32_t watched_events_ = 0;
  bool write_blocked_ = false;  // the socket said EAGAIN; wait for EPOLLOUT
  bool flush_scheduled_ = false;
  EventLoop::TimerId flush_timer_ = 0;
  EventLoop::TimerId linger_timer_ = 0;
  std::function<void()> on_close_;
  bool on_close_ran_ = false;
};

class ControlServer {
 public:
  using ControlError = ::nicmux::ControlError;
  using HandlerResult = std::variant<nlohmann::json, ControlError>;
  // Runs for each well-formed request on the loop thread. Returns the reply's "result" or an
  // error. args is always an object ({} when the request had none). The handler validates
  // args itself (hostile) and answers an unknown cmd with ControlError::BadRequest; it may
  // keep `client` to stream to it (see ControlClient::BeginStream).
  using Handler = std::function<HandlerResult(const std::string& cmd, const nlohmann::json& args,
                                              const std::shared_ptr<ControlClient>& client)>;

  // Listens on path (see docs/control.md "The socket"): makes the parent directory if it is
  // missing (0750, the last component only); replaces a stale socket (nobody listening) but
  // never one in use by another nicmuxd; refuses a non-socket file; the socket is mode 0660.
  static Result<std::unique_ptr<ControlServer>> Create(const std::string& path, EventLoop* loop,
                                                       Handler handler);
  // Live upgrade (docs/upgrade.md): serves on the listening socket the old nicmuxd handed
  // over, bound at path (the file is then this server's to remove, if it is that socket).
  static Result<std::unique_ptr<ControlServer>> Adopt(const std::string& path, UniqueFd fd, EventLoop* loop,
                                                      Handler handler);
  int listen_fd() const { return listen_fd_.get(); }
  // Closes every client (running their on-close callbacks) and removes the socket file if it
  // is still the one we bound.
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  const std::string& path() const { return path_; }
  size_t num_clients() const { return clients_.size(); }

 private:
  friend class ControlClient;
  ControlServer(std::string path, EventLoop* loop, Handler handler, UniqueFd listen_fd);

  void OnAccept();
  void Refuse(int fd, const char* code, const std::string& message);
  bool PeerAllowed(uid_t uid, gid_t gid, pid_t pid) const;
  void Remove(ControlClient* client);

  std::string path_;
  EventLoop* loop_;
  Handler handler_;
  UniqueFd listen_fd_;
  dev_t sock_dev_ = 0;  // identity of the socket file we bound, so we unlink only our own
  ino_t sock_ino_ = 0;
  std::map<ControlClient*, std::shared_ptr<ControlClient>> clients_;
  EventLoop::TimerId accept_retry_timer_ = 0;
};

}  // namespace nicmux
