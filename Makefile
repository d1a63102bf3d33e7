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

# The default job: a protected kvstore with clients, and a failover.
demo: all
	./bin/ftvm demo
