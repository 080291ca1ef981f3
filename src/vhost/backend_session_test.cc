// Hostile vhost-user frontends: every malformed message ends in an error naming the request
// and the field (the port then closes the connection); stray fds are closed; the valid
// protocol of QEMU and DPDK works, including the ways they repeat themselves.
#include "vhost/backend_session.h"

#include <dirent.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <optional>
#include <thread>

#include <gtest/gtest.h>

#include "base/fd_reaper.h"
#include "tests/support/vhost_peer.h"
#include "virtio/driver_vring.h"
#include "virtio/features.h"

namespace nicmux::vhost {
namespace {

using nicmux::testing::SharedRam;
using nicmux::testing::VhostPeer;

size_t OpenFds() {
  size_t n = 0;
  DIR* d = opendir("/proc/self/fd");
  while (readdir(d) != nullptr) ++n;
  closedir(d);
  return n;
}

// Mappings of memfds (guest memory) in this process, and its resident set.
size_t MemfdMappings() {
  std::ifstream in("/proc/self/maps");
  size_t n = 0;
  std::string line;
  while (std::getline(in, line)) n += line.find("/memfd:") != std::string::npos;
  return n;
}
uint64_t VmRssKib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6));
  }
  return 0;
}

class Session : public ::testing::Test {
 protected:
  Result<void> Pump() { return peer_.Pump(session_); }
  std::string PumpError() {
    auto r = Pump();
    return r ? "" : r.error().message();
  }
  // A one-region memory table over ram_.
  void SendMemTable(uint64_t gpa = 0) {
    struct {
      MemoryHeader h;
      MemoryRegion r;
    } t{{1, 0}, {gpa, ram_.size, ram_.uva(), 0}};
    peer_.Send(Request::kSetMemTable, t, {ram_.fd.get()});
  }

  NoWorker worker_;
  BackendSession session_{BackendConfig{2, 0}, &worker_};
  VhostPeer peer_;
  SharedRam ram_{1 << 20};
};

TEST_F(Session, UnknownRequestIsNamed) {
  peer_.Send(static_cast<Request>(99));
  EXPECT_EQ(PumpError(), "request 99: request not supported");
  peer_.Send(Request::kSetLogBase, uint64_t{0});
  EXPECT_NE(PumpError().find("SET_LOG_BASE"), std::string::npos);
}

TEST_F(Session, WrongPayloadSize) {
  uint32_t four = 1;
  peer_.SendRaw(static_cast<uint32_t>(Request::kSetFeatures), kVersion, 4, &four, 4);
  EXPECT_EQ(PumpError(), "SET_FEATURES: payload size 4 is wrong");
}

TEST_F(Session, BadVersion) {
  peer_.Send(Request::kGetFeatures, {}, 0x2);
  EXPECT_NE(PumpError().find("protocol version 1"), std::string::npos);
}

TEST_F(Session, PayloadLargerThanAnyMessage) {
  peer_.SendRaw(static_cast<uint32_t>(Request::kSetFeatures), kVersion, 1 << 20, nullptr, 0);
  EXPECT_NE(PumpError().find("exceeds"), std::string::npos);
}

TEST_F(Session, TruncatedMessageThenClose) {
  uint32_t half = 0;
  peer_.SendRaw(static_cast<uint32_t>(Request::kSetFeatures), kVersion, 8, &half, 4);
  EXPECT_TRUE(Pump());  // waits for the rest
  peer_.Close();
  EXPECT_NE(PumpError().find("closed"), std::string::npos);
}

TEST_F(Session, UnexpectedFdIsRefusedAndClosed) {
  int efd = ::eventfd(0, EFD_CLOEXEC);
  const size_t before = OpenFds();
  peer_.Send(Request::kSetFeatures, uint64_t{0}, {efd});
  EXPECT_EQ(PumpError(), "SET_FEATURES: carries 1 file descriptors, expected 0");
  EXPECT_EQ(OpenFds(), before);  // the received duplicate is closed at once
  ::close(efd);
}

TEST_F(Session, TooManyFdsForTheChannel) {
  // A memory table first (whatever the session keeps for it is counted in `before`), then a
  // message with 12 fds, 4 more than any message may carry: every one received is closed, not
  // all but one.
  SendMemTable();
  ASSERT_EQ(PumpError(), "");
  std::vector<int> fds;
  for (int i = 0; i < 12; ++i) fds.push_back(::eventfd(0, EFD_CLOEXEC));
  const size_t before = OpenFds();
  peer_.SendRaw(static_cast<uint32_t>(Request::kSetOwner), kVersion, 0, nullptr, 0, fds);
  EXPECT_EQ(PumpError(), "vhost-user message carries 12 file descriptors, at most 8 are allowed");
  for (int fd : fds) ::close(fd);
  EXPECT_EQ(OpenFds(), before - fds.size());
}

TEST_F(Session, MemTableWithTooFewOrTooManyFds) {
  struct {
    MemoryHeader h;
    MemoryRegion r[2];
  } t{{2, 0}, {{0, 4096, ram_.uva(), 0}, {8192, 4096, ram_.uva(8192), 8192}}};
  peer_.Send(Request::kSetMemTable, t, {ram_.fd.get()});
  EXPECT_EQ(PumpError(), "SET_MEM_TABLE: 2 regions but 1 file descriptors");
}

TEST_F(Session, MemTableTooManyRegions) {
  std::vector<std::byte> buf(8 + 9 * 32);
  MemoryHeader h{9, 0};
  std::memcpy(buf.data(), &h, sizeof h);
  peer_.SendRaw(static_cast<uint32_t>(Request::kSetMemTable), kVersion, buf.size(), buf.data(), buf.size());
  EXPECT_EQ(PumpError(), "SET_MEM_TABLE: nregions 9 is outside 1..8");
}

TEST_F(Session, MemTableOverlappingRegions) {
  struct {
    MemoryHeader h;
    MemoryRegion r[2];
  } t{{2, 0}, {{0, 8192, ram_.uva(), 0}, {4096, 4096, ram_.uva(65536), 65536}}};
  peer_.Send(Request::kSetMemTable, t, {ram_.fd.get(), ram_.fd.get()});
  EXPECT_NE(PumpError().find("overlaps region 0"), std::string::npos);
}

TEST_F(Session, MemTableZeroSizeRegion) {
  struct {
    MemoryHeader h;
    MemoryRegion r;
  } t{{1, 0}, {0, 0, ram_.uva(), 0}};
  peer_.Send(Request::kSetMemTable, t, {ram_.fd.get()});
  EXPECT_NE(PumpError().find("size is zero"), std::string::npos);
}

TEST_F(Session, QueueIndexOutOfRange) {
  peer_.Send(Request::kSetVringNum, VringState{4, 256});
  EXPECT_EQ(PumpError(), "SET_VRING_NUM: queue index 4 is not below 4");
}

TEST_F(Session, QueueSizeNotPowerOfTwoOrTooBig) {
  peer_.Send(Request::kSetVringNum, VringState{0, 100});
  EXPECT_EQ(PumpError(), "SET_VRING_NUM: queue 0 size 100 is not a power of two");
  peer_.Send(Request::kSetVringNum, VringState{0, 65536});
  EXPECT_NE(PumpError().find("outside 1..32768"), std::string::npos);
}

TEST_F(Session, KickBeforeAnyMemoryTable) {
  int efd = ::eventfd(0, EFD_CLOEXEC);
  peer_.Send(Request::kSetVringKick, uint64_t{0}, {efd});
  // What QEMU does with guest RAM that is not shared (seen with a libvirt domain without
  // <memoryBacking>): the error says what to change.
  const std::string e = PumpError();
  EXPECT_EQ(e.rfind("SET_VRING_KICK: queue 0: kick before any memory table", 0), 0u) << e;
  EXPECT_NE(e.find("memory-backend-memfd,share=on"), std::string::npos) << e;
  EXPECT_NE(e.find("<access mode='shared'/>"), std::string::npos) << e;
  ::close(efd);
}

TEST_F(Session, KickFlagsAndFdsMustAgree) {
  SendMemTable();
  ASSERT_TRUE(Pump());
  peer_.Send(Request::kSetVringKick, uint64_t{0});  // no fd and no "no fd" flag
  EXPECT_NE(PumpError().find("no fd and no 'no fd' flag"), std::string::npos);
  peer_.Send(Request::kSetVringCall, uint64_t{0x200});
  EXPECT_NE(PumpError().find("unknown bits"), std::string::npos);
}

// Brings queue 1 (a transmitq) to the point of starting, with ring addresses `desc`.
void SetUpQueue(VhostPeer& peer, SharedRam& ram, uint64_t desc_uva, int kick) {
  peer.Send(Request::kSetFeatures, uint64_t{virtio::Bit(virtio::kFVersion1)});
  peer.Send(Request::kSetVringNum, VringState{1, 256});
  peer.Send(Request::kSetVringBase, VringState{1, 0});
  peer.Send(Request::kSetVringAddr, VringAddr{1, 0, desc_uva, ram.uva(0x8000), ram.uva(0x6000), 0});
  peer.Send(Request::kSetVringKick, uint64_t{1}, {kick});
}

TEST_F(Session, RingOutsideMemoryIsRefusedByName) {
  SendMemTable();
  int efd = ::eventfd(0, EFD_CLOEXEC);
  SetUpQueue(peer_, ram_, ram_.uva(ram_.size - 1024), efd);  // 4 KiB of descriptors won't fit
  std::string e = PumpError();
  EXPECT_NE(e.find("SET_VRING_KICK: queue 1: descriptor table"), std::string::npos) << e;
  EXPECT_NE(e.find("not inside one memory region"), std::string::npos) << e;
  ::close(efd);
}

TEST_F(Session, ValidSetupStartsTheQueueAndAcksOnRequest) {
  peer_.Send(Request::kGetProtocolFeatures);
  ASSERT_TRUE(Pump());
  MsgHeader h;
  uint64_t pf;
  ASSERT_TRUE(peer_.ReadReply(&h, &pf, 8));
  EXPECT_TRUE(virtio::Has(pf, kProtoReplyAck));
  peer_.Send(Request::kSetProtocolFeatures, uint64_t{virtio::Bit(kProtoReplyAck)});
  SendMemTable();
  int efd = ::eventfd(0, EFD_CLOEXEC);
  SetUpQueue(peer_, ram_, ram_.uva(0x2000), efd);
  ASSERT_TRUE(Pump());
  EXPECT_TRUE(session_.queue(1).running);  // without PROTOCOL_FEATURES: enabled at start
  // NEED_REPLY gets an ack.
  peer_.Send(Request::kSetVringEnable, VringState{1, 1}, {}, kVersion | kFlagNeedReply);
  ASSERT_TRUE(Pump());
  uint64_t ack = 99;
  ASSERT_TRUE(peer_.ReadReply(&h, &ack, 8));
  EXPECT_EQ(ack, 0u);
  EXPECT_EQ(h.flags & kFlagReply, kFlagReply);
  // GET_VRING_BASE stops it and reports where it stood.
  peer_.Send(Request::kGetVringBase, VringState{1, 0});
  ASSERT_TRUE(Pump());
  VringState st;
  ASSERT_TRUE(peer_.ReadReply(&h, &st, 8));
  EXPECT_EQ(st.index, 1u);
  EXPECT_FALSE(session_.queue(1).running);
  ::close(efd);
}

TEST_F(Session, AddMemRegTwiceAndRemoveTwiceAsQemuMultiqueueDoes) {
  SingleMemoryRegion r{0, {0, ram_.size, ram_.uva(), 0}};
  peer_.Send(Request::kAddMemReg, r, {ram_.fd.get()});
  peer_.Send(Request::kAddMemReg, r, {ram_.fd.get()});
  ASSERT_TRUE(Pump());
  ASSERT_NE(session_.memory(), nullptr);
  EXPECT_EQ(session_.memory()->regions().size(), 1u);
  peer_.Send(Request::kRemMemReg, r);
  ASSERT_TRUE(Pump());
  EXPECT_EQ(session_.memory()->regions().size(), 1u);  // one reference left
  peer_.Send(Request::kRemMemReg, r, {ram_.fd.get()});  // QEMU < 8 sends the fd too
  ASSERT_TRUE(Pump());
  EXPECT_EQ(session_.memory()->regions().size(), 0u);
  peer_.Send(Request::kRemMemReg, r);
  EXPECT_NE(PumpError().find("no memory region"), std::string::npos);
}

TEST_F(Session, MemorySlotsAreAnnouncedAndBounded) {
  peer_.Send(Request::kGetMaxMemSlots);
  ASSERT_TRUE(Pump());
  MsgHeader h;
  uint64_t slots = 0;
  ASSERT_TRUE(peer_.ReadReply(&h, &slots, 8));
  EXPECT_EQ(slots, kMaxMemSlots);
  const size_t maps = MemfdMappings();
  const uint64_t rss = VmRssKib();
  // The audit's frontend: region after region, as many as GuestMemory takes (509). Each ADD
  // rebuilds the whole table; 509 cost +31.5 MiB RSS under ASan. Refused past the slots.
  std::string error;
  for (uint64_t i = 0; i < GuestMemory::kMaxRegions && error.empty(); ++i) {
    SingleMemoryRegion r{0, {i * 4096, 4096, 0x10000000 + i * 4096, (i % 256) * 4096}};
    peer_.Send(Request::kAddMemReg, r, {ram_.fd.get()});
    error = PumpError();
  }
  EXPECT_NE(error.find("ADD_MEM_REG: already 64 memory regions, at most 64"), std::string::npos) << error;
  ASSERT_NE(session_.memory(), nullptr);
  EXPECT_EQ(session_.memory()->regions().size(), kMaxMemSlots);
  EXPECT_EQ(MemfdMappings(), maps + kMaxMemSlots);
  EXPECT_LT(VmRssKib(), rss + 16 * 1024);  // generous: 64 regions are ~2 MiB under ASan
  session_.Reset();
  EXPECT_EQ(MemfdMappings(), maps);
}

TEST_F(Session, RepeatedAddsMapOnceAndAddRemoveCyclesLeaveNothing) {
  const size_t maps = MemfdMappings();
  SingleMemoryRegion r{0, {0, 8192, ram_.uva(), 0}};
  peer_.Send(Request::kAddMemReg, r, {ram_.fd.get()});
  ASSERT_TRUE(Pump());
  // The same region from another part of the file is not the same region.
  SingleMemoryRegion moved = r;
  moved.region.mmap_offset = 4096;
  peer_.Send(Request::kAddMemReg, moved, {ram_.fd.get()});
  EXPECT_NE(PumpError().find("added again with mmap_offset 0x1000, was 0x0"), std::string::npos);
  // Repeats are counted, not mapped, and bounded.
  for (uint32_t i = 1; i < kMaxRegionRefs; ++i) peer_.Send(Request::kAddMemReg, r, {ram_.fd.get()});
  ASSERT_TRUE(Pump());
  EXPECT_EQ(MemfdMappings(), maps + 1);
  peer_.Send(Request::kAddMemReg, r, {ram_.fd.get()});
  EXPECT_NE(PumpError().find("added 64 times without a removal"), std::string::npos);
  for (uint32_t i = 0; i < kMaxRegionRefs; ++i) peer_.Send(Request::kRemMemReg, r);
  ASSERT_TRUE(Pump());
  EXPECT_EQ(session_.memory()->regions().size(), 0u);
  EXPECT_EQ(MemfdMappings(), maps);
  // 1000 add/remove cycles (QEMU's memory hotplug, or a hostile loop): at most the one region
  // mapped at a time, none after.
  for (uint64_t i = 0; i < 1000; ++i) {
    SingleMemoryRegion c{0, {(i % 512) * 8192, 8192, 0x20000000 + (i % 512) * 8192, (i % 128) * 8192}};
    peer_.Send(Request::kAddMemReg, c, {ram_.fd.get()});
    peer_.Send(Request::kAddMemReg, c, {ram_.fd.get()});
    ASSERT_TRUE(Pump()) << i;
    ASSERT_EQ(MemfdMappings(), maps + 1) << i;
    peer_.Send(Request::kRemMemReg, c);
    peer_.Send(Request::kRemMemReg, c);
    ASSERT_TRUE(Pump()) << i;
  }
  EXPECT_EQ(session_.memory()->regions().size(), 0u);
  EXPECT_EQ(MemfdMappings(), maps);
}

TEST_F(Session, ResetOwnerForgetsTheMemoryTable) {
  SingleMemoryRegion r{0, {0, ram_.size, ram_.uva(), 0}};
  peer_.Send(Request::kAddMemReg, r, {ram_.fd.get()});
  peer_.Send(Request::kResetOwner);
  peer_.Send(Request::kAddMemReg, r, {ram_.fd.get()});  // QEMU after a guest reset
  ASSERT_TRUE(Pump());
  EXPECT_EQ(session_.memory()->regions().size(), 1u);
}

TEST_F(Session, FeaturesNotOfferedAreRefused) {
  peer_.Send(Request::kSetFeatures, uint64_t{1} << 63);
  EXPECT_NE(PumpError().find("were not offered"), std::string::npos);
}

TEST_F(Session, ResetClosesEveryFdAndMapping) {
  const size_t before = OpenFds();
  SendMemTable();
  int k = ::eventfd(0, EFD_CLOEXEC), c = ::eventfd(0, EFD_CLOEXEC);
  SetUpQueue(peer_, ram_, ram_.uva(0x2000), k);
  peer_.Send(Request::kSetVringCall, uint64_t{1}, {c});
  ASSERT_TRUE(Pump());
  EXPECT_TRUE(session_.queue(1).running);
  session_.Reset();
  ::close(k);
  ::close(c);
  EXPECT_EQ(OpenFds(), before);
  EXPECT_EQ(session_.memory(), nullptr);
}

TEST_F(Session, CallFdMustBeAnEventfd) {
  // A memory file passes the channel (it takes eventfds and memory files) but is no doorbell.
  int m = ::memfd_create("not-a-doorbell", MFD_CLOEXEC);
  ASSERT_GE(m, 0);
  peer_.Send(Request::kSetVringCall, uint64_t{0}, {m});
  EXPECT_EQ(PumpError(), "SET_VRING_CALL: queue 0: the fd is not an eventfd");
  ::close(m);
  int efd = ::eventfd(0, EFD_CLOEXEC);  // blocking: made non-blocking
  peer_.Send(Request::kSetVringCall, uint64_t{0}, {efd});
  ASSERT_TRUE(Pump());
  EXPECT_TRUE(::fcntl(efd, F_GETFL) & O_NONBLOCK);
  ::close(efd);
}

// Review of issue 17: a frontend could hand us an fd whose close() waits on it — a TCP socket
// with unsent data and SO_LINGER, a file on its FUSE mount — and the control thread closed it
// when it refused the message, and waited. The channel keeps only eventfds and memory files;
// anything else is refused and closed on another thread. A pipe (which nobody reads, and a
// worker's write to it would block) is refused there too.
TEST(ForeignFds, AreRefusedAndClosedOffTheControlThread) {
  // A lingering socket: connected over TCP to a listener that never accepts nor reads, its
  // send buffer full, SO_LINGER 3 s. Its last close() waits up to 3 s for the data to go.
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t alen = sizeof a;
  ASSERT_EQ(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&a), &alen), 0);
  int small = 4096;
  ASSERT_EQ(::setsockopt(listener.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
  ASSERT_EQ(::listen(listener.get(), 1), 0);
  int tcp = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_EQ(::setsockopt(tcp, SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
  ASSERT_EQ(::connect(tcp, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::fcntl(tcp, F_SETFL, O_NONBLOCK), 0);
  std::vector<char> junk(1 << 16, 'x');
  while (::send(tcp, junk.data(), junk.size(), MSG_NOSIGNAL) > 0) {
  }
  const linger l{1, 3};
  ASSERT_EQ(::setsockopt(tcp, SOL_SOCKET, SO_LINGER, &l, sizeof l), 0);
  int p[2];
  ASSERT_EQ(::pipe(p), 0);

  VhostPeer peer;
  NoWorker worker;
  BackendSession session(BackendConfig{}, &worker);
  peer.Send(Request::kSetVringCall, uint64_t{0}, {tcp});
  ::close(tcp);  // ours is now the last reference
  const auto t0 = std::chrono::steady_clock::now();
  auto r = peer.Pump(session);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message(),
            "vhost-user message carries 1 file descriptor(s) that are neither eventfds nor memory files "
            "(memfd, tmpfs, hugetlbfs)");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2)) << "the control thread waited";

  VhostPeer peer2;
  peer2.Send(Request::kSetVringCall, uint64_t{0}, {p[1]});
  auto r2 = peer2.Pump(session);
  ASSERT_FALSE(r2);
  EXPECT_NE(r2.error().message().find("neither eventfds nor memory files"), std::string::npos);
  ::close(p[0]);
  ::close(p[1]);
  // The background closes finish (the socket's after its linger time).
  for (int i = 0; i < 2000 && FdsWaitingToClose() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(FdsWaitingToClose(), 0u);
}

TEST_F(Session, PackedBaseFromQemuCarriesBothHalves) {
  // QEMU 7.2: avail | wrap << 15 in the low half, used | wrap << 15 in the high half.
  peer_.Send(Request::kSetFeatures, uint64_t{virtio::Bit(virtio::kFVersion1) | virtio::Bit(virtio::kFRingPacked)});
  SendMemTable();
  peer_.Send(Request::kSetVringNum, VringState{1, 256});
  peer_.Send(Request::kSetVringBase, VringState{1, 0x80058005});
  peer_.Send(Request::kSetVringAddr, VringAddr{1, 0, ram_.uva(0x2000), ram_.uva(0x6000), ram_.uva(0x5000), 0});
  int efd = ::eventfd(0, EFD_CLOEXEC);
  peer_.Send(Request::kSetVringKick, uint64_t{1}, {efd});
  ASSERT_TRUE(Pump());
  EXPECT_TRUE(session_.queue(1).running);
  peer_.Send(Request::kGetVringBase, VringState{1, 0});
  ASSERT_TRUE(Pump());
  MsgHeader h;
  VringState st;
  ASSERT_TRUE(peer_.ReadReply(&h, &st, 8));
  EXPECT_EQ(st.num, 0x80058005u);
  ::close(efd);
  // A split ring's base is 16 bits.
  VhostPeer p2;
  BackendSession split{BackendConfig{1, 0}, &worker_};
  p2.Send(Request::kSetVringBase, VringState{0, 0x10000});
  auto r = p2.Pump(split);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("not a 16-bit index"), std::string::npos);
}

TEST_F(Session, MemoryTableLargerThanTheCapIsRefusedBeforeMapping) {
  struct {
    MemoryHeader h;
    MemoryRegion r;
  } t{{1, 0}, {0, kMaxMemoryBytes + 4096, ram_.uva(), 0}};
  peer_.Send(Request::kSetMemTable, t, {ram_.fd.get()});
  EXPECT_EQ(PumpError(),
            "SET_MEM_TABLE: memory table of 4398046515200 bytes exceeds max_memory=4T (4398046511104 bytes), "
            "what one frontend of this port may map");
  SingleMemoryRegion r{0, {0, kMaxMemoryBytes + 4096, ram_.uva(), 0}};
  peer_.Send(Request::kAddMemReg, r, {ram_.fd.get()});
  EXPECT_EQ(PumpError(),
            "ADD_MEM_REG: memory table of 4398046515200 bytes exceeds max_memory=4T (4398046511104 bytes), "
            "what one frontend of this port may map");
  // A region of 2^64-1 bytes does not wrap the sum of the table.
  struct {
    MemoryHeader h;
    MemoryRegion r[2];
  } two{{2, 0}, {{0, 1 << 20, ram_.uva(), 0}, {1 << 20, ~uint64_t{0}, ram_.uva(), 0}}};
  peer_.Send(Request::kSetMemTable, two, {ram_.fd.get(), ram_.fd.get()});
  EXPECT_NE(PumpError().find("memory table of 18446744073709551615 bytes exceeds max_memory=4T"), std::string::npos);
  EXPECT_EQ(session_.memory(), nullptr);
}

// A port's max_memory (BackendConfig::max_memory) bounds the guest memory one frontend may map:
// pages of it that nicmuxd reads first are charged to nicmuxd's memory cgroup.
class SessionWithMaxMemory : public Session {
 protected:
  static constexpr uint64_t kMiB = 1 << 20;
  // n regions of the sizes given, back to back in guest-physical space and in ram3_.
  void SendTable(std::initializer_list<uint64_t> sizes) {
    struct {
      MemoryHeader h;
      MemoryRegion r[8];
    } t{};
    uint64_t at = 0;
    std::vector<int> fds;
    for (uint64_t size : sizes) {
      t.r[t.h.nregions++] = {at, size, ram3_.uva(at), at};
      fds.push_back(ram3_.fd.get());
      at += size;
    }
    peer_.SendRaw(static_cast<uint32_t>(Request::kSetMemTable), kVersion,
                  static_cast<uint32_t>(sizeof(MemoryHeader) + t.h.nregions * sizeof(MemoryRegion)), &t,
                  sizeof(MemoryHeader) + t.h.nregions * sizeof(MemoryRegion), fds);
  }
  void AddRegion(uint64_t at, uint64_t size) {
    peer_.Send(Request::kAddMemReg, SingleMemoryRegion{0, {at, size, ram3_.uva(at), at}}, {ram3_.fd.get()});
  }
  void RemRegion(uint64_t at, uint64_t size) {
    peer_.Send(Request::kRemMemReg, SingleMemoryRegion{0, {at, size, ram3_.uva(at), at}});
  }
  uint64_t Mapped() const {
    uint64_t n = 0;
    if (limited_.memory()) {
      for (const GuestRegion& r : limited_.memory()->regions()) n += r.size;
    }
    return n;
  }
  std::string LimitedError() {
    auto r = peer_.Pump(limited_);
    return r ? "" : r.error().message();
  }

  SharedRam ram3_{3 * kMiB};
  BackendSession limited_{BackendConfig{1, 0, 2 * kMiB}, &worker_};
};

TEST_F(SessionWithMaxMemory, MemTableOverTheLimitIsRefusedAndOneAtTheLimitAccepted) {
  SendTable({kMiB, kMiB + 4096});
  EXPECT_EQ(LimitedError(),
            "SET_MEM_TABLE: memory table of 2101248 bytes exceeds max_memory=2M (2097152 bytes), "
            "what one frontend of this port may map");
  EXPECT_EQ(limited_.memory(), nullptr);
  SendTable({3 * kMiB});
  EXPECT_EQ(LimitedError(),
            "SET_MEM_TABLE: memory table of 3145728 bytes exceeds max_memory=2M (2097152 bytes), "
            "what one frontend of this port may map");
  SendTable({kMiB, kMiB});
  EXPECT_EQ(LimitedError(), "");
  EXPECT_EQ(Mapped(), 2 * kMiB);
  // A new table replaces the old one: it is not added to it.
  SendTable({2 * kMiB});
  EXPECT_EQ(LimitedError(), "");
  EXPECT_EQ(Mapped(), 2 * kMiB);
  // A table over the limit leaves the one in place as it was.
  SendTable({2 * kMiB, 4096});
  EXPECT_NE(LimitedError().find("memory table of 2101248 bytes exceeds max_memory=2M"), std::string::npos);
  EXPECT_EQ(Mapped(), 2 * kMiB);
}

TEST_F(SessionWithMaxMemory, AddMemRegPastTheLimitIsRefused) {
  AddRegion(0, kMiB);
  AddRegion(kMiB, kMiB);
  ASSERT_EQ(LimitedError(), "");
  ASSERT_EQ(LimitedError(), "");
  EXPECT_EQ(Mapped(), 2 * kMiB);
  // The same region again (QEMU: one per queue pair) maps nothing more and counts nothing more.
  AddRegion(kMiB, kMiB);
  EXPECT_EQ(LimitedError(), "");
  AddRegion(2 * kMiB, 4096);
  EXPECT_EQ(LimitedError(),
            "ADD_MEM_REG: memory table of 2101248 bytes exceeds max_memory=2M (2097152 bytes), "
            "what one frontend of this port may map");
  EXPECT_EQ(Mapped(), 2 * kMiB);
  // Removed (both references), the region's bytes are free again.
  RemRegion(kMiB, kMiB);
  RemRegion(kMiB, kMiB);
  ASSERT_EQ(LimitedError(), "");
  ASSERT_EQ(LimitedError(), "");
  AddRegion(2 * kMiB, 4096);
  EXPECT_EQ(LimitedError(), "");
  EXPECT_EQ(Mapped(), kMiB + 4096);
}


// ------------------------------------------------------------------------ live upgrade
// Export/Import and ExportPositions/ImportPositions (docs/upgrade.md): session A, set up by a
// frontend over a socket with rings the test drives as the guest's driver, is handed to a
// fresh session B; B goes on exactly where A stopped. The test thread plays both workers.

ino_t InodeOf(int fd) {
  struct stat st {};
  return ::fstat(fd, &st) == 0 ? st.st_ino : 0;
}

// The guest's driver of one queue, either layout.
struct TestDriver {
  bool packed = false;
  virtio::DriverSplitVring split;
  virtio::DriverPackedVring packed_ring;

  Result<void> Init(const GuestMemory& mem, const virtio::DriverRingConfig& c) {
    return packed ? packed_ring.Init(mem, c) : split.Init(mem, c);
  }
  std::optional<uint16_t> Add(const virtio::DriverBuffer& b) {
    std::span<const virtio::DriverBuffer> one(&b, 1);
    return packed ? packed_ring.Add(one) : split.Add(one);
  }
  void Publish() { packed ? packed_ring.Publish() : split.Publish(); }
  virtio::PopStatus PopUsed(virtio::UsedBuffer* u) { return packed ? packed_ring.PopUsed(u) : split.PopUsed(u); }
};

virtio::PopStatus DevicePop(DeviceQueue& q, virtio::DescChain* c) { return q.packed ? q.packed_ring.Pop(c) : q.split.Pop(c); }
void DevicePush(DeviceQueue& q, uint16_t id, uint32_t len) { q.packed ? q.packed_ring.Push(id, len) : q.split.Push(id, len); }
void DeviceFlush(DeviceQueue& q) { q.packed ? (void)q.packed_ring.Flush() : (void)q.split.Flush(); }
// The ring's position: what GET_VRING_BASE would answer.
uint32_t DevicePosition(DeviceQueue& q) { return q.packed ? q.packed_ring.avail_state() : q.split.last_avail_idx(); }

class Handover : public ::testing::TestWithParam<bool> {
 protected:
  static constexpr uint32_t kQueueSize = 16;  // small: the rings wrap within a test
  static constexpr uint64_t kGpa = 0x100000;
  static constexpr uint64_t kBuffers = 0x80000;  // buffers from here, 4 KiB each
  static constexpr uint16_t kMtu = 1400;
  bool packed() const { return GetParam(); }
  static uint64_t RingOffset(uint32_t q) { return 0x10000 * (q + 1); }

  void SetUp() override {
    for (uint32_t q = 0; q < 2; ++q) {
      kick_[q].Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      call_[q].Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      err_[q].Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    }
    SetUpA();
  }

  // A frontend's setup of A (as QEMU's, in its order): protocol features, features, status,
  // MTU, one memory region, queues 0 and 1 with size, base, addresses, call, err, kick, enabled.
  void SetUpA() {
    const uint64_t proto = a_.offered_protocol_features() &
                           (virtio::Bit(kProtoReplyAck) | virtio::Bit(kProtoNetMtu) | virtio::Bit(kProtoMq) |
                            virtio::Bit(kProtoStatus) | virtio::Bit(kProtoRarp));
    features_ = virtio::Bit(virtio::kFVersion1) | virtio::Bit(kFProtocolFeatures) | virtio::Bit(virtio::kNetFMtu) |
                (packed() ? virtio::Bit(virtio::kFRingPacked) : 0);
    features_ &= a_.offered_features();
    peer_.Send(Request::kSetProtocolFeatures, proto);
    peer_.Send(Request::kSetFeatures, features_);
    peer_.Send(Request::kSetStatus, uint64_t{0x0f});
    peer_.Send(Request::kNetSetMtu, uint64_t{kMtu});
    struct {
      MemoryHeader h;
      MemoryRegion r;
    } t{{1, 0}, {kGpa, ram_.size, ram_.uva(), 0}};
    peer_.Send(Request::kSetMemTable, t, {ram_.fd.get()});
    for (uint32_t q = 0; q < 2; ++q) {
      const uint64_t o = RingOffset(q);
      peer_.Send(Request::kSetVringNum, VringState{q, kQueueSize});
      peer_.Send(Request::kSetVringBase, VringState{q, packed() ? 0x80008000u : 0u});
      VringAddr a{};
      a.index = q;
      a.desc_user_addr = ram_.uva(o);
      a.avail_user_addr = ram_.uva(o + 0x1000);
      a.used_user_addr = ram_.uva(o + 0x2000);
      peer_.Send(Request::kSetVringAddr, a);
      peer_.Send(Request::kSetVringCall, uint64_t{q}, {call_[q].get()});
      peer_.Send(Request::kSetVringErr, uint64_t{q}, {err_[q].get()});
      peer_.Send(Request::kSetVringKick, uint64_t{q}, {kick_[q].get()});
      peer_.Send(Request::kSetVringEnable, VringState{q, 1});
    }
    auto r = peer_.Pump(a_);
    ASSERT_TRUE(r) << r.error().message();
    ASSERT_TRUE(a_.queue(0).running);
    ASSERT_TRUE(a_.queue(1).running);
    mem_ = a_.memory();
    for (uint32_t q = 0; q < 2; ++q) {
      const uint64_t o = kGpa + RingOffset(q);
      driver_[q].packed = packed();
      virtio::DriverRingConfig c;
      c.size = kQueueSize;
      c.features = features_;
      c.ring[0] = GuestAddr{o};
      c.ring[1] = GuestAddr{o + 0x1000};
      c.ring[2] = GuestAddr{o + 0x2000};
      auto d = driver_[q].Init(*mem_, c);
      ASSERT_TRUE(d) << d.error().message();
    }
  }

  // The driver adds n one-buffer chains to queue q (readable on the transmitq 1, writable on
  // the receiveq 0), each `Len(seq)` bytes long so that the device's pop says which one it is.
  static uint32_t Len(uint32_t seq) { return 60 + seq; }
  void Add(uint32_t q, uint32_t n) {
    for (uint32_t i = 0; i < n; ++i) {
      const uint32_t seq = next_seq_[q]++;
      auto id = driver_[q].Add({GuestAddr{kGpa + kBuffers + ((q * 64 + seq % 64) << 12)}, Len(seq), q == 0});
      ASSERT_TRUE(id) << "ring full";
    }
    driver_[q].Publish();
  }
  // Session s pops n chains of queue q, expecting the driver's next ones in order.
  void Pop(BackendSession& s, uint32_t q, uint32_t n, std::vector<uint16_t>* ids) {
    auto c = std::make_unique<virtio::DescChain>();
    for (uint32_t i = 0; i < n; ++i) {
      ASSERT_EQ(DevicePop(s.queue(q), c.get()), virtio::PopStatus::kOk) << "queue " << q << " chain " << i;
      const uint32_t seq = popped_seq_[q]++;
      EXPECT_EQ(q == 0 ? c->writable_bytes : c->readable_bytes, Len(seq)) << "queue " << q << " chain " << i;
      ids->push_back(c->id);
    }
  }
  void Complete(BackendSession& s, uint32_t q, const std::vector<uint16_t>& ids) {
    for (uint16_t id : ids) DevicePush(s.queue(q), id, q == 0 ? 60 : 0);
    DeviceFlush(s.queue(q));
    for (size_t i = 0; i < ids.size(); ++i) {
      virtio::UsedBuffer u;
      ASSERT_EQ(driver_[q].PopUsed(&u), virtio::PopStatus::kOk) << "queue " << q << " used " << i;
      EXPECT_EQ(u.id, ids[i]);
    }
  }
  // n chains through queue q of session s: added, popped, completed, seen used.
  void Cycle(BackendSession& s, uint32_t q, uint32_t n) {
    Add(q, n);
    std::vector<uint16_t> ids;
    Pop(s, q, n, &ids);
    Complete(s, q, ids);
  }
  bool Empty(BackendSession& s, uint32_t q) {
    auto c = std::make_unique<virtio::DescChain>();
    return DevicePop(s.queue(q), c.get()) == virtio::PopStatus::kEmpty;
  }

  // A record of A as it stands (a fresh one each call: Import takes its fds).
  HandoverRecord Export() {
    HandoverRecord r;
    auto e = a_.Export(&r);
    EXPECT_TRUE(e) << e.error().message();
    return r;
  }
  HandoverRecord Positions() {
    HandoverRecord r;
    auto e = a_.ExportPositions(&r);
    EXPECT_TRUE(e) << e.error().message();
    return r;
  }

  UniqueFd kick_[2], call_[2], err_[2];
  uint64_t features_ = 0;
  NoWorker worker_;
  SharedRam ram_{1 << 20};
  VhostPeer peer_;
  BackendSession a_{BackendConfig{2, 1500}, &worker_};
  BackendSession b_{BackendConfig{2, 1500}, &worker_};
  std::shared_ptr<const GuestMemory> mem_;  // A's mapping, the driver's view
  TestDriver driver_[2];
  uint32_t next_seq_[2] = {0, 0};
  uint32_t popped_seq_[2] = {0, 0};
};

INSTANTIATE_TEST_SUITE_P(Layouts, Handover, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "packed" : "split"; });

TEST_P(Handover, RunningRingsGoOnExactlyWhereTheyStopped) {
  Cycle(a_, 1, 10);
  Cycle(a_, 0, 6);
  ASSERT_NE(DevicePosition(a_.queue(1)), packed() ? 0x8000u : 0u);
  HandoverRecord state = Export();
  ASSERT_TRUE(b_.Import(state)) << "import";
  // Built and checked, but not started: A goes on meanwhile.
  EXPECT_FALSE(b_.queue(0).running);
  EXPECT_FALSE(b_.queue(1).running);
  EXPECT_EQ(b_.features(), a_.features());
  EXPECT_TRUE(b_.has_features());
  EXPECT_EQ(b_.protocol_features(), a_.protocol_features());
  EXPECT_EQ(b_.mtu(), kMtu);
  EXPECT_EQ(b_.mtu(), a_.mtu());
  EXPECT_EQ(b_.status(), a_.status());
  EXPECT_EQ(b_.status(), 0x0f);
  EXPECT_EQ(b_.net_hdr_len(), a_.net_hdr_len());
  ASSERT_NE(b_.memory(), nullptr);
  EXPECT_EQ(b_.memory()->regions().size(), 1u);
  // A moves on (past the end of the ring: a packed ring's wrap counter flips), and the driver
  // adds two chains A does not take.
  Cycle(a_, 1, 9);
  Cycle(a_, 0, 3);
  Add(1, 2);
  HandoverRecord pos = Positions();
  auto ip = b_.ImportPositions(pos);
  ASSERT_TRUE(ip) << ip.error().message();
  ASSERT_TRUE(b_.queue(0).running);
  ASSERT_TRUE(b_.queue(1).running);
  EXPECT_EQ(b_.queue(0).packed, packed());
  for (uint32_t q = 0; q < 2; ++q) {
    EXPECT_EQ(DevicePosition(b_.queue(q)), DevicePosition(a_.queue(q))) << q;
    // The same doorbells: the frontend's eventfds, not copies.
    EXPECT_EQ(InodeOf(b_.queue(q).kick_fd()), InodeOf(kick_[q].get())) << q;
    EXPECT_EQ(InodeOf(b_.queue(q).call.get()), InodeOf(call_[q].get())) << q;
    EXPECT_EQ(InodeOf(b_.queue(q).err.get()), InodeOf(err_[q].get())) << q;
  }
  // B takes the two chains A left, then one the driver adds now: none lost, none repeated.
  std::vector<uint16_t> ids;
  Pop(b_, 1, 2, &ids);
  Add(1, 1);
  Pop(b_, 1, 1, &ids);
  EXPECT_TRUE(Empty(b_, 1));
  Complete(b_, 1, ids);
  // And on and on, around the ring again, on both queues.
  for (int i = 0; i < 3; ++i) {
    Cycle(b_, 1, 10);
    Cycle(b_, 0, 10);
  }
  EXPECT_TRUE(Empty(b_, 0));
  // The call reaches the frontend's eventfd.
  uint64_t v = 0;
  while (::read(call_[1].get(), &v, sizeof v) == 8) {
  }
  ASSERT_TRUE(b_.queue(1).Call());
  EXPECT_EQ(::read(call_[1].get(), &v, sizeof v), 8);
}

TEST_P(Handover, PolledKickAndAQueueNeverStartedGoOverToo) {
  // Queue 2 (receiveq 1): size and addresses, not enabled, no kick: handed over as it is.
  peer_.Send(Request::kSetVringNum, VringState{2, kQueueSize});
  ASSERT_TRUE(peer_.Pump(a_));
  HandoverRecord state = Export();
  ASSERT_TRUE(b_.Import(state));
  HandoverRecord pos = Positions();
  ASSERT_TRUE(b_.ImportPositions(pos));
  EXPECT_TRUE(b_.queue(1).running);
  EXPECT_FALSE(b_.queue(2).running);
  EXPECT_EQ(b_.queue(2).num, kQueueSize);
}

TEST_P(Handover, ChainInFlightRefusesTheExport) {
  Cycle(a_, 1, 3);
  Add(1, 1);
  std::vector<uint16_t> ids;
  Pop(a_, 1, 1, &ids);
  HandoverRecord r;
  auto e = a_.Export(&r);
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message().find("in flight"), std::string::npos) << e.error().message();
  EXPECT_NE(e.error().message().find("queue 1"), std::string::npos) << e.error().message();
  EXPECT_TRUE(r.values().empty());  // nothing written
  e = a_.ExportPositions(&r);
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message().find("in flight"), std::string::npos) << e.error().message();
  // Pushed but not published: still in flight.
  DevicePush(a_.queue(1), ids[0], 0);
  HandoverRecord r2;
  e = a_.Export(&r2);
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message().find("in flight"), std::string::npos);
  DeviceFlush(a_.queue(1));
  virtio::UsedBuffer u;
  ASSERT_EQ(driver_[1].PopUsed(&u), virtio::PopStatus::kOk);
  HandoverRecord r3;
  EXPECT_TRUE(a_.Export(&r3));
}

TEST_P(Handover, RingBrokenBeforeThePositionsStaysStopped) {
  Cycle(a_, 1, 5);
  HandoverRecord state = Export();
  ASSERT_TRUE(b_.Import(state));
  // The driver breaks queue 1 meanwhile: split, its avail index jumps by more than the ring;
  // packed, a descriptor with an id past the ring.
  if (packed()) {
    Add(1, 1);
    const uint16_t bad_id = 0xffff;  // VirtqPackedDesc::id, at byte 12 of the descriptor
    std::memcpy(ram_.host + RingOffset(1) + 16 * (5 % kQueueSize) + 12, &bad_id, sizeof bad_id);
  } else {
    auto* idx = reinterpret_cast<uint16_t*>(ram_.host + RingOffset(1) + 0x1000 + 2);
    *idx = static_cast<uint16_t>(*idx + kQueueSize + 1);
  }
  auto c = std::make_unique<virtio::DescChain>();
  ASSERT_EQ(DevicePop(a_.queue(1), c.get()), virtio::PopStatus::kBroken);
  HandoverRecord pos = Positions();
  EXPECT_TRUE(pos.Has("s.p.1.broken"));
  EXPECT_FALSE(pos.Has("s.p.1.base"));
  ASSERT_TRUE(b_.ImportPositions(pos));
  EXPECT_FALSE(b_.queue(1).running);  // until the frontend sets it up again
  EXPECT_TRUE(b_.queue(0).running);
  EXPECT_EQ(b_.queue(1).kick_fd(), -1);
  // A ring broken before the export: its kick is not handed over at all.
  BackendSession b2{BackendConfig{2, 1500}, &worker_};
  HandoverRecord state2 = Export();
  EXPECT_FALSE(state2.Has("s.q.1.kick"));
  EXPECT_TRUE(state2.Has("s.q.0.kick"));
  ASSERT_TRUE(b2.Import(state2));
  HandoverRecord pos2 = Positions();
  // Still broken at the positions: nothing to start, and not an error (a guest that broke
  // one of its rings must not make every upgrade fail).
  EXPECT_TRUE(pos2.Has("s.p.1.broken"));
  ASSERT_TRUE(b2.ImportPositions(pos2));
  EXPECT_FALSE(b2.queue(1).running);
  EXPECT_TRUE(b2.queue(0).running);
  // A base for a queue whose kick did not come: refused.
  BackendSession b3{BackendConfig{2, 1500}, &worker_};
  HandoverRecord state3 = Export();
  ASSERT_TRUE(b3.Import(state3));
  HandoverRecord pos3 = Positions();
  pos3.Set("s.p.1.base", 0);
  auto e = b3.ImportPositions(pos3);
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().message(), "queue 1 has a position but was not set up");
  b3.Reset();
  b2.Reset();
}

TEST_P(Handover, HostileRecordsAreRefusedAndTheSessionRecovers) {
  Cycle(a_, 1, 5);
  Cycle(a_, 0, 2);
  const size_t fds_before = OpenFds();
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd pipe_r(p[0]), pipe_w(p[1]);
  const uint64_t max_packed_pos = packed() ? (0x8000 | (kQueueSize + 1)) : 0;

  struct Case {
    const char* what;
    std::function<void(HandoverRecord&)> state;  // changes the Export record
    std::function<void(HandoverRecord&)> pos;    // changes the positions (nullptr: Import fails)
    std::string error;                           // a part of the error
  };
  auto fd_of = [&](HandoverRecord& r, int fd) {
    r.AddOwnedFd(UniqueFd(::fcntl(fd, F_DUPFD_CLOEXEC, 0)));
    return r.fds().size() - 1;
  };
  const std::vector<Case> cases = {
      {"missing features", [](HandoverRecord& r) { r.mutable_values().erase("s.features"); }, nullptr,
       "handover: no value s.features"},
      {"missing region gpa", [](HandoverRecord& r) { r.mutable_values().erase("s.region.0.gpa"); }, nullptr,
       "handover: no value s.region.0.gpa"},
      {"missing region fd", [](HandoverRecord& r) { r.mutable_values().erase("s.region.0.fd"); }, nullptr,
       "handover: no value s.region.0.fd"},
      {"status not a number", [](HandoverRecord& r) { r.SetText("s.status", "up"); }, nullptr,
       "handover: s.status = 'up' is not a number"},
      {"too many regions", [](HandoverRecord& r) { r.Set("s.regions", kMaxMemSlots + 1); }, nullptr,
       "handover: s.regions = 65 is above 64"},
      {"more regions than there are", [](HandoverRecord& r) { r.Set("s.regions", 2); }, nullptr,
       "handover: no value s.region.1.gpa"},
      {"region refs", [](HandoverRecord& r) { r.Set("s.region.0.refs", kMaxRegionRefs + 1); }, nullptr,
       "s.region.0.refs"},
      {"region outside its file",
       [&](HandoverRecord& r) { r.Set("s.region.0.size", ram_.size * 2); }, nullptr, "ADD_MEM_REG"},
      {"region fd is a pipe", [&](HandoverRecord& r) { r.Set("s.region.0.fd", fd_of(r, pipe_r.get())); }, nullptr,
       "is not a memfd, tmpfs or hugetlbfs file"},
      {"region fd index out of range", [](HandoverRecord& r) { r.Set("s.region.0.fd", 1000); }, nullptr,
       "s.region.0.fd = 1000 is above"},
      {"call fd taken twice", [](HandoverRecord& r) { r.SetText("s.q.1.call", *r.GetText("s.q.0.call")); },
       nullptr, "names no file descriptor"},
      {"call fd is a pipe", [&](HandoverRecord& r) { r.Set("s.q.1.call", fd_of(r, pipe_w.get())); }, nullptr,
       "SET_VRING_CALL: queue 1: the fd is not an eventfd"},
      {"queue size above the most", [](HandoverRecord& r) { r.Set("s.q.1.num", 65536); }, nullptr,
       "handover: s.q.1.num = 65536 is above 32768"},
      {"base above 16 bits", [](HandoverRecord& r) { r.Set("s.q.1.base", 0x10000); }, nullptr,
       "handover: s.q.1.base = 65536 is above 65535"},
      {"ring outside memory", [&](HandoverRecord& r) { r.Set("s.q.1.desc", ram_.uva(ram_.size - 64)); },
       [](HandoverRecord&) {}, "is not inside one memory region"},
      {"kick is a pipe", [&](HandoverRecord& r) { r.Set("s.q.1.kick", fd_of(r, pipe_r.get())); },
       [](HandoverRecord&) {}, "SET_VRING_KICK: queue 1: the fd is not an eventfd"},
      {"kick is a memfd", [&](HandoverRecord& r) { r.Set("s.q.0.kick", fd_of(r, ram_.fd.get())); },
       [](HandoverRecord&) {}, "SET_VRING_KICK: queue 0: the fd is not an eventfd"},
      {"position above 16 bits", [](HandoverRecord&) {}, [](HandoverRecord& r) { r.Set("s.p.1.base", 0x10000); },
       "handover: s.p.1.base = 65536 is above 65535"},
      {"position not a number", [](HandoverRecord&) {}, [](HandoverRecord& r) { r.SetText("s.p.0.base", "-1"); },
       "handover: s.p.0.base = '-1' is not a number"},
      {"position for a queue not set up", [](HandoverRecord& r) { r.mutable_values().erase("s.q.1.kick"); },
       [](HandoverRecord&) {}, "queue 1 has a position but was not set up"},
      {"malformed rarp", [](HandoverRecord& r) { r.Set("s.rarp", 1ull << 50); }, nullptr,
       "handover: s.rarp is malformed"},
      {"malformed positions rarp", [](HandoverRecord&) {}, [](HandoverRecord& r) { r.Set("s.p.rarp", 1ull << 50); },
       "handover: s.p.rarp is malformed"},
  };
  std::vector<Case> all = cases;
  if (packed()) {
    // A base past the end of the ring (position 17 of 16) does not fit a packed ring.
    all.push_back({"base past a packed ring", [](HandoverRecord&) {},
                   [=](HandoverRecord& r) { r.Set("s.p.1.base", max_packed_pos); }, "queue 1"});
    all.push_back({"state base past a packed ring", [=](HandoverRecord& r) { r.Set("s.q.1.base", max_packed_pos); },
                   [](HandoverRecord& r) { r.mutable_values().erase("s.p.1.base"); }, "queue 1"});
  } else {
    all.push_back({"queue size not a power of two", [](HandoverRecord& r) { r.Set("s.q.1.num", 100); }, nullptr,
                   "SET_VRING_NUM: queue 1 size 100"});
    // A split ring's base more than the ring ahead of its used index.
    all.push_back({"base far ahead of a split ring", [](HandoverRecord&) {},
                   [](HandoverRecord& r) { r.Set("s.p.1.base", 5 + kQueueSize + 1); }, "queue 1"});
  }
  for (const Case& c : all) {
    SCOPED_TRACE(c.what);
    {
      HandoverRecord state = Export();
      c.state(state);
      auto r = b_.Import(state);
      if (!c.pos) {
        ASSERT_FALSE(r) << "imported";
        EXPECT_NE(r.error().message().find(c.error), std::string::npos) << r.error().message();
      } else {
        ASSERT_TRUE(r) << r.error().message();
        HandoverRecord pos = Positions();
        c.pos(pos);
        auto rp = b_.ImportPositions(pos);
        ASSERT_FALSE(rp) << "positions imported";
        EXPECT_NE(rp.error().message().find(c.error), std::string::npos) << rp.error().message();
      }
      b_.Reset();
      EXPECT_EQ(b_.memory(), nullptr);
    }
    // Nothing of the record is left open (every fd taken or not closed with it or by Reset).
    EXPECT_EQ(OpenFds(), fds_before + 2);
  }
  // The session is as new: a good record goes through.
  HandoverRecord state = Export();
  ASSERT_TRUE(b_.Import(state));
  HandoverRecord pos = Positions();
  ASSERT_TRUE(b_.ImportPositions(pos));
  EXPECT_TRUE(b_.queue(1).running);
  Cycle(b_, 1, 3);
}

TEST_P(Handover, QueueOutsideTheConfigIsRefused) {
  // A record of a session with more queue pairs than this one has (another spec, or a
  // hostile record): refused, not silently cut down to the queues this one has.
  BackendSession one_pair{BackendConfig{1, 1500}, &worker_};
  HandoverRecord state = Export();
  state.Set("s.q.2.num", kQueueSize);
  state.Set("s.q.2.base", 0);
  state.Set("s.q.2.enabled", 1);
  auto r = one_pair.Import(state);
  ASSERT_FALSE(r) << "imported";
  EXPECT_NE(r.error().message().find("s.q.2"), std::string::npos) << r.error().message();
  one_pair.Reset();
  HandoverRecord state2 = Export();
  ASSERT_TRUE(b_.Import(state2));
  HandoverRecord pos = Positions();
  pos.Set("s.p.9.base", 0);
  auto rp = b_.ImportPositions(pos);
  ASSERT_FALSE(rp) << "positions imported";
  EXPECT_NE(rp.error().message().find("s.p.9"), std::string::npos) << rp.error().message();
}

}  // namespace
}  // namespace nicmux::vhost
