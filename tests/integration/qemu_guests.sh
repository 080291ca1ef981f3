#!/usr/bin/env bash
# Linux guests (QEMU 7.2, the stock virtio_net driver; KVM where the host has real KVM, else
# TCG) connected through nicmuxd:
#   1. nicmuxd as vhost-user server: ping both ways, iperf3 TCP for 3 s; then one guest's
#      QEMU is killed and started again: its port comes back, ping works again.
#   2. nicmuxd as client of QEMU's server=on socket: the same, nicmuxd reconnecting by itself.
#   3. packed virtqueues: ping both ways.
#   4. four queue pairs in each guest: traffic on every receive and transmit queue.
source "$(dirname "$0")/lib.sh"
guest_image

ping_both() {
  gexec a 'ping -c 3 -W 5 10.0.0.2' >"$WORK/ping_ab.log" || fail "ping a -> b ($1)"
  gexec b 'ping -c 3 -W 5 10.0.0.1' >"$WORK/ping_ba.log" || fail "ping b -> a ($1)"
  echo "ok: ping both ways ($1): $(grep -h round-trip "$WORK/ping_ab.log" "$WORK/ping_ba.log" | tr '\n' ' ')"
}
iperf() {  # iperf SECONDS LABEL [extra iperf3 args]
  local out
  out=$(gexec b "iperf3 -c 10.0.0.1 -t $1 -f g ${3:-}") || fail "iperf3 ($2)"
  echo "ok: iperf3 TCP b -> a, $1 s ($2): $(grep receiver <<<"$out" | tail -1 | awk '{for (i = 1; i < NF; i++) if ($(i+1) == "Gbits/sec") print $i " Gbit/s"}')"
}

# ---- 1. nicmuxd listens
nicmuxd --port "vhost-user:a:socket=$WORK/a.sock" --port "vhost-user:b:socket=$WORK/b.sock" --stats-interval 5
wait_for "$WORK/b.sock" 30
guest a "$WORK/a.sock" 10.0.0.1/24
guest b "$WORK/b.sock" 10.0.0.2/24
wait_agent a; wait_agent b
ping_both "nicmuxd server"
# Offloads (docs/offloads.md): the guests see checksum offload and TSO on, and TSO frames
# cross the switch whole (b's frames average more than one MTU).
k=$(gexec a 'ethtool -k eth0') || fail "ethtool -k in guest a"
grep -q "^tcp-segmentation-offload: on" <<<"$k" || fail "guest a: TSO not on: $k"
grep -q "^tx-checksumming: on" <<<"$k" || fail "guest a: tx checksumming not on: $k"
port_json() { ctl --json port show "$1" | python3 -c "import json,sys; j=json.load(sys.stdin); print(j$2)"; }
caps=$(port_json a "['caps']")
grep -q "tso4" <<<"$caps" || fail "port a caps: $caps"
echo "ok: guests negotiated offloads (port a caps: $caps)"
iperf 3 "nicmuxd server"
avg=$(port_json b "['rx_bytes'] // max(1, j['rx_packets'])")
[ "$avg" -gt 1514 ] || fail "b's frames average $avg bytes: no TSO frame crossed whole"
echo "ok: b's frames average $avg bytes through the switch (TSO frames cross as one packet)"
gexec b 'ethtool -K eth0 tso off tx off' >/dev/null || fail "ethtool -K in guest b"
iperf 3 "guest b with tso and tx checksumming off"
gexec b 'ethtool -K eth0 tso on tx on' >/dev/null || fail "ethtool -K in guest b (on again)"
# The receiver's own receive offloads (docs/offloads.md): `ethtool -K eth0 rx-gro-hw off` makes
# virtio_net send VIRTIO_NET_CTRL_GUEST_OFFLOADS without GUEST_TSO4/6. QEMU 7.2 answers it
# itself and tells a vhost-user backend nothing: port a's caps stay, nicmuxd keeps sending TSO
# frames, and the guest's driver still takes them (iperf3 passes).
gexec a 'ethtool -K eth0 rx-gro-hw off' >"$WORK/grohw.log" 2>&1 || fail "guest a: ethtool -K eth0 rx-gro-hw off: $(cat "$WORK/grohw.log")"
gexec a 'ethtool -k eth0' | grep -q "^rx-gro-hw: off" || fail "guest a: rx-gro-hw still on"
caps2=$(port_json a "['caps']")
[ "$caps2" = "$caps" ] || fail "port a's caps changed after the guest's rx-gro-hw off: $caps2"
t0=$(port_json a "['tx_bytes']"); p0=$(port_json a "['tx_packets']")
iperf 3 "guest a with rx-gro-hw off"
t1=$(port_json a "['tx_bytes']"); p1=$(port_json a "['tx_packets']")
avg_a=$(((t1 - t0) / (p1 - p0 > 0 ? p1 - p0 : 1)))
[ "$avg_a" -gt 1514 ] || fail "frames to guest a average $avg_a bytes after rx-gro-hw off: nicmuxd was told after all?"
echo "ok: guest a's rx-gro-hw off reaches QEMU only: port a's caps unchanged, frames to a still average $avg_a bytes, iperf3 passes"
gexec a 'ethtool -K eth0 rx-gro-hw on' >/dev/null || fail "guest a: rx-gro-hw on again"
kill_guest a
wait_log "$WORK/nicmuxd.log" "port a: frontend disconnected" 30
mv "$WORK/a.console.log" "$WORK/a-first.console.log"
guest a "$WORK/a.sock" 10.0.0.1/24
wait_agent a
ping_both "after guest a's QEMU restarted"
kill_guest a; kill_guest b
stop_nicmuxd

# ---- 2. QEMU listens (server=on), nicmuxd connects and reconnects
rm -f "$WORK"/*.con "$WORK"/*.console.log
guest a "$WORK/qa.sock" 10.0.0.1/24 --socket-mode server
guest b "$WORK/qb.sock" 10.0.0.2/24 --socket-mode server
wait_for "$WORK/qb.sock" 60
nicmuxd --port "vhost-user:a:socket=$WORK/qa.sock,client" --port "vhost-user:b:socket=$WORK/qb.sock,client"
wait_agent a; wait_agent b
ping_both "nicmuxd client"
iperf 3 "nicmuxd client"
kill_guest a
wait_log "$WORK/nicmuxd.log" "port a: frontend disconnected" 30
rm -f "$WORK/a.console.log"
guest a "$WORK/qa.sock" 10.0.0.1/24 --socket-mode server
wait_agent a
ping_both "nicmuxd client, after guest a's QEMU restarted"
grep -q "port a: frontend connected" "$WORK/nicmuxd.log" || fail "no reconnect logged"
kill_guest a; kill_guest b
stop_nicmuxd

# ---- 2b. packed virtqueues (QEMU sends 32-bit ring bases for them)
rm -f "$WORK"/*.con "$WORK"/*.console.log "$WORK"/*.sock
nicmuxd --port "vhost-user:a:socket=$WORK/a.sock" --port "vhost-user:b:socket=$WORK/b.sock"
wait_for "$WORK/b.sock" 30
guest a "$WORK/a.sock" 10.0.0.1/24 --device-opts packed=on
guest b "$WORK/b.sock" 10.0.0.2/24 --device-opts packed=on
wait_agent a; wait_agent b
ping_both "packed rings"
kill_guest a; kill_guest b
stop_nicmuxd

# ---- 3. four queue pairs
rm -f "$WORK"/*.con "$WORK"/*.console.log "$WORK"/*.sock
nicmuxd --port "vhost-user:a:socket=$WORK/a.sock,queues=4" --port "vhost-user:b:socket=$WORK/b.sock,queues=4"
wait_for "$WORK/b.sock" 30
guest a "$WORK/a.sock" 10.0.0.1/24 --queues 4
guest b "$WORK/b.sock" 10.0.0.2/24 --queues 4
wait_agent a; wait_agent b
# Spread transmit queues by flow hash, not by the (single) CPU.
for g in a b; do
  gexec $g 'for f in /sys/class/net/eth0/queues/tx-*/xps_cpus; do echo 0 > $f; done; ethtool -l eth0 | tail -4' >/dev/null \
    || fail "guest $g: cannot set up queues"
done
iperf 3 "4 queue pairs, 16 streams" "-P 16"
for g in a b; do
  gexec $g 'ethtool -S eth0' >"$WORK/$g.ethtool" || fail "ethtool -S in guest $g"
  for q in 0 1 2 3; do
    for dir in rx tx; do
      n=$(awk -v k="${dir}_queue_${q}_packets:" '$1 == k {print $2}' "$WORK/$g.ethtool")
      [ "${n:-0}" -gt 0 ] || fail "guest $g: ${dir} queue $q moved no packets"
    done
  done
  echo "ok: guest $g: packets on all 4 rx and tx queues ($(grep -E '(rx|tx)_queue_[0-3]_packets' "$WORK/$g.ethtool" | awk '{printf "%s%s ", $1, $2}'))"
done
kill_guest a; kill_guest b
stop_nicmuxd
