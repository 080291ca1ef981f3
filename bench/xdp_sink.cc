// xdp_sink: counts and drops every frame arriving on a kernel interface, at XDP, for
// bench/run's uplink scenario (what an af_xdp uplink delivers to the far end of a veth).
// There is no xdp-tools package in Debian 12, and a sink in the kernel's stack (a raw socket,
// the netns's own counters) would cost more per packet than the switch under test; an XDP
// program that bumps a counter and returns XDP_DROP costs the least the kernel can do.
//   xdp_sink IFACE [--mode native|generic] [--duration S] [--interval S]
// Prints "t=SECONDS packets=N bytes=B pps=P cpu_packets=N0,N1,..." every interval (cumulative
// counts, monotonic time since attach; cpu_packets: where the kernel ran the program) and
// "summary packets=N bytes=B seconds=S mpps=M avg_frame=F cpu_packets=..." at the end
// (--duration, SIGTERM or SIGINT); the program is detached on the way out.
//
// Like src/port/af_xdp_port.cc, the program is raw BPF instructions loaded with libbpf's
// bpf_prog_load and attached with bpf_xdp_attach: no clang, no object file, no bpffs. Its
// counters are a per-CPU array (one slot, {packets, bytes}): no atomics in the program, the
// sum over CPUs is read here.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <linux/if_link.h>
#include <net/if.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

volatile std::sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }

bpf_insn Insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
  bpf_insn i = {};
  i.code = code;
  i.dst_reg = dst;
  i.src_reg = src;
  i.off = off;
  i.imm = imm;
  return i;
}

// key = 0; v = lookup(map, &key); if (v) { v->packets++; v->bytes += data_end - data; }
// return XDP_DROP.
int LoadProgram(int map_fd, std::string* log) {
  std::vector<bpf_insn> p = {
      Insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_6, BPF_REG_1, 0, 0),  // r6 = ctx (r1 is clobbered by the call)
      Insn(BPF_ST | BPF_W | BPF_MEM, BPF_REG_10, 0, -4, 0),           // *(u32 *)(fp - 4) = 0: the key
      Insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_2, BPF_REG_10, 0, 0),  // r2 = &key
      Insn(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_2, 0, 0, -4),
      Insn(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_1, BPF_PSEUDO_MAP_FD, 0, map_fd),  // r1 = the map (16 bytes)
      Insn(0, 0, 0, 0, 0),
      Insn(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),
      Insn(BPF_JMP | BPF_JEQ | BPF_K, BPF_REG_0, 0, 9, 0),  // no slot: skip to the return
      Insn(BPF_LDX | BPF_DW | BPF_MEM, BPF_REG_1, BPF_REG_0, 0, 0),  // packets++
      Insn(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_1, 0, 0, 1),
      Insn(BPF_STX | BPF_DW | BPF_MEM, BPF_REG_0, BPF_REG_1, 0, 0),
      Insn(BPF_LDX | BPF_W | BPF_MEM, BPF_REG_2, BPF_REG_6, offsetof(xdp_md, data), 0),
      Insn(BPF_LDX | BPF_W | BPF_MEM, BPF_REG_3, BPF_REG_6, offsetof(xdp_md, data_end), 0),
      Insn(BPF_ALU64 | BPF_SUB | BPF_X, BPF_REG_3, BPF_REG_2, 0, 0),  // r3 = the frame's length
      Insn(BPF_LDX | BPF_DW | BPF_MEM, BPF_REG_1, BPF_REG_0, 8, 0),    // bytes += r3
      Insn(BPF_ALU64 | BPF_ADD | BPF_X, BPF_REG_1, BPF_REG_3, 0, 0),
      Insn(BPF_STX | BPF_DW | BPF_MEM, BPF_REG_0, BPF_REG_1, 8, 0),
      Insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, XDP_DROP),
      Insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
  };
  static char buf[8192];
  LIBBPF_OPTS(bpf_prog_load_opts, opts);
  opts.log_level = 1;
  opts.log_size = sizeof buf;
  opts.log_buf = buf;
  const int fd = bpf_prog_load(BPF_PROG_TYPE_XDP, "nicmux_sink", "GPL", p.data(), p.size(), &opts);
  if (fd < 0) *log = std::string(buf).substr(0, 600);
  return fd;
}

struct Counts {
  uint64_t packets = 0, bytes = 0;
  std::string per_cpu;  // packets counted on each CPU, "N0,N1,...": where the XDP work ran
};

Counts Read(int map_fd, int ncpu) {
  std::vector<uint64_t> v(2 * static_cast<size_t>(ncpu));  // per CPU: {packets, bytes}
  uint32_t key = 0;
  Counts c;
  if (bpf_map_lookup_elem(map_fd, &key, v.data()) != 0) return c;
  for (int i = 0; i < ncpu; ++i) {
    c.packets += v[2 * i];
    c.bytes += v[2 * i + 1];
    c.per_cpu += (i ? "," : "") + std::to_string(v[2 * i]);
  }
  return c;
}

int Usage(int code) {
  std::fprintf(code ? stderr : stdout,
               "usage: xdp_sink IFACE [--mode native|generic] [--duration S] [--interval S]\n"
               "Counts and drops every frame arriving on IFACE at XDP; prints cumulative counts every\n"
               "interval (default 1 s) and a summary at the end (--duration, default: until SIGTERM).\n");
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage(2);
  std::string iface, mode = "native";
  double duration = 0, interval = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") return Usage(0);
    if (i + 1 < argc && a == "--mode") {
      mode = argv[++i];
    } else if (i + 1 < argc && a == "--duration") {
      duration = std::atof(argv[++i]);
    } else if (i + 1 < argc && a == "--interval") {
      interval = std::atof(argv[++i]);
    } else if (a[0] != '-' && iface.empty()) {
      iface = a;
    } else {
      return Usage(2);
    }
  }
  if (iface.empty() || (mode != "native" && mode != "generic") || interval <= 0) return Usage(2);
  const int ifindex = static_cast<int>(if_nametoindex(iface.c_str()));
  if (ifindex == 0) {
    std::fprintf(stderr, "xdp_sink: no interface named %s\n", iface.c_str());
    return 1;
  }
  const int ncpu = libbpf_num_possible_cpus();
  const int map = bpf_map_create(BPF_MAP_TYPE_PERCPU_ARRAY, "nicmux_sink", 4, 16, 1, nullptr);
  if (ncpu <= 0 || map < 0) {
    std::fprintf(stderr, "xdp_sink: cannot create the counter map: %s\n", std::strerror(errno));
    return 1;
  }
  std::string log;
  const int prog = LoadProgram(map, &log);
  if (prog < 0) {
    std::fprintf(stderr, "xdp_sink: the kernel refused the program: %s\n%s\n", std::strerror(errno), log.c_str());
    return 1;
  }
  // UPDATE_IF_NOEXIST: never replace someone else's program.
  const uint32_t flags = (mode == "native" ? XDP_FLAGS_DRV_MODE : XDP_FLAGS_SKB_MODE) | XDP_FLAGS_UPDATE_IF_NOEXIST;
  if (const int err = bpf_xdp_attach(ifindex, prog, flags, nullptr); err != 0) {
    std::fprintf(stderr, "xdp_sink: cannot attach to %s in %s mode: %s\n", iface.c_str(), mode.c_str(),
                 std::strerror(-err));
    return 1;
  }
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  std::signal(SIGHUP, OnSignal);
  std::printf("attached to %s (ifindex %d), %s XDP\n", iface.c_str(), ifindex, mode.c_str());
  std::fflush(stdout);

  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  auto since = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  double last_t = 0;
  uint64_t last_packets = 0;
  while (!g_stop && (duration <= 0 || since() < duration)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const double t = since();
    if (t - last_t < interval) continue;
    const Counts c = Read(map, ncpu);
    std::printf("t=%.3f packets=%llu bytes=%llu pps=%.0f cpu_packets=%s\n", t,
                static_cast<unsigned long long>(c.packets), static_cast<unsigned long long>(c.bytes),
                (c.packets - last_packets) / (t - last_t), c.per_cpu.c_str());
    std::fflush(stdout);
    last_t = t;
    last_packets = c.packets;
  }
  const double secs = since();
  const Counts c = Read(map, ncpu);
  // Only our own program: if someone replaced it meanwhile, theirs stays.
  LIBBPF_OPTS(bpf_xdp_attach_opts, o, .old_prog_fd = prog);
  if (bpf_xdp_detach(ifindex, (flags & ~XDP_FLAGS_UPDATE_IF_NOEXIST) | XDP_FLAGS_REPLACE, &o) != 0) {
    std::fprintf(stderr, "xdp_sink: could not detach from %s\n", iface.c_str());
  }
  std::printf("summary packets=%llu bytes=%llu seconds=%.3f mpps=%.4f avg_frame=%.1f cpu_packets=%s\n",
              static_cast<unsigned long long>(c.packets), static_cast<unsigned long long>(c.bytes), secs,
              c.packets / secs / 1e6, c.packets ? static_cast<double>(c.bytes) / c.packets : 0.0, c.per_cpu.c_str());
  return 0;
}
