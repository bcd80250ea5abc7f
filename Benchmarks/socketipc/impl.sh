# SocketIPC's peer for the shared UDS benchmark (shared/bench/README.md): `run.sh ... /path/to/repo/Benchmarks/socketipc`.
# Server and client are the socketipc-bench executable of this package, written against SocketIPC's public API.
WORKLOADS="seed rr stream bulk fanin idle-mem"
build() {
    swift build -c release --package-path "$IMPL_DIR/../.." --product socketipc-bench
}
SERVER=("$IMPL_DIR/../../.build/release/socketipc-bench" server)
CLIENT=("$IMPL_DIR/../../.build/release/socketipc-bench" client)
