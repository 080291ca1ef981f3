// Result<T> and Error: how environment and configuration failures travel up to the control
// plane (DESIGN.md "Errors", kind 2). No exceptions in src/. std::expected is not in g++ 12,
// so this is a small type of the same shape: has_value(), value(), error(), operator*, ->.
#pragma once

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <variant>

#include "base/check.h"

namespace nicmux {

// What went wrong, for a human: the message names the bad thing (a path, a field, a request).
// sys_errno is the errno behind it, 0 when it was not a system call.
class Error {
 public:
  Error() = default;
  explicit Error(std::string message, int sys_errno = 0)
      : message_(std::move(message)), sys_errno_(sys_errno) {}

  // "what: strerror(errno)" from the current errno.
  static Error FromErrno(const std::string& what) { return FromErrno(what, errno); }
  static Error FromErrno(const std::string& what, int err) {
    return Error(what + ": " + std::strerror(err), err);
  }

  const std::string& message() const { return message_; }
  int sys_errno() const { return sys_errno_; }

  // Adds context in front: "opening guest memory: mmap: Invalid argument".
  Error Wrap(const std::string& context) const {
    return Error(context + ": " + message_, sys_errno_);
  }

 private:
  std::string message_;
  int sys_errno_ = 0;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT

  bool has_value() const { return v_.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & {
    NICMUX_CHECK_MSG(has_value(), std::get<1>(v_).message().c_str());
    return std::get<0>(v_);
  }
  const T& value() const& {
    NICMUX_CHECK_MSG(has_value(), std::get<1>(v_).message().c_str());
    return std::get<0>(v_);
  }
  T&& value() && {
    NICMUX_CHECK_MSG(has_value(), std::get<1>(v_).message().c_str());
    return std::get<0>(std::move(v_));
  }
  const Error& error() const {
    NICMUX_CHECK(!has_value());
    return std::get<1>(v_);
  }

  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT

  bool has_value() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const {
    NICMUX_CHECK(!ok_);
    return error_;
  }

 private:
  Error error_;
  bool ok_ = true;
};

inline Result<void> Ok() { return Result<void>(); }

}  // namespace nicmux

// Propagates an error from an expression returning Result<...>.
#define NICMUX_TRY(expr)                                 \
  do {                                                   \
    auto nicmux_try_r_ = (expr);                         \
    if (!nicmux_try_r_) return nicmux_try_r_.error();    \
  } while (0)

// Declares `var` from an expression returning Result<T>, or returns its error.
#define NICMUX_TRY_ASSIGN(var, expr)                          \
  auto nicmux_try_##var##_ = (expr);                          \
  if (!nicmux_try_##var##_) return nicmux_try_##var##_.error(); \
  auto var = std::move(*nicmux_try_##var##_)
