//! `EXECUTE STATEMENT SET BEGIN <insert>; <insert>; ... END` (Flink's syntax).
//!
//! The body is split like a script and each statement is parsed by
//! [`parse_statement`], on a copy of the text in which everything before the
//! statement is blanked (newlines kept), so positions in errors and in the
//! parsed statements are positions in the whole `EXECUTE` statement.

use datafusion::sql::sqlparser::ast::Insert;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

use super::{SluiceStatement, parse_statement, syntax_at};
use crate::error::{PlannerError, Result};
use crate::script::{LineOffsets, split};

/// What a statement set looks like, for error messages.
const SHAPE: &str = "EXECUTE STATEMENT SET BEGIN INSERT INTO ... ; INSERT INTO ... ; END";

/// One INSERT of a statement set, with where it starts.
#[derive(Debug, Clone)]
pub struct SetInsert {
    /// The `INSERT INTO` or `INSERT OVERWRITE` statement.
    pub insert: Box<Insert>,
    /// 1-based line of its first token, in the `EXECUTE` statement.
    pub line: u64,
    /// 1-based column of its first token, in the `EXECUTE` statement.
    pub column: u64,
}

fn is_keyword(t: &TokenWithSpan, k: Keyword) -> bool {
    matches!(&t.token, Token::Word(w) if w.keyword == k)
}

/// Parses a statement set; `tokens` are `sql`'s.
pub(super) fn parse(sql: &str, tokens: &[TokenWithSpan]) -> Result<Vec<SetInsert>> {
    let significant: Vec<&TokenWithSpan> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
        .collect();
    let head = [
        Keyword::EXECUTE,
        Keyword::STATEMENT,
        Keyword::SET,
        Keyword::BEGIN,
    ];
    for (i, kw) in head.into_iter().enumerate() {
        match significant.get(i) {
            Some(t) if is_keyword(t, kw) => {}
            Some(t) => {
                return Err(syntax_at(
                    format!("expected {kw:?} in {SHAPE}, found {}", t.token),
                    t,
                ));
            }
            None => {
                return Err(PlannerError::Syntax {
                    message: format!("incomplete statement set: write {SHAPE}"),
                    line: None,
                    column: None,
                });
            }
        }
    }
    let begin = significant[3];
    let mut last = significant.len() - 1;
    if last > 3 && significant[last].token == Token::SemiColon {
        last -= 1;
    }
    let end = significant[last];
    if last == 3 || !is_keyword(end, Keyword::END) {
        return Err(syntax_at(
            format!("a statement set ends with END: {SHAPE}"),
            end,
        ));
    }

    let offsets = LineOffsets::new(sql);
    let from = offsets.offset(begin.span.end.line, begin.span.end.column);
    let to = offsets.offset(end.span.start.line, end.span.start.column);
    let mut body = blank(&sql[..from]);
    body.push_str(&sql[from..to]);
    let statements = split(&body)?;
    if statements.is_empty() {
        return Err(syntax_at(
            format!("a statement set needs at least one INSERT between BEGIN and END: {SHAPE}"),
            begin,
        ));
    }
    statements
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let mut text = "\n".repeat(s.line.saturating_sub(1) as usize);
            text.push_str(&" ".repeat(s.column.saturating_sub(1) as usize));
            text.push_str(&s.text);
            match parse_statement(&text)? {
                SluiceStatement::Insert(insert) => Ok(SetInsert {
                    insert,
                    line: s.line,
                    column: s.column,
                }),
                _ => {
                    let what: Vec<&str> = s.text.split_whitespace().take(2).collect();
                    Err(PlannerError::Syntax {
                        message: format!(
                            "statement {} of the statement set is {}, not an INSERT: a statement \
                             set holds only INSERT INTO and INSERT OVERWRITE statements; run the \
                             others before or after EXECUTE STATEMENT SET",
                            k + 1,
                            what.join(" ").to_uppercase()
                        ),
                        line: Some(s.line),
                        column: Some(s.column),
                    })
                }
            }
        })
        .collect()
}

/// `text` with every character but newlines replaced by a space.
fn blank(text: &str) -> String {
    text.chars()
        .map(|c| if c == '\n' { '\n' } else { ' ' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(sql: &str) -> Vec<SetInsert> {
        match parse_statement(sql).unwrap() {
            SluiceStatement::StatementSet(s) => s,
            other => panic!("not a statement set: {other:?}"),
        }
    }

    fn error(sql: &str) -> (String, Option<(u64, u64)>) {
        let e = parse_statement(sql).unwrap_err();
        assert!(e.is_syntax(), "{e:?}");
        (e.to_string(), e.position())
    }

    #[test]
    fn parses_inserts_with_their_positions() {
        let s = set(
            "EXECUTE STATEMENT SET\nBEGIN\n  INSERT INTO a SELECT CASE WHEN x THEN 1 END FROM t;\n  INSERT OVERWRITE b SELECT * FROM t;\nEND;",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].insert.table.to_string(), "a");
        assert!(!s[0].insert.overwrite);
        assert_eq!((s[0].line, s[0].column), (3, 3));
        assert_eq!(s[1].insert.table.to_string(), "b");
        assert!(s[1].insert.overwrite);
        assert_eq!((s[1].line, s[1].column), (4, 3));
        // On one line, without a last `;`.
        let s =
            set("execute statement set begin insert into a select 1; insert into b select 2 end");
        assert_eq!(s.len(), 2);
        assert_eq!((s[1].line, s[1].column), (1, 53));
    }

    #[test]
    fn syntax_errors_point_into_the_whole_statement() {
        // An error inside the second INSERT: its position in the EXECUTE statement.
        let (msg, pos) = error(
            "EXECUTE STATEMENT SET BEGIN\nINSERT INTO a SELECT 1;\nINSERT INTO b SELEC 2;\nEND",
        );
        assert_eq!(pos, Some((3, 15)), "{msg}");

        // Not an INSERT: the offending statement, with a hint.
        let (msg, pos) = error(
            "EXECUTE STATEMENT SET BEGIN\n  INSERT INTO a SELECT 1;\n  SELECT * FROM t;\nEND",
        );
        assert_eq!(pos, Some((3, 3)), "{msg}");
        assert!(
            msg.contains("statement 2 of the statement set is SELECT *"),
            "{msg}"
        );
        assert!(msg.contains("before or after"), "{msg}");
        let (msg, pos) = error(
            "EXECUTE STATEMENT SET BEGIN CREATE TABLE x (a INT) WITH ('connector' = 'x'); END",
        );
        assert_eq!(pos, Some((1, 29)), "{msg}");

        // Empty, unterminated, misspelled.
        let (msg, pos) = error("EXECUTE STATEMENT SET BEGIN END");
        assert!(msg.contains("at least one INSERT"), "{msg}");
        assert_eq!(pos, Some((1, 23)));
        let (msg, pos) = error("EXECUTE STATEMENT SET BEGIN ; ; END;");
        assert!(msg.contains("at least one INSERT"), "{msg}");
        assert_eq!(pos, Some((1, 23)));
        let (msg, pos) = error("EXECUTE STATEMENT SET BEGIN INSERT INTO a SELECT 1;");
        assert!(msg.contains("ends with END"), "{msg}");
        assert_eq!(pos, Some((1, 50)));
        let (msg, pos) = error("EXECUTE STATEMENT SETS BEGIN INSERT INTO a SELECT 1; END");
        assert!(msg.contains("expected SET"), "{msg}");
        assert_eq!(pos, Some((1, 19)));
    }
}
