#!/usr/bin/env bash
# nicmuxd's Prometheus endpoint (--metrics, docs/metrics.md) scraped by a real Prometheus
# (Debian's): traffic through two vhost-user ports of two queue pairs each (nicmux-pktgen, exact
# counts), then the page checked by `promtool check metrics` and against nicmuxctl's counters,
# and the same series queried back through Prometheus's HTTP API after it scraped nicmuxd.
source "$(dirname "$0")/lib.sh"

command -v prometheus >/dev/null && command -v promtool >/dev/null ||
  fail "prometheus and promtool are needed (scripts/install-deps installs Debian's prometheus)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_get() { python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"; }

count=20000
a=$WORK/a.sock b=$WORK/b.sock
nicmuxd --forward xconnect --metrics 127.0.0.1:0 --port "vhost-user:a:socket=$a,queues=2" \
  --port "vhost-user:b:socket=$b,queues=2"
wait_log "$WORK/nicmuxd.log" "metrics: serving http://" 30 "$NICMUXD_PID"
url=$(grep -o 'http://[0-9.]*:[0-9]*/metrics' "$WORK/nicmuxd.log" | head -n 1)
hostport=${url#http://}; hostport=${hostport%/metrics}
echo "ok: nicmuxd serves $url"

start pg_a "$BIN/nicmux-pktgen" --socket "$a" --mode bidir --verify --size 256 --count "$count" --queues 2 \
  --duration 60 --interval 0 --stream 1 --hold
pa=$LAST_PID
start pg_b "$BIN/nicmux-pktgen" --socket "$b" --mode bidir --verify --size 256 --count "$count" --queues 2 \
  --duration 60 --interval 0 --stream 2 --hold
pb=$LAST_PID
wait_log "$WORK/pg_a.log" connected 60 "$pa"
wait_log "$WORK/pg_b.log" connected 60 "$pb"
# While both are attached, the ports are up.
http_get "$url" > "$WORK/page0.txt" || fail "GET $url failed"
for p in a b; do
  grep -qxF "nicmux_port_up{port=\"$p\",kind=\"vhost-user\"} 1" "$WORK/page0.txt" &&
    grep -qxF "nicmux_port_state{port=\"$p\",state=\"connected\"} 1" "$WORK/page0.txt" ||
    fail "port $p is not up on the page while its pktgen is attached: $(grep nicmux_port_up "$WORK/page0.txt")"
done
release "$pa" "$pb"
wait_pid "$pa" 90 || fail "pktgen a failed"
wait_pid "$pb" 90 || fail "pktgen b failed"
for l in "$WORK/pg_a.log" "$WORK/pg_b.log"; do
  expect_summary "$l" rx_packets "$count"
  expect_summary "$l" rx_bad 0
done

# ---- the page itself
http_get "$url" > "$WORK/page.txt" || fail "GET $url failed"
promtool check metrics < "$WORK/page.txt" > "$WORK/promtool.log" 2>&1 ||
  fail "promtool check metrics: $(cat "$WORK/promtool.log")"
echo "ok: promtool check metrics passes ($(grep -vc '^#' "$WORK/page.txt") samples)"
# value NAME LABELS: the sample's value on the page.
value() { grep -F "$1{$2} " "$WORK/page.txt" | awk '{print $NF}'; }
sum_queues() { grep -E "^$1\{port=\"$2\",queue=\"[0-9]+\"\} " "$WORK/page.txt" | awk '{s += $NF} END {print s + 0}'; }
for p in a b; do
  # The pktgens are gone: the ports wait for their next frontend.
  [ "$(value nicmux_port_up "port=\"$p\",kind=\"vhost-user\"")" = 0 ] || fail "port $p is not down on the page"
  [ "$(value nicmux_port_state "port=\"$p\",state=\"waiting\"")" = 1 ] || fail "port $p is not waiting on the page"
  [ "$(value nicmux_port_queues "port=\"$p\"")" = 2 ] || fail "port $p: nicmux_port_queues is not 2"
  for dir in rx tx; do
    got=$(sum_queues "nicmux_port_${dir}_packets_total" "$p")
    [ "$got" = "$count" ] || fail "port $p: nicmux_port_${dir}_packets_total sums to $got over its queues, expected $count"
    ctl_n=$(ctl --json stats "$p" | python3 -c "import json,sys; print(json.load(sys.stdin)['ports'][0]['${dir}_packets'])")
    [ "$ctl_n" = "$got" ] || fail "port $p: nicmuxctl says ${dir}_packets $ctl_n, the page $got"
    # Two queue pairs: both carried some of it.
    for q in 0 1; do
      n=$(value "nicmux_port_${dir}_packets_total" "port=\"$p\",queue=\"$q\"")
      [ "${n:-0}" -gt 0 ] || fail "port $p queue $q: no ${dir} packets on the page"
    done
  done
  [ "$(sum_queues nicmux_port_rx_bytes_total "$p")" = $((count * 256)) ] || fail "port $p: rx bytes are not $count * 256"
done
[ "$(value nicmux_port_drops_total 'port="a",reason="no_route"')" != "" ] || fail "no drops-by-reason series"
[ "$(grep -c '^nicmux_port_drops_total{port="a",' "$WORK/page.txt")" -gt 5 ] || fail "drops by reason: too few reasons listed"
wp=$(value nicmux_worker_packets_total 'worker="worker0"')
[ "${wp:-0}" -ge $((2 * count)) ] || fail "nicmux_worker_packets_total{worker=\"worker0\"} is '${wp}', expected >= $((2 * count))"
grep -q '^nicmux_worker_cpu_seconds_total{worker="worker0"} [0-9]' "$WORK/page.txt" || fail "no worker CPU time"
grep -q '^nicmux_build_info{version="[0-9.]*"} 1$' "$WORK/page.txt" || fail "no nicmux_build_info"
echo "ok: the page agrees with the pktgens and nicmuxctl: $count packets each way per port, over 2 queues each"

# ---- wrong requests do not disturb it
python3 - "$hostport" <<'PY' || fail "bad requests were not refused as documented"
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
def ask(data):
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall(data)
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            return out.decode(errors="replace")
        out += b
assert ask(b"GET /nope HTTP/1.1\r\n\r\n").startswith("HTTP/1.1 404"), "404"
assert ask(b"DELETE /metrics HTTP/1.1\r\n\r\n").startswith("HTTP/1.1 405"), "405"
assert ask(b"\x00\x01garbage\r\n\r\n").startswith("HTTP/1.1 400"), "400"
assert ask(b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * 9000 + b"\r\n\r\n").startswith("HTTP/1.1 431"), "431"
PY
echo "ok: 404, 405, 400 and 431 for wrong requests"

# ---- a real Prometheus scrapes it
pport=$(free_port)
cat > "$WORK/prometheus.yml" <<YML
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: nicmux
    static_configs:
      - targets: ["$hostport"]
YML
promtool check config "$WORK/prometheus.yml" > "$WORK/promtool-config.log" 2>&1 || fail "promtool check config: $(cat "$WORK/promtool-config.log")"
start prometheus prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$pport" --log.level=warn
prom=$LAST_PID
api="http://127.0.0.1:$pport/api/v1/query?query="
# query EXPR: the value of the single series EXPR selects, once Prometheus has it ("" until then).
query() {
  http_get "$api$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$1")" 2>/dev/null |
    python3 -c 'import json, sys
r = json.load(sys.stdin)["data"]["result"]
print(r[0]["value"][1] if len(r) == 1 else "")' 2>/dev/null || true
}
scraped() {
  kill -0 "$prom" 2>/dev/null || fail "prometheus exited: $(tail -5 "$WORK/prometheus.log")"
  [ "$(query 'up{job="nicmux"}')" = 1 ] && [ "$(query 'sum(nicmux_port_rx_packets_total{port="b"})')" = "$count" ]
}
wait_until 60 "scrape of nicmuxd by Prometheus" scraped
for p in a b; do
  got=$(query "sum(nicmux_port_rx_packets_total{port=\"$p\"})")
  [ "$got" = "$count" ] || fail "Prometheus has sum(nicmux_port_rx_packets_total{port=\"$p\"}) = '$got', expected $count"
done
[ "$(query 'count(nicmux_port_tx_packets_total)')" = 4 ] || fail "Prometheus does not have 4 tx series (2 ports x 2 queues)"
[ "$(query 'nicmux_port_up{port="b"}')" = 0 ] || fail "Prometheus: port b is not down (its pktgen left)"
[ "$(query 'nicmux_metrics_scrapes_total')" != "" ] || fail "Prometheus: no scrape counter"
echo "ok: Prometheus scraped nicmuxd (up=1) and has the counters: $count packets per port, 4 tx series"
kill "$prom"
stop_nicmuxd
