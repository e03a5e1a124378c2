#!/usr/bin/env bash
# The torchserve-cpu image, built and run with podman or docker (whichever is present).
#
#   bash scripts/container.sh setup              install podman (Debian) when no engine is there
#   bash scripts/container.sh build [--standin]  build the image (tag: `tag` below)
#   bash scripts/container.sh run [ENGINE-RUN-ARGS...]
#                                                serve model_store/build on 127.0.0.1:8080/8082
#   bash scripts/container.sh test [PYTEST-ARGS...]
#                                                tests/e2e/test_container.py (builds if needed)
#   bash scripts/container.sh tag                the tag for these sources (content hash)
#   bash scripts/container.sh probe              can a container run here? (exit 0, or why not)
#   bash scripts/container.sh engine ARGS...     the engine itself, with this script's settings
#
# What is particular to the build machine stays here, never in the Dockerfile:
# - the base image: the Dockerfile's default (python:3.11-slim-bookworm) when it is there or
#   can be pulled; otherwise, or with --standin, a stand-in made from Debian packages
#   (debootstrap bookworm + python3, python3-venv, python-is-python3, ca-certificates: the
#   same Debian and Python 3.11), and the script says so;
# - pip's settings: a find-links folder holding the pinned torch wheel and a CA bundle
#   (pip's `cert`) are mounted into the build (podman) and named by build arguments;
# - podman on a machine without systemd: runc and cgroupfs through a containers.conf of
#   this script's (CONTAINERS_CONF), unless you set CONTAINERS_CONF yourself.
#
# Environment: TSCPU_CONTAINER_ENGINE (podman|docker), TSCPU_IMAGE (the tag to build/run),
# TSCPU_BASE_IMAGE, TSCPU_TORCH_SPEC (default torch==2.13.0), TSCPU_TORCH_INDEX_URL
# (default: pip's own settings when a find-links folder holds the wheel, else the CPU index),
# TSCPU_MODEL_STORE (for `run`, default model_store/build).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKERFILE="$REPO_DIR/config/container/Dockerfile"
IGNOREFILE="$REPO_DIR/config/container/Dockerfile.dockerignore"
STATE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/torchserve-cpu/container"
DEFAULT_BASE="python:3.11-slim-bookworm"
STANDIN_BASE="localhost/tscpu-standin-python:3.11-bookworm"
DEBIAN_IMAGE="localhost/tscpu-debian:bookworm"
TORCH_SPEC="${TSCPU_TORCH_SPEC:-torch==2.13.0}"
CPU_INDEX="https://download.pytorch.org/whl/cpu"

say() { echo "container: $*" >&2; }
die() { say "$*"; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

pick_engine() {
    if [ -n "${TSCPU_CONTAINER_ENGINE:-}" ]; then
        command -v "$TSCPU_CONTAINER_ENGINE" >/dev/null ||
            die "TSCPU_CONTAINER_ENGINE=$TSCPU_CONTAINER_ENGINE is not installed"
        echo "$TSCPU_CONTAINER_ENGINE"
    elif command -v podman >/dev/null; then
        echo podman
    elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        echo docker
    else
        return 1
    fi
}

# podman's defaults assume systemd and crun. Where systemd is not running (a container, a
# CI machine), use cgroupfs and, when installed, runc; and explicit nofile/nproc limits:
# podman's default raises them to 1048576, beyond the hard limit a sandboxed root may set
# (runc then fails: "error setting rlimit type 7: operation not permitted").
podman_conf() {
    if [ -n "${CONTAINERS_CONF:-}" ] || [ -d /run/systemd/system ]; then
        return
    fi
    local conf="$STATE_DIR/containers.conf" runtime=""
    command -v runc >/dev/null && runtime='runtime = "runc"'
    mkdir -p "$STATE_DIR"
    cat >"$conf.new" <<EOF
# written by scripts/container.sh: podman without systemd
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
$runtime
EOF
    mv "$conf.new" "$conf"
    export CONTAINERS_CONF="$conf"
}

ENGINE=""
engine_ready() {
    ENGINE="$(pick_engine)" || die "no container engine: install podman (bash scripts/container.sh setup) or docker"
    if [ "$ENGINE" = podman ]; then podman_conf; fi
}

cmd_setup() {
    # podman (with its recommends) and runc (crun refuses to start containers on some
    # kernels), iptables for published ports, debootstrap for the stand-in base; nothing
    # when docker is the engine or apt-get is missing
    local engine missing=() package
    engine="$(pick_engine)" || engine=""
    if [ "$engine" != docker ] && command -v apt-get >/dev/null; then
        for package in podman buildah runc iptables debootstrap; do
            dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
        done
        if [ "${#missing[@]}" -gt 0 ]; then
            say "installing ${missing[*]}"
            as_root apt-get update -qq
            DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" \
                >/dev/null
        fi
        engine=podman
    fi
    [ -n "$engine" ] || die "no container engine and no apt-get: install podman or docker"
    say "engine: $engine"
}

# The tag of the image built from these sources: a hash of every file that goes into it
# (the build context: the files Dockerfile.dockerignore lets in, less docs), the base and
# the torch pin. The folders left out here are the ones that file leaves out.
cmd_tag() {
    local hash
    hash="$(
        cd "$REPO_DIR"
        {
            git ls-files -z --cached --others --exclude-standard 2>/dev/null ||
                find . -path ./.git -prune -o -type f -print0
        } | tr '\0' '\n' | sed 's#^\./##' |
            grep -v -E '^(tests|benchmarks|scripts|config/kubernetes|\.ci|\.git)/|\.md$' |
            grep -v -E '^(\.venv|model_store/build|benchmarks/results)/' | LC_ALL=C sort |
            while IFS= read -r file; do
                [ -f "$file" ] && printf '%s  %s\n' "$(sha256sum <"$file" | cut -c1-64)" "$file"
            done
        echo "base=${TSCPU_BASE_IMAGE:-} torch=$TORCH_SPEC"
    )"
    hash="$(printf '%s' "$hash" | sha256sum | cut -c1-12)"
    echo "${TSCPU_IMAGE:-localhost/torchserve-cpu:src-$hash}"
}

# A container started for real, with no image needed (podman: a rootfs of /bin/true and
# its libraries); docker: its daemon answers.
cmd_probe() {
    engine_ready
    if [ "$ENGINE" = docker ]; then
        docker info >/dev/null
        return
    fi
    local rootfs status=0 library
    rootfs="$(mktemp -d "${TMPDIR:-/tmp}/tscpu-probe.XXXXXX")"
    mkdir -p "$rootfs/bin"
    cp "$(type -P true)" "$rootfs/bin/true"
    for library in $(ldd "$(type -P true)" | grep -o '/[^ ]*'); do
        mkdir -p "$rootfs$(dirname "$library")"
        cp "$library" "$rootfs$library"
    done
    podman run --rm --network none --rootfs "$rootfs" /bin/true || status=$?
    rm -rf "$rootfs"
    return "$status"
}

image_exists() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

# The Debian mirror apt already uses here (deb822 or one-line sources), else Debian's own.
debian_mirror() {
    local mirror
    mirror="$(grep -h -E '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list \
        2>/dev/null | grep -o -E 'https?://[^ ]*/debian/?( |$)' | head -1 | tr -d ' ')" || true
    echo "${mirror:-http://deb.debian.org/debian}"
}

# A stand-in for python:3.11-slim-bookworm from Debian packages: bookworm's python3 is 3.11.
make_standin_base() {
    if image_exists "$STANDIN_BASE"; then
        return
    fi
    [ "$ENGINE" = podman ] || die "the stand-in base needs podman (docker: pull $DEFAULT_BASE)"
    if ! image_exists "$DEBIAN_IMAGE"; then
        command -v debootstrap >/dev/null || die "debootstrap is missing: bash scripts/container.sh setup"
        local rootfs mirror
        rootfs="$(mktemp -d "${TMPDIR:-/tmp}/tscpu-rootfs.XXXXXX")"
        mirror="$(debian_mirror)"
        say "debootstrap bookworm from $mirror (about a minute)"
        if ! as_root debootstrap --variant=minbase bookworm "$rootfs" "$mirror" \
                >"$STATE_DIR/debootstrap.log" 2>&1; then
            tail -20 "$STATE_DIR/debootstrap.log" >&2
            as_root rm -rf "$rootfs"
            die "debootstrap failed (log: $STATE_DIR/debootstrap.log)"
        fi
        as_root rm -rf "$rootfs/var/cache/apt/archives/"*.deb
        as_root tar -C "$rootfs" -c . | podman import --quiet - "$DEBIAN_IMAGE" >/dev/null
        as_root rm -rf "$rootfs"
    fi
    local context
    context="$(mktemp -d "${TMPDIR:-/tmp}/tscpu-standin.XXXXXX")"
    cat >"$context/Containerfile" <<EOF
FROM $DEBIAN_IMAGE
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
        python3 python3-venv python-is-python3 ca-certificates \\
    && rm -rf /var/lib/apt/lists/* \\
    && python --version
ENV LANG=C.UTF-8
CMD ["python3"]
EOF
    podman build --quiet --network host --pull=never -t "$STANDIN_BASE" "$context" >/dev/null
    rm -rf "$context"
}

# The base image: TSCPU_BASE_IMAGE, else the Dockerfile's default when present or pullable,
# else the stand-in.
choose_base() {
    local standin="$1"
    if [ -n "${TSCPU_BASE_IMAGE:-}" ]; then
        echo "$TSCPU_BASE_IMAGE"
        return
    fi
    if [ "$standin" = no ]; then
        if image_exists "$DEFAULT_BASE" || timeout 300 "$ENGINE" pull "$DEFAULT_BASE" >&2; then
            echo "$DEFAULT_BASE"
            return
        fi
        say "$DEFAULT_BASE cannot be pulled here"
    fi
    say "base: $STANDIN_BASE, a stand-in for $DEFAULT_BASE made from Debian bookworm packages"
    make_standin_base
    echo "$STANDIN_BASE"
}

# pip's settings on this machine that the build needs: `key value` lines from pip config.
pip_setting() {
    local python
    python="$(command -v python3 || true)"
    [ -n "$python" ] || return 0
    local env_name="PIP_${1^^}"
    env_name="${env_name//-/_}"
    if [ -n "${!env_name:-}" ]; then
        echo "${!env_name}"
        return
    fi
    "$python" -m pip config list 2>/dev/null | sed -n "s/^[a-z:.]*\.$1='\(.*\)'$/\1/p" | head -1
}

cmd_build() {
    local standin=no quiet=no
    while [ $# -gt 0 ]; do
        case "$1" in
            --standin) standin=yes ;;
            --quiet) quiet=yes ;;
            *) die "build: unknown option $1" ;;
        esac
        shift
    done
    engine_ready
    mkdir -p "$STATE_DIR"
    local tag base
    tag="$(cmd_tag)"
    if image_exists "$tag"; then
        say "$tag is built (sources unchanged)"
        echo "$tag"
        return
    fi
    base="$(choose_base "$standin")"
    local args=(--build-arg "BASE_IMAGE=$base" --build-arg "TORCH_SPEC=$TORCH_SPEC")
    local find_links cert index="${TSCPU_TORCH_INDEX_URL-}"
    find_links="$(pip_setting find-links)"
    cert="$(pip_setting cert)"
    if [ "$ENGINE" = podman ]; then
        args+=(--network host --format docker --pull=never)
        # a local wheel folder holding the pinned torch: mount it, let pip take torch there
        local wheel_version="${TORCH_SPEC#torch==}"
        if [ -d "$find_links" ] && compgen -G "$find_links/torch-${wheel_version}*.whl" >/dev/null; then
            args+=(-v "$find_links:/run/host-wheels:ro" --build-arg PIP_FIND_LINKS=/run/host-wheels)
            index="${TSCPU_TORCH_INDEX_URL-}"
            say "torch from $find_links (mounted into the build)"
        else
            index="${TSCPU_TORCH_INDEX_URL-$CPU_INDEX}"
        fi
        if [ -f "$cert" ]; then
            args+=(-v "$(dirname "$cert"):/run/host-ca:ro"
                   --build-arg "PIP_CERT=/run/host-ca/$(basename "$cert")")
        fi
        # podman reads <Containerfile>.dockerignore only in newer releases: name it
        args+=(--ignorefile "$IGNOREFILE")
    else
        index="${TSCPU_TORCH_INDEX_URL-$CPU_INDEX}"
        [ -f "$cert" ] && say "note: pip's cert $cert is not passed to docker builds"
    fi
    args+=(--build-arg "TORCH_INDEX_URL=$index")
    say "building $tag with $ENGINE (base $base)"
    local start=$SECONDS log="$STATE_DIR/build.log"
    if [ "$quiet" = yes ]; then
        "$ENGINE" build "${args[@]}" -f "$DOCKERFILE" -t "$tag" "$REPO_DIR" >"$log" 2>&1 || {
            tail -40 "$log" >&2
            die "build failed (log: $log)"
        }
    else
        "$ENGINE" build "${args[@]}" -f "$DOCKERFILE" -t "$tag" "$REPO_DIR" >&2
    fi
    say "built $tag in $((SECONDS - start)) s"
    prune_older "$tag"
    echo "$tag"
}

# Images of earlier sources: the src-* tags other than `keep`, and the untagged builder
# stages but the newest (the layer cache of the next build). Nothing else is touched.
prune_older() {
    local keep="$1" image
    "$ENGINE" images --format '{{.Repository}}:{{.Tag}}' |
        grep -E '^localhost/torchserve-cpu:src-[0-9a-f]+$' | grep -v -x -F "$keep" |
        while IFS= read -r image; do
            "$ENGINE" rmi "$image" >/dev/null 2>&1 || true
        done || true  # grep finds none: not a failure
    "$ENGINE" images --quiet --filter dangling=true \
        --filter label=io.github.torchserve-cpu.stage=builder | tail -n +2 |
        while IFS= read -r image; do
            "$ENGINE" rmi "$image" >/dev/null 2>&1 || true
        done || true
}

cmd_run() {
    engine_ready
    local tag store="${TSCPU_MODEL_STORE:-$REPO_DIR/model_store/build}"
    tag="$(cmd_tag)"
    image_exists "$tag" || die "$tag is not built: bash scripts/container.sh build"
    [ -d "$store" ] || die "no model store at $store: torchserve-cpu build-archives"
    say "serving $store on 127.0.0.1:8080 (inference) and :8082 (metrics); Ctrl-C stops"
    exec "$ENGINE" run --rm --name torchserve-cpu -p 127.0.0.1:8080:8080 \
        -p 127.0.0.1:8082:8082 -v "$store:/models:ro" "$@" "$tag"
}

cmd_test() {
    local python="${VENV:-$REPO_DIR/.venv}/bin/python"
    [ -x "$python" ] || die "no venv: source scripts/setup.sh"
    cd "$REPO_DIR"
    exec "$python" -m pytest -q -p no:cacheprovider tests/e2e/test_container.py "$@"
}

# One function read whole before it runs, then exit: editing this file while a build runs
# cannot change what the running shell reads next.
main() {
    case "${1:-}" in
        setup) cmd_setup ;;
        build) shift; cmd_build "$@" ;;
        run) shift; cmd_run "$@" ;;
        test) shift; cmd_test "$@" ;;
        tag) engine_ready; cmd_tag ;;
        probe) cmd_probe ;;
        engine) shift; engine_ready; exec "$ENGINE" "$@" ;;
        *) sed -n '2,12p' "$0" >&2; exit 2 ;;
    esac
}
main "$@"; exit
