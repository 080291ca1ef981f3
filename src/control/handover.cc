#include "control/handover.h"

#include <poll.h>
#include <sys/socket.h>

#include <cstring>
#include <string>

#include "base/log.h"
#include "base/unix_socket.h"

namespace nicmux::handover {

namespace {

uint64_t NowMs() { return MonotonicNowNs() / 1000000; }

// Waits until sock is ready for `events` or the deadline passes.
Result<void> WaitFor(int sock, short events, uint64_t deadline_ms) {
  for (;;) {
    const uint64_t now = NowMs();
    if (now >= deadline_ms) return Error("handover: timed out");
    pollfd p{sock, events, 0};
    int n = ::poll(&p, 1, static_cast<int>(deadline_ms - now));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::FromErrno("handover: poll");
    if (n == 0) return Error("handover: timed out");
    if (p.revents & (events | POLLHUP | POLLERR)) return Ok();
  }
}

Result<void> SendRecord(int sock, char type, std::span<const char> bytes, std::span<const int> fds,
                        uint64_t deadline_ms) {
  std::string rec(1, type);
  rec.append(bytes.data(), bytes.size());
  for (;;) {
    // A SEQPACKET record goes whole or not at all: a full socket is EAGAIN, waited out here.
    auto r = SendWithFds(sock, std::as_bytes(std::span<const char>(rec)), fds);
    if (r) return Ok();
    if (r.error().sys_errno() != EAGAIN && r.error().sys_errno() != EWOULDBLOCK) return r.error().Wrap("handover");
    NICMUX_TRY(WaitFor(sock, POLLOUT, deadline_ms));
  }
}

}  // namespace

Result<void> Send(int sock, const nlohmann::json& doc, std::span<const int> fds, int timeout_ms) {
  const uint64_t deadline = NowMs() + static_cast<uint64_t>(timeout_ms);
  for (size_t i = 0; i < fds.size(); i += kFdsPerRecord) {
    const size_t n = std::min(kFdsPerRecord, fds.size() - i);
    NICMUX_TRY(SendRecord(sock, 'F', {}, fds.subspan(i, n), deadline));
  }
  // Strict: a spec or path that is not UTF-8 (a legal file name) fails the send with an error
  // naming it, rather than throwing, or being changed on its way.
  std::string text;
  try {
    text = doc.dump();
  } catch (const std::exception& e) {
    return Error(std::string("handover: the state cannot be written as JSON (a name or path that is not UTF-8?): ") +
                 e.what());
  }
  for (size_t i = 0; i < text.size(); i += kDocBytesPerRecord) {
    const size_t n = std::min(kDocBytesPerRecord, text.size() - i);
    NICMUX_TRY(SendRecord(sock, 'D', std::span<const char>(text.data() + i, n), {}, deadline));
  }
  return SendRecord(sock, 'E', {}, {}, deadline);
}

Result<Message> Receive(int sock, int timeout_ms) {
  const uint64_t deadline = NowMs() + static_cast<uint64_t>(timeout_ms);
  Message m;
  std::string text;
  std::vector<char> buf(1 + kDocBytesPerRecord);
  for (;;) {
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 253)];
    iovec iov{buf.data(), buf.size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    ssize_t n = ::recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return Error::FromErrno("handover: receive");
      NICMUX_TRY(WaitFor(sock, POLLIN, deadline));
      continue;
    }
    // UNTRUSTED (the other process, another build): every fd it sent becomes ours at once,
    // so that none leaks whatever the record says.
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t j = 0; j < k; ++j) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + j * sizeof(int), sizeof fd);
        m.fds.emplace_back(fd);
      }
    }
    if (n == 0) return Error("handover: the other nicmuxd closed the socket (it exited)");
    if (mh.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) return Error("handover: a record was truncated");
    if (m.fds.size() > kMaxFds) return Error("handover: too many file descriptors");
    switch (buf[0]) {
      case 'F':
        break;
      case 'D':
        if (text.size() + static_cast<size_t>(n - 1) > kMaxDocBytes) return Error("handover: document too large");
        text.append(buf.data() + 1, static_cast<size_t>(n - 1));
        break;
      case 'E': {
        auto doc = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
        if (doc.is_discarded() || !doc.is_object()) return Error("handover: the document is not a JSON object");
        m.doc = std::move(doc);
        return m;
      }
      default:
        return Error("handover: unknown record type");
    }
  }
}

}  // namespace nicmux::handover
