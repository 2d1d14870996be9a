#!/usr/bin/env bash
# Make sure what the test suites need is installed: Mosquitto (the tests start private brokers
# with deploy/mosquitto/mosquitto.conf), Chromium and a Chinese font (the console's browser
# tests: screenshots show Chinese, not boxes), Prometheus Alertmanager
# (the notification tests start a private one) and Prometheus with promtool (the metrics,
# rules and Grafana dashboards are checked against a private one). Installs through the
# system's package manager when missing; changes nothing when everything is there.
set -euo pipefail

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=(chromium)
{ fc-list :lang=zh 2>/dev/null | grep -qi "noto sans cjk"; } || need+=(fonts-noto-cjk)
[ -x /usr/bin/prometheus-alertmanager ] || need+=(prometheus-alertmanager)
{ [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ]; } || need+=(prometheus)

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    apt=($sudo env DEBIAN_FRONTEND=noninteractive apt-get -y -qq)
    # one install for everything missing; the package lists are fetched (tens of seconds) only
    # when there are none (a fresh container) or they are too old to find a package
    if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null \
      || ! "${apt[@]}" install --no-install-recommends "${need[@]}"; then
      "${apt[@]}" update
      "${apt[@]}" install --no-install-recommends "${need[@]}"
    fi
  else
    echo "no apt-get here: please install ${need[*]} with your package manager" >&2
    exit 1
  fi
fi
