#!/usr/bin/env bash
# docker/compose.yaml started for real, from nothing, on a machine that reaches package
# registries but no image registry:
#
#   scripts/compose-test.sh [-s ...]   # prepare, run tests/test_compose.py (pytest arguments
#                                      # passed on), stop what it started
#   scripts/compose-test.sh prepare    # engine + compose + images; prints the settings to use
#   scripts/compose-test.sh stop       # remove the test's compose project; stop the engine if
#                                      # `prepare` started it
#
# `prepare`:
#   1. the Docker engine: Debian's docker.io if dockerd is missing; dockerd started in the
#      background (log in $STATE/dockerd.log) unless an engine already answers;
#   2. `docker compose` v2: if the CLI has no compose plugin, built from its Go module
#      (github.com/docker/compose/v2, $COMPOSE_VERSION) into $CACHE and installed as a CLI plugin;
#   3. local base images, since the official ones cannot be pulled here:
#        recsys-local/debian:bookworm   debootstrap --variant=minbase, docker import
#        recsys-local/python:3.11       Debian's python3 in a venv (docker/local/python.Dockerfile)
#        recsys-local/kafka:4.1.1       Debian's Java 17 + the jars of scripts/kafka-dev.sh
#                                       (docker/local/kafka/: KAFKA_* settings as the official image)
#   4. the worker image, with `docker compose build` of docker/compose.yaml (BASE_IMAGE=local python).
# Its last lines on stdout are NAME=VALUE settings (KAFKA_IMAGE, BASE_IMAGE, ENGINE=started|running).
#
# Packages come from Debian's apt, PyPI (inside the builds, with this machine's CA bundle:
# $PIP_CERT, else /etc/ssl/certs/ca-certificates.crt), Maven Central and the Go module proxy.
# A second run reuses everything: the images, the docker layer cache, the compose binary.
#
# Environment (all optional):
#   RECSYS_CACHE             cache directory                  (default ~/.cache/recsys-stream)
#   RECSYS_COMPOSE_STATE     dockerd pid and log              (default $RECSYS_CACHE/compose-test)
#   RECSYS_COMPOSE_PROJECT   compose project of the test      (default recsys-compose-test)
#   COMPOSE_VERSION          compose v2 built when missing    (default v2.40.3)
#   RECSYS_CA_BUNDLE         CA bundle for pip in the builds  (default $PIP_CERT or the system one)
#   RECSYS_ENGINE_TIMEOUT    seconds to wait for dockerd      (default 120)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CACHE="${RECSYS_CACHE:-${HOME:-/root}/.cache/recsys-stream}"
STATE="${RECSYS_COMPOSE_STATE:-${CACHE}/compose-test}"
PROJECT="${RECSYS_COMPOSE_PROJECT:-recsys-compose-test}"
COMPOSE_VERSION="${COMPOSE_VERSION:-v2.40.3}"
ENGINE_TIMEOUT="${RECSYS_ENGINE_TIMEOUT:-120}"
KAFKA_VERSION=4.1.1
DEBIAN_IMAGE=recsys-local/debian:bookworm
PYTHON_IMAGE=recsys-local/python:3.11
KAFKA_LOCAL_IMAGE="recsys-local/kafka:${KAFKA_VERSION}"
DOCKER_CONFIG_DIR="${DOCKER_CONFIG:-${HOME:-/root}/.docker}"

log() { printf 'compose-test: %s\n' "$*" >&2; }
die() { printf 'compose-test: ERROR: %s\n' "$*" >&2; exit 1; }
step() { STEP_T0=$SECONDS; log "$*"; }
done_step() { log "  ... done in $((SECONDS - STEP_T0)) s"; }

APT_UPDATED=0
apt_install() {
    if ((APT_UPDATED == 0)); then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

# ------------------------------------------------------------------ engine --

engine_up() { docker info >/dev/null 2>&1; }

ensure_engine() {
    mkdir -p "$STATE"
    if engine_up; then
        ENGINE=running
        log "a Docker engine already answers: using it (and leaving it running)"
        return 0
    fi
    if ! command -v dockerd >/dev/null 2>&1; then
        step "installing Debian's docker.io (the engine)"
        apt_install docker.io
        done_step
    fi
    if ! command -v docker >/dev/null 2>&1; then
        apt_install docker.io
    fi
    step "starting dockerd (log: ${STATE}/dockerd.log)"
    # a pid file or socket left by a dockerd that died would stop the next one
    if [[ -f /var/run/docker.pid ]] && ! kill -0 "$(cat /var/run/docker.pid 2>/dev/null)" 2>/dev/null; then
        rm -f /var/run/docker.pid
    fi
    local setsid=()
    command -v setsid >/dev/null 2>&1 && setsid=(setsid)
    "${setsid[@]}" dockerd >"${STATE}/dockerd.log" 2>&1 </dev/null &
    echo $! >"${STATE}/dockerd.pid"
    local pid t0=$SECONDS
    pid=$(cat "${STATE}/dockerd.pid")
    until engine_up; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "${STATE}/dockerd.log" >&2
            rm -f "${STATE}/dockerd.pid"
            die "dockerd exited during startup (log: ${STATE}/dockerd.log)"
        fi
        ((SECONDS - t0 < ENGINE_TIMEOUT)) || die "dockerd not answering after ${ENGINE_TIMEOUT}s (log: ${STATE}/dockerd.log)"
        sleep 0.5
    done
    ENGINE=started
    done_step
}

stop_engine() {
    local pidfile="${STATE}/dockerd.pid"
    [[ -f "$pidfile" ]] || { log "no engine started by this script"; return 0; }
    local pid
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null && [[ "$(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null)" == dockerd* ]]; then
        log "stopping dockerd (pid ${pid}) and its containers"
        # dockerd stops its containers (and its own containerd) on SIGTERM
        kill -TERM "$pid" 2>/dev/null || true
        local t0=$SECONDS
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS - t0 > 60)); then
                log "dockerd still alive after 60 s: KILL"
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.5
        done
    fi
    rm -f "$pidfile"
}

# ----------------------------------------------------------------- compose --

ensure_compose() {
    if docker compose version >/dev/null 2>&1; then
        return 0
    fi
    local bin="${CACHE}/compose-${COMPOSE_VERSION}/docker-compose"
    if [[ ! -x "$bin" ]]; then
        local go
        go="$(command -v go || true)"
        [[ -n "$go" ]] || { [[ -x /usr/local/go/bin/go ]] && go=/usr/local/go/bin/go; }
        [[ -n "$go" ]] || die "docker compose v2 is missing and there is no Go toolchain to build it (install Go 1.24+)"
        step "building docker compose ${COMPOSE_VERSION} from its Go module (first run only)"
        local dir src
        dir="$("$go" mod download -json "github.com/docker/compose/v2@${COMPOSE_VERSION}" |
            sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
        [[ -d "$dir" ]] || die "go mod download github.com/docker/compose/v2@${COMPOSE_VERSION} failed"
        # its go.mod has exclude directives, so `go install pkg@version` refuses it: build in a copy
        src="$(mktemp -d)"
        cp -r "$dir/." "$src/"
        chmod -R u+w "$src"
        mkdir -p "$(dirname "$bin")"
        (cd "$src" && GOFLAGS=-mod=mod "$go" build -trimpath \
            -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=${COMPOSE_VERSION}" \
            -o "${bin}.tmp" ./cmd) >&2
        mv -f "${bin}.tmp" "$bin"
        rm -rf "$src"
        done_step
    fi
    mkdir -p "${DOCKER_CONFIG_DIR}/cli-plugins"
    install -m 755 "$bin" "${DOCKER_CONFIG_DIR}/cli-plugins/docker-compose"
    docker compose version >&2 || die "docker compose does not run after installing ${bin}"
}

# ------------------------------------------------------------------ images --

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

ca_bundle() {
    local ca="${RECSYS_CA_BUNDLE:-${PIP_CERT:-}}"
    if [[ -z "$ca" ]] && command -v pip3 >/dev/null 2>&1; then
        ca="$(pip3 config get global.cert 2>/dev/null || true)"
    fi
    [[ -n "$ca" && -f "$ca" ]] || ca=/etc/ssl/certs/ca-certificates.crt
    [[ -f "$ca" ]] || die "no CA bundle found for pip inside the builds (set RECSYS_CA_BUNDLE)"
    echo "$ca"
}

ensure_debian_image() {
    have_image "$DEBIAN_IMAGE" && return 0
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    step "building ${DEBIAN_IMAGE} with debootstrap (first run only)"
    local root
    root="$(mktemp -d)"
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"${STATE}/debootstrap.log" 2>&1 ||
        { tail -n 20 "${STATE}/debootstrap.log" >&2; rm -rf "$root"; die "debootstrap failed (${STATE}/debootstrap.log)"; }
    rm -rf "${root:?}"/var/cache/apt/archives/*.deb "${root:?}"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import -c 'CMD ["/bin/bash"]' - "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$root"
    done_step
}

ensure_python_image() {
    step "building ${PYTHON_IMAGE} (Debian's Python 3.11; cached layers after the first run)"
    local ctx
    ctx="$(mktemp -d)"
    cp docker/local/python.Dockerfile "$ctx/Dockerfile"
    cp "$(ca_bundle)" "$ctx/ca-bundle.crt"
    DOCKER_BUILDKIT=0 docker build -q --network host --build-arg "DEBIAN_IMAGE=${DEBIAN_IMAGE}" \
        -t "$PYTHON_IMAGE" "$ctx" >&2 2> >(grep -v -i deprecated >&2)
    rm -rf "$ctx"
    done_step
}

ensure_kafka_image() {
    step "building ${KAFKA_LOCAL_IMAGE} (Debian's Java 17 + Maven Central jars)"
    local lib tools ctx
    lib="$(scripts/kafka-dev.sh jars | tail -n 1)"
    # the broker's classpath (kafka-dev.sh) plus the CLI tools compose.yaml calls (kafka-topics.sh,
    # kafka-broker-api-versions.sh): their classes live in kafka-tools, whose dependencies are there
    tools="${CACHE}/kafka-${KAFKA_VERSION}-tools/kafka-tools-${KAFKA_VERSION}.jar"
    if [[ ! -f "$tools" ]]; then
        mkdir -p "$(dirname "$tools")"
        (cd "$(dirname "$tools")" && mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
            "-Dartifact=org.apache.kafka:kafka-tools:${KAFKA_VERSION}" -DoutputDirectory=. </dev/null 2>&1 |
            sed -e 's/\x1b\[[0-9;]*m//g' -e '/^[[:space:]]*$/d' >&2)
        [[ -f "$tools" ]] || die "could not resolve org.apache.kafka:kafka-tools:${KAFKA_VERSION}"
    fi
    ctx="$(mktemp -d)"
    mkdir "$ctx/libs"
    cp docker/local/kafka/* "$ctx/"
    cp "$lib"/*.jar "$tools" "$ctx/libs/"
    DOCKER_BUILDKIT=0 docker build -q --network host --build-arg "DEBIAN_IMAGE=${DEBIAN_IMAGE}" \
        -t "$KAFKA_LOCAL_IMAGE" "$ctx" >&2 2> >(grep -v -i deprecated >&2)
    rm -rf "$ctx"
    done_step
}

compose() { docker compose -f docker/compose.yaml -p "$PROJECT" "$@"; }

build_worker() {
    step "building the worker image with docker compose build (BASE_IMAGE=${PYTHON_IMAGE})"
    KAFKA_IMAGE="$KAFKA_LOCAL_IMAGE" BASE_IMAGE="$PYTHON_IMAGE" compose build --quiet worker-0 >&2 \
        2> >(grep -v "buildx isn't installed" >&2)
    done_step
}

cmd_prepare() {
    local t0=$SECONDS
    ensure_engine
    ensure_compose
    ensure_debian_image
    ensure_python_image
    ensure_kafka_image
    build_worker
    log "prepared in $((SECONDS - t0)) s"
    echo "KAFKA_IMAGE=${KAFKA_LOCAL_IMAGE}"
    echo "BASE_IMAGE=${PYTHON_IMAGE}"
    echo "COMPOSE_PROJECT=${PROJECT}"
    echo "ENGINE=${ENGINE}"
}

cmd_stop() {
    if engine_up && docker compose version >/dev/null 2>&1; then
        KAFKA_IMAGE="$KAFKA_LOCAL_IMAGE" BASE_IMAGE="$PYTHON_IMAGE" compose down -v --remove-orphans -t 20 >&2 2>&1 || true
    fi
    stop_engine
}

cmd_test() {
    local py="${RECSYS_PYTHON:-.venv/bin/python}"
    [[ -x "$py" ]] || die "$py not found: create the virtualenv first (scripts/test.sh does)"
    trap 'cmd_stop' EXIT
    local out
    out="$(cmd_prepare)"
    echo "$out" >&2
    # the test finds the engine running; tell it not to stop it (this trap does)
    RECSYS_COMPOSE_PREPARED=1 "$py" -m pytest -q tests/test_compose.py "$@"
}

case "${1:-test}" in
    prepare) cmd_prepare ;;
    stop) cmd_stop ;;
    test) shift || true; cmd_test "$@" ;;
    -*) cmd_test "$@" ;;  # pytest arguments
    *) echo "usage: $0 [[test] [pytest args] | prepare | stop]" >&2; exit 2 ;;
esac
