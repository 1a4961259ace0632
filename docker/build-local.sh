#!/usr/bin/env bash
# Registry-free build of the two images the compose topology uses (see README.md):
#
#   serval-translator:local  FROM scratch: the static binary built on this host, non-root
#                            (65532:65532). No base image, so nothing is pulled.
#   serval-base:local        the legacy programs and helpers (curl, iproute2, nftables,
#                            redis-server + redis-cli/redis-benchmark, python3, procps,
#                            ca-certificates), made from a `debootstrap --variant=minbase
#                            bookworm` rootfs and `docker import`ed. Built once and cached:
#                            skipped when the image exists, unless --rebuild.
#
# Usage: docker/build-local.sh [--rebuild] [--skip-base] [--skip-translator] [--no-cargo] [--dynamic]
#   --no-cargo: package the binary already in CARGO_TARGET_DIR (no cargo build).
# Environment: CARGO_TARGET_DIR (default: <repo>/target), DEBIAN_MIRROR (default: the first
# Debian mirror in this machine's apt sources, else http://deb.debian.org/debian).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
rebuild=0
do_base=1
do_translator=1
do_cargo=1
# --dynamic (or SERVAL_IMAGE_DYNAMIC=1): package the ordinary release binary
# (CARGO_TARGET_DIR/release, what `cargo test --workspace --release` already built) with the
# shared libraries ldd lists, instead of compiling the whole dependency graph again with
# crt-static. CI uses it to save that build; the image is the same FROM scratch, non-root.
dynamic=${SERVAL_IMAGE_DYNAMIC:-0}
for a in "$@"; do
    case $a in
    --rebuild) rebuild=1 ;;
    --skip-base) do_base=0 ;;
    --skip-translator) do_translator=0 ;;
    --no-cargo) do_cargo=0 ;;
    --dynamic) dynamic=1 ;;
    -h | --help)
        sed -n '2,17p' "$0"
        exit 0
        ;;
    *)
        echo "unknown argument: $a" >&2
        exit 2
        ;;
    esac
done

TRANSLATOR_IMAGE=${TRANSLATOR_IMAGE:-serval-translator:local}
BASE_IMAGE=${BASE_IMAGE:-serval-base:local}
# The binary is built for an explicit --target so RUSTFLAGS (crt-static) reach only the
# binary, not build scripts and proc macros (which must stay dynamic to be loaded).
TARGET=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}

work=$(mktemp -d /tmp/serval-build-local.XXXXXX)
cleanup() {
    # A debootstrap rootfs may hold mounts (proc, sys) if it was interrupted.
    if [[ -d $work/rootfs ]]; then
        for m in proc sys dev/pts dev; do
            if mountpoint -q "$work/rootfs/$m" 2>/dev/null; then umount -l "$work/rootfs/$m" || true; fi
        done
    fi
    rm -rf "$work"
}
trap cleanup EXIT

t_all=$SECONDS
timing() { printf 'TIMING %-32s %4ss\n' "$1" "$2"; }

# ---------------------------------------------------------------- serval-translator:local
if ((do_translator)); then
    t0=$SECONDS
    echo "== serval-translator (dynamic=$dynamic, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    mkdir -p "$work/ctx/rootfs"
    if ((dynamic)); then
        if ((do_cargo)); then
            (cd "$repo" && cargo build -p translator --release --bin serval-translator)
        fi
        bin=$CARGO_TARGET_DIR/release/serval-translator
        timing "cargo build (dynamic)" $((SECONDS - t0))
        # The loader and every library ldd resolves, at the same paths in the image.
        mapfile -t libs < <(ldd "$bin" | grep -Eo '/[^ ]+' | sort -u)
        for lib in "${libs[@]}"; do
            mkdir -p "$work/ctx/rootfs$(dirname "$lib")"
            cp -L "$lib" "$work/ctx/rootfs$lib"
        done
        echo "shared libraries packaged: ${libs[*]}"
    else
        # RUSTFLAGS replaces the rustflags of .cargo/config.toml, so its target-cpu is
        # repeated here (x86-64-v2: the project's baseline, see that file).
        if ((do_cargo)); then
            (cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static -C target-cpu=x86-64-v2" \
                cargo build -p translator --release --target "$TARGET" --bin serval-translator)
        fi
        bin=$CARGO_TARGET_DIR/$TARGET/release/serval-translator
        timing "cargo build (static)" $((SECONDS - t0))

        # Static or nothing: a FROM-scratch image has no loader and no libc.
        desc=$(file -b "$bin")
        echo "file: $desc"
        if ! grep -Eq 'static(ally|-pie) linked' <<<"$desc"; then
            echo "FAIL: $bin is not statically linked" >&2
            exit 1
        fi
        # glibc's ldd says "not a dynamic executable" (static) or "statically linked"
        # (static-pie), and lists libraries otherwise.
        lddout=$(ldd "$bin" 2>&1 || true)
        if ! grep -Eq 'not a dynamic executable|statically linked' <<<"$lddout"; then
            echo "FAIL: ldd finds shared libraries in $bin:" >&2
            echo "$lddout" >&2
            exit 1
        fi
        echo "ldd: ${lddout//[$'\t\n']/} (good)"
    fi

    t0=$SECONDS
    cp "$bin" "$work/ctx/rootfs/serval-translator"
    strip --strip-debug "$work/ctx/rootfs/serval-translator" 2>/dev/null || true
    cp "$here/Dockerfile.local" "$work/ctx/Dockerfile"
    # The legacy builder: this engine has no BuildKit/buildx, and FROM scratch pulls nothing.
    DOCKER_BUILDKIT=0 docker build -q -t "$TRANSLATOR_IMAGE" "$work/ctx" >/dev/null 2> >(grep -v -e DEPRECATED -e 'BuildKit is currently disabled' -e 'environment-variable' >&2)
    docker run --rm "$TRANSLATOR_IMAGE" --version >/dev/null 2>&1 ||
        docker run --rm "$TRANSLATOR_IMAGE" --help >/dev/null
    echo "image $TRANSLATOR_IMAGE: $(docker image inspect -f '{{.Size}}' "$TRANSLATOR_IMAGE") bytes, user $(docker image inspect -f '{{.Config.User}}' "$TRANSLATOR_IMAGE")"
    timing "image $TRANSLATOR_IMAGE" $((SECONDS - t0))
fi

# ---------------------------------------------------------------- serval-base:local
# The first Debian mirror (URI ending in /debian) of this machine's apt sources, one-line
# (sources.list) or deb822 (*.sources) format.
debian_mirror() {
    local f uri
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        uri=$(grep -Eo '(https?|ftp)://[^ ]*/debian/?( |$)' "$f" 2>/dev/null | head -n1 | tr -d ' ' || true)
        if [[ -n $uri ]]; then
            echo "${uri%/}"
            return
        fi
    done
    echo http://deb.debian.org/debian
}

if ((do_base)); then
    if ((!rebuild)) && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        echo "== $BASE_IMAGE exists (cached; --rebuild to make it again)"
    else
        t0=$SECONDS
        command -v debootstrap >/dev/null || {
            echo "debootstrap is missing: apt-get install debootstrap" >&2
            exit 1
        }
        mirror=${DEBIAN_MIRROR:-$(debian_mirror)}
        pkgs=curl,iproute2,nftables,redis-server,redis-tools,python3,procps,ca-certificates,conntrack
        echo "== $BASE_IMAGE: debootstrap --variant=minbase bookworm from $mirror"
        debootstrap --variant=minbase --include="$pkgs" bookworm "$work/rootfs" "$mirror" \
            >"$work/debootstrap.log" 2>&1 || {
            tail -n 30 "$work/debootstrap.log" >&2
            exit 1
        }
        # Smaller image: no package lists, caches, docs or man pages.
        rm -rf "$work/rootfs"/var/lib/apt/lists/* "$work/rootfs"/var/cache/apt/*.bin \
            "$work/rootfs"/var/cache/apt/archives/*.deb "$work/rootfs"/usr/share/doc/* \
            "$work/rootfs"/usr/share/man/* "$work/rootfs"/usr/share/locale/*
        timing "debootstrap" $((SECONDS - t0))
        t0=$SECONDS
        tar -C "$work/rootfs" --numeric-owner -c . |
            docker import \
                --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
                --change 'CMD ["bash"]' \
                --message "debootstrap --variant=minbase bookworm + $pkgs" \
                - "$BASE_IMAGE" >/dev/null
        for c in curl ip nft redis-server redis-cli redis-benchmark python3 ps sha256sum; do
            docker run --rm "$BASE_IMAGE" sh -c "command -v $c >/dev/null" ||
                { echo "FAIL: $c missing in $BASE_IMAGE" >&2; exit 1; }
        done
        echo "image $BASE_IMAGE: $(docker image inspect -f '{{.Size}}' "$BASE_IMAGE") bytes"
        timing "docker import $BASE_IMAGE" $((SECONDS - t0))
    fi
fi
timing "build-local.sh total" $((SECONDS - t_all))
