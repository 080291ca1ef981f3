// nicmux-pktgen: a traffic source, sink and reflector on nicmux's own vhost-user frontend. It
// attaches to any vhost-user backend socket (nicmuxd, DPDK's vhost PMD, OVS) like a container's
// virtio-user would, and counts, paces and verifies packets. See --help.
//
// Frame layout (frame = what the guest sees, no FCS):
//   dst MAC, src MAC, ethertype 0x88b5 (local experimental), magic "NMXP", stream id (u32),
//   sequence number (u64), frame length (u32), then pattern bytes derived from the sequence
//   number: every byte is checked with --verify. (tools/pktgen_frames.h: shared with
//   nicmux-pvgen, which sends and verifies the same frames over a pv port.)
#include <poll.h>
#include <sched.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <unistd.h>

#include "base/log.h"
#include "tools/pktgen_frames.h"
#include "vhost/frontend.h"
#include "virtio/net_hdr.h"

namespace nicmux {
namespace {

constexpr const char* kUsage = R"(usage: nicmux-pktgen --socket PATH --mode MODE [options]

Attaches to a vhost-user backend as a virtio-net frontend and sends, receives or reflects
packets, printing rates as it runs and a final "summary" line of key=value pairs.

modes:
  tx        send packets (received ones are counted and dropped)
  rx        receive and count packets
  reflect   send every received packet back, MAC addresses swapped
  bidir     send and receive at once
  ping      send timestamped frames (pace them with --rate) to a reflector and measure each
            round trip (spins while one is outstanding): the summary gets rtt_p50_us, rtt_p99_us, rtt_p999_us, rtt_max_us

options:
  --socket PATH      the backend's vhost-user socket (required)
  --client           connect to PATH (the default: the backend listens)
  --server           listen on PATH and wait for the backend (a nicmuxd port with `client`)
  --size BYTES       frame size without FCS, 60..65000 (default 64)
  --rate PPS         packets per second to send (default: as fast as possible)
  --count N          stop after sending N packets (tx, bidir) or receiving N (rx, reflect)
  --duration S       stop after S seconds (default 10; with --count: the time limit)
  --verify           check every received frame's header, length and every payload byte,
                     and sequence numbers per stream (lost / reordered counts)
  --queues N         queue pairs (default 1); packets are spread over them
  --packed           use packed virtqueues (default split)
  --no-mrg           do not negotiate VIRTIO_NET_F_MRG_RXBUF
  --ring N           queue size (default 256)
  --stream ID        stream id put in sent frames, 0..2^28-1 (default: derived from the pid);
                     sequence numbers are kept per stream and transmit queue
  --mac MAC          source MAC of sent frames (default 02:6e:6d:78:00:01)
  --peer-mac MAC     destination MAC of sent frames (default 02:6e:6d:78:00:02); through a
                     learning switch give each endpoint its own --mac and the other's as
                     --peer-mac, or every frame is flooded
  --tso MSS          send TCP/IPv4 frames of --size bytes (up to 65000) as TSO frames with a
                     partial checksum, to be cut into MSS-byte segments (negotiates CSUM and
                     HOST_TSO4; the backend must offer them). Sequence numbers count payload
                     bytes, the payload is a pattern of them: any receiver verifies segments
  --udp PORT         with --mode tx: IPv4/UDP frames of --size bytes (at least 42), 10.0.0.1
                     port 10000 + (sequence % 256) -> 10.0.0.2 port PORT (for a receiver's flow
                     rules; the pktgen header under them is overwritten: not verifiable)
  --static-payload   with --tso: write each transmit buffer's payload once, then only its
                     headers (a throughput run: the sender is not bound by writing 64 KiB per
                     frame; receivers must not --verify the payload)
  --offloads         accept TSO frames and partial checksums on receive (negotiates
                     GUEST_CSUM, GUEST_TSO4/6): a backend may deliver TSO frames whole
  --yield            sched_yield() after every round: for two endpoints sharing one CPU
                     (with a backend that drops instead of pushing back, the one not
                     running would overflow its receive ring for a whole time slice)
  --busy-poll        never sleep on receive notifications when idle (spin, as DPDK apps do)
  --rtt-file PATH    ping: write every round trip (ns, one per line) to PATH
  --interval S       seconds between progress lines (default 1; 0: none)
  --delay S          wait S seconds after connecting before sending (the peer port may not
                     be up yet: a switch drops what it cannot deliver)
  --hold             after connecting, send nothing until a SIGUSR1 comes (receive meanwhile):
                     a test releases its senders once every receiver is attached, instead of
                     guessing a --delay; the --duration limit counts from connecting
  --announce         on connecting, send one broadcast frame from --mac (ethertype 0x88b6, not
                     counted, a guest's gratuitous ARP) so a learning switch knows where it is
                     before any traffic: nothing sent to it is flooded
  -h, --help         this text

exit status: 0 when the run completed (and, with --verify, every frame checked out and
none was lost); 1 otherwise; 2 for a bad command line.
)";

struct Options {
  std::string socket;
  bool server = false;
  std::string mode;
  uint32_t size = 64;
  uint64_t rate = 0;
  uint64_t count = 0;
  double duration = 10;
  bool duration_given = false;
  bool verify = false;
  uint32_t queues = 1;
  bool packed = false;
  bool mrg = true;
  uint32_t ring = 256;
  uint32_t stream = 0;
  double interval = 1;
  double delay = 0;
  bool hold = false;
  bool announce = false;
  std::string rtt_file;
  bool busy_poll = false;
  bool yield = false;
  uint32_t tso = 0;  // MSS; 0: pktgen frames
  uint32_t udp = 0;  // --udp PORT: IPv4/UDP frames to PORT (0: pktgen frames)
  bool static_payload = false;
  bool offloads = false;
  uint8_t mac[6] = {0x02, 0x6e, 0x6d, 0x78, 0x00, 0x01};
  uint8_t peer_mac[6] = {0x02, 0x6e, 0x6d, 0x78, 0x00, 0x02};
};

bool ParseMac(const std::string& t, uint8_t* out) {
  unsigned b[6];
  char tail;
  if (std::sscanf(t.c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) != 6) {
    return false;
  }
  for (int i = 0; i < 6; ++i) out[i] = static_cast<uint8_t>(b[i]);
  return true;
}

[[noreturn]] void Usage(const std::string& e) {
  std::fprintf(stderr, "nicmux-pktgen: %s\n(see nicmux-pktgen --help)\n", e.c_str());
  std::exit(2);
}

uint64_t Num(const std::string& opt, const std::string& v, uint64_t lo, uint64_t hi) {
  char* end;
  errno = 0;
  unsigned long long n = std::strtoull(v.c_str(), &end, 10);
  if (v.empty() || *end || errno || n < lo || n > hi) {
    Usage(opt + " " + v + ": expected a number in " + std::to_string(lo) + ".." + std::to_string(hi));
  }
  return n;
}

Options Parse(int argc, char** argv) {
  Options o;
  o.stream = static_cast<uint32_t>(getpid()) & 0xfffff;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) Usage(a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (a == "--socket") {
      o.socket = val();
    } else if (a == "--client") {
      o.server = false;
    } else if (a == "--server") {
      o.server = true;
    } else if (a == "--mode") {
      o.mode = val();
      if (o.mode != "tx" && o.mode != "rx" && o.mode != "reflect" && o.mode != "bidir" && o.mode != "ping") {
        Usage("--mode " + o.mode + ": use tx, rx, reflect, bidir or ping");
      }
    } else if (a == "--size") {
      o.size = static_cast<uint32_t>(Num(a, val(), 60, 65000));
    } else if (a == "--rate") {
      o.rate = Num(a, val(), 1, 1'000'000'000);
    } else if (a == "--count") {
      o.count = Num(a, val(), 1, UINT64_MAX / 2);
    } else if (a == "--duration") {
      std::string v = val();
      char* end;
      o.duration = std::strtod(v.c_str(), &end);
      if (*end || !(o.duration > 0) || o.duration > 86400) Usage("--duration " + v + ": seconds, > 0");
      o.duration_given = true;
    } else if (a == "--tso") {
      o.tso = static_cast<uint32_t>(Num(a, val(), 64, 9000));
    } else if (a == "--udp") {
      o.udp = static_cast<uint32_t>(Num(a, val(), 1, 65535));
    } else if (a == "--static-payload") {
      o.static_payload = true;
    } else if (a == "--offloads") {
      o.offloads = true;
    } else if (a == "--yield") {
      o.yield = true;
    } else if (a == "--hold") {
      o.hold = true;
    } else if (a == "--announce") {
      o.announce = true;
    } else if (a == "--busy-poll") {
      o.busy_poll = true;
    } else if (a == "--rtt-file") {
      o.rtt_file = val();
    } else if (a == "--verify") {
      o.verify = true;
    } else if (a == "--queues") {
      o.queues = static_cast<uint32_t>(Num(a, val(), 1, 8));
    } else if (a == "--packed") {
      o.packed = true;
    } else if (a == "--no-mrg") {
      o.mrg = false;
    } else if (a == "--ring") {
      o.ring = static_cast<uint32_t>(Num(a, val(), 8, 32768));
    } else if (a == "--mac" || a == "--peer-mac") {
      std::string v = val();
      if (!ParseMac(v, a == "--mac" ? o.mac : o.peer_mac)) Usage(a + " " + v + ": expected xx:xx:xx:xx:xx:xx");
      if (a == "--mac" && (o.mac[0] & 1)) Usage("--mac " + v + ": a multicast address cannot be a source");
    } else if (a == "--stream") {
      o.stream = static_cast<uint32_t>(Num(a, val(), 0, (1u << 28) - 1));
    } else if (a == "--delay") {
      std::string v = val();
      char* end;
      o.delay = std::strtod(v.c_str(), &end);
      if (*end || o.delay < 0 || o.delay > 3600) Usage("--delay " + v + ": seconds, >= 0");
    } else if (a == "--interval") {
      std::string v = val();
      char* end;
      o.interval = std::strtod(v.c_str(), &end);
      if (*end || o.interval < 0) Usage("--interval " + v + ": seconds, >= 0");
    } else {
      Usage("unknown argument '" + a + "'");
    }
  }
  if (o.socket.empty()) Usage("--socket is required");
  if (o.mode.empty()) Usage("--mode is required");
  if (o.udp && (o.mode != "tx" || o.tso || o.size < 42)) {
    Usage("--udp: only with --mode tx, without --tso, and --size of at least 42");
  }
  return o;
}

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }
std::atomic<bool> g_go{false};  // --hold: SIGUSR1 came
void OnGo(int) { g_go.store(true); }

int Run(const Options& o) {
  vhost::FrontendConfig fc;
  fc.socket_path = o.socket;
  fc.listen = o.server;
  fc.queue_pairs = o.queues;
  fc.queue_size = o.ring;
  fc.packed = o.packed;
  fc.mrg_rxbuf = o.mrg;
  using virtio::Bit;
  if (o.tso) fc.offloads |= Bit(virtio::kNetFCsum) | Bit(virtio::kNetFHostTso4);
  if (o.offloads) {
    fc.offloads |= Bit(virtio::kNetFGuestCsum) | Bit(virtio::kNetFGuestTso4) | Bit(virtio::kNetFGuestTso6);
  }
  const uint32_t need = o.size + 12;
  fc.buf_bytes = need <= 2048 ? 2048 : (need + 63) / 64 * 64;
  auto f = vhost::Frontend::Create(fc);
  if (!f) {
    std::fprintf(stderr, "nicmux-pktgen: %s\n", f.error().message().c_str());
    return 1;
  }
  vhost::Frontend& fe = **f;
  const uint32_t hdr = fe.net_hdr_len();
  if (o.tso && !(virtio::Has(fe.features(), virtio::kNetFHostTso4) && virtio::Has(fe.features(), virtio::kNetFCsum))) {
    std::fprintf(stderr, "nicmux-pktgen: --tso: the backend does not offer CSUM and HOST_TSO4\n");
    return 1;
  }
  const bool ping = o.mode == "ping";
  const bool send = o.mode == "tx" || o.mode == "bidir" || ping;
  std::vector<uint32_t> rtt_ns;  // ping: one round trip per reflected frame
  const bool reflect = o.mode == "reflect";
  const bool tx_only = o.mode == "tx", bidir = o.mode == "bidir", rx_side = o.mode == "rx" || reflect;
  std::fprintf(stdout, "pktgen: connected to %s, %u queue pair(s), %s ring, mrg_rxbuf %s, mode %s, size %u\n",
               o.socket.c_str(), fe.queue_pairs(), o.packed ? "packed" : "split", o.mrg ? "on" : "off",
               o.mode.c_str(), o.size);
  std::fflush(stdout);
  if (o.announce) {
    vhost::FrontendQueue& tq = fe.txq(0);
    const uint16_t id = tq.NextId();
    std::byte* b = fe.Buffer(tq, id);
    std::memset(b, 0, hdr + 60);
    uint8_t* f = reinterpret_cast<uint8_t*>(b + hdr);
    std::memset(f, 0xff, 6);
    std::memcpy(f + 6, g_src_mac, 6);
    f[12] = 0x88;
    f[13] = 0xb6;  // IEEE local experimental 2: a receiving pktgen counts it as rx_other
    virtio::DriverBuffer tb{fe.BufferAddr(tq, id), hdr + 60, false};
    tq.Add({&tb, 1});
    tq.Kick();
  }

  Stats st;
  Verifier ver;
  // Per queue: a frame being collected from several receive buffers (MRG_RXBUF).
  struct Reassembly {
    std::vector<uint8_t> buf;
    uint32_t left = 0, len = 0;
    bool partial = false;  // the frame's header says NEEDS_CSUM
  };
  TcpVerifier tcp_ver;
  std::vector<Reassembly> reasm_q(fe.queue_pairs());
  for (auto& r : reasm_q) r.buf.resize(65536 + 64);  // any frame a peer may send
  // One sequence per transmit queue: a frame carries stream id << 4 | queue, and order is kept
  // per queue only (as on any multi-queue NIC).
  std::vector<uint64_t> seq(fe.queue_pairs(), 0);
  const uint64_t t0 = MonotonicNowNs();
  const double limit_s = o.duration + o.delay;
  uint64_t next_report = t0 + static_cast<uint64_t>(o.interval * 1e9);
  Stats last{};
  uint64_t last_t = t0;
  uint32_t idle = 0, stalled = 0;
  // Reflect: frames waiting for a transmit buffer.
  std::vector<std::vector<uint8_t>> backlog;
  bool tx_done = !send;
  // Sending starts --delay seconds after connecting or, with --hold, when SIGUSR1 comes (not
  // before --delay); pacing counts from then.
  bool released = !o.hold;
  double send_from = o.delay;

  // clock_gettime is slow in some VMs (here: most of a busy loop's time), so the loop reads
  // the clock once per 32 rounds.
  uint64_t now_ns = t0;
  uint64_t round = 0;
  auto elapsed = [&] { return (now_ns - t0) / 1e9; };
  while (!g_stop.load(std::memory_order_relaxed)) {
    if ((round++ & 31) == 0) now_ns = MonotonicNowNs();
    const double t = elapsed();
    if (t >= limit_s) break;
    if (!released && g_go.load(std::memory_order_relaxed)) {
      released = true;
      send_from = std::max(o.delay, t);
      std::printf("pktgen: released at t=%.3fs\n", t);
      std::fflush(stdout);
    }
    bool work = false;
    for (uint32_t k = 0; k < fe.queue_pairs(); ++k) {
      vhost::FrontendQueue& tq = fe.txq(k);
      vhost::FrontendQueue& rq = fe.rxq(k);
      // Reclaim transmit buffers.
      virtio::UsedBuffer u;
      while (tq.PopUsed(&u) == virtio::PopStatus::kOk) {
      }
      // Receive.
      uint32_t got = 0;
      auto& reasm = reasm_q[k].buf;
      uint32_t& frag_left = reasm_q[k].left;
      uint32_t& frag_len = reasm_q[k].len;
      while (got < 64) {
        if (rq.PopUsed(&u) != virtio::PopStatus::kOk) break;
        ++got;
        const std::byte* b = fe.Buffer(rq, u.id);
        uint32_t len = u.len;
        if (frag_left == 0) {
          virtio::VirtioNetHdrV1 h;
          std::memcpy(&h, b, std::min<uint32_t>(len, sizeof h));
          frag_left = o.mrg ? std::max<uint32_t>(1, h.num_buffers.get()) : 1;
          frag_len = 0;
          reasm_q[k].partial = (h.flags & virtio::kNetHdrFNeedsCsum) != 0;
          b += hdr;
          len = len >= hdr ? len - hdr : 0;
        }
        uint32_t take = std::min<uint32_t>(len, static_cast<uint32_t>(reasm.size()) - frag_len);
        std::memcpy(reasm.data() + frag_len, b, take);
        frag_len += take;
        // Give the buffer back at once.
        virtio::DriverBuffer rb{fe.BufferAddr(rq, rq.NextId()), fc.buf_bytes, true};
        rq.Add({&rb, 1});
        if (--frag_left > 0) continue;
        // TCP mode: a TSO frame or a segment of one.
        if (frag_len >= kTcpHdrs && reasm[12] == 0x08 && reasm[13] == 0x00 && reasm[23] == 6) {
          ++st.rx;
          st.rx_bytes += frag_len;
          if (o.verify) {
            if (!tcp_ver.Check(reasm.data(), frag_len, reasm_q[k].partial, &st)) ++st.bad;
          } else {
            st.tcp_payload += frag_len - kTcpHdrs;
          }
          continue;
        }
        // Not a pktgen frame (another ethertype: ARP, IPv6 neighbour discovery from a host
        // on the same switch): counted apart, neither received nor bad.
        if (frag_len < 14 || reasm[12] != 0x88 || reasm[13] != 0xb5) {
          ++st.other;
          continue;
        }
        ++st.rx;
        st.rx_bytes += frag_len;
        if (ping) {
          // The send time travels in the frame (after the pktgen header).
          if (frag_len >= kMinFrame + 8) {
            uint64_t sent_ns;
            std::memcpy(&sent_ns, reasm.data() + kMinFrame, 8);
            const uint64_t now = MonotonicNowNs();
            if (now >= sent_ns && now - sent_ns < (1ull << 32)) rtt_ns.push_back(static_cast<uint32_t>(now - sent_ns));
          }
          continue;
        }
        if (o.verify && !ver.Check(reasm.data(), frag_len, &st)) ++st.bad;
        if (reflect) {
          std::vector<uint8_t> fr(reasm.begin(), reasm.begin() + frag_len);
          if (frag_len >= 12) {
            std::swap_ranges(fr.begin(), fr.begin() + 6, fr.begin() + 6);
          }
          backlog.push_back(std::move(fr));
        }
      }
      if (got) {
        rq.Kick();
        work = true;
      }
      // Transmit.
      uint32_t added = 0;
      if (reflect) {
        while (!backlog.empty() && tq.num_free() > 0 && added < 64) {
          const uint16_t id = tq.NextId();
          std::byte* b = fe.Buffer(tq, id);
          std::memset(b, 0, hdr);
          const auto& fr = backlog.front();
          std::memcpy(b + hdr, fr.data(), fr.size());
          virtio::DriverBuffer tb{fe.BufferAddr(tq, id), static_cast<uint32_t>(hdr + fr.size()), false};
          tq.Add({&tb, 1});
          ++st.tx;
          st.tx_bytes += fr.size();
          backlog.erase(backlog.begin());
          ++added;
        }
      } else if (send && !tx_done && released && t >= send_from) {
        uint64_t allowed = 32;
        if (o.rate) {
          double due = o.rate * (t - send_from);
          allowed = due > st.tx ? std::min<uint64_t>(32, static_cast<uint64_t>(due - st.tx) + 1) : 0;
        }
        while (added < allowed && tq.num_free() > 0) {
          if (o.count && st.tx >= o.count) {
            tx_done = true;
            break;
          }
          const uint16_t id = tq.NextId();
          std::byte* b = fe.Buffer(tq, id);
          std::memset(b, 0, hdr);
          if (o.tso) {
            virtio::VirtioNetHdrV1 h{};
            h.flags = virtio::kNetHdrFNeedsCsum;
            h.gso_type = o.size - kTcpHdrs > o.tso ? virtio::kNetHdrGsoTcpv4 : virtio::kNetHdrGsoNone;
            h.gso_size = Le16::Of(static_cast<uint16_t>(o.tso));
            h.hdr_len = Le16::Of(static_cast<uint16_t>(kTcpHdrs));
            h.csum_start = Le16::Of(34);
            h.csum_offset = Le16::Of(16);
            std::memcpy(b, &h, std::min<uint32_t>(hdr, sizeof h));
            // (--static-payload: the payload only on a buffer's first use.)
            BuildTcpFrame(reinterpret_cast<uint8_t*>(b + hdr), o.size, k, seq[k],
                          !o.static_payload || seq[k] < uint64_t{o.ring} * (o.size - kTcpHdrs));
            seq[k] += o.size - kTcpHdrs;
          } else {
            BuildFrame(b + hdr, o.size, (o.stream << 4) | k, seq[k]++);
            if (o.udp) {
              // IPv4/UDP over the pktgen header: 10.0.0.1:(10000 + seq % 256) -> 10.0.0.2:udp.
              auto* f = reinterpret_cast<uint8_t*>(b + hdr);
              static const uint8_t ip[20] = {0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2};
              Put16(f + 12, 0x0800);
              std::memcpy(f + 14, ip, sizeof ip);
              Put16(f + 16, static_cast<uint16_t>(o.size - 14));
              Put16(f + 24, static_cast<uint16_t>(~Sum16(f + 14, 20)));
              Put16(f + 34, static_cast<uint16_t>(10000 + seq[k] % 256));
              Put16(f + 36, static_cast<uint16_t>(o.udp));
              Put16(f + 38, static_cast<uint16_t>(o.size - 34));
              Put16(f + 40, 0);  // no checksum (IPv4 allows it)
            }
          }
          if (ping) {
            const uint64_t t_ns = MonotonicNowNs();
            std::memcpy(b + hdr + kMinFrame, &t_ns, 8);
          }
          virtio::DriverBuffer tb{fe.BufferAddr(tq, id), hdr + o.size, false};
          tq.Add({&tb, 1});
          ++st.tx;
          st.tx_bytes += o.size;
          ++added;
        }
      }
      if (added) {
        tq.Kick();
        work = true;
      }
      if (tq.broken() || rq.broken()) {
        std::fprintf(stderr, "pktgen: the backend corrupted a queue; stopping\n");
        g_stop.store(true);
      }
    }
    // Done?
    if (o.count && rx_side && st.rx >= o.count && backlog.empty()) {
      // A reflector waits until the backend has taken what it queued last: closing the
      // connection first lost up to a ring of reflected frames.
      bool drained = true;
      for (uint32_t k = 0; k < fe.queue_pairs(); ++k) drained &= fe.txq(k).num_free() == o.ring;
      if (drained || !reflect) break;
    }
    if (o.count && send && tx_done) {
      // Sent everything: wait for the backend to take it (and, bidir, the peer's frames).
      bool drained = true;
      for (uint32_t k = 0; k < fe.queue_pairs(); ++k) drained &= fe.txq(k).num_free() == o.ring;
      if (drained && (tx_only || st.rx >= o.count)) break;
    }
    const uint64_t now = now_ns;
    if (o.interval > 0 && now >= next_report) {
      double dt = (now - last_t) / 1e9;
      std::printf("t=%.1fs tx %.3f Mpps %.2f Gbit/s, rx %.3f Mpps %.2f Gbit/s, bad %" PRIu64 " lost %" PRIu64 "\n",
                  (now - t0) / 1e9, (st.tx - last.tx) / dt / 1e6, (st.tx_bytes - last.tx_bytes) * 8 / dt / 1e9,
                  (st.rx - last.rx) / dt / 1e6, (st.rx_bytes - last.rx_bytes) * 8 / dt / 1e9, st.bad, st.lost);
      std::fflush(stdout);
      last = st;
      last_t = now;
      next_report = now + static_cast<uint64_t>(o.interval * 1e9);
      if (!fe.Alive()) {
        std::fprintf(stderr, "pktgen: the backend closed the connection\n");
        break;
      }
    }
    // Held senders are idle: they sleep on receive notifications until SIGUSR1.
    const bool sending = (send && !tx_done && released) || !backlog.empty();
    // Two endpoints sharing one CPU: give the other the CPU after every round, so neither
    // backend-side ring overflows while its reader waits for a scheduler time slice.
    if (o.yield) sched_yield();
    // ping spins while a round trip is outstanding (a sleep would be measured); between
    // round trips it sleeps like the others, so a reflector on the same CPU gets to run.
    const bool spin = ping && st.tx > st.rx;
    if (!work && o.rate && send && !tx_done && released && !spin) {
      // Paced and nothing due: give the CPU away until the next packet is (at most 200 us).
      const double next_due = send_from + (st.tx + 1.0) / o.rate;
      const double wait = next_due - elapsed();
      if (wait > 0) usleep(static_cast<useconds_t>(std::min(wait, 200e-6) * 1e6));
    }
    // Blocked (ring full, nothing received): on a machine where the backend and the peer
    // share our CPUs, spinning only delays them; back off for a few microseconds.
    if (!work && sending && !spin && ++stalled > 64) {
      stalled = 0;
      usleep(20);
    } else if (work) {
      stalled = 0;
    }
    if (work || sending || spin || o.busy_poll) {
      idle = 0;
    } else if (++idle > 4096) {
      // Nothing to do: sleep until a receive notification (or 10 ms).
      idle = 0;
      std::vector<pollfd> p;
      for (uint32_t k = 0; k < fe.queue_pairs(); ++k) {
        auto& rq = fe.rxq(k);
        if (rq.packed ? rq.packed_ring.EnableCalls() : rq.split.EnableCalls()) continue;
        p.push_back({rq.call.fd(), POLLIN, 0});
      }
      if (p.size() == fe.queue_pairs()) {
        ::poll(p.data(), p.size(), 10);
        for (auto& x : p) {
          if (x.revents & POLLIN) {
            uint64_t v;
            ssize_t n = ::read(x.fd, &v, sizeof v);
            (void)n;
          }
        }
      }
      for (uint32_t k = 0; k < fe.queue_pairs(); ++k) {
        auto& rq = fe.rxq(k);
        rq.packed ? rq.packed_ring.DisableCalls() : rq.split.DisableCalls();
      }
    }
  }
  now_ns = MonotonicNowNs();
  const double secs = elapsed();
  bool ok = true;
  if (o.verify && (st.bad || st.lost)) ok = false;
  if (o.count) {
    if (send && st.tx < o.count) ok = false;
    if ((rx_side || bidir) && st.rx < o.count) ok = false;
  }
  PrintSummary(o.mode.c_str(), o.size, fe.queue_pairs(), o.packed ? "packed" : "split", secs, st, o.verify, ok);
  if (ping) {
    std::vector<uint32_t> sorted = rtt_ns;
    std::sort(sorted.begin(), sorted.end());
    auto pct = [&](double q) {
      if (sorted.empty()) return 0.0;
      size_t i = static_cast<size_t>(q * (sorted.size() - 1) + 0.5);
      return sorted[std::min(i, sorted.size() - 1)] / 1e3;
    };
    std::printf("rtt samples=%zu rtt_p50_us=%.2f rtt_p99_us=%.2f rtt_p999_us=%.2f rtt_max_us=%.2f\n", sorted.size(),
                pct(0.5), pct(0.99), pct(0.999), sorted.empty() ? 0.0 : sorted.back() / 1e3);
    if (!o.rtt_file.empty()) {
      if (FILE* f = std::fopen(o.rtt_file.c_str(), "w")) {
        for (uint32_t v : rtt_ns) std::fprintf(f, "%u\n", v);
        std::fclose(f);
      } else {
        std::fprintf(stderr, "pktgen: cannot write %s: %s\n", o.rtt_file.c_str(), std::strerror(errno));
        ok = false;
      }
    }
  }
  std::fflush(stdout);
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace nicmux

int main(int argc, char** argv) {
  nicmux::Options o = nicmux::Parse(argc, argv);
  std::memcpy(nicmux::g_src_mac, o.mac, 6);
  std::memcpy(nicmux::g_dst_mac, o.peer_mac, 6);
  signal(SIGINT, nicmux::OnSignal);
  signal(SIGTERM, nicmux::OnSignal);
  signal(SIGPIPE, SIG_IGN);
  signal(SIGUSR1, nicmux::OnGo);  // before "connected" is printed: a test may send it then
  return nicmux::Run(o);
}
