#!/usr/bin/env bash
# The main job on the default settings: two container VPSes with different plans.
set -euo pipefail
cd "$(dirname "$0")/.."
vps() { .venv/bin/vps "$@"; }
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "this host"
vps host info

step "the store against what this host really runs"
vps reconcile

step "images (built once, then cached in /var/cache/vpshost)"
vps image build busybox
vps image build debian-12

ensure() {  # ensure NAME create-args...: create it unless it exists, then make sure it runs
  local name=$1; shift
  if ! vps show "$name" >/dev/null 2>&1; then
    step "creating $name"
    vps create "$name" "$@"
  fi
  if [ "$(vps show "$name" --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["state"])')" != running ]; then
    vps start "$name"
  fi
}
ensure demo-small --type container --image busybox --cpus 1 --memory 128M --swap 0 --disk 256M --pids 128
ensure demo-big --type container --image debian-12 --cpus 2 --memory 512M --swap 256M --disk 2G --pids 512

step "the VPSes"
vps list

step "inside demo-small (busybox): its own memory, CPUs and disk"
vps exec demo-small -- sh -c 'grep MemTotal /proc/meminfo; echo "nproc: $(nproc)"; df -h /'
step "inside demo-big (debian-12): procps free reads lxcfs"
vps exec demo-big -- sh -c 'free -m; echo "nproc: $(nproc)"; df -h /'
step "demo-small reaches demo-big by address"
big_ip=$(vps show demo-big --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["ip"])')
vps exec demo-small -- ping -c 2 "$big_ip"

cat <<HINT

Both VPSes keep running. Try: .venv/bin/vps console demo-big   (detach: Ctrl-a q)
Remove them with:          .venv/bin/vps delete --force demo-small demo-big
                       or  make clean-demo
HINT
