// PcapWriter: see pcap.h. Layout from the libpcap file format (pcap-savefile(5)):
// a 24-byte file header, then per packet a 16-byte record header and the captured bytes.
#include "control/pcap.h"

#include <fcntl.h>

#include <algorithm>
#include <cerrno>

namespace nicmux {
namespace {

struct PcapFileHeader {
  uint32_t magic;
  uint16_t version_major;
  uint16_t version_minor;
  int32_t thiszone;
  uint32_t sigfigs;
  uint32_t snaplen;
  uint32_t linktype;
};
static_assert(sizeof(PcapFileHeader) == 24);

struct PcapRecordHeader {
  uint32_t ts_sec;
  uint32_t ts_nsec;  // nanoseconds with kPcapMagicNs
  uint32_t incl_len;
  uint32_t orig_len;
};
static_assert(sizeof(PcapRecordHeader) == 16);

}  // namespace

Result<PcapWriter> PcapWriter::Open(const std::string& path) {
  int raw = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (raw < 0) return Error::FromErrno("opening " + path);
  return FromFd(UniqueFd(raw), path);
}

Result<PcapWriter> PcapWriter::FromFd(UniqueFd fd, const std::string& name) {
  std::FILE* f = ::fdopen(fd.get(), "wb");
  if (f == nullptr) return Error::FromErrno("fdopen " + name);
  fd.Release();  // the FILE owns it now
  PcapWriter w(std::unique_ptr<std::FILE, FileCloser>(f), name);
  NICMUX_TRY(w.WriteHeader());
  return w;
}

PcapWriter::~PcapWriter() { (void)Close(); }

Result<void> PcapWriter::WriteHeader() {
  PcapFileHeader h{kPcapMagicNs, 2, 4, 0, 0, kPcapSnapLen, kPcapLinkTypeEthernet};
  if (std::fwrite(&h, sizeof h, 1, file_.get()) != 1) return Error::FromErrno("writing " + name_);
  return Ok();
}

Result<void> PcapWriter::Write(uint64_t ts_ns, uint32_t orig_len, std::span<const std::byte> data) {
  if (!file_) return Error(name_ + " is closed");
  size_t incl = std::min<size_t>(data.size(), kPcapSnapLen);
  PcapRecordHeader r{static_cast<uint32_t>(ts_ns / 1'000'000'000),
                     static_cast<uint32_t>(ts_ns % 1'000'000'000), static_cast<uint32_t>(incl),
                     std::max<uint32_t>(orig_len, static_cast<uint32_t>(incl))};
  if (std::fwrite(&r, sizeof r, 1, file_.get()) != 1 ||
      (incl > 0 && std::fwrite(data.data(), incl, 1, file_.get()) != 1)) {
    return Error::FromErrno("writing " + name_);
  }
  ++packets_;
  return Ok();
}

Result<void> PcapWriter::Flush() {
  if (file_ && std::fflush(file_.get()) != 0) return Error::FromErrno("writing " + name_);
  return Ok();
}

Result<void> PcapWriter::Close() {
  if (!file_) return Ok();
  std::FILE* f = file_.release();
  bool failed = std::ferror(f) != 0;
  if (std::fclose(f) != 0) return Error::FromErrno("closing " + name_);
  if (failed) return Error("writing " + name_ + " failed");
  return Ok();
}

}  // namespace nicmux
