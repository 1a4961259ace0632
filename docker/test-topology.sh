#!/usr/bin/env bash
# Brings the compose topology up (compose.yaml, README.md) under a unique project name and
# subnet plan, checks it with real legacy programs, and always tears it down.
#
#   readyz    every translator's GET /readyz answers 200 (bounded wait)
#   download  curl of a large file through the client translator: SHA-256 equals the server's
#   redis     SET/GET round trips (small and 1 MiB values) and a bounded redis-benchmark
#   balance   many short HTTP requests: both replicas (X-Replica / /whoami) serve some
#   drain     docker stop server-http-1 (SIGTERM: drain): it exits 0, and every new request
#             succeeds and is served by http-2
#   move      a rate-limited download while the client moves from lan1/nat1 to lan2/nat2:
#             it completes with the right SHA-256 over one legacy TCP connection
#
# One PASS/FAIL line per check; exit 1 if any failed. Every wait is bounded.
#
# Usage: docker/test-topology.sh [--no-build]
# Environment: SIZE_MB (default 50), CARGO_TARGET_DIR (passed to build-local.sh),
#              KEEP_LOGS=1 keeps the containers' logs even when everything passed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=1
for a in "$@"; do
    case $a in
    --no-build) build=0 ;;
    -h | --help)
        sed -n '2,18p' "$0"
        exit 0
        ;;
    *)
        echo "unknown argument: $a" >&2
        exit 2
        ;;
    esac
done

SIZE_MB=${SIZE_MB:-50}
# The move download: long enough (SIZE_MB / MOVE_RATE_MB seconds) to move mid-transfer.
MOVE_RATE_MB=${MOVE_RATE_MB:-5}
t_start=$SECONDS
failures=0
summary=()
pass() {
    echo "PASS $1${2:+ ($2)}"
    summary+=("PASS $1")
}
fail() {
    echo "FAIL $1: $2"
    summary+=("FAIL $1")
    failures=$((failures + 1))
}
note() { printf '%s [%3ss] %s\n' '--' $((SECONDS - t_start)) "$*"; }

if command -v docker-compose >/dev/null 2>&1; then
    DC=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    DC=(docker compose)
else
    echo "neither docker-compose nor docker compose is installed" >&2
    exit 1
fi

# ---------------------------------------------------------------- images and inputs
if ((build)); then
    note "building images (build-local.sh)"
    "$here/build-local.sh"
fi
TRANSLATOR_IMAGE=${SERVAL_TRANSLATOR_IMAGE:-serval-translator:local}
for img in "$TRANSLATOR_IMAGE" "${SERVAL_BASE_IMAGE:-serval-base:local}"; do
    docker image inspect "$img" >/dev/null 2>&1 || {
        echo "image $img is missing: run docker/build-local.sh" >&2
        exit 1
    }
done

# The registration key shared by the router and the server translators. A TEST key made on
# this machine (git-ignored), never a real secret; readable by the translators' user 65532.
key=$here/policies/shared.key
if [[ ! -s $key ]]; then
    od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$key"
    echo >>"$key"
fi
chmod 0644 "$key"

P=serval-topo-$$-$RANDOM
work=$(mktemp -d "/tmp/$P.XXXXXX")
chmod 0755 "$work"
compose() { "${DC[@]}" -p "$P" -f "$here/compose.yaml" "$@"; }

cleanup() {
    local rc=$?
    set +e
    if ((failures)) || [[ ${KEEP_LOGS:-0} == 1 ]] || ((rc)); then
        compose logs --no-color >"/tmp/$P.log" 2>&1 && echo "container logs: /tmp/$P.log"
    fi
    note "tearing down $P"
    timeout 120 "${DC[@]}" -p "$P" -f "$here/compose.yaml" down -v --remove-orphans -t 20 >/dev/null 2>&1
    # Anything compose did not remove (e.g. after an interrupted `up`).
    local ids
    mapfile -t ids < <(docker ps -aq --filter "label=com.docker.compose.project=$P")
    ((${#ids[@]})) && docker rm -f "${ids[@]}" >/dev/null 2>&1
    mapfile -t ids < <(docker network ls -q --filter "label=com.docker.compose.project=$P")
    ((${#ids[@]})) && docker network rm "${ids[@]}" >/dev/null 2>&1
    rm -rf "$work"
    note "total runtime $((SECONDS - t_start))s"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Every policy must pass check-config, in the image that runs it (key files included).
for f in "$here"/policies/*.yaml; do
    name=$(basename "$f")
    if out=$(docker run --rm -v "$here/policies:/etc/serval:ro" "$TRANSLATOR_IMAGE" \
        check-config --summary "/etc/serval/$name" 2>&1); then
        pass "check-config $name"
    else
        fail "check-config $name" "$(tail -n 5 <<<"$out")"
    fi
done
# Address following is a policy field; an older binary's effective policy lacks it.
follow=unknown
if eff=$(docker run --rm -v "$here/policies:/etc/serval:ro" "$TRANSLATOR_IMAGE" \
    check-config /etc/serval/client.yaml 2>/dev/null); then
    if grep -q 'follow_address' <<<"$eff"; then follow=yes; else follow=no; fi
fi

# A subnet plan (10.X.0.0/16 prefixes) no Docker network of this host uses.
mapfile -t nets < <(docker network ls -q)
used=$(docker network inspect "${nets[@]}" -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' 2>/dev/null || true)
SERVAL_NET=
for _ in $(seq 1 50); do
    x=$((100 + RANDOM % 150))
    if ! grep -q "10\.$x\." <<<"$used"; then
        SERVAL_NET=10.$x
        break
    fi
done
[[ -n $SERVAL_NET ]] || {
    echo "no free 10.X subnet plan found" >&2
    exit 1
}
export SERVAL_NET

# The served data: one file, mounted read-only into both replicas.
export SERVAL_WWW=$work/www
mkdir -p "$SERVAL_WWW"
chmod 0755 "$SERVAL_WWW"
head -c "$((SIZE_MB << 20))" /dev/urandom >"$SERVAL_WWW/big.bin"
chmod 0644 "$SERVAL_WWW/big.bin"
big_sha=$(sha256sum "$SERVAL_WWW/big.bin" | cut -d' ' -f1)
big_size=$((SIZE_MB << 20))

# ---------------------------------------------------------------- up
note "project $P, subnets $SERVAL_NET.{11,12,20,30}.0/24, data ${SIZE_MB} MiB sha256 ${big_sha:0:16}…"
t_up=$SECONDS
if ! timeout 180 "${DC[@]}" -p "$P" -f "$here/compose.yaml" up -d >"$work/up.log" 2>&1; then
    cat "$work/up.log" >&2
    fail "up" "compose up failed"
    exit 1
fi
note "compose up took $((SECONDS - t_up))s"

# Container ids by service, in one query (`compose ps -q` per service costs ~2 s each with
# docker-compose v1).
declare -A CID
while read -r id svc; do
    CID[$svc]=$id
done < <(docker ps -a --filter "label=com.docker.compose.project=$P" \
    --format '{{.ID}} {{.Label "com.docker.compose.service"}}')
for s in client client-net app router server-http-1 server-http-2 server-cache http-1 http-2 redis probe nat1 nat2; do
    [[ -n ${CID[$s]:-} ]] || {
        fail "up" "service $s has no container"
        exit 1
    }
done
dx() { docker exec "${CID[$1]}" "${@:2}"; }
# HTTP status of a translator's admin endpoint ("000": no answer). The client is reached on
# loopback from the app (same netns), the others from the probe on dc.
admin_code() {
    local svc=$1 path=$2
    if [[ $svc == client ]]; then
        dx app curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:9901$path" || true
    else
        dx probe curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$svc:9901$path" || true
    fi
}
# Polls `cmd...` once a second until it succeeds, at most $1 seconds.
wait_for() {
    local bound=$1
    shift
    local deadline=$((SECONDS + bound))
    while ((SECONDS < deadline)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    return 1
}

wait_for 60 dx client-net test -e /run/route-ready || fail "up" "client-net did not set the default route"
wait_for 60 dx nat1 test -e /run/nat-ready || fail "up" "nat1 not ready"
wait_for 60 dx nat2 test -e /run/nat-ready || fail "up" "nat2 not ready"
wait_for 60 dx http-1 curl -sf --max-time 2 http://127.0.0.1:8000/whoami || fail "up" "http-1 not serving"
wait_for 60 dx http-2 curl -sf --max-time 2 http://127.0.0.1:8000/whoami || fail "up" "http-2 not serving"
wait_for 60 dx redis redis-cli ping || fail "up" "redis not answering"

# ---------------------------------------------------------------- readyz
translators=(router server-http-1 server-http-2 server-cache client)
t0=$SECONDS
declare -A code
answered=0
deadline=$((SECONDS + 90))
while ((SECONDS < deadline)); do
    ready=0
    for t in "${translators[@]}"; do
        code[$t]=$(admin_code "$t" /readyz)
        [[ ${code[$t]} != 000 ]] && answered=1
        [[ ${code[$t]} == 200 ]] && ready=$((ready + 1))
    done
    ((ready == ${#translators[@]})) && break
    # No admin API at all after 20 s: not in this build; don't wait the full bound.
    ((!answered && SECONDS - t0 > 20)) && break
    sleep 1
done
states=$(for t in "${translators[@]}"; do printf '%s=%s ' "$t" "${code[$t]}"; done)
if ((ready == ${#translators[@]})); then
    pass "readyz" "all ${#translators[@]} translators 200 after $((SECONDS - t0))s"
elif ((!answered)); then
    fail "readyz" "no translator's admin API answers on :9901 (${states% }): the admin API (admin.listen) is not in this build of serval-translator"
else
    fail "readyz" "not all ready within 90s: ${states% }"
fi
# Whatever /readyz said: the service path must work before the checks (registrations done).
if ! wait_for 60 dx app curl -sf --max-time 5 http://127.0.0.1:8080/whoami; then
    fail "service path" "no answer through the client translator within 60s"
    for t in "${translators[@]}"; do
        echo "---- $t (last 15 log lines)"
        docker logs --tail 15 "${CID[$t]}" 2>&1
    done
    exit 1
fi
for t in "${translators[@]}"; do
    c=$(admin_code "$t" /metrics)
    if [[ $c != 200 ]] && ((answered)); then
        fail "metrics $t" "GET /metrics answered $c"
    fi
done
note "topology serving after $((SECONDS - t_up))s"

# ---------------------------------------------------------------- (a) large download
t0=$SECONDS
got=$(dx app sh -c 'curl -sS --fail --max-time 180 http://127.0.0.1:8080/big.bin | sha256sum' 2>&1 | cut -d' ' -f1) || true
dt=$((SECONDS - t0))
if [[ $got == "$big_sha" ]]; then
    pass "download" "${SIZE_MB} MiB, sha256 matches, ${dt}s"
else
    fail "download" "sha256 ${got:0:64} != ${big_sha} (${dt}s)"
fi

# ---------------------------------------------------------------- (b) redis round trips
r_small=$(dx app timeout 30 sh -c 'redis-cli -h 127.0.0.1 -p 6379 SET serval:k "hello through serval" >/dev/null && redis-cli -h 127.0.0.1 -p 6379 --raw GET serval:k' 2>&1) || true
# shellcheck disable=SC2016 # expanded by the container's shell
r_big=$(dx app timeout 60 sh -c '
    head -c 786432 /dev/urandom | base64 -w0 >/tmp/v
    redis-cli -h 127.0.0.1 -p 6379 -x SET serval:big </tmp/v >/dev/null
    redis-cli -h 127.0.0.1 -p 6379 --raw GET serval:big | head -c "$(stat -c %s /tmp/v)" | cmp -s - /tmp/v && echo same' 2>&1) || true
r_bench=$(dx app timeout 120 redis-benchmark -h 127.0.0.1 -p 6379 -n 2000 -c 4 -t set,get -q 2>&1 | tr '\r' '\n' | grep -E '^(SET|GET):' | grep 'requests per second' | tr '\n' ' ') || true
if [[ $r_small == "hello through serval" && $r_big == same && $r_bench == *SET:* && $r_bench == *GET:* ]]; then
    pass "redis" "SET/GET small and 1 MiB values; benchmark: ${r_bench% }"
else
    fail "redis" "small='$r_small' big='$r_big' bench='$r_bench'"
fi

# ---------------------------------------------------------------- (c) balancing
N_REQ=${N_REQ:-40}
who=$(dx app sh -c "for i in \$(seq $N_REQ); do curl -sS --max-time 15 http://127.0.0.1:8080/whoami || echo ERR; done" 2>&1) || true
n1=$(grep -c '^http-1$' <<<"$who" || true)
n2=$(grep -c '^http-2$' <<<"$who" || true)
nerr=$((N_REQ - n1 - n2))
if ((nerr == 0 && n1 > 0 && n2 > 0)); then
    pass "balance" "$N_REQ requests: http-1 $n1, http-2 $n2"
else
    fail "balance" "$N_REQ requests: http-1 $n1, http-2 $n2, failed $nerr"
fi

# ---------------------------------------------------------------- (d) drain replica 1
t0=$SECONDS
docker stop -t 30 "${CID[server-http-1]}" >/dev/null
stop_s=$((SECONDS - t0))
ec=$(docker inspect -f '{{.State.ExitCode}}' "${CID[server-http-1]}")
who=$(dx app sh -c "for i in \$(seq 20); do curl -sS --max-time 15 http://127.0.0.1:8080/whoami || echo ERR; done" 2>&1) || true
n1=$(grep -c '^http-1$' <<<"$who" || true)
n2=$(grep -c '^http-2$' <<<"$who" || true)
if ((ec == 0 && n2 == 20)); then
    pass "drain" "server-http-1 stopped in ${stop_s}s, exit 0; 20/20 new requests served by http-2"
else
    fail "drain" "server-http-1 exit code $ec after ${stop_s}s; of 20 new requests http-2 $n2, http-1 $n1, failed $((20 - n1 - n2))"
fi

# ---------------------------------------------------------------- (e) move the client
lan1_net=$(docker network ls -q --filter "label=com.docker.compose.project=$P" --filter "label=com.docker.compose.network=lan1")
lan2_net=$(docker network ls -q --filter "label=com.docker.compose.project=$P" --filter "label=com.docker.compose.network=lan2")
dx app rm -f /tmp/move.bin /tmp/move.out /tmp/move.rc
docker exec -d "${CID[app]}" sh -c "curl -sS --fail --max-time 120 --limit-rate ${MOVE_RATE_MB}M \
    -o /tmp/move.bin -w '%{num_connects} %{http_code} %{size_download}' \
    http://127.0.0.1:8080/big.bin >/tmp/move.out 2>/tmp/move.err; echo \$? >/tmp/move.rc"
size_of() { dx app stat -c %s /tmp/move.bin 2>/dev/null || echo 0; }
# Move once an eighth has arrived (a fixed point would be past the end of a small SIZE_MB).
started() { (($(size_of) >= big_size / 8)); }
move_ok=1
if ! wait_for 30 started; then
    move_ok=0
    fail "move" "the rate-limited download did not reach $((big_size / 8)) bytes within 30s ($(size_of) bytes)"
fi
if ((move_ok)); then
    at_move=$(size_of)
    move_time=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    t0=$SECONDS
    docker network connect --ip "$SERVAL_NET.12.10" "$lan2_net" "${CID[client]}"
    dx client-net ip route replace default via "$SERVAL_NET.12.2"
    docker network disconnect "$lan1_net" "${CID[client]}"
    note "client moved to lan2/nat2 at $((at_move >> 20)) MiB in $((SECONDS - t0))s (route: $(dx client-net ip -4 route show default | tr '\n' ' '))"
    wait_for 150 dx app test -s /tmp/move.rc || true
    rc=$(dx app cat /tmp/move.rc 2>/dev/null || echo none)
    out=$(dx app cat /tmp/move.out 2>/dev/null || true)
    err=$(dx app cat /tmp/move.err 2>/dev/null || true)
    got=$(dx app sha256sum /tmp/move.bin 2>/dev/null | cut -d' ' -f1) || true
    read -r connects http size <<<"${out:-x x x}"
    # New connections leave through nat2 too.
    after=$(dx app curl -sS --max-time 15 http://127.0.0.1:8080/whoami 2>&1) || true
    followed=$(docker logs --since "$move_time" "${CID[client]}" 2>&1 | grep -c 'host address changed' || true)
    if [[ $rc == 0 && $got == "$big_sha" && $connects == 1 && $at_move -lt $big_size && $after == http-2 ]]; then
        pass "move" "download continued across lan1/nat1 -> lan2/nat2 (moved at $((at_move >> 20)) MiB of $SIZE_MB), sha256 matches, 1 legacy TCP connection; new request after the move served; client logged ${followed} address change(s)"
    else
        why="curl rc=$rc connects=${connects} http=${http} bytes=${size} moved-at=${at_move} sha256 ${got:0:16}… want ${big_sha:0:16}…; request after the move: '${after}' ${err:+($err)}"
        if ((at_move >= big_size)); then
            fail "move" "$why — the download had finished before the move: raise SIZE_MB or lower MOVE_RATE_MB"
        elif [[ $follow != yes ]]; then
            fail "move" "$why — address following (serval.follow_address) is not in this build of the translator (its effective policy has no follow_address), so the client's flows cannot move with it yet"
        else
            fail "move" "$why — the client translator has serval.follow_address, yet the flow did not survive the move"
        fi
    fi
fi

# ---------------------------------------------------------------- summary
echo
echo "== summary ($P, $((SECONDS - t_start))s)"
printf '%s\n' "${summary[@]}"
if ((failures)); then
    echo "RESULT: FAIL ($failures failed)"
    exit 1
fi
echo "RESULT: PASS"
