#include "tests/support/fake_guest.h"

#include <sys/mman.h>
#include <unistd.h>

#include "base/check.h"
#include "base/unique_fd.h"

namespace nicmux::testing {

namespace {
constexpr uint64_t kPage = 4096;
}

// One region: a reservation of size + 2 guard pages, the memfd mapped in the middle.
struct FakeGuest::Backing {
  UniqueFd fd;
  void* reservation = nullptr;
  uint64_t reserved = 0;
  std::byte* host = nullptr;
  RegionLayout layout;

  ~Backing() {
    if (reservation) ::munmap(reservation, reserved);
  }
};

FakeGuest::FakeGuest(uint64_t size_bytes) : FakeGuest(std::vector<RegionLayout>{{kDefaultGpa, size_bytes}}) {}

FakeGuest::FakeGuest(std::vector<RegionLayout> regions) {
  std::vector<GuestRegion> specs;
  for (const RegionLayout& l : regions) {
    NICMUX_CHECK(l.size > 0 && l.size % kPage == 0);
    auto b = std::make_unique<Backing>();
    b->layout = l;
    b->fd.Reset(::memfd_create("nicmux-fake-guest", MFD_CLOEXEC));
    NICMUX_CHECK(b->fd.valid());
    NICMUX_CHECK(::ftruncate(b->fd.get(), static_cast<off_t>(l.size)) == 0);
    b->reserved = l.size + 2 * kPage;
    b->reservation = ::mmap(nullptr, b->reserved, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    NICMUX_CHECK(b->reservation != MAP_FAILED);
    void* p = ::mmap(static_cast<std::byte*>(b->reservation) + kPage, l.size,
                     PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, b->fd.get(), 0);
    NICMUX_CHECK(p != MAP_FAILED);
    b->host = static_cast<std::byte*>(p);
    GuestRegion r;
    r.gpa = l.gpa;
    r.size = l.size;
    r.uva = reinterpret_cast<uint64_t>(p);
    r.host = b->host;
    specs.push_back(r);
    next_free_.push_back(0);
    backing_.push_back(std::move(b));
  }
  auto m = GuestMemory::Create(std::move(specs));
  NICMUX_CHECK_MSG(m.has_value(), m.has_value() ? "" : m.error().message().c_str());
  mem_ = *m;
}

FakeGuest::~FakeGuest() = default;

GuestAddr FakeGuest::Alloc(uint64_t bytes, uint64_t align, size_t region) {
  NICMUX_CHECK(region < backing_.size());
  uint64_t& next = next_free_[region];
  next = (next + align - 1) / align * align;
  NICMUX_CHECK_MSG(next + bytes <= backing_[region]->layout.size, "fake guest memory exhausted");
  GuestAddr a{backing_[region]->layout.gpa + next};
  next += bytes;
  return a;
}

std::byte* FakeGuest::Host(GuestAddr addr, uint64_t len) const {
  std::byte* p = mem_->TranslateFast(addr, len, Access::kRead);
  NICMUX_CHECK_MSG(p != nullptr, "FakeGuest::Host: address outside the fake guest");
  return p;
}

int FakeGuest::fd(size_t region) const { return backing_.at(region)->fd.get(); }

template <typename Layout>
RingPair<Layout>::RingPair(FakeGuest& g, const RingOptions& o) : guest(g), options(o) {
  using namespace virtio;
  if constexpr (Layout::kPacked) {
    ring[0] = g.Alloc(PackedRingLayout::DescBytes(o.size), 64);
    ring[1] = g.Alloc(PackedRingLayout::kEventBytes, 64);
    ring[2] = g.Alloc(PackedRingLayout::kEventBytes, 64);
  } else {
    ring[0] = g.Alloc(SplitRingLayout::DescBytes(o.size), 64);
    ring[1] = g.Alloc(SplitRingLayout::AvailBytes(o.size), 64);
    ring[2] = g.Alloc(SplitRingLayout::UsedBytes(o.size), 64);
  }
  if (o.max_indirect > 0) indirect_area = g.Alloc(uint64_t{o.size} * o.max_indirect * 16, 64);
  Reset();
}

template <typename Layout>
void RingPair<Layout>::Reset() {
  using namespace virtio;
  FakeGuest& g = guest;
  const RingOptions& o = options;
  DriverRingConfig dc;
  dc.size = o.size;
  dc.features = o.features;
  for (int i = 0; i < 3; ++i) dc.ring[i] = ring[i];
  dc.max_indirect = o.max_indirect;
  dc.indirect_area = indirect_area;
  auto r = driver.Init(g.mem(), dc);
  NICMUX_CHECK_MSG(r.has_value(), r ? "" : r.error().message().c_str());
  VringConfig vc{o.size, o.features, o.policy};
  if constexpr (Layout::kPacked) {
    // The device side reads the rings through frontend virtual addresses, as vhost-user does.
    auto areas = MapPackedRing(g.mem(), RingAddrSpace::kFrontendVirtual, g.Uva(ring[0]),
                               g.Uva(ring[1]), g.Uva(ring[2]), o.size);
    NICMUX_CHECK(areas.has_value());
    NICMUX_CHECK(device.Init(vc, *areas, &g.mem()).has_value());
  } else {
    auto areas = MapSplitRing(g.mem(), RingAddrSpace::kFrontendVirtual, g.Uva(ring[0]),
                              g.Uva(ring[1]), g.Uva(ring[2]), o.size);
    NICMUX_CHECK(areas.has_value());
    NICMUX_CHECK(device.Init(vc, *areas, &g.mem()).has_value());
  }
}

template struct RingPair<SplitLayout>;
template struct RingPair<PackedLayout>;

void FillPattern(std::byte* p, size_t len, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < len; ++i) {
    p[i] = static_cast<std::byte>((x >> 56) ^ i);
    if ((i & 7) == 7) x = x * 6364136223846793005ull + 1442695040888963407ull;
  }
}

bool CheckPattern(const std::byte* p, size_t len, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < len; ++i) {
    if (p[i] != static_cast<std::byte>((x >> 56) ^ i)) return false;
    if ((i & 7) == 7) x = x * 6364136223846793005ull + 1442695040888963407ull;
  }
  return true;
}

}  // namespace nicmux::testing
