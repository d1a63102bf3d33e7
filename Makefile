# make        builds bin/ftvm and every guest into guests/build/NAME.elf
# make test   runs every test (KVM tests need /dev/kvm; CI must have it)
GO ?= go

.PHONY: all ftvm guests test bench clean demo
all: ftvm guests

ftvm:
	$(GO) build -o bin/ftvm ./cmd/ftvm

guests:
	$(MAKE) -s -C guests

test: all
	$(MAKE) -s -C guests check
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 45m ./...

bench: all
	$(GO) test -run '^$$' -bench . -benchtime 1x ./bench/...

clean:
	rm -rf bin
	$(MAKE) -s -C guests clean

# The default job: the echo guest with console input from a script.
demo: all
	printf 'hello ftvm\nfault tolerance\n' | ./bin/ftvm run guests/build/echo.elf
