#!/usr/bin/env bash
# Throw-away LANs made of network namespaces, for tests that need real multicast (SSDP) without
# touching this machine's interfaces. Needs root and iproute2 (`ip`).
#
#   netns.sh up PREFIX HOST=CIDR[,CIDR...] [HOST=CIDR...]
#       Creates namespace PREFIX-br holding bridge br0 (IGMP snooping off, so group traffic is
#       simply flooded), and for each HOST a namespace PREFIX-HOST whose eth0 is a veth cabled to
#       br0, with the given addresses, lo up, and a route for 224.0.0.0/4 on eth0. All hosts share
#       one layer-2 segment; give them addresses on different subnets to model a router-less
#       foreign network. HOST is 1-12 of [a-z0-9]. Nothing is created in the root namespace.
#   netns.sh exec PREFIX HOST COMMAND [ARGS...]
#       Runs COMMAND inside PREFIX-HOST (same as `ip netns exec PREFIX-HOST ...`).
#   netns.sh down PREFIX
#       Ends the processes still running in the PREFIX-* namespaces (by pid) and deletes them.
#       Safe to run twice, and after a failed `up`.
#   netns.sh list PREFIX
#       Prints the PREFIX-* namespaces.
#
# Example:
#   tests/netns/netns.sh up t1 hub=10.77.0.2/24 conn=10.77.0.1/24
#   tests/netns/netns.sh exec t1 conn outpost connector --config conn.toml &
#   tests/netns/netns.sh exec t1 hub gssdp-discover -i eth0 -n 3
#   tests/netns/netns.sh down t1
set -euo pipefail

usage() {
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 64
}

namespaces() {
    ip netns list | awk '{print $1}' | grep -E "^$1-" || true
}

down() {
    local prefix=$1 ns pid
    for ns in $(namespaces "$prefix"); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill "$pid" 2>/dev/null || true
        done
        ip netns del "$ns" 2>/dev/null || true
    done
}

check_prefix() {
    [[ $1 =~ ^[A-Za-z0-9_.-]{1,40}$ ]] || { echo "bad PREFIX '$1'" >&2; exit 64; }
}

[[ $# -ge 2 ]] || usage
cmd=$1
prefix=$2
check_prefix "$prefix"
shift 2

case $cmd in
up)
    [[ $# -ge 1 ]] || usage
    if [[ -n $(namespaces "$prefix") ]]; then
        echo "namespaces $prefix-* exist already; run: $0 down $prefix" >&2
        exit 1
    fi
    trap 'down "$prefix"' ERR
    br="$prefix-br"
    ip netns add "$br"
    ip -n "$br" link set lo up
    ip -n "$br" link add br0 type bridge mcast_snooping 0
    ip -n "$br" link set br0 up
    for spec in "$@"; do
        host=${spec%%=*}
        cidrs=${spec#*=}
        if ! [[ $host =~ ^[a-z0-9]{1,12}$ ]] || [[ $host == "$spec" ]] || [[ $host == br ]]; then
            echo "bad HOST=CIDR '$spec'" >&2
            false
        fi
        ns="$prefix-$host"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip -n "$br" link add "v-$host" type veth peer name eth0 netns "$ns"
        ip -n "$br" link set "v-$host" master br0 up
        for cidr in ${cidrs//,/ }; do
            ip -n "$ns" addr add "$cidr" dev eth0
        done
        ip -n "$ns" link set eth0 up
        ip -n "$ns" route add 224.0.0.0/4 dev eth0
    done
    trap - ERR
    ;;
exec)
    [[ $# -ge 2 ]] || usage
    host=$1
    shift
    exec ip netns exec "$prefix-$host" "$@"
    ;;
down)
    down "$prefix"
    ;;
list)
    namespaces "$prefix"
    ;;
*)
    usage
    ;;
esac
