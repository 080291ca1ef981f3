#include "base/handover.h"

#include <fcntl.h>

#include <charconv>

namespace nicmux {

Result<void> HandoverRecord::SetFd(const std::string& key, int fd) {
  UniqueFd dup(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!dup.valid()) return Error::FromErrno("handover: dup of fd " + std::to_string(fd) + " (" + key + ")");
  values_[key] = std::to_string(fds_.size());
  fds_.push_back(std::move(dup));
  return Ok();
}

Result<uint64_t> HandoverRecord::Get(const std::string& key, uint64_t max) const {
  auto it = values_.find(key);
  if (it == values_.end()) return Error("handover: no value " + key);
  uint64_t v = 0;
  const std::string& s = it->second;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  // UNTRUSTED: another build's record; a number in range or nothing.
  if (ec != std::errc() || end != s.data() + s.size() || s.empty()) {
    return Error("handover: " + key + " = '" + s + "' is not a number");
  }
  if (v > max) return Error("handover: " + key + " = " + s + " is above " + std::to_string(max));
  return v;
}

Result<uint64_t> HandoverRecord::GetOr(const std::string& key, uint64_t def, uint64_t max) const {
  if (!Has(key)) return def;
  return Get(key, max);
}

Result<std::string> HandoverRecord::GetText(const std::string& key) const {
  auto it = values_.find(key);
  if (it == values_.end()) return Error("handover: no value " + key);
  return it->second;
}

Result<UniqueFd> HandoverRecord::TakeFd(const std::string& key) {
  NICMUX_TRY_ASSIGN(i, Get(key, fds_.empty() ? 0 : fds_.size() - 1));
  if (fds_.empty() || !fds_[i].valid()) return Error("handover: " + key + " names no file descriptor");
  return std::move(fds_[i]);
}

}  // namespace nicmux
