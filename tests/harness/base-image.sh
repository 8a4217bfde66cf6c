#!/bin/bash
# Builds a stand-in for a base image that no registry could provide, from Debian packages, and imports it
# into the Docker engine under the name the Dockerfiles and compose files use. For tests on machines without
# a registry only: the image carries a label saying it is a stand-in, and tests/harness/docker.py reports it.
#
# Usage: base-image.sh KIND TAG      KIND: python | rabbitmq | postgres | engine
#   python    stand-in for python:3.11.x-slim-*: Debian bookworm + Debian's python3.11, a venv AT /usr/local
#             so that python and pip are in /usr/local/bin and packages in /usr/local/lib/python3.11, as in
#             the official image. Carries this machine's CA certificates (see below).
#   rabbitmq  stand-in for rabbitmq:4.x-management: Debian trixie + Debian's rabbitmq-server 4.0 (Erlang 27),
#             management and prometheus plugins, an entrypoint that drops to the rabbitmq user;
#             RABBITMQ_DEFAULT_USER/_PASS work as in the official image (rabbitmq-server reads them itself).
#   postgres  stand-in for postgres:15: Debian bookworm + Debian's postgresql-15, an entrypoint that creates the
#             cluster on an empty data directory from POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB (as the
#             official image does, without its init scripts), listens on every address, password auth over TCP.
#   engine    Debian trixie's Docker Engine 26 with Compose v2 and buildx, to run as a container on an older
#             host engine (tests/harness/docker.py, InnerEngine).
#
# debootstrap runs once per KIND: its result is kept as a tarball in $EVENTAGG_DOCKER_CACHE (default
# /var/cache/eventagg-docker, outside the repository), and a later run only imports that again.
set -euo pipefail
KIND=${1:?kind: python, rabbitmq or engine}
TAG=${2:?image tag}
CACHE=${EVENTAGG_DOCKER_CACHE:-/var/cache/eventagg-docker}
# The Debian mirror is the one this machine's apt uses (its sources, read as apt reads them, by
# apt_mirror.py); DEBIAN_MIRROR and DEBIAN_SECURITY_MIRROR override it.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MIRROR=$(python3 "$HERE/apt_mirror.py" archive)
SECURITY=$(python3 "$HERE/apt_mirror.py" security 2>/dev/null || true)
TARBALL="$CACHE/rootfs-$KIND.tar"
mkdir -p "$CACHE"

case "$KIND" in
    python)
        SUITE=bookworm
        PACKAGES="python3.11 python3.11-venv ca-certificates netbase tzdata"
        CHANGES=(-c 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' -c 'ENV LANG=C.UTF-8'
                 -c 'CMD ["python3"]') ;;
    rabbitmq)
        SUITE=trixie
        PACKAGES="rabbitmq-server ca-certificates"
        CHANGES=(-c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' -c 'ENV LANG=C.UTF-8'
                 -c 'ENV HOME=/var/lib/rabbitmq' -c 'ENV RABBITMQ_DATA_DIR=/var/lib/rabbitmq'
                 -c 'EXPOSE 4369 5671 5672 15671 15672 15691 15692 25672' -c 'VOLUME /var/lib/rabbitmq'
                 -c 'ENTRYPOINT ["docker-entrypoint.sh"]' -c 'CMD ["rabbitmq-server"]') ;;
    postgres)
        SUITE=bookworm
        PACKAGES="postgresql-15 ca-certificates"
        CHANGES=(-c 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
                 -c 'ENV LANG=C.UTF-8' -c 'ENV PGDATA=/var/lib/postgresql/data' -c 'EXPOSE 5432'
                 -c 'VOLUME /var/lib/postgresql/data'
                 -c 'ENTRYPOINT ["docker-entrypoint.sh"]' -c 'CMD ["postgres"]') ;;
    engine)
        SUITE=trixie
        PACKAGES="docker.io docker-cli docker-compose docker-buildx iptables ca-certificates curl procps"
        CHANGES=(-c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
                 -c 'VOLUME /var/lib/docker' -c 'CMD ["dockerd"]') ;;
    *) echo "base-image.sh: unknown kind $KIND" >&2; exit 2 ;;
esac

if [ ! -s "$TARBALL" ]; then
    command -v debootstrap >/dev/null || { echo "base-image.sh: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
    ROOT=$(mktemp -d "$CACHE/rootfs-$KIND.XXXXXX")
    cleanup() { umount "$ROOT/proc" 2>/dev/null || true; rm -rf "$ROOT"; }
    trap cleanup EXIT
    echo "base-image.sh: debootstrap $SUITE for $KIND (once; kept as $TARBALL)"
    debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >/dev/null
    if [ "$SUITE" = bookworm ]; then
        printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$MIRROR" "$MIRROR" > "$ROOT/etc/apt/sources.list"
        if [ -n "$SECURITY" ]; then
            printf 'deb %s bookworm-security main\n' "$SECURITY" >> "$ROOT/etc/apt/sources.list"
        else
            echo "base-image.sh: apt names no security mirror here (set DEBIAN_SECURITY_MIRROR); none used" >&2
        fi
    fi
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    # No services start inside the chroot.
    printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"; chmod +x "$ROOT/usr/sbin/policy-rc.d"
    mount -t proc proc "$ROOT/proc"
    chroot "$ROOT" apt-get update -qq
    # shellcheck disable=SC2086
    chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
    case "$KIND" in
        python)
            # Egress from some machines goes through a TLS-intercepting proxy: pip inside `docker build` then
            # needs the machine's CA certificates trusted in the image (the official image would need the same).
            if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
                cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
                chroot "$ROOT" update-ca-certificates >/dev/null
            fi
            chroot "$ROOT" /usr/bin/python3.11 -m venv /usr/local
            printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$ROOT/etc/pip.conf" ;;
        rabbitmq)
            rm -f "$ROOT/var/lib/rabbitmq/.erlang.cookie"   # made on the first start, on the data volume
            ln -sf /var/lib/rabbitmq/.erlang.cookie "$ROOT/root/.erlang.cookie"
            echo '[rabbitmq_management,rabbitmq_prometheus].' > "$ROOT/etc/rabbitmq/enabled_plugins"
            mkdir -p "$ROOT/etc/rabbitmq/conf.d"
            printf 'loopback_users.guest = false\nlog.console = true\nlog.console.level = info\nlog.file = false\n' \
                > "$ROOT/etc/rabbitmq/conf.d/10-defaults.conf"
            cat > "$ROOT/usr/local/bin/docker-entrypoint.sh" <<'ENTRYPOINT'
#!/bin/sh
set -e
if [ "$1" = rabbitmq-server ] && [ "$(id -u)" = 0 ]; then
    find /var/lib/rabbitmq \! -user rabbitmq -exec chown rabbitmq:rabbitmq '{}' +
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$0" "$@"
fi
if [ "$1" = rabbitmq-server ]; then shift; exec /usr/lib/rabbitmq/bin/rabbitmq-server "$@"; fi
exec "$@"
ENTRYPOINT
            chmod +x "$ROOT/usr/local/bin/docker-entrypoint.sh" ;;
        postgres)
            # Debian's package made a cluster under /var/lib/postgresql/15/main; the image's is made at start.
            rm -rf "$ROOT/var/lib/postgresql/15" "$ROOT/etc/postgresql/15"
            cat > "$ROOT/usr/local/bin/docker-entrypoint.sh" <<'ENTRYPOINT'
#!/bin/sh
set -e
if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb -D "$PGDATA" --username="${POSTGRES_USER:-postgres}" --pwfile="$pwfile" --encoding=UTF8 \
        --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    db=${POSTGRES_DB:-${POSTGRES_USER:-postgres}}
    if [ "$db" != postgres ]; then
        echo "CREATE DATABASE \"$db\" OWNER \"${POSTGRES_USER:-postgres}\"" | postgres --single -D "$PGDATA" postgres >/dev/null
    fi
fi
exec "$@"
ENTRYPOINT
            chmod +x "$ROOT/usr/local/bin/docker-entrypoint.sh" ;;
    esac
    chroot "$ROOT" apt-get clean
    rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT/usr/sbin/policy-rc.d"
    : > "$ROOT/etc/resolv.conf"
    umount "$ROOT/proc"
    tar -C "$ROOT" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf "$TARBALL.part" .
    mv "$TARBALL.part" "$TARBALL"
fi

LABEL="LABEL org.eventagg.stand-in=\"$KIND from Debian packages (tests/harness/base-image.sh), not the registry's image\""
if [ "$KIND" = postgres ]; then
    # SIGINT is PostgreSQL's fast shutdown, and the official image's STOPSIGNAL (on SIGTERM the server waits for
    # every client to disconnect). `docker import` cannot set it: a one-line build on the imported image does.
    IMPORTED=$(docker import "${CHANGES[@]}" "$TARBALL")
    printf 'FROM %s\nSTOPSIGNAL SIGINT\n%s\n' "$IMPORTED" "$LABEL" | docker build --quiet -t "$TAG" - >/dev/null
else
    docker import "${CHANGES[@]}" -c "$LABEL" "$TARBALL" "$TAG" >/dev/null
fi
echo "base-image.sh: imported $TAG (stand-in: $KIND from Debian packages)"
