# SocketIPC passing large payloads without copies: descriptor passing on (ConnectionOptions.maximumDescriptorsPerMessage
# = 16), every payload in sealed shared memory (sharedPayloadThreshold = 1), the client filling each one-way message
# in a SharedMemoryLoan and the server taking it as a MappedPayload (--zero-copy on). Same executable as ../socketipc.
WORKLOADS="stream bulk"
build() {
    swift build -c release --package-path "$IMPL_DIR/../.." --product socketipc-bench
}
SERVER=("$IMPL_DIR/../../.build/release/socketipc-bench" server --max-descriptors 16 --shared-payload-threshold 1 --zero-copy on)
CLIENT=("$IMPL_DIR/../../.build/release/socketipc-bench" client --max-descriptors 16 --shared-payload-threshold 1 --zero-copy on)
