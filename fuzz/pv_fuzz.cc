// libFuzzer target: the host side of pvdev (the pv port: its rings and its control mailbox)
// against a driver that writes anything anywhere it may write. A fresh connection (and region)
// per input; with bit 2 of the first byte the driver registers 64 KiB of its own memory (a
// memfd) as region 1 first. Each step of the input:
//   [0] % 11: 0 a control request (type, len, payload bytes: any)    1 the tx ring's posted
//   moves by a signed byte    2 a tx descriptor gets 32 input bytes    3 the rx ring's posted
//   moves    4 an rx descriptor gets 32 bytes    5 Rx then RxDone of a prefix    6 Tx of frames
//   of input-chosen lengths (with or without a partial checksum)    7 arm and disarm notify
//   8 a memory request on the socket (MEM_ADD of the memfd or MEM_DEL; type, id, offset, size
//   from the input)    9 a flow request (FLOW_CREATE or VALIDATE of a rule built from the
//   input, half the time every byte of it the input's; FLOW_DESTROY of a small id; FLOW_FLUSH)
//   10 empty buffers posted on pair 1's rx ring (a rule's queue 1)
// With bit 3 of the first byte the driver configures two queue pairs; frames of step 6 are
// IPv4/UDP with input-chosen ports half the time, so that rules match.
// The port must never crash, touch memory outside the region's buffer area or the driver's
// registered memory for a frame (ASan would see a read past the mapping; each PacketRef is also
// checked against them), or take more than a burst; every lie ends in a drop or a broken
// device.
#include <sys/mman.h>
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
    o.queues = 2;
    o.max_flows = 8;
    auto p = CreatePvPort(o, x->loop.get(), &x->workers);
    if (!p) std::abort();
    x->port = std::move(*p);
    return x;
  }();
  return *h;
}

// Whether [p, p + len) lies inside [off, off + size) of one of nicmuxd's mappings of the memfd
// named `name` (not the driver's own mapping at `driver`): the driver's registered memory
// ("nmxfz-mem"), or the region ("nicmux-pv") whose buffer area a frame may lie in.
bool InHostMapping(const std::byte* p, size_t len, const char* name, const std::byte* driver, size_t off, size_t size) {
  std::FILE* f = std::fopen("/proc/self/maps", "r");
  if (!f) return false;
  char line[512];
  bool in = false;
  while (!in && std::fgets(line, sizeof line, f)) {
    if (!std::strstr(line, name)) continue;
    char* dash = nullptr;
    const auto start = reinterpret_cast<std::byte*>(std::strtoull(line, &dash, 16));
    const auto end = reinterpret_cast<std::byte*>(std::strtoull(dash + 1, nullptr, 16));
    if (start == driver || static_cast<size_t>(end - start) < off + size) continue;
    if (p >= start + off && p + len <= start + off + size) in = true;
  }
  std::fclose(f);
  return in;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  SetLogLevel(LogLevel::kError);
  Harness& h = Get();
  {
    testing::RawPvDriver d(h.loop.get());
    if (!d.Connect(h.path).empty()) std::abort();
    // The driver's own memory: 64 KiB, registered as region 1 with bit 2.
    constexpr size_t kMem = 65536;
    UniqueFd mem(::memfd_create("nmxfz-mem", MFD_CLOEXEC));
    if (!mem.valid() || ::ftruncate(mem.get(), kMem) != 0) std::abort();
    void* mp = ::mmap(nullptr, kMem, PROT_READ | PROT_WRITE, MAP_SHARED, mem.get(), 0);
    if (mp == MAP_FAILED) std::abort();
    auto* mbase = static_cast<std::byte*>(mp);
    for (size_t i = 0; i < kMem; ++i) mbase[i] = std::byte(i);
    const bool registered = size && (data[0] & 4) && d.MemAdd(1, mem.get(), 0, kMem).status == 0;
    if (size && (data[0] & 1)) {
      d.Start(data[0] & 8 ? 2 : 1, data[0] & 2 ? NMX_PV_TX_TCP_CKSUM | NMX_PV_TX_IPV4_CKSUM : 0);
    }
    size_t pos = size ? 1 : 0;
    auto byte = [&]() -> uint8_t { return pos < size ? data[pos++] : 0; };
    std::vector<std::byte> frame(300);
    for (size_t i = 0; i < frame.size(); ++i) frame[i] = std::byte(i);
    // An IPv4/UDP frame (ports set per step).
    std::vector<std::byte> udp(frame);
    const uint8_t hdr[24] = {2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0, 0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17};
    std::memcpy(udp.data(), hdr, sizeof hdr);
    uint32_t rx1 = 0;  // buffers posted on pair 1's rx ring
    // A request written into the mailbox (no wait: the loop turns once).
    auto request = [&](uint16_t type, const void* payload, uint16_t len) {
      nmx_pv_ctrl* c = d.c();
      c->req.type = type;
      c->req.len = len;
      if (len) std::memcpy(c->req.payload, payload, len);
      __atomic_store_n(&c->req_seq, c->req_seq + 1, __ATOMIC_RELEASE);
      d.Kick(0);
      h.loop->RunOnce(0);
    };
    for (int steps = 0; pos < size && steps < 200; ++steps) {
      switch (byte() % 11) {
        case 0: {
          const uint16_t type = byte() % 18;
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
          // In registered memory, near its end half the time.
          if (registered && (slot & 5) == 4) {
            d.tx(0)->desc[slot].region = 1;
            d.tx(0)->desc[slot].offset = (slot & 8 ? kMem - 300 : 0) + (d.tx(0)->desc[slot].offset & 511);
          }
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
          if (registered && (slot & 5) == 4) {
            d.rx(0)->desc[slot].region = 1;
            d.rx(0)->desc[slot].offset = (slot & 8 ? kMem - 300 : 0) + (d.rx(0)->desc[slot].offset & 511);
          }
          break;
        }
        case 5: {
          Batch b;
          const size_t n = h.port->Rx(0, b, kBurst);
          if (n > kBurst || n != b.size()) std::abort();
          for (uint32_t i = 0; i < b.size(); ++i) {
            const PacketRef& p = b[i];
            for (uint16_t s = 0; s < p.nsegs; ++s) {
              // The buffer area of nicmuxd's mapping of the region (not the driver's, at d.base:
              // comparing with that one took every frame longer than a PacketRef's private head
              // for a read outside the area; 52 minutes of fuzzing first made one), or the
              // driver's registered memory as nicmuxd maps it.
              const std::byte* at = p.segs[s].data;
              const size_t len = p.segs[s].len;
              if (!InHostMapping(at, len, "nicmux-pv", d.base, d.h()->bufs_offset, d.h()->bufs_size) &&
                  !InHostMapping(at, len, "nmxfz-mem", mbase, 0, kMem)) {
                std::abort();
              }
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
            const uint8_t kind = byte();
            const uint32_t len = 14 + byte() % 280;
            std::byte* f = frame.data();
            if (kind & 1) {
              f = udp.data();
              udp[34] = std::byte(kind & 2 ? 0x12 : 0x40);
              udp[36] = std::byte{0x12};
              udp[37] = std::byte(kind >> 2);  // dst port 0x12xx
            }
            PacketFromFlat(&ps[i], &segs[i], f, len);
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
          h.port->ArmAllNotify(&fds);
          h.port->DisarmAllNotify();
          break;
        }
        case 8: {
          nmx_pv_sock_req req{};
          const uint8_t how = byte();
          req.type = how & 1 ? uint32_t{NMX_PV_SOCK_MEM_DEL} : how & 2 ? uint32_t{NMX_PV_SOCK_MEM_ADD} : uint32_t{how};
          req.seq = ++d.sock_seq;
          req.id = byte() % 70;
          req.fd_offset = uint64_t{byte()} << (byte() % 64);
          req.size = uint64_t{byte()} << (byte() % 64);
          std::vector<int> fds;
          if (how & 4) fds.push_back(mem.get());
          if (how & 8) fds.push_back(mem.get());
          if (d.SockSend(req, fds, how & 16 ? 5 : sizeof req)) d.SockAnswer();
          break;
        }
        case 9: {
          const uint8_t op = byte();
          if ((op & 3) < 2) {
            nmx_pv_flow_rule r{};
            if (op & 0x80) {  // every byte the input's
              for (size_t i = 0; i < sizeof r; ++i) reinterpret_cast<uint8_t*>(&r)[i] = byte();
            } else {  // plausible: known bits, small queues, a port or two
              r.priority = byte() % 4;
              r.items = byte() & 0x3f;
              r.actions = byte() & 0x0f;
              if (r.actions & NMX_PV_FLOW_ACTION_QUEUE) r.queue = byte() % 3;
              if (r.actions & NMX_PV_FLOW_ACTION_MARK) r.mark = byte();
              if (r.actions & NMX_PV_FLOW_ACTION_RSS) {
                r.rss_queue_num = byte() % 4;
                for (uint32_t i = 0; i < r.rss_queue_num; ++i) r.rss_queues[i] = byte() % 3;
                r.rss_types = byte() & 0x3f;
                if (byte() & 1) {
                  r.rss_key_len = NMX_PV_FLOW_RSS_KEY;
                  for (auto& k : r.rss_key) k = byte();
                }
              }
              const uint8_t m = byte();
              if (m & 1) r.spec.l4_dst = static_cast<uint16_t>(0x12 | byte() << 8), r.mask.l4_dst = 0xffff;
              if (m & 2) r.spec.ip_proto = 17, r.mask.ip_proto = 0xff;
              if (m & 4) r.spec.eth_type = 0x0008, r.mask.eth_type = byte();
              if (m & 8) r.mask.ip_src[byte() % 16] = byte();
            }
            request((op & 3) == 0 ? NMX_PV_MSG_FLOW_CREATE : NMX_PV_MSG_FLOW_VALIDATE, &r, sizeof r);
          } else if ((op & 3) == 2) {
            const nmx_pv_flow_id id{static_cast<uint32_t>(byte() % 10), op & 4 ? 1u : 0u};
            request(NMX_PV_MSG_FLOW_DESTROY, &id, sizeof id);
          } else {
            request(NMX_PV_MSG_FLOW_FLUSH, nullptr, 0);
          }
          break;
        }
        case 10: {
          const uint32_t n = 1 + byte() % 8;
          for (uint32_t i = 0; i < n; ++i, ++rx1) d.PostRx(1, 192 + rx1 % 64, 256);
          break;
        }
      }
    }
    ::munmap(mbase, kMem);
  }  // the driver hangs up: the port waits for the next
  for (int i = 0; i < 100 && h.port->State() != "waiting"; ++i) h.loop->RunOnce(1);
  if (h.port->State() != "waiting") std::abort();
  return 0;
}
