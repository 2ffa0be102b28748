# Sourced by the podman scripts: installs podman (with runc, catatonit for its pause image, and
# mmdebstrap) from Debian's packages when missing, and points it at the project's containers.conf.
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_missing=""
for _tool in podman runc mmdebstrap catatonit; do command -v "$_tool" >/dev/null || _missing=1; done
if [ -n "$_missing" ]; then
  echo "install: apt packages podman runc catatonit mmdebstrap"
  _sudo=""; [ "$(id -u)" -eq 0 ] || _sudo="sudo"
  $_sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $_sudo apt-get install -y -qq --no-install-recommends \
    podman runc catatonit mmdebstrap uidmap >/dev/null
fi
export CONTAINERS_CONF="$_here/containers.conf"
unset _here _sudo _missing _tool
