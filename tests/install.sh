#!/usr/bin/env bash
# test_install -- `cmake --install` under a prefix of its own: the tally
# command runs from it without LD_LIBRARY_PATH, every command has a man
# page that says what its --help says, the docs and the example price file
# are there, and a program built against the installed library (pkg-config)
# runs with the RUNPATH the README gives.
set -u
BUILD=${1:?usage: install.sh BUILD_DIR}
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
pass=0 fail=0
check() { local name=$1; shift; if "$@"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $name"; fi; }
cmake --install "$BUILD" --prefix "$prefix" >/dev/null || { echo "FAIL: cmake --install"; exit 1; }
check "tally runs from the prefix" env -u LD_LIBRARY_PATH "$prefix/bin/tally" --version
for cmd in $("$prefix/bin/tally" --help | sed -n '/^commands:/,/^$/p' | awk 'NR > 1 && NF { print $1 }'); do
    page="$prefix/share/man/man1/tally-$cmd.1"
    check "man page for $cmd" test -s "$page"
    usage=$("$prefix/bin/tally" "$cmd" --help | head -1 | sed 's/^usage: //')
    check "man page for $cmd has its usage" grep -qF "$usage" "$page"
done
check "man page tally.1" test -s "$prefix/share/man/man1/tally.1"
check "man renders it" bash -c "MANWIDTH=80 man -l '$prefix/share/man/man1/tally-stats.1' 2>/dev/null | grep -q 'SYNOPSIS'"
check "README installed" test -s "$prefix/share/doc/tally/README.md"
check "docs installed" test -s "$prefix/share/doc/tally/format.md" -a -s "$prefix/share/doc/tally/report.md"
check "example prices installed" test -s "$prefix/share/doc/tally/examples/prices.json"
cat >"$prefix/prog.c" <<'C'
#include <tally.h>
int main(void)
{
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = "prog.jsonl";
    tally_t *h = tally_open(&cfg);
    tally_request q = {0};
    q.model = "m";
    q.prompt_tokens = 1;
    tally_request_record(h, &q);
    tally_close(h, NULL);
    return 0;
}
C
lib=$(ls -d "$prefix"/lib* | head -1)
(cd "$prefix" && cc prog.c -o prog $(PKG_CONFIG_PATH="$lib/pkgconfig" pkg-config --cflags --libs tally) -Wl,-rpath,"$lib") || echo "cc failed"
check "a program links the installed library" test -x "$prefix/prog"
check "and runs without LD_LIBRARY_PATH" bash -c "cd '$prefix' && env -u LD_LIBRARY_PATH ./prog && grep -q '\"model\":\"m\"' prog.jsonl"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
