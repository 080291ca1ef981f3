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
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <unistd.h>

#include "base/log.h"
#include "tools/gen_common.h"
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
  --rejoin           when the backend goes away (a restart), wait for the next one (--server:
                     listen on PATH again and accept it; otherwise connect to PATH again) and
                     set the device up anew (new memory and rings, the bases this side gives).
                     Counters, sequence numbers and --verify state go on; transmitted frames
                     the old backend never completed are queued again on the new rings, as
                     QEMU restarts a ring from its used index (one it had taken and forwarded
                     but not completed then arrives twice: counted as reordered); sending
                     pauses while no backend is there (frames due meanwhile are not sent
                     later: tx_unsent). Looks at the connection every millisecond; prints a
                     "rejoin" line (reconnects, disconnected_ms, tx_unsent, tx_requeued)
                     before the summary
  --size BYTES       frame size without FCS, 60..65000 (default 64)
  --rate PPS         packets per second to send (default: as fast as possible)
  --poisson          with --rate: one packet at a time, at random gaps (exponential, mean
                     1/PPS: a Poisson process, like many independent senders)
  --count N          stop after sending N packets (tx, bidir) or receiving N (rx, reflect)
  --duration S       stop after S seconds (default 10; with --count: the time limit)
  --verify           check every received frame's header, length and every payload byte,
                     and sequence numbers per stream (lost / reordered counts: a frame
                     delivered twice counts as reordered), and time the longest gap between
                     receive rounds that brought pktgen frames (rx_max_gap_us; an
                     announcement or a flooded broadcast does not count)
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

// The options pktgen has beyond GenOptions (tools/gen_common.h).
struct Options : GenOptions {
  std::string socket;
  bool server = false;
  bool rejoin = false;
  uint32_t queues = 1;
  bool packed = false;
  bool mrg = true;
  uint32_t ring = 256;
  uint32_t udp = 0;  // --udp PORT: IPv4/UDP frames to PORT (0: pktgen frames)
  bool offloads = false;
};

const GenCli kCli("nicmux-pktgen");

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
    } else if (a == "--client") {
      o.server = false;
    } else if (a == "--server") {
      o.server = true;
    } else if (a == "--rejoin") {
      o.rejoin = true;
    } else if (a == "--udp") {
      o.udp = static_cast<uint32_t>(kCli.Num(a, val(), 1, 65535));
    } else if (a == "--offloads") {
      o.offloads = true;
    } else if (a == "--queues") {
      o.queues = static_cast<uint32_t>(kCli.Num(a, val(), 1, 8));
    } else if (a == "--packed") {
      o.packed = true;
    } else if (a == "--no-mrg") {
      o.mrg = false;
    } else if (a == "--ring") {
      o.ring = static_cast<uint32_t>(kCli.Num(a, val(), 8, 32768));
    } else {
      kCli.Usage("unknown argument '" + a + "'");
    }
  }
  if (o.socket.empty()) kCli.Usage("--socket is required");
  if (o.mode.empty()) kCli.Usage("--mode is required");
  if (o.poisson && !o.rate) kCli.Usage("--poisson needs --rate");
  if (o.udp && (o.mode != "tx" || o.tso || o.size < 42)) {
    kCli.Usage("--udp: only with --mode tx, without --tso, and --size of at least 42");
  }
  return o;
}

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
  // The device: replaced by a new one when --rejoin sets it up again with another backend.
  std::unique_ptr<vhost::Frontend> fe_own = std::move(*f);
  vhost::Frontend* fe = fe_own.get();
  const uint32_t hdr = fe->net_hdr_len();
  if (o.tso && !(virtio::Has(fe->features(), virtio::kNetFHostTso4) && virtio::Has(fe->features(), virtio::kNetFCsum))) {
    std::fprintf(stderr, "nicmux-pktgen: --tso: the backend does not offer CSUM and HOST_TSO4\n");
    return 1;
  }
  const bool ping = o.ping(), send = o.sends(), reflect = o.reflect();
  const bool tx_only = o.tx_only(), rx_side = o.rx_side();
  std::vector<uint32_t> rtt_ns;  // ping: one round trip per reflected frame
  std::fprintf(stdout, "pktgen: connected to %s, %u queue pair(s), %s ring, mrg_rxbuf %s, mode %s, size %u\n",
               o.socket.c_str(), fe->queue_pairs(), o.packed ? "packed" : "split", o.mrg ? "on" : "off",
               o.mode.c_str(), o.size);
  std::fflush(stdout);

  // --rejoin: per transmit queue, the chains the backend has not completed yet, in the order
  // they were added (an id's tag says which add of it an entry is: ids are reused), so that
  // a new backend can be given them again.
  struct TxInFlight {
    std::vector<uint64_t> tag;  // per id: its add's number, 0 once completed
    std::vector<uint32_t> len;  // per id: bytes (virtio header included)
    std::deque<std::pair<uint16_t, uint64_t>> order;
    uint64_t next = 1;
  };
  std::vector<TxInFlight> tx_inflight;
  auto reset_inflight = [&] {
    tx_inflight.assign(fe->queue_pairs(), TxInFlight{});
    for (auto& x : tx_inflight) {
      x.tag.assign(o.ring, 0);
      x.len.assign(o.ring, 0);
    }
  };
  if (o.rejoin) reset_inflight();
  auto note_tx = [&](uint32_t k, uint16_t id, uint32_t len) {
    if (!o.rejoin) return;
    TxInFlight& x = tx_inflight[k];
    x.tag[id] = x.next;
    x.len[id] = len;
    x.order.emplace_back(id, x.next++);
  };
  auto note_done = [&](uint32_t k, uint16_t id) {
    if (!o.rejoin || id >= o.ring) return;
    TxInFlight& x = tx_inflight[k];
    x.tag[id] = 0;
    while (!x.order.empty() && x.tag[x.order.front().first] != x.order.front().second) x.order.pop_front();
  };
  auto announce = [&] {
    vhost::FrontendQueue& tq = fe->txq(0);
    const uint16_t id = tq.NextId();
    std::byte* b = fe->Buffer(tq, id);
    std::memset(b, 0, hdr + 60);
    uint8_t* f = reinterpret_cast<uint8_t*>(b + hdr);
    std::memset(f, 0xff, 6);
    std::memcpy(f + 6, g_src_mac, 6);
    f[12] = 0x88;
    f[13] = 0xb6;  // IEEE local experimental 2: a receiving pktgen counts it as rx_other
    virtio::DriverBuffer tb{fe->BufferAddr(tq, id), hdr + 60, false};
    tq.Add({&tb, 1});
    note_tx(0, id, hdr + 60);
    tq.Kick();
  };
  if (o.announce) announce();

  Stats st;
  RxAccount rx_account(o, &st, &rtt_ns);
  // Per queue: a frame being collected from several receive buffers (MRG_RXBUF).
  struct Reassembly {
    std::vector<uint8_t> buf;
    uint32_t left = 0, len = 0;
    bool partial = false;  // the frame's header says NEEDS_CSUM
  };
  std::vector<Reassembly> reasm_q(fe->queue_pairs());
  for (auto& r : reasm_q) r.buf.resize(65536 + 64);  // any frame a peer may send
  // One sequence per transmit queue: a frame carries stream id << 4 | queue, and order is kept
  // per queue only (as on any multi-queue NIC).
  std::vector<uint64_t> seq(fe->queue_pairs(), 0);
  const uint64_t t0 = GenNowNs();
  const double limit_s = o.duration + o.delay;
  Progress progress(o, t0);
  Pacer pacer(o);
  Backoff backoff(&pacer);
  uint32_t idle = 0;
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
  // --rejoin: whether the backend has gone (since gone_ns), and what the rejoins cost.
  bool gone = false, rejoin_failed = false;
  uint64_t gone_ns = 0, alive_checked_ns = t0, disconnected_ns = 0, tx_unsent = 0, tx_requeued = 0;
  uint32_t reconnects = 0;
  while (!g_stop.load(std::memory_order_relaxed)) {
    if ((round++ & 31) == 0) now_ns = GenNowNs();
    const double t = elapsed();
    if (t >= limit_s) break;
    if (o.rejoin && !gone && now_ns - alive_checked_ns >= 1'000'000) {
      alive_checked_ns = now_ns;
      if (!fe->Alive()) {
        gone = true;
        gone_ns = GenNowNs();
        std::printf("pktgen: the backend closed the connection at t=%.3fs; waiting for the next one\n",
                    (gone_ns - t0) / 1e9);
        std::fflush(stdout);
      }
    }
    if (!released && g_go.load(std::memory_order_relaxed)) {
      released = true;
      send_from = std::max(o.delay, t);
      std::printf("pktgen: released at t=%.3fs\n", t);
      std::fflush(stdout);
    }
    bool work = false;
    for (uint32_t k = 0; k < fe->queue_pairs(); ++k) {
      vhost::FrontendQueue& tq = fe->txq(k);
      vhost::FrontendQueue& rq = fe->rxq(k);
      // Reclaim transmit buffers.
      virtio::UsedBuffer u;
      while (tq.PopUsed(&u) == virtio::PopStatus::kOk) {
        note_done(k, u.id);
      }
      // Receive.
      uint32_t got = 0;
      const uint64_t rx_before = st.rx;  // pktgen's own frames (not a flooded broadcast)
      auto& reasm = reasm_q[k].buf;
      uint32_t& frag_left = reasm_q[k].left;
      uint32_t& frag_len = reasm_q[k].len;
      while (got < 64) {
        if (rq.PopUsed(&u) != virtio::PopStatus::kOk) break;
        ++got;
        const std::byte* b = fe->Buffer(rq, u.id);
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
        virtio::DriverBuffer rb{fe->BufferAddr(rq, rq.NextId()), fc.buf_bytes, true};
        rq.Add({&rb, 1});
        if (--frag_left > 0) continue;
        if (rx_account.Take(reasm.data(), frag_len, reasm_q[k].partial)) {  // reflect it
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
        if (o.verify && st.rx > rx_before) st.NoteRx(GenNowNs());
      }
      // Transmit.
      uint32_t added = 0;
      if (gone) {
        // The backend went away: nothing more goes out until the next one is there.
      } else if (reflect) {
        while (!backlog.empty() && tq.num_free() > 0 && added < 64) {
          const uint16_t id = tq.NextId();
          std::byte* b = fe->Buffer(tq, id);
          std::memset(b, 0, hdr);
          const auto& fr = backlog.front();
          std::memcpy(b + hdr, fr.data(), fr.size());
          virtio::DriverBuffer tb{fe->BufferAddr(tq, id), static_cast<uint32_t>(hdr + fr.size()), false};
          tq.Add({&tb, 1});
          note_tx(k, id, tb.len);
          ++st.tx;
          st.tx_bytes += fr.size();
          backlog.erase(backlog.begin());
          ++added;
        }
      } else if (send && !tx_done && released && t >= send_from) {
        const uint64_t allowed = pacer.Allowance(t, send_from, st.tx, 32);
        while (added < allowed && tq.num_free() > 0) {
          if (o.count && st.tx >= o.count) {
            tx_done = true;
            break;
          }
          const uint16_t id = tq.NextId();
          std::byte* b = fe->Buffer(tq, id);
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
            const uint64_t t_ns = GenNowNs();
            std::memcpy(b + hdr + kMinFrame, &t_ns, 8);
          }
          virtio::DriverBuffer tb{fe->BufferAddr(tq, id), hdr + o.size, false};
          tq.Add({&tb, 1});
          note_tx(k, id, tb.len);
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
    if (gone && !work) {
      // The old backend is gone and this round found nothing more it had completed: keep the
      // transmit chains it never completed, and set a device up with the next backend.
      std::vector<std::vector<std::vector<std::byte>>> pending(fe->queue_pairs());
      for (uint32_t k = 0; k < fe->queue_pairs(); ++k) {
        for (const auto& [id, tag] : tx_inflight[k].order) {
          if (tx_inflight[k].tag[id] != tag) continue;
          const std::byte* b = fe->Buffer(fe->txq(k), id);
          pending[k].emplace_back(b, b + tx_inflight[k].len[id]);
        }
      }
      now_ns = GenNowNs();
      const double left = limit_s - elapsed();
      if (left <= 0) break;
      vhost::FrontendConfig rc = fc;
      rc.connect_timeout_ms = static_cast<int>(std::max(1.0, std::min(left * 1000, 2e9)));
      auto nf = vhost::Frontend::Create(rc);
      if (!nf) {
        std::fprintf(stderr, "pktgen: the backend closed the connection and no other set the device up: %s\n",
                     nf.error().message().c_str());
        rejoin_failed = true;
        break;
      }
      fe_own = std::move(*nf);  // (the old device's connection and memory go with it)
      fe = fe_own.get();
      reset_inflight();
      for (auto& r : reasm_q) {
        r.left = 0;
        r.len = 0;
      }
      uint64_t requeued = 0;
      for (uint32_t k = 0; k < fe->queue_pairs(); ++k) {
        vhost::FrontendQueue& tq = fe->txq(k);
        for (const auto& fr : pending[k]) {
          if (tq.num_free() == 0) break;  // (the rings have the same size: never)
          const uint16_t id = tq.NextId();
          std::memcpy(fe->Buffer(tq, id), fr.data(), fr.size());
          virtio::DriverBuffer tb{fe->BufferAddr(tq, id), static_cast<uint32_t>(fr.size()), false};
          tq.Add({&tb, 1});
          note_tx(k, id, tb.len);
          ++requeued;
        }
        if (!pending[k].empty()) tq.Kick();
      }
      if (o.announce) announce();
      now_ns = GenNowNs();
      const double gone_t = (gone_ns - t0) / 1e9, back_t = elapsed();
      // Pacing pauses while no backend was there: frames due meanwhile are not sent later.
      if (send && o.rate && released) {
        const double missed = back_t - std::max(send_from, gone_t);
        if (missed > 0) {
          send_from += missed;
          tx_unsent += static_cast<uint64_t>(missed * static_cast<double>(o.rate) + 0.5);
        }
      }
      ++reconnects;
      disconnected_ns += now_ns - gone_ns;
      tx_requeued += requeued;
      std::printf("pktgen: rejoined: connected to %s again at t=%.3fs, %.1f ms after the backend went away "
                  "(reconnect %u); %" PRIu64 " transmitted frame(s) it had not completed queued again\n",
                  o.socket.c_str(), back_t, (now_ns - gone_ns) / 1e6, reconnects, requeued);
      std::fflush(stdout);
      gone = false;
      alive_checked_ns = now_ns;
      continue;
    }
    // Done?
    if (o.count && rx_side && st.rx >= o.count && backlog.empty()) {
      // A reflector waits until the backend has taken what it queued last: closing the
      // connection first lost up to a ring of reflected frames.
      bool drained = true;
      for (uint32_t k = 0; k < fe->queue_pairs(); ++k) drained &= fe->txq(k).num_free() == o.ring;
      if (drained || !reflect) break;
    }
    if (o.count && send && tx_done) {
      // Sent everything: wait for the backend to take it (and, bidir, the peer's frames).
      bool drained = true;
      for (uint32_t k = 0; k < fe->queue_pairs(); ++k) drained &= fe->txq(k).num_free() == o.ring;
      if (drained && (tx_only || st.rx >= o.count)) break;
    }
    // The connection is looked at with each progress line (none with --interval 0).
    if (progress.Maybe(now_ns, st) && !o.rejoin && !fe->Alive()) {
      std::fprintf(stderr, "pktgen: the backend closed the connection\n");
      break;
    }
    // Held senders are idle: they sleep on receive notifications until SIGUSR1.
    const bool sending = (send && !tx_done && released) || !backlog.empty();
    // ping spins while a round trip is outstanding (a sleep would be measured); between
    // round trips it sleeps like the others, so a reflector on the same CPU gets to run.
    const bool spin = ping && st.tx > st.rx;
    backoff.AfterRound(o, work, sending, spin, elapsed(), send_from, st.tx);
    if (work || sending || spin || o.busy_poll) {
      idle = 0;
    } else if (++idle > 4096) {
      // Nothing to do: sleep until a receive notification (or 10 ms).
      idle = 0;
      std::vector<pollfd> p;
      for (uint32_t k = 0; k < fe->queue_pairs(); ++k) {
        auto& rq = fe->rxq(k);
        if (rq.packed ? rq.packed_ring.EnableCalls() : rq.split.EnableCalls()) continue;
        p.push_back({rq.call.fd(), POLLIN, 0});
      }
      if (p.size() == fe->queue_pairs()) {
        ::poll(p.data(), p.size(), 10);
        for (auto& x : p) {
          if (x.revents & POLLIN) {
            uint64_t v;
            ssize_t n = ::read(x.fd, &v, sizeof v);
            (void)n;
          }
        }
      }
      for (uint32_t k = 0; k < fe->queue_pairs(); ++k) {
        auto& rq = fe->rxq(k);
        rq.packed ? rq.packed_ring.DisableCalls() : rq.split.DisableCalls();
      }
    }
  }
  now_ns = GenNowNs();
  const double secs = elapsed();
  bool ok = GenVerdict(o, st) && !rejoin_failed;
  if (o.rejoin) {
    std::printf("rejoin reconnects=%u disconnected_ms=%.1f tx_unsent=%" PRIu64 " tx_requeued=%" PRIu64 "\n",
                reconnects, disconnected_ns / 1e6, tx_unsent, tx_requeued);
  }
  PrintSummary(o.mode.c_str(), o.size, fe->queue_pairs(), o.packed ? "packed" : "split", secs, st, o.verify, ok);
  if (ping && !ReportRtt("pktgen", o, rtt_ns)) ok = false;
  std::fflush(stdout);
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace nicmux

int main(int argc, char** argv) {
  nicmux::Options o = nicmux::Parse(argc, argv);
  std::memcpy(nicmux::g_src_mac, o.mac, 6);
  std::memcpy(nicmux::g_dst_mac, o.peer_mac, 6);
  nicmux::InstallGenSignals();
  return nicmux::Run(o);
}
