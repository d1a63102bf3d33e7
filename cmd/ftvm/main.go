// Command ftvm runs guest VMs on KVM or under ptrace and protects them with a backup that
// replays them (see README.md).
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/ftvm/ftvm/vmm/ft"
)

// Exit statuses of ftvm itself; a guest's own status passes through.
const (
	exitUsage       = 2   // bad command line
	exitFailed      = 125 // ftvm could not do its job (bad image, backend error)
	exitGuestFault  = 126 // the guest faulted
	exitInterrupted = 130 // Ctrl-C
)

// usageError is a command line that cannot work (a flag missing, a flag
// that contradicts another, a value that does not parse): exit status 2,
// before anything has started.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// usagef makes a usageError.
func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// failStatus is the exit status of a command that could not start: 2 for
// a bad command line, 125 for anything else.
func failStatus(err error) int {
	var u usageError
	if errors.As(err, &u) {
		return exitUsage
	}
	return exitFailed
}

var commands = map[string]func(args []string) int{
	"run":      cmdRun,
	"inspect":  cmdInspect,
	"doctor":   cmdDoctor,
	"record":   cmdRecord,
	"replay":   cmdReplay,
	"log":      cmdLog,
	"kv":       cmdKV,
	"primary":  cmdPrimary,
	"backup":   cmdBackup,
	"pair":     cmdPair,
	"certs":    cmdCerts,
	"status":   cmdStatus,
	"demo":     cmdDemo,
	"bench":    cmdBench,
	"chaos":    cmdChaos,
	"net":      cmdNet,
	"backends": cmdBackends,
	"arbiter":  cmdArbiter,
}

func usage() {
	fmt.Fprint(os.Stderr, `usage: ftvm COMMAND [flags] [args]

commands:
  demo                                   kvstore under a pair, 3 clients, kill -9 of the primary
  run [--mem SIZE] GUEST.elf [ARGS...]   run a guest; console on stdin/stdout
                                         (every command that runs a guest takes
                                         --backend auto|kvm|ptrace; default $FTVM_BACKEND or auto)
  net sink --addr ADDR | net source --addr ADDR
                                         drive the netsink / netsource guests (throughput)
  bench [--quick]                        plain vs FT, logging bandwidth, output delay, failover time
  inspect GUEST.elf                      show segments, entry and rewritten instructions
  doctor                                 check this host's backends (kvm, ptrace) for ftvm
  backends                               the backends usable here, one per line, auto's choice first
  record --log FILE [--mem SIZE] GUEST.elf [ARGS...]
                                         run a guest and log every non-deterministic input
  replay --log FILE GUEST.elf            replay a log, checking every execution point;
                                         exits 0 only if the final state matches
  log dump FILE | log stats FILE         print a log's entries, or bytes per kind
  pair [--net SPEC] [--kill-primary-after D] GUEST.elf [ARGS...]
                                         run a guest protected by a backup (two processes here)
  primary --backup ADDR --arbiter URL GUEST.elf [ARGS...]
  backup --listen ADDR --arbiter URL GUEST.elf [ARGS...]
                                         the two halves of a pair, on two hosts
                                         (start the backup first: it takes the pairing's epoch)
  arbiter init --arbiter URL             mark shared storage as this cluster's arbiter (once)
  arbiter show --arbiter URL [--vm-id ID]
                                         a VM's epoch and who holds its claim
  certs --dir DIR --vm-id ID [--hosts A,B]
                                         a CA and the logging channel's certificates for a
                                         pair on two hosts (primary/backup --tls-cert/-key/-ca)
  status ADDR                            show a primary's or backup's --metrics for a person
  kv --addr ADDR put K V | get K | append K V | bench [--clients N] [--duration D]
                                         a client for the kvstore guest
`)
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(exitUsage)
	}
	cmd, ok := commands[os.Args[1]]
	if !ok {
		if os.Args[1] != "-h" && os.Args[1] != "--help" && os.Args[1] != "help" {
			fmt.Fprintf(os.Stderr, "ftvm: unknown command %q\n", os.Args[1])
		}
		usage()
		os.Exit(exitUsage)
	}
	if err := ft.ArmFailpoints(os.Getenv(ft.FailpointsEnv)); err != nil {
		fmt.Fprintf(os.Stderr, "ftvm: %v\n", err)
		os.Exit(exitUsage)
	}
	os.Exit(cmd(os.Args[2:]))
}
