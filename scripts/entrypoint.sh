#!/bin/sh
# The ferry image's entrypoint (Dockerfile, target `ferry`): refuse to start with a secret
# that is still a placeholder from .env.example (anyone can read those), then exec ferry.
#
#   ferry-entrypoint serve      what the image runs (CMD ["serve"])
#
# A placeholder is any value containing "change-me" (every secret in .env.example does).
# Checked: FERRY_JWT_SECRET, FERRY_ADMIN_TOKEN and the password inside FERRY_DB_URL.
# Exit 78 (EX_CONFIG) with what to do; `restart: unless-stopped` keeps retrying, and
# `docker compose logs ferry` shows the message.
set -eu

is_placeholder() {
    case $1 in
        *change-me*) return 0 ;;
    esac
    return 1
}

found=""
if is_placeholder "${FERRY_JWT_SECRET:-}"; then found="$found FERRY_JWT_SECRET"; fi
if is_placeholder "${FERRY_ADMIN_TOKEN:-}"; then found="$found FERRY_ADMIN_TOKEN"; fi
# mysql://user:PASSWORD@host:port/db: the part between the last ':' before '@' and the '@'.
db_url=${FERRY_DB_URL:-}
case $db_url in
    *://*@*)
        userinfo=${db_url#*://}
        userinfo=${userinfo%%@*}
        case $userinfo in
            *:*) if is_placeholder "${userinfo#*:}"; then found="$found MYSQL_PASSWORD"; fi ;;
        esac
        ;;
esac

if [ -n "$found" ]; then
    for name in $found; do
        echo "ferry: refusing to start: $name is still the placeholder from .env.example, which is public" >&2
    done
    echo "ferry: write a .env with real secrets: ops/tools/new-env.sh (or replace every change-me in .env with e.g. \`openssl rand -hex 32\`), then: docker compose up -d" >&2
    exit 78
fi

exec ferry "$@"
