/// A position in an xl config source: the file name as given to the parser, a 1-based line
/// and a 1-based column counted in Unicode scalars (a tab counts as one column).
public struct XLConfigLocation: Equatable, Sendable, Codable, CustomStringConvertible {
    /// The name the text was parsed under: a path, a fixture name, or "command line".
    public var file: String
    /// 1-based line number.
    public var line: Int
    /// 1-based column number.
    public var column: Int

    /// Creates a location.
    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    /// "FILE:LINE:COLUMN", the form compilers and editors understand.
    public var description: String { "\(file):\(line):\(column)" }
}
