//! Configuration errors with source positions, and the collector the parser and the
//! validator push into.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;

/// One problem in a configuration file.
///
/// `line` and `column` are 1-based; `column` counts characters, not bytes. `line == 0`
/// means the error is about the file as a whole (unreadable file, missing TLS file found
/// without source position).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_one(self))]
pub struct ConfigError {
    /// The configuration file name as given to [`super::load`] / [`super::parse`].
    pub file: String,
    /// 1-based line, 0 when the error has no position.
    pub line: usize,
    /// 1-based column in characters, 0 when the error has no position.
    pub column: usize,
    /// What is wrong and what was expected.
    pub message: String,
    /// How to fix it, when there is something useful to say.
    pub hint: Option<String>,
}

impl ConfigError {
    /// An error about a whole file (no line/column).
    pub fn file_level(file: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.into(),
            line: 0,
            column: 0,
            message: message.into(),
            hint: None,
        }
    }
}

fn render_one(e: &ConfigError) -> String {
    let mut s = if e.line == 0 {
        format!("{}: error: {}", e.file, e.message)
    } else {
        format!("{}:{}:{}: error: {}", e.file, e.line, e.column, e.message)
    };
    if let Some(hint) = &e.hint {
        s.push_str(" (");
        s.push_str(hint);
        s.push(')');
    }
    s
}

/// Every error found in a configuration, sorted by position; `Display` prints one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_all(&self.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn render_all(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigErrors {
    /// Number of errors.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when there are no errors (never the case for a returned `Err`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Iterates over the errors in position order.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A problem found while converting one value, before it has a position.
#[derive(Debug)]
pub(crate) struct Problem {
    pub message: String,
    pub hint: Option<String>,
    /// Points at a sub-expression (a list element) instead of the whole value.
    pub span: Option<Range<usize>>,
}

impl Problem {
    pub fn new(message: impl Into<String>) -> Self {
        Problem {
            message: message.into(),
            hint: None,
            span: None,
        }
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn maybe_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
    pub fn at(mut self, span: Option<Range<usize>>) -> Self {
        if span.is_some() {
            self.span = span;
        }
        self
    }
}

/// Byte offset -> (line, column) for one source text.
pub(crate) struct LineMap<'s> {
    src: &'s str,
    /// Byte offset at which each line starts.
    starts: Vec<usize>,
}

impl<'s> LineMap<'s> {
    pub fn new(src: &'s str) -> Self {
        let starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineMap { src, starts }
    }

    /// 1-based line and character column of a byte offset (clamped to the text).
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts.get(line - 1).copied().unwrap_or(0);
        let column = self
            .src
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        (line, column)
    }
}

/// Where things are in the source: the value span of each attribute and the header span
/// of each block, keyed by path (`replication.ha.virtual_ip[1].address`). Attributes whose
/// value was rejected are marked bad so cross-field checks do not pile on.
#[derive(Debug, Default)]
pub(crate) struct Locations {
    spans: HashMap<String, Range<usize>>,
    bad: HashSet<String>,
    /// Instance paths of the parsed items of each repeatable block, in `Vec` order.
    items: HashMap<&'static str, Vec<String>>,
}

impl Locations {
    pub fn set(&mut self, path: String, span: Option<Range<usize>>) {
        if let Some(span) = span {
            self.spans.entry(path).or_insert(span);
        }
    }
    pub fn mark_bad(&mut self, path: String) {
        self.bad.insert(path);
    }
    /// Records that the next parsed item of repeatable block `schema_path` is `path`.
    pub fn push_item(&mut self, schema_path: &'static str, path: String) {
        self.items.entry(schema_path).or_default().push(path);
    }
    /// Instance path of item `index` of repeatable block `schema_path`.
    pub fn item(&self, schema_path: &str, index: usize) -> String {
        self.items
            .get(schema_path)
            .and_then(|v| v.get(index))
            .cloned()
            .unwrap_or_else(|| format!("{schema_path}[{index}]"))
    }
    pub fn is_bad(&self, path: &str) -> bool {
        self.bad.contains(path)
    }
    pub fn has(&self, path: &str) -> bool {
        self.spans.contains_key(path)
    }
    /// The span of `path`, else of the nearest enclosing block that appears in the file.
    pub fn find(&self, path: &str) -> Option<Range<usize>> {
        let mut p = path;
        loop {
            if let Some(s) = self.spans.get(p) {
                return Some(s.clone());
            }
            p = &p[..p.rfind('.')?];
        }
    }
}

/// Collects errors for one file and turns them into a sorted [`ConfigErrors`].
pub(crate) struct Diag<'s> {
    file: &'s str,
    map: LineMap<'s>,
    errors: Vec<(usize, ConfigError)>,
}

impl<'s> Diag<'s> {
    pub fn new(file: &'s str, src: &'s str) -> Self {
        Diag {
            file,
            map: LineMap::new(src),
            errors: Vec::new(),
        }
    }

    /// Records an error at the start of `span` (line 1, column 1 when unknown).
    pub fn error(
        &mut self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let offset = span.map_or(0, |s| s.start);
        let (line, column) = self.map.position(offset);
        self.push_at(offset, line, column, message.into(), hint);
    }

    pub fn push_at(
        &mut self,
        offset: usize,
        line: usize,
        column: usize,
        message: String,
        hint: Option<String>,
    ) {
        self.errors.push((
            offset,
            ConfigError {
                file: self.file.to_string(),
                line,
                column,
                message,
                hint,
            },
        ));
    }

    pub fn problem(&mut self, span: Option<Range<usize>>, p: Problem) {
        self.error(p.span.or(span), p.message, p.hint);
    }

    /// "L:C" of a byte offset, for messages such as "first set at 3:5".
    pub fn pos_str(&self, span: &Option<Range<usize>>) -> String {
        let (l, c) = self.map.position(span.as_ref().map_or(0, |s| s.start));
        format!("{l}:{c}")
    }

    pub fn finish(mut self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(());
        }
        // Stable: errors at the same position keep the order they were found in.
        self.errors.sort_by_key(|(offset, _)| *offset);
        self.errors.dedup_by(|a, b| a.1 == b.1);
        Err(ConfigErrors(
            self.errors.into_iter().map(|(_, e)| e).collect(),
        ))
    }
}

/// The closest candidate to `word`, if it is close enough to be a plausible typo: within
/// a third of its length in edit distance (transpositions count once), or very similar by
/// Jaro-Winkler (which misses transpositions in short words, hence both).
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let max_edits = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::osa_distance(word, c),
                strsim::jaro_winkler(word, c),
                c,
            )
        })
        .filter(|(edits, jw, _)| *edits <= max_edits || *jw >= 0.85)
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
        .map(|(_, _, c)| c)
}

/// A short description of a value for "found ..." in messages.
pub(crate) struct Found<'a>(pub &'a hcl_edit::expr::Expression);

impl fmt::Display for Found<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use hcl_edit::expr::Expression as E;
        match self.0 {
            E::Null(_) => f.write_str("null"),
            E::Bool(b) => write!(f, "bool {}", b.value()),
            E::Number(n) => write!(f, "number {}", n.value()),
            E::String(s) => write!(f, "string {:?}", s.value()),
            E::Array(_) => f.write_str("a list"),
            E::Object(_) => f.write_str("an object"),
            E::StringTemplate(_) | E::HeredocTemplate(_) => {
                f.write_str("a string template, but interpolation and heredocs are not supported")
            }
            E::Variable(v) => write!(f, "unquoted {}", v.as_str()),
            _ => f.write_str("an expression, but only literal values are supported"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_map_positions() {
        let m = LineMap::new("ab\ncdé\nx");
        assert_eq!(m.position(0), (1, 1));
        assert_eq!(m.position(1), (1, 2));
        assert_eq!(m.position(3), (2, 1));
        assert_eq!(m.position(7), (2, 4)); // after the two-byte 'é'
        assert_eq!(m.position(8), (3, 1));
        assert_eq!(m.position(100), (3, 2));
    }

    #[test]
    fn display() {
        let e = ConfigError {
            file: "a.hcl".into(),
            line: 7,
            column: 5,
            message: "unknown attribute `x`".into(),
            hint: Some("did you mean `y`?".into()),
        };
        assert_eq!(
            e.to_string(),
            "a.hcl:7:5: error: unknown attribute `x` (did you mean `y`?)"
        );
        let f = ConfigError::file_level("b.hcl", "cannot read");
        assert_eq!(
            ConfigErrors(vec![e, f]).to_string(),
            "a.hcl:7:5: error: unknown attribute `x` (did you mean `y`?)\nb.hcl: error: cannot read"
        );
    }
}
