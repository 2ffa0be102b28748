# Sourced by the podman scripts: installs podman (with runc and mmdebstrap) from Debian's packages
# when missing, and points it at the project's containers.conf.
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v mmdebstrap >/dev/null; then
  echo "install: apt packages podman runc mmdebstrap"
  _sudo=""; [ "$(id -u)" -eq 0 ] || _sudo="sudo"
  $_sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $_sudo apt-get install -y -qq --no-install-recommends podman runc mmdebstrap uidmap >/dev/null
fi
export CONTAINERS_CONF="$_here/containers.conf"
unset _here _sudo
