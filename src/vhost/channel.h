// Channel: one vhost-user connection (a UNIX stream socket), messages in and out, with file
// descriptors passed as SCM_RIGHTS. The socket is non-blocking: Receive() assembles a message
// from as many reads as it takes and never blocks the control thread on a slow or stalled
// peer. It reads exactly a header, then exactly the payload, so it never consumes the next
// message's bytes (or the fds attached to them). Every fd received is owned by a UniqueFd at
// once; more than kMaxFds in one message is an error and all of them are closed.
#pragma once

#include <array>
#include <cstddef>
#include <cstring>
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

  // Sends one message; waits at most timeout_ms for socket space.
  Result<void> Send(uint32_t request, uint32_t flags, std::span<const std::byte> payload,
                    std::span<const int> fds = {}, int timeout_ms = 1000);

  template <typename T>
  Result<void> SendValue(uint32_t request, uint32_t flags, const T& v, std::span<const int> fds = {}) {
    return Send(request, flags, std::as_bytes(std::span<const T>(&v, 1)), fds);
  }

 private:
  Result<size_t> ReadSome(std::byte* dst, size_t len);

  UniqueFd sock_;
  Message cur_;
  size_t have_ = 0;  // bytes of header + payload read so far
};

}  // namespace nicmux::vhost
