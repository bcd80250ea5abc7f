import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif


/// One EOF-style exchange done with non-blocking system calls on the calling thread, as far as it goes without
/// blocking: write the message, shut down the write side, read the acknowledgement until EOF.
struct EOFExchange {
    enum Outcome {
        /// Done: the socket is closed.
        case finished(ByteBuffer)
        /// Failed: the socket is closed.
        case failed(SocketIPCError)
        /// Continue on an event loop, from ``unsent`` and ``received``.
        case wouldBlock
    }

    let descriptor: Int32
    private(set) var unsent: ByteBuffer
    private(set) var received = ByteBuffer()
    private(set) var halfClosed = false
    let maximumAcknowledgement: Int
    /// The server's socket path, for error messages.
    let path: String

    init(descriptor: Int32, message: ByteBuffer, maximumAcknowledgement: Int, path: String) {
        self.descriptor = descriptor
        self.unsent = message
        self.maximumAcknowledgement = maximumAcknowledgement
        self.path = path
    }

    /// Goes as far as it can; waits at most `milliseconds` (in `poll`) for the acknowledgement to start.
    mutating func runWithoutBlocking(waitingForAcknowledgementUpTo milliseconds: Int32) -> Outcome {
        if self.unsent.readableBytes > 0 {
            switch SocketSend.sendAll(self.descriptor, from: &self.unsent) {
            case .done: break
            case .wouldBlock: return .wouldBlock
            case .failed(let code): return self.failUndelivered(errno: code)
            }
        }
        if !self.halfClosed {
            shutdown(self.descriptor, Int32(SHUT_WR))
            self.halfClosed = true
        }
        var waited = false
        while true {
            self.received.reserveCapacity(minimumWritableBytes: 1024)
            let count = self.received.withUnsafeMutableWritableBytes { systemRead(self.descriptor, $0.baseAddress, $0.count) }
            if count > 0 {
                self.received.moveWriterIndex(forwardBy: count)
                if self.received.readableBytes > self.maximumAcknowledgement {
                    return self.fail(
                        SocketIPCError(
                            .messageTooLarge,
                            "the acknowledgement exceeds the maximum of \(self.maximumAcknowledgement) bytes",
                            path: self.path
                        )
                    )
                }
            } else if count == 0 {
                // A clean end-of-stream after the whole message and the half-close: delivered, unless the bytes
                // are a framed server's hello.
                if let framed = FramedServerRecognition.error(for: self.received, path: self.path) {
                    return self.fail(framed)
                }
                close(self.descriptor)
                return .finished(self.received)
            } else if errno == EINTR {
                continue
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) && !waited && milliseconds > 0 {
                var entry = pollfd(fd: self.descriptor, events: Int16(POLLIN), revents: 0)
                waited = true
                if systemPoll(&entry, 1, milliseconds) <= 0 { return .wouldBlock }
            } else if errno == EAGAIN || errno == EWOULDBLOCK {
                return .wouldBlock
            } else {
                return self.failUndelivered(errno: errno)
            }
        }
    }

    /// Fails the exchange whose connection failed with `code` before the server's end-of-stream: as with a framed
    /// server if the bytes it sent (read now, as far as they are there) say so, else as not delivered.
    mutating func failUndelivered(errno code: Int32) -> Outcome {
        while self.received.readableBytes < 4096 {
            self.received.reserveCapacity(minimumWritableBytes: 1024)
            let count = self.received.withUnsafeMutableWritableBytes { systemRead(self.descriptor, $0.baseAddress, $0.count) }
            if count > 0 {
                self.received.moveWriterIndex(forwardBy: count)
            } else if count < 0 && errno == EINTR {
                continue
            } else {
                break
            }
        }
        return self.fail(
            FramedServerRecognition.error(for: self.received, path: self.path)
                ?? .eofNotDelivered(path: self.path, cause: errnoDescription(code))
        )
    }

    /// Closes the socket and reports `error`.
    func fail(_ error: SocketIPCError) -> Outcome {
        close(self.descriptor)
        return .failed(error)
    }
}

extension SocketIPCError {
    /// The error of an EOF-style exchange whose message did not reach the server: the connection failed or the
    /// server closed it (`cause` says how) before the whole message was written and the server's end-of-stream read.
    static func eofNotDelivered(
        path: String,
        cause: String,
        underlying: (any Error)? = nil,
        file: String = #fileID,
        line: Int = #line
    ) -> SocketIPCError {
        SocketIPCError(
            .connectionClosed,
            "the server at \(path) closed the connection before the whole message was delivered (\(cause)); likely "
                + "causes: the message is over the server's maximum size, its authorization policy refused this "
                + "process, it is at its connection limit or shutting down, or it is not an EOF-style SocketIPC server "
                + "(socket-ipc probe tells)",
            path: path,
            cause: underlying,
            file: file,
            line: line
        )
    }
}
