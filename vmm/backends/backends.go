// Package backends picks a backend by name. It is the only package that
// imports every backend.
package backends

import (
	"fmt"
	"strings"

	"github.com/ftvm/ftvm/vmm/backend"
	"github.com/ftvm/ftvm/vmm/kvm"
	"github.com/ftvm/ftvm/vmm/ptrace"
)

// All is every backend, in the order auto prefers them.
var All = []backend.Backend{kvm.Backend{}, ptrace.Backend{}}

// Names are the values --backend takes.
const Names = "auto|kvm|ptrace"

// Get returns the backend called name, without checking it is usable.
func Get(name string) (backend.Backend, error) {
	for _, b := range All {
		if b.Name() == name {
			return b, nil
		}
	}
	return nil, fmt.Errorf("backends: unknown backend %q (want %s)", name, Names)
}

// Choose returns the backend called name, which must be usable here, or
// for "auto" (or "") the first usable one: KVM when it is usable, ptrace
// otherwise. The error says why each candidate is unusable.
func Choose(name string) (backend.Backend, error) {
	if name != "" && name != "auto" {
		b, err := Get(name)
		if err != nil {
			return nil, err
		}
		if err := b.Usable(); err != nil {
			return nil, fmt.Errorf("backend %s is not usable here: %w", name, err)
		}
		return b, nil
	}
	var why []string
	for _, b := range All {
		err := b.Usable()
		if err == nil {
			return b, nil
		}
		why = append(why, fmt.Sprintf("%s: %v", b.Name(), err))
	}
	return nil, fmt.Errorf("backends: no backend is usable here: %s", strings.Join(why, "; "))
}

// UsableBackends returns the backends usable here, in All's order.
func UsableBackends() []backend.Backend {
	var bs []backend.Backend
	for _, b := range All {
		if b.Usable() == nil {
			bs = append(bs, b)
		}
	}
	return bs
}

// Usable returns the names of the backends usable here.
func Usable() []string {
	var names []string
	for _, b := range UsableBackends() {
		names = append(names, b.Name())
	}
	return names
}
