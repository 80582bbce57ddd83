#!/bin/sh
# Entrypoint of the Comity gateway image (docker/Dockerfile). Runs the same way outside a container:
# tests/test_docker.py runs it with the environment that docker/compose.yaml sets.
#
#   comity-entrypoint [serve]       comity db upgrade, then exec comity serve (the image's default command)
#   comity-entrypoint healthcheck   exit 0 when GET /healthz on the local API answers 200 (the image's HEALTHCHECK)
#   comity-entrypoint ARGS...       any other comity command: init, user create, directory verify, ...
#
# Settings: COMITY_CONFIG (default /data/comity.toml), then COMITY_* variables (docs/configuration.md).
# Secrets are never in the image or in compose.yaml; they are read from files at start:
#   COMITY_PASSPHRASE_FILE  file holding the passphrase that opens the sealed keys -> COMITY_PASSPHRASE
#   PGPASSWORD_FILE         file holding the PostgreSQL password                  -> PGPASSWORD (read by asyncpg)
# A file's trailing newlines are not part of the secret. COMITY_PASSPHRASE, when set directly, is used as it is;
# setting both a variable and its _FILE is refused.
set -eu

config="${COMITY_CONFIG:-/data/comity.toml}"

fail() {
    echo "comity-entrypoint: $*" >&2
    exit 1
}

# read_secret VAR FILE_VAR: export VAR with the contents of the file named by FILE_VAR, when FILE_VAR is set
read_secret() {
    eval "file=\${$2:-}"
    [ -n "$file" ] || return 0
    eval "direct=\${$1+set}"
    [ -z "$direct" ] || fail "both $1 and $2 are set; set only one"
    [ -r "$file" ] || fail "$2 names $file, which is missing or not readable by uid $(id -u)"
    value="$(cat -- "$file")" || fail "cannot read $2 ($file)"
    [ -n "$value" ] || fail "$2 ($file) is empty"
    export "$1=$value"
    unset value "$2" # the commands read FILE_VAR themselves too, and refuse it set beside VAR
}

read_secret COMITY_PASSPHRASE COMITY_PASSPHRASE_FILE
read_secret PGPASSWORD PGPASSWORD_FILE

command="${1:-serve}"
[ "$#" -eq 0 ] || shift

case "$command" in
serve)
    [ -f "$config" ] || fail "no settings file $config: initialise the data volume first with 'comity init' \
(docker/README.md), or set COMITY_CONFIG"
    comity db upgrade --config "$config"
    # exec: comity becomes this process and receives SIGTERM itself, so that it shuts down gracefully
    exec comity serve --config "$config" "$@"
    ;;
healthcheck)
    exec python - "$@" <<'PY'
import sys
import urllib.request

from config.settings import load_settings

try:
    settings = load_settings()  # COMITY_CONFIG and COMITY_* variables, as `comity serve` reads them
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(settings.api_host, settings.api_host)
    if ":" in host:
        host = f"[{host}]"
    with urllib.request.urlopen(f"http://{host}:{settings.api_port}/healthz", timeout=5) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:
    print(f"comity-entrypoint: healthcheck: {exc}", file=sys.stderr)
    sys.exit(1)
PY
    ;;
*)
    exec comity "$command" "$@"
    ;;
esac
