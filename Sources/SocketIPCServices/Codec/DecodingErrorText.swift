/// `error` in words for the message of an `invalidMessage` error, as a person reading it wants it: for a
/// `DecodingError`, what was expected and where (`expected Int at .amount, found a string`), without Swift's type
/// names and debug descriptions; any other error as it describes itself.
func decodingErrorText(_ error: any Error) -> String {
    guard let error = error as? DecodingError else { return "\(error)" }
    func place(_ context: DecodingError.Context) -> String {
        guard !context.codingPath.isEmpty else { return "at the top level" }
        let path = context.codingPath.map { key in key.intValue.map { "[\($0)]" } ?? ".\(key.stringValue)" }
        return "at " + path.joined()
    }
    switch error {
    case .typeMismatch(let type, let context):
        return "expected \(type) \(place(context)): \(context.debugDescription)"
    case .valueNotFound(let type, let context):
        return "expected \(type) \(place(context)), found null or nothing"
    case .keyNotFound(let key, let context):
        return "the key '\(key.stringValue)' is missing \(place(context))"
    case .dataCorrupted(let context):
        return "\(context.debugDescription) (\(place(context)))"
    @unknown default:
        return "\(error)"
    }
}
