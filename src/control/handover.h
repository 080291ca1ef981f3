// The live-upgrade handover between two nicmuxd processes (docs/upgrade.md): messages over a
// UNIX SOCK_SEQPACKET socketpair the old process makes and the new one inherits
// (--takeover FD). A message is a JSON document with file descriptors (SCM_RIGHTS); it goes
// as records: 'F' records carry up to kFdsPerRecord fds each, 'D' records up to
// kDocBytesPerRecord bytes of the document, and an 'E' record ends the message. The
// document's fd fields are indexes into the message's fd list, in order of arrival.
//
// The exchange (each side times out and gives up; the old process goes on serving unless it
// sent "commit"):
//   new -> old  {"msg":"hello","version":V,"pid":P}
//   old -> new  {"msg":"state",...} (every worker paused) or {"msg":"abort","error":...}
//   new -> old  {"msg":"ready"} (everything mapped and checked, nothing touched)
//               or {"msg":"fail","error":...}
//   old -> new  {"msg":"commit"}; the old process exits, the new one resumes exactly there.
#pragma once

#include <span>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/result.h"
#include "base/unique_fd.h"

namespace nicmux::handover {

// Bumped whenever a field changes meaning; a new process refuses a state it cannot read.
inline constexpr int kVersion = 1;
inline constexpr size_t kFdsPerRecord = 200;
inline constexpr size_t kDocBytesPerRecord = 48 * 1024;
// Bounds on what one message may carry (the peer is another build: checked, not trusted).
inline constexpr size_t kMaxDocBytes = 64u << 20;
inline constexpr size_t kMaxFds = 65536;

struct Message {
  nlohmann::json doc;
  std::vector<UniqueFd> fds;
};

// The text under key, or "" when it is missing or not text (the peer is another build: a
// document's fields are read only through this and checked accessors, never value(), which
// throws on a type it did not expect).
inline std::string Str(const nlohmann::json& doc, const char* key) {
  if (!doc.is_object()) return {};
  auto it = doc.find(key);
  return it != doc.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// Sends one message, waiting up to timeout_ms for room in the socket.
Result<void> Send(int sock, const nlohmann::json& doc, std::span<const int> fds, int timeout_ms);
// Receives one message, waiting up to timeout_ms in all. An error when the peer closed (it
// exited), the time ran out, or a record is malformed.
Result<Message> Receive(int sock, int timeout_ms);

}  // namespace nicmux::handover
