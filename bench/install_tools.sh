#!/bin/sh
# Install what `make bench` compares against (OpenSSH sshd and client, socat) when missing.
# Needs root and apt-get; otherwise it says what to install and lets the bench go on.
set -u
missing=""
command -v socat >/dev/null 2>&1 || missing="$missing socat"
[ -x /usr/sbin/sshd ] || missing="$missing openssh-server"
command -v ssh >/dev/null 2>&1 || missing="$missing openssh-client"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "bench: not root or no apt-get: install$missing yourself; figures needing them will fail" >&2
    exit 0
fi
echo "bench: installing$missing" >&2
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
