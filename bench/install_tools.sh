#!/bin/sh
# Install the outside tools the tests and `make bench` use, when missing: OpenSSH sshd
# and client, socat, Prometheus (the metrics end-to-end test scrapes with it), and
# Chromium with its WebDriver (the web console's browser tests drive it headless).
# Needs root and apt-get; otherwise it says what to install and lets the run go on
# (tests needing a missing tool skip, saying so, except under CI where they fail).
set -u
missing=""
command -v socat >/dev/null 2>&1 || missing="$missing socat"
[ -x /usr/sbin/sshd ] || missing="$missing openssh-server"
command -v ssh >/dev/null 2>&1 || missing="$missing openssh-client"
command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ] || missing="$missing prometheus"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
[ -x /usr/bin/chromedriver ] || missing="$missing chromium-driver"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "tools: not root or no apt-get: install$missing yourself; what needs them skips or fails" >&2
    exit 0
fi
echo "tools: installing$missing" >&2
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
