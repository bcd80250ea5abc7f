# SocketIPC with its latency mode on both sides (ConnectionOptions.busyPollDuration = 200 µs): the event loops poll
# for 200 µs after each read and write instead of sleeping. Same executable as ../socketipc.
WORKLOADS="rr stream bulk fanin idle-mem"
build() {
    swift build -c release --package-path "$IMPL_DIR/../.." --product socketipc-bench
}
SERVER=("$IMPL_DIR/../../.build/release/socketipc-bench" server --busy-poll-us 200)
CLIENT=("$IMPL_DIR/../../.build/release/socketipc-bench" client --busy-poll-us 200)
