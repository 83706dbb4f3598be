// procvisor-bench SUITE [--json FILE] [--count N]
// Runs a benchmark suite with its peer in the same run and prints our figure, the peer's, and the
// ratio. Needs the release products next to it: run `swift build -c release` first (scripts/bench does).
import Foundation
import Glibc
import LinuxHost

struct Result: Codable {
    var name: String
    var unit: String
    var procvisor: Double
    var peer: Double
    var peer_name: String
    var ratio: Double
    var higher_is_better: Bool
    /// For a figure that should match what was asked rather than beat a peer: the tolerance
    /// (printed instead of "higher/lower is better").
    var goal: String? = nil
}

struct Report: Codable {
    var suite: String
    var results: [Result]
}

func usage() -> Never {
    fputs("usage: procvisor-bench SUITE [--json FILE] [--count N]\nsuites: \(Suites.all.keys.sorted().joined(separator: ", "))\n", stderr)
    exit(2)
}

var args = Array(CommandLine.arguments.dropFirst())
guard let suite = args.first, !suite.hasPrefix("-") else { usage() }
args.removeFirst()
var jsonPath: String?
var count = 200
while !args.isEmpty {
    let a = args.removeFirst()
    switch a {
    case "--json": guard !args.isEmpty else { usage() }; jsonPath = args.removeFirst()
    case "--count": guard !args.isEmpty, let n = Int(args.removeFirst()), n > 0 else { usage() }; count = n
    default: usage()
    }
}
guard let run = Suites.all[suite] else {
    fputs("procvisor-bench: unknown suite '\(suite)'\n", stderr)
    usage()
}
let results: [Result]
do {
    results = try run(count)
} catch {
    fputs("procvisor-bench: \(error)\n", stderr)
    exit(1)
}
Table.print(suite: suite, results)
if let jsonPath {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    try enc.encode(Report(suite: suite, results: results)).write(to: URL(fileURLWithPath: jsonPath))
}
