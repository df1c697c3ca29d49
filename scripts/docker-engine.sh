# Sourced by run-host.sh and test-host.sh: start the Docker engine without systemd.
# Needs log() and die() from the sourcing script.
DOCKERD_LOG=/var/log/dockerd.log
DOCKER_PIDFILE=/var/run/docker.pid

docker_up() { docker info >/dev/null 2>&1; }

# A live dockerd with this pid (not a zombie, not a reused pid of something else).
dockerd_alive() {
    local pid=$1
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] || return 1
    # Field 3 of /proc/PID/stat is the state; Z = exited but not yet reaped.
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

start_docker() {
    # A dockerd killed abruptly leaves its pid file behind and the next one
    # refuses to start; drop it when no process with that pid is alive.
    if [ -f "$DOCKER_PIDFILE" ]; then
        local pid
        pid=$(cat "$DOCKER_PIDFILE" 2>/dev/null || true)
        if dockerd_alive "$pid"; then
            log "dockerd (pid $pid) is running but not answering yet; waiting for it"
        else
            log "removing stale $DOCKER_PIDFILE (pid ${pid:-?} is gone)"
            rm -f "$DOCKER_PIDFILE"
        fi
    fi
    if [ ! -f "$DOCKER_PIDFILE" ]; then
        log "starting dockerd (log: $DOCKERD_LOG)"
        # No systemd here: run it in its own session so it outlives this script
        # and the terminal/CI step that ran it.
        setsid nohup dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    local i
    for i in $(seq 1 60); do
        docker_up && { log "docker engine is up (${i}s)"; return 0; }
        sleep 1
    done
    echo "---- last lines of $DOCKERD_LOG ----" >&2
    tail -n 30 "$DOCKERD_LOG" >&2 || true
    die "docker engine did not answer 'docker info' within 60 s"
}

