// Tests of PcapWriter: the bytes of the format, and that tcpdump (when installed) reads the file
// with the right packet count, timestamps and lengths.
#include "control/pcap.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace nicmux {
namespace {

std::string TempPath(const char* name) {
  return "/tmp/nicmux-pcap-" + std::to_string(::getpid()) + "-" + name;
}

std::vector<std::byte> Frame(size_t len, uint8_t fill) {
  std::vector<std::byte> f(len, std::byte{fill});
  // dst 02:00:00:00:00:02, src 02:00:00:00:00:01, ethertype 0x88b5 (local experimental)
  const uint8_t hdr[14] = {2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x88, 0xb5};
  std::memcpy(f.data(), hdr, std::min(len, sizeof hdr));
  return f;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

uint32_t U32At(const std::string& s, size_t off) {
  uint32_t v;
  std::memcpy(&v, s.data() + off, 4);
  return v;
}

TEST(Pcap, WritesHeaderAndRecords) {
  std::string path = TempPath("bytes.pcap");
  {
    auto w = PcapWriter::Open(path);
    ASSERT_TRUE(w) << w.error().message();
    ASSERT_TRUE(w->Write(1'700'000'000'123'456'789ull, 60, Frame(60, 0xaa)));
    ASSERT_TRUE(w->Write(1'700'000'001'000'000'000ull, 1514, Frame(100, 0xbb)));  // snapped
    EXPECT_EQ(w->packets(), 2u);
    ASSERT_TRUE(w->Close());
  }
  std::string b = ReadAll(path);
  ASSERT_EQ(b.size(), 24u + 16 + 60 + 16 + 100);
  EXPECT_EQ(U32At(b, 0), kPcapMagicNs);
  EXPECT_EQ(U32At(b, 4), 2u | (4u << 16));  // version 2.4
  EXPECT_EQ(U32At(b, 16), kPcapSnapLen);
  EXPECT_EQ(U32At(b, 20), kPcapLinkTypeEthernet);
  EXPECT_EQ(U32At(b, 24), 1'700'000'000u);
  EXPECT_EQ(U32At(b, 28), 123'456'789u);
  EXPECT_EQ(U32At(b, 32), 60u);
  EXPECT_EQ(U32At(b, 36), 60u);
  size_t r2 = 24 + 16 + 60;
  EXPECT_EQ(U32At(b, r2 + 8), 100u);
  EXPECT_EQ(U32At(b, r2 + 12), 1514u);
  ::unlink(path.c_str());
}

TEST(Pcap, CutsAtSnapLenAndRaisesOrigLen) {
  std::string path = TempPath("snap.pcap");
  {
    auto w = PcapWriter::Open(path);
    ASSERT_TRUE(w);
    ASSERT_TRUE(w->Write(0, 10, Frame(70000, 1)));  // orig_len below the data: raised
    // The destructor flushes.
  }
  std::string b = ReadAll(path);
  ASSERT_EQ(b.size(), 24u + 16 + kPcapSnapLen);
  EXPECT_EQ(U32At(b, 32), kPcapSnapLen);
  EXPECT_EQ(U32At(b, 36), kPcapSnapLen);
  ::unlink(path.c_str());
}

TEST(Pcap, OpenErrorNamesThePath) {
  auto w = PcapWriter::Open("/nonexistent-dir/x.pcap");
  ASSERT_FALSE(w);
  EXPECT_NE(w.error().message().find("/nonexistent-dir/x.pcap"), std::string::npos);
}

TEST(Pcap, TcpdumpReadsIt) {
  const char* tcpdump = ::access("/usr/bin/tcpdump", X_OK) == 0    ? "/usr/bin/tcpdump"
                        : ::access("/usr/sbin/tcpdump", X_OK) == 0 ? "/usr/sbin/tcpdump"
                                                                   : nullptr;
  if (tcpdump == nullptr) GTEST_SKIP() << "no tcpdump (the bytes are checked above)";
  std::string path = TempPath("tcpdump.pcap");
  {
    auto w = PcapWriter::Open(path);
    ASSERT_TRUE(w);
    for (int i = 0; i < 5; ++i) {
      ASSERT_TRUE(w->Write(1'700'000'000'000'000'000ull + uint64_t(i) * 1'000'001, 64 + i,
                           Frame(64 + i, uint8_t(i))));
    }
  }
  // -nn: no name lookups; -tt: epoch timestamps; --nano: nanosecond precision.
  std::string cmd = std::string(tcpdump) + " -nn -tt --nano -e -r " + path + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::vector<std::string> lines;
  char buf[1024];
  while (std::fgets(buf, sizeof buf, p) != nullptr) lines.emplace_back(buf);
  int status = ::pclose(p);
  EXPECT_EQ(status, 0);
  std::vector<std::string> packets;
  for (const auto& l : lines) {
    // Skip the banner and the hex dump tcpdump adds for an unknown ethertype.
    if (l.rfind("reading from file", 0) != 0 && l[0] != '\t') packets.push_back(l);
  }
  ASSERT_EQ(packets.size(), 5u) << "tcpdump said:\n" << ::testing::PrintToString(lines);
  EXPECT_NE(packets[0].find("1700000000.000000000"), std::string::npos) << packets[0];
  EXPECT_NE(packets[1].find("1700000000.001000001"), std::string::npos) << packets[1];
  EXPECT_NE(packets[0].find("02:00:00:00:00:01 > 02:00:00:00:00:02"), std::string::npos);
  EXPECT_NE(packets[4].find("length 68"), std::string::npos) << packets[4];
  ::unlink(path.c_str());
}

}  // namespace
}  // namespace nicmux
