#!/usr/bin/env bash
# Installs what Procvisor needs and is missing. Idempotent: does nothing when all is present.
#   libseccomp-dev, liburing-dev  build dependencies (C shims)
#   xen-utils-common               Xen's example configs (/etc/xen/xlexample.*) the config tests parse
#   xenstore-utils                 Xen's xenstore-read/-write/-ls… the XenStore tests drive the store with
#   fio                            the peer of the blk benchmark suite (procvisor-bench blk)
set -euo pipefail

packages=(libseccomp-dev liburing-dev xen-utils-common xenstore-utils fio)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ! command -v swift >/dev/null 2>&1; then
    if [ -x /opt/swift/usr/bin/swift ]; then
        echo "install-deps: swift is at /opt/swift/usr/bin but not on PATH; add it: export PATH=/opt/swift/usr/bin:\$PATH" >&2
    else
        echo "install-deps: no Swift toolchain found; install Swift 6.x from swift.org (Debian 12 build) and put it on PATH" >&2
    fi
    exit 1
fi

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "install-deps: missing Debian packages: ${missing[*]}" >&2
    echo "install-deps: run as root: apt-get install -y ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null >/tmp/procvisor-apt.log 2>&1; then
    # The package lists may be empty or stale on a fresh machine: refresh once and retry.
    "${SUDO[@]}" apt-get update -q </dev/null >>/tmp/procvisor-apt.log 2>&1 || true
    if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null >>/tmp/procvisor-apt.log 2>&1; then
        echo "install-deps: apt-get could not install ${missing[*]}; see /tmp/procvisor-apt.log" >&2
        tail -n 20 /tmp/procvisor-apt.log >&2
        exit 1
    fi
fi
