// FakeGuest: a guest's memory for tests, benchmarks and fuzz targets — memfd-backed regions
// mapped the way a vhost-user backend maps them, each between PROT_NONE guard pages so that a
// stray access one byte outside a region faults instead of passing silently. Region user
// addresses (the "frontend virtual" space) are the host addresses of the mappings, as a real
// frontend in this process would send them.
//
// RingPair<Layout> puts a driver-side and a device-side ring of one layout on the same memory:
// the driver is the fake guest, the device is the code under test.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "memory/guest_memory.h"
#include "virtio/driver_vring.h"
#include "virtio/packed_vring.h"
#include "virtio/split_vring.h"

namespace nicmux::testing {

struct RegionLayout {
  uint64_t gpa;
  uint64_t size;  // a multiple of the page size
};

class FakeGuest {
 public:
  static constexpr uint64_t kDefaultGpa = 0x100000;  // not 0: catches gpa/offset mix-ups

  explicit FakeGuest(uint64_t size_bytes = 16u << 20);
  explicit FakeGuest(std::vector<RegionLayout> regions);
  ~FakeGuest();
  FakeGuest(const FakeGuest&) = delete;
  FakeGuest& operator=(const FakeGuest&) = delete;

  const GuestMemory& mem() const { return *mem_; }
  std::shared_ptr<const GuestMemory> snapshot() const { return mem_; }

  // Bump allocation in region 0 (or the region given); aborts when full (a test bug).
  GuestAddr Alloc(uint64_t bytes, uint64_t align = 64, size_t region = 0);
  std::byte* Host(GuestAddr addr, uint64_t len = 1) const;
  uint64_t Uva(GuestAddr addr) const { return reinterpret_cast<uint64_t>(Host(addr)); }
  // The fd of region i (what a frontend would send in SET_MEM_TABLE).
  int fd(size_t region = 0) const;

 private:
  struct Backing;
  std::vector<std::unique_ptr<Backing>> backing_;
  std::vector<uint64_t> next_free_;
  std::shared_ptr<const GuestMemory> mem_;
};

struct SplitLayout {
  using Device = virtio::SplitVring;
  using Driver = virtio::DriverSplitVring;
  static constexpr bool kPacked = false;
  static constexpr const char* kName = "split";
};
struct PackedLayout {
  using Device = virtio::PackedVring;
  using Driver = virtio::DriverPackedVring;
  static constexpr bool kPacked = true;
  static constexpr const char* kName = "packed";
};

struct RingOptions {
  uint32_t size = 256;
  uint64_t features = 0;
  virtio::ChainPolicy policy = virtio::ChainPolicy::kAny;
  uint32_t max_indirect = 16;
};

template <typename Layout>
struct RingPair {
  RingPair(FakeGuest& g, const RingOptions& o);
  // (Re)initialises both sides on the same ring memory, as a queue reset does.
  void Reset();

  FakeGuest& guest;
  RingOptions options;
  GuestAddr ring[3];
  GuestAddr indirect_area{0};
  typename Layout::Driver driver;
  typename Layout::Device device;
};

// Fills len bytes at p with a pattern that depends on seed and position.
void FillPattern(std::byte* p, size_t len, uint64_t seed);
bool CheckPattern(const std::byte* p, size_t len, uint64_t seed);

}  // namespace nicmux::testing
