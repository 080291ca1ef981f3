// libFuzzer target: the host side of pvdev (the pv port: its rings and its control mailbox)
// against a driver that writes anything anywhere it may write. A fresh connection (and region)
// per input; each step of the input:
//   [0] % 8: 0 a control request (type, len, payload bytes: any)    1 the tx ring's posted
//   moves by a signed byte    2 a tx descriptor gets 32 input bytes    3 the rx ring's posted
//   moves    4 an rx descriptor gets 32 bytes    5 Rx then RxDone of a prefix    6 Tx of frames
//   of input-chosen lengths (with or without a partial checksum)    7 arm and disarm notify
// The port must never crash, touch memory outside the region's buffer area for a frame (ASan
// would see a read past the mapping; each PacketRef is also checked against it), or take more
// than a burst; every lie ends in a drop or a broken device.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "base/log.h"
#include "base/pausable.h"
#include "packet/packet.h"
#include "pv/pv_port.h"
#include "tests/support/pv_driver.h"

using namespace nicmux;

namespace {

struct Harness {
  std::unique_ptr<EventLoop> loop;
  NoWorker workers;
  std::string path;
  std::unique_ptr<Port> port;
};

Harness& Get() {
  static Harness* h = [] {
    auto* x = new Harness;
    x->loop = std::move(*EventLoop::Create());
    char dir[] = "/tmp/nmxpvfuzzXXXXXX";
    if (!::mkdtemp(dir)) std::abort();
    x->path = std::string(dir) + "/pv.sock";
    PvPortOptions o;
    o.name = "fz";
    o.socket_path = x->path;
    o.ring = 64;
    o.buf_size = 256;
    o.mtu = 200;
    o.mac[0] = 2;
    auto p = CreatePvPort(o, x->loop.get(), &x->workers);
    if (!p) std::abort();
    x->port = std::move(*p);
    return x;
  }();
  return *h;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  SetLogLevel(LogLevel::kError);
  Harness& h = Get();
  {
    testing::RawPvDriver d(h.loop.get());
    if (!d.Connect(h.path).empty()) std::abort();
    const std::byte* lo = d.base + d.h()->bufs_offset;
    const std::byte* hi = lo + d.h()->bufs_size;
    if (size && (data[0] & 1)) d.Start(1, data[0] & 2 ? NMX_PV_TX_TCP_CKSUM | NMX_PV_TX_IPV4_CKSUM : 0);
    size_t pos = size ? 1 : 0;
    auto byte = [&]() -> uint8_t { return pos < size ? data[pos++] : 0; };
    std::vector<std::byte> frame(300);
    for (size_t i = 0; i < frame.size(); ++i) frame[i] = std::byte(i);
    for (int steps = 0; pos < size && steps < 200; ++steps) {
      switch (byte() % 8) {
        case 0: {
          const uint16_t type = byte() % 16;
          const uint16_t len = byte();
          uint8_t payload[NMX_PV_MSG_PAYLOAD] = {};
          for (uint16_t i = 0; i < len && pos < size; ++i) payload[i] = byte();
          nmx_pv_ctrl* c = d.c();
          c->req.type = type;
          c->req.len = len;  // may lie about its own size
          std::memcpy(c->req.payload, payload, sizeof payload);
          __atomic_store_n(&c->req_seq, c->req_seq + 1 + (byte() & 1), __ATOMIC_RELEASE);
          d.Kick(0);
          h.loop->RunOnce(0);
          break;
        }
        case 1:
          __atomic_store_n(&d.tx(0)->posted, d.tx(0)->posted + static_cast<int8_t>(byte()), __ATOMIC_RELEASE);
          break;
        case 2: {
          const uint32_t slot = byte() % 64;
          for (size_t i = 0; i < sizeof(nmx_pv_desc); ++i) {
            reinterpret_cast<uint8_t*>(&d.tx(0)->desc[slot])[i] = byte();
          }
          // Half the time a plausible buffer, so the frame paths run too.
          if (slot & 1) d.tx(0)->desc[slot].offset = d.buf(slot) + (d.tx(0)->desc[slot].offset & 63);
          if (slot & 2) d.tx(0)->desc[slot].region = 0;
          break;
        }
        case 3:
          __atomic_store_n(&d.rx(0)->posted, d.rx(0)->posted + static_cast<int8_t>(byte()), __ATOMIC_RELEASE);
          break;
        case 4: {
          const uint32_t slot = byte() % 64;
          for (size_t i = 0; i < sizeof(nmx_pv_desc); ++i) {
            reinterpret_cast<uint8_t*>(&d.rx(0)->desc[slot])[i] = byte();
          }
          if (slot & 1) d.rx(0)->desc[slot].offset = d.buf(64 + slot);
          if (slot & 2) d.rx(0)->desc[slot].region = 0;
          break;
        }
        case 5: {
          Batch b;
          const size_t n = h.port->Rx(0, b, kBurst);
          if (n > kBurst || n != b.size()) std::abort();
          for (uint32_t i = 0; i < b.size(); ++i) {
            const PacketRef& p = b[i];
            for (uint16_t s = 0; s < p.nsegs; ++s) {
              if (p.segs[s].data < lo || p.segs[s].data + p.segs[s].len > hi) std::abort();
            }
            std::vector<std::byte> out(p.len);
            CopyPacketTo(p, out.data());
          }
          h.port->RxDone(0, b, n ? byte() % (n + 1) : 0);
          break;
        }
        case 6: {
          const uint32_t n = 1 + byte() % 4;
          std::vector<PacketRef> ps(n);
          std::vector<Segment> segs(n);
          const PacketRef* ptrs[4];
          for (uint32_t i = 0; i < n; ++i) {
            const uint32_t len = 14 + byte() % 280;
            PacketFromFlat(&ps[i], &segs[i], frame.data(), len);
            if (byte() & 1) {
              ps[i].offload.flags = Offload::kNeedsCsum;
              ps[i].offload.csum_start = 14;
              ps[i].offload.csum_offset = 16;
              if (uint32_t{ps[i].offload.csum_start} + 18 > ps[i].head_len) ps[i].offload.flags = 0;
            }
            ptrs[i] = &ps[i];
          }
          const size_t took = h.port->Tx(0, {ptrs, n});
          if (took > n) std::abort();
          break;
        }
        case 7: {
          std::vector<NotifyFd> fds;
          h.port->ArmNotify(&fds);
          h.port->DisarmNotify();
          break;
        }
      }
    }
  }  // the driver hangs up: the port waits for the next
  for (int i = 0; i < 100 && h.port->State() != "waiting"; ++i) h.loop->RunOnce(1);
  if (h.port->State() != "waiting") std::abort();
  return 0;
}
