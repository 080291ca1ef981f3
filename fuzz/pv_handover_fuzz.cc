// libFuzzer target: a live upgrade's pv handover record (docs/pv-protocol.md "Live upgrade") as
// another nicmuxd build could send it. A port A serving a started driver (two queue pairs, a
// registered region, a flow rule, frames moved both ways) exports its state for every input;
// the input rewrites it, then a port B is built from it (CreatePvPort with the record), and
// when that succeeds A's positions, rewritten too, go to ImportPositions, B commits and exports
// in turn (the next upgrade's record). The input is text, one line each:
//   key=value   sets key (a value, or the index of an fd)     -key   removes key
//   --          the lines after it rewrite the positions record instead
// Each record gets extra fds after its own, which values can name: an eventfd, a pipe's two
// ends, an unsealed memfd of the region's size, a sealed one of one page, a UNIX socket.
// Whatever the records say, nothing may crash, trip a sanitizer or leak an fd; before the
// commit B writes nothing into the shared region.
#include <dirent.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "base/event_loop.h"
#include "base/handover.h"
#include "base/log.h"
#include "base/pausable.h"
#include "packet/packet.h"
#include "pv/pv_port.h"
#include "tests/support/pv_driver.h"

using namespace nicmux;

namespace {

constexpr size_t kMaxLines = 256;

size_t OpenFds() {
  size_t n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return 0;
  while (::readdir(d) != nullptr) ++n;
  ::closedir(d);
  return n;
}

UniqueFd Memfd(size_t bytes, bool seal) {
  UniqueFd m(::memfd_create("pv-handover-fuzz", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!m.valid() || ::ftruncate(m.get(), static_cast<off_t>(bytes)) != 0) std::abort();
  if (seal && ::fcntl(m.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) std::abort();
  return m;
}

// Port A and its driver, once: every input starts from A's export of the same state.
struct Harness {
  std::unique_ptr<EventLoop> loop_a, loop_b;
  NoWorker workers;
  PvPortOptions opt;
  std::unique_ptr<Port> a;
  testing::RawPvDriver* driver = nullptr;
  UniqueFd mem;
};

Harness& Get() {
  static Harness* h = [] {
    SetLogLevel(LogLevel::kError);
    auto* x = new Harness;
    x->loop_a = std::move(*EventLoop::Create());
    x->loop_b = std::move(*EventLoop::Create());
    char dir[] = "/tmp/nmxpvhfzXXXXXX";
    if (!::mkdtemp(dir)) std::abort();
    x->opt.name = "fz";
    x->opt.socket_path = std::string(dir) + "/pv.sock";
    x->opt.queues = 2;
    x->opt.ring = 64;
    x->opt.max_flows = 8;
    x->opt.mac[0] = 2, x->opt.mac[5] = 1;
    auto p = CreatePvPort(x->opt, x->loop_a.get(), &x->workers);
    if (!p) std::abort();
    x->a = std::move(*p);
    auto* d = new testing::RawPvDriver(x->loop_a.get());
    x->driver = d;
    if (!d->Connect(x->opt.socket_path).empty()) std::abort();
    x->mem = Memfd(65536, false);
    if (d->MemAdd(1, x->mem.get(), 0, 65536).status != 0) std::abort();
    if (!d->Start(2).empty()) std::abort();
    nmx_pv_flow_rule rule{};
    rule.items = NMX_PV_FLOW_ITEM_ETH;
    rule.actions = NMX_PV_FLOW_ACTION_MARK;
    rule.mark = 5;
    if (d->Call(NMX_PV_MSG_FLOW_CREATE, rule).status != 0) std::abort();
    // Frames both ways, so that the indexes are not all 0.
    uint8_t frame[64] = {2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x88, 0xb5};
    for (uint32_t i = 0; i < 3; ++i) d->PostTx(0, i, static_cast<const void*>(frame), sizeof frame);
    Batch b;
    const size_t n = x->a->Rx(0, b, kBurst);
    x->a->RxDone(0, b, n);
    for (uint32_t i = 0; i < 4; ++i) d->PostRx(1, 64 + i, 2048);
    return x;
  }();
  return *h;
}

void AppendFds(HandoverRecord* r, uint64_t region_size) {
  r->AddOwnedFd(UniqueFd(::eventfd(0, EFD_CLOEXEC)));
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) std::abort();
  r->AddOwnedFd(UniqueFd(p[0]));
  r->AddOwnedFd(UniqueFd(p[1]));
  r->AddOwnedFd(Memfd(region_size, false));
  r->AddOwnedFd(Memfd(4096, true));
  r->AddOwnedFd(UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)));
}

void Rewrite(HandoverRecord* r, const std::vector<std::string_view>& lines) {
  for (std::string_view line : lines) {
    if (!line.empty() && line[0] == '-') {
      r->mutable_values().erase(std::string(line.substr(1)));
      continue;
    }
    const size_t eq = line.find('=');
    if (eq == std::string_view::npos) continue;
    r->SetText(std::string(line.substr(0, eq)), std::string(line.substr(eq + 1)));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Harness& h = Get();
  const size_t fds_before = OpenFds();
  std::vector<std::string_view> state_lines, pos_lines;
  {
    std::vector<std::string_view>* cur = &state_lines;
    std::string_view in(reinterpret_cast<const char*>(data), size);
    size_t lines = 0;
    while (!in.empty() && lines++ < kMaxLines) {
      const size_t nl = in.find('\n');
      std::string_view line = in.substr(0, nl);
      in = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);
      if (line == "--") {
        cur = &pos_lines;
        continue;
      }
      cur->push_back(line);
    }
  }
  {
    HandoverRecord state;
    if (!h.a->Export(&state)) std::abort();
    AppendFds(&state, h.driver->size);
    Rewrite(&state, state_lines);
    const std::vector<std::byte> before(h.driver->base, h.driver->base + h.driver->size);
    auto b = CreatePvPort(h.opt, h.loop_b.get(), &h.workers, &state);
    bool ok = b.has_value();
    if (ok) {
      HandoverRecord pos;
      if (!h.a->ExportPositions(&pos)) std::abort();
      AppendFds(&pos, h.driver->size);
      Rewrite(&pos, pos_lines);
      ok = static_cast<bool>((*b)->ImportPositions(pos));
      // Adopt and ImportPositions wrote nothing into the shared region, whatever they took.
      if (std::memcmp(before.data(), h.driver->base, before.size()) != 0) {
        std::fprintf(stderr, "pv_handover_fuzz: the new port wrote into the region before the commit\n");
        std::abort();
      }
    }
    if (ok) {
      (*b)->HandoverCommitted();
      // The next upgrade's records of what was imported.
      HandoverRecord again, again_pos;
      (void)(*b)->Export(&again);
      (void)(*b)->ExportPositions(&again_pos);
      (void)(*b)->State();
      (void)(*b)->Details();
      (void)(*b)->FlowRules();
    }
    if (std::getenv("PV_HANDOVER_FUZZ_VERBOSE")) {
      std::fprintf(stderr, "pv_handover_fuzz: %s%s\n", ok ? "handed over" : "refused: ",
                   ok ? "" : (b ? "positions" : b.error().message().c_str()));
    }
    // B goes as the new process's port would at exit; A's region is the driver's again (a
    // commit may have marked it broken: A does not read its header).
  }
  // Every fd of both records and of B is closed.
  if (OpenFds() != fds_before) {
    std::fprintf(stderr, "pv_handover_fuzz: fd leak: %zu open before, %zu after\n", fds_before, OpenFds());
    std::abort();
  }
  return 0;
}
