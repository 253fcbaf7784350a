# Helpers shared by kiln's scripts.

# A TCP port on 127.0.0.1 that is free right now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until `$@` succeeds, for at most $WAIT_SECONDS (default 30).
wait_until() {
    local deadline=$((SECONDS + ${WAIT_SECONDS:-30}))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.1
    done
}
