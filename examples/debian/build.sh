#!/bin/sh
# build.sh ARCH OUTDIR — build bin/imsidecar_<version>_<ARCH>.deb with
# dpkg-deb from the tree (run from the repository root; `make deb` does).
# The binary is cross-compiled with CGO_ENABLED=0; the man page and
# /etc/default/imsidecar come from the flag set (cmd/debgen). Everything
# else is copied from examples/: the unit from examples/systemd, the Apache
# snippet from examples/apache, the PHP client from examples/php, the
# drop-in auth_messenger.php from examples/expresso.
#
# The version is taken from git: a tag vX.Y.Z on HEAD gives X.Y.Z-1,
# anything else 0.0~git<commit time>.<hash>-1 (+dirty with local changes),
# so every later commit upgrades the one before. DEB_VERSION overrides it.
set -eu

arch=${1:?usage: build.sh ARCH OUTDIR}
out=${2:?usage: build.sh ARCH OUTDIR}
GO=${GO:-go}
here=examples/debian
maintainer=${DEB_MAINTAINER:-Expresso Livre IM sidecar maintainers <imsidecar@expressolivre.org>}

case $arch in
amd64 | arm64) ;;
*) echo "build.sh: unsupported architecture $arch (amd64, arm64)" >&2; exit 1 ;;
esac

# A reproducible build: every date is the commit's.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
export SOURCE_DATE_EPOCH
hash=$(git rev-parse --short=7 HEAD)
if [ -z "${DEB_VERSION:-}" ]; then
	if tag=$(git describe --tags --exact-match --match 'v[0-9]*' 2>/dev/null); then
		upstream=${tag#v}
	else
		upstream=0.0~git$(TZ=UTC date -d "@$SOURCE_DATE_EPOCH" +%Y%m%d%H%M%S).$hash
	fi
	if ! git diff --quiet HEAD -- 2>/dev/null; then
		upstream=$upstream+dirty
	fi
	DEB_VERSION=$upstream-1
fi
upstream=${DEB_VERSION%-*}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/imsidecar
umask 022
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/usr/share/man/man8" "$root/etc/default" \
	"$root/lib/systemd/system" "$root/etc/apache2/conf-available" \
	"$root/usr/share/imsidecar" "$root/usr/share/doc/imsidecar" "$root/usr/share/lintian/overrides"

# The daemon: static, position independent, stripped.
CGO_ENABLED=0 GOOS=linux GOARCH=$arch $GO build -trimpath -buildmode=pie \
	-ldflags "-s -w -X expressolivre.org/imsidecar/sidecar.version=$upstream" \
	-o "$root/usr/bin/imsidecar" ./sidecar/cmd/imsidecar

# From the flag set (built for the build machine, not for $arch).
mandate=$(TZ=UTC date -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
GOOS= GOARCH= $GO run ./$here/cmd/debgen -man "$stage/imsidecar.8" -default "$root/etc/default/imsidecar" \
	-version "$upstream" -date "$mandate"
gzip -9n <"$stage/imsidecar.8" >"$root/usr/share/man/man8/imsidecar.8.gz"

install -m 0644 examples/systemd/imsidecar.service "$root/lib/systemd/system/imsidecar.service"
install -m 0644 examples/apache/imsidecar.conf "$root/etc/apache2/conf-available/imsidecar.conf"

# The PHP client (its tests and dev tooling stay in the source tree).
mkdir -p "$root/usr/share/imsidecar/php"
cp -R examples/php/src "$root/usr/share/imsidecar/php/src"
install -m 0644 examples/php/composer.json "$root/usr/share/imsidecar/php/composer.json"
# The drop-in for Expresso 2.5's messenger endpoint (docs/EXPRESSO.md).
mkdir -p "$root/usr/share/imsidecar/expresso"
install -m 0644 examples/expresso/auth_messenger.php "$root/usr/share/imsidecar/expresso/auth_messenger.php"
gzip -9n <examples/php/README.md >"$root/usr/share/doc/imsidecar/php-client.md.gz"

doc=$root/usr/share/doc/imsidecar
install -m 0644 $here/copyright "$doc/copyright"
gzip -9n <$here/README.Debian >"$doc/README.Debian.gz"
for f in API.md CONFIG.md RELIABILITY.md; do gzip -9n <docs/$f >"$doc/$f.gz"; done
subject=$(git log -1 --format=%s)
{
	printf 'imsidecar (%s) unstable; urgency=medium\n\n' "$DEB_VERSION"
	printf '  * Built from git commit %s:\n' "$hash"
	printf '    %s\n' "$subject" | fold -s -w 76 | sed '2,$s/^/    /'
	printf '\n -- %s  %s\n' "$maintainer" "$(LC_ALL=C TZ=UTC date -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.Debian.gz"
install -m 0644 $here/lintian-overrides "$root/usr/share/lintian/overrides/imsidecar"

for s in postinst prerm postrm; do install -m 0755 $here/$s "$root/DEBIAN/$s"; done
printf '%s\n' /etc/default/imsidecar /etc/apache2/conf-available/imsidecar.conf >"$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$DEB_VERSION/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
	-e "s/@MAINTAINER@/$maintainer/" $here/control.in >"$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
find "$root" -type d -exec chmod 0755 {} +
find "$root" -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$out"
deb=$out/imsidecar_${DEB_VERSION}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
