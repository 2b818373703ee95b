//! Diagnostics that point at the text: `file:line:col: message`.

use std::fmt;

/// One source file of a pack, as read by the caller (this crate does no I/O).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The path shown in diagnostics, e.g. `rules/packs/default/velocity.toml`.
    pub path: String,
    /// The path relative to the pack directory, e.g. `velocity.toml` or `lists/mules.txt`;
    /// list files are referred to by it.
    pub rel: String,
    /// The file's text.
    pub text: String,
}

/// A problem found in a pack, located in a file by line and column (both 1-based; the column
/// counts characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file's display path.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub col: u32,
    /// What is wrong, with a suggestion when one is likely.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

impl std::error::Error for Diagnostic {}

/// All the problems found in a pack, grouped by check (TOML, [pack], lists, rules, tests).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.0))]
pub struct Diagnostics(pub Vec<Diagnostic>);

fn render(d: &[Diagnostic]) -> String {
    d.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Diagnostic {
    /// Locates byte `offset` of `file` and builds a diagnostic there.
    pub fn at(file: &SourceFile, offset: usize, message: impl Into<String>) -> Self {
        let (line, col) = line_col(&file.text, offset);
        Diagnostic {
            file: file.path.clone(),
            line,
            col,
            message: message.into(),
        }
    }
}

/// 1-based line and character column of a byte offset (clamped to the text).
pub fn line_col(text: &str, offset: usize) -> (u32, u32) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..offset].chars().count() + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(col).unwrap_or(u32::MAX),
    )
}

/// `" (did you mean 'x'?)"` for the closest candidate, or an empty string.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(word, c);
        if score > 0.8 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map_or_else(String::new, |(_, c)| format!(" (did you mean '{c}'?)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one_in_characters() {
        let text = "ab\ncdé f\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 7), (2, 4));
        assert_eq!(line_col(text, 1000), (3, 1));
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            suggest("amout", ["amount", "currency"]),
            " (did you mean 'amount'?)"
        );
        assert_eq!(suggest("zzz", ["amount", "currency"]), "");
    }
}
