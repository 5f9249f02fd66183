#!/usr/bin/env bash
# Make sure the production stack of aiida-voltnet runs on this machine: PostgreSQL on 127.0.0.1:5432 and RabbitMQ
# on 127.0.0.1:5672, with RabbitMQ's consumer_timeout disabled (long AiiDA processes would otherwise be killed,
# aiida-core #5105). Idempotent: a running, configured stack is left untouched. Needs root to install/start/configure.
#
#   bash scripts/services.sh
set -euo pipefail

PG_HOST=127.0.0.1 PG_PORT=5432 RMQ_HOST=127.0.0.1 RMQ_PORT=5672
ADVANCED_CONFIG="${RABBITMQ_ADVANCED_CONFIG:-/etc/rabbitmq/advanced.config}"
WAIT_SECONDS="${SERVICES_WAIT_SECONDS:-90}"

say() { printf '[services] %s\n' "$*"; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

port_open() {  # bash /dev/tcp probe, 2 s at most
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

wait_port() {  # wait_port NAME HOST PORT
    local deadline=$((SECONDS + WAIT_SECONDS))
    until port_open "$2" "$3"; do
        [ "$SECONDS" -lt "$deadline" ] || die "$1 does not accept connections on $2:$3 after ${WAIT_SECONDS}s"
        sleep 1
    done
    say "$1 accepts connections on $2:$3"
}

start_service() {  # start_service NAME: `service NAME start`, else /etc/init.d/NAME start
    if command -v service >/dev/null 2>&1; then
        say "service $1 start"
        service "$1" start || true
    elif [ -x "/etc/init.d/$1" ]; then
        say "/etc/init.d/$1 start"
        "/etc/init.d/$1" start || true
    else
        die "no way to start $1 (neither 'service' nor /etc/init.d/$1)"
    fi
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "$* not installed and no apt-get to install it"
    if [ "$APT_UPDATED" -eq 0 ]; then
        say 'apt-get update'
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    say "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# -- PostgreSQL --------------------------------------------------------------------------------------------------------
if port_open "$PG_HOST" "$PG_PORT"; then
    say "PostgreSQL already up on $PG_HOST:$PG_PORT"
else
    if [ ! -e /etc/init.d/postgresql ] && ! command -v pg_ctlcluster >/dev/null 2>&1; then
        apt_install postgresql
    fi
    start_service postgresql
    wait_port PostgreSQL "$PG_HOST" "$PG_PORT"
fi
command -v psql >/dev/null 2>&1 || apt_install postgresql-client
# Accepting TCP is not enough: wait until the server answers queries (it refuses them while starting up).
deadline=$((SECONDS + WAIT_SECONDS))
until psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "PostgreSQL on $PG_HOST:$PG_PORT does not answer 'SELECT 1' as user postgres (pg_hba.conf must trust 127.0.0.1 for the tests' throwaway databases)"
    sleep 1
done
say "PostgreSQL answers queries as user postgres ($(psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -Atqc 'SHOW server_version'))"

# -- RabbitMQ ----------------------------------------------------------------------------------------------------------
if [ ! -e /etc/init.d/rabbitmq-server ] && ! command -v rabbitmq-server >/dev/null 2>&1; then
    apt_install rabbitmq-server
fi
# consumer_timeout: RabbitMQ >= 3.8.15 closes a channel whose task is unacknowledged for longer than this (30 min on
# 3.10), i.e. it kills every AiiDA process running longer. Disable it in advanced.config (read at boot).
CHANGED=0
if [ -f "$ADVANCED_CONFIG" ] && grep -Eq '\{ *consumer_timeout *, *undefined *\}' "$ADVANCED_CONFIG"; then
    say "consumer_timeout already undefined in $ADVANCED_CONFIG"
elif [ -f "$ADVANCED_CONFIG" ] && grep -q '[^[:space:]]' "$ADVANCED_CONFIG"; then
    # An existing advanced.config with other settings: do not rewrite Erlang terms blindly.
    die "$ADVANCED_CONFIG exists without {consumer_timeout, undefined}; add it to the rabbit section by hand: [{rabbit, [{consumer_timeout, undefined}]}]."
else
    mkdir -p "$(dirname "$ADVANCED_CONFIG")"
    printf '%s\n' '[{rabbit, [{consumer_timeout, undefined}]}].' > "$ADVANCED_CONFIG"
    chmod 644 "$ADVANCED_CONFIG"
    say "wrote $ADVANCED_CONFIG: [{rabbit, [{consumer_timeout, undefined}]}]."
    CHANGED=1
fi

if port_open "$RMQ_HOST" "$RMQ_PORT"; then
    say "RabbitMQ already up on $RMQ_HOST:$RMQ_PORT"
else
    start_service rabbitmq-server
    wait_port RabbitMQ "$RMQ_HOST" "$RMQ_PORT"
fi

running_timeout() {  # the value the running node uses, e.g. "{ok,1800000}" or "undefined"
    command -v rabbitmqctl >/dev/null 2>&1 || { echo unknown; return; }
    timeout 30 rabbitmqctl eval 'application:get_env(rabbit, consumer_timeout).' 2>/dev/null | tail -n 1 || echo unknown
}
CURRENT="$(running_timeout)"
disabled() { [ "$1" = undefined ] || [ "$1" = '{ok,undefined}' ]; }
restart_rabbitmq() {
    # Not `service rabbitmq-server restart`: on this image RabbitMQ runs without /var/run/rabbitmq/pid, and the
    # init script's `rabbitmqctl stop <pidfile>` then waits forever (seen). Stop the node itself, then start it.
    say 'restarting RabbitMQ: rabbitmqctl stop, then start'
    timeout 120 rabbitmqctl stop || say 'WARNING: rabbitmqctl stop failed or timed out' >&2
    local deadline=$((SECONDS + WAIT_SECONDS))
    while port_open "$RMQ_HOST" "$RMQ_PORT" && [ "$SECONDS" -lt "$deadline" ]; do sleep 1; done
    start_service rabbitmq-server
    wait_port RabbitMQ "$RMQ_HOST" "$RMQ_PORT"
}
if [ "$CURRENT" != unknown ] && ! disabled "$CURRENT"; then
    # The file only takes effect at the next boot. Apply the same setting to the running node (new channels read
    # it, so every daemon worker started from now on is unaffected); restart only if that does not work.
    say "running RabbitMQ has consumer_timeout=$CURRENT: applying undefined live (rabbitmqctl eval application:set_env)"
    timeout 30 rabbitmqctl eval 'application:set_env(rabbit, consumer_timeout, undefined).' >/dev/null 2>&1 || true
    CURRENT="$(running_timeout)"
    if ! disabled "$CURRENT"; then
        restart_rabbitmq
        CURRENT="$(running_timeout)"
    fi
elif [ "$CHANGED" -eq 1 ] && [ "$CURRENT" = unknown ]; then
    restart_rabbitmq  # cannot read the running value: restart so that the new file is loaded
fi
case "$CURRENT" in
    undefined|'{ok,undefined}') say "RabbitMQ consumer_timeout is undefined (disabled): $CURRENT" ;;
    unknown) say 'WARNING: could not read consumer_timeout with rabbitmqctl (not root?); check it by hand' >&2 ;;
    *) die "RabbitMQ still reports consumer_timeout=$CURRENT" ;;
esac
say 'PostgreSQL and RabbitMQ are ready'
