# SocketIPC with descriptor passing turned on for every connection (ConnectionOptions.maximumDescriptorsPerMessage
# = 16): each connection's bytes go through its descriptor relay (two threads, one more copy), which is what a
# connection that may pass descriptors costs even when it passes none. Same executable as ../socketipc.
WORKLOADS="rr stream bulk"
build() {
    swift build -c release --package-path "$IMPL_DIR/../.." --product socketipc-bench
}
SERVER=("$IMPL_DIR/../../.build/release/socketipc-bench" server --max-descriptors 16)
CLIENT=("$IMPL_DIR/../../.build/release/socketipc-bench" client --max-descriptors 16)
