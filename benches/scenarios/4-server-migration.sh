#!/usr/bin/env bash
# Case study 4, server migration (the paper's "migrating VMs across subnets" figure): the
# server-side translator's host (a VM) sits on subnet A; mid-download it "moves": it gets an
# address on subnet B (another link), its default route follows, and the old address goes.
# The translator (wildcard bind, serval.follow_address) sees its source address towards the
# router change and migrates its flows (RSYN to the client translator); the legacy client's
# connection continues after a stall.
#
#   cli 10.64.0.10 ┐                 ┌ eth0 10.64.1.2 (subnet A, gw 10.64.1.1) ┐
#   rtr 10.64.0.1  ┴ core 10.64.0.254┤                                          ├ srv
#                                    └ eth1 10.64.2.2 (subnet B, gw 10.64.2.1) ┘ (after the move)
#
# The server's egress is shaped (tbf, both links) so the download lasts. Invariant: the
# download completes over its one connection with the right SHA-256; the stall is reported.
source "$(dirname "$0")/lib.sh"
SC_NAME=4-server-migration
sc_tools
sc_binaries
sc_results

RATE_MBIT=50
if [[ $SC_SHORT == 1 ]]; then SECONDS_TOTAL=6; MOVE_AT=2; else SECONDS_TOTAL=30; MOVE_AT=10; fi
LEN=$((RATE_MBIT * 1000000 * SECONDS_TOTAL / 8))

sc_ns core
sc_ns rtr
sc_ns cli
sc_ns srv
sc_bridge core br0 10.64.0.254/24
sc_port rtr eth0 10.64.0.1/24 core br0
sc_port cli eth0 10.64.0.10/24 core br0
sc_veth srv eth0 10.64.1.2/24 core subA 10.64.1.1/24
sc_veth srv eth1 - core subB 10.64.2.1/24
sc_in core sysctl -q -w net.ipv4.ip_forward=1
for n in rtr cli; do ip -n "$(sc_nsname "$n")" route add default via 10.64.0.254; done
ip -n "$(sc_nsname srv)" route add default via 10.64.1.1 dev eth0
for dev in eth0 eth1; do
    sc_in srv tc qdisc add dev "$dev" root tbf rate "${RATE_MBIT}mbit" burst 64kb latency 100ms
done

# Wildcard bind: the server translator follows its source address (serval.follow_address).
sc_download_setup '{bind: "10.64.0.1:54325"}' \
    '{bind: "0.0.0.0:54325", routers: ["10.64.0.1:54325"], key: {id: 1, env: SERVAL_SC_KEY}, follow_address: true, address_poll: 200ms}' \
    '{bind: "10.64.0.10:54325", routers: ["10.64.0.1:54325"]}' \
    '{keys: [{id: 1, env: SERVAL_SC_KEY}], lease: {min: 1s, max: 2m, default: 5s}}' '{listen: ~}'

EVENTS="$SC_OUT/events.csv"
echo "t_ms,end_ms,event" >"$EVENTS"
LOAD_T0=$(sc_now_ms)
sc_start load cli "$SCENARIO_LOAD" --sample-ms 100 --out "$SC_OUT/load.csv" --events "$SC_OUT/errors.csv" \
    --gaps "$SC_OUT/gaps.csv" download --port 8080 --path /data.bin --expect-len "$LEN" --expect-sha "$SHA" --max-s $((SECONDS_TOTAL * 4 + 60))
LOAD_PID=$SC_PID
sc_sleep_until "$LOAD_T0" "$MOVE_AT"
t=$(sc_since "$LOAD_T0")
# The move: new address on subnet B, the default route with it, the old address gone.
srvns=$(sc_nsname srv)
ip -n "$srvns" addr add 10.64.2.2/24 dev eth1
ip -n "$srvns" link set dev eth1 up
ip -n "$srvns" route replace default via 10.64.2.1 dev eth1
ip -n "$srvns" addr del 10.64.1.2/24 dev eth0
ip -n "$srvns" link set dev eth0 down
echo "$t,$(sc_since "$LOAD_T0"),server moves to 10.64.2.2 (subnet B)" >>"$EVENTS"
sc_log "server moved at ${t} ms"
sc_download_finish "$t"
echo "bytes=$LEN sha_ok=$load_ok stall_ms=$gap stall_at_ms=$gap_at pause_elsewhere_ms=$(sc_gap_elsewhere "$SC_OUT/gaps.csv" "$t") new_connection_after=$fresh event_at_ms=$t longest_gap_of_run_ms=${max_gap:-?}" >"$SC_OUT/figures.txt"
sc_plot server-migration
ok=0
((load_ok && fresh)) && ok=1
sc_verdict "$ok" "$((LEN / 1000000)) MB over one legacy TCP connection, server moved subnets at ${t} ms; $(sc_pause_text stall) (longest pause elsewhere in the run $(sc_gap_elsewhere "$SC_OUT/gaps.csv" "$t") ms); SHA-256 $([[ $load_ok == 1 ]] && echo equal || echo 'NOT equal / download broken'); new connection afterwards $([[ $fresh == 1 ]] && echo served || echo FAILED)"
