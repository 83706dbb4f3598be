import Foundation

enum Table {
    static func print(suite: String, _ results: [Result]) {
        let header = ["benchmark", "procvisor", "peer", "peer name", "ratio", "unit"]
        let rows = results.map { r in
            [r.name, String(format: "%.3f", r.procvisor), String(format: "%.3f", r.peer), r.peer_name,
             String(format: "%.2fx", r.ratio) + (r.goal.map { " (\($0))" } ?? (r.higher_is_better ? " (higher is better)" : " (lower is better)")), r.unit]
        }
        let widths = header.indices.map { i in ([header[i]] + rows.map { $0[i] }).map(\.count).max()! }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
        }
        Swift.print("suite: \(suite)")
        Swift.print(line(header))
        Swift.print(widths.map { String(repeating: "-", count: $0) }.joined(separator: "  "))
        rows.forEach { Swift.print(line($0)) }
    }
}

/// Order statistics of a sample.
struct Sample {
    var values: [Double]
    var sorted: [Double] { values.sorted() }
    func percentile(_ p: Double) -> Double {
        let s = sorted
        guard !s.isEmpty else { return .nan }
        let idx = min(s.count - 1, max(0, Int((p / 100 * Double(s.count)).rounded(.up)) - 1))
        return s[idx]
    }
    var median: Double { percentile(50) }
}
