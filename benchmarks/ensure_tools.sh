#!/usr/bin/env bash
# Install what the benchmarks run besides Python: valgrind (instruction counts, with its
# headers for the in-process switch), a C compiler to build that switch, and wrk (HTTP load).
# Installs with apt-get when run as root (or with passwordless sudo); otherwise says what is missing.
set -uo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }

missing=()
command -v valgrind >/dev/null && [ -f /usr/include/valgrind/callgrind.h ] || missing+=(valgrind)
command -v cc >/dev/null || missing+=(gcc)
command -v wrk >/dev/null || missing+=(wrk)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "ensure_tools: installing ${missing[*]}"
if ! { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
  echo "ensure_tools: could not install ${missing[*]} (apt-get install ${missing[*]}): the benchmarks that need them report it" >&2
fi
exit 0
