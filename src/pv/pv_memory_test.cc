// Registered memory (MEM_ADD / MEM_DEL on the socket, docs/pv-protocol.md) against a driver
// written straight on the ABI: files of the driver's own memory that descriptors name as region
// 1..64, so that nicmuxd copies straight from and into them. The refusals (each naming the
// reason, the device working on), descriptors that lie about registered memory (a broken
// device naming the field), and a file the driver shrinks under nicmuxd's copy (recovered: a
// broken device, nicmuxd alive, a quarantine when the driver hangs up).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "base/pausable.h"
#include "packet/offload_ops.h"
#include "pv/pv_abi.h"
#include "port/registry.h"
#include "pv/pv_port.h"
#include "tests/support/frames.h"
#include "tests/support/pv_driver.h"

namespace nicmux {
namespace {

using testing::Bytes;
using Driver = testing::RawPvDriver;

Bytes Frame(uint32_t len, uint8_t seed) {
  Bytes f(len);
  const uint8_t hdr[14] = {2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x88, 0xb5};
  std::memcpy(f.data(), hdr, std::min<uint32_t>(len, 14));
  for (uint32_t i = 14; i < len; ++i) f[i] = std::byte(uint8_t(seed + i));
  return f;
}

// The driver's own memory: a memfd it maps and hands to nicmuxd.
struct DriverMemory {
  explicit DriverMemory(uint64_t bytes, const char* name = "pv-driver-mem") : size(bytes) {
    fd = UniqueFd(::memfd_create(name, MFD_CLOEXEC));
    EXPECT_TRUE(fd.valid());
    EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(bytes)), 0);
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    EXPECT_NE(p, MAP_FAILED);
    base = static_cast<std::byte*>(p);
  }
  ~DriverMemory() { ::munmap(base, size); }
  UniqueFd fd;
  uint64_t size;
  std::byte* base;
};

class PvMemoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto l = EventLoop::Create();
    ASSERT_TRUE(l.has_value());
    loop_ = std::move(*l);
    char dir[] = "/tmp/nmxpvmXXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    path_ = std::string(dir) + "/pv.sock";
    Make({});
  }
  void Make(PvPortOptions o) {
    port_.reset();
    o.name = "pv0";
    o.socket_path = path_;
    o.ring = 64;
    o.mac[0] = 2;
    o.mac[5] = 9;
    auto p = CreatePvPort(o, loop_.get(), &workers_);
    ASSERT_TRUE(p.has_value()) << p.error().message();
    port_ = std::move(*p);
  }
  bool WaitFor(const std::function<bool()>& f) {
    for (int i = 0; i < 200 && !f(); ++i) loop_->RunOnce(10);
    return f();
  }
  std::string Detail(const std::string& key) const {
    for (const auto& [k, v] : port_->Details()) {
      if (k == key) return std::holds_alternative<std::string>(v) ? std::get<std::string>(v) : "?";
    }
    return "";
  }

  std::unique_ptr<EventLoop> loop_;
  NoWorker workers_;
  std::string path_;
  std::unique_ptr<Port> port_;
};

TEST(PvMemoryOption, MaxMemoryIsASize) {
  PortRegistry r;
  r.Add(PvPortKind());
  auto check = [&](const std::string& text) {
    auto s = ParsePortSpec(text);
    if (!s) return s.error().message();
    auto k = r.Check(*s);
    return k ? std::string("(accepted)") : k.error().message();
  };
  EXPECT_EQ(check("pv:a:socket=/s,max_memory=16G"), "(accepted)");
  EXPECT_EQ(check("pv:a:socket=/s,max_memory=1K"), "port a: max_memory=1K: outside 1M..4T");
  EXPECT_EQ(check("pv:a:socket=/s,max_memory=5T"), "port a: max_memory=5T: outside 1M..4T");
}

TEST_F(PvMemoryTest, TheHeaderOffersIt) {
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  EXPECT_EQ(d.h()->features & NMX_PV_FEATURE_MEM_REGIONS, NMX_PV_FEATURE_MEM_REGIONS);
  EXPECT_EQ(d.h()->max_mem_bytes, kPvDefaultMaxMemory);
  EXPECT_EQ(Detail("registered_memory"), "0 regions, 0");
  bool caps = false;
  for (const auto& [k, v] : port_->DeviceCaps()) caps |= k == "max_memory" && std::get<std::string>(v) == "64G";
  EXPECT_TRUE(caps);
}

// Frames both ways in the driver's own memory: the host takes a tx frame where the descriptor
// says in region 1 (no copy before the switch's), and copies a frame straight into a buffer
// posted in region 1; region 0's buffers work alongside.
TEST_F(PvMemoryTest, FramesBothWaysInRegisteredMemory) {
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  DriverMemory mem(1 << 20);
  nmx_pv_sock_resp r = d.MemAdd(1, mem.fd.get(), 0, mem.size, reinterpret_cast<uint64_t>(mem.base));
  ASSERT_EQ(r.status, 0) << r.reason;
  EXPECT_EQ(r.type, uint32_t{NMX_PV_SOCK_MEM_ADD});
  EXPECT_EQ(r.seq, d.sock_seq);
  EXPECT_EQ(r.id, 1u);
  EXPECT_EQ(Detail("registered_memory"), "1 regions, 1M");
  ASSERT_EQ(d.Start(), "");

  const Bytes f1 = Frame(1500, 1), f0 = Frame(60, 2);
  std::memcpy(mem.base + 4096 + 128, f1.data(), f1.size());
  d.PostTxAt(0, 1, 4096 + 128, 1500);
  d.PostTx(0, 0, f0);
  // The last byte of the region, exactly.
  const Bytes f2 = Frame(64, 3);
  std::memcpy(mem.base + mem.size - 64, f2.data(), 64);
  d.PostTxAt(0, 1, mem.size - 64, 64);
  Batch b;
  ASSERT_EQ(port_->Rx(0, b, kBurst), 3u);
  for (auto [i, want] : {std::pair{0u, &f1}, std::pair{1u, &f0}, std::pair{2u, &f2}}) {
    Bytes got(b[i].len);
    CopyPacketTo(b[i], got.data());
    EXPECT_EQ(got, *want) << i;
  }
  // nicmuxd's view of region 1 is its own mapping of the file, not the driver's.
  EXPECT_NE(b[0].segs[0].data, mem.base + 4096 + 128);
  port_->RxDone(0, b, 3);
  EXPECT_EQ(d.tx(0)->done, 3u);

  d.PostRxAt(0, 1, 65536, 2048);
  d.PostRx(0, 5, 2048);
  d.PostRxAt(0, 1, 131072, 100);  // too small for what comes: stays posted
  testing::SplitPacket a(f1, {700}), c(f0, {});
  const PacketRef* ptrs[3] = {&a.p, &c.p, &a.p};
  EXPECT_EQ(port_->Tx(0, {ptrs, 3}), 3u);
  EXPECT_EQ(d.rx(0)->done, 2u);
  EXPECT_EQ(std::memcmp(mem.base + 65536, f1.data(), f1.size()), 0);
  EXPECT_EQ(d.rx(0)->desc[0].len, 1500u);
  EXPECT_EQ(d.rx(0)->desc[0].region, 1u);
  EXPECT_EQ(d.rx(0)->desc[0].offset, 65536u);  // never written by the host
  EXPECT_EQ(std::memcmp(d.base + d.buf(5), f0.data(), f0.size()), 0);
  EXPECT_EQ(port_->DropsFor(DropReason::kTooBig), 1u);
  EXPECT_EQ(port_->State(), "running");
}

// Each refusal names its reason and changes nothing; the device works on.
TEST_F(PvMemoryTest, RefusalsNameTheReason) {
  PvPortOptions o;
  o.max_memory = 1 << 20;
  Make(o);
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  DriverMemory mem(1 << 20), small(8192);
  auto expect = [&](const nmx_pv_sock_resp& r, int32_t status, const std::string& says) {
    EXPECT_EQ(r.status, status) << r.reason;
    EXPECT_NE(std::string(r.reason).find(says), std::string::npos) << r.reason;
  };
  expect(d.MemAdd(0, mem.fd.get(), 0, 4096), -EINVAL, "MEM_ADD: region id 0 is outside 1..64");
  expect(d.MemAdd(65, mem.fd.get(), 0, 4096), -EINVAL, "region id 65 is outside 1..64");
  expect(d.MemAdd(1, mem.fd.get(), 0, 0), -EINVAL, "region 1 of 0 bytes");
  expect(d.MemAdd(1, small.fd.get(), 0, 16384), -EINVAL, "bytes 0 + 16384 are past the end of the file (8192 bytes)");
  expect(d.MemAdd(1, small.fd.get(), 8192, 4096), -EINVAL, "are past the end of the file");
  // u64 edges: no sum wraps into the file.
  expect(d.MemAdd(1, small.fd.get(), ~uint64_t{0} - 4095, 4096), -EINVAL, "past the end of the file (8192 bytes)");
  expect(d.MemAdd(1, small.fd.get(), 4096, ~uint64_t{0} - 4095), -ENOSPC, "over max_memory=1M");
  expect(d.MemAdd(1, mem.fd.get(), 100, 4096), -EINVAL, "must be multiples of the file's page size 4096");
  expect(d.MemAdd(1, mem.fd.get(), 0, 1000), -EINVAL, "must be multiples of the file's page size 4096");
  expect(d.MemAdd(1, mem.fd.get(), 0, 2 << 20), -ENOSPC, "over max_memory=1M (0 bytes registered)");
  {
    UniqueFd efd(::eventfd(0, EFD_CLOEXEC));
    expect(d.MemAdd(1, efd.get(), 0, 4096), -EINVAL, "the fd is not a memfd, tmpfs or hugetlbfs file");
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    expect(d.MemAdd(1, sv[0], 0, 4096), -EINVAL, "the fd is not a memfd, tmpfs or hugetlbfs file");
    ::close(sv[0]);
    ::close(sv[1]);
  }
  // A regular file that is not memory (this machine's /tmp is on a disk; a FUSE mount the
  // driver serves is the attack): refused before anything touches its filesystem.
  {
    char path[] = "/var/tmp/nmxpvdiskXXXXXX";
    UniqueFd disk(::mkstemp(path));
    ASSERT_TRUE(disk.valid());
    ::unlink(path);
    ASSERT_EQ(::ftruncate(disk.get(), 8192), 0);
    if (::fcntl(disk.get(), F_GET_SEALS) < 0) {  // (unless /var/tmp is a tmpfs here)
      expect(d.MemAdd(1, disk.get(), 0, 8192), -EINVAL, "the fd is not a memfd, tmpfs or hugetlbfs file");
    }
  }
  // Mapped read-only (the driver's memfd opened again O_RDONLY): mmap's own refusal, with its
  // errno.
  {
    const std::string self = "/proc/self/fd/" + std::to_string(small.fd.get());
    UniqueFd ro(::open(self.c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(ro.valid());
    expect(d.MemAdd(1, ro.get(), 0, 8192), -EACCES, "MEM_ADD: region 1: mmap");
  }
  // The fd count: none, two.
  nmx_pv_sock_req req{};
  req.type = NMX_PV_SOCK_MEM_ADD;
  req.seq = 77;
  req.id = 1;
  req.size = 4096;
  ASSERT_TRUE(d.SockSend(req));
  expect(d.SockAnswer(), -EINVAL, "MEM_ADD: 0 fds with the request, not 1");
  ASSERT_TRUE(d.SockSend(req, {mem.fd.get(), small.fd.get()}));
  nmx_pv_sock_resp r = d.SockAnswer();
  expect(r, -EINVAL, "MEM_ADD: 2 fds with the request, not 1");
  EXPECT_EQ(r.seq, 77u);
  ASSERT_TRUE(d.SockSend(req, std::vector<int>(8, mem.fd.get())));
  expect(d.SockAnswer(), -EINVAL, "more than 4 fds");
  req.type = NMX_PV_SOCK_MEM_DEL;
  ASSERT_TRUE(d.SockSend(req, {mem.fd.get()}));
  expect(d.SockAnswer(), -EINVAL, "MEM_DEL: 1 fds with the request, not 0");
  req.type = 9;
  ASSERT_TRUE(d.SockSend(req));
  expect(d.SockAnswer(), -EINVAL, "unknown socket request type 9");
  expect(d.MemDel(3), -ENOENT, "MEM_DEL: region 3 is not registered");
  expect(d.MemDel(100), -EINVAL, "region id 100 is outside 1..64");

  // The limit, exactly; a second region over it; room again after MEM_DEL.
  ASSERT_EQ(d.MemAdd(1, mem.fd.get(), 0, 1 << 20).status, 0);
  expect(d.MemAdd(1, small.fd.get(), 0, 4096), -EEXIST, "MEM_ADD: region 1 is registered already");
  expect(d.MemAdd(2, small.fd.get(), 0, 4096), -ENOSPC, "(1048576 bytes registered)");
  ASSERT_EQ(d.MemDel(1).status, 0);
  ASSERT_EQ(d.MemAdd(2, small.fd.get(), 0, 4096).status, 0);
  EXPECT_EQ(Detail("registered_memory"), "1 regions, 4K");

  // While started: neither.
  ASSERT_EQ(d.Start(), "");
  expect(d.MemAdd(3, small.fd.get(), 0, 4096), -EBUSY, "MEM_ADD: the device is started; STOP first");
  expect(d.MemDel(2), -EBUSY, "MEM_DEL: the device is started; STOP first");
  ASSERT_EQ(d.Call(NMX_PV_MSG_STOP).status, 0);
  ASSERT_EQ(d.MemAdd(3, small.fd.get(), 4096, 4096).status, 0);
  ASSERT_EQ(d.MemDel(2).status, 0);
  ASSERT_EQ(d.Call(NMX_PV_MSG_START).status, 0);

  // The device works on, in region 3 too.
  const Bytes f = Frame(100, 4);

  d.PostTx(0, 0, f);
  d.PostTxAt(0, 3, 0, 100);
  Batch b;
  EXPECT_EQ(port_->Rx(0, b, kBurst), 2u);
  port_->RxDone(0, b, 2);
  EXPECT_EQ(port_->State(), "running");
  EXPECT_EQ(d.Call(NMX_PV_MSG_GET_INFO).status, 0);
}

// 64 regions, the most; each usable.
TEST_F(PvMemoryTest, SixtyFourRegions) {
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  DriverMemory mem(64 * 4096);
  for (uint32_t id = 1; id <= NMX_PV_MAX_MEM_REGIONS; ++id) {
    ASSERT_EQ(d.MemAdd(id, mem.fd.get(), (id - 1) * 4096, 4096).status, 0) << id;
  }
  EXPECT_EQ(Detail("registered_memory"), "64 regions, 256K");
  ASSERT_EQ(d.Start(), "");
  for (uint32_t id = 1; id <= NMX_PV_MAX_MEM_REGIONS; ++id) {
    const Bytes f = Frame(64, static_cast<uint8_t>(id));
    std::memcpy(mem.base + (id - 1) * 4096 + 4000, f.data(), 64);
    d.PostTxAt(0, static_cast<uint16_t>(id), 4000, 64);
    Batch b;
    ASSERT_EQ(port_->Rx(0, b, kBurst), 1u) << id;
    Bytes got(64);
    CopyPacketTo(b[0], got.data());
    EXPECT_EQ(got, f) << id;
    port_->RxDone(0, b, 1);
  }
}

// The request's bytes may come in pieces (a stream), the fd with the first; the answers are in
// order with the driver's seq.
TEST_F(PvMemoryTest, RequestsInPieces) {
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  DriverMemory mem(65536);
  nmx_pv_sock_req req{};
  req.type = NMX_PV_SOCK_MEM_ADD;
  req.seq = 41;
  req.id = 9;
  req.size = 65536;
  ASSERT_TRUE(d.SockSend(req, {mem.fd.get()}, 7));
  nmx_pv_sock_resp r = d.SockAnswer();
  EXPECT_EQ(r.status, 0) << r.reason;
  EXPECT_EQ(r.seq, 41u);
  EXPECT_EQ(r.id, 9u);
  // Two requests back to back, then both answers.
  req.type = NMX_PV_SOCK_MEM_DEL;
  req.seq = 42;
  ASSERT_TRUE(d.SockSend(req));
  req.seq = 43;
  ASSERT_TRUE(d.SockSend(req));
  r = d.SockAnswer();
  EXPECT_EQ(r.seq, 42u);
  EXPECT_EQ(r.status, 0);
  r = d.SockAnswer();
  EXPECT_EQ(r.seq, 43u);
  EXPECT_EQ(r.status, -ENOENT);
}

// Descriptors that lie about registered memory break the device, naming the region and why; a
// deleted region is gone; a new connection has none.
TEST_F(PvMemoryTest, DescriptorsIntoRegisteredMemoryAreChecked) {
  DriverMemory mem(65536);
  struct Case {
    const char* name;
    bool rx;  // the lie is in the rx ring (Tx finds it)
    uint16_t region;
    uint64_t offset;
    uint32_t len;
    const char* says;
  };
  const Case cases[] = {
      {"unregistered id", false, 2, 0, 64, "tx ring 0 descriptor 0: region 2 offset 0 len 64 names no registered region"},
      {"id past the table", false, 65, 0, 64, "region 65 offset 0 len 64 names no registered region"},
      {"id 0xffff", false, 0xffff, 0, 64, "region 65535 offset 0 len 64 names no registered region"},
      {"past the end", false, 1, 65536 - 63, 64, "is outside registered region 1 (65536 bytes)"},
      {"offset past the end", false, 1, 65537, 0, "is outside registered region 1"},
      {"wraps", false, 1, ~uint64_t{0} - 10, 64, "is outside registered region 1"},
      {"rx past the end", true, 1, 65000, 2048, "rx ring 0 descriptor 0: region 1 offset 65000 len 2048 is outside"},
      {"rx unregistered", true, 64, 0, 2048, "region 64 offset 0 len 2048 names no registered region"},
      {"deleted", false, 3, 0, 64, "region 3 offset 0 len 64 names no registered region"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    Driver d(loop_.get());
    ASSERT_EQ(d.Connect(path_), "");
    ASSERT_EQ(d.MemAdd(1, mem.fd.get(), 0, mem.size).status, 0);
    ASSERT_EQ(d.MemAdd(3, mem.fd.get(), 0, 4096).status, 0);
    ASSERT_EQ(d.MemDel(3).status, 0);
    ASSERT_EQ(d.Start(), "");
    if (c.rx) {
      d.PostRxAt(0, c.region, c.offset, c.len);
      const Bytes f = Frame(60, 0);
      testing::SplitPacket sp(f, {});
      const PacketRef* ptrs[1] = {&sp.p};
      EXPECT_EQ(port_->Tx(0, {ptrs, 1}), 1u);  // dropped: never a stall
    } else {
      d.PostTxAt(0, c.region, c.offset, c.len);
      Batch b;
      EXPECT_EQ(port_->Rx(0, b, kBurst), 0u);
      port_->RxDone(0, b, 0);
    }
    EXPECT_EQ(d.h()->status, NMX_PV_STATUS_BROKEN);
    EXPECT_NE(std::string(d.h()->broken_reason).find(c.says), std::string::npos) << d.h()->broken_reason;
    EXPECT_EQ(port_->State(), "broken");
    // Broken: memory requests are refused too.
    nmx_pv_sock_resp r = d.MemAdd(5, mem.fd.get(), 0, 4096);
    EXPECT_EQ(r.status, -EIO);
    EXPECT_NE(std::string(r.reason).find("the device is broken"), std::string::npos) << r.reason;
    d.sock.Reset();
    ASSERT_TRUE(WaitFor([&] { return port_->State() == "waiting"; }));
  }
  // A new connection starts with no registered memory.
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  EXPECT_EQ(Detail("registered_memory"), "0 regions, 0");
  ASSERT_EQ(d.Start(), "");
  d.PostTxAt(0, 1, 0, 64);
  Batch b;
  EXPECT_EQ(port_->Rx(0, b, kBurst), 0u);
  EXPECT_NE(std::string(d.h()->broken_reason).find("region 1 offset 0 len 64 names no registered region"),
            std::string::npos)
      << d.h()->broken_reason;
}

// A driver that sends requests and never reads the answers is not waited for: once its socket
// holds no more answers, it is disconnected.
TEST_F(PvMemoryTest, ADriverThatReadsNoAnswersIsDisconnected) {
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  nmx_pv_sock_req req{};
  req.type = NMX_PV_SOCK_MEM_DEL;
  req.id = 1;
  int sent = 0;
  for (int i = 0; i < 100000 && port_->State() != "waiting"; ++i) {
    if (d.SockSend(req)) ++sent;
    loop_->RunOnce(0);
  }
  EXPECT_EQ(port_->State(), "waiting") << sent << " requests sent";
  EXPECT_GT(sent, 100);
}

// The driver's file shrinks under nicmuxd's copy into it: the access faults (SIGBUS), the fault
// is recovered (base/peer_mapping.h), the device is broken naming the region, nicmuxd goes on,
// and the driver's hanging up quarantines the port. In a child: without the recovery the
// SIGBUS kills the process.
TEST_F(PvMemoryTest, ARegisteredFileShrunkUnderTheHostBreaksTheDevice) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        Driver d(loop_.get());
        DriverMemory mem(65536);
        if (d.Connect(path_) != "" || d.MemAdd(1, mem.fd.get(), 0, mem.size).status != 0 || d.Start() != "") {
          std::_Exit(2);
        }
        d.PostRxAt(0, 1, 32768, 2048);
        if (::ftruncate(mem.fd.get(), 4096) != 0) std::_Exit(3);
        const Bytes f = Frame(1000, 1);
        testing::SplitPacket sp(f, {});
        const PacketRef* ptrs[1] = {&sp.p};
        port_->Tx(0, {ptrs, 1});  // writes past the file's end: SIGBUS, recovered
        if (!WaitFor([&] { return port_->State() == "broken"; })) std::_Exit(4);
        if (d.h()->status != NMX_PV_STATUS_BROKEN) std::_Exit(5);
        if (!std::strstr(d.h()->broken_reason, "registered region 1 faulted under nicmuxd")) std::_Exit(6);
        // The control path refuses; the data path stays off.
        if (d.Call(NMX_PV_MSG_GET_INFO).status != -EIO) std::_Exit(7);
        if (d.MemDel(1).status != -EIO) std::_Exit(8);
        d.sock.Reset();
        if (!WaitFor([&] { return port_->State().rfind("quarantined", 0) == 0; })) std::_Exit(9);
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(0), "");
}

// The notice of the fault may come after the driver's MEM_DEL of the region: the fault still
// breaks the device (nobody dodges the quarantine by deleting the region at once).
TEST_F(PvMemoryTest, DeletingAFaultedRegionDodgesNothing) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        Driver d(loop_.get());
        DriverMemory mem(65536);
        if (d.Connect(path_) != "" || d.MemAdd(1, mem.fd.get(), 0, mem.size).status != 0 || d.Start() != "") {
          std::_Exit(2);
        }
        const Bytes f = Frame(1000, 1);
        std::memcpy(mem.base + 32768, f.data(), f.size());
        d.PostTxAt(0, 1, 32768, 1000);
        if (::ftruncate(mem.fd.get(), 4096) != 0) std::_Exit(3);
        Batch b;
        if (port_->Rx(0, b, kBurst) != 1) std::_Exit(4);
        Bytes got(1000);
        CopyPacketTo(b[0], got.data());  // the switch's copy: SIGBUS, recovered (zeros)
        port_->RxDone(0, b, 1);
        // STOP, then MEM_DEL, before the loop serves the fault's notice.
        nmx_pv_ctrl* c = d.c();
        c->req.type = NMX_PV_MSG_STOP;
        c->req.len = 0;
        c->req.seq = ++d.seq;
        __atomic_store_n(&c->req_seq, d.seq, __ATOMIC_RELEASE);
        d.Kick(0);
        nmx_pv_sock_req req{};
        req.type = NMX_PV_SOCK_MEM_DEL;
        req.id = 1;
        if (!d.SockSend(req)) std::_Exit(5);
        if (!WaitFor([&] { return port_->State() == "broken"; })) std::_Exit(6);
        d.sock.Reset();
        if (!WaitFor([&] { return port_->State().rfind("quarantined", 0) == 0; })) std::_Exit(7);
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace nicmux
