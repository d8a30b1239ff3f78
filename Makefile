# Two commands for a fresh machine: `make run` serves the dashboard, `make test` runs every test.
HOST ?= 127.0.0.1
PORT ?= 8000
DATA_DIR ?= ./moco-data

.PHONY: run test setup setup-browser build bench gpu-bin lint fmt doctor

run: setup
	cargo build --release
	./target/release/moco-server serve --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR)

# libtorch's OpenMP threads spin while waiting; with tests running side by side on few cores that
# spinning starves them, so the test run lets idle threads sleep.
test: setup setup-browser
	OMP_WAIT_POLICY=PASSIVE cargo test --no-fail-fast

setup:
	@scripts/setup.sh

setup-browser:
	@scripts/setup-browser.sh

build: setup
	cargo build --release

doctor: build
	./target/release/moco-server doctor

bench: setup
	cargo bench --bench step --bench augment --bench server --bench quality --bench eval --bench distributed

# The CUDA checks and the step bench as stripped binaries for a GPU machine without a toolchain:
# there, `scripts/gpu-check.sh gpu-bin` runs them against that machine's torch 2.11.0.
gpu-bin: setup
	scripts/build-gpu-bin.sh

lint: setup
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

fmt:
	cargo fmt
