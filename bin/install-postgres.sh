#!/usr/bin/env bash
# Install Debian's PostgreSQL server (with contrib's btree_gist) for tests/test_postgres.py.
#
# Idempotent: returns at once where a server with btree_gist is already installed.  Needs root (CI runs as
# root) or password-less sudo; without either it says so and exits 0, and the PostgreSQL tests skip.
# The tests start their own private server (tests/postgres_fixtures.py), so no system cluster is created:
# a createcluster.d drop-in turns off Debian's automatic "main" cluster before the package is installed.
set -euo pipefail

have_postgres() {
    local bin version
    for bin in /usr/lib/postgresql/*/bin; do
        [[ -x "$bin/initdb" && -x "$bin/postgres" ]] || continue
        version=$(basename "$(dirname "$bin")")
        [[ -f "/usr/share/postgresql/$version/extension/btree_gist.control" ]] || continue
        # The server cannot run as root: the package's postgres account runs it under root.
        id postgres >/dev/null 2>&1 || continue
        return 0
    done
    return 1
}

if have_postgres; then
    echo "[postgres] already installed: $(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' ')"
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "[postgres] not installed and no root/sudo: skipping (tests/test_postgres.py will skip)." >&2
    echo "[postgres] as root: apt-get update && apt-get install -y postgresql postgresql-contrib" >&2
    exit 0
fi

echo "[postgres] installing Debian's postgresql and postgresql-contrib"
"${as_root[@]}" mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | "${as_root[@]}" tee /etc/postgresql-common/createcluster.d/no-main-cluster.conf >/dev/null
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    postgresql postgresql-contrib >/dev/null

if ! have_postgres; then
    echo "[postgres] ERROR: installed, but no initdb/postgres with btree_gist under /usr/lib/postgresql" >&2
    exit 1
fi
echo "[postgres] installed: $(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' ')"
