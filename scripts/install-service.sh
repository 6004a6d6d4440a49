#!/usr/bin/env bash
# Installs wondercraft.service: the unit (ExecStart pointing at --bin-dir), the DelegateSubgroup
# drop-in where systemd is 254 or newer, an example /etc/wondercraft/wondercraft.env, and
# wondercraft-ctl on PATH. --destdir installs into a staging root instead (nothing is reloaded).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
destdir=""
bin_dir="$here/.venv/bin"
systemd_version=""
reload=1

usage() {
    echo "usage: $0 [--destdir DIR] [--bin-dir DIR] [--systemd-version N] [--no-reload]" >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case "$1" in
        --destdir) destdir="${2:?--destdir needs a directory}"; shift 2 ;;
        --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift 2 ;;
        --systemd-version) systemd_version="${2:?--systemd-version needs a number}"; shift 2 ;;
        --no-reload) reload=0; shift ;;
        *) usage ;;
    esac
done

if [ ! -x "$bin_dir/wondercraft" ]; then
    echo "install-service: $bin_dir/wondercraft is missing; expected the installed service (make install)" >&2
    exit 1
fi
if [ -z "$systemd_version" ]; then
    systemd_version="$(systemctl --version 2>/dev/null | awk 'NR == 1 { print $2 }')"
fi
case "$systemd_version" in
    ''|*[!0-9]*) systemd_version=0 ;;
esac

unit_dir="$destdir/etc/systemd/system"
config_dir="$destdir/etc/wondercraft"
mkdir -p "$unit_dir" "$config_dir" "$destdir/usr/local/bin"

# The unit names /usr/local/bin/wondercraft; this installation's binary replaces it.
sed "s|^ExecStart=/usr/local/bin/wondercraft |ExecStart=$bin_dir/wondercraft |" \
    "$here/systemd/wondercraft.service" > "$unit_dir/wondercraft.service.tmp"
chmod 0644 "$unit_dir/wondercraft.service.tmp"
mv "$unit_dir/wondercraft.service.tmp" "$unit_dir/wondercraft.service"

dropin="$unit_dir/wondercraft.service.d/10-delegate-subgroup.conf"
if [ "$systemd_version" -ge 254 ]; then
    # systemd starts the service in the leaf it would otherwise move itself into.
    mkdir -p "$(dirname "$dropin")"
    printf '[Service]\nDelegateSubgroup=supervisor\n' > "$dropin"
    chmod 0644 "$dropin"
else
    rm -f "$dropin"
fi

# Site settings are the operator's: an existing file is never overwritten.
if [ ! -e "$config_dir/wondercraft.env" ]; then
    install -m 0600 "$here/systemd/wondercraft.env" "$config_dir/wondercraft.env"
fi
ln -sfn "$bin_dir/wondercraft-ctl" "$destdir/usr/local/bin/wondercraft-ctl"

echo "installed $unit_dir/wondercraft.service (ExecStart $bin_dir/wondercraft, systemd $systemd_version)"
if [ -z "$destdir" ] && [ "$reload" -eq 1 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "start it with: systemctl enable --now wondercraft; check it with: wondercraft-ctl status"
elif [ -z "$destdir" ] && [ "$reload" -eq 1 ]; then
    echo "systemd is not running here: nothing reloaded"
fi
