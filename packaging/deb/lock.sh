#!/usr/bin/env bash
# make deb-lock: re-pin packaging/requirements.txt (the Debian package's exact Python
# dependencies) from pyproject.toml, in a throwaway venv of Debian's Python, with the sha256
# of each wheel this machine's Python and architecture install.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
/usr/bin/python3.11 -m venv "$work/venv"
deps=$(/usr/bin/python3.11 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
# shellcheck disable=SC2086
"$work/venv/bin/pip" install -q --disable-pip-version-check --only-binary=:all: $deps
"$work/venv/bin/pip" freeze --exclude-editable > "$work/frozen.txt"
"$work/venv/bin/pip" download -q --disable-pip-version-check --only-binary=:all: --no-deps \
    -r "$work/frozen.txt" -d "$work/wheels"
{
    sed '/^[^#]/,$d' packaging/requirements.txt   # the comment lines at the top
    "$work/venv/bin/python" - "$work/wheels" <<'PY'
import hashlib, pathlib, sys
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl"), key=lambda p: p.name.lower()):
    name, version = wheel.name.split("-")[:2]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    print(f"{name.replace('_', '-').lower()}=={version} \\\n    --hash=sha256:{digest}")
PY
} > "$work/requirements.txt"
mv "$work/requirements.txt" packaging/requirements.txt
echo "packaging/requirements.txt: $(grep -c '==' packaging/requirements.txt) pinned distributions"
