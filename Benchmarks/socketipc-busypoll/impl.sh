# SocketIPC with its latency mode on both sides (ConnectionOptions.busyPollDuration = 50 µs): the event loops poll
# for 50 µs after each read and write instead of sleeping. Same executable as ../socketipc.
WORKLOADS="rr stream bulk fanin idle-mem"
build() {
    swift build -c release --package-path "$IMPL_DIR/../.." --product socketipc-bench
}
SERVER=("$IMPL_DIR/../../.build/release/socketipc-bench" server --busy-poll-us 50)
CLIENT=("$IMPL_DIR/../../.build/release/socketipc-bench" client --busy-poll-us 50)
