#!/usr/bin/env bash
# CPython 3.14 and 3.15 for CI, from Debian sid's packages in a debootstrap chroot.
#
# pyenv here has 3.10-3.13 only, and no interpreter may be downloaded from anywhere but the
# package registries, so the two newest come from Debian's own `python3.14` / `python3.15`.
# Sourced by .ci/run (needs root, as CI runs). Functions:
#
#   sid_ensure        build the chroot once (debootstrap, ~70 s, ~380 MB), reuse it afterwards
#   sid_enter         mount /proc, /dev, /dev/shm and the project (at its own path) inside it
#   sid_leave         unmount what sid_enter mounted: call it from the caller's EXIT trap
#   sid_run CMD...    run CMD inside the chroot, in the project, with a clean environment
#                     (plus CI, HYPOTHESIS_PROFILE, PYTHONDONTWRITEBYTECODE, TDE_DEBUG and
#                     TDE_XV_JOURNAL when set)
#
# The chroot lives outside any clone (TDE_SID_CHROOT, default /var/cache/transparent-de/sid)
# because CI runs on the development machine: a fresh clone reuses it, or builds it when it
# is missing. A build goes to DIR.partial and is renamed when complete, so an interrupted
# build is never taken for a finished one.

SID=${TDE_SID_CHROOT:-/var/cache/transparent-de/sid}
SID_PACKAGES=python3.14,python3.14-venv,python3.15,python3.15-venv,ca-certificates
SID_MOUNTS=()

_sid_unmounted() {  # refuse to delete a tree something is still mounted in (the project!)
  if findmnt -rn -o TARGET | grep -q "^$1\(/\|$\)"; then
    echo "$1 still has mounts (an interrupted run?); unmount them first: findmnt | grep $1"
    return 1
  fi
}

sid_ensure() {
  if [ ! -f "$SID/.tde-ready" ]; then
    _sid_unmounted "$SID" && _sid_unmounted "$SID.partial" || return 1
    command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; } >/dev/null
    rm -rf "$SID.partial"
    mkdir -p "$(dirname "$SID")"
    echo "building the Debian sid chroot in $SID (once; later runs reuse it)"
    debootstrap --variant=minbase --include="$SID_PACKAGES" sid "$SID.partial" >"$SID.log" 2>&1 \
      || { tail -20 "$SID.log"; echo "debootstrap failed (log: $SID.log)"; return 1; }
    echo "$SID_PACKAGES" >"$SID.partial/.tde-ready"
    rm -rf "$SID" && mv "$SID.partial" "$SID"
  fi
  # pip inside the chroot needs the host's resolver and CA bundle; refreshed on every run.
  cp /etc/resolv.conf "$SID/etc/resolv.conf"
  mkdir -p "$SID/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$SID/etc/ssl/certs/ca-certificates.crt"
}

_sid_mount() {  # _sid_mount TARGET MOUNT-ARGS...: mount and remember for the trap
  local target=$1
  shift
  mkdir -p "$target"
  mount "$@" "$target"
  SID_MOUNTS=("$target" "${SID_MOUNTS[@]}")
}

sid_leave() {
  local m
  for m in "${SID_MOUNTS[@]}"; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "could not unmount $m"
  done
  SID_MOUNTS=()
  # Only the (now empty) mount point itself: never its parents, such as the chroot's /tmp.
  [ -n "${SID_PROJECT:-}" ] && rmdir "$SID$SID_PROJECT" 2>/dev/null
  return 0
}

sid_enter() {
  SID_PROJECT=$(pwd -P)
  # Tests fork, kill and wait for real processes (/proc), multiprocessing needs /dev/shm.
  _sid_mount "$SID/proc" -t proc proc
  _sid_mount "$SID/dev" --bind /dev
  _sid_mount "$SID/dev/shm" -t tmpfs -o mode=1777 tmpfs
  # The project at the same path as outside, so tracebacks and editable installs agree.
  _sid_mount "$SID$SID_PROJECT" --bind "$SID_PROJECT"
}

sid_run() {
  local keep=() v
  for v in CI HYPOTHESIS_PROFILE PYTHONDONTWRITEBYTECODE TDE_DEBUG TDE_XV_JOURNAL TDE_TEST_BACKENDS; do
    [ -n "${!v+x}" ] && keep+=("$v=${!v}")
  done
  chroot "$SID" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 "${keep[@]}" \
    /bin/sh -c 'cd "$0" && exec "$@"' "$SID_PROJECT" "$@"
}
