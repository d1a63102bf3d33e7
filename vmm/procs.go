package vmm

import "runtime"

// minProcs is the fewest Ps a process running a vCPU needs. The vCPU
// thread spends nearly all its time inside one system call (KVM_RUN, or
// wait4 on a traced guest) that the Go scheduler takes for a short one, so
// it keeps its P. With GOMAXPROCS 1 (what Go derives from an affinity mask
// or a cgroup quota of one CPU) every other goroutine, the logging
// channel's reader and the ack path among them, then waits for sysmon to
// retake that P, which it does after 20 µs to 10 ms depending on how idle
// it has been: measured as a 2.6 ms mean ack delay and 68 ms idle round
// trips on a pinned primary (bench/results/2026-12-02T174231). A second P
// costs no CPU: it only lets a thread that the kernel wakes run Go code at
// once, and the kernel shares the one core between them.
const minProcs = 2

// ensureProcs raises GOMAXPROCS to minProcs if it is lower.
func ensureProcs() {
	if runtime.GOMAXPROCS(0) < minProcs {
		runtime.GOMAXPROCS(minProcs)
	}
}
