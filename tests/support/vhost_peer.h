// A raw vhost-user frontend for tests and fuzz targets: sends any bytes and fds on one end of
// a socketpair whose other end a BackendSession reads, so hostile messages (wrong sizes,
// stray fds, broken tables) can be made exactly.
#pragma once

#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "base/check.h"
#include "base/unique_fd.h"
#include "vhost/backend_session.h"

namespace nicmux::testing {

class VhostPeer {
 public:
  VhostPeer() {
    int sv[2];
    NICMUX_CHECK(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) == 0);
    mine_.Reset(sv[0]);
    channel_ = std::make_unique<vhost::Channel>(UniqueFd(sv[1]));
  }

  vhost::Channel& channel() { return *channel_; }
  int fd() const { return mine_.get(); }

  // Sends header + payload as given (size may lie) with fds.
  void SendRaw(uint32_t request, uint32_t flags, uint32_t size, const void* payload, size_t payload_len,
               std::vector<int> fds = {}) {
    std::vector<std::byte> buf(sizeof(vhost::MsgHeader) + payload_len);
    vhost::MsgHeader h{request, flags, size};
    std::memcpy(buf.data(), &h, sizeof h);
    if (payload_len) std::memcpy(buf.data() + sizeof h, payload, payload_len);
    msghdr mh{};
    iovec iov{buf.data(), buf.size()};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
    if (!fds.empty()) {
      mh.msg_control = control;
      mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t n = ::sendmsg(mine_.get(), &mh, MSG_NOSIGNAL);
    (void)n;
  }
  template <typename T>
  void Send(vhost::Request r, const T& payload, std::vector<int> fds = {}, uint32_t flags = vhost::kVersion) {
    SendRaw(static_cast<uint32_t>(r), flags, sizeof(T), &payload, sizeof(T), std::move(fds));
  }
  void Send(vhost::Request r, std::vector<int> fds = {}, uint32_t flags = vhost::kVersion) {
    SendRaw(static_cast<uint32_t>(r), flags, 0, nullptr, 0, std::move(fds));
  }

  // Receives and handles every complete message; returns the first error (or Ok).
  Result<void> Pump(vhost::BackendSession& s) {
    for (;;) {
      auto m = channel_->Receive();
      if (!m) return m.error();
      if (!m->has_value()) return Ok();
      NICMUX_TRY(s.Handle(**m, *channel_));
    }
  }

  // Reads one reply's u64 payload (or the VringState for GET_VRING_BASE as two u32).
  bool ReadReply(vhost::MsgHeader* h, void* payload, size_t len) {
    std::vector<std::byte> buf(sizeof(*h) + len);
    ssize_t n = ::recv(mine_.get(), buf.data(), buf.size(), MSG_DONTWAIT);
    if (n != static_cast<ssize_t>(buf.size())) return false;
    std::memcpy(h, buf.data(), sizeof *h);
    std::memcpy(payload, buf.data() + sizeof *h, len);
    return true;
  }

  void Close() { mine_.Reset(); }

 private:
  UniqueFd mine_;
  std::unique_ptr<vhost::Channel> channel_;
};

// A memfd of `size` bytes mapped here: the "guest RAM" a frontend shares.
struct SharedRam {
  explicit SharedRam(uint64_t size) : size(size) {
    fd.Reset(::memfd_create("nicmux-test-ram", MFD_CLOEXEC));
    NICMUX_CHECK(fd.valid() && ::ftruncate(fd.get(), static_cast<off_t>(size)) == 0);
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    NICMUX_CHECK(p != MAP_FAILED);
    host = static_cast<std::byte*>(p);
  }
  ~SharedRam() { ::munmap(host, size); }
  uint64_t uva(uint64_t off = 0) const { return reinterpret_cast<uint64_t>(host) + off; }

  UniqueFd fd;
  uint64_t size;
  std::byte* host;
};

}  // namespace nicmux::testing
