// libFuzzer target: the vhost-user backend session state machine, driven by arbitrary message
// sequences with arbitrary file descriptors, through a real socket. Each message in the input:
//   [0] request (any number 0..44, so unknown ones too)   [1] flags: bit 0 NEED_REPLY,
//   bit 1 a wrong protocol version, bit 2 the header's size lies    [2] fd count (0..3) and
//   kinds (bits 2-7: memfd or eventfd each)   [3..4] payload length (le, mod 320)   payload
// Sessions must never crash, leak fds or map outside what they were given; every error is a
// clean refusal (the harness resets the session on error, as the port closes the connection).
#include <sys/eventfd.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "base/log.h"
#include "tests/support/vhost_peer.h"

using namespace nicmux;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  SetLogLevel(LogLevel::kError);
  static testing::SharedRam* ram = new testing::SharedRam(1 << 20);
  NoWorker worker;
  vhost::BackendSession session(vhost::BackendConfig{2, 1500}, &worker);
  testing::VhostPeer peer;
  size_t pos = 0;
  int messages = 0;
  while (pos + 5 <= size && messages++ < 64) {
    const uint8_t req = data[pos] % 45, flags = data[pos + 1], fdspec = data[pos + 2];
    const uint16_t len = static_cast<uint16_t>((data[pos + 3] | (data[pos + 4] << 8)) % 320);
    pos += 5;
    std::vector<uint8_t> payload(len, 0);
    const size_t take = std::min<size_t>(len, size - pos);
    if (take) std::memcpy(payload.data(), data + pos, take);
    pos += take;
    std::vector<int> fds;
    for (int i = 0; i < (fdspec & 3); ++i) {
      fds.push_back((fdspec >> (2 + i)) & 1 ? ::dup(ram->fd.get()) : ::eventfd(0, EFD_CLOEXEC));
    }
    uint32_t hflags = (flags & 2) ? 0x2 : vhost::kVersion;
    if (flags & 1) hflags |= vhost::kFlagNeedReply;
    uint32_t hsize = (flags & 4) ? static_cast<uint32_t>(len ^ flags) : len;
    peer.SendRaw(req, hflags, hsize, payload.data(), payload.size(), fds);
    for (int fd : fds) ::close(fd);
    if (!peer.Pump(session)) {
      session.Reset();
      break;  // the connection would be closed here
    }
    // Drain replies so the socket never fills.
    char sink[4096];
    while (::recv(peer.fd(), sink, sizeof sink, MSG_DONTWAIT) > 0) {
    }
  }
  session.Reset();
  return 0;
}
