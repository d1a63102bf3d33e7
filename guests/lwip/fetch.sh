#!/usr/bin/env bash
# Fetches the lwIP sources the guests build with (Debian's source package `lwip`,
# 2.1.3+dfsg1) into a cache outside git, and checks the upstream tarball against a pinned
# SHA-256. Idempotent: does nothing when the unpacked tree is already there.
#
#   fetch.sh DEST     unpacks into DEST (the Makefile passes ../.tools/lwip), giving
#                     DEST/lwip-2.1.3/src/...
#
# apt does the download with a private configuration (its own sources list holding one
# deb-src entry for the Debian archive this machine's apt sources already name, its own
# lists and cache under DEST), so the system's apt configuration is not changed.
# Only the .orig tarball is used, unpatched: Debian's patches touch the sockets API, PPP and
# the build system, none of which the guests compile. lwIP's licence is in
# DEST/lwip-2.1.3/COPYING (BSD-style; keep it with any copy).
#
# LWIP_ORIG_TARBALL=path uses that file instead of downloading (it is checked just the
# same), for machines without apt.
set -euo pipefail

VERSION=2.1.3
DEBVERSION=2.1.3+dfsg1
ORIG="lwip_${DEBVERSION}.orig.tar.xz"
SHA256=0a8276d09fc4e97bbba2f953d74af2388fc2195ea156be9d7589e297a68fde24
# The Debian archive this machine's apt already uses: the URI and first suite of its first
# `deb` source that is not the security archive (deb822 .sources first, then the one-line
# sources.list). LWIP_DEBIAN_MIRROR and LWIP_DEBIAN_SUITE override it.
system_mirror() {
	local files=()
	shopt -s nullglob
	files=(/etc/apt/sources.list.d/*.sources)
	shopt -u nullglob
	if ((${#files[@]})); then
		awk '
			function done() { if (deb && uri != "" && uri !~ /security/) { print uri, suite; found = 1; exit } }
			FNR == 1 { done(); deb = 0; uri = ""; suite = "" }
			/^[ \t]*$/ { done(); deb = 0; uri = ""; suite = "" }
			/^Types:/ { deb = 0; for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
			/^URIs:/ { uri = $2 }
			/^Suites:/ { suite = $2 }
			END { if (!found) done() }' "${files[@]}"
	fi
	if [[ -f /etc/apt/sources.list ]]; then
		awk '$1 == "deb" && $2 !~ /security/ { print $2, $3; exit }' /etc/apt/sources.list
	fi
}

read -r sys_mirror sys_suite < <(system_mirror | head -n 1) || true
MIRROR="${LWIP_DEBIAN_MIRROR:-${sys_mirror:-}}"
SUITE="${LWIP_DEBIAN_SUITE:-${sys_suite:-}}"

dest="${1:?usage: fetch.sh DEST}"
tree="$dest/lwip-$VERSION"
if [[ -f "$tree/.fetched" ]]; then
	exit 0
fi
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
tree="$dest/lwip-$VERSION"

tarball="$dest/$ORIG"
if [[ -n "${LWIP_ORIG_TARBALL:-}" ]]; then
	cp "$LWIP_ORIG_TARBALL" "$tarball.incomplete"
	mv "$tarball.incomplete" "$tarball"
elif [[ ! -f "$tarball" ]]; then
	command -v apt-get >/dev/null || {
		echo "lwip/fetch.sh: no apt-get here: set LWIP_ORIG_TARBALL to a copy of $ORIG (sha256 $SHA256)" >&2
		exit 1
	}
	if [[ -z "$MIRROR" || -z "$SUITE" ]]; then
		echo "lwip/fetch.sh: no Debian archive in this machine's apt sources: set LWIP_DEBIAN_MIRROR and LWIP_DEBIAN_SUITE, or LWIP_ORIG_TARBALL" >&2
		exit 1
	fi
	apt="$dest/apt"
	rm -rf "$apt"
	mkdir -p "$apt/sources" "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/dl"
	cat >"$apt/sources/lwip-src.sources" <<SOURCES
Types: deb-src
URIs: $MIRROR
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
	opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt/sources"
		-o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
		-o APT::Sandbox::User=root -qq)
	echo "lwip/fetch.sh: fetching the Debian source package lwip ($DEBVERSION) from $MIRROR $SUITE with apt"
	apt-get "${opts[@]}" update
	(cd "$apt/dl" && apt-get "${opts[@]}" source --download-only lwip)
	mv "$apt/dl/$ORIG" "$tarball"
	rm -rf "$apt"
fi

got=$(sha256sum "$tarball" | awk '{print $1}')
if [[ "$got" != "$SHA256" ]]; then
	echo "lwip/fetch.sh: $tarball has sha256 $got, want $SHA256: removed" >&2
	rm -f "$tarball"
	exit 1
fi

rm -rf "$tree" "$tree.incomplete"
mkdir -p "$tree.incomplete"
tar -C "$tree.incomplete" --strip-components=1 -xJf "$tarball"
touch "$tree.incomplete/.fetched"
mv "$tree.incomplete" "$tree"
echo "lwip/fetch.sh: lwIP $VERSION in $tree"
