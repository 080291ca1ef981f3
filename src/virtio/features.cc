#include "virtio/features.h"

#include <utility>

namespace nicmux::virtio {


std::string NetFeatureNames(uint64_t features) {
  static constexpr std::pair<int, const char*> kNames[] = {
      {kNetFCsum, "csum"},
      {kNetFGuestCsum, "guest_csum"},
      {kNetFCtrlGuestOffloads, "ctrl_guest_offloads"},
      {kNetFMtu, "mtu"},
      {kNetFMac, "mac"},
      {kNetFGuestTso4, "guest_tso4"},
      {kNetFGuestTso6, "guest_tso6"},
      {kNetFGuestEcn, "guest_ecn"},
      {kNetFGuestUfo, "guest_ufo"},
      {kNetFHostTso4, "host_tso4"},
      {kNetFHostTso6, "host_tso6"},
      {kNetFHostEcn, "host_ecn"},
      {kNetFHostUfo, "host_ufo"},
      {kNetFMrgRxbuf, "mrg_rxbuf"},
      {kNetFStatus, "status"},
      {kNetFCtrlVq, "ctrl_vq"},
      {kNetFCtrlRx, "ctrl_rx"},
      {kNetFCtrlVlan, "ctrl_vlan"},
      {kNetFGuestAnnounce, "guest_announce"},
      {kNetFMq, "mq"},
      {kNetFCtrlMacAddr, "ctrl_mac_addr"},
      {kFRingIndirectDesc, "indirect_desc"},
      {kFRingEventIdx, "event_idx"},
      {30, "protocol_features"},  // VHOST_USER_F_PROTOCOL_FEATURES, in the feature word
      {kFVersion1, "version_1"},
      {kFAccessPlatform, "access_platform"},
      {kFRingPacked, "ring_packed"},
      {kFInOrder, "in_order"},
      {kFNotificationData, "notification_data"},
      {kNetFGuestUso4, "guest_uso4"},
      {kNetFGuestUso6, "guest_uso6"},
      {kNetFHostUso, "host_uso"},
  };
  std::string s;
  uint64_t named = 0;
  for (const auto& [bit, name] : kNames) {
    named |= Bit(bit);
    if (!Has(features, bit)) continue;
    if (!s.empty()) s += ' ';
    s += name;
  }
  for (int b = 0; b < 64; ++b) {
    if (!Has(features, b) || (named & Bit(b))) continue;
    if (!s.empty()) s += ' ';
    s += "bit" + std::to_string(b);
  }
  return s;
}

}  // namespace nicmux::virtio
