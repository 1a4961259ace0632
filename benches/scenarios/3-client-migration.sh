#!/usr/bin/env bash
# Case study 3, client migration (the paper's Wi-Fi to cellular figure): the client-side
# translator's host has two interfaces on different networks, "wlan0" (routed, preferred)
# and "cell0" (behind a NAT, a higher route metric). A legacy client downloads a large file
# (one TCP connection to the translator) from a legacy HTTP server behind a server-side
# translator. Mid-way wlan0 goes down: the route to the router now leaves through cell0 with
# another source address, the translator (serval.follow_address, wildcard bind) migrates its
# flows there, and the legacy client's connection never notices.
#
#   cli: wlan0 10.63.1.2 ─ wifi 10.63.1.1 / 10.63.0.11 ─┐
#        cell0 10.63.2.2 ─ nat  10.63.2.1 / 10.63.0.12 ─┤ core bridge 10.63.0.0/24
#                                         rtr 10.63.0.1 ┤ (router)
#                                         srv 10.63.0.3 ┘ server translator ─► http.server
#
# The server's egress is shaped (tbf) so the download lasts. Invariant: the download
# completes over its one connection and its SHA-256 matches; the longest gap is reported.
source "$(dirname "$0")/lib.sh"
SC_NAME=3-client-migration
sc_tools
sc_binaries
sc_results

# Wi-Fi 50 Mbit/s (the server's egress), cellular 20 Mbit/s (the NAT's downlink).
RATE_MBIT=50
CELL_MBIT=20
if [[ $SC_SHORT == 1 ]]; then SECONDS_TOTAL=6; DOWN_AT=2; else SECONDS_TOTAL=30; DOWN_AT=10; fi
LEN=$(((RATE_MBIT * DOWN_AT + CELL_MBIT * (SECONDS_TOTAL - DOWN_AT)) * 1000000 / 8))

sc_ns core
sc_ns wifi
sc_ns nat
sc_ns rtr
sc_ns srv
sc_ns cli
sc_bridge core br0 10.63.0.254/24
sc_port wifi up0 10.63.0.11/24 core br0
sc_port nat up0 10.63.0.12/24 core br0
sc_port rtr eth0 10.63.0.1/24 core br0
sc_port srv eth0 10.63.0.3/24 core br0
sc_veth cli wlan0 10.63.1.2/24 wifi down0 10.63.1.1/24
sc_veth cli cell0 10.63.2.2/24 nat down0 10.63.2.1/24
for n in wifi nat; do sc_in "$n" sysctl -q -w net.ipv4.ip_forward=1; done
# The Wi-Fi network is routed; the cellular one is hidden behind the NAT's address.
for n in rtr srv; do ip -n "$(sc_nsname "$n")" route add 10.63.1.0/24 via 10.63.0.11; done
sc_in nat nft -f - <<'EOF'
table ip cgnat {
    chain post {
        type nat hook postrouting priority 100; policy accept;
        oifname "up0" masquerade
    }
}
EOF
ip -n "$(sc_nsname cli)" route add default via 10.63.1.1 dev wlan0 metric 100
ip -n "$(sc_nsname cli)" route add default via 10.63.2.1 dev cell0 metric 200
sc_in srv tc qdisc add dev eth0 root tbf rate "${RATE_MBIT}mbit" burst 64kb latency 100ms
sc_in nat tc qdisc add dev down0 root tbf rate "${CELL_MBIT}mbit" burst 64kb latency 100ms

# Wildcard bind: the client translator follows its source address (serval.follow_address).
sc_download_setup '{bind: "10.63.0.1:54325"}' \
    '{bind: "10.63.0.3:54325", routers: ["10.63.0.1:54325"], key: {id: 1, env: SERVAL_SC_KEY}}' \
    '{bind: "0.0.0.0:54325", routers: ["10.63.0.1:54325"], follow_address: true, address_poll: 200ms}' \
    '{keys: [{id: 1, env: SERVAL_SC_KEY}]}' '{listen: ~}'

EVENTS="$SC_OUT/events.csv"
echo "t_ms,end_ms,event" >"$EVENTS"
LOAD_T0=$(sc_now_ms)
sc_start load cli "$SCENARIO_LOAD" --sample-ms 100 --out "$SC_OUT/load.csv" --events "$SC_OUT/errors.csv" \
    --gaps "$SC_OUT/gaps.csv" download --port 8080 --path /data.bin --expect-len "$LEN" --expect-sha "$SHA" --max-s $((SECONDS_TOTAL * 4 + 60))
LOAD_PID=$SC_PID
sc_sleep_until "$LOAD_T0" "$DOWN_AT"
t=$(sc_since "$LOAD_T0")
ip -n "$(sc_nsname cli)" link set dev wlan0 down
echo "$t,$(sc_since "$LOAD_T0"),wlan0 down (to cellular behind NAT)" >>"$EVENTS"
sc_log "wlan0 down at ${t} ms"
sc_download_finish "$t"
secs=$(sed -nE 's/.* seconds=([0-9.]+).*/\1/p' <<<"$summary")
migrated=$(grep -c "host address changed" "$SC_OUT/logs/client.log" || true)
echo "bytes=$LEN sha_ok=$load_ok gap_ms=$gap gap_at_ms=$gap_at pause_elsewhere_ms=$(sc_gap_elsewhere "$SC_OUT/gaps.csv" "$t") new_connection_after=$fresh event_at_ms=$t longest_gap_of_run_ms=${max_gap:-?} seconds=${secs:-?} address_changes_followed=$migrated" >"$SC_OUT/figures.txt"
sc_plot client-migration
ok=0
((load_ok && fresh)) && ok=1
sc_verdict "$ok" "$((LEN / 1000000)) MB over one legacy TCP connection, wlan0 down at ${t} ms; $(sc_pause_text gap) (longest pause elsewhere in the run $(sc_gap_elsewhere "$SC_OUT/gaps.csv" "$t") ms); SHA-256 $([[ $load_ok == 1 ]] && echo equal || echo 'NOT equal / download broken'); new connection afterwards $([[ $fresh == 1 ]] && echo served || echo FAILED)"
