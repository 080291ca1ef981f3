// HandoverRecord (base/handover.h): named values and fds a port hands a new nicmuxd. Every
// error a malformed record can cause names the key, and an fd goes out of the record once.
#include "base/handover.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include <gtest/gtest.h>

namespace nicmux {
namespace {

// The error of r (a failed Result), or "" when it succeeded.
template <typename T>
std::string ErrorOf(const Result<T>& r) {
  return r ? "" : r.error().message();
}

TEST(HandoverRecord, SetAndGetNumbersAndText) {
  HandoverRecord r;
  r.Set("a", 0);
  r.Set("b", UINT64_MAX);
  r.Set("c", 42);
  r.SetText("t", "hello world");
  EXPECT_TRUE(r.Has("a"));
  EXPECT_FALSE(r.Has("z"));
  EXPECT_EQ(*r.Get("a"), 0u);
  EXPECT_EQ(*r.Get("b"), UINT64_MAX);
  EXPECT_EQ(*r.Get("c", 42), 42u);  // the bound is inclusive
  EXPECT_EQ(*r.GetText("t"), "hello world");
  EXPECT_EQ(*r.GetText("c"), "42");  // numbers are decimal text
  r.Set("c", 7);                     // a key set again is replaced
  EXPECT_EQ(*r.Get("c"), 7u);
  EXPECT_EQ(r.values().size(), 4u);
}

TEST(HandoverRecord, GetOrGivesTheDefaultOnlyForAMissingKey) {
  HandoverRecord r;
  EXPECT_EQ(*r.GetOr("missing", 5), 5u);
  EXPECT_EQ(*r.GetOr("missing", 500, 10), 500u);  // the default is not bounded by max
  r.Set("n", 3);
  EXPECT_EQ(*r.GetOr("n", 5), 3u);
  r.Set("big", 11);
  EXPECT_EQ(ErrorOf(r.GetOr("big", 0, 10)), "handover: big = 11 is above 10");
  r.SetText("bad", "x");
  EXPECT_EQ(ErrorOf(r.GetOr("bad", 0)), "handover: bad = 'x' is not a number");
}

TEST(HandoverRecord, MissingKeyIsNamed) {
  HandoverRecord r;
  EXPECT_EQ(ErrorOf(r.Get("s.q.3.num")), "handover: no value s.q.3.num");
  EXPECT_EQ(ErrorOf(r.GetText("name")), "handover: no value name");
  EXPECT_EQ(ErrorOf(r.TakeFd("t.q.0.fd")), "handover: no value t.q.0.fd");
}

TEST(HandoverRecord, NotANumberIsNamed) {
  HandoverRecord r;
  for (const char* v : {"", "abc", "12x", "-1", "+1", " 1", "1 ", "0x10", "1.5", "18446744073709551616"}) {
    r.SetText("k", v);
    const std::string e = ErrorOf(r.Get("k"));
    EXPECT_EQ(e, std::string("handover: k = '") + v + "' is not a number") << "value '" << v << "'";
  }
}

TEST(HandoverRecord, AboveMaxIsNamed) {
  HandoverRecord r;
  r.Set("s.q.1.num", 65536);
  EXPECT_EQ(ErrorOf(r.Get("s.q.1.num", 32768)), "handover: s.q.1.num = 65536 is above 32768");
  EXPECT_EQ(*r.Get("s.q.1.num", 65536), 65536u);
  r.Set("zero", 0);
  EXPECT_EQ(*r.Get("zero", 0), 0u);
  r.Set("one", 1);
  EXPECT_EQ(ErrorOf(r.Get("one", 0)), "handover: one = 1 is above 0");
}

bool SameFile(int a, int b) {
  struct stat sa {}, sb{};
  return ::fstat(a, &sa) == 0 && ::fstat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

TEST(HandoverRecord, SetFdKeepsADuplicateAndTakeFdGivesItOnce) {
  UniqueFd e(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  ASSERT_TRUE(e.valid());
  HandoverRecord r;
  ASSERT_TRUE(r.SetFd("first", e.get()));
  ASSERT_TRUE(r.SetFd("second", e.get()));
  EXPECT_EQ(*r.Get("first"), 0u);  // fd values are indexes into fds()
  EXPECT_EQ(*r.Get("second"), 1u);
  ASSERT_EQ(r.fds().size(), 2u);
  EXPECT_NE(r.fds()[0].get(), e.get());
  EXPECT_TRUE(::fcntl(r.fds()[0].get(), F_GETFD) & FD_CLOEXEC);
  e.Reset();  // the record's duplicates live on
  auto a = r.TakeFd("first");
  ASSERT_TRUE(a) << a.error().message();
  uint64_t v = 3;
  ASSERT_EQ(::write(a->get(), &v, sizeof v), 8);
  auto b = r.TakeFd("second");
  ASSERT_TRUE(b);
  EXPECT_TRUE(SameFile(a->get(), b->get()));
  v = 0;
  ASSERT_EQ(::read(b->get(), &v, sizeof v), 8);
  EXPECT_EQ(v, 3u);
  // Taken twice: the error names the key, and the record gives nothing.
  EXPECT_EQ(ErrorOf(r.TakeFd("first")), "handover: first names no file descriptor");
}

TEST(HandoverRecord, SetFdOfABadFdNamesTheKey) {
  HandoverRecord r;
  const std::string e = ErrorOf(r.SetFd("s.q.0.kick", -1));
  EXPECT_NE(e.find("handover: dup of fd -1 (s.q.0.kick)"), std::string::npos) << e;
  EXPECT_FALSE(r.Has("s.q.0.kick"));
  EXPECT_TRUE(r.fds().empty());
}

TEST(HandoverRecord, FdIndexOutOfRangeIsNamed) {
  HandoverRecord r;
  // No fd at all: any index is out of range.
  r.Set("k", 0);
  EXPECT_EQ(ErrorOf(r.TakeFd("k")), "handover: k names no file descriptor");
  r.Set("k", 1);
  EXPECT_EQ(ErrorOf(r.TakeFd("k")), "handover: k = 1 is above 0");
  // Two fds: index 2 and beyond are refused, as is a value that is no number.
  r.AddOwnedFd(UniqueFd(::eventfd(0, EFD_CLOEXEC)));
  r.AddOwnedFd(UniqueFd(::eventfd(0, EFD_CLOEXEC)));
  r.Set("k", 2);
  EXPECT_EQ(ErrorOf(r.TakeFd("k")), "handover: k = 2 is above 1");
  r.Set("k", UINT64_MAX);
  EXPECT_EQ(ErrorOf(r.TakeFd("k")), "handover: k = 18446744073709551615 is above 1");
  r.SetText("k", "one");
  EXPECT_EQ(ErrorOf(r.TakeFd("k")), "handover: k = 'one' is not a number");
  r.Set("k", 1);
  auto fd = r.TakeFd("k");
  ASSERT_TRUE(fd);
  EXPECT_TRUE(fd->valid());
  EXPECT_FALSE(r.fds()[1].valid());
  EXPECT_TRUE(r.fds()[0].valid());
  // Two keys naming one fd: the second take fails, naming its key.
  r.Set("other", 1);
  EXPECT_EQ(ErrorOf(r.TakeFd("other")), "handover: other names no file descriptor");
}

TEST(HandoverRecord, FdsLeftInTheRecordAreClosedWithIt) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd rd(p[0]);
  {
    HandoverRecord r;
    ASSERT_TRUE(r.SetFd("w", p[1]));
    ::close(p[1]);
  }
  // The record's duplicate was the last writer: the reader sees the end of the pipe.
  char c;
  EXPECT_EQ(::read(rd.get(), &c, 1), 0);
}

}  // namespace
}  // namespace nicmux
