# make        builds bin/ftvm and every guest into guests/build/NAME.elf
# make test   runs every test: the guest tests on every backend usable here
#             (kvm where /dev/kvm works, ptrace on any Linux host)
GO ?= go

.PHONY: all ftvm guests test bench clean demo
all: ftvm guests

ftvm:
	$(GO) build -o bin/ftvm ./cmd/ftvm

guests:
	$(MAKE) -s -C guests

# The whole suite runs once on the backend auto picks; the packages that
# start guests run again on every other usable backend. The last line says
# which backends the guest tests ran on.
GUEST_PKGS = ./vmm/... ./cmd/... ./bench/...
test: all
	$(MAKE) -s -C guests check
	$(GO) vet ./...
	@bin/ftvm backends -v >/dev/null || { echo "make test: no backend can run guests here (see bin/ftvm doctor)"; exit 1; }
	@first=$$(bin/ftvm backends | head -1); \
	echo "make test: backends usable here: $$(bin/ftvm backends | tr '\n' ' ')"; \
	echo "make test: the whole suite, guest tests on $$first"; \
	FTVM_BACKEND=$$first $(GO) test -count=1 -timeout 45m ./... || exit 1; \
	for b in $$(bin/ftvm backends | tail -n +2); do \
		echo "make test: the guest tests again, on $$b"; \
		FTVM_BACKEND=$$b $(GO) test -count=1 -timeout 45m $(GUEST_PKGS) || exit 1; \
	done; \
	echo "make test: guest tests ran on: $$(bin/ftvm backends | tr '\n' ' ')"; \
	bin/ftvm backends -v 2>&1 >/dev/null | sed 's/^/make test: not run on /'

bench: all
	$(GO) test -run '^$$' -bench . -benchtime 1x ./bench/...

clean:
	rm -rf bin
	$(MAKE) -s -C guests clean

# The default job: a protected kvstore with clients, and a failover.
demo: all
	./bin/ftvm demo
