import Foundation
import SocketIPC

extension ProbeReport {
    /// The `--json` form of the report: one object, every key always present (`null` when it does not apply or is
    /// unknown). ``ProbeCommand``'s help documents the schema.
    var jsonObject: [String: Any] {
        let inspection = self.inspection
        let null = NSNull()
        var object: [String: Any] = [
            "path": inspection.path,
            "verdict": self.verdict.rawValue,
            "servesYou": self.verdict.servesYou,
            "exitStatus": Int(self.exitStatus),
            "message": self.headline,
            "fix": self.fix ?? null,
            "protocolVersion": self.protocolVersion.map { Int($0) } ?? null,
            "pathLength": inspection.pathLength,
            "pathLimit": inspection.pathLimit,
            "canConnect": inspection.mayConnect ?? null,
        ]
        object["goAway"] = self.goAway.map { ["reason": Int($0.reason), "message": $0.message] as [String: Any] } ?? null
        object["peer"] =
            self.peer.map {
                [
                    "pid": Int($0.processID), "uid": Int($0.userID), "gid": Int($0.groupID),
                    "command": ProcessName.unescaped($0.processID) ?? null,
                ] as [String: Any]
            } ?? null
        object["socket"] = (try? inspection.entry.get()).map(Self.fileObject) ?? null
        object["link"] =
            inspection.linkTarget.map { target in
                [
                    "target": target,
                    "type": (try? inspection.linkDestination?.get())?.kind.rawValue ?? null,
                ] as [String: Any]
            } ?? null
        let directory = inspection.directory
        var directoryObject = directory.summary.map(Self.fileObject) ?? ["type": null]
        directoryObject["path"] = directory.path
        directoryObject["safe"] = directory.isSafe ?? null
        directoryObject["unsafeReason"] = directory.unsafeReason ?? null
        for key in ["uid", "user", "gid", "group", "mode"] where directoryObject[key] == nil {
            directoryObject[key] = null
        }
        object["directory"] = directoryObject
        let lock = inspection.lock
        object["lock"] = [
            "path": lock.path,
            "exists": lock.status != nil,
            "held": lock.isHeld ?? null,
            "holderPid": lock.holder.map { Int($0.pid) } ?? null,
            "holderCommand": lock.holder?.command ?? null,
        ] as [String: Any]
        object["abstract"] = inspection.isAbstract
        if inspection.isAbstract {
            // No file, directory or lock file to describe.
            for key in ["socket", "directory", "lock", "canConnect"] { object[key] = null }
        }
        return object
    }

    /// `{"type", "uid", "user", "gid", "group", "mode"}` of a file.
    private static func fileObject(_ file: FileSummary) -> [String: Any] {
        [
            "type": file.kind.rawValue,
            "uid": Int(file.uid),
            "user": file.user ?? NSNull(),
            "gid": Int(file.gid),
            "group": file.group ?? NSNull(),
            "mode": file.mode,
        ]
    }
}
