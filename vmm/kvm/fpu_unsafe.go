package kvm

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"github.com/ftvm/ftvm/vmm/backend"
	"golang.org/x/sys/unix"
)

// The x87 and SSE state moves through KVM_GET_XSAVE/KVM_SET_XSAVE, not
// KVM_GET_FPU: Linux's KVM_GET_FPU leaves struct kvm_fpu's mxcsr zero
// (kvm_arch_vcpu_ioctl_get_fpu never copies it), so a state read that way
// would lose the guest's rounding mode and exception masks. The first 512
// bytes of struct kvm_xsave are the FXSAVE area; the XSAVE header follows.

// kvmXSave mirrors struct kvm_xsave: 4096 bytes (the fixed-size form).
type kvmXSave [4096]byte

const (
	kvmGetXSave = 0x9000AEA4 // _IOR(KVMIO, 0xa4, struct kvm_xsave)
	kvmSetXSave = 0x5000AEA5 // _IOW(KVMIO, 0xa5, struct kvm_xsave)

	xstateBVOffset = 512 // XSTATE_BV in the XSAVE header
	xstateX87SSE   = 1<<0 | 1<<1
	fxMXCSRMaskOff = 28
)

// xsaveIoctl issues KVM_GET_XSAVE or KVM_SET_XSAVE. Sound: x points at
// 4096 bytes, the size encoded in the request, alive for the call; the
// pointer is converted in the call expression.
func (v *vcpuFD) xsaveIoctl(req uintptr, x *kvmXSave) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(v.fd), req, uintptr(unsafe.Pointer(x))); e != 0 {
		return e
	}
	return nil
}

func fxArea(x *kvmXSave) *[backend.FXSaveSize]byte {
	return (*[backend.FXSaveSize]byte)(x[:backend.FXSaveSize])
}

func (v *vcpu) FPState(s *backend.FPState) error {
	var x kvmXSave
	if err := v.fd.xsaveIoctl(kvmGetXSave, &x); err != nil {
		return fmt.Errorf("kvm: KVM_GET_XSAVE: %w", err)
	}
	s.FromFXSave(fxArea(&x))
	return nil
}

func (v *vcpu) SetFPState(s *backend.FPState) error {
	var x kvmXSave
	if err := v.fd.xsaveIoctl(kvmGetXSave, &x); err != nil {
		return fmt.Errorf("kvm: KVM_GET_XSAVE: %w", err)
	}
	le := binary.LittleEndian
	mask := le.Uint32(x[fxMXCSRMaskOff:])
	if mask == 0 {
		mask = 0xffbf // the architectural default when FXSAVE reports 0
	}
	if err := s.CheckMXCSR(mask); err != nil {
		return fmt.Errorf("kvm: %w", err)
	}
	s.ToFXSave(fxArea(&x), mask)
	// The legacy area counts only for the components XSTATE_BV names.
	le.PutUint64(x[xstateBVOffset:], le.Uint64(x[xstateBVOffset:])|xstateX87SSE)
	if err := v.fd.xsaveIoctl(kvmSetXSave, &x); err != nil {
		return fmt.Errorf("kvm: KVM_SET_XSAVE: %w", err)
	}
	return nil
}
