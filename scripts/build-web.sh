#!/usr/bin/env bash
# Builds Open Chat, the gateway's web page, into web/dist (polkadot.js and uPlot bundled from
# the npm packages pinned by web/package-lock.json; nothing is loaded from a CDN).
#   scripts/build-web.sh              # build
#   scripts/build-web.sh --if-stale   # build only when a source is newer than the build
# Prints "built web/dist" when it built.
set -euo pipefail
web="$(cd "$(dirname "${BASH_SOURCE[0]}")/../web" && pwd)"
if [ "${1:-}" = "--if-stale" ] && [ -f "$web/dist/app.js" ] \
    && [ -z "$(find "$web/src" "$web/build.js" "$web/package-lock.json" -newer "$web/dist/app.js" -print -quit)" ]; then
    exit 0
fi
if [ ! -d "$web/node_modules" ] || [ "$web/package-lock.json" -nt "$web/node_modules/.package-lock.json" ]; then
    (cd "$web" && npm ci --silent --no-audit --no-fund >/dev/null)
fi
(cd "$web" && node build.js)
# Written last: a build that failed half-way is not taken for a fresh one.
touch "$web/dist/app.js"
echo "built web/dist"
