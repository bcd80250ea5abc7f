# SocketIPC with every payload in sealed shared memory (as ../socketipc-shm), the server taking one-way messages as
# MappedPayloads (--zero-copy on, server only) while the client sends ordinary buffers: the receiver's copy saved,
# the sender's kept. Same executable as ../socketipc.
WORKLOADS="stream bulk"
build() {
    swift build -c release --package-path "$IMPL_DIR/../.." --product socketipc-bench
}
SERVER=("$IMPL_DIR/../../.build/release/socketipc-bench" server --max-descriptors 16 --shared-payload-threshold 1 --zero-copy on)
CLIENT=("$IMPL_DIR/../../.build/release/socketipc-bench" client --max-descriptors 16 --shared-payload-threshold 1)
