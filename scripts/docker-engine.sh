#!/usr/bin/env bash
# The Docker Engine and the test image for the integration tests.
#   docker-engine.sh up     reuse a running engine, or start dockerd in the background (log in
#                           .build/dockerd.log, pid in .build/dockerd.pid) and wait up to 60 s;
#                           prints "reused" or "started"
#   docker-engine.sh image  build opskit-test/busybox:1 (busybox-static rootfs) if missing
#   docker-engine.sh down   stop dockerd only if this harness started it (the pid file exists)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

IMAGE=${OPSKIT_TEST_IMAGE:-opskit-test/busybox:1}
PIDFILE="$BUILD/dockerd.pid"
LOG="$BUILD/dockerd.log"

engine_answers() {
    timeout 10 docker info >/dev/null 2>&1
}

up() {
    if engine_answers; then
        echo reused
        return
    fi
    case "${DOCKER_HOST:-unix:///var/run/docker.sock}" in
        unix:///var/run/docker.sock) ;;
        *) die "no Docker Engine answers at DOCKER_HOST=$DOCKER_HOST" ;;
    esac
    command -v dockerd >/dev/null 2>&1 || die "dockerd is not installed (run scripts/bootstrap.sh)"
    [ "$(id -u)" -eq 0 ] || die "no Docker Engine answers and starting dockerd needs root"
    # setsid: out of the terminal's process group, so Ctrl-C reaches the harness, not dockerd.
    # 9>&-: dockerd must not inherit the lock, or it holds it for its whole life
    setsid dockerd >"$LOG" 2>&1 </dev/null 9>&- &
    local pid=$!
    echo "$pid" >"$PIDFILE"
    for _ in $(seq 1 120); do
        if engine_answers; then
            echo started
            return
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PIDFILE"
            echo "ERROR: dockerd exited while starting; last lines of $LOG:" >&2
            tail -n 30 "$LOG" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "ERROR: dockerd did not answer within 60 s; last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    down >/dev/null
    exit 1
}

down() {
    [ -f "$PIDFILE" ] || return 0
    local pid
    pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$PIDFILE"
    echo stopped
}

image() {
    docker image inspect "$IMAGE" >/dev/null 2>&1 && return 0
    [ -x /bin/busybox ] || die "/bin/busybox is missing (run scripts/bootstrap.sh: busybox-static)"
    local rootfs
    rootfs=$(mktemp -d "$BUILD/rootfs.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$rootfs'" RETURN
    mkdir -p "$rootfs"/{bin,etc,tmp,root,usr/bin,var/tmp}
    chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
    cp /bin/busybox "$rootfs/bin/busybox"
    local applet
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
    done
    ln -s ../../bin/busybox "$rootfs/usr/bin/env"
    printf 'root:x:0:0:root:/root:/bin/sh\nopskit:x:1000:1000:opskit test user:/tmp:/bin/sh\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nopskit:x:1000:\n' >"$rootfs/etc/group"
    tar -C "$rootfs" --owner=0 --group=0 --numeric-owner -c . |
        docker import --change 'CMD ["sh"]' - "$IMAGE" >/dev/null
    docker image inspect "$IMAGE" >/dev/null 2>&1 || die "building $IMAGE failed"
}

# One at a time: parallel test sessions must not start two engines or import twice.
exec 9>"$BUILD/docker-engine.lock"
flock 9
case "${1:-}" in
    up) up ;;
    down) down ;;
    image) image ;;
    *) die "usage: $0 up|image|down" ;;
esac
