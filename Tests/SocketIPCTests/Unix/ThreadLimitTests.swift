import SocketIPCRuntime
import Testing

@Suite("The thread limit a server with descriptor passing fits its connection limits to")
struct ThreadLimitTests {
    @Test("the pids controller's group is found in /proc/self/cgroup, cgroup v2 and v1 alike")
    func controlGroupsFromProcFile() {
        #expect(ThreadLimit.pidsControlGroups("0::/system.slice/app.service\n") == ["/sys/fs/cgroup/system.slice/app.service"])
        let hybrid = "12:memory:/a\n8:pids:/user.slice/user-1000.slice/session-2.scope\n0::/user.slice\n"
        #expect(
            ThreadLimit.pidsControlGroups(hybrid) == [
                "/sys/fs/cgroup/pids/user.slice/user-1000.slice/session-2.scope", "/sys/fs/cgroup/user.slice",
            ]
        )
        #expect(ThreadLimit.pidsControlGroups("5:cpu,pids:/docker/abc\n") == ["/sys/fs/cgroup/pids/docker/abc"])
        #expect(ThreadLimit.pidsControlGroups("0::/\n") == ["/sys/fs/cgroup"])
        #expect(ThreadLimit.pidsControlGroups("4:memory:/x\n") == [])
    }

    @Test("the tasks left are the least of pids.max − pids.current over the group and every group above it")
    func leastOverAncestors() {
        let files = [
            "/sys/fs/cgroup/user.slice/pids.max": "max\n",
            "/sys/fs/cgroup/user.slice/pids.current": "300\n",
            "/sys/fs/cgroup/user.slice/user-1000.slice/pids.max": "1000\n",
            "/sys/fs/cgroup/user.slice/user-1000.slice/pids.current": "900\n",
            "/sys/fs/cgroup/user.slice/user-1000.slice/app.scope/pids.max": "4915\n",
            "/sys/fs/cgroup/user.slice/user-1000.slice/app.scope/pids.current": "15\n",
        ]
        let left = ThreadLimit.available(inControlGroup: "/sys/fs/cgroup/user.slice/user-1000.slice/app.scope") {
            files[$0]
        }
        #expect(left == 100, "the parent's 1000 − 900, not the group's own 4915 − 15")
        #expect(ThreadLimit.available(inControlGroup: "/sys/fs/cgroup/user.slice") { files[$0] } == nil, "max is none")
        #expect(ThreadLimit.available(inControlGroup: "/sys/fs/cgroup") { files[$0] } == nil, "the root has no limit")
        let container = ["/sys/fs/cgroup/pids.max": "512\n", "/sys/fs/cgroup/pids.current": "12\n"]
        #expect(
            ThreadLimit.available(inControlGroup: "/sys/fs/cgroup") { container[$0] } == 500,
            "a container's own limit, at the root of its control group namespace"
        )
        let over = ["/sys/fs/cgroup/pids/a/pids.max": "10", "/sys/fs/cgroup/pids/a/pids.current": "12"]
        #expect(ThreadLimit.available(inControlGroup: "/sys/fs/cgroup/pids/a") { over[$0] } == 0, "never negative")
    }

    @Test("connections with a relay of two threads fit beside a reserve of an eighth, between 64 and 256, at least one")
    func relayedConnections() {
        #expect(ThreadLimit(available: nil).relayedConnections == nil)
        #expect(ThreadLimit(available: 4_915).relayedConnections == (4_915 - 256) / 2)
        #expect(ThreadLimit(available: 1_000).relayedConnections == (1_000 - 125) / 2)
        #expect(ThreadLimit(available: 200).relayedConnections == (200 - 64) / 2)
        #expect(ThreadLimit(available: 10).relayedConnections == 1)
    }
}
