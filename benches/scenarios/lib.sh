# Shared by the case-study scenarios (sourced, not run). Each scenario builds its own network
# namespaces (names "sc<pid>-<role>", so two runs never collide), starts real processes in
# them, and removes everything on exit, whatever happened (trap). Every wait is a bounded
# poll; every process started here is remembered by pid and only those are stopped.
#
# Environment:
#   SERVAL_TRANSLATOR   translator binary (default: built with cargo into the target dir)
#   SCENARIO_LOAD       load generator (default: built with cargo, benches/src/bin/scenario_load.rs)
#   CARGO_TARGET_DIR    where cargo builds (default: <repo>/target)
#   SCENARIO_OUT        results folder (default: <repo>/benches/scenarios/results)
#   SCENARIO_SHORT=1    the short version (seconds), as .ci/scenarios-check runs it

set -euo pipefail

SC_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SC_DIR="$SC_REPO/benches/scenarios"
# shellcheck disable=SC2034 # read by the scenarios
SC_SHORT=${SCENARIO_SHORT:-0}
SC_TAG="sc$$"
SC_NS=()
SC_PIDS=()
SC_TMP=$(mktemp -d "/tmp/${SC_TAG}.XXXXXX")
# Registration key shared by the routers and the server translators of a scenario.
export SC_KEY=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
export NO_COLOR=1

sc_log() { printf '[%s %6.1fs] %s\n' "${SC_NAME:-scenario}" "$(sc_elapsed_s)" "$*" >&2; }
sc_die() {
    sc_log "ERROR: $*"
    exit 1
}

# Milliseconds since the epoch; seconds since the scenario started.
sc_now_ms() { date +%s%3N; }
SC_T0=$(sc_now_ms)
sc_elapsed_s() { awk -v a="$(sc_now_ms)" -v b="$SC_T0" 'BEGIN { printf "%.1f", (a - b) / 1000 }'; }

sc_cleanup() {
    local rc=$?
    set +e
    local pid
    for pid in "${SC_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    # Give them a moment (bounded), then make sure.
    local i
    for i in $(seq 1 20); do
        local alive=0
        for pid in "${SC_PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${SC_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null
    done
    local ns
    for ns in "${SC_NS[@]}"; do
        # Anything left inside a namespace this scenario made was started by it.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null
        done
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$SC_TMP"
    exit "$rc"
}
trap sc_cleanup EXIT
trap 'exit 130' INT TERM

# Needs root: namespaces, veth, nftables.
[[ $(id -u) == 0 ]] || sc_die "needs root (network namespaces, veth pairs, nftables)"

# Installs what the scenarios need (Debian packages) when missing.
sc_tools() {
    local need=()
    command -v ip >/dev/null || need+=(iproute2)
    command -v nft >/dev/null || need+=(nftables)
    command -v tc >/dev/null || need+=(iproute2)
    command -v curl >/dev/null || need+=(curl)
    [[ -x /usr/bin/memcached ]] || need+=(memcached)
    [[ -x /usr/bin/python3 ]] || need+=(python3)
    /usr/bin/python3 -c 'import matplotlib' 2>/dev/null || need+=(python3-matplotlib)
    if ((${#need[@]})); then
        sc_log "installing ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
}

# The binaries: given, or built once (release) into the target dir.
sc_binaries() {
    local target=${CARGO_TARGET_DIR:-$SC_REPO/target}
    if [[ -z ${SERVAL_TRANSLATOR:-} ]]; then
        SERVAL_TRANSLATOR=$target/release/serval-translator
        if [[ ${SCENARIO_NO_BUILD:-0} != 1 ]]; then
            (cd "$SC_REPO" && cargo build -q --release -p translator) || sc_die "building the translator failed"
        fi
    fi
    if [[ -z ${SCENARIO_LOAD:-} ]]; then
        SCENARIO_LOAD=$target/release/scenario_load
        if [[ ${SCENARIO_NO_BUILD:-0} != 1 ]]; then
            (cd "$SC_REPO" && cargo build -q --release -p serval-benches --bin scenario_load) ||
                sc_die "building the load generator failed"
        fi
    fi
    [[ -x $SERVAL_TRANSLATOR ]] || sc_die "no translator at $SERVAL_TRANSLATOR"
    [[ -x $SCENARIO_LOAD ]] || sc_die "no load generator at $SCENARIO_LOAD"
    export SERVAL_TRANSLATOR SCENARIO_LOAD
}

# The results folder of this scenario: $SCENARIO_OUT/<name>.
sc_results() {
    SC_OUT=${SCENARIO_OUT:-$SC_DIR/results}/$SC_NAME
    rm -rf "$SC_OUT"
    mkdir -p "$SC_OUT/logs"
}

# ns ROLE: makes namespace sc<pid>-ROLE (loopback up); its name is "$SC_TAG-ROLE".
sc_ns() {
    local ns="$SC_TAG-$1"
    ip netns add "$ns"
    SC_NS+=("$ns")
    ip -n "$ns" link set dev lo up
}
sc_nsname() { printf '%s-%s' "$SC_TAG" "$1"; }
# in ROLE CMD...: runs CMD inside the namespace.
sc_in() {
    local ns
    ns=$(sc_nsname "$1")
    shift
    ip netns exec "$ns" "$@"
}

# veth ROLE_A IF_A ADDR_A ROLE_B IF_B ADDR_B: a veth pair, both ends up (ADDR may be "-").
sc_veth() {
    local a b
    a=$(sc_nsname "$1")
    b=$(sc_nsname "$4")
    ip -n "$a" link add name "$2" type veth peer name "$5" netns "$b"
    [[ $3 == - ]] || ip -n "$a" addr add "$3" dev "$2"
    [[ $6 == - ]] || ip -n "$b" addr add "$6" dev "$5"
    ip -n "$a" link set dev "$2" up
    ip -n "$b" link set dev "$5" up
}

# bridge ROLE NAME [ADDR]: a bridge inside the namespace.
sc_bridge() {
    local ns
    ns=$(sc_nsname "$1")
    ip -n "$ns" link add name "$2" type bridge
    [[ -z ${3:-} ]] || ip -n "$ns" addr add "$3" dev "$2"
    ip -n "$ns" link set dev "$2" up
}

# port ROLE IF ADDR HUB BRIDGE: ROLE joins HUB's bridge through a veth pair.
SC_PORTS=0
sc_port() {
    SC_PORTS=$((SC_PORTS + 1))
    local peer="p${SC_PORTS}h"
    sc_veth "$1" "$2" "$3" "$4" "$peer" -
    ip -n "$(sc_nsname "$4")" link set dev "$peer" master "$5"
}

# start NAME ROLE CMD...: runs CMD in the namespace in the background, stdout and stderr to
# logs/NAME.log; sets SC_PID (the process itself: `ip netns exec` execs it).
sc_start() {
    local name=$1 role=$2
    shift 2
    ip netns exec "$(sc_nsname "$role")" "$@" >"$SC_OUT/logs/$name.log" 2>&1 &
    SC_PID=$!
    SC_PIDS+=("$SC_PID")
}

# wait_log NAME PATTERN [COUNT] [SECONDS]: until logs/NAME.log has COUNT lines matching
# PATTERN (grep -E), polled every 50 ms for at most SECONDS (default 20).
sc_wait_log() {
    local file="$SC_OUT/logs/$1.log" pat=$2 count=${3:-1} limit=${4:-20}
    local i n
    for ((i = 0; i < limit * 20; i++)); do
        n=$(grep -cE -- "$pat" "$file" 2>/dev/null || true)
        ((${n:-0} >= count)) && return 0
        sleep 0.05
    done
    sc_die "$1: no $count line(s) matching '$pat' within ${limit}s (see $file)"
}

# wait_exit PID [SECONDS]: until the process is gone (bounded).
sc_wait_exit() {
    local i
    for ((i = 0; i < ${2:-20} * 20; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.05
    done
    sc_die "process $1 did not exit within ${2:-20}s"
}

# wait_tcp ROLE HOST PORT: until something listens there (bounded, 10 s).
sc_wait_tcp() {
    local i
    for ((i = 0; i < 200; i++)); do
        sc_in "$1" bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null && return 0
        sleep 0.05
    done
    sc_die "nothing listens on $2:$3 in $1"
}

# translator NAME ROLE: runs the translator in ROLE's namespace on $SC_TMP/NAME.yaml (written
# by the caller); logs to logs/NAME.log. Sets SC_PID.
sc_translator() {
    sc_start "$1" "$2" env SERVAL_SC_KEY="$SC_KEY" "$SERVAL_TRANSLATOR" run --config "$SC_TMP/$1.yaml"
}

# sleep_until T0_MS SECONDS: sleeps until SECONDS after T0_MS.
sc_sleep_until() {
    local left
    left=$(awk -v t0="$1" -v s="$2" -v now="$(sc_now_ms)" 'BEGIN { d = (t0 + s * 1000 - now) / 1000; if (d < 0) d = 0; printf "%.3f", d }')
    sleep "$left"
}

# ms since T0_MS.
sc_since() { echo $(($(sc_now_ms) - $1)); }

# The verdict line, and the exit status.
sc_verdict() {
    local ok=$1
    shift
    if [[ $ok == 1 ]]; then
        echo "PASS $SC_NAME: $*" | tee "$SC_OUT/verdict.txt"
    else
        echo "FAIL $SC_NAME: $*" | tee "$SC_OUT/verdict.txt"
        exit 1
    fi
}

# plot KIND: the PNG of this scenario (plot.py, Debian's python3 with matplotlib).
sc_plot() {
    /usr/bin/python3 "$SC_DIR/plot.py" "$1" "$SC_OUT" || sc_log "plot failed (results are in $SC_OUT)"
}

# gap_near GAPS_CSV T_MS: the longest pause of a download (scenario_load --gaps) that began
# between 0.2 s before and 2 s after T_MS, as "<length ms> <start ms>" ("0 -" if none).
sc_gap_near() {
    awk -F, -v t="$2" 'NR > 1 && $1 >= t - 200 && $1 <= t + 2000 && $2 > g { g = $2; at = $1 }
        END { if (g) print g, at; else print 0, "-" }' "$1" 2>/dev/null || echo "0 -"
}

# gap_elsewhere GAPS_CSV T_MS: the longest pause outside that window (the run's ordinary
# jitter, to compare with), in ms (0 if none).
sc_gap_elsewhere() {
    awk -F, -v t="$2" 'NR > 1 && ($1 < t - 200 || $1 > t + 2000) && $2 > g { g = $2 }
        END { print g + 0 }' "$1" 2>/dev/null || echo 0
}

# The download scenarios' (3-5) common set-up: LEN random bytes served by python's
# http.server on 127.0.0.1:8000 in srv (SHA set to their hash), a router, a server
# translator in front of it (service `name:dl.case`) and a client translator with listener
# 127.0.0.1:8080, started in that order, each once it is ready. Arguments: the `serval:`
# flow mappings of the router, the server and the client, the router's `router:` section,
# and the server's `admin:` section. The files are checked first (check-config), so a
# translator without a setting a scenario needs stops it with the reason.
sc_download_setup() {
    local router_serval=$1 server_serval=$2 client_serval=$3 router=$4 server_admin=$5
    mkdir -p "$SC_TMP/www"
    echo fresh >"$SC_TMP/www/who"
    head -c "$LEN" /dev/urandom >"$SC_TMP/www/data.bin"
    # shellcheck disable=SC2034 # read by the scenario scripts
    SHA=$(sha256sum "$SC_TMP/www/data.bin" | cut -d' ' -f1)
    printf 'serval: %s\nadmin: {listen: ~}\nrouter: %s\n' "$router_serval" "$router" >"$SC_TMP/router.yaml"
    printf 'serval: %s\nadmin: %s\nserver:\n  services:\n    - {name: dl, prefix: "name:dl.case", backends: [{address: "127.0.0.1:8000"}]}\n' \
        "$server_serval" "$server_admin" >"$SC_TMP/server.yaml"
    printf 'serval: %s\nadmin: {listen: ~}\nclient:\n  listeners:\n    - {name: dl, listen: "127.0.0.1:8080", service: "name:dl.case"}\n' \
        "$client_serval" >"$SC_TMP/client.yaml"
    local p
    for p in router server client; do
        SERVAL_SC_KEY=$SC_KEY "$SERVAL_TRANSLATOR" check-config "$SC_TMP/$p.yaml" >/dev/null 2>"$SC_OUT/logs/check-config.log" ||
            sc_die "this translator refuses the $p policy: $(head -c 300 "$SC_OUT/logs/check-config.log")"
    done
    sc_translator router rtr
    sc_wait_log router "translator started"
    sc_start http srv /usr/bin/python3 -m http.server 8000 --bind 127.0.0.1 --directory "$SC_TMP/www"
    sc_wait_tcp srv 127.0.0.1 8000
    sc_translator server srv
    sc_wait_log server "registered with router"
    sc_translator client cli
    sc_wait_log client "translator started"
}

# The end of a download scenario (3, 4) whose event happened at T ms ($1): waits for the
# load generator ($LOAD_PID), then tries one new connection. Sets load_ok (the download
# completed hash-equal), fresh (the new connection was served), summary (the load
# generator's SUMMARY line), gap/gap_at (the pause nearest the event) and max_gap.
sc_download_finish() {
    local t=$1
    sc_wait_exit "$LOAD_PID" $((SECONDS_TOTAL * 4 + 90))
    load_ok=1
    wait "$LOAD_PID" || load_ok=0
    cat "$SC_OUT/logs/load.log"
    # A new connection after the event: resolved by the router, which now knows the new
    # address.
    fresh=0
    [[ $(sc_in cli curl -sf --max-time 10 http://127.0.0.1:8080/who 2>>"$SC_OUT/logs/fresh.log") == fresh ]] && fresh=1
    summary=$(grep '^SUMMARY' "$SC_OUT/logs/load.log" || echo "SUMMARY ok=false")
    read -r gap gap_at < <(sc_gap_near "$SC_OUT/gaps.csv" "$t")
    max_gap=$(sed -nE 's/.*max_gap_ms=([0-9]+).*/\1/p' <<<"$summary")
}

# "<word> N ms at T ms" for the pause sc_download_finish found, or that there was none of
# 20 ms or more near the event.
sc_pause_text() {
    if [[ $gap == 0 ]]; then echo "no pause of 20 ms or more"; else echo "$1 ${gap} ms at ${gap_at} ms"; fi
}
