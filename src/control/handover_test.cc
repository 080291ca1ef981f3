// The live-upgrade messages (control/handover.h) over a real SOCK_SEQPACKET socketpair: fds
// arrive live and distinct, in order, however many F and D records a message takes; a closed
// peer, a timeout and malformed records are errors, and no received fd leaks.
#include "control/handover.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "base/check.h"

namespace nicmux::handover {
namespace {

size_t OpenFds() {
  size_t n = 0;
  DIR* d = opendir("/proc/self/fd");
  while (readdir(d) != nullptr) ++n;
  closedir(d);
  return n;
}

std::string ErrorOf(const Result<Message>& r) { return r ? "" : r.error().message(); }

class Handover : public ::testing::Test {
 protected:
  void SetUp() override {
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    a_.Reset(sv[0]);
    b_.Reset(sv[1]);
  }
  // Writes one record as another build could: type byte, bytes, fds.
  void SendRaw(const std::string& rec, const std::vector<int>& fds = {}) {
    iovec iov{const_cast<char*>(rec.data()), rec.size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    std::vector<char> control(CMSG_SPACE(sizeof(int) * std::max<size_t>(fds.size(), 1)));
    if (!fds.empty()) {
      mh.msg_control = control.data();
      mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ASSERT_EQ(::sendmsg(a_.get(), &mh, MSG_NOSIGNAL), static_cast<ssize_t>(rec.size())) << std::strerror(errno);
  }

  UniqueFd a_, b_;  // a_ sends, b_ receives
};

// n eventfds, each with a counter of i + 1 (so each one is told from the others).
std::vector<UniqueFd> EventFds(size_t n) {
  std::vector<UniqueFd> v;
  for (size_t i = 0; i < n; ++i) {
    v.emplace_back(::eventfd(static_cast<unsigned>(i + 1), EFD_CLOEXEC | EFD_NONBLOCK));
    NICMUX_CHECK(v.back().valid());
  }
  return v;
}

std::vector<int> Raw(const std::vector<UniqueFd>& v) {
  std::vector<int> r;
  for (const auto& f : v) r.push_back(f.get());
  return r;
}

ino_t Inode(int fd) {
  struct stat st {};
  NICMUX_CHECK(::fstat(fd, &st) == 0);
  return st.st_ino;
}

// The received fds are the sent ones, in order: each is the same file (an eventfd's counter
// read there is the one written here), none is one of ours, all are distinct.
void ExpectSameEventFds(const std::vector<UniqueFd>& sent, const std::vector<UniqueFd>& got) {
  ASSERT_EQ(got.size(), sent.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(got[i].valid());
    EXPECT_TRUE(::fcntl(got[i].get(), F_GETFD) & FD_CLOEXEC) << i;
    for (size_t j = 0; j < sent.size(); ++j) EXPECT_NE(got[i].get(), sent[j].get());
    for (size_t j = 0; j < i; ++j) EXPECT_NE(got[i].get(), got[j].get());
    EXPECT_EQ(Inode(got[i].get()), Inode(sent[i].get())) << i;
  }
  // Live: write to the sent one and read it (with the initial count) from the received one.
  for (size_t i = 0; i < got.size(); ++i) {
    uint64_t v = 1000;
    ASSERT_EQ(::write(sent[i].get(), &v, sizeof v), 8);
    v = 0;
    ASSERT_EQ(::read(got[i].get(), &v, sizeof v), 8) << i;
    EXPECT_EQ(v, 1000 + i + 1) << i;
  }
}

TEST_F(Handover, DocumentWithFds) {
  auto fds = EventFds(3);
  nlohmann::json doc = {{"msg", "state"}, {"version", kVersion}, {"ports", {{{"name", "vm1"}, {"fd", 2}}}}};
  ASSERT_TRUE(Send(a_.get(), doc, Raw(fds), 1000));
  auto m = Receive(b_.get(), 1000);
  ASSERT_TRUE(m) << m.error().message();
  EXPECT_EQ(m->doc, doc);
  ExpectSameEventFds(fds, m->fds);
}

TEST_F(Handover, DocumentWithoutFds) {
  nlohmann::json doc = {{"msg", "hello"}, {"version", kVersion}, {"pid", 1234}};
  ASSERT_TRUE(Send(a_.get(), doc, {}, 1000));
  auto m = Receive(b_.get(), 1000);
  ASSERT_TRUE(m) << m.error().message();
  EXPECT_EQ(m->doc, doc);
  EXPECT_TRUE(m->fds.empty());
}

TEST_F(Handover, DocumentLargerThanOneRecord) {
  // About 3.5 records of document: several D records, reassembled byte for byte. A reader
  // thread drains the socket (the sender would otherwise wait for room).
  nlohmann::json doc = {{"msg", "state"}};
  std::string big;
  for (size_t i = 0; big.size() < 3 * kDocBytesPerRecord + kDocBytesPerRecord / 2; ++i) {
    big += std::to_string(i * 2654435761u) + ",";
  }
  doc["blob"] = big;
  doc["list"] = nlohmann::json::array();
  for (int i = 0; i < 1000; ++i) doc["list"].push_back(i);
  ASSERT_GT(doc.dump().size(), 3 * kDocBytesPerRecord);
  Result<Message> m = Error("not received");
  std::thread reader([&] { m = Receive(b_.get(), 5000); });
  auto s = Send(a_.get(), doc, {}, 5000);
  reader.join();
  ASSERT_TRUE(s) << s.error().message();
  ASSERT_TRUE(m) << m.error().message();
  EXPECT_EQ(m->doc, doc);
}

TEST_F(Handover, MoreFdsThanOneRecord) {
  // 2.5 records' worth of fds: several F records, in order.
  auto fds = EventFds(kFdsPerRecord * 2 + kFdsPerRecord / 2);
  nlohmann::json doc = {{"msg", "state"}, {"n", fds.size()}};
  const size_t before = OpenFds();
  Result<Message> m = Error("not received");
  std::thread reader([&] { m = Receive(b_.get(), 5000); });
  auto s = Send(a_.get(), doc, Raw(fds), 5000);
  reader.join();
  ASSERT_TRUE(s) << s.error().message();
  ASSERT_TRUE(m) << m.error().message();
  EXPECT_EQ(m->doc, doc);
  ExpectSameEventFds(fds, m->fds);
  EXPECT_EQ(OpenFds(), before + fds.size());
  m->fds.clear();
  EXPECT_EQ(OpenFds(), before);
}

TEST_F(Handover, PeerClosed) {
  a_.Reset();
  EXPECT_EQ(ErrorOf(Receive(b_.get(), 1000)), "handover: the other nicmuxd closed the socket (it exited)");
}

TEST_F(Handover, PeerClosedInTheMiddleOfAMessage) {
  auto fds = EventFds(2);
  const size_t before = OpenFds();
  SendRaw("F", Raw(fds));
  SendRaw("D{\"msg\":");
  a_.Reset();
  EXPECT_EQ(ErrorOf(Receive(b_.get(), 1000)), "handover: the other nicmuxd closed the socket (it exited)");
  EXPECT_EQ(OpenFds(), before - 1);  // a_ closed; the two received fds too
}

TEST_F(Handover, Timeout) {
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(ErrorOf(Receive(b_.get(), 100)), "handover: timed out");
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(took, std::chrono::milliseconds(90));
  EXPECT_LT(took, std::chrono::seconds(5));
  // Part of a message, then nothing: the deadline is for the whole message.
  SendRaw("D{}");
  EXPECT_EQ(ErrorOf(Receive(b_.get(), 100)), "handover: timed out");
}

TEST_F(Handover, SendTimesOutWhenNobodyReads) {
  // The socket fills with records nobody takes: Send gives up at its deadline.
  nlohmann::json doc = {{"blob", std::string(4 << 20, 'x')}};
  const auto t0 = std::chrono::steady_clock::now();
  auto s = Send(a_.get(), doc, {}, 200);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().message(), "handover: timed out");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
}

TEST_F(Handover, UnknownRecordType) {
  SendRaw("X whatever");
  EXPECT_EQ(ErrorOf(Receive(b_.get(), 1000)), "handover: unknown record type");
}

TEST_F(Handover, DocumentThatIsNotJson) {
  SendRaw("D{\"msg\": \"state\", ");
  SendRaw("E");
  EXPECT_EQ(ErrorOf(Receive(b_.get(), 1000)), "handover: the document is not a JSON object");
  // JSON, but not an object.
  SendRaw("D[1,2,3]");
  SendRaw("E");
  EXPECT_EQ(ErrorOf(Receive(b_.get(), 1000)), "handover: the document is not a JSON object");
  // No D record at all.
  SendRaw("E");
  EXPECT_EQ(ErrorOf(Receive(b_.get(), 1000)), "handover: the document is not a JSON object");
}

TEST_F(Handover, FdsThenAnUnknownRecordLeakNothing) {
  auto fds = EventFds(5);
  UniqueFd mem(::memfd_create("handover-test", MFD_CLOEXEC));
  ASSERT_TRUE(mem.valid());
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  std::vector<int> raw = Raw(fds);
  raw.push_back(mem.get());
  raw.push_back(p[0]);
  raw.push_back(p[1]);
  const size_t before = OpenFds();
  SendRaw("F", raw);
  SendRaw("Fmore", {fds[0].get(), fds[1].get()});
  SendRaw("Q", {fds[2].get()});  // fds on the unknown record itself, too
  EXPECT_EQ(ErrorOf(Receive(b_.get(), 1000)), "handover: unknown record type");
  EXPECT_EQ(OpenFds(), before);
  // The pipe's write end is ours alone again: closing it ends the pipe.
  ::close(p[1]);
  char c;
  EXPECT_EQ(::read(p[0], &c, 1), 0);
  ::close(p[0]);
}

TEST_F(Handover, FdsThenABadDocumentLeakNothing) {
  auto fds = EventFds(4);
  const size_t before = OpenFds();
  SendRaw("F", Raw(fds));
  SendRaw("Dnot json");
  SendRaw("E");
  EXPECT_EQ(ErrorOf(Receive(b_.get(), 1000)), "handover: the document is not a JSON object");
  EXPECT_EQ(OpenFds(), before);
}

TEST_F(Handover, RecordLargerThanTheReceiveBufferIsRefused) {
  // A record past 1 + kDocBytesPerRecord bytes (a newer build's bigger records) is truncated:
  // refused, not taken in part.
  SendRaw("D" + std::string(kDocBytesPerRecord + 10, ' '));
  SendRaw("E");
  EXPECT_EQ(ErrorOf(Receive(b_.get(), 1000)), "handover: a record was truncated");
}

TEST_F(Handover, MoreFdsInOneRecordThanTheControlBufferTakes) {
  // 300 fds in one record (SCM_RIGHTS takes up to 253): either the kernel refuses to send it,
  // or the receiver sees a truncated control message; either way nothing leaks.
  auto fds = EventFds(300);
  const size_t before = OpenFds();
  std::string rec = "F";
  iovec iov{rec.data(), rec.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
  mh.msg_control = control.data();
  mh.msg_controllen = control.size();
  cmsghdr* c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  auto raw = Raw(fds);
  std::memcpy(CMSG_DATA(c), raw.data(), sizeof(int) * raw.size());
  if (::sendmsg(a_.get(), &mh, MSG_NOSIGNAL) < 0) {
    EXPECT_EQ(errno, EINVAL);  // SCM_MAX_FD is 253
    return;
  }
  SendRaw("E");
  EXPECT_NE(ErrorOf(Receive(b_.get(), 1000)), "");
  EXPECT_EQ(OpenFds(), before);
}

TEST_F(Handover, TwoMessagesInARow) {
  auto fds = EventFds(2);
  const std::vector<int> raw = Raw(fds);
  ASSERT_TRUE(Send(a_.get(), {{"msg", "one"}}, std::span<const int>(raw.data(), 1), 1000));
  ASSERT_TRUE(Send(a_.get(), {{"msg", "two"}}, std::span<const int>(raw.data() + 1, 1), 1000));
  auto m1 = Receive(b_.get(), 1000);
  auto m2 = Receive(b_.get(), 1000);
  ASSERT_TRUE(m1 && m2);
  EXPECT_EQ(m1->doc["msg"], "one");
  EXPECT_EQ(m2->doc["msg"], "two");
  ASSERT_EQ(m1->fds.size(), 1u);
  ASSERT_EQ(m2->fds.size(), 1u);
  EXPECT_EQ(Inode(m1->fds[0].get()), Inode(fds[0].get()));
  EXPECT_EQ(Inode(m2->fds[0].get()), Inode(fds[1].get()));
}

}  // namespace
}  // namespace nicmux::handover
