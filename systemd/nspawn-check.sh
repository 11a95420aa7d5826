#!/usr/bin/env bash
# Runs the daemon under systemd/facegate.service in a booted systemd-nspawn container, on a machine whose own
# PID 1 is not systemd (a CI container): the unit's sandbox is built by a real systemd, not judged offline.
#
#   sudo systemd/nspawn-check.sh [PREFIX [PATH...]]   # root; systemd-nspawn (systemd-container), mosquitto
#
# PREFIX: the Python installation (or venv) whose bin/ holds `facegate` (default: python3's); PATHs: more
# folders it needs inside the container, e.g. a venv's base interpreter (bound read-only).
#
# The host's root file system is bound (without its submounts) into a private mount namespace and booted with
# a tmpfs overlay (--volatile=overlay) and a private network (loopback only): nothing written inside reaches
# the host. The container runs in the unified cgroup hierarchy with bpf() allowed, which systemd needs for
# IPAddressDeny=. Kiosk profile, an image folder as the camera, the container's mosquitto as the broker.
#
# Checks: the daemon starts (READY=1) and stays up past the watchdog; /healthz answers; events arrive on the
# broker; the process runs in a user namespace with no capabilities, a seccomp filter and the video group;
# a broker on another address is unreachable until a drop-in allows it; stop is clean.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX="${1:-$(dirname "$(dirname "$(readlink -f "$(command -v python3)")")")}"  # the Python to run
shift || true
EXTRA=""
for path in "$@"; do EXTRA="$EXTRA --bind-ro=$path"; done
WORK="$(mktemp -d /tmp/fg-nspawn.XXXXXX)"
NSPAWN=""
trap '[ -z "$NSPAWN" ] || { kill $NSPAWN 2>/dev/null; wait $NSPAWN 2>/dev/null; }; rm -rf "$WORK"' EXIT
ROOT="$WORK/root"
mkdir -p "$ROOT" "$WORK/etc/frames" "$WORK/credstore" "$WORK/in"
DATA="${FACEGATE_DATA:-$REPO/../shared}"
cp "$DATA"/lfw/images/George_W_Bush/George_W_Bush_0007.jpg "$DATA"/lfw/images/AJ_Cook/AJ_Cook_0001.jpg \
   "$DATA"/liveness/image_T1.jpg "$WORK/etc/frames/"
cat > "$WORK/etc/facegate.toml" <<'EOF'
profile = "kiosk"
[camera]
source = "/etc/facegate/frames"
fps = 5.0
frames_per_image = 10
loop = true
[mqtt]
device = "nspawn"
EOF
sed -e 's/^device = "nspawn"/device = "nspawn-remote"\nhost = "10.99.0.1"\nport = 1884/' \
    "$WORK/etc/facegate.toml" > "$WORK/in/remote.toml"
chmod -R a+rX "$WORK/etc"
openssl rand -hex 32 > "$WORK/credstore/facegate.store-key"
openssl rand -hex 32 > "$WORK/credstore/facegate.command-secret"
chmod 700 "$WORK/credstore"; chmod 600 "$WORK/credstore"/*
# Test-only drop-in: this Python may live under /root (pyenv), which ProtectHome=yes hides (tmpfs instead, so
# that the bound folder can be reached); the code under test is this checkout.
cat > "$WORK/in/test.conf" <<EOF
[Service]
ProtectHome=tmpfs
BindReadOnlyPaths=$PREFIX $*
Environment=PATH=$PREFIX/bin:/usr/bin:/bin
Environment=PYTHONPATH=$REPO
EOF
printf '[Service]\nBindReadOnlyPaths=/tmp/in/remote.toml:/etc/facegate/facegate.toml\n' > "$WORK/in/remote.conf"
printf '[Service]\nIPAddressAllow=10.99.0.1\n' > "$WORK/in/allow-broker.conf"
printf 'listener 1884 10.99.0.1\nallow_anonymous true\n' > "$WORK/in/m1884.conf"

unshare -m bash -c "
  mount --make-rprivate / && mount --bind / '$ROOT' &&
  exec env SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn -D '$ROOT' --volatile=overlay --private-network \
    --register=no --keep-unit --boot -M fgcheck --capability=all --system-call-filter=bpf --console=passive \
    --bind-ro='$WORK/in:/tmp/in' --bind-ro='$WORK/etc:/etc/facegate' --bind-ro='$WORK/credstore:/etc/credstore' \
    --bind-ro='$REPO' --bind-ro='$PREFIX' $EXTRA
" > "$WORK/nspawn.log" 2>&1 &
NSPAWN=$!
INIT=""
for _ in $(seq 90); do
  sleep 1
  # The container's PID 1, seen from here (the host's own init, if systemd, has another command line).
  INIT="$(pgrep -n -f '^/usr/lib/systemd/systemd$' || true)"
  [ -n "$INIT" ] || continue
  state="$(nsenter -t "$INIT" -m -u -i -n -p systemctl is-system-running 2>/dev/null || true)"
  case "$state" in running|degraded) break ;; esac
done
[ -n "$INIT" ] || { cat "$WORK/nspawn.log"; exit 1; }
C() { nsenter -t "$INIT" -m -u -i -n -p "$@"; }
say() { printf '\n== %s\n' "$*"; }

C mkdir -p /etc/systemd/system/facegate.service.d
C cp "$REPO/systemd/facegate.service" /etc/systemd/system/
C cp /tmp/in/test.conf /etc/systemd/system/facegate.service.d/
C systemctl daemon-reload
say "systemd-analyze security (the container's systemd, $(C systemctl --version | head -1))"
C systemd-analyze security facegate.service --no-pager | tail -1
say "start (Type=notify: returns after READY=1)"
C systemctl start facegate
sleep 25  # past the 10 s watchdog, twice
C systemctl is-active facegate
C systemctl show facegate -p MainPID -p NRestarts -p StatusText
say "healthz"
C curl -s http://127.0.0.1:9108/healthz; echo
say "events on the broker"
C mosquitto_sub -h 127.0.0.1 -t 'facegate/nspawn/#' -v -C 3 -W 30 | cut -c1-160
say "the process's credentials"
pid="$(C systemctl show -p MainPID --value facegate)"
C grep -E '^(Uid|Gid|Groups|CapEff|CapBnd|NoNewPrivs|Seccomp):' "/proc/$pid/status"
echo "uid_map: $(C cat "/proc/$pid/uid_map" | tr -s ' \n' ' ')"
say "a broker at 10.99.0.1:1884, not allowed"
C ip addr add 10.99.0.1/32 dev lo
C systemd-run --unit=broker1884 mosquitto -c /tmp/in/m1884.conf
C cp /tmp/in/remote.conf /etc/systemd/system/facegate.service.d/
C systemctl daemon-reload
C systemctl restart facegate
sleep 20
C journalctl -u facegate -o cat --no-pager --since -20s | { grep 'mqtt:' || true; } | tail -3 | cut -c1-160
C curl -s http://127.0.0.1:9108/healthz; echo
say "... allowed by a drop-in (IPAddressAllow=10.99.0.1)"
C cp /tmp/in/allow-broker.conf /etc/systemd/system/facegate.service.d/
C systemctl daemon-reload
C systemctl restart facegate
sleep 20
C journalctl -u facegate -o cat --no-pager --since -25s | { grep 'mqtt:' || true; } | tail -3 | cut -c1-160
C curl -s http://127.0.0.1:9108/healthz; echo
say "stop"
C systemctl stop facegate
C systemctl show facegate -p Result -p ExecMainStatus
