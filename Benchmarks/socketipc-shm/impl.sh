# SocketIPC with every payload in sealed shared memory: descriptor passing on (ConnectionOptions.maximumDescriptorsPerMessage
# = 16) and ConnectionOptions.sharedPayloadThreshold = 1, so each message, request and reply of one byte or more travels
# as a memfd. With ../socketipc-relay-socket, the two ends of Benchmarks/sweep.sh's crossover. Same executable as ../socketipc.
WORKLOADS="rr stream bulk"
build() {
    swift build -c release --package-path "$IMPL_DIR/../.." --product socketipc-bench
}
SERVER=("$IMPL_DIR/../../.build/release/socketipc-bench" server --max-descriptors 16 --shared-payload-threshold 1)
CLIENT=("$IMPL_DIR/../../.build/release/socketipc-bench" client --max-descriptors 16 --shared-payload-threshold 1)
