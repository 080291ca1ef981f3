// The frames nicmux-pktgen and nicmux-pvgen send, receive and verify, and their summary line:
// one definition, so that either tool can verify the other's frames through a switch (a
// pktgen on a vhost-user port and a pvgen on a pv port of the same nicmuxd).
//
// Frame layout (frame = what the guest sees, no FCS):
//   dst MAC, src MAC, ethertype 0x88b5 (local experimental), magic "NMXP", stream id (u32),
//   sequence number (u64), frame length (u32), then pattern bytes derived from the sequence
//   number: every byte is checked with --verify.
// TCP mode (--tso): Ethernet, IPv4, TCP frames whose payload is a pattern of the stream offset
// (BuildTcpFrame): any segment of a TSO frame verifies on its own.
#pragma once

#include <cinttypes>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <vector>

namespace nicmux {

constexpr uint32_t kMagic = 0x50584d4e;  // "NMXP"
constexpr uint32_t kHdrOff = 14, kMinFrame = 34;
inline uint8_t g_src_mac[6], g_dst_mac[6];  // from the options, before any frame is built

inline uint8_t PatternByte(uint64_t seq, uint32_t i) { return static_cast<uint8_t>(seq * 131 + i * 7); }

inline void BuildFrame(std::byte* f, uint32_t size, uint32_t stream, uint64_t seq) {
  std::memcpy(f, g_dst_mac, 6);
  std::memcpy(f + 6, g_src_mac, 6);
  f[12] = std::byte{0x88};
  f[13] = std::byte{0xb5};
  std::memcpy(f + kHdrOff, &kMagic, 4);
  std::memcpy(f + kHdrOff + 4, &stream, 4);
  std::memcpy(f + kHdrOff + 8, &seq, 8);
  std::memcpy(f + kHdrOff + 16, &size, 4);
  auto* p = reinterpret_cast<uint8_t*>(f);
  for (uint32_t i = kMinFrame; i < size; ++i) p[i] = PatternByte(seq, i);
}

// TCP mode (--tso): Ethernet, IPv4 10.0.0.1 -> 10.0.0.2, TCP from port 10000 + queue to 5201;
// the sequence number is the offset of the payload's first byte in the queue's stream, and
// payload byte X of the stream is TcpPattern(X): any segment verifies on its own.
constexpr uint32_t kTcpHdrs = 14 + 20 + 20;
inline uint8_t TcpPattern(uint64_t x) { return static_cast<uint8_t>(x * 7 + (x >> 8)); }

inline uint16_t Sum16(const uint8_t* p, size_t n, uint32_t acc = 0) {
  for (size_t i = 0; i + 1 < n; i += 2) acc += uint32_t{p[i]} << 8 | p[i + 1];
  if (n & 1) acc += uint32_t{p[n - 1]} << 8;
  while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
  return static_cast<uint16_t>(acc);
}
inline void Put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
inline uint16_t Get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
inline uint32_t Get32(const uint8_t* p) { return uint32_t{Get16(p)} << 16 | Get16(p + 2); }
inline uint16_t PseudoSum(const uint8_t* f, uint32_t l4_len) {
  uint32_t acc = Sum16(f + 26, 8);
  acc += 6 + l4_len;
  while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
  return static_cast<uint16_t>(acc);
}

// A TSO frame of `size` bytes whose payload starts at stream offset `off`; the TCP checksum
// field holds the pseudo-header's sum (what a sender leaves for the device to complete).
inline void BuildTcpFrame(uint8_t* f, uint32_t size, uint32_t queue, uint64_t off, bool payload = true) {
  std::memcpy(f, g_dst_mac, 6);
  std::memcpy(f + 6, g_src_mac, 6);
  Put16(f + 12, 0x0800);
  uint8_t* ip = f + 14;
  std::memset(ip, 0, 40);
  ip[0] = 0x45;
  Put16(ip + 2, static_cast<uint16_t>(size - 14));
  Put16(ip + 4, static_cast<uint16_t>(off / 1000));
  Put16(ip + 6, 0x4000);
  ip[8] = 64;
  ip[9] = 6;
  const uint8_t addrs[8] = {10, 0, 0, 1, 10, 0, 0, 2};
  std::memcpy(ip + 12, addrs, 8);
  Put16(ip + 10, static_cast<uint16_t>(~Sum16(ip, 20)));
  uint8_t* tcp = ip + 20;
  Put16(tcp, static_cast<uint16_t>(10000 + queue));
  Put16(tcp + 2, 5201);
  Put16(tcp + 4, static_cast<uint16_t>(off >> 16));
  Put16(tcp + 6, static_cast<uint16_t>(off));
  tcp[12] = 5 << 4;
  tcp[13] = 0x18;  // PSH ACK
  Put16(tcp + 14, 65535);
  Put16(tcp + 16, PseudoSum(f, size - 34));
  if (payload) {
    for (uint32_t i = kTcpHdrs; i < size; ++i) f[i] = TcpPattern(off + i - kTcpHdrs);
  }
}

struct Stats {
  uint64_t tx = 0, rx = 0, tx_bytes = 0, rx_bytes = 0;
  uint64_t tcp_payload = 0;  // TCP mode: payload bytes received and verified
  uint64_t bad = 0, lost = 0, reordered = 0;
  uint64_t other = 0;  // frames that are not pktgen's (a switch floods broadcasts to us)
  // With --verify: the longest time between two receive rounds that brought pktgen frames (a
  // live upgrade's gap, docs/upgrade.md; the peer's announcement before --hold is released
  // does not start the clock); 0 when not measured.
  uint64_t last_rx_ns = 0, max_gap_ns = 0;
  void NoteRx(uint64_t now_ns) {
    if (last_rx_ns != 0 && now_ns - last_rx_ns > max_gap_ns) max_gap_ns = now_ns - last_rx_ns;
    last_rx_ns = now_ns;
  }
};

// Checks one received frame spread over `segs` (MRG_RXBUF may split it).
struct Verifier {
  std::map<uint32_t, uint64_t> next_seq;
  std::vector<uint8_t> frame;

  bool Check(const uint8_t* f, uint32_t len, Stats* st) {
    if (len < kMinFrame) return false;
    uint32_t magic, stream, flen;
    uint64_t seq;
    std::memcpy(&magic, f + kHdrOff, 4);
    std::memcpy(&stream, f + kHdrOff + 4, 4);
    std::memcpy(&seq, f + kHdrOff + 8, 8);
    std::memcpy(&flen, f + kHdrOff + 16, 4);
    if (magic != kMagic || flen != len) return false;
    for (uint32_t i = kMinFrame; i < len; ++i) {
      if (f[i] != PatternByte(seq, i)) return false;
    }
    auto [it, fresh] = next_seq.emplace(stream, 0);
    if (seq > it->second) st->lost += seq - it->second;
    if (seq < it->second) {
      ++st->reordered;
    } else {
      it->second = seq + 1;
    }
    return true;
  }
};

// A TCP-mode frame (whole TSO frame or one segment): IPv4 header and its checksum, lengths,
// every payload byte against the stream pattern, the TCP checksum unless it is still partial
// (a TSO frame delivered whole with NEEDS_CSUM); order per source port.
struct TcpVerifier {
  std::map<uint32_t, uint64_t> next;
  bool Check(const uint8_t* f, uint32_t len, bool partial, Stats* st) {
    if (len < kTcpHdrs || Get16(f + 12) != 0x0800 || f[14] != 0x45 || f[23] != 6) return false;
    if (Get16(f + 16) != len - 14 || Sum16(f + 14, 20) != 0xffff) return false;
    if ((f[46] >> 4) != 5) return false;
    const uint32_t seq = Get32(f + 38);
    for (uint32_t i = kTcpHdrs; i < len; ++i) {
      if (f[i] != TcpPattern(uint64_t{seq} + i - kTcpHdrs)) return false;
    }
    if (!partial && Sum16(f + 34, len - 34, PseudoSum(f, len - 34)) != 0xffff) return false;
    // (Sequence numbers wrap at 2^32 like TCP's: compared as a signed distance.)
    auto [it, fresh] = next.emplace(Get16(f + 34), seq);
    const auto d = static_cast<int32_t>(seq - static_cast<uint32_t>(it->second));
    if (d > 0) ++st->lost;
    if (d < 0) {
      ++st->reordered;
    } else {
      it->second = static_cast<uint32_t>(seq + (len - kTcpHdrs));
    }
    st->tcp_payload += len - kTcpHdrs;
    return true;
  }
};

// The final line both tools print: key=value pairs that the tests read (expect_summary).
inline void PrintSummary(const char* mode, uint32_t size, uint32_t queues, const char* ring, double secs,
                         const Stats& st, bool verify, bool ok) {
  std::printf("summary mode=%s size=%u queues=%u ring=%s seconds=%.3f tx_packets=%" PRIu64 " rx_packets=%" PRIu64
              " rx_bad=%" PRIu64 " rx_lost=%" PRIu64 " rx_reordered=%" PRIu64 " rx_other=%" PRIu64
              " tx_mpps=%.3f rx_mpps=%.3f tx_gbps=%.3f rx_gbps=%.3f rx_tcp_payload_gbps=%.3f rx_max_gap_us=%.1f verified=%s result=%s\n",
              mode, size, queues, ring, secs, st.tx, st.rx, st.bad, st.lost, st.reordered, st.other,
              st.tx / secs / 1e6, st.rx / secs / 1e6, st.tx_bytes * 8 / secs / 1e9, st.rx_bytes * 8 / secs / 1e9,
              st.tcp_payload * 8 / secs / 1e9, st.max_gap_ns / 1e3, verify ? "yes" : "no", ok ? "ok" : "FAIL");
}

}  // namespace nicmux
