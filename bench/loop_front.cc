// bench/loop_front: many virtio-net frontends in one process, forwarding like testpmd's io
// mode: a frame received on port j goes out of port j ^ 1 unchanged. Frames injected on port i
// (source MAC i, destination MAC i ^ 1) therefore circulate through the backend for ever: in
// at i, out at i ^ 1, in at i again. One process polls every port in turn, so with dozens of
// ports the frontend is not a crowd of processes taking turns on a CPU (bench/run scale_peak's
// pktgens), and Debian's testpmd stops at 32 ports (RTE_MAX_ETHPORTS). bench/run's scale_loop.
//
// Each port first announces its MAC (a broadcast, which the ports drop on receipt) and the
// frames are injected only after half a second, so a learning switch floods none of them.
//
// Prints "rx_pps N" every second (frames all ports received in it) and, at the end, a summary
// line: ports, seconds, rx_packets, tx_packets, tx_dropped (no room on the way out).

#include <signal.h>

#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "tools/gen_common.h"
#include "vhost/frontend.h"

namespace nicmux {
namespace {

constexpr const char* kUsage = R"(usage: loop_front [--hugepages] --inject N --seconds S SOCKET...

Attaches to each vhost-user SOCKET (the backend listens; an even number of them) as a
virtio-net frontend, announces port i's MAC 02:00:00:00:HH:LL (i = 0xHHLL), waits half a
second, injects N 64-byte frames on every port (to port i ^ 1's MAC) and forwards what each
port receives out of its pair port for S seconds. One thread, busy polling. --hugepages: each
port's memory (rings and buffers) in 2 MiB huge pages (reserved ones), as a QEMU guest with a
hugetlbfs memory backend has it; otherwise a memfd of 4 KiB pages.
)";

std::atomic<bool> g_stop{false};

void Mac(uint32_t i, uint8_t out[6]) {
  const uint8_t m[6] = {0x02, 0, 0, 0, static_cast<uint8_t>(i >> 8), static_cast<uint8_t>(i)};
  std::memcpy(out, m, 6);
}

struct Port {
  std::unique_ptr<vhost::Frontend> fe;
  uint64_t rx = 0, tx = 0, dropped = 0;
  bool tx_added = false;
};

// One frame into port p's transmit queue; false when it has no free descriptor.
bool Send(Port& p, const std::byte* frame, uint32_t len) {
  vhost::FrontendQueue& tq = p.fe->txq(0);
  if (tq.num_free() == 0) return false;
  const uint32_t hdr = p.fe->net_hdr_len();
  const uint16_t id = tq.NextId();
  std::byte* b = p.fe->Buffer(tq, id);
  std::memset(b, 0, hdr);
  std::memcpy(b + hdr, frame, len);
  virtio::DriverBuffer tb{p.fe->BufferAddr(tq, id), hdr + len, false};
  tq.Add({&tb, 1});
  p.tx_added = true;
  return true;
}

void Flush(Port& p) {
  if (!p.tx_added) return;
  p.tx_added = false;
  p.fe->txq(0).Kick();
}

int Run(int argc, char** argv) {
  uint64_t inject = 1024;
  double seconds = 10;
  bool hugepages = false;
  std::vector<std::string> sockets;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (a == "--hugepages") {
      hugepages = true;
      continue;
    }
    if ((a == "--inject" || a == "--seconds") && i + 1 < argc) {
      const char* v = argv[++i];
      char* end = nullptr;
      const double d = std::strtod(v, &end);
      if (end == v || *end != '\0' || d < 0 || d > 1e7) {
        std::fprintf(stderr, "loop_front: %s %s: expected a number\n", a.c_str(), v);
        return 2;
      }
      if (a == "--inject") {
        inject = static_cast<uint64_t>(d);
      } else {
        seconds = d;
      }
      continue;
    }
    if (a.starts_with("-")) {
      std::fprintf(stderr, "loop_front: unknown option %s\n%s", a.c_str(), kUsage);
      return 2;
    }
    sockets.push_back(a);
  }
  if (sockets.empty() || sockets.size() % 2 != 0 || sockets.size() > 65536) {
    std::fprintf(stderr, "loop_front: give an even number of sockets (pairs of ports)\n%s", kUsage);
    return 2;
  }
  signal(SIGINT, [](int) { g_stop.store(true); });
  signal(SIGTERM, [](int) { g_stop.store(true); });
  signal(SIGPIPE, SIG_IGN);

  std::vector<Port> ports(sockets.size());
  for (size_t i = 0; i < sockets.size(); ++i) {
    vhost::FrontendConfig fc;
    fc.socket_path = sockets[i];
    fc.queue_pairs = 1;
    fc.queue_size = 256;
    fc.mrg_rxbuf = true;
    fc.hugepages = hugepages;
    auto f = vhost::Frontend::Create(fc);
    if (!f) {
      std::fprintf(stderr, "loop_front: %s: %s\n", sockets[i].c_str(), f.error().message().c_str());
      return 1;
    }
    ports[i].fe = std::move(*f);
  }
  std::printf("loop_front: %zu ports connected\n", ports.size());
  std::fflush(stdout);

  std::byte frame[60] = {};
  auto* f = reinterpret_cast<uint8_t*>(frame);
  for (uint32_t i = 0; i < ports.size(); ++i) {  // announcements: broadcast from MAC i
    std::memset(f, 0xff, 6);
    Mac(i, f + 6);
    f[12] = 0x88;
    f[13] = 0xb6;  // IEEE local experimental 2
    Send(ports[i], frame, sizeof frame);
    Flush(ports[i]);
  }

  const uint64_t t0 = GenNowNs();
  const uint64_t inject_at = t0 + 500'000'000;
  const uint64_t end = inject_at + static_cast<uint64_t>(seconds * 1e9);
  bool injected = false;
  uint64_t next_print = inject_at + 1'000'000'000, rx_at_print = 0, rx_total = 0;
  uint32_t round = 0;
  uint64_t now = t0;
  while (!g_stop.load(std::memory_order_relaxed)) {
    if ((round++ & 15) == 0) {
      now = GenNowNs();
      if (now >= end) break;
      if (!injected && now >= inject_at) {
        injected = true;
        rx_at_print = rx_total;
        for (uint32_t i = 0; i < ports.size(); ++i) {
          std::memset(f, 0, sizeof frame);
          Mac(i ^ 1, f);
          Mac(i, f + 6);
          f[12] = 0x88;
          f[13] = 0xb5;  // IEEE local experimental 1
          for (uint64_t k = 0; k < inject; ++k) {
            if (!Send(ports[i], frame, sizeof frame)) {
              ++ports[i].dropped;
              break;
            }
            ++ports[i].tx;
          }
          Flush(ports[i]);
        }
      }
      if (injected && now >= next_print) {
        std::printf("rx_pps %" PRIu64 "\n", rx_total - rx_at_print);
        std::fflush(stdout);
        rx_at_print = rx_total;
        next_print += 1'000'000'000;
      }
    }
    for (uint32_t j = 0; j < ports.size(); ++j) {
      Port& in = ports[j];
      Port& out = ports[j ^ 1];
      virtio::UsedBuffer u;
      vhost::FrontendQueue& otq = out.fe->txq(0);
      while (otq.PopUsed(&u) == virtio::PopStatus::kOk) {
      }
      vhost::FrontendQueue& rq = in.fe->rxq(0);
      const uint32_t hdr = in.fe->net_hdr_len();
      uint32_t got = 0;
      while (got < 32 && rq.PopUsed(&u) == virtio::PopStatus::kOk) {
        ++got;
        const std::byte* b = in.fe->Buffer(rq, u.id);
        // UNTRUSTED: the backend's length, clamped by PopUsed to the buffer; a frame shorter
        // than a header or a broadcast (an announcement) is not forwarded.
        if (u.len >= hdr + 14 && static_cast<uint8_t>(b[hdr]) != 0xff) {
          ++in.rx;
          ++rx_total;
          if (Send(out, b + hdr, std::min<uint32_t>(u.len - hdr, 1514))) {
            ++out.tx;
          } else {
            ++out.dropped;
          }
        }
        virtio::DriverBuffer rb{in.fe->BufferAddr(rq, rq.NextId()), in.fe->config().buf_bytes, true};
        rq.Add({&rb, 1});
      }
      if (got) {
        rq.Kick();
        Flush(out);
      }
    }
  }
  uint64_t rx = 0, tx = 0, dropped = 0;
  for (const Port& p : ports) {
    rx += p.rx;
    tx += p.tx;
    dropped += p.dropped;
  }
  std::printf("summary ports=%zu seconds=%.3f rx_packets=%" PRIu64 " tx_packets=%" PRIu64 " tx_dropped=%" PRIu64 "\n",
              ports.size(), (GenNowNs() - inject_at) / 1e9, rx, tx, dropped);
  return 0;
}

}  // namespace
}  // namespace nicmux

int main(int argc, char** argv) { return nicmux::Run(argc, argv); }
