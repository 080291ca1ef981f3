#include "memory/guest_memory.h"

#include <sys/eventfd.h>
#include <cstdio>
#include <cstring>
#include <sys/mman.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "tests/support/fake_guest.h"

namespace nicmux {
namespace {

using testing::FakeGuest;

// Two regions with a hole between them: [0x10000, +64K) and [0x40000, +64K).
FakeGuest TwoRegions() { return FakeGuest({{0x10000, 0x10000}, {0x40000, 0x10000}}); }

TEST(GuestMemory, TranslatesInsideOneRegion) {
  FakeGuest g = TwoRegions();
  auto s = g.mem().Translate(GuestAddr{0x10000}, 0x10000, Access::kRead);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->size(), 0x10000u);
  auto t = g.mem().Translate(GuestAddr{0x4fff0}, 16, Access::kWrite);
  ASSERT_TRUE(t);
  (*t)[15] = std::byte{7};  // the last byte of region 1 is writable
}

TEST(GuestMemory, RejectsCrossingARegionEnd) {
  FakeGuest g = TwoRegions();
  auto s = g.mem().Translate(GuestAddr{0x1fff0}, 17, Access::kRead);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message().find("0x1fff0"), std::string::npos);
  EXPECT_EQ(g.mem().TranslateFast(GuestAddr{0x1ffff}, 2, Access::kRead), nullptr);
}

TEST(GuestMemory, RejectsOutsideEveryRegion) {
  FakeGuest g = TwoRegions();
  EXPECT_EQ(g.mem().TranslateFast(GuestAddr{0}, 1, Access::kRead), nullptr);
  EXPECT_EQ(g.mem().TranslateFast(GuestAddr{0x20000}, 1, Access::kRead), nullptr);  // the hole
  EXPECT_EQ(g.mem().TranslateFast(GuestAddr{0x50000}, 1, Access::kRead), nullptr);
  EXPECT_EQ(g.mem().TranslateFast(GuestAddr{0x30000}, 0x20000, Access::kRead), nullptr);
}

TEST(GuestMemory, AddrPlusLenWrappingIsRejected) {
  FakeGuest g = TwoRegions();
  EXPECT_EQ(g.mem().TranslateFast(GuestAddr{0x10010}, UINT64_MAX - 8, Access::kRead), nullptr);
  EXPECT_EQ(g.mem().TranslateFast(GuestAddr{UINT64_MAX}, 2, Access::kRead), nullptr);
  EXPECT_EQ(g.mem().TranslateFast(GuestAddr{0x10010}, UINT64_MAX, Access::kRead), nullptr);
}

TEST(GuestMemory, ZeroLengthNeedsAddressInside) {
  FakeGuest g = TwoRegions();
  EXPECT_NE(g.mem().TranslateFast(GuestAddr{0x10000}, 0, Access::kRead), nullptr);
  EXPECT_EQ(g.mem().TranslateFast(GuestAddr{0x20000}, 0, Access::kRead), nullptr);
}

TEST(GuestMemory, TranslatesFrontendVirtualAddresses) {
  FakeGuest g = TwoRegions();
  uint64_t uva = g.Uva(GuestAddr{0x40010});
  auto s = g.mem().TranslateUva(uva, 32, Access::kRead);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->data(), g.Host(GuestAddr{0x40010}));
  EXPECT_FALSE(g.mem().TranslateUva(0x40010, 32, Access::kRead));  // a gpa is not a uva
  EXPECT_FALSE(g.mem().TranslateUva(g.Uva(GuestAddr{0x4fff0}), 17, Access::kRead));
}

TEST(GuestMemory, ReadIsOneCopy) {
  FakeGuest g = TwoRegions();
  uint64_t v = 0x1122334455667788;
  std::memcpy(g.Host(GuestAddr{0x10008}, 8), &v, 8);
  auto r = g.mem().Read<uint64_t>(GuestAddr{0x10008});
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, v);
  EXPECT_FALSE(g.mem().Read<uint64_t>(GuestAddr{0x1fffc}));
  ASSERT_TRUE(g.mem().Write<uint32_t>(GuestAddr{0x40000}, 0xabcd));
  EXPECT_EQ(*g.mem().Read<uint32_t>(GuestAddr{0x40000}), 0xabcdu);
}

GuestRegion Fake(uint64_t gpa, uint64_t size, uint64_t uva, std::byte* host) {
  GuestRegion r;
  r.gpa = gpa;
  r.size = size;
  r.uva = uva;
  r.host = host;
  return r;
}

TEST(GuestMemory, CreateRejectsBadTables) {
  std::byte buf[64];
  auto zero = GuestMemory::Create({Fake(0, 0, 0, buf)});
  ASSERT_FALSE(zero);
  EXPECT_NE(zero.error().message().find("size is zero"), std::string::npos);

  auto overlap = GuestMemory::Create({Fake(0, 0x1000, 0, buf), Fake(0xfff, 0x10, 0x10000, buf)});
  ASSERT_FALSE(overlap);
  EXPECT_NE(overlap.error().message().find("overlaps region 0"), std::string::npos);

  auto uva_overlap = GuestMemory::Create({Fake(0, 0x1000, 0x5000, buf), Fake(0x2000, 0x1000, 0x5800, buf)});
  ASSERT_FALSE(uva_overlap);
  EXPECT_NE(uva_overlap.error().message().find("user_addr"), std::string::npos);

  auto wrap = GuestMemory::Create({Fake(UINT64_MAX - 10, 0x1000, 0, buf)});
  ASSERT_FALSE(wrap);
  EXPECT_NE(wrap.error().message().find("wraps"), std::string::npos);

  std::vector<GuestRegion> many;
  for (uint64_t i = 0; i <= GuestMemory::kMaxRegions; ++i) {
    many.push_back(Fake(i * 0x1000, 0x1000, i * 0x1000, buf));
  }
  auto too_many = GuestMemory::Create(many);
  ASSERT_FALSE(too_many);
  EXPECT_NE(too_many.error().message().find("at most 509"), std::string::npos);
  many.pop_back();
  EXPECT_TRUE(GuestMemory::Create(many));
}

TEST(GuestMemory, ManyRegionsBinarySearchAndCache) {
  // 300 one-page regions in reverse order, each with its own host page.
  std::vector<std::byte> backing(300 * 64);
  std::vector<GuestRegion> rs;
  for (uint64_t i = 0; i < 300; ++i) {
    rs.push_back(Fake((299 - i) * 0x10000, 64, 0x7000000 + i * 0x1000, backing.data() + i * 64));
  }
  auto m = GuestMemory::Create(rs);
  ASSERT_TRUE(m);
  for (uint64_t i = 0; i < 300; ++i) {
    uint64_t gpa = (299 - i) * 0x10000;
    EXPECT_EQ((*m)->TranslateFast(GuestAddr{gpa + 8}, 56, Access::kRead), backing.data() + i * 64 + 8);
    EXPECT_EQ((*m)->TranslateFast(GuestAddr{gpa + 8}, 57, Access::kRead), nullptr);
    EXPECT_EQ((*m)->TranslateUvaFast(0x7000000 + i * 0x1000 + 1, 1, Access::kRead),
              backing.data() + i * 64 + 1);
    // Same again: served by the last-hit cache, same answer.
    EXPECT_EQ((*m)->TranslateFast(GuestAddr{gpa}, 64, Access::kRead), backing.data() + i * 64);
  }
}

TEST(GuestMemory, AddAndRemoveRegionMakeNewSnapshots) {
  std::byte a[4096], b[4096];
  auto m1 = GuestMemory::Create({Fake(0x1000, 4096, 0x1000, a)});
  ASSERT_TRUE(m1);
  auto m2 = (*m1)->WithRegion(Fake(0x3000, 4096, 0x3000, b));
  ASSERT_TRUE(m2);
  EXPECT_EQ((*m1)->TranslateFast(GuestAddr{0x3000}, 1, Access::kRead), nullptr);
  EXPECT_EQ((*m2)->TranslateFast(GuestAddr{0x3000}, 1, Access::kRead), b);
  EXPECT_FALSE((*m2)->WithRegion(Fake(0x3800, 4096, 0x9000, b)));  // overlap refused
  auto m3 = (*m2)->WithoutRegion(RegionSpec{0x1000, 4096, 0x1000, 0});
  ASSERT_TRUE(m3);
  EXPECT_EQ((*m3)->TranslateFast(GuestAddr{0x1000}, 1, Access::kRead), nullptr);
  EXPECT_EQ((*m3)->TranslateFast(GuestAddr{0x3000}, 1, Access::kRead), b);
  EXPECT_FALSE((*m3)->WithoutRegion(RegionSpec{0x1000, 4096, 0x1000, 0}));
}

TEST(GuestMemory, MapRegionFromFdWithOffset) {
  FakeGuest g(1 << 20);
  // Map the fake guest's fd again, as a backend would: region starting 64 KiB into the fd.
  RegionSpec spec{0x800000, 0x10000, 0x7f0000000000, 0x10000};
  auto r = GuestMemory::MapRegion(spec, g.fd());
  ASSERT_TRUE(r);
  auto m = GuestMemory::Create({*r});
  ASSERT_TRUE(m);
  *g.Host(GuestAddr{FakeGuest::kDefaultGpa + 0x10000 + 5}) = std::byte{0x42};
  EXPECT_EQ(*(*m)->TranslateFast(GuestAddr{0x800005}, 1, Access::kRead), std::byte{0x42});
  EXPECT_EQ(*(*m)->TranslateUvaFast(0x7f0000000005, 1, Access::kRead), std::byte{0x42});
  // mmap_offset + size wraps: refused as such (unchecked, the wrapped sum is small and only
  // mmap(2) would refuse the offset).
  auto wraps = GuestMemory::MapRegion(RegionSpec{0, 0x1000, 0, UINT64_MAX - 10}, g.fd());
  ASSERT_FALSE(wraps);
  EXPECT_EQ(wraps.error().message(), "memory region: mmap_offset 0xfffffffffffffff5 + size 0x1000 wraps");
  auto no_fd = GuestMemory::MapRegion(RegionSpec{0, 0x1000, 0, 0}, -1);
  ASSERT_FALSE(no_fd);
  EXPECT_EQ(no_fd.error().sys_errno(), EBADF);
}

TEST(GuestMemory, MapRegionRefusesARegionPastTheEndOfItsFile) {
  // Found by vhost_session_fuzz: mapping past EOF succeeds, touching it is SIGBUS.
  FakeGuest g(1 << 20);
  auto r = GuestMemory::MapRegion(RegionSpec{0, 2 << 20, 0x10000, 0}, g.fd());
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("past the end of its file"), std::string::npos);
  EXPECT_FALSE(GuestMemory::MapRegion(RegionSpec{0, 1 << 20, 0x10000, 4096}, g.fd()));
  EXPECT_TRUE(GuestMemory::MapRegion(RegionSpec{0, (1 << 20) - 4096, 0x10000, 4096}, g.fd()));
  int efd = ::eventfd(0, EFD_CLOEXEC);
  auto e = GuestMemory::MapRegion(RegionSpec{0, 4096, 0x10000, 0}, efd);
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message().find("not a memfd"), std::string::npos);
  ::close(efd);
}

// Review of issue 17: a hugetlbfs region whose size is not a multiple of the huge page size was
// mapped with its exact length, and munmap refuses such a length on hugetlbfs: the mapping
// stayed for ever (a frontend could repeat it until mmap failed for everyone). The mapping is
// now rounded to the file's block size, and goes when the region does.
TEST(GuestMemory, AnUnalignedHugetlbfsRegionIsUnmapped) {
  // Two huge pages, reserved here if the machine has none free (restored after).
  auto read_int = [](const char* path) {
    FILE* f = fopen(path, "r");
    long v = -1;
    if (f) {
      if (fscanf(f, "%ld", &v) != 1) v = -1;
      fclose(f);
    }
    return v;
  };
  auto write_int = [](const char* path, long v) {
    FILE* f = fopen(path, "w");
    if (!f) return false;
    const bool ok = fprintf(f, "%ld", v) > 0;
    return fclose(f) == 0 && ok;
  };
  const char* kNr = "/proc/sys/vm/nr_hugepages";
  const long nr = read_int(kNr);
  long free_pages = 0;
  {
    FILE* f = fopen("/proc/meminfo", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f)) sscanf(line, "HugePages_Free: %ld", &free_pages);
    if (f) fclose(f);
  }
  const bool reserved = free_pages < 2 && nr >= 0 && write_int(kNr, nr + 2 - free_pages);
  int fd = ::memfd_create("nicmux-huge-test", MFD_CLOEXEC | MFD_HUGETLB);
  if (fd < 0 || ::ftruncate(fd, 4 << 20) != 0) {
    if (fd >= 0) ::close(fd);
    if (reserved) write_int(kNr, nr);
    GTEST_SKIP() << "no huge pages can be had here";
  }
  auto count_maps = [] {
    FILE* f = fopen("/proc/self/maps", "r");
    char line[512];
    int n = 0;
    while (f && fgets(line, sizeof line, f)) n += strstr(line, "nicmux-huge-test") != nullptr;
    if (f) fclose(f);
    return n;
  };
  {
    auto r = GuestMemory::MapRegion(RegionSpec{0, (2 << 20) + 4096, 0x10000000, 0}, fd);
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(count_maps(), 1);
    std::memset(r->host, 0x5a, (2 << 20) + 4096);  // every byte of the region is there
  }
  EXPECT_EQ(count_maps(), 0) << "the hugetlbfs mapping outlived its region";
  ::close(fd);
  if (reserved) write_int(kNr, nr);
}

TEST(GuestMemoryMap, SwapKeepsOldSnapshotAliveForReaders) {
  auto g = std::make_unique<FakeGuest>(1 << 16);
  RegionSpec spec{0, 1 << 16, 0x10000000, 0};
  auto r = GuestMemory::MapRegion(spec, g->fd());
  ASSERT_TRUE(r);
  GuestMemoryMap map;
  map.Store(*GuestMemory::Create({*r}));
  auto held = map.Load();
  std::byte* p = held->TranslateFast(GuestAddr{100}, 1, Access::kWrite);
  map.Store(nullptr);  // the table is replaced; our snapshot still maps the memory
  *p = std::byte{1};
  EXPECT_EQ(map.Load(), nullptr);
  EXPECT_EQ(*held->TranslateFast(GuestAddr{100}, 1, Access::kRead), std::byte{1});
}

}  // namespace
}  // namespace nicmux
