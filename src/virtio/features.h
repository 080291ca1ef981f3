// Virtio feature bits nicmux knows (virtio 1.2 §6 "Reserved Feature Bits", §5.1.3 for the net
// device). Feature words are uint64_t masks; Has() reads one bit.
#pragma once

#include <cstdint>
#include <string>

namespace nicmux::virtio {

// Device-independent (§6).
inline constexpr int kFRingIndirectDesc = 28;
inline constexpr int kFRingEventIdx = 29;
inline constexpr int kFVersion1 = 32;
inline constexpr int kFAccessPlatform = 33;
inline constexpr int kFRingPacked = 34;
inline constexpr int kFInOrder = 35;
inline constexpr int kFNotificationData = 38;

// Network device (§5.1.3).
inline constexpr int kNetFCsum = 0;
inline constexpr int kNetFGuestCsum = 1;
inline constexpr int kNetFCtrlGuestOffloads = 2;
inline constexpr int kNetFMtu = 3;
inline constexpr int kNetFMac = 5;
inline constexpr int kNetFGuestTso4 = 7;
inline constexpr int kNetFGuestTso6 = 8;
inline constexpr int kNetFGuestEcn = 9;
inline constexpr int kNetFGuestUfo = 10;
inline constexpr int kNetFHostTso4 = 11;
inline constexpr int kNetFHostTso6 = 12;
inline constexpr int kNetFHostEcn = 13;
inline constexpr int kNetFHostUfo = 14;
inline constexpr int kNetFMrgRxbuf = 15;
inline constexpr int kNetFStatus = 16;
inline constexpr int kNetFCtrlVq = 17;
inline constexpr int kNetFCtrlRx = 18;
inline constexpr int kNetFCtrlVlan = 19;
inline constexpr int kNetFGuestAnnounce = 21;
inline constexpr int kNetFMq = 22;
inline constexpr int kNetFCtrlMacAddr = 23;

inline constexpr int kNetFHostUso = 56;
inline constexpr int kNetFGuestUso4 = 54;
inline constexpr int kNetFGuestUso6 = 55;

constexpr uint64_t Bit(int b) { return 1ull << b; }
// The names of a feature word's bits, lowercase as QEMU and the spec's macros spell them
// without their prefix ("version_1 mrg_rxbuf csum host_tso4 ..."); unknown bits as "bit<N>".
std::string NetFeatureNames(uint64_t features);
constexpr bool Has(uint64_t features, int b) { return (features >> b) & 1; }

}  // namespace nicmux::virtio
