#!/usr/bin/env bash
# The README's install, offline, into a fresh virtual environment: the
# package builds from the sources, imports, records, and puts the tally
# command on the environment's PATH.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# pip builds in the source tree: work on a copy so the checkout stays clean.
cp -r "$root/include" "$root/src" "$root/cli" "$work/"
mkdir "$work/python" && cp -r "$root/python/setup.py" "$root/python/pyproject.toml" "$root/python/tally" "$root/python/ext" "$work/python/"
/usr/bin/python3 -m venv --system-site-packages "$work/venv"
PIP_NO_INDEX=1 "$work/venv/bin/pip" install -q --no-build-isolation "$work/python" >"$work/pip.log" 2>&1 || { cat "$work/pip.log"; exit 1; }
cd "$work"
version=$("$work/venv/bin/tally" --version)
[ "$version" = "tally $(sed -n 's/#define TALLY_VERSION_STRING "\(.*\)"/\1/p' "$root/include/tally.h")" ] || { echo "tally --version: $version"; exit 1; }
"$work/venv/bin/python" -c '
import tally
with tally.Tally(path="e.jsonl") as t:
    t.request(model="m", prompt_tokens=3, completion_tokens=2, latency_us=1000)
print(tally.__file__)
' >"$work/where"
grep -q "$work/venv" "$work/where" || { echo "imported from $(cat "$work/where"), not the venv"; exit 1; }
out=$(PATH="$work/venv/bin:$PATH" tally stats --json e.jsonl)
echo "$out" | tr -d ' ' | grep -q '"requests":1' || { echo "tally stats: $out"; exit 1; }
echo "install ok: $version"
