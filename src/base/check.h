// NICMUX_CHECK / NICMUX_DCHECK: our own invariants (DESIGN.md "Errors, three kinds", kind 3).
// A failed check is a bug in nicmux, never in a peer: it aborts in every build with the place
// and the condition. Never use these on guest- or peer-controlled values.
// NICMUX_DCHECK is compiled out where NDEBUG is defined (the release preset; the dev, TSan and
// fuzz builds keep it): only for invariants in per-packet loops whose failure could not make a
// memory access go out of bounds. A check that bounds a read or write is a NICMUX_CHECK.
#pragma once

namespace nicmux {
[[noreturn]] void CheckFailed(const char* file, int line, const char* cond, const char* msg);
}  // namespace nicmux

#define NICMUX_CHECK(cond)                                              \
  do {                                                                  \
    if (__builtin_expect(!(cond), 0))                                   \
      ::nicmux::CheckFailed(__FILE__, __LINE__, #cond, nullptr);        \
  } while (0)

#define NICMUX_CHECK_MSG(cond, msg)                                     \
  do {                                                                  \
    if (__builtin_expect(!(cond), 0))                                   \
      ::nicmux::CheckFailed(__FILE__, __LINE__, #cond, (msg));          \
  } while (0)

#ifdef NDEBUG
#define NICMUX_DCHECK(cond) \
  do {                      \
    (void)sizeof(cond);     \
  } while (0)
#else
#define NICMUX_DCHECK(cond) NICMUX_CHECK(cond)
#endif
