# SocketIPC with the default configuration, its client handing one-way messages to Connection.send(contentsOf:) 64 at
# a time (--send-batch 64) instead of one send(_:) each. Same executable as ../socketipc.
WORKLOADS="stream bulk"
build() {
    swift build -c release --package-path "$IMPL_DIR/../.." --product socketipc-bench
}
SERVER=("$IMPL_DIR/../../.build/release/socketipc-bench" server)
CLIENT=("$IMPL_DIR/../../.build/release/socketipc-bench" client --send-batch 64)
