// libFuzzer target: a live upgrade's vhost-user handover record (docs/upgrade.md) as another
// nicmuxd build could send it, into BackendSession::Import and then ImportPositions. The input
// is text, one `key=value` per line (lines without '=' are skipped); a line `--` ends the
// state record (Export's "s." keys) and starts the positions record (ExportPositions' "s.p."
// keys). Each record gets the same real fds appended, which its fd values name by index:
//   0 a memfd of 16 pages (guest memory), 1..6 eventfds (kicks, calls, errs: the order a
//   session with one region and queues 0 and 1 exports them in), 7 and 8 a pipe's ends,
//   9 a second memfd of one page
// After a successful import the session is exported again (what the next upgrade would do).
// Whatever the record says, nothing may crash, trip a sanitizer or leak an fd: every error is
// a clean refusal, and Reset() leaves the session as new.
#include <dirent.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "base/handover.h"
#include "base/log.h"
#include "base/pausable.h"
#include "vhost/backend_session.h"

using namespace nicmux;

namespace {

constexpr size_t kMaxLines = 512;

size_t OpenFds() {
  size_t n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return 0;
  while (::readdir(d) != nullptr) ++n;
  ::closedir(d);
  return n;
}

UniqueFd Memfd(size_t bytes) {
  UniqueFd m(::memfd_create("handover-fuzz", MFD_CLOEXEC));
  if (!m.valid() || ::ftruncate(m.get(), static_cast<off_t>(bytes)) != 0) std::abort();
  return m;
}

// The fds every record gets, in the order the header names.
void AppendFds(HandoverRecord* r) {
  r->AddOwnedFd(Memfd(16 * 4096));
  for (int i = 0; i < 6; ++i) r->AddOwnedFd(UniqueFd(::eventfd(0, EFD_CLOEXEC)));
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) std::abort();
  r->AddOwnedFd(UniqueFd(p[0]));
  r->AddOwnedFd(UniqueFd(p[1]));
  r->AddOwnedFd(Memfd(4096));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  SetLogLevel(LogLevel::kError);
  const size_t fds_before = OpenFds();
  {
    HandoverRecord state, pos;
    HandoverRecord* cur = &state;
    std::string_view in(reinterpret_cast<const char*>(data), size);
    size_t lines = 0;
    while (!in.empty() && lines++ < kMaxLines) {
      const size_t nl = in.find('\n');
      std::string_view line = in.substr(0, nl);
      in = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);
      if (line == "--") {
        cur = &pos;
        continue;
      }
      const size_t eq = line.find('=');
      if (eq == std::string_view::npos) continue;
      cur->SetText(std::string(line.substr(0, eq)), std::string(line.substr(eq + 1)));
    }
    AppendFds(&state);
    AppendFds(&pos);

    NoWorker worker;
    vhost::BackendSession session(vhost::BackendConfig{2, 1500}, &worker);
    bool ok = static_cast<bool>(session.Import(state));
    if (ok) ok = static_cast<bool>(session.ImportPositions(pos));
    if (ok) {
      // The next upgrade's export of what was imported: it must hold together too.
      HandoverRecord again, again_pos;
      (void)session.Export(&again);
      (void)session.ExportPositions(&again_pos);
    }
    if (std::getenv("HANDOVER_FUZZ_VERBOSE")) std::fprintf(stderr, "handover_fuzz: imported: %s\n", ok ? "yes" : "no");
    session.Reset();
    // A fresh session after a failed one: Reset() left nothing behind that changes it.
    if (session.memory() != nullptr) std::abort();
  }
  // Every fd of both records and the session is closed.
  if (OpenFds() != fds_before) {
    std::fprintf(stderr, "handover_fuzz: fd leak: %zu open before, %zu after\n", fds_before, OpenFds());
    std::abort();
  }
  return 0;
}
