// PcapWriter: writes captured packets as a classic pcap file (the libpcap format read by
// tcpdump, Wireshark, tshark): the nanosecond variant (magic 0xa1b23c4d), version 2.4,
// snaplen 65535, link type 1 (Ethernet). Fields are in host byte order, as libpcap writes
// them; readers tell the order from the magic.
//
// Invariant: the file is a valid pcap after every Write() that returned ok once it is
// flushed; Close() (or the destructor) flushes, so a capture stopped by Ctrl-C leaves a
// readable file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <span>
#include <string>

#include "base/result.h"
#include "base/unique_fd.h"

namespace nicmux {

inline constexpr uint32_t kPcapMagicNs = 0xa1b23c4d;
inline constexpr uint32_t kPcapSnapLen = 65535;
inline constexpr uint32_t kPcapLinkTypeEthernet = 1;

class PcapWriter {
 public:
  // Creates (or truncates) path, mode 0644 less the umask, and writes the file header.
  static Result<PcapWriter> Open(const std::string& path);
  // Writes to an open fd (e.g. a dup of stdout for `-w -`); takes ownership.
  static Result<PcapWriter> FromFd(UniqueFd fd, const std::string& name);

  PcapWriter(PcapWriter&&) noexcept = default;
  PcapWriter& operator=(PcapWriter&&) noexcept = default;
  ~PcapWriter();  // Close(), errors ignored

  // One packet: ts_ns since the epoch (CLOCK_REALTIME), orig_len its length on the wire,
  // data the captured bytes (cut to kPcapSnapLen; orig_len is raised to data's length if
  // smaller).
  Result<void> Write(uint64_t ts_ns, uint32_t orig_len, std::span<const std::byte> data);
  Result<void> Flush();
  // Flushes and closes; further calls do nothing. Reports a failed final write (disk full).
  Result<void> Close();

  uint64_t packets() const { return packets_; }
  const std::string& name() const { return name_; }

 private:
  struct FileCloser {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  PcapWriter(std::unique_ptr<std::FILE, FileCloser> file, std::string name)
      : file_(std::move(file)), name_(std::move(name)) {}
  Result<void> WriteHeader();

  std::unique_ptr<std::FILE, FileCloser> file_;
  std::string name_;
  uint64_t packets_ = 0;
};

}  // namespace nicmux
