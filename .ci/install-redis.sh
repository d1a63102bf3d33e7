#!/usr/bin/env bash
# Installs redis-tools (redis-cli, redis-benchmark), the unmodified clients the redis
# guest's tests drive over TAP (cmd/ftvm/redis_test.go). Idempotent.
set -euo pipefail
if command -v redis-cli >/dev/null && command -v redis-benchmark >/dev/null; then
	echo "redis-tools already installed: $(redis-cli --version)"
	exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-tools
echo "installed $(redis-cli --version)"
