//! Script text: `${var}` substitution and splitting into statements.
//!
//! Substitution runs first, on the whole text, skipping comments; it keeps
//! line numbers unless a value holds a newline. Splitting uses sqlparser's
//! tokenizer, so `;` inside strings, quoted identifiers and comments does not
//! split, and `BEGIN ... END` blocks (statement sets) stay one statement.

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Whitespace};

use crate::error::{PlannerError, Result};

/// One statement of a script, with where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptStatement {
    /// 1-based position in the script.
    pub index: usize,
    /// The statement's text, without the trailing `;`.
    pub text: String,
    /// 1-based line where the statement starts.
    pub line: u64,
    /// 1-based column where the statement starts.
    pub column: u64,
}

impl ScriptStatement {
    /// A statement that is a whole script by itself.
    pub fn standalone(text: impl Into<String>) -> Self {
        Self {
            index: 1,
            text: text.into(),
            line: 1,
            column: 1,
        }
    }

    /// Converts a position inside the statement to a position in the script.
    pub fn script_position(&self, line: u64, column: u64) -> (u64, u64) {
        if line <= 1 {
            (self.line, self.column + column.saturating_sub(1))
        } else {
            (self.line + line - 1, column)
        }
    }

    /// The statement's first line, shortened, for summaries and logs.
    pub fn headline(&self) -> String {
        let one_line: String = self.text.split_whitespace().collect::<Vec<_>>().join(" ");
        if one_line.chars().count() > 72 {
            format!("{}...", one_line.chars().take(69).collect::<String>())
        } else {
            one_line
        }
    }
}

/// Variables used by a substitution, with their values.
pub type UsedVariables = BTreeMap<String, String>;

/// Replaces every `${NAME}` outside comments with `lookup(NAME)`.
///
/// An undefined variable is an error naming it and its line. `$${` escapes
/// a literal `${`.
pub fn substitute(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, UsedVariables)> {
    let mut out = String::with_capacity(text.len());
    let mut used = UsedVariables::new();
    let chars: Vec<char> = text.chars().collect();
    let (mut i, mut line, mut column) = (0usize, 1u64, 1u64);
    #[derive(PartialEq)]
    enum State {
        Code,
        LineComment,
        BlockComment,
    }
    let mut state = State::Code;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match state {
            State::Code if c == '-' && next == Some('-') => state = State::LineComment,
            State::Code if c == '/' && next == Some('*') => state = State::BlockComment,
            State::LineComment if c == '\n' => state = State::Code,
            State::BlockComment if c == '*' && next == Some('/') => {
                out.push_str("*/");
                i += 2;
                column += 2;
                state = State::Code;
                continue;
            }
            State::Code if c == '$' && next == Some('$') && chars.get(i + 2) == Some(&'{') => {
                out.push_str("${");
                i += 3;
                column += 3;
                continue;
            }
            State::Code if c == '$' && next == Some('{') => {
                let start = i + 2;
                let end = chars[start..]
                    .iter()
                    .position(|c| *c == '}')
                    .map(|p| start + p);
                let Some(end) = end else {
                    return Err(PlannerError::Syntax {
                        message: "unterminated ${...} variable reference".to_string(),
                        line: Some(line),
                        column: Some(column),
                    });
                };
                let name: String = chars[start..end].iter().collect();
                let name = name.trim().to_string();
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(PlannerError::Syntax {
                        message: format!(
                            "invalid variable name '${{{name}}}': use letters, digits and '_'"
                        ),
                        line: Some(line),
                        column: Some(column),
                    });
                }
                let value = lookup(&name).ok_or_else(|| PlannerError::UndefinedVariable {
                    name: name.clone(),
                    line,
                    column,
                })?;
                out.push_str(&value);
                used.insert(name, value);
                column += (end + 1 - i) as u64;
                i = end + 1;
                continue;
            }
            _ => {}
        }
        out.push(c);
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
        i += 1;
    }
    Ok((out, used))
}

/// Splits a script into statements at top-level `;`.
pub fn split(text: &str) -> Result<Vec<ScriptStatement>> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|e| PlannerError::Syntax {
            message: e.message.clone(),
            line: Some(e.location.line),
            column: Some(e.location.column),
        })?;
    let offsets = LineOffsets::new(text);

    let mut statements = vec![];
    let mut start: Option<&TokenWithSpan> = None;
    let mut block_depth = 0usize;
    let mut case_depth = 0usize;
    let significant = |t: &TokenWithSpan| !matches!(t.token, Token::Whitespace(_) | Token::EOF);

    for (i, tok) in tokens.iter().enumerate() {
        if !significant(tok) {
            continue;
        }
        if let Token::Word(w) = &tok.token {
            match w.keyword {
                Keyword::CASE => case_depth += 1,
                Keyword::BEGIN => {
                    let next = tokens[i + 1..].iter().find(|t| significant(t));
                    let opens_block = match next.map(|t| &t.token) {
                        None | Some(Token::SemiColon) => false,
                        Some(Token::Word(n)) => !matches!(
                            n.keyword,
                            Keyword::TRANSACTION | Keyword::WORK | Keyword::ISOLATION
                        ),
                        Some(_) => true,
                    };
                    if opens_block {
                        block_depth += 1;
                    }
                }
                Keyword::END => {
                    if case_depth > 0 {
                        case_depth -= 1;
                    } else {
                        block_depth = block_depth.saturating_sub(1);
                    }
                }
                _ => {}
            }
        }
        if tok.token == Token::SemiColon && block_depth == 0 {
            if let Some(s) = start.take() {
                push_statement(&mut statements, text, &offsets, s, tok);
            }
            case_depth = 0;
            continue;
        }
        if start.is_none() {
            start = Some(tok);
        }
    }
    if let Some(s) = start {
        let last = tokens.iter().rev().find(|t| significant(t)).unwrap_or(s);
        let end = offsets.offset(last.span.end.line, last.span.end.column);
        let from = offsets.offset(s.span.start.line, s.span.start.column);
        statements.push(ScriptStatement {
            index: statements.len() + 1,
            text: text[from..end].to_string(),
            line: s.span.start.line,
            column: s.span.start.column,
        });
    }
    if block_depth > 0 {
        return Err(PlannerError::Syntax {
            message: "BEGIN block is not closed by END".to_string(),
            line: statements.last().map(|s| s.line),
            column: statements.last().map(|s| s.column),
        });
    }
    Ok(statements)
}

fn push_statement(
    out: &mut Vec<ScriptStatement>,
    text: &str,
    offsets: &LineOffsets,
    start: &TokenWithSpan,
    semicolon: &TokenWithSpan,
) {
    let from = offsets.offset(start.span.start.line, start.span.start.column);
    let to = offsets.offset(semicolon.span.start.line, semicolon.span.start.column);
    let body = text[from..to].trim_end();
    // A statement made only of comments is dropped.
    if is_only_comments(body) {
        return;
    }
    out.push(ScriptStatement {
        index: out.len() + 1,
        text: body.to_string(),
        line: start.span.start.line,
        column: start.span.start.column,
    });
}

fn is_only_comments(text: &str) -> bool {
    let dialect = GenericDialect {};
    Tokenizer::new(&dialect, text)
        .tokenize()
        .map(|t| {
            t.iter().all(|t| {
                matches!(
                    t,
                    Token::Whitespace(
                        Whitespace::SingleLineComment { .. }
                            | Whitespace::MultiLineComment(_)
                            | Whitespace::Space
                            | Whitespace::Newline
                            | Whitespace::Tab
                    ) | Token::EOF
                )
            })
        })
        .unwrap_or(false)
}

/// Maps sqlparser's 1-based (line, column-in-chars) to byte offsets.
pub(crate) struct LineOffsets<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineOffsets<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { text, starts }
    }

    pub(crate) fn offset(&self, line: u64, column: u64) -> usize {
        let Some(&start) = self.starts.get(line.saturating_sub(1) as usize) else {
            return self.text.len();
        };
        self.text[start..]
            .char_indices()
            .nth(column.saturating_sub(1) as usize)
            .map(|(i, _)| start + i)
            .unwrap_or(self.text.len())
    }
}

/// Renders `line:column` of `script` with a caret under the column.
pub fn caret_snippet(script: &str, line: u64, column: u64) -> String {
    let Some(text) = script.lines().nth(line.saturating_sub(1) as usize) else {
        return String::new();
    };
    let gutter = format!("{line} | ");
    let pad: String = text
        .chars()
        .take(column.saturating_sub(1) as usize)
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    format!("{gutter}{text}\n{}{pad}^", " ".repeat(gutter.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_top_level_semicolons_only() {
        let script = "-- header; not a statement\nSELECT 'a;b' AS \"x;y\";\n\n  /* c; */ SELECT 2 ;\nSELECT 3";
        let s = split(script).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].text, "SELECT 'a;b' AS \"x;y\"");
        assert_eq!((s[0].line, s[0].column), (2, 1));
        assert_eq!(s[1].text, "SELECT 2");
        assert_eq!((s[1].line, s[1].column), (4, 12));
        assert_eq!(s[2].text, "SELECT 3");
        assert_eq!(s[2].index, 3);
    }

    #[test]
    fn keeps_begin_end_blocks_together() {
        let script = "EXECUTE STATEMENT SET BEGIN INSERT INTO a SELECT CASE WHEN x THEN 1 END FROM t; INSERT INTO b SELECT 1; END; SELECT 1; BEGIN; COMMIT;";
        let s = split(script).unwrap();
        let texts: Vec<&str> = s.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts.len(), 4, "{texts:?}");
        assert!(texts[0].ends_with("END"), "{texts:?}");
        assert_eq!(texts[2], "BEGIN");
    }

    #[test]
    fn trailing_comment_is_not_a_statement() {
        assert_eq!(split("SELECT 1; -- done\n").unwrap().len(), 1);
        assert!(split("  -- nothing\n").unwrap().is_empty());
    }

    #[test]
    fn substitutes_outside_comments() {
        let vars = |n: &str| (n == "run_date").then(|| "2024-01-31".to_string());
        let (text, used) = substitute(
            "SELECT '${run_date}' -- ${undefined}\n/* ${x} */ , $${literal}",
            &vars,
        )
        .unwrap();
        assert_eq!(
            text,
            "SELECT '2024-01-31' -- ${undefined}\n/* ${x} */ , ${literal}"
        );
        assert_eq!(used.get("run_date").unwrap(), "2024-01-31");
    }

    #[test]
    fn undefined_variable_names_line_and_column() {
        let err = substitute("SELECT 1;\nSELECT ${nope}", &|_| None).unwrap_err();
        match err {
            PlannerError::UndefinedVariable { name, line, column } => {
                assert_eq!((name.as_str(), line, column), ("nope", 2, 8));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn caret_points_at_column() {
        assert_eq!(
            caret_snippet("a\nSELEC x", 2, 7),
            "2 | SELEC x\n          ^"
        );
    }
}
