#!/usr/bin/env bash
# make deb: dist/claude-auth_<version>_<arch>.deb from this checkout, with dpkg-deb.
#
# The program runs from its own venv under /opt/claude-auth, made here from Debian's
# /usr/bin/python3.11 and filled offline from wheels checked against
# packaging/requirements.txt (pip --require-hashes): the package carries every Python
# dependency and needs no network when installed. See packaging/deb/README.Debian.
#
# Inputs (environment): DEB_VERSION (default: pyproject's version), DEB_MAINTAINER, WHEELHOUSE (where the
# pinned wheels are downloaded to and reused from), BUILD_PYTHON (a Python with pip, for the
# project's own wheel), OUT (default dist).
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=/usr/bin/python3.11
PREFIX=/opt/claude-auth
BUILD_PYTHON=${BUILD_PYTHON:-.venv/bin/python}
OUT=${OUT:-dist}
WHEELHOUSE=${WHEELHOUSE:-build/deb/wheels}
VERSION=${DEB_VERSION:-$($PYTHON -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')}
ARCH=$(dpkg --print-architecture)
# Who answers for the package at this site (control's Maintainer, the changelog's trailer).
MAINTAINER=${DEB_MAINTAINER:-claude-auth maintainers <claude-auth@example.org>}
WORK=build/deb/claude-auth_${VERSION}_${ARCH}
STAGE=$WORK/root
VENV=$STAGE$PREFIX
# Reproducible: every file gets the time of the last commit (or now, outside git).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export PIP_DISABLE_PIP_VERSION_CHECK=1

for tool in dpkg-deb strip "$PYTHON"; do
    command -v "$tool" >/dev/null || { echo "make deb: $tool is missing (apt-get install dpkg binutils python3-venv)" >&2; exit 1; }
done
rm -rf "$WORK" && mkdir -p "$STAGE" "$OUT" "$WHEELHOUSE"
umask 022

# 1. The pinned wheels (downloaded once, then reused from WHEELHOUSE) and the project's own.
"$BUILD_PYTHON" -m pip download -q --only-binary=:all: --require-hashes -r packaging/requirements.txt \
    -d "$WHEELHOUSE"
"$BUILD_PYTHON" -m pip wheel -q --no-deps -w "$WORK/self" .

# 2. The venv, at its final path inside the staging tree; pip and setuptools leave it afterwards.
$PYTHON -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --no-index --no-compile --find-links "$WHEELHOUSE" --require-hashes \
    -r packaging/requirements.txt
"$VENV/bin/python" -m pip install -q --no-index --no-compile --no-deps "$WORK"/self/claude_auth-*.whl
"$VENV/bin/python" -m pip uninstall -q -y pip setuptools
# Only our own commands and the interpreter links stay in bin/ (no activate scripts, no
# other packages' command-line tools); the scripts' #! names the installed path.
find "$VENV/bin" -mindepth 1 -maxdepth 1 ! -name 'python*' ! -name claude-auth ! -name claude-auth-sync \
    ! -name t3-provision-users -exec rm -rf {} +
sed -i "1s|^#!.*|#!$PREFIX/bin/python|" "$VENV/bin/claude-auth" "$VENV/bin/claude-auth-sync" \
    "$VENV/bin/t3-provision-users"
sed -i "s|^command = .*|command = $PYTHON -m venv $PREFIX|" "$VENV/pyvenv.cfg"
rm -rf "$VENV/lib64" "$VENV/include"
ln -s lib "$VENV/lib64"
find "$VENV" -name __pycache__ -type d -prune -exec rm -rf {} +
find "$VENV" -name direct_url.json -delete      # names the build folder
# Library modules are not programs: no executable bit (a test file in certifi has one) and no
# #! line (hvac's modules start with `#!/usr/bin/env python`).
find "$VENV/lib" -type f -perm /111 ! -name '*.so' -exec chmod a-x {} +
find "$VENV/lib" -type f -name '*.py' -exec sed -i '1{/^#!/d}' {} +
find "$VENV" -name '*.so' -exec strip --strip-unneeded --remove-section=.comment --remove-section=.note {} +
if grep -rqs --binary-files=text "$PWD/$STAGE" "$STAGE"; then
    echo "make deb: the staging path leaked into the tree:" >&2
    grep -rl --binary-files=text "$PWD/$STAGE" "$STAGE" >&2
    exit 1
fi

# 3. The command, the data the admin deploys, the docs.
install -d "$STAGE/usr/bin" "$STAGE/etc/claude-auth" "$STAGE/usr/share/claude-auth/alerts" \
    "$STAGE/usr/share/claude-auth/grafana" "$STAGE/usr/share/doc/claude-auth" "$STAGE/usr/share/man/man1" \
    "$STAGE/usr/share/lintian/overrides"
ln -s "$PREFIX/bin/claude-auth" "$STAGE/usr/bin/claude-auth"
install -m 0644 deploy/alerts/claude-auth.prometheus.yml deploy/alerts/claude-auth.loki.yml \
    "$STAGE/usr/share/claude-auth/alerts/"
install -m 0644 deploy/grafana/claude-auth.json "$STAGE/usr/share/claude-auth/grafana/"
install -m 0644 roster.example.yaml "$STAGE/usr/share/claude-auth/roster.example.yaml"
# The login-shell notice: the package's one conffile (DEBIAN/conffiles below).
install -D -m 0644 deploy/profile.d/claude-auth.sh "$STAGE/etc/profile.d/claude-auth.sh"
install -m 0644 packaging/deb/README.Debian packaging/deb/copyright "$STAGE/usr/share/doc/claude-auth/"
for doc in README.md docs/design.md docs/runbook.md docs/claude-cli.md; do
    gzip -9n < "$doc" > "$STAGE/usr/share/doc/claude-auth/$(basename "$doc").gz"
done
sed -e "s/@VERSION@/$VERSION/" -e "s/@MAINTAINER@/$MAINTAINER/" -e "s/@DATE@/$(date -R -u -d "@$SOURCE_DATE_EPOCH")/" packaging/deb/changelog \
    | gzip -9n > "$STAGE/usr/share/doc/claude-auth/changelog.gz"
gzip -9n < packaging/deb/claude-auth.1 > "$STAGE/usr/share/man/man1/claude-auth.1.gz"
install -m 0644 packaging/deb/lintian-overrides "$STAGE/usr/share/lintian/overrides/claude-auth"

# 4. Control files, then the package.
install -d "$STAGE/DEBIAN"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$STAGE/DEBIAN/"
echo /etc/profile.d/claude-auth.sh > "$STAGE/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$size/" -e "s/@MAINTAINER@/$MAINTAINER/" \
    packaging/deb/control.in \
    > "$STAGE/DEBIAN/control"
(cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
    | xargs -0 md5sum > DEBIAN/md5sums)
find "$STAGE" -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
deb="$OUT/claude-auth_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$deb" >/dev/null
echo "$deb"
