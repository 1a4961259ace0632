#!/usr/bin/env bash
# Case study 2, replicated web service: two HTTP replicas (python3 -m http.server, each
# answering its name at /who) behind server-side translators; the service router spreads new
# connections for `name:web.case` over them by weight. A legacy HTTP load (scenario_load
# http: one connection per request) goes through a client-side translator. During the run:
#   weights a:b 1:1 -> 3:1 -> 1:3 (router reloads its policy with SIGHUP), then replica b is
#   withdrawn gracefully: the router drops its route (reload), then b's translator drains
#   (SIGTERM) and its in-flight requests finish.
#
#   cli 10.62.0.10            rtr 10.62.0.1 (bridge)     a 10.62.0.20, b 10.62.0.21
#   load ─► client translator ─► router (weighted) ─► server translator ─► http.server
#
# The weights are the router's static routes (`router.routes[].weight`): a registration
# carries no weight (see docs/CASE-STUDIES.md).
#
# Invariant: no failed request at all (the withdrawal is graceful); both replicas serve in
# proportion to their weights (reported), and none reaches b after its withdrawal.
source "$(dirname "$0")/lib.sh"
SC_NAME=2-replicas
sc_tools
sc_binaries
sc_results

if [[ $SC_SHORT == 1 ]]; then STEP=2.5; else STEP=10; fi
DURATION=$(awk -v s="$STEP" 'BEGIN { print 4 * s }')

sc_ns rtr
sc_ns cli
sc_ns a
sc_ns b
sc_bridge rtr br0 10.62.0.1/24
sc_port cli eth0 10.62.0.10/24 rtr br0
sc_port a eth0 10.62.0.20/24 rtr br0
sc_port b eth0 10.62.0.21/24 rtr br0

router_yaml() { # weight of a, weight of b (0: no route)
    {
        echo 'serval: {bind: "10.62.0.1:54325"}'
        echo "admin: {listen: ~}"
        echo "router:"
        echo "  keys: [{id: 1, env: SERVAL_SC_KEY}]"
        echo "  routes:"
        [[ $1 == 0 ]] || echo "    - {prefix: \"name:web.case\", forward: \"10.62.0.20:54325\", weight: $1}"
        [[ $2 == 0 ]] || echo "    - {prefix: \"name:web.case\", forward: \"10.62.0.21:54325\", weight: $2}"
    } >"$SC_TMP/router.yaml"
}
replica_yaml() { # name, address
    cat >"$SC_TMP/server-$1.yaml" <<EOF
serval: {bind: "$2:54325"}
admin: {listen: ~}
log: {access_log: false}
drain: {grace_period: 5s}
server:
  services:
    - {name: web, prefix: "name:web.case", backends: [{address: "127.0.0.1:8000"}]}
EOF
}
cat >"$SC_TMP/client.yaml" <<EOF
serval: {bind: "10.62.0.10:54325", routers: ["10.62.0.1:54325"]}
admin: {listen: ~}
log: {access_log: false}
client:
  connect_timeout: 3s
  listeners:
    - {name: web, listen: "127.0.0.1:8080", service: "name:web.case"}
EOF

router_yaml 1 1
sc_translator router rtr
RTR_PID=$SC_PID
sc_wait_log router "translator started"
declare -A tpid
for r in a b; do
    mkdir -p "$SC_TMP/www-$r"
    echo "$r" >"$SC_TMP/www-$r/who"
    sc_start "http-$r" "$r" /usr/bin/python3 -m http.server 8000 --bind 127.0.0.1 --directory "$SC_TMP/www-$r"
    sc_wait_tcp "$r" 127.0.0.1 8000
    addr=10.62.0.20
    [[ $r == b ]] && addr=10.62.0.21
    replica_yaml "$r" "$addr"
    sc_translator "server-$r" "$r"
    tpid[$r]=$SC_PID
    sc_wait_log "server-$r" "translator started"
done
sc_translator client cli
sc_wait_log client "translator started"

EVENTS="$SC_OUT/events.csv"
echo "t_ms,end_ms,event" >"$EVENTS"
reloads() { grep -c "policy reloaded" "$SC_OUT/logs/router.log" || true; }
weights() { # a b label
    local t0 n
    t0=$(sc_since "$LOAD_T0")
    n=$(reloads)
    router_yaml "$1" "$2"
    kill -HUP "$RTR_PID"
    sc_wait_log router "policy reloaded" $((n + 1)) 10
    echo "$t0,$(sc_since "$LOAD_T0"),$3" >>"$EVENTS"
    sc_log "$3"
}

sc_log "load for ${DURATION}s"
LOAD_T0=$(sc_now_ms)
sc_start load cli "$SCENARIO_LOAD" --sample-ms 100 --out "$SC_OUT/load.csv" --events "$SC_OUT/failures.csv" \
    http --port 8080 --names a,b --concurrency 8 --duration-s "$DURATION"
LOAD_PID=$SC_PID
sc_sleep_until "$LOAD_T0" "$STEP"
weights 3 1 "weights a:b = 3:1"
sc_sleep_until "$LOAD_T0" "$(awk -v s="$STEP" 'BEGIN { print 2 * s }')"
weights 1 3 "weights a:b = 1:3"
sc_sleep_until "$LOAD_T0" "$(awk -v s="$STEP" 'BEGIN { print 3 * s }')"
weights 1 0 "b withdrawn"
t=$(sc_since "$LOAD_T0")
kill -TERM "${tpid[b]}"
sc_wait_exit "${tpid[b]}" 15
DRAINED="$t,$(sc_since "$LOAD_T0"),b drains (SIGTERM)"
sc_log "b drained and stopped"
sc_wait_exit "$LOAD_PID" $((${DURATION%.*} + 30))
wait "$LOAD_PID" || sc_die "the load generator failed (logs/load.log)"
cat "$SC_OUT/logs/load.log"

summary=$(grep '^SUMMARY' "$SC_OUT/logs/load.log")
field() { sed -E "s/.* $1=([0-9.]+).*/\1/" <<<"$summary"; }
failures=$(field failures)
requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$summary")
# Share of a per phase: between the end of one weight change and the start of the next, from
# the cumulative counters; and what b served after its withdrawal took effect (requests
# already in flight there, which its drain lets finish).
read -r phases b_after < <(awk -F, '
    NR == FNR { if (FNR > 1) { n++; st[n] = $1; en[n] = $2 } next }
    FNR == 1 { next }
    { ph = -1
      if ($1 < st[1]) ph = 0
      for (i = 1; i <= n; i++) if ($1 >= en[i] && (i == n || $1 < st[i + 1])) ph = i
      if (ph >= 0) { if (!(ph in a0)) { a0[ph] = $2; b0[ph] = $3 } a1[ph] = $2; b1[ph] = $3 }
      if ($1 <= en[n]) bg = $3
      bl = $3 }
    END { s = ""; for (p = 0; p <= n; p++) { da = a1[p] - a0[p]; db = b1[p] - b0[p]
          s = s sprintf("%s%.0f%%", (p ? "/" : ""), (da + db) ? 100 * da / (da + db) : 0) }
          print s, bl - bg }' "$EVENTS" "$SC_OUT/load.csv")
rate=$(awk -v r="$requests" -v d="$DURATION" 'BEGIN { printf "%.0f", r / d }')
echo "requests=$requests rate=$rate failures=$failures share_a_per_phase=$phases b_after_withdrawal=$b_after" >"$SC_OUT/figures.txt"
# The drain goes into events.csv (for the plot) only now: it is not a weight change.
echo "$DRAINED" >>"$EVENTS"
sc_plot replicas
ok=0
((requests > 0 && failures == 0)) && ok=1
sc_verdict "$ok" "$requests requests (~$rate/s); share of a per phase (1:1, 3:1, 1:3, b withdrawn) $phases; failed requests $failures; b served $b_after more after its withdrawal (in flight)"
