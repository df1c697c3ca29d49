#!/usr/bin/env bash
# Prepare this host for `make test`: system packages, a running Docker engine,
# a running PostgreSQL with the test role/database.
#
# Idempotent and quick when everything is already in place (it only checks).
# As root it installs/starts what is missing; as any other user it only
# reports what is missing and how to fix it, and exits non-zero.
set -euo pipefail

# Debian packages the test suite needs. Later work adds to this list
# (caddy, docker-registry, apache2-utils came with the lifecycle and ingress work; openssh-client
# with issue 16: the controller reaches nodes over SSH; sshpass for nodes reached with a password).
APT_PACKAGES="docker.io postgresql debootstrap busybox-static nodejs npm chromium docker-registry apache2-utils caddy openssh-client sshpass"

# Test database credentials (must match what the tests use).
PG_ROLE=nullops_test
PG_PASSWORD=nullops_test
PG_DB=nullops_test
# The postgres-database plugin's shared-server tests (tests/plugins/test_postgres_shared_server.py)
# act as an admin that creates roles and databases; a role of its own keeps nullops_test minimal.
PG_PLUGIN_ADMIN=nullops_plugin_admin
PG_HOST=127.0.0.1
PG_PORT=5432

log() { printf '[test-host] %s\n' "$*"; }
die() { printf '[test-host] ERROR: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# ---------------------------------------------------------------- packages
missing_packages() {
    # Names of everything installed, plus what installed packages "Provide":
    # e.g. NodeSource's nodejs provides npm and conflicts with Debian's npm,
    # so npm counts as present when such a nodejs is installed.
    local have p out=()
    have=$(dpkg-query -W -f='${Status}\t${Package}, ${Provides}\n' 2>/dev/null \
        | awk -F'\t' '$1 ~ / ok installed$/ {print $2}' \
        | tr ',' '\n' | awk '{print $1}' | sed 's/:.*//' | sort -u)
    for p in $APT_PACKAGES; do
        grep -qxF "$p" <<<"$have" || out+=("$p")
    done
    echo "${out[*]:-}"
}

# ---------------------------------------------------------------- docker
# docker_up, start_docker: shared with run-host.sh (make run needs the engine too).
source "$(dirname "${BASH_SOURCE[0]}")/docker-engine.sh"

# ---------------------------------------------------------------- postgres
pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }

# "<version> <cluster>" of the cluster on $PG_PORT, else of the newest one.
pg_cluster() {
    local line
    line=$(pg_lsclusters -h 2>/dev/null | awk -v port="$PG_PORT" '$3 == port {print $1, $2; exit}')
    [ -n "$line" ] || line=$(pg_lsclusters -h 2>/dev/null | sort -V | tail -n 1 | awk '{print $1, $2}')
    echo "$line"
}

start_postgres() {
    local cluster ver name
    cluster=$(pg_cluster)
    if [ -z "$cluster" ]; then
        # The package normally creates "main"; recreate it if someone dropped it.
        ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
        [ -n "$ver" ] || die "no PostgreSQL server installed under /usr/lib/postgresql"
        log "creating PostgreSQL $ver cluster 'main' on port $PG_PORT"
        pg_createcluster --port "$PG_PORT" "$ver" main >/dev/null
        cluster="$ver main"
    fi
    read -r ver name <<<"$cluster"
    log "starting PostgreSQL cluster $ver/$name"
    # Nothing starts it by itself (no systemd), so this is needed after every boot.
    pg_ctlcluster "$ver" "$name" start || true
    local i
    for i in $(seq 1 30); do
        pg_up && { log "PostgreSQL is up"; return 0; }
        sleep 1
    done
    tail -n 20 "/var/log/postgresql/postgresql-$ver-$name.log" >&2 || true
    die "PostgreSQL did not answer pg_isready on $PG_HOST:$PG_PORT within 30 s"
}

# True when the test role can log in with its password over TCP (the way the
# app connects), which also proves the database exists.
pg_test_login() {
    PGPASSWORD="$PG_PASSWORD" PGCONNECT_TIMEOUT=5 psql -X -q -h "$PG_HOST" -p "$PG_PORT" \
        -U "$PG_ROLE" -d "$PG_DB" -tAc 'SELECT 1' >/dev/null 2>&1
}

as_postgres_psql() {
    # cd / so psql does not complain about an unreadable cwd.
    (cd / && su postgres -c "psql -X -q -v ON_ERROR_STOP=1 -p $PG_PORT $*")
}

ensure_pg_role_db() {
    pg_test_login && return 0
    log "creating/updating role '$PG_ROLE' and database '$PG_DB'"
    # CREATE ROLE has no IF NOT EXISTS; do it in a DO block. ALTER resets the
    # password in case the role exists with another one.
    as_postgres_psql <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
    CREATE ROLE $PG_ROLE LOGIN CREATEDB;
  END IF;
END
\$\$;
ALTER ROLE $PG_ROLE WITH LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
SQL
    # CREATE DATABASE cannot run inside a DO block/transaction.
    if [ -z "$(as_postgres_psql "-tAc \"SELECT 1 FROM pg_database WHERE datname = '$PG_DB'\"")" ]; then
        as_postgres_psql "-c \"CREATE DATABASE $PG_DB OWNER $PG_ROLE\""
    fi
    pg_test_login || die "role '$PG_ROLE' still cannot log in to '$PG_DB' on $PG_HOST:$PG_PORT with its password (check pg_hba.conf)"
}

ensure_pg_plugin_admin() {
    as_postgres_psql <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_PLUGIN_ADMIN') THEN
    CREATE ROLE $PG_PLUGIN_ADMIN LOGIN CREATEDB CREATEROLE;
  END IF;
END
\$\$;
ALTER ROLE $PG_PLUGIN_ADMIN WITH LOGIN CREATEDB CREATEROLE PASSWORD '$PG_PLUGIN_ADMIN';
SQL
}

# ---------------------------------------------------------------- main
main() {
    local missing
    missing=$(missing_packages)

    if ! is_root; then
        # Without root we can only diagnose.
        local problems=0
        if [ -n "$missing" ]; then
            echo "Missing Debian packages: $missing"
            echo "  install with: sudo apt-get update && sudo apt-get install -y $missing"
            problems=1
        fi
        if command -v docker >/dev/null && ! docker_up; then
            # (capture first: with pipefail, docker's own non-zero exit would win)
            local why
            why=$(docker info 2>&1 || true)
            if grep -qi 'permission denied' <<<"$why"; then
                echo "Docker engine is running but $(id -un) may not use /var/run/docker.sock."
                echo "  fix with: sudo usermod -aG docker $(id -un)   (then log in again)"
            else
                echo "Docker engine is not running."
                echo "  start it with: sudo sh -c 'setsid nohup dockerd >$DOCKERD_LOG 2>&1 </dev/null &'"
            fi
            problems=1
        fi
        if command -v pg_isready >/dev/null && ! pg_up; then
            echo "PostgreSQL not answering on $PG_HOST:$PG_PORT."
            echo "  start it with: sudo pg_ctlcluster $(pg_cluster || true) start   (args: <version> <cluster>)"
            problems=1
        elif command -v psql >/dev/null && pg_up && ! pg_test_login; then
            echo "Role '$PG_ROLE' cannot log in to database '$PG_DB' with password '$PG_PASSWORD'."
            echo "  create them with: sudo su postgres -c psql <<'EOF'"
            echo "    CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD';"
            echo "    CREATE DATABASE $PG_DB OWNER $PG_ROLE;"
            echo "EOF"
            problems=1
        fi
        if [ "$problems" -ne 0 ]; then
            echo "Or run this script as root: sudo $0"
            exit 1
        fi
        log "host is ready"
        return 0
    fi

    if [ -n "$missing" ]; then
        log "installing: $missing"
        # No prompts; and keep needrestart (if installed) from scanning services.
        export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
        apt-get update -q
        # shellcheck disable=SC2086  # word splitting wanted
        apt-get install -y -q $missing
    fi

    docker_up || start_docker
    pg_up || start_postgres
    ensure_pg_role_db
    ensure_pg_plugin_admin
    log "host is ready"
}

main "$@"
