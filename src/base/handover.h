// HandoverRecord: what one port (or the daemon) hands a new nicmuxd in a live upgrade
// (docs/upgrade.md). The old process fills it with every worker paused (no chain in flight,
// every used entry published); the new one builds the same port from it and continues exactly
// there, without the peer noticing: the peer's connection, its memory and its eventfds are the same open files, passed
// over a UNIX socket (SCM_RIGHTS).
//
// The record is port-neutral: named values (decimal numbers or text) and a list of file
// descriptors that values name by index. The daemon serializes it (control/handover.h); a port
// kind reads only its own keys. Everything in it comes from the process we are upgrading
// from, which may be an older or a newer build: a missing key or a value out of range is an
// error naming the key, and the handover fails with the old process still serving.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "base/result.h"
#include "base/unique_fd.h"

namespace nicmux {

class HandoverRecord {
 public:
  void Set(const std::string& key, uint64_t v) { values_[key] = std::to_string(v); }
  void SetText(const std::string& key, std::string v) { values_[key] = std::move(v); }
  // A list of numbers (comma-separated decimals).
  template <typename T>
  void SetList(const std::string& key, const std::vector<T>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) {
      if (i) s += ',';
      s += std::to_string(v[i]);
    }
    values_[key] = std::move(s);
  }
  // Keeps a duplicate of fd (the caller keeps its own) and records its index under key.
  Result<void> SetFd(const std::string& key, int fd);
  // Records an fd already owned by the record (the receiving side).
  void AddOwnedFd(UniqueFd fd) { fds_.push_back(std::move(fd)); }

  bool Has(const std::string& key) const { return values_.count(key) != 0; }
  // The value under key as a number in [0, max]; an error names the key.
  Result<uint64_t> Get(const std::string& key, uint64_t max = UINT64_MAX) const;
  // The value, or `def` when the key is missing (a key a newer build added).
  Result<uint64_t> GetOr(const std::string& key, uint64_t def, uint64_t max = UINT64_MAX) const;
  Result<std::string> GetText(const std::string& key) const;
  // The list under key: exactly n numbers, each in [0, max]; an error names the key.
  Result<std::vector<uint64_t>> GetList(const std::string& key, size_t n, uint64_t max) const;
  // Takes the fd named by key out of the record (each fd can be taken once).
  Result<UniqueFd> TakeFd(const std::string& key);

  const std::map<std::string, std::string>& values() const { return values_; }
  std::map<std::string, std::string>& mutable_values() { return values_; }
  const std::vector<UniqueFd>& fds() const { return fds_; }

 private:
  std::map<std::string, std::string> values_;
  std::vector<UniqueFd> fds_;
};

}  // namespace nicmux
