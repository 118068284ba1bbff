#!/usr/bin/env bash
# Makes sure headless Chromium (the distribution's package) is installed, for the web UI
# test (tests/cluster/web_ui.rs) and scripts/ui-bench.sh. Prints the browser's path.
# Installs with apt-get when missing (as root, or through passwordless sudo); a lock keeps
# parallel tests from running apt twice.
set -euo pipefail

find_browser() { command -v chromium || command -v chromium-browser || true; }

browser="$(find_browser)"
if [[ -z "$browser" ]]; then
    lock="${TMPDIR:-/tmp}/exo-install-chromium.lock"
    exec 9>"$lock"
    flock 9
    browser="$(find_browser)"
    if [[ -z "$browser" ]]; then
        if [[ "$(id -u)" == 0 ]]; then
            sudo=()
        elif sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            echo "chromium is not installed and this user cannot install it (apt-get install chromium)" >&2
            exit 1
        fi
        echo "installing chromium with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        "${sudo[@]}" apt-get update -qq >&2
        "${sudo[@]}" apt-get install -y -qq chromium >&2
        browser="$(find_browser)"
    fi
fi
[[ -n "$browser" ]] || { echo "chromium did not install" >&2; exit 1; }
echo "$browser"
