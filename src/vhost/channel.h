// Channel: one vhost-user connection (a UNIX stream socket), messages in and out, with file
// descriptors passed as SCM_RIGHTS. The socket is non-blocking: Receive() assembles a message
// from as many reads as it takes and never blocks the control thread on a slow or stalled
// peer. It reads exactly a header, then exactly the payload, so it never consumes the next
// message's bytes (or the fds attached to them). Every fd received is owned by a UniqueFd at
// once; more than kMaxFds in one message is an error and all of them are closed.
//
// Sending never waits either: what the socket does not take at once is queued per connection
// (each message's bytes together with its fds, which go with its first byte) and written by
// Flush() when the socket is writable again; the owner watches for EPOLLOUT while
// has_pending_output(). A peer that does not read lets at most kMaxPendingBytes or
// kMaxPendingMessages pile up: one more is an error, and the owner closes the connection.
#pragma once

#include <array>
#include <cstddef>
#include <cstring>
#include <deque>
#include <optional>
#include <span>
#include <vector>

#include "base/result.h"
#include "base/unique_fd.h"
#include "vhost/protocol.h"

namespace nicmux::vhost {

struct Message {
  MsgHeader hdr{};
  std::array<std::byte, kMaxPayload> payload{};
  std::vector<UniqueFd> fds;

  // The payload as T; callers have checked the size against the request table.
  template <typename T>
  T As() const {
    T v;
    std::memcpy(&v, payload.data(), sizeof(T));
    return v;
  }
};

class Channel {
 public:
  explicit Channel(UniqueFd sock);

  int fd() const { return sock_.get(); }

  // A whole message, nullopt when more bytes are needed (wait for the socket to be readable),
  // or an error (peer closed, bad header, too many fds): the connection is then unusable.
  Result<std::optional<Message>> Receive();

  // The most unsent output one connection may hold. The backend's replies are at most 20 bytes
  // and a frontend waits for each before it sends on (QEMU, DPDK), so a well-behaved peer
  // never has more than a few queued.
  static constexpr size_t kMaxPendingBytes = 64 * 1024;
  static constexpr size_t kMaxPendingMessages = 1024;

  // Sends one message without waiting: what the socket does not take is queued (fds are
  // duplicated, so the caller keeps its own). An error when the socket failed or the queue
  // would pass its bound; the connection is then unusable.
  Result<void> Send(uint32_t request, uint32_t flags, std::span<const std::byte> payload,
                    std::span<const int> fds = {});
  // Writes queued output while the socket takes it (call when it is writable).
  Result<void> Flush();
  bool has_pending_output() const { return !out_.empty(); }
  // Part of a message is read (the rest is still on its way): the connection cannot change
  // hands now (a live upgrade waits or fails).
  bool mid_message() const { return have_ != 0; }
  // Receive's error was the peer going away (EOF, a reset), not a message refused.
  bool peer_closed() const { return peer_closed_; }
  size_t pending_bytes() const { return out_bytes_; }
  size_t pending_messages() const { return out_.size(); }

  template <typename T>
  Result<void> SendValue(uint32_t request, uint32_t flags, const T& v, std::span<const int> fds = {}) {
    return Send(request, flags, std::as_bytes(std::span<const T>(&v, 1)), fds);
  }

 private:
  Result<size_t> ReadSome(std::byte* dst, size_t len);
  // One sendmsg of bytes (with fds when given); bytes the socket took, 0 when it is full.
  Result<size_t> WriteSome(std::span<const std::byte> bytes, std::span<const int> fds);

  UniqueFd sock_;
  bool peer_closed_ = false;
  Message cur_;
  size_t have_ = 0;  // bytes of header + payload read so far

  struct Pending {
    std::vector<std::byte> bytes;  // header + payload
    std::vector<UniqueFd> fds;     // sent with the first byte; empty once it is sent
    size_t sent = 0;
  };
  std::deque<Pending> out_;
  size_t out_bytes_ = 0;  // unsent bytes in out_
};

}  // namespace nicmux::vhost
