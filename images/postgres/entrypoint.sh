#!/bin/sh
# Makes the cluster on first start (initdb sets the superuser password itself: no temporary
# server, so the only "ready to accept connections" line is the real one), then runs PostgreSQL
# in the foreground. SIGTERM and SIGINT become a fast shutdown: open connections are closed and
# the server stops cleanly at once, instead of waiting for every client (PostgreSQL's own
# SIGTERM, "smart" shutdown, would wait until the engine kills it).
set -eu

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    # POSTGRES_PASSWORD_FILE: the password from a file, e.g. a NullOps secret file under
    # /run/secrets (kept out of `docker inspect`, docs/pipelines.md); it wins over the variable.
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
        if [ ! -r "$POSTGRES_PASSWORD_FILE" ]; then
            echo "postgres: cannot read POSTGRES_PASSWORD_FILE ($POSTGRES_PASSWORD_FILE)" >&2
            exit 2
        fi
        pwfile=$POSTGRES_PASSWORD_FILE
    elif [ -n "${POSTGRES_PASSWORD:-}" ]; then
        pwfile=$(mktemp)
        printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    else
        echo "postgres: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE (the password of the superuser 'postgres')" >&2
        exit 2
    fi
    made() { [ "$pwfile" = "${POSTGRES_PASSWORD_FILE:-}" ] || rm -f "$pwfile"; }
    initdb --username=postgres --pwfile="$pwfile" --auth-local=peer --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 --no-instructions >/dev/null || { made; exit 1; }
    made
    {
        echo "# From the network (other containers of the deployment): passwords only."
        echo "host all all 0.0.0.0/0 scram-sha-256"
        echo "host all all ::/0 scram-sha-256"
    } >> "$PGDATA/pg_hba.conf"
    echo "postgres: cluster created in $PGDATA" >&2
fi

postgres -c listen_addresses='*' -c port=5432 -c unix_socket_directories=/var/run/postgresql \
    -c password_encryption=scram-sha-256 "$@" &
pid=$!
stopping=""
trap 'stopping=1; kill -INT "$pid" 2>/dev/null' TERM INT
# `wait` returns early when a trapped signal arrives: then wait again, for the server's own exit
# status (0 after a clean shutdown).
set +e
while :; do
    stopping=""
    wait "$pid"
    status=$?
    [ -z "$stopping" ] && break
done
exit "$status"
