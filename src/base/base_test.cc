#include <fcntl.h>
#include <sys/mman.h>

#include <gtest/gtest.h>

#include "base/check.h"
#include "base/counter.h"
#include "base/event_fd.h"
#include "base/le.h"
#include "base/log.h"
#include "base/mmap.h"
#include "base/result.h"
#include "base/unique_fd.h"

namespace nicmux {
namespace {

Result<int> Half(int v) {
  if (v % 2 != 0) return Error("odd value " + std::to_string(v));
  return v / 2;
}

Result<int> Quarter(int v) {
  auto h = Half(v);
  if (!h) return h.error().Wrap("quarter");
  return Half(*h);
}

TEST(Result, CarriesValueOrError) {
  auto r = Quarter(8);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, 2);
  auto bad = Quarter(6);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message(), "odd value 3");
  auto bad2 = Quarter(5);
  EXPECT_EQ(bad2.error().message(), "quarter: odd value 5");
}

Result<void> FailsWithErrno() {
  errno = ENOENT;
  return Error::FromErrno("open /nope");
}

Result<void> Propagates() {
  NICMUX_TRY(FailsWithErrno());
  return Ok();
}

TEST(Result, VoidAndTry) {
  auto r = Propagates();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().sys_errno(), ENOENT);
  EXPECT_NE(r.error().message().find("open /nope"), std::string::npos);
  EXPECT_TRUE(Ok());
}

TEST(ResultDeathTest, ValueOfErrorAborts) {
  EXPECT_DEATH({ (void)Half(3).value(); }, "odd value 3");
}

TEST(CheckDeathTest, AbortsWithCondition) {
  EXPECT_DEATH(NICMUX_CHECK(1 + 1 == 3), "1 \\+ 1 == 3");
}

TEST(UniqueFd, ClosesOnceAndMoves) {
  int fd = ::memfd_create("t", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  {
    UniqueFd a(fd);
    UniqueFd b(std::move(a));
    EXPECT_FALSE(a.valid());
    EXPECT_EQ(b.get(), fd);
    EXPECT_GE(::fcntl(fd, F_GETFD), 0);
  }
  EXPECT_EQ(::fcntl(fd, F_GETFD), -1);
  EXPECT_EQ(errno, EBADF);
}

TEST(EventFd, SignalDrain) {
  auto e = EventFd::Create();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->Drain(), 0u);
  e->Signal();
  e->Signal();
  EXPECT_EQ(e->Drain(), 2u);
  EXPECT_EQ(e->Drain(), 0u);
}

TEST(MappedRegion, MapsFdSharedAndUnmaps) {
  UniqueFd fd(::memfd_create("t", MFD_CLOEXEC));
  ASSERT_EQ(::ftruncate(fd.get(), 8192), 0);
  auto a = MappedRegion::MapFd(fd.get(), 0, 8192);
  auto b = MappedRegion::MapFd(fd.get(), 4096, 4096);
  ASSERT_TRUE(a && b);
  a->data()[4096] = std::byte{0x5a};
  EXPECT_EQ(b->data()[0], std::byte{0x5a});
  // Refused by the length check (mmap(2) would refuse a zero length too, with EINVAL: the
  // message says which one did).
  auto empty = MappedRegion::MapFd(fd.get(), 0, 0);
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error().message(), "mmap: zero length");
  auto bad = MappedRegion::MapFd(-1, 0, 4096);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().sys_errno(), EBADF);
}

TEST(Le, StoresLittleEndian) {
  Le32 v = Le32::Of(0x11223344);
  unsigned char bytes[4];
  std::memcpy(bytes, &v, 4);
  EXPECT_EQ(bytes[0], 0x44);
  EXPECT_EQ(bytes[3], 0x11);
  EXPECT_EQ(v.get(), 0x11223344u);
}

TEST(DropCounters, CountPerReasonWithNames) {
  DropCounters c;
  c.Add(DropReason::kDescLoop);
  c.Add(DropReason::kDescLoop, 2);
  c.Add(DropReason::kAvailIdxJump);
  EXPECT_EQ(c.Get(DropReason::kDescLoop), 3u);
  EXPECT_EQ(c.Total(), 4u);
  EXPECT_EQ(DropReasonName(DropReason::kDescLoop), "desc_loop");
  EXPECT_EQ(DropReasonName(DropReason::kQueueBroken), "queue_broken");
  for (size_t i = 0; i < kNumDropReasons; ++i) EXPECT_FALSE(kDropReasonInfo[i].name.empty());
}

TEST(LogRateLimiter, BurstThenSuppressThenReport) {
  LogRateLimiter rl;
  uint64_t sup = 0;
  uint64_t t = 1'000'000'000'000;
  int allowed = 0;
  for (int i = 0; i < 100; ++i) allowed += rl.Allow(t, &sup);
  EXPECT_EQ(allowed, static_cast<int>(LogRateLimiter::kBurst));
  EXPECT_TRUE(rl.Allow(t + LogRateLimiter::kIntervalNs, &sup));
  EXPECT_EQ(sup, 100u - LogRateLimiter::kBurst);
}

TEST(Log, RateLimitedMacroLetsABurstThrough) {
  LogLevel old = GetLogLevel();
  SetLogLevel(LogLevel::kDebug);
  testing::internal::CaptureStderr();
  for (int i = 0; i < 50; ++i) NICMUX_LOG_RATELIMITED(kWarning, "flood %d", i);
  NICMUX_LOG(kInfo, "plain %s", "line");
  NICMUX_LOG(kDebug, "debug line");
  SetLogLevel(LogLevel::kWarning);
  NICMUX_LOG(kInfo, "hidden");
  std::string out = testing::internal::GetCapturedStderr();
  SetLogLevel(old);
  size_t floods = 0;
  for (size_t p = out.find("flood"); p != std::string::npos; p = out.find("flood", p + 1)) ++floods;
  EXPECT_EQ(floods, LogRateLimiter::kBurst);
  EXPECT_NE(out.find("warning flood 0 (base_test.cc:"), std::string::npos);
  EXPECT_NE(out.find("info plain line"), std::string::npos);
  EXPECT_NE(out.find("debug debug line"), std::string::npos);
  EXPECT_EQ(out.find("hidden"), std::string::npos);
}

TEST(Log, PerObjectLimitersAreIndependentAndReportWhatTheySuppressed) {
  LogLevel old = GetLogLevel();
  SetLogLevel(LogLevel::kInfo);
  LogRateLimiter noisy, quiet;
  // A window that opened long ago (t = 1 ns) and suppressed 40: the next message, in a new
  // window, carries the count.
  uint64_t sup = 0;
  for (int i = 0; i < 50; ++i) noisy.Allow(1, &sup);
  testing::internal::CaptureStderr();
  for (int i = 0; i < 50; ++i) NICMUX_LOG_RATELIMITED_BY(noisy, kWarning, "port %s: noisy %d", "a", i);
  NICMUX_LOG_RATELIMITED_BY(quiet, kWarning, "port %s: first words", "b");
  std::string out = testing::internal::GetCapturedStderr();
  SetLogLevel(old);
  size_t noisy_lines = 0;
  for (size_t p = out.find("noisy"); p != std::string::npos; p = out.find("noisy", p + 1)) ++noisy_lines;
  EXPECT_EQ(noisy_lines, LogRateLimiter::kBurst);
  EXPECT_NE(out.find("port a: noisy 0 (40 similar messages suppressed before this one)"), std::string::npos) << out;
  EXPECT_NE(out.find("port a: noisy 1 ("), std::string::npos) << out;
  EXPECT_NE(out.find("port b: first words ("), std::string::npos) << out;  // not silenced by a
}

}  // namespace
}  // namespace nicmux
