import Testing

@testable import SocketIPCCore

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

@Suite("AcceptBackoff")
struct AcceptBackoffUnitTests {
    @Test("the wait doubles with each failure from 1 ms up to 1 s")
    func exponential() {
        var backoff = AcceptBackoff()
        let start = ContinuousClock.now
        let waits = (0..<12).map { _ in backoff.failed(errno: EMFILE, at: start).wait }
        #expect(waits.prefix(4) == [.milliseconds(1), .milliseconds(2), .milliseconds(4), .milliseconds(8)])
        #expect(waits.last == .seconds(1))
    }

    @Test("failures and recoveries that alternate a thousand times a second give one line of each, then summaries with counts")
    func churnIsLoggedOnce() {
        var backoff = AcceptBackoff()
        let start = ContinuousClock.now
        var reports: [AcceptBackoff.Report] = []
        for step in 0..<1000 {
            let now = start + .milliseconds(step)
            if let report = backoff.failed(errno: EMFILE, at: now).report { reports.append(report) }
            if let report = backoff.succeeded(at: now) { reports.append(report) }
        }
        #expect(reports == [.failing(errno: EMFILE, failures: 1, first: true), .recovered(failures: 1)])
        // Ten seconds on, the next failure is reported with the count of those left out.
        let later = start + .seconds(11)
        #expect(backoff.failed(errno: EMFILE, at: later).report == .failing(errno: EMFILE, failures: 1000, first: false))
        #expect(backoff.succeeded(at: later) == .recovered(failures: 1000))
    }

    @Test("a success halves the wait instead of resetting it, so a server that keeps running out keeps backing off")
    func decay() {
        var backoff = AcceptBackoff()
        for _ in 0..<6 { _ = backoff.failed(errno: EMFILE) }
        #expect(backoff.delay == .milliseconds(64))
        _ = backoff.succeeded()
        #expect(backoff.delay == .milliseconds(32))
        #expect(backoff.succeeded() == nil, "nothing to report without a failure")
    }
}
