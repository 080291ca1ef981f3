// The control channel never waits for a peer: replies the socket does not take are queued per
// connection (fds with their bytes), written when it is writable again, and a peer that does
// not read is cut off at a bound instead of stalling the control thread.
#include "vhost/channel.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <gtest/gtest.h>

#include "tests/support/vhost_peer.h"

namespace nicmux::vhost {
namespace {

using nicmux::testing::VhostPeer;

void ShrinkSendBuffer(int fd) {
  int small = 1;  // the kernel rounds up to its minimum: a few small messages fit
  ASSERT_EQ(::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
}

// Reads what is there; whole 20-byte replies (header + u64) are checked and counted.
struct ReplyReader {
  std::vector<std::byte> buf;
  size_t count = 0;
  uint64_t expect = 0;
  bool ok = true;

  void ReadAvailable(int fd) {
    std::byte tmp[4096];
    for (;;) {
      ssize_t n = ::recv(fd, tmp, sizeof tmp, MSG_DONTWAIT);
      if (n <= 0) break;
      buf.insert(buf.end(), tmp, tmp + n);
    }
    constexpr size_t kReply = sizeof(MsgHeader) + sizeof(uint64_t);
    size_t off = 0;
    for (; buf.size() - off >= kReply; off += kReply) {
      MsgHeader h;
      uint64_t v;
      std::memcpy(&h, buf.data() + off, sizeof h);
      std::memcpy(&v, buf.data() + off + sizeof h, sizeof v);
      ok = ok && h.request == static_cast<uint32_t>(Request::kGetFeatures) &&
           h.flags == (kVersion | kFlagReply) && h.size == 8 && v == expect;
      ++count;
    }
    buf.erase(buf.begin(), buf.begin() + static_cast<ptrdiff_t>(off));
  }
};

TEST(ControlStall, RepliesToAPeerThatDoesNotReadAreQueuedNotWaitedFor) {
  NoWorker worker;
  BackendSession session{BackendConfig{1, 0}, &worker};
  VhostPeer peer;
  ASSERT_TRUE(::fcntl(peer.channel().fd(), F_GETFL) & O_NONBLOCK);
  ShrinkSendBuffer(peer.channel().fd());
  // 300 requests, no reply read: the socket is full after a few, and every one is still
  // handled at once and without error (the old channel waited 1 s for the peer, then failed).
  constexpr int kRequests = 300;
  for (int i = 0; i < kRequests; ++i) {
    peer.Send(Request::kGetFeatures);
    auto r = peer.Pump(session);
    ASSERT_TRUE(r) << "request " << i << ": " << r.error().message();
  }
  EXPECT_TRUE(peer.channel().has_pending_output());
  EXPECT_LE(peer.channel().pending_messages(), Channel::kMaxPendingMessages);
  // The peer reads at last: every reply arrives, whole and in order, as the owner flushes
  // (the port does it on EPOLLOUT).
  ReplyReader rd;
  rd.expect = session.offered_features();
  for (int round = 0; round < 100000 && rd.count < kRequests; ++round) {
    rd.ReadAvailable(peer.fd());
    ASSERT_TRUE(peer.channel().Flush());
  }
  rd.ReadAvailable(peer.fd());
  EXPECT_EQ(rd.count, static_cast<size_t>(kRequests));
  EXPECT_TRUE(rd.ok);
  EXPECT_FALSE(peer.channel().has_pending_output());
  // A peer that never reads is cut off at the bound, with an error that says why.
  std::string error;
  for (size_t i = 0; i < Channel::kMaxPendingMessages + 10000 && error.empty(); ++i) {
    peer.Send(Request::kGetFeatures);
    auto r = peer.Pump(session);
    if (!r) error = r.error().message();
    ASSERT_LE(peer.channel().pending_messages(), Channel::kMaxPendingMessages);
    ASSERT_LE(peer.channel().pending_bytes(), Channel::kMaxPendingBytes);
  }
  EXPECT_NE(error.find("GET_FEATURES: the frontend does not read its replies"), std::string::npos) << error;
}

TEST(ControlStall, QueuedFdsStayWithTheirMessage) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
  Channel a{UniqueFd(sv[0])}, b{UniqueFd(sv[1])};
  ShrinkSendBuffer(a.fd());
  const uint64_t zero = 0;
  int sent = 0;
  while (!a.has_pending_output()) {
    ASSERT_TRUE(a.SendValue(1, kVersion, zero));
    ++sent;
    ASSERT_LT(sent, 10000);
  }
  // An fd-carrying message behind queued ones: the channel keeps its own duplicate.
  int efd = ::eventfd(0, EFD_CLOEXEC);
  struct stat want;
  ASSERT_EQ(::fstat(efd, &want), 0);
  ASSERT_TRUE(a.SendValue(2, kVersion, zero, std::span<const int>(&efd, 1)));
  ::close(efd);
  ASSERT_TRUE(a.SendValue(3, kVersion, zero));
  int got = 0;
  bool fd_seen = false;
  for (int round = 0; round < 100000 && got < sent + 2; ++round) {
    ASSERT_TRUE(a.Flush());
    auto m = b.Receive();
    ASSERT_TRUE(m) << m.error().message();
    if (!m->has_value()) continue;
    Message& msg = **m;
    ++got;
    if (msg.hdr.request == 2) {
      ASSERT_EQ(msg.fds.size(), 1u);
      struct stat st;
      ASSERT_EQ(::fstat(msg.fds[0].get(), &st), 0);
      EXPECT_EQ(st.st_ino, want.st_ino);
      EXPECT_EQ(st.st_dev, want.st_dev);
      fd_seen = true;
    } else {
      EXPECT_TRUE(msg.fds.empty()) << "request " << msg.hdr.request;
      EXPECT_EQ(msg.hdr.request, fd_seen ? 3u : 1u);
    }
  }
  EXPECT_EQ(got, sent + 2);
  EXPECT_TRUE(fd_seen);
  EXPECT_FALSE(a.has_pending_output());
}

}  // namespace
}  // namespace nicmux::vhost
