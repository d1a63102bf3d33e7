package vmm

import (
	"testing"

	"github.com/ftvm/ftvm/vmm/backend"
	"github.com/ftvm/ftvm/vmm/vmmtest"
)

// testFPState is x87 and SSE state no reset leaves: a non-default control
// word and MXCSR, pi in 80 bits in ST(0) (TOP 7, physical register 7
// tagged), a pattern in every XMM register.
func testFPState() backend.FPState {
	s := backend.FPState{FCW: 0x27f, FSW: 7 << 11, FTW: 0x80, MXCSR: 0x7f80}
	s.ST[0] = [10]byte{0x35, 0xc2, 0x68, 0x21, 0xa2, 0xda, 0x0f, 0xc9, 0x00, 0x40}
	for i := range s.XMM {
		for j := range s.XMM[i] {
			s.XMM[i][j] = byte(i*16 + j + 0x11)
		}
	}
	return s
}

// TestFPStateSeam: every backend starts a guest with the ABI's reset x87
// and SSE state, and reads back exactly the state it was given, in the one
// form the seam defines (so a state read on one backend writes on another).
func TestFPStateSeam(t *testing.T) {
	vmmtest.ForEachBackend(t, func(t *testing.T, b backend.Backend) {
		m, err := New(b, loadGuest(t, "fpstate"), Config{}, &scriptedWorld{})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		var got backend.FPState
		m.vcpu.Do(func() { err = m.vcpu.FPState(&got) })
		if err != nil {
			t.Fatal(err)
		}
		if want := backend.ResetFPState(); got != want {
			t.Errorf("FP state at entry:\n got %+v\nwant %+v", got, want)
		}
		want := testFPState()
		m.vcpu.Do(func() {
			if err = m.vcpu.SetFPState(&want); err == nil {
				err = m.vcpu.FPState(&got)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("FP state read back:\n got %+v\nwant %+v", got, want)
		}
		bad := want
		bad.MXCSR = 1 << 20
		m.vcpu.Do(func() { err = m.vcpu.SetFPState(&bad) })
		if err == nil {
			t.Errorf("SetFPState accepted MXCSR %#x, which has bits outside MXCSR_MASK", bad.MXCSR)
		}
	})
}

// TestFXSaveForm: the FXSAVE form round-trips the state and keeps nothing
// of what the seam drops (MXCSR_MASK, reserved bytes).
func TestFXSaveForm(t *testing.T) {
	want := testFPState()
	want.FOP, want.FIP, want.FDP = 0x7ff, 0x1234567, 0x89abcdef
	var a [backend.FXSaveSize]byte
	want.ToFXSave(&a, 0xffff)
	a[500] = 0xee // reserved bytes, as a kernel may leave them
	var got backend.FPState
	got.FromFXSave(&a)
	if got != want {
		t.Errorf("FXSAVE round trip:\n got %+v\nwant %+v", got, want)
	}
}
