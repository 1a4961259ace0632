#!/usr/bin/env bash
# Case study 1, back-end distributed storage (the paper's memcached figure): four memcached
# servers (Debian's memcached) behind server-side translators; the key space is cut into 16
# partitions, one ServiceID each; every server registers the partitions it owns, and the
# service router sends each new connection to the owner of its ServiceID. A legacy memcached
# client load (scenario_load memcache, plain ASCII protocol over TCP) reaches partition p
# through local port 21000+p of a client-side translator. During the run:
#   server 3 leaves, server 2 leaves, server 3 joins, server 2 joins;
# each time the partitions are re-assigned (the gaining servers reload their policy with
# SIGHUP and register the new partitions first, then the leaving server drains with SIGTERM,
# which withdraws its registrations; on a join the new server registers first, then the
# others reload without those partitions).
#
#   cli 10.61.0.10            rtr 10.61.0.1 (bridge)          s0..s3 10.61.0.20-23
#   load ─► client translator ─► router ◄─ registrations ─ server translator ─► memcached
#
# Invariant: every hit returns the value written for its key; no client error outside the
# window of a partition move (start of the move to 1 s after it). Misses after a move (the
# new owner never saw the key) are inherent and reported.
source "$(dirname "$0")/lib.sh"
SC_NAME=1-storage
sc_tools
sc_binaries
sc_results

P=16          # partitions
S=4           # servers
if [[ $SC_SHORT == 1 ]]; then
    STEP=2.5  # seconds between events
else
    STEP=10
fi
DURATION=$(awk -v s="$STEP" 'BEGIN { print 5 * s }')

# Topology.
sc_ns rtr
sc_ns cli
sc_bridge rtr br0 10.61.0.1/24
sc_port cli eth0 10.61.0.10/24 rtr br0
for s in $(seq 0 $((S - 1))); do
    sc_ns "s$s"
    sc_port "s$s" eth0 "10.61.0.2$s/24" rtr br0
done

# Partition p's ServiceID.
sid() { printf '0x6d6300%02x' "$1"; }

# owner[p]: the server owning partition p (initially p mod 4).
declare -a owner
for p in $(seq 0 $((P - 1))); do owner[p]=$((p % S)); done
declare -a present=(1 1 1 1)

# Server s's policy: one service per owned partition, all to its memcached.
server_yaml() {
    local s=$1 p
    {
        echo "serval: {bind: \"10.61.0.2$s:54325\", routers: [\"10.61.0.1:54325\"], key: {id: 1, env: SERVAL_SC_KEY}}"
        echo "admin: {listen: ~}"
        echo "log: {access_log: false}"
        echo "drain: {grace_period: 2s}"
        echo "server:"
        echo "  services:"
        for p in $(seq 0 $((P - 1))); do
            if [[ ${owner[p]} == "$s" ]]; then
                echo "    - {name: p$p, prefix: \"$(sid "$p")\", backends: [{address: \"127.0.0.1:1121$s\"}], connect_timeout: 1s}"
            fi
        done
    } >"$SC_TMP/server$s.yaml"
}

cat >"$SC_TMP/router.yaml" <<EOF
serval: {bind: "10.61.0.1:54325"}
admin: {listen: ~}
router: {keys: [{id: 1, env: SERVAL_SC_KEY}], lease: {min: 1s, max: 2m, default: 30s}}
EOF
{
    echo 'serval: {bind: "10.61.0.10:54325", routers: ["10.61.0.1:54325"]}'
    echo "admin: {listen: ~}"
    echo "log: {access_log: false}"
    echo "drain: {grace_period: 1s}"
    echo "client:"
    echo "  connect_timeout: 2s"
    echo "  listeners:"
    for p in $(seq 0 $((P - 1))); do
        echo "    - {name: p$p, listen: \"127.0.0.1:$((21000 + p))\", service: \"$(sid "$p")\"}"
    done
} >"$SC_TMP/client.yaml"

sc_translator router rtr
sc_wait_log router "translator started"
declare -a tpid
for s in $(seq 0 $((S - 1))); do
    sc_start "memcached$s" "s$s" memcached -u nobody -l 127.0.0.1 -p "1121$s" -U 0 -m 64 -t 2 -c 4096
    sc_wait_tcp "s$s" 127.0.0.1 "1121$s"
    server_yaml "$s"
    sc_translator "server$s" "s$s"
    tpid[s]=$SC_PID
done
for s in $(seq 0 $((S - 1))); do
    sc_wait_log "server$s" "registered with router" $((P / S))
done
sc_translator client cli
sc_wait_log client "translator started"

# Re-partitioning helpers. `reg` counts a server's registration lines so far (a reload waits
# for as many more as partitions it gained).
reg() { grep -c "registered with router" "$SC_OUT/logs/server$1.log" || true; }
applied() { grep -c "policy applied" "$SC_OUT/logs/server$1.log" || true; }

EVENTS="$SC_OUT/events.csv"
echo "t_ms,end_ms,event" >"$EVENTS"

# leave S: S's partitions go round robin to the servers still present; they register them,
# then S drains (withdrawing its registrations) and exits.
leave() {
    local s=$1 t0 p k=0 gained=(0 0 0 0) others=() before=()
    t0=$(sc_since "$LOAD_T0")
    present[s]=0
    for o in $(seq 0 $((S - 1))); do ((present[o])) && others+=("$o"); done
    for p in $(seq 0 $((P - 1))); do
        if [[ ${owner[p]} == "$s" ]]; then
            owner[p]=${others[k % ${#others[@]}]}
            gained[owner[p]]=$((gained[owner[p]] + 1))
            k=$((k + 1))
        fi
    done
    for o in "${others[@]}"; do
        before[o]=$(reg "$o")
        server_yaml "$o"
        kill -HUP "${tpid[o]}"
    done
    for o in "${others[@]}"; do
        sc_wait_log "server$o" "registered with router" $((before[o] + gained[o])) 10
    done
    kill -TERM "${tpid[s]}"
    sc_wait_exit "${tpid[s]}" 10
    echo "$t0,$(sc_since "$LOAD_T0"),server $s leaves" >>"$EVENTS"
    sc_log "server $s left ($(sc_since "$LOAD_T0") ms)"
}

# join S: S takes its original partitions back (p mod 4 == S); it registers them, then the
# servers that held them reload without them (their listeners close, withdrawing).
join() {
    local s=$1 t0 p losers=() before=()
    t0=$(sc_since "$LOAD_T0")
    local -A lost=()
    for p in $(seq 0 $((P - 1))); do
        if ((p % S == s)); then
            lost[${owner[p]}]=1
            owner[p]=$s
        fi
    done
    present[s]=1
    server_yaml "$s"
    mv "$SC_OUT/logs/server$s.log" "$SC_OUT/logs/server$s-until-leave.log"
    sc_translator "server$s" "s$s"
    tpid[s]=$SC_PID
    sc_wait_log "server$s" "registered with router" $((P / S)) 10
    for o in "${!lost[@]}"; do
        losers+=("$o")
        before[o]=$(applied "$o")
        server_yaml "$o"
        kill -HUP "${tpid[o]}"
    done
    for o in "${losers[@]}"; do
        sc_wait_log "server$o" "policy applied" $((before[o] + 1)) 10
    done
    echo "$t0,$(sc_since "$LOAD_T0"),server $s joins" >>"$EVENTS"
    sc_log "server $s joined ($(sc_since "$LOAD_T0") ms)"
}

sc_log "load for ${DURATION}s, an event every ${STEP}s"
LOAD_T0=$(sc_now_ms)
sc_start load cli "$SCENARIO_LOAD" --sample-ms 100 --out "$SC_OUT/load.csv" --events "$SC_OUT/errors.csv" \
    memcache --base-port 21000 --partitions "$P" --servers "$S" --server-base-port 11210 \
    --workers 2 --conn-ops 64 --keys 400 --duration-s "$DURATION"
LOAD_PID=$SC_PID
sc_sleep_until "$LOAD_T0" "$STEP"
leave 3
sc_sleep_until "$LOAD_T0" "$(awk -v s="$STEP" 'BEGIN { print 2 * s }')"
leave 2
sc_sleep_until "$LOAD_T0" "$(awk -v s="$STEP" 'BEGIN { print 3 * s }')"
join 3
sc_sleep_until "$LOAD_T0" "$(awk -v s="$STEP" 'BEGIN { print 4 * s }')"
join 2
sc_wait_exit "$LOAD_PID" $((${DURATION%.*} + 30))
wait "$LOAD_PID" || sc_die "the load generator failed (logs/load.log)"
cat "$SC_OUT/logs/load.log"

# Verdict: errors inside a move's window (its start to 1 s after its end) are inherent;
# any other error fails the scenario.
summary=$(grep '^SUMMARY' "$SC_OUT/logs/load.log")
read -r total outside < <(awk -F, 'NR == FNR { if (FNR > 1) { s[++n] = $1; e[n] = $2 + 1000 } next }
    FNR > 1 { t++; inside = 0; for (i = 1; i <= n; i++) if ($1 >= s[i] && $1 <= e[i]) inside = 1; if (!inside) o++ }
    END { print t + 0, o + 0 }' "$EVENTS" "$SC_OUT/errors.csv")
requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$summary")
misses=$(sed -E 's/.*misses=([0-9]+).*/\1/' <<<"$summary")
# Misses before the first move are the cache filling (every key's first get); the rest come
# from partitions moving to servers that have not seen their keys.
first=$(awk -F, 'NR == 2 { print $1 }' "$EVENTS")
cold=$(awk -F, -v t="$first" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "misses") c = i; next }
    $1 < t { m = $c } END { print m + 0 }' "$SC_OUT/load.csv")
moved_misses=$((misses - cold))
seconds=$(sed -E 's/.*seconds=([0-9.]+).*/\1/' <<<"$summary")
rate=$(awk -v r="$requests" -v s="$seconds" 'BEGIN { printf "%.0f", r / s }')
# How long each move took to show in the load: from the event's start to the leaving
# server's last request, or to the joining server's first.
moves=$(awk -F, 'NR == FNR { if (FNR > 1) { n++; st[n] = $1; split($3, w, " "); sv[n] = w[2]; kind[n] = w[3] } next }
    FNR == 1 { next }
    { for (i = 1; i <= n; i++) { c = $(sv[i] + 2)
        if ($1 >= st[i]) {
          if (kind[i] == "leaves" && c > prev[i] && (i == n || $1 < st[i + 1])) last[i] = $1
          if (kind[i] == "joins" && c > base[i] && !(i in first)) first[i] = $1
        } else { prev[i] = c; base[i] = c }
        if ($1 >= st[i]) prev[i] = c } }
    END { for (i = 1; i <= n; i++) printf "%sserver%d-%s:%dms", (i > 1 ? "," : ""), sv[i], kind[i],
          (kind[i] == "leaves" ? last[i] : first[i]) - st[i] }' "$EVENTS" "$SC_OUT/load.csv")
echo "requests=$requests rate=$rate misses=$misses cold_misses=$cold misses_after_moves=$moved_misses errors=$total errors_outside_windows=$outside moves=$moves" >"$SC_OUT/figures.txt"
sc_plot storage
ok=0
((requests > 0 && outside == 0)) && ok=1
sc_verdict "$ok" "$requests requests (~$rate/s) over 4 servers; 4 re-partitionings; client errors $total (all inside a move's window: $((total - outside))), misses $moved_misses after moves (+ $cold filling the cache before them); moves seen in the load after $moves"
