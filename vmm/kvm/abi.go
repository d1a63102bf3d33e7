package kvm

// The slice of the KVM ABI (linux/kvm.h) that ftvm uses and gokvm's kvm
// package does not export, mirrored in one place.

const (
	kvmRunIoctl = 0xAE80 // _IO(KVMIO, 0x80)

	kvmCapSyncRegs = 74

	// Exit reasons (kvm_run.exit_reason).
	kvmExitUnknown       = 0
	kvmExitIO            = 2
	kvmExitHLT           = 5
	kvmExitMMIO          = 6
	kvmExitShutdown      = 8
	kvmExitFailEntry     = 9
	kvmExitIntr          = 10
	kvmExitInternalError = 17

	kvmExitIODirIn  = 0
	kvmExitIODirOut = 1
)

// kvmRun mirrors the fixed head of struct kvm_run and the union members we
// read. Offsets: exit_reason at 8, the union at 32.
type kvmRun struct {
	requestInterruptWindow uint8
	immediateExit          uint8
	_                      [6]uint8
	exitReason             uint32
	readyForInjection      uint8
	ifFlag                 uint8
	flags                  uint16
	cr8                    uint64
	apicBase               uint64
	union                  [256]byte
}

// kvmRunIO is the io member of the kvm_run union.
type kvmRunIO struct {
	direction  uint8
	size       uint8
	port       uint16
	count      uint32
	dataOffset uint64 // offset of the data from the start of kvm_run
}

// kvmRunMMIO is the mmio member of the kvm_run union.
type kvmRunMMIO struct {
	physAddr uint64
	data     [8]byte
	len      uint32
	isWrite  uint8
}
