# SocketIPC with descriptor passing on (ConnectionOptions.maximumDescriptorsPerMessage = 16) but shared payloads off
# (sharedPayloadThreshold = Int.max): every byte goes through the socket and the descriptor relay, whatever its size.
# With ../socketipc-shm, the two ends of Benchmarks/sweep.sh's crossover. Same executable as ../socketipc.
WORKLOADS="rr stream bulk"
build() {
    swift build -c release --package-path "$IMPL_DIR/../.." --product socketipc-bench
}
SERVER=("$IMPL_DIR/../../.build/release/socketipc-bench" server --max-descriptors 16 --shared-payload-threshold 9223372036854775807)
CLIENT=("$IMPL_DIR/../../.build/release/socketipc-bench" client --max-descriptors 16 --shared-payload-threshold 9223372036854775807)
