// The vhost-user port's data path (Rx, RxDone, Tx) against nicmux's own frontend over a real
// socket, split and packed rings: Tx into a receive ring with fewer buffers than packets takes
// what fits and says how many (backpressure); RxDone with fewer sent than received gives the
// rest back, to be received again in order, every chain completed once (rewind); bad chains in
// the middle of a batch are completed empty and the good ones around them delivered, before
// and across a cut; MRG_RXBUF spreads a frame larger than one receive buffer over several
// (num_buffers in the header, every byte checked) and a frame waits for enough buffers rather
// than being cut; without it such a frame is dropped and the buffer kept. The test thread
// plays the worker (TestWorker, as in vhost_user_port_hostile_test.cc); the only waits are for
// the control thread to start the queues, with a generous bound.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "port/vhost_user_port.h"
#include "vhost/frontend.h"
#include "virtio/net_hdr.h"
#include "tests/support/test_worker.h"

namespace nicmux {
namespace {

using namespace std::chrono_literals;
using Bytes = std::vector<std::byte>;

constexpr uint32_t kHdr = 12;  // virtio-net header with VERSION_1

using testing::TestWorker;

// An Ethernet frame of `len` bytes whose every byte depends on `seed` and its position.
Bytes MakeFrame(uint32_t seed, size_t len) {
  Bytes f(len);
  for (size_t i = 0; i < len; ++i) f[i] = static_cast<std::byte>((seed * 131 + i * 7 + (i >> 8)) & 0xff);
  const uint8_t mac[12] = {2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1};
  for (size_t i = 0; i < 12 && i < len; ++i) f[i] = std::byte{mac[i]};
  f[11] = static_cast<std::byte>(seed);
  return f;
}

// A frame in host memory as a source port hands it to Tx: a PacketRef over one or more
// segments (the source's buffers), with the private head copy.
struct HostPacket {
  explicit HostPacket(Bytes frame, std::vector<size_t> cuts = {}) : bytes(std::move(frame)) {
    size_t at = 0;
    for (size_t c : cuts) {
      segs.push_back({bytes.data() + at, static_cast<uint32_t>(c - at)});
      at = c;
    }
    segs.push_back({bytes.data() + at, static_cast<uint32_t>(bytes.size() - at)});
    ref.segs = segs.data();
    ref.nsegs = static_cast<uint16_t>(segs.size());
    ref.len = static_cast<uint32_t>(bytes.size());
    ref.head_len = std::min<uint32_t>(ref.len, kHeadBytes);
    std::memcpy(ref.head, bytes.data(), ref.head_len);
    // Where the bytes after the head start.
    uint32_t skip = ref.head_len;
    uint16_t s = 0;
    while (s < segs.size() && skip >= segs[s].len) skip -= segs[s++].len;
    ref.seg = s;
    ref.seg_off = skip;
  }
  HostPacket(const HostPacket&) = delete;
  HostPacket& operator=(const HostPacket&) = delete;

  Bytes bytes;
  std::vector<virtio::ChainSegment> segs;
  PacketRef ref;
};

Bytes Copy(const PacketRef& p) {
  struct W {
    Bytes* out;
    size_t Write(const void* src, size_t n) {
      const std::byte* b = static_cast<const std::byte*>(src);
      out->insert(out->end(), b, b + n);
      return n;
    }
  };
  Bytes out;
  W w{&out};
  CopyPacket(p, w);
  return out;
}

class DataPath : public ::testing::TestWithParam<bool> {
 protected:
  bool packed() const { return GetParam(); }

  void SetUp() override {
    dir_ = "/tmp/nicmux-datapath-test." + std::to_string(getpid());
    ::mkdir(dir_.c_str(), 0700);
    auto l = EventLoop::Create();
    ASSERT_TRUE(l);
    loop_ = std::move(*l);
    VhostUserPortOptions o;
    o.name = "p";
    o.socket_path = dir_ + "/p.sock";
    o.rx_moderation = rx_moderation_;
    o.tx_moderation = tx_moderation_;
    auto p = VhostUserPort::Create(o, loop_.get(), &worker_);
    ASSERT_TRUE(p) << p.error().message();
    port_ = std::move(*p);
    thread_ = std::thread([this] {
      while (!stop_.load()) loop_->RunOnce(10);
    });
  }
  void TearDown() override {
    f_.reset();
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
    port_.reset();
    ::unlink((dir_ + "/p.sock").c_str());
    ::rmdir(dir_.c_str());
  }

  // Connects nicmux's frontend (64 buffers per queue, every receive buffer posted) and waits
  // for the port to run both queues.
  void Connect(bool mrg_rxbuf = true, uint32_t buf_bytes = 2048, bool hugepages = false) {
    vhost::FrontendConfig c;
    c.hugepages = hugepages;
    c.socket_path = dir_ + "/p.sock";
    c.queue_size = kQueueSize;
    c.packed = packed();
    c.mrg_rxbuf = mrg_rxbuf;
    c.buf_bytes = buf_bytes;
    c.event_idx = event_idx_;
    auto f = vhost::Frontend::Create(c);
    ASSERT_TRUE(f) << f.error().message();
    f_ = std::move(*f);
    ASSERT_EQ(f_->net_hdr_len(), kHdr);
    auto running = [&](uint32_t q) { return const_cast<vhost::BackendSession&>(port_->session()).queue(q).running; };
    for (int i = 0; i < 20000 && !(running(0) && running(1)); ++i) std::this_thread::sleep_for(1ms);
    ASSERT_TRUE(running(0) && running(1));
    ASSERT_EQ(port_->session().mrg_rxbuf(), mrg_rxbuf);
  }

  // A partial checksum sent to a guest without GUEST_CSUM, with receive buffers of buf bytes.
  void CompletedInTheCopy(uint32_t buf);

  vhost::FrontendQueue& rxq() { return f_->rxq(0); }
  vhost::FrontendQueue& txq() { return f_->txq(0); }

  // The guest transmits: one chain per frame (virtio-net header + frame in one buffer);
  // `writable` makes a chain the wrong way round for a transmitq. Returns the chain ids.
  uint16_t AddTx(const Bytes& frame, bool writable = false) {
    vhost::FrontendQueue& q = txq();
    const uint16_t id = q.NextId();
    std::byte* b = f_->Buffer(q, id);
    std::memset(b, 0, kHdr);
    if (!frame.empty()) std::memcpy(b + kHdr, frame.data(), frame.size());
    virtio::DriverBuffer d{f_->BufferAddr(q, id), static_cast<uint32_t>(kHdr + frame.size()), writable};
    auto got = q.Add({&d, 1});
    EXPECT_TRUE(got.has_value());
    EXPECT_EQ(got.value_or(0xffff), id);
    return id;
  }
  // A chain shorter than the virtio-net header: a bad frame for the port, a fine chain for
  // the ring.
  uint16_t AddShortTx() {
    vhost::FrontendQueue& q = txq();
    const uint16_t id = q.NextId();
    virtio::DriverBuffer d{f_->BufferAddr(q, id), kHdr - 4, false};
    auto got = q.Add({&d, 1});
    EXPECT_TRUE(got.has_value());
    return id;
  }
  std::vector<virtio::UsedBuffer> PopUsed(vhost::FrontendQueue& q) {
    std::vector<virtio::UsedBuffer> out;
    virtio::UsedBuffer u;
    virtio::PopStatus s;
    while ((s = q.PopUsed(&u)) == virtio::PopStatus::kOk) out.push_back(u);
    EXPECT_EQ(s, virtio::PopStatus::kEmpty);
    EXPECT_FALSE(q.broken());
    return out;
  }
  // The guest posts n more receive buffers of buf_bytes.
  void PostRx(uint32_t n) {
    vhost::FrontendQueue& q = rxq();
    for (uint32_t i = 0; i < n; ++i) {
      const uint16_t id = q.NextId();
      virtio::DriverBuffer d{f_->BufferAddr(q, id), f_->config().buf_bytes, true};
      ASSERT_TRUE(q.Add({&d, 1}));
    }
    q.Publish();
  }
  // The receive ring emptied: every posted buffer filled with a small frame and taken back by
  // the guest, none posted again. Checks what it fills on the way.
  void UseUpReceiveBuffers() {
    std::lock_guard worker(worker_.mutex());
    std::vector<std::unique_ptr<HostPacket>> pkts;
    std::vector<const PacketRef*> ptrs;
    for (uint32_t i = 0; i < kQueueSize; ++i) {
      pkts.push_back(std::make_unique<HostPacket>(MakeFrame(1000 + i, 60)));
      ptrs.push_back(&pkts.back()->ref);
    }
    for (uint32_t at = 0; at < kQueueSize; at += kBurst) {
      ASSERT_EQ(port_->Tx(0, std::span(ptrs).subspan(at, kBurst)), kBurst);
    }
    EXPECT_EQ(port_->TxRoom(0), 0u);
    auto used = PopUsed(rxq());
    ASSERT_EQ(used.size(), kQueueSize);
    for (uint32_t i = 0; i < kQueueSize; ++i) {
      ASSERT_EQ(used[i].len, kHdr + 60);
      ASSERT_EQ(Bytes(f_->Buffer(rxq(), used[i].id) + kHdr, f_->Buffer(rxq(), used[i].id) + kHdr + 60), pkts[i]->bytes)
          << i;
    }
  }
  // What one used receive buffer holds after the header (the frame, without MRG_RXBUF).
  Bytes FrameIn(const virtio::UsedBuffer& u) {
    std::byte* b = f_->Buffer(rxq(), u.id);
    EXPECT_GE(u.len, kHdr);
    return Bytes(b + kHdr, b + std::max(u.len, kHdr));
  }
  uint16_t NumBuffers(const virtio::UsedBuffer& u) {
    virtio::VirtioNetHdrV1 h;
    std::memcpy(&h, f_->Buffer(rxq(), u.id), sizeof h);
    return h.num_buffers.get();
  }
  std::vector<Bytes> Received(const Batch& b) {
    std::vector<Bytes> out;
    for (uint32_t i = 0; i < b.size(); ++i) out.push_back(Copy(b[i]));
    return out;
  }

  static constexpr uint32_t kQueueSize = 64;
  bool event_idx_ = true;  // the frontend asks for EVENT_IDX (DPDK's virtio PMD does not)
  std::string dir_;
  // Interrupt moderation of the port SetUp makes (ModeratedDataPath sets it first).
  VhostUserPortOptions::Moderation rx_moderation_, tx_moderation_;
  TestWorker worker_;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<VhostUserPort> port_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::unique_ptr<vhost::Frontend> f_;
};

// ------------------------------------------------------------------------------- Tx

TEST_P(DataPath, TxIntoAShortReceiveRingTakesWhatFitsAndSaysHowMany) {
  ASSERT_NO_FATAL_FAILURE(Connect());
  ASSERT_NO_FATAL_FAILURE(UseUpReceiveBuffers());
  PostRx(5);
  std::vector<std::unique_ptr<HostPacket>> pkts;
  std::vector<const PacketRef*> ptrs;
  for (uint32_t i = 0; i < 8; ++i) {
    pkts.push_back(std::make_unique<HostPacket>(MakeFrame(i, 60 + 10 * i)));
    ptrs.push_back(&pkts.back()->ref);
  }
  std::lock_guard worker(worker_.mutex());
  EXPECT_EQ(port_->TxRoom(0), 5u);
  // 5 buffers, 8 packets: the first 5 are taken, the rest are not (and not dropped).
  ASSERT_EQ(port_->Tx(0, ptrs), 5u);
  auto used = PopUsed(rxq());
  ASSERT_EQ(used.size(), 5u);
  for (uint32_t i = 0; i < 5; ++i) {
    EXPECT_EQ(used[i].len, kHdr + pkts[i]->bytes.size()) << i;
    EXPECT_EQ(FrameIn(used[i]), pkts[i]->bytes) << i;
    EXPECT_EQ(NumBuffers(used[i]), 1u) << i;
  }
  EXPECT_EQ(port_->TxRoom(0), 0u);
  const std::span<const PacketRef* const> rest = std::span(ptrs).subspan(5);
  EXPECT_EQ(port_->Tx(0, rest), 0u);
  EXPECT_TRUE(PopUsed(rxq()).empty());
  // The guest posts more: the rest go through, in order.
  PostRx(3);
  ASSERT_EQ(port_->Tx(0, rest), 3u);
  used = PopUsed(rxq());
  ASSERT_EQ(used.size(), 3u);
  for (uint32_t i = 0; i < 3; ++i) EXPECT_EQ(FrameIn(used[i]), pkts[5 + i]->bytes) << i;
  const PortStats s = port_->Stats();
  EXPECT_EQ(s.tx_packets, kQueueSize + 8);
  EXPECT_EQ(s.tx_dropped, 0u);
  EXPECT_EQ(port_->DropsFor(DropReason::kQueueFull), 0u);
}

// A frontend whose memory is in huge pages (a QEMU guest with a hugetlbfs memory backend;
// bench/loop_front --hugepages): the port maps the file, and frames go both ways through it.
TEST_P(DataPath, HugePageMemoryCarriesFramesBothWays) {
  // One huge page is all the frontend needs (64-entry queues); none reserved and free: skip.
  const int probe = ::memfd_create("nicmux-test-huge", MFD_CLOEXEC | MFD_HUGETLB);
  if (probe < 0) GTEST_SKIP() << "memfd_create(MFD_HUGETLB): " << std::strerror(errno);
  const bool fits = ::ftruncate(probe, 2 << 20) == 0 &&
                    ::fallocate(probe, 0, 0, 2 << 20) == 0;  // takes a page now, or fails
  ::close(probe);
  if (!fits) GTEST_SKIP() << "no free 2 MiB huge page (vm.nr_hugepages)";
  ASSERT_NO_FATAL_FAILURE(Connect(/*mrg_rxbuf=*/true, /*buf_bytes=*/2048, /*hugepages=*/true));
  const Bytes a = MakeFrame(1, 60), b = MakeFrame(2, 1514);
  AddTx(a);
  AddTx(b);
  txq().Publish();
  std::lock_guard worker(worker_.mutex());
  Batch batch;
  ASSERT_EQ(port_->Rx(0, batch, kBurst), 2u);
  EXPECT_EQ(Received(batch), (std::vector<Bytes>{a, b}));
  port_->RxDone(0, batch, 2);
  EXPECT_EQ(PopUsed(txq()).size(), 2u);
  HostPacket c(MakeFrame(3, 900));
  const PacketRef* ptr = &c.ref;
  ASSERT_EQ(port_->Tx(0, std::span(&ptr, 1)), 1u);
  auto used = PopUsed(rxq());
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(FrameIn(used[0]), c.bytes);
}

// MRG_RXBUF: a frame larger than one receive buffer is spread over as many as it needs; the
// first one's header says how many; the bytes (read from several source segments) arrive
// whole and in order.
TEST_P(DataPath, MergeBuffersCarryAFrameLargerThanOneBuffer) {
  ASSERT_NO_FATAL_FAILURE(Connect(/*mrg_rxbuf=*/true, /*buf_bytes=*/256));
  HostPacket big(MakeFrame(1, 1000), {100, 600});  // three source segments
  HostPacket small(MakeFrame(2, 60));
  HostPacket bigger(MakeFrame(3, 1500), {64, 65, 1024});
  const PacketRef* ptrs[] = {&big.ref, &small.ref, &bigger.ref};
  std::lock_guard worker(worker_.mutex());
  ASSERT_EQ(port_->Tx(0, ptrs), 3u);
  auto used = PopUsed(rxq());
  // 12 + 1000 bytes: 4 buffers; 12 + 60: 1; 12 + 1500: 6.
  ASSERT_EQ(used.size(), 4u + 1u + 6u);
  const std::vector<uint32_t> want_lens = {256, 256, 256, 244, 72, 256, 256, 256, 256, 256, 232};
  std::set<uint16_t> ids;
  for (size_t i = 0; i < used.size(); ++i) {
    EXPECT_EQ(used[i].len, want_lens[i]) << i;
    ids.insert(used[i].id);
  }
  EXPECT_EQ(ids.size(), used.size()) << "a buffer used twice";
  size_t at = 0;
  for (const HostPacket* p : {&big, &small, &bigger}) {
    ASSERT_LT(at, used.size());
    const uint16_t n = NumBuffers(used[at]);
    ASSERT_EQ(n, (kHdr + p->bytes.size() + 255) / 256);
    ASSERT_LE(at + n, used.size());
    Bytes got;
    for (uint16_t k = 0; k < n; ++k) {
      const std::byte* b = f_->Buffer(rxq(), used[at + k].id);
      got.insert(got.end(), b, b + used[at + k].len);
    }
    ASSERT_EQ(got.size(), kHdr + p->bytes.size());
    EXPECT_EQ(Bytes(got.begin() + kHdr, got.end()), p->bytes) << "frame of " << p->bytes.size();
    at += n;
  }
  const PortStats s = port_->Stats();
  EXPECT_EQ(s.tx_packets, 3u);
  EXPECT_EQ(s.tx_bytes, 1000u + 60u + 1500u);
  EXPECT_EQ(s.tx_dropped, 0u);
}

// A guest without GUEST_CSUM (our frontend negotiates no offload unless asked) gets a partial
// checksum completed in the copy (kCsumOnCopy): in one buffer, and spread over 64-byte merge
// buffers with the checksum field split across two of them. The header asks for nothing.
TEST_P(DataPath, APartialChecksumTheGuestCannotTakeIsCompletedInTheCopy) {
  ASSERT_NO_FATAL_FAILURE(CompletedInTheCopy(2048));
}
TEST_P(DataPath, APartialChecksumIsCompletedAcrossMergeBuffers) {
  ASSERT_NO_FATAL_FAILURE(CompletedInTheCopy(64));
}

void DataPath::CompletedInTheCopy(uint32_t buf) {
  {
    ASSERT_NO_FATAL_FAILURE(Connect(/*mrg_rxbuf=*/true, buf));
    EXPECT_TRUE(port_->Caps().has(PortCaps::kCsumOnCopy));
    EXPECT_FALSE(port_->Caps().has(PortCaps::kCsum));
    // The field at 51..52: 64-byte buffers hold 52 frame bytes after the 12-byte header.
    const uint16_t start = 45, offset = 6;
    HostPacket pk(MakeFrame(9, 1001), {70, 300});
    pk.ref.offload.flags = Offload::kNeedsCsum;
    pk.ref.offload.csum_start = start;
    pk.ref.offload.csum_offset = offset;
    ASSERT_TRUE(ExtendHead(&pk.ref, start + offset + 2));
    const PacketRef* ptrs[] = {&pk.ref};
    {
      std::lock_guard worker(worker_.mutex());
      ASSERT_EQ(port_->Tx(0, ptrs), 1u);
    }
    auto used = PopUsed(rxq());
    ASSERT_FALSE(used.empty());
    const uint16_t n = NumBuffers(used[0]);
    ASSERT_EQ(used.size(), n);
    Bytes got;
    for (uint16_t k = 0; k < n; ++k) {
      const std::byte* b = f_->Buffer(rxq(), used[k].id);
      got.insert(got.end(), b, b + used[k].len);
    }
    ASSERT_EQ(got.size(), kHdr + pk.bytes.size());
    EXPECT_EQ(uint8_t(got[0]), 0) << "no NEEDS_CSUM towards a guest that cannot take it";
    Bytes frame(got.begin() + kHdr, got.end());
    // The reference: the ones' complement sum from csum_start over the frame with the stored
    // field, plus the seed that was there (a pseudo-header's sum, which the receiver adds
    // itself), verifies (0xffff); every other byte is the source's.
    uint32_t acc = uint32_t(uint8_t(pk.bytes[start + offset])) << 8 | uint8_t(pk.bytes[start + offset + 1]);
    for (size_t i = start; i < frame.size(); i += 2) {
      acc += uint32_t(uint8_t(frame[i])) << 8 | (i + 1 < frame.size() ? uint8_t(frame[i + 1]) : 0);
    }
    while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
    EXPECT_EQ(acc, 0xffffu);
    for (size_t i = 0; i < frame.size(); ++i) {
      if (i == start + offset || i == start + offset + 1u) continue;
      ASSERT_EQ(frame[i], pk.bytes[i]) << i;
    }
  }
}

// A frame that needs more buffers than the guest has posted is not cut short: it waits (Tx
// takes nothing, drops nothing) until the guest posts enough.
TEST_P(DataPath, MergeFrameWaitsForEnoughBuffers) {
  ASSERT_NO_FATAL_FAILURE(Connect(/*mrg_rxbuf=*/true, /*buf_bytes=*/256));
  ASSERT_NO_FATAL_FAILURE(UseUpReceiveBuffers());
  PostRx(2);
  HostPacket big(MakeFrame(7, 1000));  // needs 4 buffers of 256
  const PacketRef* one[] = {&big.ref};
  std::lock_guard worker(worker_.mutex());
  EXPECT_EQ(port_->Tx(0, one), 0u);
  EXPECT_TRUE(PopUsed(rxq()).empty());
  EXPECT_EQ(port_->Stats().tx_dropped, 0u);
  PostRx(2);
  ASSERT_EQ(port_->Tx(0, one), 1u);
  auto used = PopUsed(rxq());
  ASSERT_EQ(used.size(), 4u);
  EXPECT_EQ(NumBuffers(used[0]), 4u);
  Bytes got;
  for (const auto& u : used) {
    const std::byte* b = f_->Buffer(rxq(), u.id);
    got.insert(got.end(), b, b + u.len);
  }
  ASSERT_EQ(got.size(), kHdr + 1000);
  EXPECT_EQ(Bytes(got.begin() + kHdr, got.end()), big.bytes);
  EXPECT_EQ(port_->Stats().tx_packets, kQueueSize + 1);
}

// Without MRG_RXBUF a frame larger than one receive buffer cannot be delivered: dropped
// (too_big, counted, taken), and the buffer it would have used is kept for the next one.
TEST_P(DataPath, WithoutMergeAFrameLargerThanABufferIsDroppedAndTheBufferKept) {
  ASSERT_NO_FATAL_FAILURE(Connect(/*mrg_rxbuf=*/false, /*buf_bytes=*/256));
  ASSERT_NO_FATAL_FAILURE(UseUpReceiveBuffers());
  PostRx(1);
  HostPacket big(MakeFrame(1, 1000));
  HostPacket fits(MakeFrame(2, 256 - kHdr));
  const PacketRef* ptrs[] = {&big.ref, &fits.ref};
  std::lock_guard worker(worker_.mutex());
  ASSERT_EQ(port_->Tx(0, ptrs), 2u);
  auto used = PopUsed(rxq());
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].len, 256u);
  EXPECT_EQ(FrameIn(used[0]), fits.bytes);
  EXPECT_EQ(NumBuffers(used[0]), 1u);
  EXPECT_EQ(port_->DropsFor(DropReason::kTooBig), 1u);
  const PortStats s = port_->Stats();
  EXPECT_EQ(s.tx_dropped, 1u);
  EXPECT_EQ(s.tx_packets, kQueueSize + 1);
}

// A frame too big for the buffers it may take is dropped, and the buffers it was shown stay
// for the frames after it. Receive chains are taken a burst at a time (PopBurst); a frame
// dropped as too big must not give them back to the ring (Rewind): past a bad chain the ring
// completed meanwhile that is impossible, and every buffer taken was then completed empty
// (the frames after the big one lost with them), and where it is possible each dropped frame
// made the port take the rest of the burst again (a burst of big frames, quadratic work).
TEST_P(DataPath, AFrameTooBigLeavesItsBuffersToTheFramesAfterItPastABadChain) {
  ASSERT_NO_FATAL_FAILURE(Connect(/*mrg_rxbuf=*/false, /*buf_bytes=*/256));
  ASSERT_NO_FATAL_FAILURE(UseUpReceiveBuffers());
  // The guest posts a good buffer, a readable one (bad in a receiveq: completed empty), and
  // two good ones.
  vhost::FrontendQueue& q = rxq();
  uint16_t ids[4];
  for (uint32_t i = 0; i < 4; ++i) {
    ids[i] = q.NextId();
    virtio::DriverBuffer d{f_->BufferAddr(q, ids[i]), f_->config().buf_bytes, /*writable=*/i != 1};
    ASSERT_TRUE(q.Add({&d, 1}));
  }
  q.Publish();
  HostPacket big(MakeFrame(1, 1000));
  HostPacket a(MakeFrame(2, 60)), b(MakeFrame(3, 60));
  const PacketRef* ptrs[] = {&big.ref, &a.ref, &b.ref};
  std::lock_guard worker(worker_.mutex());
  ASSERT_EQ(port_->Tx(0, ptrs), 3u);
  auto used = PopUsed(rxq());
  ASSERT_EQ(used.size(), 3u);
  EXPECT_EQ(used[0].id, ids[1]);  // the bad chain, completed as it was taken
  EXPECT_EQ(used[0].len, 0u);
  EXPECT_EQ(used[1].id, ids[0]);
  EXPECT_EQ(FrameIn(used[1]), a.bytes);
  EXPECT_EQ(used[2].id, ids[2]);
  EXPECT_EQ(FrameIn(used[2]), b.bytes);
  EXPECT_EQ(port_->DropsFor(DropReason::kTooBig), 1u);
  EXPECT_EQ(port_->DropsFor(DropReason::kWritableExpected), 1u);
  // The last good buffer was given back: the next frame goes into it.
  HostPacket c(MakeFrame(4, 60));
  const PacketRef* one[] = {&c.ref};
  ASSERT_EQ(port_->Tx(0, one), 1u);
  used = PopUsed(rxq());
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].id, ids[3]);
  EXPECT_EQ(FrameIn(used[0]), c.bytes);
}

// Without MRG_RXBUF a receive chain with no room for the virtio-net header and an Ethernet
// header can take no frame. Given back like a chain that is only too short for one frame, it
// stayed at the head of the ring for ever, every frame for the guest dropped as too big
// (nicmux-attack rx-bad). It is completed empty in its turn, counted, and the frames go on
// into the chains after it.
TEST_P(DataPath, WithoutMergeAReceiveChainTooSmallForAnyFrameIsCompletedEmptyInItsTurn) {
  ASSERT_NO_FATAL_FAILURE(Connect(/*mrg_rxbuf=*/false, /*buf_bytes=*/256));
  ASSERT_NO_FATAL_FAILURE(UseUpReceiveBuffers());
  vhost::FrontendQueue& q = rxq();
  uint16_t ids[4];
  const uint32_t lens[4] = {256, kHdr + 13, 4, 256};
  for (uint32_t i = 0; i < 4; ++i) {
    ids[i] = q.NextId();
    virtio::DriverBuffer d{f_->BufferAddr(q, ids[i]), lens[i], /*writable=*/true};
    ASSERT_TRUE(q.Add({&d, 1}));
  }
  q.Publish();
  HostPacket a(MakeFrame(1, 60)), b(MakeFrame(2, 60));
  const PacketRef* ptrs[] = {&a.ref, &b.ref};
  std::lock_guard worker(worker_.mutex());
  ASSERT_EQ(port_->Tx(0, ptrs), 2u);
  auto used = PopUsed(rxq());
  ASSERT_EQ(used.size(), 4u);
  EXPECT_EQ(used[0].id, ids[0]);
  EXPECT_EQ(FrameIn(used[0]), a.bytes);
  EXPECT_EQ(used[1].id, ids[1]);
  EXPECT_EQ(used[1].len, 0u);
  EXPECT_EQ(used[2].id, ids[2]);
  EXPECT_EQ(used[2].len, 0u);
  EXPECT_EQ(used[3].id, ids[3]);
  EXPECT_EQ(FrameIn(used[3]), b.bytes);
  EXPECT_EQ(port_->DropsFor(DropReason::kRxChainTooSmall), 2u);
  EXPECT_EQ(port_->DropsFor(DropReason::kTooBig), 0u);
  EXPECT_EQ(port_->Stats().tx_dropped, 0u);
  // A ring holding only such chains: they are completed, and the frame waits (not taken).
  for (uint32_t i = 0; i < 2; ++i) {
    const uint16_t id = q.NextId();
    virtio::DriverBuffer d{f_->BufferAddr(q, id), 8, /*writable=*/true};
    ASSERT_TRUE(q.Add({&d, 1}));
  }
  q.Publish();
  HostPacket c(MakeFrame(3, 60));
  const PacketRef* one[] = {&c.ref};
  EXPECT_EQ(port_->Tx(0, one), 0u);
  used = PopUsed(rxq());
  ASSERT_EQ(used.size(), 2u);
  EXPECT_EQ(used[0].len, 0u);
  EXPECT_EQ(used[1].len, 0u);
  EXPECT_EQ(port_->DropsFor(DropReason::kRxChainTooSmall), 4u);
}

// Such chains are completed at most kMaxBadChainsPerPop (32) per Tx: past that the ring
// counts as empty for the call, so a guest reposting them as fast as they are completed cannot
// keep the worker in one Tx for ever. The next call goes on.
TEST_P(DataPath, ReceiveChainsTooSmallAreCompletedAtMost32PerTx) {
  ASSERT_NO_FATAL_FAILURE(Connect(/*mrg_rxbuf=*/false, /*buf_bytes=*/256));
  ASSERT_NO_FATAL_FAILURE(UseUpReceiveBuffers());
  vhost::FrontendQueue& q = rxq();
  for (uint32_t i = 0; i < 41; ++i) {
    const uint16_t id = q.NextId();
    virtio::DriverBuffer d{f_->BufferAddr(q, id), i < 40 ? 8u : 256u, /*writable=*/true};
    ASSERT_TRUE(q.Add({&d, 1}));
  }
  q.Publish();
  HostPacket a(MakeFrame(1, 60));
  const PacketRef* one[] = {&a.ref};
  std::lock_guard worker(worker_.mutex());
  EXPECT_EQ(port_->Tx(0, one), 0u);
  EXPECT_EQ(PopUsed(rxq()).size(), 32u);
  EXPECT_EQ(port_->Tx(0, one), 1u);
  auto used = PopUsed(rxq());
  ASSERT_EQ(used.size(), 9u);
  EXPECT_EQ(FrameIn(used[8]), a.bytes);
  EXPECT_EQ(port_->DropsFor(DropReason::kRxChainTooSmall), 40u);
}

// ------------------------------------------------------------------------------- Rx

// RxDone(q, batch, sent) with sent < batch: the chains of packets [0, sent) are completed,
// the rest go back to the ring and come out of the next Rx in the same order; every chain is
// completed exactly once and none is lost.
TEST_P(DataPath, RxDoneGivesTheUnsentBackToBeReceivedAgainInOrder) {
  ASSERT_NO_FATAL_FAILURE(Connect());
  std::vector<Bytes> frames;
  std::vector<uint16_t> ids;
  for (uint32_t i = 0; i < 8; ++i) {
    frames.push_back(MakeFrame(i, 60 + 3 * i));
    ids.push_back(AddTx(frames.back()));
  }
  txq().Publish();
  std::lock_guard worker(worker_.mutex());
  Batch batch;
  // Nothing sent: all 8 back, none completed.
  ASSERT_EQ(port_->Rx(0, batch, kBurst), 8u);
  EXPECT_EQ(Received(batch), frames);
  port_->RxDone(0, batch, 0);
  EXPECT_TRUE(PopUsed(txq()).empty());
  // 3 of 8 sent.
  batch.Clear();
  ASSERT_EQ(port_->Rx(0, batch, kBurst), 8u);
  EXPECT_EQ(Received(batch), frames);
  port_->RxDone(0, batch, 3);
  std::multiset<uint16_t> completed;
  auto take = [&](size_t want) {
    auto used = PopUsed(txq());
    EXPECT_EQ(used.size(), want);
    for (const auto& u : used) {
      EXPECT_EQ(u.len, 0u);
      completed.insert(u.id);
    }
  };
  take(3);
  EXPECT_EQ(completed, std::multiset<uint16_t>(ids.begin(), ids.begin() + 3));
  // The other 5, in order; 2 of them sent.
  batch.Clear();
  ASSERT_EQ(port_->Rx(0, batch, kBurst), 5u);
  EXPECT_EQ(Received(batch), std::vector<Bytes>(frames.begin() + 3, frames.end()));
  port_->RxDone(0, batch, 2);
  take(2);
  // A smaller max than what is there: the first ones.
  batch.Clear();
  ASSERT_EQ(port_->Rx(0, batch, 2), 2u);
  EXPECT_EQ(Received(batch), std::vector<Bytes>(frames.begin() + 5, frames.begin() + 7));
  port_->RxDone(0, batch, 2);
  take(2);
  batch.Clear();
  ASSERT_EQ(port_->Rx(0, batch, kBurst), 1u);
  EXPECT_EQ(Received(batch)[0], frames[7]);
  port_->RxDone(0, batch, 1);
  take(1);
  // Each of the 8 chains completed once; nothing more.
  EXPECT_EQ(completed, std::multiset<uint16_t>(ids.begin(), ids.end()));
  batch.Clear();
  EXPECT_EQ(port_->Rx(0, batch, kBurst), 0u);
  port_->RxDone(0, batch, 0);
  EXPECT_TRUE(PopUsed(txq()).empty());
  const PortStats s = port_->Stats();
  uint64_t bytes = 0;
  for (const Bytes& f : frames) bytes += f.size();
  EXPECT_EQ(s.rx_packets, 8u);  // counted when sent, not each time received
  EXPECT_EQ(s.rx_bytes, bytes);
  EXPECT_EQ(s.rx_dropped, 0u);
  EXPECT_EQ(port_->DropsFor(DropReason::kQueueFull), 0u);
}

// Bad chains between good ones: one the ring refuses (a device-writable buffer in a
// transmitq: completed empty inside the ring) and one the port refuses (shorter than the
// virtio-net header: dropped bad_frame, completed by RxDone). The good ones come through in
// order, each chain is completed once, each drop counted once.
TEST_P(DataPath, BadChainsInTheMiddleOfABatchAreCompletedAndTheGoodOnesDelivered) {
  ASSERT_NO_FATAL_FAILURE(Connect());
  const Bytes a = MakeFrame(1, 60), c = MakeFrame(3, 70), e = MakeFrame(5, 80);
  std::vector<uint16_t> ids;
  ids.push_back(AddTx(a));
  ids.push_back(AddTx(MakeFrame(2, 60), /*writable=*/true));
  ids.push_back(AddTx(c));
  ids.push_back(AddShortTx());
  ids.push_back(AddTx(e));
  txq().Publish();
  std::lock_guard worker(worker_.mutex());
  Batch batch;
  ASSERT_EQ(port_->Rx(0, batch, kBurst), 3u);
  ASSERT_EQ(batch.size(), 3u);
  EXPECT_EQ(Received(batch), (std::vector<Bytes>{a, c, e}));
  port_->RxDone(0, batch, 3);
  auto used = PopUsed(txq());
  ASSERT_EQ(used.size(), 5u);
  std::multiset<uint16_t> completed;
  for (const auto& u : used) {
    EXPECT_EQ(u.len, 0u);
    completed.insert(u.id);
  }
  EXPECT_EQ(completed, std::multiset<uint16_t>(ids.begin(), ids.end()));
  EXPECT_EQ(port_->DropsFor(DropReason::kReadableExpected), 1u);
  EXPECT_EQ(port_->DropsFor(DropReason::kBadFrame), 1u);
  PortStats s = port_->Stats();
  EXPECT_EQ(s.rx_packets, 3u);
  EXPECT_EQ(s.rx_bytes, a.size() + c.size() + e.size());
  EXPECT_EQ(s.rx_dropped, 1u);  // the port's own drop; the ring's is counted by reason only
  // The queue goes on.
  const Bytes g = MakeFrame(6, 90);
  const uint16_t gid = AddTx(g);
  txq().Publish();
  batch.Clear();
  ASSERT_EQ(port_->Rx(0, batch, kBurst), 1u);
  EXPECT_EQ(Received(batch)[0], g);
  port_->RxDone(0, batch, 1);
  used = PopUsed(txq());
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].id, gid);
  auto& dq = const_cast<vhost::BackendSession&>(port_->session()).queue(1);
  EXPECT_FALSE(dq.packed ? dq.packed_ring.broken() : dq.split.broken());
}

// A cut after a bad frame the port dropped: the bad frame's chain is completed with the sent
// ones (it is not received again, nor counted twice); the rest come back.
TEST_P(DataPath, ACutAfterABadFrameCompletesItAndRewindsTheRest) {
  ASSERT_NO_FATAL_FAILURE(Connect());
  const Bytes a = MakeFrame(1, 60), c = MakeFrame(3, 61), d = MakeFrame(4, 62);
  const uint16_t ia = AddTx(a), is = AddShortTx(), ic = AddTx(c), id = AddTx(d);
  txq().Publish();
  std::lock_guard worker(worker_.mutex());
  Batch batch;
  ASSERT_EQ(port_->Rx(0, batch, kBurst), 3u);
  EXPECT_EQ(Received(batch), (std::vector<Bytes>{a, c, d}));
  port_->RxDone(0, batch, 1);  // a sent; c, d not
  auto used = PopUsed(txq());
  std::multiset<uint16_t> completed;
  for (const auto& u : used) completed.insert(u.id);
  EXPECT_EQ(completed, (std::multiset<uint16_t>{ia, is}));
  batch.Clear();
  ASSERT_EQ(port_->Rx(0, batch, kBurst), 2u);
  EXPECT_EQ(Received(batch), (std::vector<Bytes>{c, d}));
  port_->RxDone(0, batch, 2);
  used = PopUsed(txq());
  for (const auto& u : used) completed.insert(u.id);
  EXPECT_EQ(completed, (std::multiset<uint16_t>{ia, is, ic, id}));
  EXPECT_EQ(port_->DropsFor(DropReason::kBadFrame), 1u);
  EXPECT_EQ(port_->DropsFor(DropReason::kQueueFull), 0u);
  const PortStats s = port_->Stats();
  EXPECT_EQ(s.rx_packets, 3u);
  EXPECT_EQ(s.rx_dropped, 1u);
}

// A cut with a chain the ring completed empty after the first unsent one: the ring cannot move
// back past a completed chain, so the unsent ones are completed empty and counted queue_full
// (docs/architecture.md, "Rewind and backpressure") — still each completed once, none lost.
TEST_P(DataPath, ACutAcrossAChainTheRingCompletedDropsTheRestCountedOnce) {
  ASSERT_NO_FATAL_FAILURE(Connect());
  const Bytes a = MakeFrame(1, 60), b = MakeFrame(2, 60), d = MakeFrame(4, 60);
  const uint16_t ia = AddTx(a), ib = AddTx(b), ix = AddTx(MakeFrame(3, 60), /*writable=*/true), id = AddTx(d);
  txq().Publish();
  std::lock_guard worker(worker_.mutex());
  Batch batch;
  ASSERT_EQ(port_->Rx(0, batch, kBurst), 3u);
  EXPECT_EQ(Received(batch), (std::vector<Bytes>{a, b, d}));
  port_->RxDone(0, batch, 1);
  auto used = PopUsed(txq());
  std::multiset<uint16_t> completed;
  for (const auto& u : used) {
    EXPECT_EQ(u.len, 0u);
    completed.insert(u.id);
  }
  EXPECT_EQ(completed, (std::multiset<uint16_t>{ia, ib, ix, id}));
  EXPECT_EQ(port_->DropsFor(DropReason::kQueueFull), 2u);
  EXPECT_EQ(port_->DropsFor(DropReason::kReadableExpected), 1u);
  PortStats s = port_->Stats();
  EXPECT_EQ(s.rx_packets, 1u);
  EXPECT_EQ(s.rx_dropped, 2u);
  batch.Clear();
  EXPECT_EQ(port_->Rx(0, batch, kBurst), 0u);
  port_->RxDone(0, batch, 0);
  EXPECT_TRUE(PopUsed(txq()).empty());
}

// ------------------------------------------------------------------------------- holds

uint64_t DetailOf(const Port& p, const std::string& key) {
  for (const auto& [k, v] : p.Details()) {
    if (k == key) return std::get<uint64_t>(v);
  }
  ADD_FAILURE() << "no detail " << key;
  return 0;
}

// Zero copy (packet/hold.h), as a dpdk port's Tx takes it: a destination holds two of four
// frames. RxDone completes the other two; a release from another thread completes its chain
// at the next Rx; a SET_MEM_TABLE with a hold outstanding completes that chain early and keeps
// the old mapping readable until the release, which then completes nothing.
TEST_P(DataPath, HeldChainsCompleteOnReleaseAndEarlyAtAMemoryTableChange) {
  ASSERT_NO_FATAL_FAILURE(Connect());
  std::vector<Bytes> frames;
  std::vector<uint16_t> ids;
  for (uint32_t i = 0; i < 4; ++i) {
    frames.push_back(MakeFrame(50 + i, 600));
    ids.push_back(AddTx(frames.back()));
  }
  txq().Publish();
  uint32_t t1, t3;
  PacketHolder* holder;
  const std::byte* rest3;  // frame 3's bytes after the head, in the guest's memory
  {
    std::lock_guard worker(worker_.mutex());
    Batch b;
    ASSERT_EQ(port_->Rx(0, b, kBurst), 4u);
    for (uint32_t i = 0; i < 4; ++i) ASSERT_EQ(b[i].holder, b[0].holder) << i;
    holder = b[0].holder;
    ASSERT_NE(holder, nullptr);
    t1 = holder->Hold(b[1]);
    t3 = holder->Hold(b[3]);
    ASSERT_NE(t1, PacketHolder::kNoHold);
    ASSERT_NE(t3, PacketHolder::kNoHold);
    ASSERT_EQ(b[3].seg, 0);
    rest3 = b[3].segs[0].data + b[3].seg_off;
    port_->RxDone(0, b, 4);
  }
  auto used = PopUsed(txq());
  ASSERT_EQ(used.size(), 2u);
  EXPECT_EQ(std::set<uint16_t>({used[0].id, used[1].id}), std::set<uint16_t>({ids[0], ids[2]}));
  std::thread([&] { holder->Release(t1); }).join();
  {
    std::lock_guard worker(worker_.mutex());
    Batch e;
    EXPECT_EQ(port_->Rx(0, e, kBurst), 0u);
    port_->RxDone(0, e, 0);
  }
  used = PopUsed(txq());
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].id, ids[1]);

  // A new memory table while frame 3 is held: its chain is completed early (the ring must be
  // whole to restart), its memory stays mapped.
  ASSERT_TRUE(f_->SendMemTableAgain());
  for (int i = 0; i < 20000 && DetailOf(*port_, "held_completed_early") == 0; ++i) std::this_thread::sleep_for(1ms);
  ASSERT_EQ(DetailOf(*port_, "held_completed_early"), 1u);
  used = PopUsed(txq());
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].id, ids[3]);
  // (The old mapping: unmapped, this read would fault.)
  EXPECT_EQ(Bytes(rest3, rest3 + (600 - kHeadBytes)), Bytes(frames[3].begin() + kHeadBytes, frames[3].end()));
  std::thread([&] { holder->Release(t3); }).join();
  {
    std::lock_guard worker(worker_.mutex());
    Batch e;
    EXPECT_EQ(port_->Rx(0, e, kBurst), 0u);
    port_->RxDone(0, e, 0);
  }
  EXPECT_TRUE(PopUsed(txq()).empty());  // completed once, early
  // The ring goes on: a frame sent now arrives and completes as usual.
  const uint16_t id = AddTx(frames[0]);
  txq().Publish();
  {
    std::lock_guard worker(worker_.mutex());
    Batch b;
    ASSERT_EQ(port_->Rx(0, b, kBurst), 1u);
    EXPECT_EQ(Copy(b[0]), frames[0]);
    port_->RxDone(0, b, 1);
  }
  used = PopUsed(txq());
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].id, id);
}

// At most half the transmit ring is held at once; past that the destination must copy.
TEST_P(DataPath, HoldsAreBoundedToHalfTheTransmitRing) {
  ASSERT_NO_FATAL_FAILURE(Connect());
  std::vector<uint32_t> tickets;
  PacketHolder* holder = nullptr;
  uint32_t refused = 0;
  for (uint32_t round = 0; round < 2; ++round) {
    for (uint32_t i = 0; i < kBurst; ++i) AddTx(MakeFrame(i, 200));
    txq().Publish();
    std::lock_guard worker(worker_.mutex());
    Batch b;
    ASSERT_EQ(port_->Rx(0, b, kBurst), kBurst);
    for (uint32_t i = 0; i < kBurst; ++i) {
      holder = b[i].holder;
      const uint32_t t = holder->Hold(b[i]);
      if (t == PacketHolder::kNoHold) {
        ++refused;
      } else {
        tickets.push_back(t);
      }
    }
    port_->RxDone(0, b, kBurst);
  }
  EXPECT_EQ(tickets.size(), kQueueSize / 2);
  EXPECT_EQ(refused, 2 * kBurst - kQueueSize / 2);
  EXPECT_EQ(PopUsed(txq()).size(), refused);
  for (uint32_t t : tickets) holder->Release(t);
  {
    std::lock_guard worker(worker_.mutex());
    Batch e;
    port_->Rx(0, e, kBurst);
    port_->RxDone(0, e, 0);
  }
  EXPECT_EQ(PopUsed(txq()).size(), kQueueSize / 2);
}

// The guest's port removed while a device holds a frame: the frame's memory stays mapped
// until the release (from another thread), which the table, outliving its port, takes.
TEST_P(DataPath, APortRemovedWithAHoldKeepsTheMemoryUntilTheRelease) {
  ASSERT_NO_FATAL_FAILURE(Connect());
  const Bytes frame = MakeFrame(7, 1500);
  AddTx(frame);
  txq().Publish();
  uint32_t t;
  PacketHolder* holder;
  const std::byte* rest;
  {
    std::lock_guard worker(worker_.mutex());
    Batch b;
    ASSERT_EQ(port_->Rx(0, b, kBurst), 1u);
    holder = b[0].holder;
    t = holder->Hold(b[0]);
    ASSERT_NE(t, PacketHolder::kNoHold);
    rest = b[0].segs[b[0].seg].data + b[0].seg_off;
    port_->RxDone(0, b, 1);
  }
  stop_.store(true);
  thread_.join();
  f_.reset();      // the frontend goes: its memory is unmapped on its side
  port_.reset();   // and the port: the session unmaps, but the hold keeps its snapshot
  EXPECT_EQ(Bytes(rest, rest + (1500 - kHeadBytes)), Bytes(frame.begin() + kHeadBytes, frame.end()));
  std::thread([&] { holder->Release(t); }).join();  // deletes the table, unmaps
}

// ------------------------------------------------------------------------- kicks

// A worker that polls tells the driver not to kick, on the transmitq from its first poll and
// on the receiveq from its first Tx; it asks for kicks again only to sleep (ArmNotify). A
// driver left at the ring's default (kicks on) makes a system call per burst: DPDK's virtio
// PMD (no EVENT_IDX) spent a fifth of its time kicking a worker that never slept.
TEST_P(DataPath, APollingWorkerAsksTheDriverForNoKicks) {
  event_idx_ = false;
  ASSERT_NO_FATAL_FAILURE(Connect());
  std::lock_guard worker(worker_.mutex());
  AddTx(MakeFrame(1, 60));
  txq().Publish();
  EXPECT_TRUE(txq().NeedKick());  // nothing polled yet: the ring's default
  Batch batch;
  ASSERT_EQ(port_->Rx(0, batch, kBurst), 1u);
  port_->RxDone(0, batch, 1);
  AddTx(MakeFrame(2, 60));
  txq().Publish();
  EXPECT_FALSE(txq().NeedKick());
  // The receiveq: the guest's refills are never waited for once the port sends into it.
  PostRx(0);
  HostPacket p(MakeFrame(3, 60));
  const PacketRef* one[1] = {&p.ref};
  ASSERT_EQ(port_->Tx(0, one), 1u);
  ASSERT_EQ(PopUsed(rxq()).size(), 1u);
  PostRx(1);
  EXPECT_FALSE(rxq().NeedKick());
  // Before sleeping the worker asks for kicks again, and drops them when it wakes.
  std::vector<NotifyFd> fds;
  EXPECT_TRUE(port_->ArmNotify(0, &fds));  // the chain added above is work
  AddTx(MakeFrame(4, 60));
  txq().Publish();
  EXPECT_TRUE(txq().NeedKick());
  port_->DisarmNotify(0);
  batch.Clear();
  ASSERT_EQ(port_->Rx(0, batch, kBurst), 2u);
  port_->RxDone(0, batch, 2);
  AddTx(MakeFrame(5, 60));
  txq().Publish();
  EXPECT_FALSE(txq().NeedKick());
}

INSTANTIATE_TEST_SUITE_P(Rings, DataPath, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "packed" : "split"; });

// Interrupt moderation (rx_usecs/rx_frames, tx_usecs/tx_frames): the port's signals against a
// driver that asks for them (EnableCalls: EVENT_IDX's used_event at its next entry, or the
// NO_INTERRUPT flag clear) and one that does not.
class ModeratedDataPath : public DataPath {
 protected:
  void SetUp() override {
    rx_moderation_ = {kUs, 8};
    tx_moderation_ = {kUs, 0};
    DataPath::SetUp();
  }
  static constexpr uint32_t kUs = 10000;  // long enough never to run out during a test step
  // Interrupts the guest got on queue q since the last look (its call eventfd's counter).
  static uint64_t Calls(vhost::FrontendQueue& q) {
    uint64_t v = 0;
    return ::read(q.call.fd(), &v, sizeof v) == sizeof v ? v : 0;
  }
  void AskForCalls(vhost::FrontendQueue& q) {
    EXPECT_FALSE(q.packed ? q.packed_ring.EnableCalls() : q.split.EnableCalls());
  }
  void RefuseCalls(vhost::FrontendQueue& q) { q.packed ? q.packed_ring.DisableCalls() : q.split.DisableCalls(); }
  // n frames into the guest's receive queue, all taken.
  void Send(uint32_t n) {
    std::vector<std::unique_ptr<HostPacket>> pkts;
    std::vector<const PacketRef*> ptrs;
    for (uint32_t i = 0; i < n; ++i) {
      pkts.push_back(std::make_unique<HostPacket>(MakeFrame(i, 64)));
      ptrs.push_back(&pkts.back()->ref);
    }
    ASSERT_EQ(port_->Tx(0, ptrs), n);
  }
};

TEST_P(ModeratedDataPath, ReceiveSignalsWaitForFramesOrTimeAndAreNeverDropped) {
  ASSERT_NO_FATAL_FAILURE(Connect());
  ASSERT_TRUE(port_->defers_signals());  // (every receive buffer is posted: 32 frames fit)
  std::unique_lock worker(worker_.mutex());
  Calls(rxq());
  AskForCalls(rxq());
  // One frame: the signal it is owed waits (for more frames, up to kUs).
  ASSERT_NO_FATAL_FAILURE(Send(1));
  EXPECT_EQ(Calls(rxq()), 0u);
  const uint64_t t0 = MonotonicNowNs();
  const uint64_t due = port_->FlushTxSignal(0, t0, false);
  EXPECT_GT(due, t0);
  EXPECT_LE(due, t0 + uint64_t{kUs} * 1000);
  // Frames the driver asked nothing for (used_event behind them) still count towards rx_frames:
  // the eighth sends the one interrupt.
  ASSERT_NO_FATAL_FAILURE(Send(6));
  EXPECT_EQ(Calls(rxq()), 0u);
  ASSERT_NO_FATAL_FAILURE(Send(1));
  EXPECT_EQ(Calls(rxq()), 1u);
  EXPECT_EQ(port_->rx_interrupts(), 1u);
  EXPECT_EQ(port_->FlushTxSignal(0, MonotonicNowNs(), true), 0u);  // nothing left deferred
  EXPECT_EQ(Calls(rxq()), 0u);
  EXPECT_EQ(PopUsed(rxq()).size(), 8u);

  // Time: the deadline passed, the flush gives it.
  AskForCalls(rxq());
  ASSERT_NO_FATAL_FAILURE(Send(1));
  EXPECT_EQ(Calls(rxq()), 0u);
  EXPECT_NE(port_->FlushTxSignal(0, MonotonicNowNs(), false), 0u);
  EXPECT_EQ(Calls(rxq()), 0u);
  EXPECT_EQ(port_->FlushTxSignal(0, MonotonicNowNs() + uint64_t{kUs} * 1000, false), 0u);
  EXPECT_EQ(Calls(rxq()), 1u);
  EXPECT_EQ(PopUsed(rxq()).size(), 1u);

  // The guest takes what came and asks again while one is deferred: both covered by one
  // interrupt (counted as coalesced).
  AskForCalls(rxq());
  ASSERT_NO_FATAL_FAILURE(Send(1));
  EXPECT_EQ(PopUsed(rxq()).size(), 1u);  // (a polling driver: NAPI takes it before any signal)
  AskForCalls(rxq());
  ASSERT_NO_FATAL_FAILURE(Send(1));
  EXPECT_EQ(Calls(rxq()), 0u);
  EXPECT_EQ(port_->interrupts_coalesced(), 1u);
  EXPECT_EQ(port_->FlushTxSignal(0, MonotonicNowNs(), true), 0u);
  EXPECT_EQ(Calls(rxq()), 1u);
  EXPECT_EQ(PopUsed(rxq()).size(), 1u);

  // A driver that asks for none gets none, however long it waits (EVENT_IDX / NO_INTERRUPT).
  RefuseCalls(rxq());
  ASSERT_NO_FATAL_FAILURE(Send(20));
  EXPECT_EQ(port_->FlushTxSignal(0, MonotonicNowNs(), true), 0u);
  EXPECT_EQ(Calls(rxq()), 0u);
  EXPECT_EQ(PopUsed(rxq()).size(), 20u);

  // Force (the worker goes to sleep or pauses): given at once.
  AskForCalls(rxq());
  ASSERT_NO_FATAL_FAILURE(Send(2));
  EXPECT_EQ(Calls(rxq()), 0u);
  EXPECT_EQ(port_->FlushTxSignal(0, MonotonicNowNs(), true), 0u);
  EXPECT_EQ(Calls(rxq()), 1u);
  EXPECT_EQ(port_->rx_interrupts(), 4u);
  EXPECT_EQ(PopUsed(rxq()).size(), 2u);

  // A deferred signal when the frontend goes: settled without a write (the frontend is gone;
  // its fd could only block). A queue stopped for a memory table change gets it instead
  // (StopQueue).
  AskForCalls(rxq());
  ASSERT_NO_FATAL_FAILURE(Send(1));
  EXPECT_EQ(Calls(rxq()), 0u);
  UniqueFd call(::dup(rxq().call.fd()));  // the same eventfd, kept past the frontend
  ASSERT_TRUE(call.valid());
  worker.unlock();  // the control thread pauses the "worker" to stop the queues
  f_.reset();
  // (signal_due, an atomic, is settled by the disconnect's queue stop; connected() is the
  // control thread's.)
  for (int i = 0; i < 20000 && port_->signal_due(0, true) != 0; ++i) std::this_thread::sleep_for(1ms);
  ASSERT_EQ(port_->signal_due(0, true), 0u);
  uint64_t v = 0;
  EXPECT_EQ(::read(call.get(), &v, sizeof v), -1) << "a frontend that is gone gets no interrupt (" << v << ")";
  EXPECT_EQ(port_->rx_interrupts(), 4u);
  EXPECT_EQ(port_->signal_due(0, true), 0u);
}

// A receive ring that runs out of buffers gets its deferred signal at once (the guest refills
// only after one): from Tx that finds it empty, and from TxRoom that finds it so.
TEST_P(ModeratedDataPath, ARingOutOfBuffersGetsItsSignalAtOnce) {
  ASSERT_NO_FATAL_FAILURE(Connect());  // 64 receive buffers posted
  std::lock_guard worker(worker_.mutex());
  Calls(rxq());
  AskForCalls(rxq());
  ASSERT_NO_FATAL_FAILURE(Send(1));
  EXPECT_EQ(Calls(rxq()), 0u);
  EXPECT_NE(port_->signal_due(0, true), 0u);
  std::vector<std::unique_ptr<HostPacket>> pkts;
  std::vector<const PacketRef*> ptrs;
  for (uint32_t i = 0; i < 70; ++i) {
    pkts.push_back(std::make_unique<HostPacket>(MakeFrame(i, 64)));
    ptrs.push_back(&pkts.back()->ref);
  }
  size_t took = 0;
  while (took < 63) took += port_->Tx(0, std::span(ptrs).subspan(took, std::min<size_t>(32, 63 - took + 1)));
  EXPECT_EQ(took, 63u);
  EXPECT_EQ(Calls(rxq()), 1u);  // the Tx that ran out gave it
  EXPECT_EQ(port_->signal_due(0, true), 0u);
  EXPECT_EQ(PopUsed(rxq()).size(), 64u);
  // Two buffers, both filled: nothing ran out inside Tx; TxRoom finds none and gives it.
  PostRx(2);
  AskForCalls(rxq());
  ASSERT_NO_FATAL_FAILURE(Send(2));
  EXPECT_EQ(Calls(rxq()), 0u);
  EXPECT_EQ(port_->TxRoom(0), 0u);
  EXPECT_EQ(Calls(rxq()), 1u);
  EXPECT_EQ(PopUsed(rxq()).size(), 2u);
}

TEST_P(ModeratedDataPath, TransmitCompletionsAreSignalledByTime) {
  ASSERT_NO_FATAL_FAILURE(Connect());
  std::lock_guard worker(worker_.mutex());
  Calls(txq());
  AskForCalls(txq());
  for (uint32_t i = 0; i < 4; ++i) AddTx(MakeFrame(i, 80));
  txq().Publish();
  Batch b;
  ASSERT_EQ(port_->Rx(0, b, kBurst), 4u);
  port_->RxDone(0, b, 4);
  EXPECT_EQ(Calls(txq()), 0u);  // tx_frames = 0: time alone
  EXPECT_EQ(PopUsed(txq()).size(), 4u);  // the completions are published, only the signal waits
  // An empty poll leaves it deferred.
  b.Clear();
  ASSERT_EQ(port_->Rx(0, b, kBurst), 0u);
  port_->RxDone(0, b, 0);
  EXPECT_EQ(Calls(txq()), 0u);
  EXPECT_EQ(port_->FlushRxSignal(0, MonotonicNowNs() + uint64_t{kUs} * 1000, false), 0u);
  EXPECT_EQ(Calls(txq()), 1u);
  EXPECT_EQ(port_->tx_interrupts(), 1u);
}

INSTANTIATE_TEST_SUITE_P(Rings, ModeratedDataPath, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "packed" : "split"; });

}  // namespace
}  // namespace nicmux
