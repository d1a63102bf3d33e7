#!/usr/bin/env bash
# Installs versitygw, the S3 server the splitbrain S3 tests run against, into
# <repo>/.tools/bin. Idempotent: does nothing when the pinned version is present.
#
# Why versitygw and why this version: the S3 arbiter relies on conditional
# PutObject (If-None-Match: *) being atomic. versitygw's posix backend honours
# it from v1.8.0 on; older versions let concurrent conditional puts all win, and
# in-memory fakes ignore the header entirely, which would make the tests lie.
set -euo pipefail

VERSION="v1.8.0"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="$repo/.tools/bin"
bin="$bin_dir/versitygw"

# `go version -m` reads the module version embedded in the binary, so a stale
# build from another version is replaced rather than trusted.
if [[ -x "$bin" ]] && go version -m "$bin" 2>/dev/null | grep -Eq "^[[:space:]]+mod[[:space:]]+github.com/versity/versitygw[[:space:]]+$VERSION([[:space:]]|$)"; then
  echo "versitygw $VERSION already installed at $bin"
  exit 0
fi

mkdir -p "$bin_dir"
echo "installing versitygw $VERSION into $bin_dir (takes a few minutes cold)"
GOBIN="$bin_dir" go install "github.com/versity/versitygw/cmd/versitygw@$VERSION"
echo "installed $bin"
