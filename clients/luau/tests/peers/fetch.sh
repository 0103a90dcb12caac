#!/usr/bin/env bash
# Installs the peers' code the Roblox-compatibility tests run, from the npm
# registry at pinned versions, each tarball checked against its pinned
# sha512 integrity before it is unpacked (never committed here):
#   @rbxts/lapis 0.3.8          Lapis, with its own two test files
#   @rbxts/profile-store 1.0.3  ProfileStore
#   roblox-ts 3.0.0             its include/Promise.lua: evaera's Promise,
#                               the Promise @rbxts/lapis runs on
# Usage: fetch.sh [DIR]   (default: target/roblox-peers at the repository root)
set -euo pipefail
root="$(cd "$(dirname "$0")/../../../.." && pwd)"
dir="${1:-$root/target/roblox-peers}"
mkdir -p "$dir"
command -v npm >/dev/null || { echo "fetch.sh: npm is needed (Debian: apt-get install npm)" >&2; exit 1; }

fetch() {
    local name="$1" version="$2" integrity="$3" into="$4"
    if [ -f "$dir/$into/.integrity" ] && [ "$(cat "$dir/$into/.integrity")" = "$integrity" ]; then
        return
    fi
    local tmp
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "$name@$version" >/dev/null)
    local tarball
    tarball="$(ls "$tmp"/*.tgz)"
    local got
    got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
    if [ "$got" != "$integrity" ]; then
        echo "fetch.sh: $name@$version does not match its pinned integrity" >&2
        echo "  pinned: $integrity" >&2
        echo "  got:    $got" >&2
        rm -rf "$tmp"
        exit 1
    fi
    rm -rf "${dir:?}/$into"
    mkdir -p "$dir/$into"
    tar xzf "$tarball" -C "$dir/$into" --strip-components=1
    echo "$integrity" >"$dir/$into/.integrity"
    rm -rf "$tmp"
    echo "fetch.sh: $name@$version installed in $dir/$into"
}

fetch @rbxts/lapis 0.3.8 \
    'sha512-SQTVdSp47Rh7nzuI/ArUsGssz2+KmciPlue4Qlj3i9iO2p3Xgf1ZsgfhvMemPih/kFdjSH47E8wHGA4dY/Y+AA==' lapis
fetch @rbxts/profile-store 1.0.3 \
    'sha512-hhaBnE7iabydxMMlun9ezD1oFCfETFXp95r2hjmQUip5GrGLGugAbrzdUhEaqRpdDaM+c4qsj2JfskdAUfz/mw==' profile-store
fetch roblox-ts 3.0.0 \
    'sha512-hwAC2frIFlLJOtHd6F+5opMEhBgfAMK9z5l1mP+bykLBbMO5cn1q5lIwhhXbeh9Pq07rlhF8uGHlmeRLPd/3AA==' roblox-ts
