#!/usr/bin/env bash
# Run ftvm's KVM-backend tests on upstream KVM when this host has no usable /dev/kvm.
#
#   bash .ci/kvm-in-qemu.sh [PKG...]     (default: ./vmm ./vmm/session ./vmm/ft ./cmd/ftvm ./bench)
#
# Why: without /dev/kvm, `make test` runs the guest tests on ptrace only and the KVM backend
# goes untested. So boot Debian's stock kernel in QEMU with pure emulation (TCG: no /dev/kvm
# needed) on an emulated CPU with AMD SVM + NPT (-cpu max); kvm_amd loads in there and gives
# a real, upstream /dev/kvm. The test binaries are built on the host (the guest has no Go)
# and run inside with FTVM_BACKEND=kvm CI=true, from the package's directory in the
# checkout, mounted read-only over 9p. Files for the guest: .ci/kvm-in-qemu/.
#
# env: KVMQ_CACHE  kernel, busybox, initramfs (default /var/cache/ftvm-kvm-in-qemu)
#      KVMQ_OUT    out dir: per-package logs, console.log (default: a new /tmp/ftvm-kvmq.*)
#      KVMQ_TIMEOUT  seconds before QEMU is killed (default 2400)
#      KVMQ_TESTFLAGS  extra test binary flags, e.g. '-test.run TestKillPrimary'
# Exit status: 0 if every package passed, else 1.
set -euo pipefail
cd "$(dirname "$0")/.."
proj=$(pwd)
files=$proj/.ci/kvm-in-qemu
cache=${KVMQ_CACHE:-/var/cache/ftvm-kvm-in-qemu}
timeout=${KVMQ_TIMEOUT:-2400}
export PATH="/usr/local/go/bin:$PATH"
pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || pkgs=(./vmm ./vmm/session ./vmm/ft ./cmd/ftvm ./bench)
log() { echo "kvm-in-qemu: $*"; }
t_start=$(date +%s)

# 1. QEMU and cpio from apt; the guest's kernel and busybox as .debs unpacked into the
# cache, never installed (the host's own kernel and boot are not touched).
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v cpio >/dev/null || need+=(cpio)
# Debian 12's kernel modules are plain .ko; a later kernel package may compress them.
command -v xz >/dev/null || need+=(xz-utils)
command -v zstd >/dev/null || need+=(zstd)
if [ ${#need[@]} -gt 0 ]; then
	log "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
fi
# linux-image-amd64 is a metapackage: the kernel is the versioned package it depends on.
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
kpkg=$(kernel_pkg)
[ -n "$kpkg" ] || { apt-get update -qq && kpkg=$(kernel_pkg); }
[ -n "$kpkg" ] || { log "apt knows no linux-image-amd64"; exit 1; }
root=$cache/$kpkg
if [ ! -x "$root/bin/busybox" ]; then
	log "fetching $kpkg and busybox-static into $cache"
	rm -rf "$root" "$root.tmp" "$cache/debs" && mkdir -p "$cache/debs"
	# Sandbox::User=root: root downloads into its own dir, without apt's warning about it.
	(cd "$cache/debs" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg" busybox-static)
	for f in "$cache"/debs/*.deb; do dpkg -x "$f" "$root.tmp"; done
	mv "$root.tmp" "$root" && rm -rf "$cache/debs"
fi
kver=${kpkg#linux-image-}
mods=$root/lib/modules/$kver/kernel

# 2. The initramfs: busybox, /init, the modules for KVM and 9p, make (the tests' TestMain
# runs `make -s -C ../guests`, a no-op with the guests built here) and the go shim.
# Rebuilt when the kernel or a file it is made of changes.
initrd=$cache/initrd-$kver.cpio.gz
if [ ! -f "$initrd" ] || [ -n "$(find "$proj/.ci/kvm-in-qemu.sh" "$files" -newer "$initrd")" ]; then
	log "building $initrd"
	ir=$cache/initramfs
	rm -rf "$ir" && mkdir -p "$ir"/{bin,lib/modules,usr/bin,etc}
	cp "$root/bin/busybox" "$ir/bin/"
	cp "$files/init" "$ir/init"
	cp "$files/go-shim" "$ir/usr/bin/go"
	# Load order: dependencies first. No tun, bridge or veth: see TestKVStoreOverTAP below.
	for m in virt/lib/irqbypass arch/x86/kvm/kvm drivers/crypto/ccp/ccp arch/x86/kvm/kvm-amd \
		drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
		drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci \
		fs/netfs/netfs fs/fscache/fscache net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p; do
		f=$(ls "$mods/$m".ko*) && b=$(basename "$m")
		case $f in
		*.xz) xz -dc "$f" ;; *.zst) zstd -qdc "$f" ;; *) cat "$f" ;;
		esac >"$ir/lib/modules/$b.ko"
		echo "$b" >>"$ir/modules.order"
	done
	cp "$(command -v make)" "$ir/usr/bin/"
	for l in $(ldd "$(command -v make)" | grep -o '/[^ ]*\.so[^ ]*'); do
		mkdir -p "$ir$(dirname "$l")" && cp -L "$l" "$ir$l"
	done
	echo 'root:x:0:0:root:/root:/bin/sh' >"$ir/etc/passwd"
	printf '127.0.0.1 localhost\n::1 localhost\n' >"$ir/etc/hosts"
	(cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1) >"$initrd.tmp"
	mv "$initrd.tmp" "$initrd" && rm -rf "$ir"
fi

# 3. The guests, ftvm and the test binaries, all static (CGO_ENABLED=0: the guest has no
# libc for them). The guest runs ftvm first, as a smoke test; cmd/ftvm's TestMain gets it
# from the go shim. -test.timeout: a hung package fails with its goroutines dumped, and
# the next one still runs, inside QEMU's own time-out.
make -s all
out=${KVMQ_OUT:-$(mktemp -d /tmp/ftvm-kvmq.XXXXXX)}
mkdir -p "$out/prebuilt" && out=$(cd "$out" && pwd)
rm -f "$out"/*.result "$out"/smoke.* "$out/rc" "$out/tests"
export CGO_ENABLED=0
go build -o "$out/prebuilt/ftvm" ./cmd/ftvm
for p in "${pkgs[@]}"; do
	p=${p#./} && name=$(echo "$p" | tr / _)
	log "go test -c ./$p"
	go test -c -o "$out/$name.test" "./$p"
	# 20 minutes: vmm/session records and replays every guest on both backends in
	# there, under emulation: it passed 10 minutes on this machine after the snapshot and
	# live-transfer tests came.
	args="-test.v -test.timeout=20m"
	case $p in
	# Benchmarks only: run each once on KVM (what make bench does; the figures are in the log).
	bench) args="$args -test.run=^$ -test.bench=. -test.benchtime=1x" ;;
	# Need /dev/net/tun and iproute2's `ip netns` (and redis-tools), which the guest lacks;
	# with CI=true they fail instead of skipping. They run on the host's backends in make
	# test; the log of this package lists them as skipped.
	cmd/ftvm) args="$args -test.skip=^(TestKVStoreOverTAP|TestRedis.*)$" ;;
	esac
	echo "$p $name $args ${KVMQ_TESTFLAGS:-}" >>"$out/tests"
done

# 4. Boot. One vCPU: with two, QEMU 7.2's TCG SVM sometimes livelocks the guest kernel
# (an IPI that is never taken). The console goes to CI's output and $out/console.log.
log "booting $kver in QEMU (TCG, -cpu max: AMD SVM + NPT, 1 vCPU, 2G); out dir $out"
t_boot=$(date +%s)
set +e
timeout --foreground -k 10 "$timeout" qemu-system-x86_64 \
	-machine q35 -accel tcg -cpu max -smp 1 -m 2G \
	-kernel "$root/boot/vmlinuz-$kver" -initrd "$initrd" \
	-append "console=ttyS0 quiet loglevel=4 panic=-1 oops=panic mitigations=off" \
	-display none -serial stdio -no-reboot -nodefaults \
	-virtfs "local,path=$proj,mount_tag=src,security_model=none,readonly=on" \
	-virtfs "local,path=$out,mount_tag=out,security_model=none" \
	</dev/null | tee "$out/console.log"
qrc=${PIPESTATUS[0]}
set -e
t_end=$(date +%s)
log "QEMU ran $((t_end - t_boot))s (exit status $qrc)"

# 5. Report: per package from its .result file; a package without one never finished.
if [ -f "$out/smoke.failed" ]; then
	log "ftvm could not run hello.elf on KVM inside QEMU, so no package ran:"
	sed 's/^/    /' "$out/smoke.log"
fi
pass=0 fail=0
for p in "${pkgs[@]}"; do
	p=${p#./} && name=$(echo "$p" | tr / _)
	if read -r rc secs 2>/dev/null <"$out/$name.result" && [ "$rc" = 0 ]; then
		log "PASS ./$p (${secs}s inside QEMU)"
		pass=$((pass + 1))
		continue
	fi
	fail=$((fail + 1))
	if [ -f "$out/$name.result" ]; then
		log "FAIL ./$p (exit status $rc after ${secs}s); what failed, then the end of $out/$name.log:"
		grep -E -e '^ *--- FAIL|^panic:' "$out/$name.log" | sed 's/^/    /' || true
		tail -n 60 "$out/$name.log" | sed 's/^/    | /'
	else
		log "FAIL ./$p: did not run, or not to its end"
		[ -f "$out/$name.log" ] && tail -n 60 "$out/$name.log" | sed 's/^/    | /'
	fi
done
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
	log "QEMU killed after the ${timeout}s time-out"
elif [ ! -f "$out/rc" ]; then
	log "the guest never reported an exit status (it crashed or hung: see $out/console.log)"
fi
[ -f "$out/rc" ] || [ $fail -gt 0 ] || fail=1 # no report from the guest is never a pass
log "$((t_end - t_start))s in all ($((t_end - t_boot))s in QEMU), logs in $out"
log "KVM-backend tests on upstream KVM (kvm_amd under QEMU TCG): $pass packages passed, $fail failed"
[ $fail = 0 ]
