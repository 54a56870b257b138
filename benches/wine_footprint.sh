#!/usr/bin/env bash
# The Windows sensorhub's memory under Wine after a minute: outpost.exe (the release build of
# .ci/windows) runs the sensors the Wine steps of .ci/windows use and uploads to a Linux cloud on loopback; after
# WARMUP seconds (default 60) it prints RSS, PSS and anonymous memory of the Wine process that
# runs outpost.exe, from /proc/PID/smaps_rollup, and the same for wineserver (which a real Windows
# does not have). Not part of CI (it waits a minute on purpose).
#
#   benches/wine_footprint.sh [path/to/outpost.exe]
#
# OUTPOST_LINUX_BIN: the Linux outpost for the cloud (default target/debug/outpost).
# Needs wine64, mingw gcc, curl and jq (what .ci/windows installs).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
exe=${1:-${WINDOWS_TARGET_DIR:-$root/target/windows}/x86_64-pc-windows-gnu/release/outpost.exe}
linux_bin=${OUTPOST_LINUX_BIN:-$root/target/debug/outpost}
warmup=${WARMUP:-60}
[ -f "$exe" ] || { echo "no $exe: build it as .ci/windows does" >&2; exit 1; }
[ -x "$linux_bin" ] || { echo "no $linux_bin: cargo build --bin outpost" >&2; exit 1; }

work=$(mktemp -d)
cloud_pid=
hub_pid=
cleanup() {
  for pid in $hub_pid $cloud_pid; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  WINEPREFIX=$work/prefix /usr/lib/wine/wineserver -k 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/bin"
cp "$exe" "$work/bin/outpost.exe"
x86_64-w64-mingw32-gcc -shared -O2 -o "$work/bin/bcryptprimitives.dll" .ci/bcryptprimitives.c -ladvapi32
export WINEPREFIX=$work/prefix WINEDEBUG=-all WINEDLLOVERRIDES=mscoree,mshtml=
wine=/usr/lib/wine/wine64
cd "$work"
# Bring the prefix up first, so its start-up is not measured as the hub's.
"$wine" "$work/bin/outpost.exe" --version >/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'listen = "127.0.0.1:%s"\ndata_dir = "%s"\n' "$port" "$work/cloud" >cloud.toml
"$linux_bin" cloud --config cloud.toml >cloud.log 2>&1 &
cloud_pid=$!
url=https://127.0.0.1:$port
api() { curl -sS --fail --max-time 10 --cacert cloud/tls/ca.pem "$@"; }
for _ in $(seq 100); do
  [ -f cloud/tls/ca.pem ] && api -o /dev/null "$url/v1/health" 2>/dev/null && break
  sleep 0.2
done
token=$(api -H "Authorization: Bearer $(cat cloud/admin-token)" -H 'Content-Type: application/json' \
  -d '{"network":"default","ttl":"1h"}' "$url/v1/enrollment-tokens" | jq -r .token)
cat >hub.toml <<TOML
data_dir = "hubdata"

[uplink]
cloud = "$url"
ca_file = 'Z:${work//\//\\}\\cloud\\tls\\ca.pem'
enroll_token = "$token"
discover = false
advertise = false

# The sensors .ci/windows runs under Wine: the defaults (cpu, memory, disk, diskio, network, load)
# and the Windows-only ones.
[[sensor]]
kind = "cpu"

[[sensor]]
kind = "memory"

[[sensor]]
kind = "disk"

[[sensor]]
kind = "diskio"

[[sensor]]
kind = "network"

[[sensor]]
kind = "load"

[[sensor]]
kind = "service"
unit = "RpcSs"

[[sensor]]
kind = "eventlog"
logs = ["System", "Application"]

[[sensor]]
kind = "perfcounter"
name = "cpu"
counter = '\Processor(_Total)\% Processor Time'
TOML
"$wine" "$work/bin/outpost.exe" sensorhub --config hub.toml >hub.log 2>&1 &
hub_pid=$!
sleep "$warmup"
kill -0 "$hub_pid" 2>/dev/null || { echo "the hub exited: $(tail -n 5 hub.log)" >&2; exit 1; }
# Wine's loader replaces itself with the preloader that runs the exe: the process started above
# is the one whose memory is outpost.exe's.
grep -q 'outpost.exe' "/proc/$hub_pid/cmdline" || { echo "pid $hub_pid is not outpost.exe" >&2; exit 1; }
show() {
  awk -v who="$1" '/^Rss:/ {r=$2} /^Pss:/ {p=$2} /^Anonymous:/ {a=$2}
    END {printf "%-34s RSS %6.1f MB  PSS %6.1f MB  anonymous %6.1f MB\n", who, r/1024, p/1024, a/1024}' "$2"
}
echo "after ${warmup} s (load average $(cut -d' ' -f1-3 /proc/loadavg)), the sensors of .ci/windows, uploading:"
show "outpost.exe sensorhub (wine64)" "/proc/$hub_pid/smaps_rollup"
# This prefix's wineserver works in /tmp/.wine-UID/server-<device>-<inode of the prefix>.
dir=$(printf 'server-%x-%x' "$(stat -c %d "$WINEPREFIX")" "$(stat -c %i "$WINEPREFIX")")
for pid in $(pgrep -x wineserver || true); do
  [[ $(readlink "/proc/$pid/cwd" 2>/dev/null) == */"$dir" ]] && show "wineserver (not on Windows)" "/proc/$pid/smaps_rollup"
done
echo "outpost.exe: $(stat -c %s "$exe") bytes"
