#!/usr/bin/env bash
# The README's first command, read from README.md, in the active virtual environment before anything of
# requirements-dev.txt is there (its packages would hide a module that requirements.txt lacks): the install and
# cxr-demo on a fresh CXR_HOME as written, then `streamlit run dashboard` in the background, as written but on a
# free port, its health check, and every page rendered once as the demo admin (.ci/dashboard_smoke.py).
set -euo pipefail
cd "$(dirname "$0")/.."

command=$(python .ci/readme_command.py "Run it")
# `streamlit run` never exits: everything before it runs as written, the server in the background
case "$command" in
    *" && streamlit run "*) ;;
    *) echo "README's first command does not end with '&& streamlit run ...': $command" >&2; exit 1 ;;
esac
before_server="${command% && streamlit run *}"
server="streamlit run ${command##* && streamlit run }"

home=$(mktemp -d "${TMPDIR:-/tmp}/cxr-readme-home.XXXXXX")
log="$home/streamlit.log"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$home"
}
trap cleanup EXIT
# a fresh machine: the default SQLite database under a CXR_HOME of its own
export CXR_HOME="$home"
unset CXR_DB_URL

echo "+ $before_server"
bash -c "$before_server"

port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "+ $server  (port $port, in the background)"
STREAMLIT_SERVER_PORT="$port" STREAMLIT_SERVER_HEADLESS=true bash -c "exec $server" >"$log" 2>&1 &
server_pid=$!

if ! python .ci/dashboard_smoke.py --url "http://127.0.0.1:$port" --server-pid "$server_pid"; then
    echo "--- streamlit's log:" >&2
    cat "$log" >&2
    exit 1
fi
echo "README's first command: OK"
