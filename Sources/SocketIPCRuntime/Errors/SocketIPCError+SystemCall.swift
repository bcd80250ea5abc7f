extension SocketIPCError {
    /// A failed system call: its name, the path it concerned, and `errno` with its description.
    static func systemCall(
        _ name: String,
        errno code: Int32,
        path: String? = nil,
        file: String = #fileID,
        line: Int = #line
    ) -> SocketIPCError {
        let subject = path.map { " on \($0)" } ?? ""
        return SocketIPCError(
            .systemCall,
            "\(name)\(subject) failed: \(errnoDescription(code)) (errno \(code))",
            path: path,
            file: file,
            line: line
        )
    }
}
