# Convenience targets; the real work is in install/ and cargo.
.PHONY: all install uninstall check test
all:
	$(MAKE) -C install build
install:
	$(MAKE) -C install install
uninstall:
	$(MAKE) -C install uninstall
check:
	$(MAKE) -C install check
test:
	cargo build --workspace && cargo test --workspace
