// HoldTable (packet/hold.h): the source's side of zero copy. Holds, unholds, releases from
// other threads, the bound, what keeps memory alive across a memory change and after the
// owner went, and early completion when a queue stops.
#include "packet/hold.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "packet/packet.h"

namespace nicmux {
namespace {

// A stand-in for a snapshot of guest memory: counts how many are alive.
struct Memory {
  explicit Memory(std::atomic<int>* alive) : alive(alive) { alive->fetch_add(1); }
  ~Memory() { alive->fetch_sub(1); }
  std::atomic<int>* alive;
};

PacketRef Ref(HoldTable* t, uint16_t id, uint32_t index) {
  PacketRef p;
  p.holder = t;
  p.hold_cookie = HoldTable::Cookie(id, index);
  return p;
}

std::vector<uint16_t> DrainAll(HoldTable* t) {
  std::vector<uint16_t> ids;
  t->Drain([&](uint16_t id) { ids.push_back(id); });
  return ids;
}

TEST(MpscTicketRing, FifoAndEmpty) {
  MpscTicketRing r(4);
  uint32_t v;
  EXPECT_TRUE(r.Empty());
  EXPECT_FALSE(r.Pop(&v));
  for (uint32_t lap = 0; lap < 5; ++lap) {
    for (uint32_t i = 0; i < 4; ++i) r.Push(lap * 10 + i);
    for (uint32_t i = 0; i < 4; ++i) {
      ASSERT_TRUE(r.Pop(&v));
      EXPECT_EQ(v, lap * 10 + i);
    }
    EXPECT_TRUE(r.Empty());
  }
}

TEST(HoldTable, HeldChainsAreNotInTheBurstsCompletionsUntilReleased) {
  std::atomic<int> alive{0};
  HoldTable* t = HoldTable::Create(16);
  EXPECT_EQ(t->Hold(Ref(t, 5, 0)), PacketHolder::kNoHold);  // no limit, no memory yet
  t->set_limit(8);
  EXPECT_EQ(t->Hold(Ref(t, 5, 0)), PacketHolder::kNoHold);  // no memory to keep
  t->set_keepalive(std::make_shared<Memory>(&alive));
  const uint32_t a = t->Hold(Ref(t, 7, 3));
  const uint32_t b = t->Hold(Ref(t, 9, 30));
  const uint32_t c = t->Hold(Ref(t, 11, 4));
  ASSERT_NE(a, PacketHolder::kNoHold);
  ASSERT_NE(b, PacketHolder::kNoHold);
  ASSERT_NE(c, PacketHolder::kNoHold);
  t->Unhold(c);  // not sent after all: as if never held
  EXPECT_EQ(t->TakeBatchHeld(), (1u << 3) | (1u << 30));
  EXPECT_EQ(t->TakeBatchHeld(), 0u);
  EXPECT_EQ(t->outstanding(), 2u);
  EXPECT_FALSE(t->release_pending());
  EXPECT_TRUE(DrainAll(t).empty());
  t->Release(b);
  EXPECT_TRUE(t->release_pending());
  EXPECT_EQ(DrainAll(t), std::vector<uint16_t>{9});
  t->Release(a);
  EXPECT_EQ(DrainAll(t), std::vector<uint16_t>{7});
  EXPECT_EQ(t->outstanding(), 0u);
  EXPECT_EQ(alive.load(), 1);  // the table's keepalive
  t->Abandon();
  EXPECT_EQ(alive.load(), 0);
}

TEST(HoldTable, TheLimitBoundsHoldsAtOnce) {
  std::atomic<int> alive{0};
  HoldTable* t = HoldTable::Create(64);
  t->set_keepalive(std::make_shared<Memory>(&alive));
  t->set_limit(4);
  std::vector<uint32_t> held;
  for (uint16_t id = 0; id < 10; ++id) {
    const uint32_t k = t->Hold(Ref(t, id, id % 32));
    if (k != PacketHolder::kNoHold) held.push_back(k);
  }
  EXPECT_EQ(held.size(), 4u);
  t->TakeBatchHeld();
  t->Release(held[0]);
  EXPECT_EQ(t->outstanding(), 4u);  // released, not drained yet: still counted
  EXPECT_EQ(t->Hold(Ref(t, 20, 0)), PacketHolder::kNoHold);
  EXPECT_EQ(DrainAll(t).size(), 1u);
  const uint32_t k20 = t->Hold(Ref(t, 20, 0));
  EXPECT_NE(k20, PacketHolder::kNoHold);
  t->set_limit(1000);  // capped at the slots
  EXPECT_EQ(t->limit(), 64u);
  t->Abandon();  // 4 outstanding: the table lives on until they come back
  EXPECT_EQ(alive.load(), 1);
  for (size_t i = 1; i < held.size(); ++i) t->Release(held[i]);
  EXPECT_EQ(alive.load(), 1);
  t->Release(k20);  // the last: deletes the table, and the memory with it
  EXPECT_EQ(alive.load(), 0);
}

// SET_MEM_TABLE with holds outstanding: the old snapshot stays until the last hold into it is
// released and drained; new holds keep the new one; neither outlives its holds.
TEST(HoldTable, AMemoryChangeKeepsTheOldSnapshotUntilItsLastRelease) {
  std::atomic<int> alive{0};
  HoldTable* t = HoldTable::Create(32);
  t->set_limit(32);
  std::weak_ptr<Memory> old_w, new_w;
  uint32_t o1, o2, n1;
  {
    auto m1 = std::make_shared<Memory>(&alive);
    old_w = m1;
    t->set_keepalive(m1);
  }
  o1 = t->Hold(Ref(t, 1, 0));
  o2 = t->Hold(Ref(t, 2, 1));
  t->TakeBatchHeld();
  // The queue stops for the new table (CompleteEarly is the port's part; here the table
  // only sees its keepalive move on).
  {
    auto m2 = std::make_shared<Memory>(&alive);
    new_w = m2;
    t->set_keepalive(m2);
  }
  EXPECT_EQ(alive.load(), 2);
  n1 = t->Hold(Ref(t, 3, 0));
  ASSERT_NE(n1, PacketHolder::kNoHold);
  t->TakeBatchHeld();
  t->Release(o1);
  EXPECT_EQ(DrainAll(t), std::vector<uint16_t>{1});
  EXPECT_FALSE(old_w.expired());  // o2 still reads it
  t->Release(o2);
  EXPECT_EQ(DrainAll(t), std::vector<uint16_t>{2});
  EXPECT_TRUE(old_w.expired());  // unmapped only now
  EXPECT_FALSE(new_w.expired());
  t->set_keepalive(nullptr);  // the queue stopped
  EXPECT_FALSE(new_w.expired());  // n1 keeps it
  t->Release(n1);
  EXPECT_EQ(DrainAll(t), std::vector<uint16_t>{3});
  EXPECT_TRUE(new_w.expired());
  EXPECT_EQ(alive.load(), 0);
  t->Abandon();
}

// A queue that stops completes its held chains at once; their releases come later and
// complete nothing, and the memory stays until then.
TEST(HoldTable, CompleteEarlyCompletesEachChainOnceAndKeepsTheMemory) {
  std::atomic<int> alive{0};
  HoldTable* t = HoldTable::Create(8);
  t->set_limit(8);
  t->set_keepalive(std::make_shared<Memory>(&alive));
  const uint32_t a = t->Hold(Ref(t, 40, 0));
  const uint32_t b = t->Hold(Ref(t, 41, 1));
  const uint32_t c = t->Hold(Ref(t, 42, 2));
  t->TakeBatchHeld();
  t->Release(b);  // released before the stop: completed normally by the drain
  std::vector<uint16_t> done;
  EXPECT_EQ(t->CompleteEarly([&](uint16_t id) { done.push_back(id); }), 2u);
  std::sort(done.begin(), done.end());
  EXPECT_EQ(done, (std::vector<uint16_t>{40, 41, 42}));
  EXPECT_EQ(t->early(), 2u);
  t->set_keepalive(nullptr);
  EXPECT_EQ(alive.load(), 1);
  EXPECT_EQ(t->outstanding(), 2u);
  t->Release(a);
  t->Release(c);
  EXPECT_TRUE(DrainAll(t).empty());  // completed already
  EXPECT_EQ(alive.load(), 0);
  EXPECT_EQ(t->outstanding(), 0u);
  t->Abandon();
}

// The owner holds and drains on its thread; three other threads release (as the PMDs of
// transmit queues other workers drive would): every chain completes exactly once, the bound
// holds throughout, and the memory outlives the last release even after the owner went.
TEST(HoldTable, ReleasesFromOtherThreads) {
  std::atomic<int> alive{0};
  HoldTable* t = HoldTable::Create(256);
  t->set_limit(200);
  t->set_keepalive(std::make_shared<Memory>(&alive));
  constexpr int kReleasers = 3;
  constexpr uint32_t kHolds = 200000;
  // Tickets handed to the releasers (a plain locked queue: the test's own plumbing).
  std::mutex mu;
  std::vector<uint32_t> pending[kReleasers];
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> released{0};
  std::vector<std::thread> threads;
  for (int r = 0; r < kReleasers; ++r) {
    threads.emplace_back([&, r] {
      std::vector<uint32_t> mine;
      while (true) {
        {
          std::lock_guard lock(mu);
          mine.swap(pending[r]);
        }
        for (uint32_t k : mine) t->Release(k);
        released.fetch_add(mine.size());
        if (mine.empty() && stop.load()) return;
        mine.clear();
        std::this_thread::yield();
      }
    });
  }
  std::vector<uint32_t> completed(65536, 0);
  uint32_t given = 0, refused = 0, max_out = 0;
  uint16_t next_id = 0;
  std::map<uint16_t, bool> in_flight;
  while (given < kHolds) {
    t->Drain([&](uint16_t id) {
      ++completed[id];
      in_flight.erase(id);
    });
    // A burst of up to 32 chains.
    for (uint32_t i = 0; i < 32 && given < kHolds; ++i) {
      while (in_flight.count(next_id)) ++next_id;
      const uint32_t k = t->Hold(Ref(t, next_id, i));
      if (k == PacketHolder::kNoHold) {
        ++refused;
        std::this_thread::yield();
        break;
      }
      in_flight[next_id++] = true;
      ++given;
      std::lock_guard lock(mu);
      pending[given % kReleasers].push_back(k);
    }
    t->TakeBatchHeld();
    max_out = std::max(max_out, t->outstanding());
  }
  stop.store(true);
  for (auto& th : threads) th.join();
  t->Drain([&](uint16_t id) { ++completed[id]; in_flight.erase(id); });
  EXPECT_EQ(released.load(), kHolds);
  EXPECT_TRUE(in_flight.empty());
  EXPECT_EQ(t->outstanding(), 0u);
  EXPECT_LE(max_out, 200u);
  uint64_t total = 0;
  for (uint32_t n : completed) total += n;
  EXPECT_EQ(total, kHolds);
  std::printf("holds %u, refused at the bound %u times, most outstanding %u\n", given, refused, max_out);

  // Now the owner goes with holds outstanding; other threads release them later.
  std::vector<uint32_t> last;
  for (uint16_t id = 0; id < 50; ++id) last.push_back(t->Hold(Ref(t, id, id % 32)));
  t->Abandon();
  EXPECT_EQ(alive.load(), 1);
  std::thread a([&] {
    for (size_t i = 0; i < last.size(); i += 2) t->Release(last[i]);
  });
  std::thread b([&] {
    for (size_t i = 1; i < last.size(); i += 2) t->Release(last[i]);
  });
  a.join();
  b.join();
  EXPECT_EQ(alive.load(), 0);  // the last release deleted the table and its memory
}

}  // namespace
}  // namespace nicmux
