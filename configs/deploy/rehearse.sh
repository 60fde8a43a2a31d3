#!/usr/bin/env bash
# Rehearse a deployment on this machine: one SuperLink and one SuperNode per site, on loopback.
#
#   configs/deploy/rehearse.sh start DIR STORE SITE [SITE ...]   # prints the flwr run line
#   configs/deploy/rehearse.sh stop DIR                           # stops what start started
#
# TLS and node authentication are on; `--insecure` right after `start` turns both off
# (rehearsal only, with a warning). DIR receives certs/ (make-certs.sh), keys/ (one
# make-node-key.sh pair per site), flwr-home/config.toml (the `rehearsal` federation for
# `flwr run`), logs/ and pids. Every SuperNode gets --node-config "site=... data-path=STORE";
# FM and WEIGHTS (environment) add fm=... weights=... for nodes that extract features.
# Ports: SuperLink BASE_PORT (default 9093), SuperNode i BASE_PORT+1+i; the nodes and
# `flwr` reach the SuperLink at 127.0.0.1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
base=${BASE_PORT:-9093}
listen=${SUPERLINK_HOST:-127.0.0.1}  # where the SuperLink listens (0.0.0.0 for real hospitals)
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

usage() { echo "usage: $0 start [--insecure] DIR STORE SITE [SITE ...] | stop DIR" >&2; exit 2; }

wait_port() {  # the SuperLink accepts connections (bash's /dev/tcp, no extra tools)
  for _ in $(seq 1 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "$0: nothing listens on 127.0.0.1:$1 after 30 s; see $dir/logs" >&2
  return 1
}

write_federation() {  # what `flwr run . rehearsal` reads (FLWR_HOME/config.toml)
  mkdir -p "$dir/flwr-home"
  {
    printf '[superlink]\ndefault = "rehearsal"\n\n[superlink.rehearsal]\naddress = "127.0.0.1:%s"\n' "$base"
    if [ "$insecure" = 1 ]; then echo 'insecure = true'; else echo "root-certificates = \"$dir/certs/ca.crt\""; fi
  } > "$dir/flwr-home/config.toml"
}

start_superlink() {
  local tls=(--ssl-ca-certfile "$dir/certs/ca.crt" --ssl-certfile "$dir/certs/server.pem"
             --ssl-keyfile "$dir/certs/server.key" --enable-supernode-auth)
  [ "$insecure" = 1 ] && tls=(--insecure)
  setsid flower-superlink "${tls[@]}" --host "$listen" --port "$base" --disable-runtime-dependency-installation \
    --database "$dir/superlink.db" > "$dir/logs/superlink.log" 2>&1 &
  echo $! >> "$dir/pids"
  wait_port "$base"
}

start_supernode() {  # $1 = index, $2 = site
  local sec=(--root-certificates "$dir/certs/ca.crt" --auth-supernode-private-key "$dir/keys/$2")
  [ "$insecure" = 1 ] && sec=(--insecure)
  local cfg="site=\"$2\" data-path=\"$store\""
  [ -n "${FM:-}" ] && cfg="$cfg fm=\"$FM\""
  [ -n "${WEIGHTS:-}" ] && cfg="$cfg weights=\"$WEIGHTS\""
  if [ "$insecure" = 0 ]; then
    flwr supernode register "$dir/keys/$2.pub" rehearsal > "$dir/logs/register-$2.log" 2>&1
  fi
  setsid flower-supernode "${sec[@]}" --superlink "127.0.0.1:$base" --port $((base + 1 + $1)) \
    --node-config "$cfg" > "$dir/logs/supernode-$2.log" 2>&1 &
  echo $! >> "$dir/pids"
}

start() {
  insecure=0
  if [ "${1:-}" = "--insecure" ]; then
    insecure=1
    shift
    echo "WARNING: --insecure: no TLS and no node authentication; never use it outside a rehearsal" >&2
  fi
  [ $# -ge 3 ] || usage
  dir=$(mkdir -p "$1" && cd "$1" && pwd)
  store=$(cd "$2" && pwd)
  shift 2
  if [ -s "$dir/pids" ]; then echo "$0: $dir/pids exists; run '$0 stop $dir' first" >&2; exit 1; fi
  mkdir -p "$dir/logs"
  # Apps and state of this rehearsal stay under DIR (the CLI reads the same config.toml).
  export FLWR_HOME="$dir/flwr-home"
  [ "$insecure" = 1 ] || [ -f "$dir/certs/server.pem" ] || "$here/make-certs.sh" "$dir/certs" >/dev/null
  write_federation
  start_superlink
  local i=0
  for site in "$@"; do
    [ "$insecure" = 1 ] || [ -f "$dir/keys/$site" ] || "$here/make-node-key.sh" "$dir/keys" "$site" >/dev/null
    start_supernode "$i" "$site"
    i=$((i + 1))
  done
  echo "started 1 SuperLink and $i SuperNodes (pids in $dir/pids); now run:"
  echo "  FLWR_HOME=$dir/flwr-home flwr run . rehearsal --run-config \"store='$store' out='...'\" --stream"
}

stop() {  # each daemon leads its own process group (setsid): stop it with its helpers
  [ $# -eq 1 ] || usage
  local pids=$1/pids
  [ -f "$pids" ] || { echo "$0: no $pids; nothing to stop" >&2; return 0; }
  while read -r pid; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done < "$pids"
  sleep 2
  while read -r pid; do
    kill -KILL -- "-$pid" 2>/dev/null || true
  done < "$pids"
  rm -f "$pids"
  echo "stopped"
}

cmd=${1:-}
shift || true
case "$cmd" in
  start) start "$@" ;;
  stop) stop "$@" ;;
  *) usage ;;
esac
