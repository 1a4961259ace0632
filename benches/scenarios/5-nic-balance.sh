#!/usr/bin/env bash
# Case study 5, load balancing across a server's interfaces (the paper's "Flow 1 moved to
# eth1" figure): the server-side translator's host has two links, eth0 and eth1, each
# shaped to the same rate. Two legacy downloads (two TCP connections, two Serval flows) share
# eth0; mid-way the operator moves flow 1 to eth1 through the translator's admin API
# (GET /flows, then POST /flows/{id}/move {"local": "<eth1's address>"}); each flow then has
# a link to itself, and both rates go up to the link rate.
#
#   cli 10.65.0.10 ┐                 ┌ eth0 10.65.1.2 ┐
#   rtr 10.65.0.1  ┴ core 10.65.0.254┤                ├ srv (server translator, http.server)
#                                    └ eth1 10.65.2.2 ┘
#
# Source-address routing in srv sends what leaves from 10.65.2.2 through eth1.
# Invariant: both downloads complete over their one connection with the right SHA-256; the
# moved flow's rate after the move is reported beside the rates before.
source "$(dirname "$0")/lib.sh"
SC_NAME=5-nic-balance
sc_tools
sc_binaries
sc_results

RATE_MBIT=30
if [[ $SC_SHORT == 1 ]]; then SECONDS_TOTAL=8; MOVE_AT=2.5; else SECONDS_TOTAL=30; MOVE_AT=10; fi
# Each flow gets half the link before the move and a whole link after.
LEN=$(awk -v r="$RATE_MBIT" -v t="$SECONDS_TOTAL" -v m="$MOVE_AT" 'BEGIN { printf "%d", r * 1e6 / 8 * (m / 2 + (t - m)) }')

sc_ns core
sc_ns rtr
sc_ns cli
sc_ns srv
sc_bridge core br0 10.65.0.254/24
sc_port rtr eth0 10.65.0.1/24 core br0
sc_port cli eth0 10.65.0.10/24 core br0
sc_veth srv eth0 10.65.1.2/24 core nic0 10.65.1.1/24
sc_veth srv eth1 10.65.2.2/24 core nic1 10.65.2.1/24
sc_in core sysctl -q -w net.ipv4.ip_forward=1
for n in rtr cli; do ip -n "$(sc_nsname "$n")" route add default via 10.65.0.254; done
srvns=$(sc_nsname srv)
ip -n "$srvns" route add default via 10.65.1.1 dev eth0
ip -n "$srvns" route add default via 10.65.2.1 dev eth1 table 102
ip -n "$srvns" rule add from 10.65.2.2 table 102
for dev in eth0 eth1; do
    sc_in srv tc qdisc add dev "$dev" root tbf rate "${RATE_MBIT}mbit" burst 64kb latency 100ms
done

sc_download_setup '{bind: "10.65.0.1:54325"}' \
    '{bind: "0.0.0.0:54325", routers: ["10.65.0.1:54325"], key: {id: 1, env: SERVAL_SC_KEY}}' \
    '{bind: "10.65.0.10:54325", routers: ["10.65.0.1:54325"]}' \
    '{keys: [{id: 1, env: SERVAL_SC_KEY}]}' '{listen: "127.0.0.1:9901"}'
sc_in srv curl -sf --max-time 5 -o /dev/null http://127.0.0.1:9901/healthz ||
    sc_die "the server translator has no admin API (GET /healthz on 127.0.0.1:9901): needed for POST /flows/{id}/move"

EVENTS="$SC_OUT/events.csv"
echo "t_ms,end_ms,event" >"$EVENTS"
LOAD_T0=$(sc_now_ms)
declare -a lpid
echo "flow,offset_ms" >"$SC_OUT/starts.csv"
for k in 1 2; do
    echo "$k,$(sc_since "$LOAD_T0")" >>"$SC_OUT/starts.csv"
    sc_start "load$k" cli "$SCENARIO_LOAD" --sample-ms 100 --out "$SC_OUT/flow$k.csv" --events "$SC_OUT/errors$k.csv" \
        download --port 8080 --path /data.bin --expect-len "$LEN" --expect-sha "$SHA" --max-s $((SECONDS_TOTAL * 4 + 60))
    lpid[k]=$SC_PID
    # Flow 1 first, so it is the older of the two server-side flows.
    [[ $k == 1 ]] && sleep 0.3
done
sc_sleep_until "$LOAD_T0" "$MOVE_AT"
t=$(sc_since "$LOAD_T0")
sc_in srv curl -sS --max-time 5 http://127.0.0.1:9901/flows >"$SC_OUT/flows-before.json" ||
    sc_die "GET /flows failed"
# Flow 1 is the older download: the flow that has sent the most (both get the same share of
# eth0 once both run, so flow 1 keeps its head start). The listing is the admin API's:
# {"flows": [{"id", "local", "bytes_sent", ...}, ...]}.
FLOW=$(/usr/bin/python3 - "$SC_OUT/flows-before.json" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
def objects(x):
    if isinstance(x, dict):
        if "id" in x:
            yield x
        for v in x.values():
            yield from objects(v)
    elif isinstance(x, list):
        for v in x:
            yield from objects(v)
flows = list(objects(doc))
if len(flows) < 2:
    sys.exit("expected two flows, got %d: %s" % (len(flows), json.dumps(doc)[:300]))
print(max(flows, key=lambda f: f.get("bytes_sent", 0))["id"])
EOF
) || sc_die "no flow to move in GET /flows ($SC_OUT/flows-before.json)"
code=$(sc_in srv curl -sS --max-time 5 -o "$SC_OUT/move-reply.txt" -w '%{http_code}' -X POST \
    -H 'Content-Type: application/json' -d '{"local":"10.65.2.2"}' "http://127.0.0.1:9901/flows/$FLOW/move") || code=000
echo "$t,$(sc_since "$LOAD_T0"),flow 1 moved to eth1" >>"$EVENTS"
sc_log "POST /flows/$FLOW/move -> $code"
[[ $code == 2?? ]] || sc_die "POST /flows/$FLOW/move answered $code: $(head -c 300 "$SC_OUT/move-reply.txt")"
# Where the flow is now (bounded: 20 polls of 100 ms): its local address is eth1's.
moved=0
for _ in $(seq 1 20); do
    sc_in srv curl -sS --max-time 5 http://127.0.0.1:9901/flows >"$SC_OUT/flows-after.json" || true
    if /usr/bin/python3 -c '
import json, sys
doc = json.load(open(sys.argv[1]))
f = [f for f in doc.get("flows", []) if str(f.get("id")) == sys.argv[2]]
sys.exit(0 if f and f[0].get("local", "").startswith("10.65.2.2:") else 1)
' "$SC_OUT/flows-after.json" "$FLOW" 2>/dev/null; then
        moved=1
        break
    fi
    sleep 0.1
done
sc_log "flow $FLOW local address now eth1's: $moved"
ok=1
for k in 1 2; do
    sc_wait_exit "${lpid[k]}" $((SECONDS_TOTAL * 4 + 90))
    wait "${lpid[k]}" || ok=0
    cat "$SC_OUT/logs/load$k.log"
done

# Each flow's mean rate (Mbit/s) in the second before the move, and from 1 s after it (the
# new path settled) until the flow's last byte; times on the scenario's clock.
rates=$(for k in 1 2; do awk -F, -v m="$t" -v k="$k" -v off="$(awk -F, -v k="$k" '$1 == k { print $2 }' "$SC_OUT/starts.csv")" '
    NR > 1 { x = $1 + off
      if (x <= m - 1000) { ta = x; ba = $2 }
      if (x <= m) { tb = x; bb = $2 }
      if (x <= m + 1000) { tc = x; bc = $2 }
      if ($2 > last) { td = x; last = $2 } }
    END { a = (tb > ta) ? (bb - ba) * 8 / (tb - ta) / 1000 : 0; b = (td > tc) ? (last - bc) * 8 / (td - tc) / 1000 : 0
          printf "flow%d %.1f->%.1f Mbit/s ", k, a, b }' "$SC_OUT/flow$k.csv"; done)
echo "moved_flow_id=$FLOW moved_to_eth1=$moved $rates" >"$SC_OUT/figures.txt"
sc_plot nics
((moved)) || ok=0
sc_verdict "$ok" "two downloads of $((LEN / 1000000)) MB, flow 1 moved to eth1 at ${t} ms ($([[ $moved == 1 ]] && echo "its local address is eth1's" || echo "NOT moved")); $rates; SHA-256 $([[ $ok == 1 ]] && echo equal || echo 'NOT equal / a download broke')"
