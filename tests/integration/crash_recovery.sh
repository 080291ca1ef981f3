#!/usr/bin/env bash
# Crash recovery (docs/upgrade.md "Crash recovery"): nicmuxd killed with SIGKILL under two QEMU
# guests (stock Linux virtio_net) and started again at once, as systemd's Restart= does; guest
# a's QEMU listens (server=on: nicmuxd reconnects to it), guest b's connects (reconnect=1:
# QEMU retries every second). Both regain connectivity by themselves; the test reports each
# port's time from the restart to its frontend's connection, and how many of a ping every 10 ms
# across the crash went unanswered. Then the same once more with a live upgrade in between:
# the restarted process hands over like any other.
source "$(dirname "$0")/lib.sh"
guest_image

NMX_ARGS=(--port "vhost-user:a:socket=$WORK/qa.sock,client" --port "vhost-user:b:socket=$WORK/b.sock")
guest a "$WORK/qa.sock" 10.0.0.1/24 --socket-mode server
wait_for "$WORK/qa.sock" 60
nicmuxd "${NMX_ARGS[@]}"
wait_for "$WORK/b.sock" 30
guest b "$WORK/b.sock" 10.0.0.2/24 --reconnect 1
wait_agent a; wait_agent b
gexec a 'ping -c 3 -i 0.2 -W 5 10.0.0.2' >/dev/null || fail "ping a -> b before the crash"
echo "ok: two guests up (a: QEMU server=on, b: QEMU reconnect=1)"

ms_of() {  # ms_of HH:MM:SS.mmm: milliseconds since midnight
  local t=$1
  echo $((10#${t:0:2} * 3600000 + 10#${t:3:2} * 60000 + 10#${t:6:2} * 1000 + 10#${t:9:3}))
}
crash() {  # crash N: kills nicmuxd under a ping every 10 ms, starts it again (log nicmuxd.N.log)
  local n=$1
  gexec a 'ping -c 800 -i 0.01 -W 2 10.0.0.2' >"$WORK/ping_crash$n.log" 2>&1 &
  local pp=$!
  sleep 2
  kill -KILL "$NICMUXD_PID"
  wait "$NICMUXD_PID" 2>/dev/null || true
  [ -z "${NICMUXD_ADOPTED:-}" ] || wait_until 10 "the killed nicmuxd gone" bash -c "! kill -0 $NICMUXD_PID 2>/dev/null"
  NICMUXD_ADOPTED=
  # (The killed process removed nothing: its listening socket file stays, and the new one
  # replaces it.)
  start "nicmuxd.$n" "$BIN/nicmuxd" --log-level info --control "$CTL" "${NMX_ARGS[@]}"
  NICMUXD_PID=$LAST_PID
  local log=$WORK/nicmuxd.$n.log
  wait_log "$log" "port a: frontend connected" 60 "$NICMUXD_PID"
  wait_log "$log" "port b: frontend connected" 60 "$NICMUXD_PID"
  wait "$pp" || true
  local start_ms a_ms b_ms sent got
  start_ms=$(ms_of "$(grep -m1 -o '^[0-9:.]*' "$log")")
  a_ms=$(ms_of "$(grep -m1 'port a: frontend connected' "$log" | grep -o '^[0-9:.]*')")
  b_ms=$(ms_of "$(grep -m1 'port b: frontend connected' "$log" | grep -o '^[0-9:.]*')")
  sent=$(grep -o '[0-9]* packets transmitted' "$WORK/ping_crash$n.log" | grep -o '^[0-9]*')
  got=$(grep -o '[0-9]* packets received' "$WORK/ping_crash$n.log" | grep -o '^[0-9]*')
  [ -n "$got" ] && [ "$got" -gt 0 ] || fail "crash $n: the ping got no reply at all: $(tail -n 3 "$WORK/ping_crash$n.log")"
  gexec a 'ping -c 3 -i 0.2 -W 5 10.0.0.2' >/dev/null || fail "ping a -> b after crash $n"
  gexec b 'ping -c 3 -i 0.2 -W 5 10.0.0.1' >/dev/null || fail "ping b -> a after crash $n"
  echo "ok: crash $n: SIGKILL, restart: port a (nicmuxd reconnects to QEMU) connected $((a_ms - start_ms)) ms after" \
    "the restart, port b (QEMU reconnect=1) $((b_ms - start_ms)) ms; ping every 10 ms: $((sent - got)) of $sent" \
    "unanswered (~$(((sent - got) * 10)) ms); ping both ways afterwards"
}
crash 1
# The restarted process takes a live upgrade, and the upgraded one survives a crash too.
upgrade_nicmuxd
echo "ok: the restarted nicmuxd upgraded (paused $UPGRADE_PAUSED_US us)"
crash 2
stop_nicmuxd
