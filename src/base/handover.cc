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

Result<std::vector<uint64_t>> HandoverRecord::GetList(const std::string& key, size_t n, uint64_t max) const {
  NICMUX_TRY_ASSIGN(s, GetText(key));
  std::vector<uint64_t> out;
  out.reserve(n);
  const char* p = s.data();
  const char* const end = s.data() + s.size();
  // UNTRUSTED: another build's record; exactly n numbers in range, comma-separated.
  while (p < end && out.size() < n) {
    uint64_t v = 0;
    auto [q, ec] = std::from_chars(p, end, v);
    if (ec != std::errc() || v > max) return Error("handover: " + key + ": item " + std::to_string(out.size()) + " is not a number up to " + std::to_string(max));
    out.push_back(v);
    p = q;
    if (p < end && *p++ != ',') return Error("handover: " + key + ": not a comma-separated list");
  }
  if (out.size() != n || p != end || (!s.empty() && s.back() == ',')) {
    return Error("handover: " + key + ": " + std::to_string(n) + " numbers expected");
  }
  return out;
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
