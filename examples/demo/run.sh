#!/usr/bin/env bash
# make demo: a private Prosody with demo users, the demo PHP app and imsidecar,
# all on loopback, all stopped by Ctrl-C. Nothing is installed system-wide and
# nothing outside a temporary directory is written.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$ROOT/bin/imsidecar}
[[ $BIN = /* ]] || BIN=$ROOT/$BIN
DOMAIN=${DEMO_DOMAIN:-example.test}
WEB_PORT=${DEMO_PORT:-8080}
WORK=$(mktemp -d /tmp/imsidecar-demo.XXXXXX)
PIDS=()

for cmd in prosody prosodyctl php openssl; do
  command -v "$cmd" >/dev/null || { echo "demo: $cmd is missing; run: sudo apt-get install -y prosody php-cli php-curl openssl" >&2; exit 1; }
done
[[ -x $BIN ]] || { echo "demo: $BIN not built; run make build" >&2; exit 1; }

cleanup() {
  trap - EXIT INT TERM
  echo; echo "demo: stopping"
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
  || php -r '$s=stream_socket_server("tcp://127.0.0.1:0"); echo explode(":", stream_socket_get_name($s,false))[1];'; }
C2S_PORT=$(free_port); API_PORT=$(free_port); OPS_PORT=$(free_port)

# A throwaway CA and server certificate, so the sidecar verifies TLS as in production.
mkdir -p "$WORK/certs" "$WORK/data" "$WORK/sessions"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=imsidecar demo CA" \
  -keyout "$WORK/certs/ca.key" -out "$WORK/certs/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$DOMAIN" \
  -keyout "$WORK/certs/$DOMAIN.key" -out "$WORK/certs/$DOMAIN.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s,DNS:localhost\n' "$DOMAIN" > "$WORK/certs/ext.cnf"
openssl x509 -req -in "$WORK/certs/$DOMAIN.csr" -CA "$WORK/certs/ca.crt" -CAkey "$WORK/certs/ca.key" -CAcreateserial \
  -days 2 -extfile "$WORK/certs/ext.cnf" -out "$WORK/certs/$DOMAIN.crt" 2>/dev/null
chmod 0644 "$WORK/certs/"*

cat > "$WORK/prosody.cfg.lua" <<CFG
run_as_root = true
daemonize = false
pidfile = "$WORK/prosody.pid"
data_path = "$WORK/data"
log = { info = "$WORK/prosody.log" }
interfaces = { "127.0.0.1" }
c2s_ports = { $C2S_PORT }
s2s_ports = { }
http_ports = { }
https_ports = { }
modules_enabled = { "roster", "saslauth", "tls", "disco", "carbons", "ping", "smacks", "offline", "vcard_legacy", "blocklist", "mam" }
modules_disabled = { "s2s" }
authentication = "internal_hashed"
storage = "internal"
c2s_require_encryption = true
certificates = "$WORK/certs"
VirtualHost "$DOMAIN"
  ssl = { key = "$WORK/certs/$DOMAIN.key"; certificate = "$WORK/certs/$DOMAIN.crt" }
-- Group chat (XEP-0045) for the demo's Rooms panel.
Component "conference.$DOMAIN" "muc"
  modules_enabled = { "muc_mam" } -- room history (XEP-0313)
  restrict_room_creation = false
  muc_room_default_public = true
CFG

export PROSODY_CONFIG="$WORK/prosody.cfg.lua"
prosody --config "$WORK/prosody.cfg.lua" >"$WORK/prosody.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$C2S_PORT") 2>/dev/null && break; sleep 0.1; done

USERS=(alice:alice-secret:"Alice Araújo" bob:bob-secret:"Bob Brandão" carol:carol-secret:"Carol Conceição")
: > "$WORK/users.txt"
for u in "${USERS[@]}"; do
  IFS=: read -r name pass full <<<"$u"
  timeout 20 prosodyctl --config "$WORK/prosody.cfg.lua" register "$name" "$DOMAIN" "$pass" >/dev/null
  printf '%s:%s:%s\n' "$name" "$pass" "$full" >> "$WORK/users.txt"
done

"$BIN" serve \
  --listen "127.0.0.1:$API_PORT" --ops-listen "127.0.0.1:$OPS_PORT" \
  --xmpp-addr "127.0.0.1:$C2S_PORT" --xmpp-domain "$DOMAIN" --xmpp-ca-file "$WORK/certs/ca.crt" \
  --session-store files --session-save-path "$WORK/sessions" --profile expresso &
PIDS+=($!)

export IMSIDECAR_URL="http://127.0.0.1:$API_PORT"
export DEMO_USERS_FILE="$WORK/users.txt" DEMO_DOMAIN="$DOMAIN"
PHP_CLI_SERVER_WORKERS=16 php -S "127.0.0.1:$WEB_PORT" -t "$ROOT/examples/expresso-demo" \
  -d session.save_path="$WORK/sessions" -d session.name=sessionid -d session.serialize_handler=php \
  >"$WORK/php.log" 2>&1 &
PIDS+=($!)

cat <<MSG

  Expresso IM demo is running.

    web app : http://127.0.0.1:$WEB_PORT/
    logins  : alice / alice-secret, bob / bob-secret, carol / carol-secret
    status  : http://127.0.0.1:$OPS_PORT/status
    logs    : $WORK/{prosody.log,php.log}

  Log in as two users in two browsers (or a private window) and chat.
  Ctrl-C stops everything.

MSG
wait -n "${PIDS[@]}" || true
echo "demo: a component exited; see the logs above" >&2
