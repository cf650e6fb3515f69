#!/usr/bin/env bash
# Install what vpshost needs on a Debian 12 host, as root; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  lxc lxcfs uidmap busybox-static debootstrap criu   # containers, images, CRIU moves
  qemu-system-x86 qemu-utils                    # VMs
  nftables iproute2 socat                       # networking, port forwards, consoles
  e2fsprogs procps psmisc ca-certificates
  python3 python3-venv python3-pip
  chromium                                      # the web page's test renders it headless
  postgresql                                    # the store of a cluster
  fio                                           # vps bench: disk figures
  syslinux syslinux-common mtools               # bootable test disks for VMDK import
)

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "vpshost manages containers, bridges and cgroups: run this as root" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  step "Debian packages: all present"
fi

PY=python3
if [ ! -x .venv/bin/python ]; then
  step "creating the virtualenv in .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  step "installing Python dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q --progress-bar on -e '.[dev]'
  touch "$stamp"
else
  step "Python dependencies: up to date"
fi

# No systemd on every host: start lxcfs ourselves when it is not serving yet.
if [ ! -e /var/lib/lxcfs/proc/meminfo ]; then
  step "starting lxcfs"
  # a killed lxcfs leaves a dead FUSE mount ("Transport endpoint is not connected")
  if mountpoint -q /var/lib/lxcfs 2>/dev/null || ! stat /var/lib/lxcfs >/dev/null 2>&1; then
    umount -l /var/lib/lxcfs 2>/dev/null || true
  fi
  mkdir -p /var/lib/lxcfs
  setsid lxcfs /var/lib/lxcfs >/var/log/lxcfs.log 2>&1 < /dev/null &
  for _ in $(seq 50); do [ -e /var/lib/lxcfs/proc/meminfo ] && break; sleep 0.1; done
  [ -e /var/lib/lxcfs/proc/meminfo ] ||
    echo "warning: lxcfs did not start (see /var/log/lxcfs.log); /proc in containers shows the host" >&2
fi
step "starting PostgreSQL"
bash scripts/postgres.sh
step "host ready"
