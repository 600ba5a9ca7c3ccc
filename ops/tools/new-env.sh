#!/bin/sh
# new-env.sh [FILE]: write FILE (default .env) from .env.example with every change-me
# placeholder replaced by a fresh random secret (48 hex digits: letters and digits only, so
# it is safe inside FERRY_DB_URL). Refuses to overwrite an existing file.
set -eu
cd "$(dirname "$0")/../.."
out=${1:-.env}
if [ -e "$out" ]; then
    echo "new-env.sh: $out exists; remove it first (its secrets may be in use)" >&2
    exit 1
fi
umask 077
tmp="$out.tmp.$$"
: > "$tmp"
while IFS= read -r line || [ -n "$line" ]; do
    case $line in
        \#*|'') ;;
        *=*change-me*)
            secret=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
            line="${line%%=*}=$secret"
            ;;
    esac
    printf '%s\n' "$line" >> "$tmp"
done < .env.example
mv "$tmp" "$out"
echo "wrote $out with fresh secrets (mode 0600); keep it out of git (it is in .gitignore)" >&2
