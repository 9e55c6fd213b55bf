#!/usr/bin/env bash
# Installs everything fieldgate needs on a fresh Debian machine: Debian packages (Mosquitto for
# the external-broker tests and the tour's mosquitto_pub, dbus for the BLE simulator), then a virtualenv with fieldgate and
# its test tools. Safe to run again.
set -euo pipefail
VENV=${1:-.venv}
need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
# A private D-Bus daemon hosts the simulated BlueZ that the BLE tests run bleak against.
command -v dbus-daemon >/dev/null 2>&1 || need_apt+=(dbus)
# Kafka, ZooKeeper and Cassandra for the distributed tests come from Maven Central through mvn.
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
# kcat and protoc: the documented way to read and decode a stage's Kafka topic (tested).
command -v kcat >/dev/null 2>&1 || need_apt+=(kcat)
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
# Debian's Chromium: the dashboard's browser test drives it with Playwright (no browser download).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)

# Debian's mosquitto service: systemd where it runs, else the init script (invoke-rc.d or
# service) and update-rc.d; as a last resort the PID in the package's own PID file, and only if
# that process is a mosquitto.
stop_debian_mosquitto() {
  local pidfile=/run/mosquitto/mosquitto.pid pid
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now mosquitto.service >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/mosquitto ]; then
    if command -v invoke-rc.d >/dev/null 2>&1; then
      $SUDO invoke-rc.d mosquitto stop >/dev/null 2>&1 || true
    elif command -v service >/dev/null 2>&1; then
      $SUDO service mosquitto stop >/dev/null 2>&1 || true
    fi
    if command -v update-rc.d >/dev/null 2>&1; then $SUDO update-rc.d mosquitto disable >/dev/null 2>&1 || true; fi
  fi
  if [ -r "$pidfile" ]; then
    pid=$(cat "$pidfile")
    if [[ "$pid" =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = mosquitto ]; then
      $SUDO kill "$pid" || true
    fi
  fi
}

if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The Debian package we just installed starts its system broker on port 1883; fieldgate brings
  # its own. Stop (and disable) that service by its own means — never other brokers on this
  # machine, and not one the operator had installed before.
  if [[ " ${need_apt[*]} " == *" mosquitto "* ]]; then
    stop_debian_mosquitto
  fi
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -e ".[test]"
echo "fieldgate installed in $VENV"
