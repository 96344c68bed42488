#!/bin/sh
# Load dump.rdb of a directory into a scratch redis-server and print what it holds. Run by
# roles/backup/tasks/redis_scratch.yml as: sh -c "<this script>" redis-scratch MODE DIR IMAGE TIMEOUT
#   MODE     host (redis-check-rdb and redis-server of this host) or container (a container of
#            IMAGE, with no network)
#   DIR      the directory holding dump.rdb (read only; the server's socket, pid and log files go
#            into a directory of their own, never into DIR)
#   TIMEOUT  seconds the server may take to load the file
# The server listens on a unix socket only (port 0) and starts as a replica of a master that is
# never reached, so that keys whose TTL has run out since the snapshot are loaded (a primary drops
# them on load): the same file gives the same figures at backup time and months later.
# Prints the INFO keyspace lines, then "digest:<DEBUG DIGEST>" and "server:<redis-server --version>".
# Exit 3: the file is damaged (redis-check-rdb); 4: the server did not start; 5: it did not load.
set -u
mode=$1 dir=$2 image=$3 timeout=$4

tool() {  # a one-off redis tool, on the host or in a container of the image
  t=$1
  shift
  if [ "$mode" = container ]; then
    docker run --rm --network none --user 0:0 -v "$dir:/scratch" --entrypoint "$t" "$image" "$@"
  else
    "$t" "$@"
  fi
}

if [ "$mode" = container ]; then in=/scratch; else in=$dir; fi
checked=$(tool redis-check-rdb "$in/dump.rdb" 2>&1)
case $? in
  0) case $checked in *"RDB looks OK"*) ;; *) echo "redis-check-rdb: $(printf '%s' "$checked" | tail -n 3 | tr '\n' ' ')" >&2; exit 3 ;; esac ;;
  *) echo "redis-check-rdb: $(printf '%s' "$checked" | tail -n 4 | tr '\n' ' ')" >&2; exit 3 ;;
esac
version=$(tool redis-server --version) || { echo "redis-server --version failed" >&2; exit 4; }
major=$(printf '%s' "$version" | sed -n 's/.* v=\([0-9]*\).*/\1/p')
debug=
if [ "${major:-0}" -ge 7 ]; then debug="--enable-debug-command local"; fi

if [ "$mode" = container ]; then
  name=opskit-redis-scratch-$$-$(date +%s)
  cli() { docker exec "$name" redis-cli -s /scratch/.opskit-scratch.sock "$@"; }
  stop() { docker rm -f "$name" >/dev/null 2>&1; }
  log() { docker logs --tail 20 "$name" 2>&1; }
  trap stop EXIT
  # shellcheck disable=SC2086  # $debug is two words or none
  docker run -d --name "$name" --network none --user 0:0 -v "$dir:/scratch" --entrypoint redis-server "$image" \
    --port 0 --unixsocket /scratch/.opskit-scratch.sock --unixsocketperm 700 --dir /scratch --dbfilename dump.rdb \
    --save "" --appendonly no --replicaof 127.0.0.1 9 $debug >/dev/null || { echo "docker run of $image failed" >&2; exit 4; }
else
  run=$(mktemp -d "${TMPDIR:-/tmp}/opskit-redis-scratch-XXXXXXXX") || exit 4
  cli() { redis-cli -s "$run/redis.sock" "$@"; }
  stop() {
    cli SHUTDOWN NOSAVE >/dev/null 2>&1
    if [ -f "$run/redis.pid" ] && kill -0 "$(cat "$run/redis.pid")" 2>/dev/null; then kill -9 "$(cat "$run/redis.pid")"; fi
    rm -rf "$run"
  }
  log() { tail -n 20 "$run/redis.log" 2>&1; }
  trap stop EXIT
  # shellcheck disable=SC2086
  redis-server --port 0 --unixsocket "$run/redis.sock" --unixsocketperm 700 --dir "$dir" --dbfilename dump.rdb \
    --save "" --appendonly no --replicaof 127.0.0.1 9 --daemonize yes --pidfile "$run/redis.pid" \
    --logfile "$run/redis.log" $debug || { echo "redis-server did not start: $(log | tr '\n' ' ')" >&2; exit 4; }
fi

tries=0
while :; do
  answer=$(cli PING 2>&1)
  [ "$answer" = PONG ] && break
  tries=$((tries + 1))
  case $answer in
    *LOADING*) [ "$tries" -le $((timeout * 10)) ] || { echo "the scratch redis-server did not load the RDB file within $timeout s" >&2; exit 5; } ;;
    *) [ "$tries" -le 50 ] || { echo "the scratch redis-server did not load the RDB file: $(log | tail -n 5 | tr '\n' ' ')" >&2; exit 5; } ;;
  esac
  sleep 0.1
done
cli INFO keyspace || exit 5
digest=$(cli DEBUG DIGEST) || exit 5
echo "digest:$digest"
echo "server:$version"
