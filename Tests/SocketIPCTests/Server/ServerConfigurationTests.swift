import SocketIPC
import SocketIPCTestSupport
import Testing

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

@Suite("Server configuration defaults", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ServerConfigurationTests {
    @Test("the default policy of a server is sameUser")
    func defaultPolicy() {
        let configuration = ServerConfiguration(path: "/tmp/x.sock")
        #expect(configuration.authorization.description == AuthorizationPolicy.sameUser.description)
        #expect(!configuration.authorization.allows(PeerCredentials(processID: 4242, userID: 65534, groupID: 100)) || geteuid() == 65534)
    }

    @Test("the default maximum message size is the one PROTOCOL.md's vectors assume")
    func defaultMaximumMessageSize() {
        #expect(ConnectionOptions().maximumMessageSize == 16 * 1024 * 1024)
    }
}
