#!/usr/bin/env bash
# The netns tests: client / router / server namespaces, real FTP servers (vsftpd, pyftpdlib,
# proftpd), real clients (curl, lftp, wget, Python ftplib, busybox, ncftp), ftpgate in the router.
# Runs every scenario (t-*.sh beside this script), or those named (`run.sh cache load`), one
# after the other, each in namespaces of its own; each prints a PASS/FAIL line per case and its
# own "N passed, N failed"; this prints the total last. A scenario also runs alone
# (`netns-tests/t-cache.sh`, `TOPO=routed netns-tests/t-clients.sh`). Needs root and the
# packages from scripts/install-deps.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ $(id -u) == 0 ]] || { echo "run as root"; exit 1; }
if (($#)); then
  scenarios=(); for n in "$@"; do scenarios+=("$HERE/t-${n#t-}"); scenarios[-1]=${scenarios[-1]%.sh}.sh; done
else
  scenarios=("$HERE"/t-*.sh)
fi
order=(clients servers ftps security restart transfer-end load cache ipv6 nat64 proxy policy servermode appliance)
sorted=()
for o in "${order[@]}"; do for s in "${scenarios[@]}"; do [[ $(basename "$s") == "t-$o.sh" ]] && sorted+=("$s"); done; done
for s in "${scenarios[@]}"; do [[ " ${sorted[*]} " == *" $s "* ]] || sorted+=("$s"); done
passed=0 failed=0 failures=()
log=$(mktemp)
for s in "${sorted[@]}"; do
  name=$(basename "$s" .sh); name=${name#t-}
  echo "== $name"
  if [[ ! -f $s ]]; then
    failed=$((failed + 1)); failures+=("$name: no such scenario ($s)"); continue
  fi
  start=$(date +%s)
  bash "$s" 2>&1 | tee "$log"
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1)
  if [[ -z $line ]]; then
    failed=$((failed + 1)); failures+=("$name: ended without its summary line")
  else
    read -r p _ f _ <<<"$line"
    passed=$((passed + p)) failed=$((failed + f))
    while IFS= read -r l; do failures+=("$name: ${l#FAIL: }"); done < <(grep '^FAIL: ' "$log")
  fi
  echo "== $name: ${line:-no summary} ($(($(date +%s) - start)) s)"
done
rm -f "$log"
for f in "${failures[@]}"; do echo "  failed: $f"; done
echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
