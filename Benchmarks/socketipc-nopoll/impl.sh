# SocketIPC with busy polling turned off on both sides (ConnectionOptions.busyPolling = .off): the event loops sleep
# as soon as they have nothing to do, as before adaptive polling became the default. Same executable as ../socketipc.
WORKLOADS="rr stream bulk fanin idle-mem"
build() {
    swift build -c release --package-path "$IMPL_DIR/../.." --product socketipc-bench
}
SERVER=("$IMPL_DIR/../../.build/release/socketipc-bench" server --busy-poll off)
CLIENT=("$IMPL_DIR/../../.build/release/socketipc-bench" client --busy-poll off)
