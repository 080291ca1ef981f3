// nicmux-pvgen: a traffic source, sink and reflector on a pvdev (a nicmuxd `pv` port), through
// the driver library src/pv/guest/nicmux_pv.h. Its frames, their verification and its final
// summary line are nicmux-pktgen's (tools/pktgen_frames.h), so a pvgen on a pv port and a
// pktgen on a vhost-user port of the same nicmuxd exchange traffic and verify each other's
// bytes. See --help.
//
// One thread drives every queue pair (the library's data path has one owner per queue).
// Frames are built in a staging area and copied into the device's buffers by tx_burst; a
// sender asks for the ring's room first (nmx_pv_tx_free) and builds only what fits, so a
// sequence number is never spent on a frame the ring refused. A reflector receives only as
// many frames as its tx ring has room for and sends them from the rx buffers themselves (MACs
// swapped in place), giving them back after the copy: no backlog.
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "pv/guest/nicmux_pv.h"
#include "tools/gen_common.h"
#include "tools/pktgen_frames.h"

namespace nicmux {
namespace {

constexpr const char* kUsage = R"(usage: nicmux-pvgen --socket PATH --mode MODE [options]
       nicmux-pvgen --pci BDF|auto --mode MODE [options]      (in a QEMU guest)

Opens a pvdev (a nicmuxd pv port's socket) with nicmux's pv driver library, prints what the
device offers (GET_INFO: queues, MTU, offloads, uplink), configures it, sets its queues up,
starts it and sends, receives or reflects packets in nicmux-pktgen's format, printing rates as
it runs and a final "summary" line of key=value pairs (the same as nicmux-pktgen's; ring=pv).

modes:
  tx        send packets (received ones are counted and dropped)
  rx        receive and count packets
  reflect   send every received packet back, MAC addresses swapped
  bidir     send and receive at once
  ping      send timestamped frames (pace them with --rate) to a reflector and measure each
            round trip (spins while one is outstanding): the summary gets rtt_p50_us, rtt_p99_us, rtt_p999_us, rtt_max_us

options:
  --socket PATH      the pv port's socket (this or --pci)
  --pci BDF|auto     in a QEMU guest: the ivshmem-doorbell device of a pv port with
                     transport=ivshmem, through sysfs (root): its PCI address (0000:00:04.0),
                     or auto: the first ivshmem device holding a pvdev. Polling only (no
                     interrupts): idle waits are 10 ms sleeps
  --size BYTES       frame size without FCS, 60..65000 (default 64); at most the device's
                     buffer size (the port's buf_size) and its max_frame
  --rate PPS         packets per second to send (default: as fast as possible)
  --poisson          with --rate: one packet at a time, at random gaps (exponential, mean
                     1/PPS: a Poisson process, like many independent senders)
  --count N          stop after sending N packets (tx, bidir) or receiving N (rx, reflect)
  --duration S       stop after S seconds (default 10; with --count: the time limit)
  --verify           check every received frame's header, length and every payload byte,
                     and sequence numbers per stream (lost / reordered counts)
  --queues N         queue pairs to configure and use (default 1; at most the device's);
                     packets are spread over them
  --stream ID        stream id put in sent frames, 0..2^28-1 (default: derived from the pid);
                     sequence numbers are kept per stream and transmit queue
  --mac MAC          the device's address (MAC_SET) and the source MAC of sent frames
                     (default: the device's own, from GET_INFO)
  --peer-mac MAC     destination MAC of sent frames (default 02:6e:6d:78:00:02); through a
                     learning switch give each endpoint its own --mac and the other's as
                     --peer-mac, or every frame is flooded
  --tso MSS          send TCP/IPv4 frames of --size bytes (up to 65000) with the device's TCP
                     checksum and, when longer than one MSS, TSO requests (the device must offer
                     tcp_tso: a pv port with buf_size=66560 and an uplink that takes TSO).
                     Sequence numbers count payload bytes, the payload is a pattern of them: any
                     receiver verifies segments
  --static-payload   with --tso: build each staging buffer's payload once, then only its
                     headers (receivers must not --verify the payload)
  --mtu N            the MTU to configure (default: keep the device's)
  --no-promisc       turn promiscuous mode off: only frames for --mac, broadcast and multicast
  --yield            sched_yield() after every round: for two endpoints sharing one CPU
  --busy-poll        never sleep on receive notifications when idle (spin, as DPDK apps do)
  --rtt-file PATH    ping: write every round trip (ns, one per line) to PATH
  --interval S       seconds between progress lines (default 1; 0: none)
  --delay S          wait S seconds after starting the device before sending
  --hold             after connecting, send nothing until a SIGUSR1 comes (receive meanwhile);
                     the --duration limit counts from connecting
  --announce         on connecting, send one broadcast frame from --mac (ethertype 0x88b6, not
                     counted) so a learning switch knows where it is before any traffic
  --timeout MS       the wait for each control answer (default 5000)
  -h, --help         this text

exit status: 0 when the run completed (and, with --verify, every frame checked out and
none was lost); 1 otherwise (the device refused a request, broke or went away); 2 for a bad
command line.
)";

constexpr uint16_t kBurst = 32;

// The options pvgen has beyond GenOptions (tools/gen_common.h). --mac: the device's MAC is
// set to it (MAC_SET); without it pvgen sends from the device's own.
struct Options : GenOptions {
  std::string socket;
  std::string pci;  // --pci: a BDF, or "auto"
  uint32_t queues = 1;
  uint32_t mtu = 0;
  bool promisc_off = false;
  int timeout_ms = NMX_PV_DEFAULT_TIMEOUT_MS;
};

const GenCli kCli("nicmux-pvgen");

Options Parse(int argc, char** argv) {
  Options o;
  o.stream = static_cast<uint32_t>(getpid()) & 0xfffff;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) kCli.Usage(a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (ParseGenOption(kCli, a, val, o)) {
    } else if (a == "--socket") {
      o.socket = val();
    } else if (a == "--pci") {
      o.pci = val();
    } else if (a == "--mtu") {
      o.mtu = static_cast<uint32_t>(kCli.Num(a, val(), 68, 65535));
    } else if (a == "--no-promisc") {
      o.promisc_off = true;
    } else if (a == "--queues") {
      o.queues = static_cast<uint32_t>(kCli.Num(a, val(), 1, NMX_PV_MAX_QUEUE_PAIRS));
    } else if (a == "--timeout") {
      o.timeout_ms = static_cast<int>(kCli.Num(a, val(), 1, 600000));
    } else {
      kCli.Usage("unknown argument '" + a + "'");
    }
  }
  if (o.socket.empty() == o.pci.empty()) kCli.Usage("one of --socket and --pci is required");
  if (o.mode.empty()) kCli.Usage("--mode is required");
  if (o.poisson && !o.rate) kCli.Usage("--poisson needs --rate");
  if (o.static_payload && !o.tso) kCli.Usage("--static-payload needs --tso");
  return o;
}

std::string OffloadNames(uint64_t bits, bool tx) {
  static const char* kTx[] = {"ipv4_cksum", "tcp_cksum", "udp_cksum", "tcp_tso"};
  static const char* kRx[] = {"ipv4_cksum", "tcp_cksum", "udp_cksum", "rss_hash"};
  std::string s;
  for (int b = 0; b < 64; ++b) {
    if (!(bits & (uint64_t{1} << b))) continue;
    s += s.empty() ? "" : " ";
    s += b < 4 ? (tx ? kTx[b] : kRx[b]) : "bit" + std::to_string(b);
  }
  return s.empty() ? "none" : s;
}

void PrintInfo(const char* what, const nmx_pv_info& i) {
  std::printf("pvgen: %s: generation %u, queues %u rx / %u tx, ring %u, buf_size %u, mtu %u (%u..%u), "
              "max_frame %u, mac %s, link %s%s, promisc %s\n",
              what, i.generation, i.max_rx_queues, i.max_tx_queues, i.ring_size, i.buf_size, i.mtu, i.min_mtu,
              i.max_mtu, i.max_frame, MacString(i.mac).c_str(), i.link_up ? "up" : "down",
              i.link_speed_mbps ? (" " + std::to_string(i.link_speed_mbps) + " Mbit/s").c_str() : "",
              i.promisc ? "on" : "off");
  std::printf("pvgen: offloads tx: %s; rx: %s; uplink: %s\n", OffloadNames(i.tx_offloads, true).c_str(),
              OffloadNames(i.rx_offloads, false).c_str(), i.uplink[0] ? i.uplink : "none");
  std::fflush(stdout);
}

struct DevCloser {
  void operator()(nmx_pv_dev* d) const { nmx_pv_close(d); }
};

int Fail(nmx_pv_dev* dev, const char* what, int rc) {
  std::fprintf(stderr, "nicmux-pvgen: %s: %s\n", what, nmx_pv_strerror(dev)[0] ? nmx_pv_strerror(dev) : std::strerror(-rc));
  return 1;
}

int Run(Options& o) {
  char err[512];
  std::unique_ptr<nmx_pv_dev, DevCloser> owner(
      o.pci.empty() ? nmx_pv_open(o.socket.c_str(), err, sizeof err)
                    : nmx_pv_open_pci(o.pci == "auto" ? nullptr : o.pci.c_str(), err, sizeof err));
  nmx_pv_dev* dev = owner.get();
  if (o.socket.empty()) o.socket = "pci " + o.pci;  // what the messages below call the device
  if (!dev) {
    std::fprintf(stderr, "nicmux-pvgen: %s: %s\n", o.socket.c_str(), err);
    return 1;
  }
  nmx_pv_set_timeout(dev, o.timeout_ms);
  nmx_pv_info info;
  if (int rc = nmx_pv_get_info(dev, &info); rc < 0) return Fail(dev, "GET_INFO", rc);
  PrintInfo(("device on " + o.socket).c_str(), info);

  // What the run needs of the device, checked before asking for it.
  const uint32_t max_q = std::min(info.max_rx_queues, info.max_tx_queues);
  if (o.queues > max_q) {
    std::fprintf(stderr, "nicmux-pvgen: --queues %u: the device has %u queue pair(s) (the port's queues=)\n",
                 o.queues, max_q);
    return 1;
  }
  if (o.size > nmx_pv_buf_size(dev)) {
    std::fprintf(stderr, "nicmux-pvgen: --size %u: the device's buffers hold %u bytes (the port's buf_size=)\n",
                 o.size, nmx_pv_buf_size(dev));
    return 1;
  }
  if (o.size > info.max_frame) {
    std::fprintf(stderr, "nicmux-pvgen: --size %u: the device takes frames up to %u bytes\n", o.size, info.max_frame);
    return 1;
  }
  const bool needs_tso = o.tso && o.size - kTcpHdrs > o.tso;
  uint64_t tx_offloads = 0;
  if (o.tso) {
    tx_offloads = NMX_PV_TX_TCP_CKSUM | (needs_tso ? NMX_PV_TX_TCP_TSO : 0);
    if ((info.tx_offloads & tx_offloads) != tx_offloads) {
      std::fprintf(stderr, "nicmux-pvgen: --tso: the device does not offer %s (it offers %s; uplink: %s)\n",
                   OffloadNames(tx_offloads & ~info.tx_offloads, true).c_str(),
                   OffloadNames(info.tx_offloads, true).c_str(), info.uplink[0] ? info.uplink : "none");
      return 1;
    }
  } else if (o.size > (o.mtu ? o.mtu : info.mtu) + 14) {
    std::printf("pvgen: note: %u-byte frames are longer than the MTU (%u) allows: a switch may drop them (--mtu)\n",
                o.size, o.mtu ? o.mtu : info.mtu);
  }

  struct nmx_pv_configure conf{};
  conf.nb_rx_queues = conf.nb_tx_queues = o.queues;
  conf.tx_offloads = tx_offloads;
  conf.rx_offloads = info.rx_offloads;
  conf.mtu = o.mtu;
  if (int rc = nmx_pv_configure(dev, &conf); rc < 0) return Fail(dev, "CONFIGURE", rc);
  if (o.mac_given) {
    if (int rc = nmx_pv_mac_set(dev, o.mac); rc < 0) return Fail(dev, "MAC_SET", rc);
  } else {
    std::memcpy(o.mac, info.mac, 6);
  }
  if (o.promisc_off) {
    if (int rc = nmx_pv_promisc_set(dev, 0); rc < 0) return Fail(dev, "PROMISC_SET", rc);
  }
  for (uint32_t q = 0; q < o.queues; ++q) {
    if (int rc = nmx_pv_queue_setup(dev, q, NMX_PV_QUEUE_RX); rc < 0) return Fail(dev, "QUEUE_SETUP rx", rc);
    if (int rc = nmx_pv_queue_setup(dev, q, NMX_PV_QUEUE_TX); rc < 0) return Fail(dev, "QUEUE_SETUP tx", rc);
  }
  if (int rc = nmx_pv_start(dev); rc < 0) return Fail(dev, "START", rc);
  std::memcpy(g_src_mac, o.mac, 6);
  std::memcpy(g_dst_mac, o.peer_mac, 6);
  const uint32_t ring = nmx_pv_ring_size(dev);

  const bool ping = o.ping(), send = o.sends(), reflect = o.reflect();
  const bool tx_only = o.tx_only(), rx_side = o.rx_side();
  std::vector<uint32_t> rtt_ns;
  std::printf("pvgen: connected to %s, %u queue pair(s), ring %u, buf_size %u, mac %s, mode %s, size %u\n",
              o.socket.c_str(), o.queues, ring, nmx_pv_buf_size(dev), MacString(o.mac).c_str(), o.mode.c_str(),
              o.size);
  std::fflush(stdout);
  if (o.announce) {
    uint8_t f[60] = {};
    std::memset(f, 0xff, 6);
    std::memcpy(f + 6, g_src_mac, 6);
    f[12] = 0x88;
    f[13] = 0xb6;  // IEEE local experimental 2: a receiving pktgen/pvgen counts it as rx_other
    nmx_pv_pkt p{};
    p.data = f;
    p.len = sizeof f;
    nmx_pv_tx_burst(dev, 0, &p, 1);
  }

  Stats st;
  RxAccount rx_account(o, &st, &rtt_ns);
  // Per transmit queue: its sequence, kBurst staging frames, and (--static-payload) which of
  // them hold a payload already.
  std::vector<uint64_t> seq(o.queues, 0);
  std::vector<std::vector<uint8_t>> stage(o.queues, std::vector<uint8_t>(size_t{kBurst} * o.size));
  std::vector<std::vector<bool>> staged(o.queues, std::vector<bool>(kBurst, false));
  nmx_pv_pkt rx[kBurst], tx[kBurst];
  const uint64_t t0 = GenNowNs();
  const double limit_s = o.duration + o.delay;
  Progress progress(o, t0);
  Pacer pacer(o);
  Backoff backoff(&pacer);
  uint32_t idle = 0;
  bool tx_done = !send;
  bool released = !o.hold;
  double send_from = o.delay;
  bool failed = false;
  int events = nmx_pv_events(dev);

  uint64_t now_ns = t0;
  uint64_t round = 0;
  auto elapsed = [&] { return (now_ns - t0) / 1e9; };
  while (!g_stop.load(std::memory_order_relaxed)) {
    if ((round++ & 31) == 0) now_ns = GenNowNs();
    const double t = elapsed();
    if (t >= limit_s) break;
    if (!released && g_go.load(std::memory_order_relaxed)) {
      released = true;
      send_from = std::max(o.delay, t);
      std::printf("pvgen: released at t=%.3fs\n", t);
      std::fflush(stdout);
    }
    bool work = false;
    for (uint32_t k = 0; k < o.queues; ++k) {
      // Receive (a reflector: no more than it can send back at once).
      const uint16_t want = reflect ? static_cast<uint16_t>(std::min<uint32_t>(kBurst, nmx_pv_tx_free(dev, k))) : kBurst;
      const uint16_t n = want ? nmx_pv_rx_burst(dev, k, rx, want) : 0;
      uint16_t nref = 0;
      for (uint16_t i = 0; i < n; ++i) {
        uint8_t* f = static_cast<uint8_t*>(rx[i].data);
        const uint32_t len = rx[i].len;
        // (pv delivers no partial checksums.)
        if (rx_account.Take(f, len, false)) {  // reflect it
          // The buffer is ours until rx_done: swap the MACs in place and send it from there.
          uint8_t m[6];
          std::memcpy(m, f, 6);
          std::memcpy(f, f + 6, 6);
          std::memcpy(f + 6, m, 6);
          tx[nref] = nmx_pv_pkt{};
          tx[nref].data = f;
          tx[nref].len = len;
          ++nref;
        }
      }
      if (nref) {
        const uint16_t sent = nmx_pv_tx_burst(dev, k, tx, nref);  // all: tx_free said so
        st.tx += sent;
        for (uint16_t i = 0; i < sent; ++i) st.tx_bytes += tx[i].len;
      }
      if (n) {
        nmx_pv_rx_done(dev, k, n);
        work = true;
      }
      // Transmit.
      if (send && !tx_done && released && t >= send_from) {
        uint64_t allowed = pacer.Allowance(t, send_from, st.tx, kBurst);
        allowed = std::min<uint64_t>(allowed, nmx_pv_tx_free(dev, k));
        uint16_t m = 0;
        while (m < allowed) {
          if (o.count && st.tx + m >= o.count) {
            tx_done = true;
            break;
          }
          uint8_t* b = stage[k].data() + size_t{m} * o.size;
          nmx_pv_pkt& p = tx[m];
          p = nmx_pv_pkt{};
          p.data = b;
          p.len = o.size;
          if (o.tso) {
            BuildTcpFrame(b, o.size, k, seq[k], !o.static_payload || !staged[k][m]);
            staged[k][m] = true;
            seq[k] += o.size - kTcpHdrs;
            p.flags = NMX_PV_DESC_IPV4 | NMX_PV_DESC_TCP_CKSUM | (needs_tso ? NMX_PV_DESC_TSO : 0);
            p.l2_len = 14;
            p.l3_len = 20;
            p.l4_len = 20;
            p.tso_segsz = static_cast<uint16_t>(o.tso);
          } else {
            BuildFrame(reinterpret_cast<std::byte*>(b), o.size, (o.stream << 4) | k, seq[k]++);
          }
          if (ping) {
            const uint64_t t_ns = GenNowNs();
            std::memcpy(b + kMinFrame, &t_ns, 8);
          }
          ++m;
        }
        if (m) {
          const uint16_t sent = nmx_pv_tx_burst(dev, k, tx, m);  // all: tx_free said so
          st.tx += sent;
          st.tx_bytes += uint64_t{sent} * o.size;
          work = true;
        }
      }
    }
    if (nmx_pv_status(dev, err, sizeof err) != NMX_PV_STATUS_OK) {
      std::fprintf(stderr, "nicmux-pvgen: the device is broken: %s; stopping\n", err);
      failed = true;
      break;
    }
    // Done? Only once the host took every frame posted: closing the connection stops the
    // device, and what is still in a tx ring is lost.
    auto drained = [&] {
      bool d = true;
      for (uint32_t k = 0; k < o.queues; ++k) d &= nmx_pv_tx_free(dev, k) == ring;
      return d;
    };
    if (o.count && rx_side && st.rx >= o.count && (!reflect || drained())) break;
    if (o.count && send && tx_done && drained() && (tx_only || st.rx >= o.count)) break;
    progress.Maybe(now_ns, st);
    if ((round & 1023) == 0) {
      if (!nmx_pv_connected(dev)) {
        char why[320];
        nmx_pv_status(dev, why, sizeof why);  // the VM transport: nicmuxd's reason in the header
        std::fprintf(stderr, "nicmux-pvgen: the host closed the connection%s%s\n", why[0] ? ": " : "", why);
        failed = true;
        break;
      }
      if (const int ev = nmx_pv_events(dev); ev != events) {
        // The link or the capabilities changed (the uplink came, went or renegotiated).
        events = ev;
        if (nmx_pv_get_info(dev, &info) == 0) PrintInfo("the device changed", info);
      }
    }
    const bool sending = send && !tx_done && released;
    const bool spin = ping && st.tx > st.rx;  // a round trip outstanding: a sleep would be measured
    backoff.AfterRound(o, work, sending, spin, elapsed(), send_from, st.tx);
    if (work || sending || spin || o.busy_poll) {
      idle = 0;
    } else if (++idle > 4096) {
      // Nothing to do: sleep until an irq of any pair (or 10 ms).
      idle = 0;
      std::vector<pollfd> p;
      bool pending = false;
      for (uint32_t k = 0; k < o.queues; ++k) {
        if (nmx_pv_irq_arm(dev, k) != 0) pending = true;
        p.push_back({nmx_pv_irq_fd(dev, k), POLLIN, 0});
      }
      if (!pending) ::poll(p.data(), p.size(), 10);
      for (uint32_t k = 0; k < o.queues; ++k) nmx_pv_irq_disarm(dev, k);
    }
  }
  now_ns = GenNowNs();
  const double secs = elapsed();
  // Stopped early (time limit, a signal): give the host up to a second to take what is posted.
  for (int i = 0; i < 1000 && !failed && nmx_pv_connected(dev); ++i) {
    bool d = true;
    for (uint32_t k = 0; k < o.queues; ++k) d &= nmx_pv_tx_free(dev, k) == ring;
    if (d) break;
    usleep(1000);
  }
  // What the device and the library counted (a reader's check on the summary).
  nmx_pv_stats ds;
  if (nmx_pv_connected(dev) && nmx_pv_stats_get(dev, &ds) == 0) {
    uint64_t rxp = 0, rxd = 0, txp = 0, txd = 0;
    for (uint32_t q = 0; q < NMX_PV_MAX_QUEUE_PAIRS; ++q) {
      rxp += ds.rx[q].packets;
      rxd += ds.rx[q].dropped;
      txp += ds.tx[q].packets;
      txd += ds.tx[q].dropped;
    }
    std::printf("pvgen: device stats: rx_packets=%" PRIu64 " rx_dropped=%" PRIu64 " rx_no_buffers=%" PRIu64
                " tx_packets=%" PRIu64 " tx_dropped=%" PRIu64 "\n",
                rxp, rxd, ds.rx_no_buffers, txp, txd);
  }
  nmx_pv_queue_counters lib{}, c;
  for (uint32_t q = 0; q < o.queues; ++q) {
    if (nmx_pv_queue_counters_get(dev, q, &c) == 0) {
      lib.tx_dropped += c.tx_dropped;
      lib.tx_kicks += c.tx_kicks;
      lib.rx_kicks += c.rx_kicks;
      lib.rx_len_clamped += c.rx_len_clamped;
    }
  }
  std::printf("pvgen: library: tx_dropped=%" PRIu64 " tx_kicks=%" PRIu64 " rx_kicks=%" PRIu64
              " rx_len_clamped=%" PRIu64 "\n",
              lib.tx_dropped, lib.tx_kicks, lib.rx_kicks, lib.rx_len_clamped);
  bool ok = !failed && lib.tx_dropped == 0;
  if (!GenVerdict(o, st)) ok = false;
  PrintSummary(o.mode.c_str(), o.size, o.queues, "pv", secs, st, o.verify, ok);
  if (ping && !ReportRtt("nicmux-pvgen", o, rtt_ns)) ok = false;
  std::fflush(stdout);
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace nicmux

int main(int argc, char** argv) {
  nicmux::Options o = nicmux::Parse(argc, argv);
  nicmux::InstallGenSignals();
  return nicmux::Run(o);
}
