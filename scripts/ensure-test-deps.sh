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
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  else
    echo "no apt-get here: please install ${need[*]} with your package manager" >&2
    exit 1
  fi
fi
