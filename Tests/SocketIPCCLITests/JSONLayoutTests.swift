import NIOCore
import Testing

@testable import socket_ipc

/// `call` and `watch` lay a server's JSON out again in one pass over its bytes (JSONLayout): linear in time and memory
/// whatever the shape, keys and numbers as they came (found by a review: re-serializing a 16 MiB response took about
/// 1 GB and up to a minute, past `--timeout`, and reordered its keys).
@Suite("JSON responses laid out in one pass")
struct JSONLayoutTests {
    static func oneLine(_ text: String) -> String {
        String(decoding: JSONLayout.oneLine(Array(text.utf8)), as: UTF8.self)
    }

    static func indented(_ text: String, limit: Int = 1 << 20) -> String? {
        JSONLayout.indented(Array(text.utf8), limit: limit).map { String(decoding: $0, as: UTF8.self) }
    }

    @Test("on one line: whitespace between tokens dropped, strings (with escaped quotes, backslashes and spaces), numbers and key order kept")
    func oneLineKeepsTokens() {
        #expect(Self.oneLine("{\n  \"z\" : 1,\r\n\t\"a\" : [ true , null ]\n}") == #"{"z":1,"a":[true,null]}"#)
        #expect(Self.oneLine(#"[ "a \"b\" \\", 1e400 , -0.5E+3 ]"#) == #"["a \"b\" \\",1e400,-0.5E+3]"#)
        #expect(Self.oneLine(#" "x y" "#) == #""x y""#)
    }

    @Test("indented: two spaces a level, ' : ' between key and value, empty containers kept on their line")
    func indentedLayout() {
        #expect(Self.indented(#"{"z": 1, "a": [true]}"#) == "{\n  \"z\" : 1,\n  \"a\" : [\n    true\n  ]\n}")
        #expect(Self.indented("[ {} , [ ] , \"{[,:]}\" ]") == "[\n  {},\n  [],\n  \"{[,:]}\"\n]")
        #expect(Self.indented("7") == "7")
    }

    @Test("indented output longer than its limit (deep nesting) gives nil: the caller prints one line instead")
    func indentedLimit() {
        let deep = String(repeating: "[", count: 5_000) + "1" + String(repeating: "]", count: 5_000)
        #expect(Self.indented(deep, limit: 4 * deep.utf8.count + 4096) == nil)
        #expect(Self.indented("[1]", limit: 3) == nil)
    }

    @Test("a response of 100,000 small members, and one nested 100,000 deep, are laid out whole, in key order (with JSONSerialization, 16 MiB of them took a minute)")
    func largeResponses() throws {
        var wide = "{"
        for index in 0..<100_000 { wide += (index == 0 ? "" : ",") + "\"\(99_999 - index)\":{}" }
        wide += "}"
        let printed = try formatJSON(ByteBuffer(string: wide.replacing(",", with: ",\n")), pretty: false)
        #expect(printed == wide)
        let pretty = try formatJSON(ByteBuffer(string: wide), pretty: true)
        #expect(pretty.hasPrefix("{\n  \"99999\" : {},\n  \"99998\" : {},"))
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(try formatJSON(ByteBuffer(string: deep), pretty: true) == deep)
    }

    @Test("--pretty indents an ordinary shallow response, a matrix of 300 rows (found by a review: a limit of four times the response printed it on one line)")
    func prettyShallowMatrix() throws {
        let rows = [String](repeating: "[0,1,2,3,4,5,6,7,8,9]", count: 300).joined(separator: ",")
        let matrix = #"{"result":{"matrix":["# + rows + "]}}"
        let pretty = try formatJSON(ByteBuffer(string: matrix), pretty: true)
        #expect(pretty.split(separator: "\n").count == 3 + 300 * 12 + 3, "\(pretty.prefix(200))")
        #expect(JSONLayout.oneLine(Array(pretty.utf8)) == Array(matrix.utf8))
    }
}
