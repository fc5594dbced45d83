#!/usr/bin/env bash
# Two simulated hosts on one machine, for data-parallel benchmarks: two network namespaces joined by a
# veth pair, each direction limited by a token-bucket filter (tc tbf; netem's delay as well when the
# kernel has sch_netem), one rank in each (torchrun's environment, MASTER_ADDR = the first namespace).
# Runs as root; removes the namespaces on exit, whatever happens.
#
#   sudo scripts/dist_netns.sh --rate 1gbit --delay-ms 0.5 -- ./build/benchmarks/dist_bench --threads 1 ...
set -euo pipefail
rate=1gbit delay_ms=0.5 port=29800
while (($#)); do
  case "$1" in
    --rate) rate=$2; shift 2 ;;
    --delay-ms) delay_ms=$2; shift 2 ;;
    --master-port) port=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "usage: $0 [--rate R] [--delay-ms D] [--master-port P] -- program args..." >&2; exit 2 ;;
  esac
done
(($#)) || { echo "$0: no program given" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "$0: needs root (ip netns, tc)" >&2; exit 2; }
ns=(peft-host0 peft-host1) dev=(peft-veth0 peft-veth1) ip=(10.99.0.1 10.99.0.2)
cleanup() { for n in "${ns[@]}"; do ip netns del "$n" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
cleanup
for i in 0 1; do ip netns add "${ns[$i]}"; done
ip link add "${dev[0]}" netns "${ns[0]}" type veth peer name "${dev[1]}" netns "${ns[1]}"
link="rate $rate"
for i in 0 1; do
  ip -n "${ns[$i]}" addr add "${ip[$i]}/24" dev "${dev[$i]}"
  ip -n "${ns[$i]}" link set lo up
  ip -n "${ns[$i]}" link set "${dev[$i]}" up
  if ip netns exec "${ns[$i]}" tc qdisc add dev "${dev[$i]}" root netem delay "${delay_ms}ms" rate "$rate" 2>/dev/null; then
    link="netem rate $rate, delay ${delay_ms} ms each way"
  else
    ip netns exec "${ns[$i]}" tc qdisc add dev "${dev[$i]}" root tbf rate "$rate" burst 256kb latency 50ms
    link="tbf rate $rate (no sch_netem in this kernel: no added delay)"
  fi
done
echo "dist_netns: ${ns[0]} ${ip[0]} <-> ${ns[1]} ${ip[1]}: $link" >&2
pids=()
for i in 0 1; do
  ip netns exec "${ns[$i]}" env RANK=$i LOCAL_RANK=0 WORLD_SIZE=2 LOCAL_WORLD_SIZE=1 MASTER_ADDR="${ip[0]}" \
    MASTER_PORT="$port" GLOO_SOCKET_IFNAME="${dev[$i]}" PEFT_LINK="$link" "$@" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
