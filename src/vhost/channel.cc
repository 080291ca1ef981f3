#include "vhost/channel.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <string>

#include "base/fd_reaper.h"

namespace nicmux::vhost {

Channel::Channel(UniqueFd sock) : sock_(std::move(sock)) {}

Result<size_t> Channel::ReadSome(std::byte* dst, size_t len) {
  // Room for as many fds as one message can carry (SCM_MAX_FD, 253), so that every fd a peer
  // sends becomes ours to refuse: fds that do not fit are released by the kernel on our
  // thread, and the release of one (a lingering socket) could hold it.
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 253)];
  iovec iov{dst, len};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = control;
  mh.msg_controllen = sizeof control;
  ssize_t n = ::recvmsg(sock_.get(), &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  size_t foreign_fds = 0;
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return size_t{0};
    if (errno == EINTR) return size_t{0};
    peer_closed_ = errno == ECONNRESET;
    return Error::FromErrno("vhost-user socket recvmsg");
  }
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      // UNTRUSTED: the fd. vhost-user hands over eventfds and memory files only; anything else
      // is refused, and closed on another thread (its close could wait on the peer: a socket
      // with SO_LINGER, a FUSE file). What is kept closes without waiting.
      if (IsEventFd(fd) || IsMemoryFile(fd)) {
        cur_.fds.emplace_back(fd);  // owned from here on, closed on any error path
      } else {
        CloseInBackground(fd);
        ++foreign_fds;
      }
    }
  }
  if (foreign_fds > 0) {
    return Error("vhost-user message carries " + std::to_string(foreign_fds) +
                 " file descriptor(s) that are neither eventfds nor memory files (memfd, tmpfs, hugetlbfs)");
  }
  if (mh.msg_flags & MSG_CTRUNC) return Error("vhost-user message carries too many file descriptors");
  if (cur_.fds.size() > kMaxFds) {
    return Error("vhost-user message carries " + std::to_string(cur_.fds.size()) +
                 " file descriptors, at most " + std::to_string(kMaxFds) + " are allowed");
  }
  if (n == 0) {
    peer_closed_ = true;
    return Error("vhost-user peer closed the connection");
  }
  return static_cast<size_t>(n);
}

Result<std::optional<Message>> Channel::Receive() {
  for (;;) {
    std::byte* hdr = reinterpret_cast<std::byte*>(&cur_.hdr);
    size_t want;
    std::byte* dst;
    if (have_ < sizeof(MsgHeader)) {
      want = sizeof(MsgHeader) - have_;
      dst = hdr + have_;
    } else {
      // UNTRUSTED: size, bounded by kMaxPayload before anything is read into the payload.
      if (cur_.hdr.size > kMaxPayload) {
        return Error("vhost-user " + std::string(RequestName(cur_.hdr.request)) + ": payload size " +
                     std::to_string(cur_.hdr.size) + " exceeds " + std::to_string(kMaxPayload));
      }
      size_t got = have_ - sizeof(MsgHeader);
      if (got == cur_.hdr.size) {
        Message done = std::move(cur_);
        cur_ = Message{};
        have_ = 0;
        return std::optional<Message>(std::move(done));
      }
      want = cur_.hdr.size - got;
      dst = cur_.payload.data() + got;
    }
    auto n = ReadSome(dst, want);
    if (!n) {
      cur_ = Message{};
      have_ = 0;
      return n.error();
    }
    if (*n == 0) return std::optional<Message>();
    have_ += *n;
  }
}

Result<size_t> Channel::WriteSome(std::span<const std::byte> bytes, std::span<const int> fds) {
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  iovec iov{const_cast<std::byte*>(bytes.data()), bytes.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  if (!fds.empty()) {
    mh.msg_control = control;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    ssize_t n = ::sendmsg(sock_.get(), &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n >= 0) return static_cast<size_t>(n);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return size_t{0};
    return Error::FromErrno("vhost-user socket sendmsg");
  }
}

Result<void> Channel::Send(uint32_t request, uint32_t flags, std::span<const std::byte> payload,
                           std::span<const int> fds) {
  if (payload.size() > kMaxPayload || fds.size() > kMaxFds) return Error("vhost-user message too large");
  MsgHeader h{request, flags, static_cast<uint32_t>(payload.size())};
  Pending m;
  m.bytes.resize(sizeof h + payload.size());
  std::memcpy(m.bytes.data(), &h, sizeof h);
  if (!payload.empty()) std::memcpy(m.bytes.data() + sizeof h, payload.data(), payload.size());
  if (out_.empty()) {
    // The common case: the socket takes it all now, fds and all.
    auto n = WriteSome(m.bytes, fds);
    if (!n) return n.error();
    m.sent = *n;
    if (m.sent == m.bytes.size()) return Ok();
  }
  if (m.sent == 0) {
    // Nothing went: the fds wait with the bytes, as our own duplicates.
    for (int fd : fds) {
      UniqueFd d(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
      if (!d.valid()) return Error::FromErrno("dup of an fd to send");
      m.fds.push_back(std::move(d));
    }
  }
  // UNTRUSTED: the peer's reading. What it leaves unread is bounded per connection; past the
  // bound the connection is closed rather than the control thread waiting for it.
  const size_t left = m.bytes.size() - m.sent;
  if (out_.size() + 1 > kMaxPendingMessages || out_bytes_ + left > kMaxPendingBytes) {
    return Error("the frontend does not read its replies: " + std::to_string(out_.size() + 1) +
                 " messages (" + std::to_string(out_bytes_ + left) + " bytes) unsent, at most " +
                 std::to_string(kMaxPendingMessages) + " messages or " + std::to_string(kMaxPendingBytes) +
                 " bytes may wait");
  }
  out_bytes_ += left;
  out_.push_back(std::move(m));
  return Ok();
}

Result<void> Channel::Flush() {
  while (!out_.empty()) {
    Pending& m = out_.front();
    std::vector<int> fds;
    for (const UniqueFd& f : m.fds) fds.push_back(f.get());
    auto n = WriteSome(std::span(m.bytes).subspan(m.sent), fds);
    if (!n) return n.error();
    if (*n == 0) return Ok();  // full again: wait for the next EPOLLOUT
    m.fds.clear();             // they went with these bytes
    m.sent += *n;
    out_bytes_ -= *n;
    if (m.sent == m.bytes.size()) out_.pop_front();
  }
  return Ok();
}

}  // namespace nicmux::vhost
