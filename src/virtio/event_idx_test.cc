// Notification decisions checked against the specification's formula over exhaustive small
// domains: the helper functions alone, then the real rings (device calls, driver kicks) with
// every event position around index wrap-around.
#include <gtest/gtest.h>

#include "tests/support/fake_guest.h"
#include "virtio/ring_access.h"

namespace nicmux::virtio {
namespace {

using nicmux::testing::FakeGuest;
using nicmux::testing::PackedLayout;
using nicmux::testing::RingPair;
using nicmux::testing::SplitLayout;

// virtio 1.2 §2.7.10, as the spec prints it (the reference the code is checked against).
bool SpecVringNeedEvent(uint16_t event_idx, uint16_t new_idx, uint16_t old_idx) {
  return (uint16_t)(new_idx - event_idx - 1) < (uint16_t)(new_idx - old_idx);
}

TEST(EventIdx, VringNeedEventMatchesSpecNearWrap) {
  const uint16_t starts[] = {0, 1, 7, 32767, 32768, 65528, 65535};
  for (uint16_t old_idx : starts) {
    for (uint16_t n = 0; n <= 64; ++n) {
      uint16_t new_idx = static_cast<uint16_t>(old_idx + n);
      for (int d = -80; d <= 80; ++d) {
        uint16_t event = static_cast<uint16_t>(old_idx + d);
        ASSERT_EQ(VringNeedEvent(event, new_idx, old_idx), SpecVringNeedEvent(event, new_idx, old_idx));
        // And its meaning: event lies in [old, new).
        ASSERT_EQ(VringNeedEvent(event, new_idx, old_idx), d >= 0 && d < n);
      }
    }
  }
}

// Packed rings: positions with wrap counters. Reference on a line of absolute positions:
// notify iff the event position lies in [old, new), with the event taken as the occurrence of
// (off, wrap) at most one lap behind new.
TEST(EventIdx, PackedNeedEventMatchesLinearModel) {
  for (uint32_t size = 1; size <= 9; ++size) {
    for (uint32_t old_abs = 2 * size; old_abs < 6 * size; ++old_abs) {
      for (uint32_t n = 1; n <= size; ++n) {
        uint32_t new_abs = old_abs + n;
        uint16_t old_pos = old_abs % size, new_pos = new_abs % size;
        // Wrap counter starts at 1 in lap 0 and flips each lap.
        bool new_wrap = ((new_abs / size) % 2) == 0;
        for (uint32_t ev_abs = new_abs - 2 * size + 1; ev_abs <= new_abs; ++ev_abs) {
          if (ev_abs + size <= new_abs) continue;  // more than one lap behind: not representable
          uint16_t off = ev_abs % size;
          bool ev_wrap = ((ev_abs / size) % 2) == 0;
          uint16_t off_wrap = static_cast<uint16_t>(off | (ev_wrap ? 0x8000 : 0));
          bool expect = ev_abs >= old_abs && ev_abs < new_abs;
          ASSERT_EQ(PackedNeedEvent(off_wrap, old_pos, new_pos, new_wrap, size), expect)
              << "size " << size << " old " << old_abs << " new " << new_abs << " ev " << ev_abs;
        }
      }
    }
  }
}

// The split device's call decision for every (start index near 2^16, batch size, used_event).
TEST(EventIdx, SplitDeviceCallsExactlyWhenSpecSays) {
  FakeGuest g;
  RingPair<SplitLayout> rp(g, {.size = 8, .features = Bit(kFRingEventIdx)});
  GuestAddr buf = g.Alloc(64);
  DriverBuffer b{buf, 64, true};
  auto* avail = reinterpret_cast<VirtqAvailHeader*>(g.Host(rp.ring[1], 6));
  auto run = [&](uint32_t k) {
    for (uint32_t i = 0; i < k; ++i) ASSERT_TRUE(rp.driver.Add({&b, 1}));
    rp.driver.Publish();
    DescChain c;
    for (uint32_t i = 0; i < k; ++i) {
      ASSERT_EQ(rp.device.Pop(&c), PopStatus::kOk);
      rp.device.Push(c.id, 1);
    }
  };
  auto reclaim = [&] {
    UsedBuffer u;
    while (rp.driver.PopUsed(&u) == PopStatus::kOk) {
    }
  };
  // Advance to just before the 16-bit wrap.
  uint32_t used = 0;
  while (used < 65520) {
    run(8);
    rp.device.Flush();
    reclaim();
    used += 8;
  }
  uint64_t checked = 0;
  for (int round = 0; round < 6; ++round) {
    for (uint32_t k = 1; k <= 8; ++k) {
      for (int d = -10; d <= 10; ++d) {
        const uint16_t old_idx = static_cast<uint16_t>(used);
        const uint16_t event = static_cast<uint16_t>(old_idx + d);
        UsedEvent(avail, 8) = Le16::Of(event);
        run(k);
        const bool call = rp.device.Flush();
        reclaim();
        used += k;
        ASSERT_EQ(call, SpecVringNeedEvent(event, static_cast<uint16_t>(used), old_idx))
            << "old " << old_idx << " k " << k << " event " << event;
        ++checked;
      }
    }
  }
  EXPECT_GE(used, 65536u);  // crossed the wrap
  EXPECT_EQ(checked, 6u * 8 * 21);
}

// The split driver's kick decision against avail_event, the same way.
TEST(EventIdx, SplitDriverKicksExactlyWhenSpecSays) {
  FakeGuest g;
  RingPair<SplitLayout> rp(g, {.size = 8, .features = Bit(kFRingEventIdx)});
  GuestAddr buf = g.Alloc(64);
  DriverBuffer b{buf, 64, false};
  auto* usedh = reinterpret_cast<VirtqUsedHeader*>(g.Host(rp.ring[2], 6));
  uint32_t added = 0;
  auto drain = [&] {
    DescChain c;
    while (rp.device.Pop(&c) == PopStatus::kOk) rp.device.Push(c.id, 0);
    rp.device.Flush();
    UsedBuffer u;
    while (rp.driver.PopUsed(&u) == PopStatus::kOk) {
    }
  };
  for (int round = 0; round < 15000; ++round) {
    uint32_t k = 1 + round % 8;
    const uint16_t old_idx = static_cast<uint16_t>(added);
    const uint16_t event = static_cast<uint16_t>(old_idx + (round % 21) - 10);
    AvailEvent(usedh, 8) = Le16::Of(event);
    for (uint32_t i = 0; i < k; ++i) ASSERT_TRUE(rp.driver.Add({&b, 1}));
    rp.driver.Publish();
    added += k;
    ASSERT_EQ(rp.driver.NeedKick(), SpecVringNeedEvent(event, static_cast<uint16_t>(added), old_idx));
    drain();
  }
  EXPECT_GT(added, 65536u);
}

// The packed device's call decision with the driver asking for RING_EVENT_FLAGS_DESC at every
// position around the current one, across many wraps.
TEST(EventIdx, PackedDeviceCallsExactlyAtTheDescribedPosition) {
  FakeGuest g;
  const uint32_t size = 5;  // odd, so chains and laps do not line up
  RingPair<PackedLayout> rp(g, {.size = size, .features = Bit(kFRingEventIdx)});
  GuestAddr buf = g.Alloc(64);
  DriverBuffer b{buf, 64, true};
  auto* drv_event = reinterpret_cast<VirtqPackedEvent*>(g.Host(rp.ring[1], 4));
  uint64_t used_abs = 0;  // absolute used position (slots)
  uint64_t checked = 0;
  for (int round = 0; round < 2000; ++round) {
    uint32_t k = 1 + round % size;
    // An event between one lap behind and k ahead.
    int64_t ev = static_cast<int64_t>(used_abs) + (round % (2 * size)) - static_cast<int64_t>(size) + 1;
    if (ev < 0) ev = 0;
    uint16_t off_wrap = static_cast<uint16_t>((ev % size) | (((ev / size) % 2) == 0 ? 0x8000 : 0));
    drv_event->off_wrap = Le16::Of(off_wrap);
    drv_event->flags = Le16::Of(kRingEventFlagsDesc);
    for (uint32_t i = 0; i < k; ++i) ASSERT_TRUE(rp.driver.Add({&b, 1}));
    rp.driver.Publish();
    DescChain c;
    for (uint32_t i = 0; i < k; ++i) {
      ASSERT_EQ(rp.device.Pop(&c), PopStatus::kOk);
      rp.device.Push(c.id, 1);
    }
    bool call = rp.device.Flush();
    bool expect = static_cast<uint64_t>(ev) >= used_abs && static_cast<uint64_t>(ev) < used_abs + k;
    ASSERT_EQ(call, expect) << "round " << round << " used " << used_abs << " k " << k << " ev " << ev;
    used_abs += k;
    UsedBuffer u;
    while (rp.driver.PopUsed(&u) == PopStatus::kOk) {
    }
    ++checked;
  }
  EXPECT_EQ(checked, 2000u);
}

// The packed driver's kick decision against the device's RING_EVENT_FLAGS_DESC position.
TEST(EventIdx, PackedDriverKicksExactlyAtTheDescribedPosition) {
  FakeGuest g;
  const uint32_t size = 7;
  RingPair<PackedLayout> rp(g, {.size = size, .features = Bit(kFRingEventIdx)});
  GuestAddr buf = g.Alloc(64);
  DriverBuffer b{buf, 64, false};
  auto* dev_event = reinterpret_cast<VirtqPackedEvent*>(g.Host(rp.ring[2], 4));
  uint64_t avail_abs = 0;
  for (int round = 0; round < 3000; ++round) {
    uint32_t k = 1 + round % size;
    int64_t ev = static_cast<int64_t>(avail_abs) + (round % (2 * size)) - static_cast<int64_t>(size) + 1;
    if (ev < 0) ev = 0;
    dev_event->off_wrap =
        Le16::Of(static_cast<uint16_t>((ev % size) | (((ev / size) % 2) == 0 ? 0x8000 : 0)));
    dev_event->flags = Le16::Of(kRingEventFlagsDesc);
    for (uint32_t i = 0; i < k; ++i) ASSERT_TRUE(rp.driver.Add({&b, 1}));
    rp.driver.Publish();
    bool expect = static_cast<uint64_t>(ev) >= avail_abs && static_cast<uint64_t>(ev) < avail_abs + k;
    ASSERT_EQ(rp.driver.NeedKick(), expect) << "round " << round;
    avail_abs += k;
    DescChain c;
    while (rp.device.Pop(&c) == PopStatus::kOk) rp.device.Push(c.id, 0);
    rp.device.Flush();
    UsedBuffer u;
    while (rp.driver.PopUsed(&u) == PopStatus::kOk) {
    }
  }
}

}  // namespace
}  // namespace nicmux::virtio
