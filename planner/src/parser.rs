//! Sluice's SQL front end.
//!
//! DataFusion's `DFParser` parses most statements. Sluice parses these itself,
//! on sqlparser's tokens, because their options may hold `secret('NAME')` or
//! Flink's syntax:
//! - `CREATE [OR REPLACE] [UNBOUNDED] EXTERNAL TABLE ... STORED AS ... LOCATION ... [OPTIONS (...)]`
//! - `CREATE [TEMPORARY] TABLE t (cols [, PRIMARY KEY (...) NOT ENFORCED]) [PARTITIONED BY (...)] WITH ('k' = 'v', ...)`
//! - `COPY (query) | table TO 'url' [STORED AS ...] [PARTITIONED BY (...)] [OPTIONS (...)]`
//! - `SET 'key' = 'value'` (Flink) and `SET key = value` (DataFusion)

use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{
    ColumnDef, Expr, Insert, ObjectName, ObjectType, Query, ShowCreateObject, Statement,
    TableConstraint,
};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};
use sluice_connectors::{OptionValue, TableOptions};

use crate::error::{PlannerError, Result, position_in_message};

mod statement_set;

pub use statement_set::SetInsert;

/// How a table was declared, to print it back the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DdlStyle {
    /// DataFusion's `CREATE EXTERNAL TABLE`.
    External,
    /// Flink's `CREATE TABLE ... WITH (...)`.
    With,
}

/// A table declaration with a connector.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateTable {
    /// Table name.
    pub name: ObjectName,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
    /// `OR REPLACE`.
    pub or_replace: bool,
    /// `TEMPORARY`.
    pub temporary: bool,
    /// `UNBOUNDED` (a streaming source).
    pub unbounded: bool,
    /// Declared columns (may be empty: infer).
    pub columns: Vec<ColumnDef>,
    /// Declared primary key columns (not enforced).
    pub primary_key: Vec<String>,
    /// Declared `UNIQUE (...)` column sets (not enforced).
    pub unique: Vec<Vec<String>>,
    /// Hive partition columns.
    pub partition_cols: Vec<String>,
    /// Connector and its options (`path`, `format`, ...).
    pub options: TableOptions,
    /// How it was written.
    pub style: DdlStyle,
}

/// Where `COPY` reads from.
#[derive(Debug, Clone, PartialEq)]
pub enum CopySource {
    /// `COPY table TO ...`.
    Table(ObjectName),
    /// `COPY (query) TO ...`.
    Query(Box<Query>),
}

/// `COPY ... TO 'url'`.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyTo {
    /// What to copy.
    pub source: CopySource,
    /// Target location.
    pub target: String,
    /// `STORED AS`.
    pub stored_as: Option<String>,
    /// `PARTITIONED BY`.
    pub partitioned_by: Vec<String>,
    /// `OPTIONS`.
    pub options: TableOptions,
}

/// A parsed statement.
#[derive(Debug, Clone)]
pub enum SluiceStatement {
    /// A table with a connector.
    CreateTable(Box<CreateTable>),
    /// `COPY ... TO`.
    Copy(Box<CopyTo>),
    /// `SET key = value`.
    Set {
        /// Key as written (aliases resolved later).
        key: String,
        /// Value as written.
        value: String,
    },
    /// `SHOW CREATE TABLE t`.
    ShowCreateTable(ObjectName),
    /// `DROP TABLE [IF EXISTS] t, ...`.
    DropTable {
        /// Tables to drop.
        names: Vec<ObjectName>,
        /// `IF EXISTS`.
        if_exists: bool,
    },
    /// `INSERT INTO | OVERWRITE ...`.
    Insert(Box<Insert>),
    /// `CREATE [OR REPLACE] CONNECTION [IF NOT EXISTS] name WITH (...)`.
    CreateConnection(Box<CreateConnection>),
    /// `DROP CONNECTION [IF EXISTS] name`.
    DropConnection {
        /// Connection name.
        name: String,
        /// `IF EXISTS`.
        if_exists: bool,
    },
    /// `EXECUTE STATEMENT SET BEGIN INSERT ...; INSERT ...; END`: several
    /// writes run as one job.
    StatementSet(Vec<SetInsert>),
    /// Anything DataFusion plans by itself (queries, views, SHOW, DESCRIBE, EXPLAIN...).
    DataFusion(Box<DfStatement>),
}

/// A named connection that tables reference with `'connection' = 'name'`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateConnection {
    /// Connection name.
    pub name: String,
    /// `OR REPLACE`.
    pub or_replace: bool,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
    /// Options, including `type` (the connector).
    pub options: TableOptions,
}

impl SluiceStatement {
    /// Whether the statement writes data.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Self::Insert(_) | Self::Copy(_) | Self::StatementSet(_)
        )
    }
}

fn syntax(e: ParserError) -> PlannerError {
    let message = match &e {
        ParserError::ParserError(m) | ParserError::TokenizerError(m) => m.clone(),
        ParserError::RecursionLimitExceeded => "statement nested too deeply".to_string(),
    };
    let pos = position_in_message(&message);
    PlannerError::Syntax {
        message,
        line: pos.map(|p| p.0),
        column: pos.map(|p| p.1),
    }
}

fn syntax_at(message: impl Into<String>, tok: &TokenWithSpan) -> PlannerError {
    PlannerError::Syntax {
        message: message.into(),
        line: Some(tok.span.start.line),
        column: Some(tok.span.start.column),
    }
}

/// Parses one statement (no trailing `;` needed).
pub fn parse_statement(sql: &str) -> Result<SluiceStatement> {
    let dialect = crate::dialect::SluiceDialect;
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| PlannerError::Syntax {
            message: e.message.clone(),
            line: Some(e.location.line),
            column: Some(e.location.column),
        })?;
    let words: Vec<(Keyword, String)> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .take(8)
        .map(|t| match &t.token {
            Token::Word(w) => (w.keyword, w.value.to_uppercase()),
            other => (Keyword::NoKeyword, other.to_string()),
        })
        .collect();
    let first = words.first().map(|w| w.0).unwrap_or(Keyword::NoKeyword);
    let second = words.get(1).map(|w| w.0).unwrap_or(Keyword::NoKeyword);

    match first {
        Keyword::CREATE if is_external(&words) => {
            let mut p = Parser::new(&dialect).with_tokens_with_locations(tokens);
            parse_create_external(&mut p).map(|c| SluiceStatement::CreateTable(Box::new(c)))
        }
        Keyword::CREATE if is_connection(&words) => {
            let mut p = Parser::new(&dialect).with_tokens_with_locations(tokens);
            parse_create_connection(&mut p).map(|c| SluiceStatement::CreateConnection(Box::new(c)))
        }
        Keyword::DROP if second == Keyword::CONNECTION => {
            let mut p = Parser::new(&dialect).with_tokens_with_locations(tokens);
            parse_drop_connection(&mut p)
        }
        Keyword::CREATE if is_create_table_with(&tokens) => {
            let mut p = Parser::new(&dialect).with_tokens_with_locations(tokens);
            parse_create_with(&mut p).map(|c| SluiceStatement::CreateTable(Box::new(c)))
        }
        Keyword::COPY if second != Keyword::INTO => {
            let mut p = Parser::new(&dialect).with_tokens_with_locations(tokens);
            parse_copy(&mut p).map(|c| SluiceStatement::Copy(Box::new(c)))
        }
        Keyword::EXECUTE if second == Keyword::STATEMENT => {
            statement_set::parse(sql, &tokens).map(SluiceStatement::StatementSet)
        }
        Keyword::SET if !matches!(second, Keyword::TIME | Keyword::ROLE | Keyword::TRANSACTION) => {
            let mut p = Parser::new(&dialect).with_tokens_with_locations(tokens);
            parse_set(&mut p)
        }
        _ => parse_with_datafusion(sql),
    }
}

fn parse_with_datafusion(sql: &str) -> Result<SluiceStatement> {
    let dialect = crate::dialect::SluiceDialect;
    let mut parser = DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .build()
        .map_err(PlannerError::from)?;
    let mut statements = parser.parse_statements().map_err(|e| match e {
        datafusion::error::DataFusionError::SQL(pe, _) => syntax(*pe),
        other => PlannerError::from(other),
    })?;
    if statements.len() != 1 {
        return Err(PlannerError::Syntax {
            message: format!("expected one statement, found {}", statements.len()),
            line: None,
            column: None,
        });
    }
    let mut stmt = statements.pop_front().expect("one statement");
    rewrite_statement_lookups(&mut stmt)?;
    Ok(match stmt {
        DfStatement::Statement(s) => match *s {
            Statement::Insert(insert) => SluiceStatement::Insert(Box::new(insert)),
            Statement::ShowCreate {
                obj_type: ShowCreateObject::Table,
                obj_name,
            } => SluiceStatement::ShowCreateTable(obj_name),
            Statement::Drop {
                object_type: ObjectType::Table,
                if_exists,
                names,
                ..
            } => SluiceStatement::DropTable { names, if_exists },
            other => SluiceStatement::DataFusion(Box::new(DfStatement::Statement(Box::new(other)))),
        },
        other => SluiceStatement::DataFusion(Box::new(other)),
    })
}

/// Turns the lookup tables (`FOR SYSTEM_TIME AS OF`) of a statement, and of
/// the statement an EXPLAIN explains, into lookup table functions.
fn rewrite_statement_lookups(stmt: &mut DfStatement) -> Result<()> {
    match stmt {
        DfStatement::Statement(s) => crate::lookup::rewrite_lookups(s),
        DfStatement::Explain(e) => rewrite_statement_lookups(&mut e.statement),
        _ => Ok(()),
    }
}

/// `CREATE [OR REPLACE] CONNECTION`.
fn is_connection(words: &[(Keyword, String)]) -> bool {
    words
        .iter()
        .skip(1)
        .find(|(k, _)| !matches!(k, Keyword::OR | Keyword::REPLACE))
        .is_some_and(|(k, _)| *k == Keyword::CONNECTION)
}

fn parse_create_connection(p: &mut Parser<'_>) -> Result<CreateConnection> {
    p.expect_keyword(Keyword::CREATE).map_err(syntax)?;
    let or_replace = p.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
    p.expect_keyword(Keyword::CONNECTION).map_err(syntax)?;
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = p.parse_identifier().map_err(syntax)?.value;
    let with = p.peek_token();
    if !p.parse_keyword(Keyword::WITH) {
        return Err(syntax_at(
            format!(
                "expected WITH ('type' = 'postgres', 'url' = '...') after CREATE CONNECTION {name}, \
                 found {with}"
            ),
            &with,
        ));
    }
    let options = parse_options(p)?;
    expect_end(p)?;
    Ok(CreateConnection {
        name,
        or_replace,
        if_not_exists,
        options,
    })
}

fn parse_drop_connection(p: &mut Parser<'_>) -> Result<SluiceStatement> {
    p.expect_keyword(Keyword::DROP).map_err(syntax)?;
    p.expect_keyword(Keyword::CONNECTION).map_err(syntax)?;
    let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
    let name = p.parse_identifier().map_err(syntax)?.value;
    expect_end(p)?;
    Ok(SluiceStatement::DropConnection { name, if_exists })
}

/// `CREATE [OR REPLACE] [UNBOUNDED] EXTERNAL TABLE`.
fn is_external(words: &[(Keyword, String)]) -> bool {
    words
        .iter()
        .skip(1)
        .take_while(|(k, _)| *k != Keyword::TABLE)
        .any(|(k, _)| *k == Keyword::EXTERNAL)
}

/// `CREATE [OR REPLACE] [TEMPORARY] TABLE name [(...)] [PARTITIONED BY (...)] WITH (`.
fn is_create_table_with(tokens: &[TokenWithSpan]) -> bool {
    let toks: Vec<&Token> = tokens
        .iter()
        .map(|t| &t.token)
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let mut i = 1;
    let kw = |t: &Token, k: Keyword| matches!(t, Token::Word(w) if w.keyword == k);
    while i < toks.len() && !kw(toks[i], Keyword::TABLE) {
        if !(kw(toks[i], Keyword::OR)
            || kw(toks[i], Keyword::REPLACE)
            || kw(toks[i], Keyword::TEMPORARY)
            || kw(toks[i], Keyword::TEMP))
        {
            return false;
        }
        i += 1;
    }
    i += 1;
    // IF NOT EXISTS, then the (possibly dotted) name; a column list may be
    // left out, so WITH can follow the name directly.
    while i < toks.len()
        && matches!(toks[i], Token::Word(_) | Token::Period)
        && !matches!(toks[i], Token::Word(w) if w.keyword == Keyword::WITH && w.quote_style.is_none())
    {
        i += 1;
    }
    let skip_parens = |mut i: usize| -> usize {
        if i < toks.len() && *toks[i] == Token::LParen {
            let mut depth = 0;
            while i < toks.len() {
                match toks[i] {
                    Token::LParen => depth += 1,
                    Token::RParen => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        i
    };
    i = skip_parens(i);
    if i + 1 < toks.len() && kw(toks[i], Keyword::PARTITIONED) && kw(toks[i + 1], Keyword::BY) {
        i = skip_parens(i + 2);
    }
    i + 1 < toks.len() && kw(toks[i], Keyword::WITH) && *toks[i + 1] == Token::LParen
}

fn parse_table_head(p: &mut Parser<'_>) -> Result<(bool, bool, bool, ObjectName)> {
    p.expect_keyword(Keyword::CREATE).map_err(syntax)?;
    let or_replace = p.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
    let temporary = p
        .parse_one_of_keywords(&[Keyword::TEMPORARY, Keyword::TEMP])
        .is_some();
    p.expect_keyword(Keyword::TABLE).map_err(syntax)?;
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = p.parse_object_name(false).map_err(syntax)?;
    Ok((or_replace, temporary, if_not_exists, name))
}

/// The primary key and the unique column sets among `constraints`.
fn keys(
    constraints: &[TableConstraint],
    at: &TokenWithSpan,
) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    let mut pk = vec![];
    let mut unique = vec![];
    for c in constraints {
        match c {
            TableConstraint::PrimaryKey(c) => {
                for col in &c.columns {
                    pk.push(col.column.expr.to_string());
                }
            }
            TableConstraint::Unique(c) => {
                unique.push(
                    c.columns
                        .iter()
                        .map(|col| col.column.expr.to_string())
                        .collect(),
                );
            }
            other => {
                return Err(syntax_at(
                    format!(
                        "constraint '{other}' is not supported; only PRIMARY KEY (...) NOT ENFORCED \
                         and UNIQUE (...)"
                    ),
                    at,
                ));
            }
        }
    }
    Ok((pk, unique))
}

fn parse_create_with(p: &mut Parser<'_>) -> Result<CreateTable> {
    let at = p.peek_token();
    let (or_replace, temporary, if_not_exists, name) = parse_table_head(p)?;
    let (columns, constraints) = p.parse_columns().map_err(syntax)?;
    let (primary_key, unique) = keys(&constraints, &at)?;
    let mut partition_cols = vec![];
    if p.parse_keywords(&[Keyword::PARTITIONED, Keyword::BY]) {
        partition_cols = parse_name_list(p)?;
    }
    p.expect_keyword(Keyword::WITH).map_err(syntax)?;
    let options = parse_options(p)?;
    expect_end(p)?;
    Ok(CreateTable {
        name,
        if_not_exists,
        or_replace,
        temporary,
        unbounded: false,
        columns,
        primary_key,
        unique,
        partition_cols,
        options,
        style: DdlStyle::With,
    })
}

fn parse_create_external(p: &mut Parser<'_>) -> Result<CreateTable> {
    let at = p.peek_token();
    p.expect_keyword(Keyword::CREATE).map_err(syntax)?;
    let or_replace = p.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
    let unbounded = p.parse_keyword(Keyword::UNBOUNDED);
    p.expect_keyword(Keyword::EXTERNAL).map_err(syntax)?;
    let temporary = p
        .parse_one_of_keywords(&[Keyword::TEMPORARY, Keyword::TEMP])
        .is_some();
    p.expect_keyword(Keyword::TABLE).map_err(syntax)?;
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = p.parse_object_name(false).map_err(syntax)?;
    let (mut columns, constraints) = p.parse_columns().map_err(syntax)?;
    let (primary_key, unique) = keys(&constraints, &at)?;

    let mut options = TableOptions::new();
    let mut stored_as = None;
    let mut location = None;
    let mut partition_cols = vec![];
    loop {
        let tok = p.peek_token();
        match p.parse_one_of_keywords(&[
            Keyword::STORED,
            Keyword::LOCATION,
            Keyword::PARTITIONED,
            Keyword::OPTIONS,
            Keyword::WITH,
        ]) {
            Some(Keyword::STORED) => {
                p.expect_keyword(Keyword::AS).map_err(syntax)?;
                let t = p.next_token();
                match &t.token {
                    Token::Word(w) => stored_as = Some(w.value.to_lowercase()),
                    _ => {
                        return Err(syntax_at(
                            "expected PARQUET, CSV or JSON after STORED AS",
                            &t,
                        ));
                    }
                }
            }
            Some(Keyword::LOCATION) => location = Some(p.parse_literal_string().map_err(syntax)?),
            Some(Keyword::PARTITIONED) => {
                p.expect_keyword(Keyword::BY).map_err(syntax)?;
                // Names, or column definitions that add columns.
                let is_defs = !matches!(p.peek_nth_token(2).token, Token::Comma | Token::RParen);
                if is_defs {
                    let (cols, _) = p.parse_columns().map_err(syntax)?;
                    partition_cols = cols.iter().map(|c| c.name.value.clone()).collect();
                    columns.extend(cols);
                } else {
                    partition_cols = parse_name_list(p)?;
                }
            }
            Some(Keyword::OPTIONS) => {
                for (k, v) in parse_options(p)?.iter() {
                    options.insert(k.clone(), v.clone());
                }
            }
            // DataFusion's `WITH ORDER (a ASC, b DESC NULLS LAST)`: how every
            // file is sorted; and `WITH HEADER ROW`.
            Some(Keyword::WITH) if p.parse_keyword(Keyword::ORDER) => {
                if options.get("sort-order").is_some() {
                    return Err(syntax_at(
                        "one WITH ORDER clause per table: Sluice keeps one sort order",
                        &tok,
                    ));
                }
                p.expect_token(&Token::LParen).map_err(syntax)?;
                let exprs = p
                    .parse_comma_separated(Parser::parse_order_by_expr)
                    .map_err(syntax)?;
                p.expect_token(&Token::RParen).map_err(syntax)?;
                let mut items = vec![];
                for e in exprs {
                    let Expr::Identifier(id) = &e.expr else {
                        return Err(syntax_at(
                            format!("WITH ORDER takes column names, not '{}'", e.expr),
                            &tok,
                        ));
                    };
                    let mut item = if id.quote_style.is_some() {
                        id.value.clone()
                    } else {
                        id.value.to_lowercase()
                    };
                    if item.contains([',', ' ', '"']) {
                        return Err(syntax_at(
                            format!(
                                "WITH ORDER cannot name column '{item}' (a comma, blank or quote in its name)"
                            ),
                            &tok,
                        ));
                    }
                    if e.options.asc == Some(false) {
                        item.push_str(" DESC");
                    }
                    match e.options.nulls_first {
                        Some(true) => item.push_str(" NULLS FIRST"),
                        Some(false) => item.push_str(" NULLS LAST"),
                        None => {}
                    }
                    items.push(item);
                }
                options.insert_literal("sort-order", items.join(", "));
            }
            Some(Keyword::WITH) if p.parse_keywords(&[Keyword::HEADER, Keyword::ROW]) => {
                options.insert_literal("format.has_header", "true");
            }
            Some(Keyword::WITH) => {
                return Err(syntax_at(
                    "expected ORDER (...) or HEADER ROW after WITH",
                    &tok,
                ));
            }
            _ => break,
        }
    }
    expect_end(p)?;
    let stored_as = stored_as.ok_or_else(|| syntax_at("missing STORED AS clause", &at))?;
    let location = location.ok_or_else(|| syntax_at("missing LOCATION clause", &at))?;
    options.insert_literal("connector", "filesystem");
    options.insert_literal("format", stored_as);
    options.insert_literal("path", location);
    Ok(CreateTable {
        name,
        if_not_exists,
        or_replace,
        temporary,
        unbounded,
        columns,
        primary_key,
        unique,
        partition_cols,
        options,
        style: DdlStyle::External,
    })
}

fn parse_copy(p: &mut Parser<'_>) -> Result<CopyTo> {
    let at = p.peek_token();
    p.expect_keyword(Keyword::COPY).map_err(syntax)?;
    let source = if p.consume_token(&Token::LParen) {
        let q = p.parse_query().map_err(syntax)?;
        p.expect_token(&Token::RParen).map_err(syntax)?;
        CopySource::Query(q)
    } else {
        CopySource::Table(p.parse_object_name(true).map_err(syntax)?)
    };
    let mut target = None;
    let mut stored_as = None;
    let mut partitioned_by = vec![];
    let mut options = TableOptions::new();
    loop {
        match p.parse_one_of_keywords(&[
            Keyword::TO,
            Keyword::STORED,
            Keyword::PARTITIONED,
            Keyword::OPTIONS,
        ]) {
            Some(Keyword::TO) => target = Some(p.parse_literal_string().map_err(syntax)?),
            Some(Keyword::STORED) => {
                p.expect_keyword(Keyword::AS).map_err(syntax)?;
                let t = p.next_token();
                match &t.token {
                    Token::Word(w) => stored_as = Some(w.value.to_lowercase()),
                    _ => {
                        return Err(syntax_at(
                            "expected PARQUET, CSV or JSON after STORED AS",
                            &t,
                        ));
                    }
                }
            }
            Some(Keyword::PARTITIONED) => {
                p.expect_keyword(Keyword::BY).map_err(syntax)?;
                partitioned_by = parse_name_list(p)?;
            }
            Some(Keyword::OPTIONS) => options = parse_options(p)?,
            _ => break,
        }
    }
    expect_end(p)?;
    let target = target.ok_or_else(|| syntax_at("COPY needs a TO 'location' clause", &at))?;
    Ok(CopyTo {
        source,
        target,
        stored_as,
        partitioned_by,
        options,
    })
}

fn parse_set(p: &mut Parser<'_>) -> Result<SluiceStatement> {
    p.expect_keyword(Keyword::SET).map_err(syntax)?;
    let key = parse_option_key(p)?;
    let t = p.next_token();
    if !(t.token == Token::Eq || matches!(&t.token, Token::Word(w) if w.keyword == Keyword::TO)) {
        return Err(syntax_at(
            format!("expected '=' or TO after SET {key}, found {t}"),
            &t,
        ));
    }
    let t = p.next_token();
    let value = match &t.token {
        Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => s.clone(),
        Token::Number(n, _) => n.clone(),
        Token::Word(w) if w.keyword == Keyword::NULL => {
            return Err(datafusion::error::DataFusionError::Plan(format!(
                "Unsupported value Null: SET {key} needs a value; RESET {key} restores its default"
            ))
            .into());
        }
        Token::Word(w) => w.value.clone(),
        Token::Minus => match p.next_token().token {
            Token::Number(n, _) => format!("-{n}"),
            other => return Err(syntax_at(format!("expected a value, found {other}"), &t)),
        },
        _ => {
            return Err(syntax_at(
                format!("expected a value after '=', found {t}"),
                &t,
            ));
        }
    };
    expect_end(p)?;
    Ok(SluiceStatement::Set { key, value })
}

fn expect_end(p: &mut Parser<'_>) -> Result<()> {
    let t = p.peek_token();
    match t.token {
        Token::EOF | Token::SemiColon => Ok(()),
        _ => Err(syntax_at(
            format!("expected end of statement, found {t}"),
            &t,
        )),
    }
}

fn parse_name_list(p: &mut Parser<'_>) -> Result<Vec<String>> {
    p.expect_token(&Token::LParen).map_err(syntax)?;
    let names = p
        .parse_comma_separated(|p| p.parse_identifier())
        .map_err(syntax)?;
    p.expect_token(&Token::RParen).map_err(syntax)?;
    Ok(names.into_iter().map(|i| i.value).collect())
}

/// A key: `'quoted.key-name'` or `dotted.words-with-hyphens`.
fn parse_option_key(p: &mut Parser<'_>) -> Result<String> {
    let t = p.next_token();
    let mut key = match &t.token {
        Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => return Ok(s.clone()),
        Token::Word(w) => w.value.clone(),
        _ => return Err(syntax_at(format!("expected an option name, found {t}"), &t)),
    };
    loop {
        let next = p.peek_token_no_skip();
        match &next.token {
            Token::Period | Token::Minus => {
                p.next_token_no_skip();
                key.push_str(&next.token.to_string());
                match p.next_token_no_skip().map(|t| t.token.clone()) {
                    Some(Token::Word(w)) => key.push_str(&w.value),
                    Some(Token::Number(n, _)) => key.push_str(&n),
                    other => {
                        let found = other.map(|t| t.to_string()).unwrap_or_default();
                        return Err(syntax_at(
                            format!("unexpected '{found}' in option name '{key}'"),
                            &next,
                        ));
                    }
                }
            }
            _ => break,
        }
    }
    Ok(key)
}

/// `( key [=] value, ... )`; a value may be `secret('NAME')`.
fn parse_options(p: &mut Parser<'_>) -> Result<TableOptions> {
    p.expect_token(&Token::LParen).map_err(syntax)?;
    let mut options = TableOptions::new();
    if p.consume_token(&Token::RParen) {
        return Ok(options);
    }
    loop {
        let at = p.peek_token();
        let key = parse_option_key(p)?;
        let _ = p.consume_token(&Token::Eq);
        let value = parse_option_value(p)?;
        if options.insert(key.clone(), value).is_some() {
            return Err(syntax_at(format!("option '{key}' is given twice"), &at));
        }
        if p.consume_token(&Token::Comma) {
            if p.consume_token(&Token::RParen) {
                break;
            }
            continue;
        }
        p.expect_token(&Token::RParen).map_err(syntax)?;
        break;
    }
    Ok(options)
}

fn parse_option_value(p: &mut Parser<'_>) -> Result<OptionValue> {
    let t = p.next_token();
    Ok(match &t.token {
        Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => {
            OptionValue::Literal(s.clone())
        }
        Token::Number(n, _) => OptionValue::Literal(n.clone()),
        Token::Minus => match p.next_token().token {
            Token::Number(n, _) => OptionValue::Literal(format!("-{n}")),
            other => {
                return Err(syntax_at(
                    format!("expected a number after '-', found {other}"),
                    &t,
                ));
            }
        },
        Token::Word(w) if w.value.eq_ignore_ascii_case("secret") => {
            p.expect_token(&Token::LParen).map_err(syntax)?;
            let name = p.parse_literal_string().map_err(syntax)?;
            p.expect_token(&Token::RParen).map_err(syntax)?;
            OptionValue::Secret(name)
        }
        Token::Word(w) => OptionValue::Literal(w.value.clone()),
        _ => {
            return Err(syntax_at(
                format!("expected an option value, found {t}"),
                &t,
            ));
        }
    })
}

/// Parses a `PARTITION (...)` element: `col = 'value'` (static) or `col` (dynamic).
pub fn partition_spec_item(e: &Expr) -> Option<(String, Option<String>)> {
    use datafusion::sql::sqlparser::ast::{BinaryOperator, Value};
    match e {
        Expr::Identifier(id) => Some((id.value.clone(), None)),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            let Expr::Identifier(id) = left.as_ref() else {
                return None;
            };
            let value = match right.as_ref() {
                Expr::Value(v) => match &v.value {
                    Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                    Value::Number(n, _) => n.clone(),
                    Value::Boolean(b) => b.to_string(),
                    _ => return None,
                },
                _ => return None,
            };
            Some((id.value.clone(), Some(value)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(sql: &str) -> CreateTable {
        match parse_statement(sql).unwrap() {
            SluiceStatement::CreateTable(c) => *c,
            other => panic!("not a create table: {other:?}"),
        }
    }

    #[test]
    fn parses_flink_create_table() {
        let c = create(
            "CREATE TEMPORARY TABLE orders (id BIGINT, dt STRING, PRIMARY KEY (id) NOT ENFORCED) \
             PARTITIONED BY (dt) WITH ('connector' = 'filesystem', 'path' = 's3://b/o/', \
             'format' = 'csv', 'aws.secret_access_key' = secret('S3_KEY'), 'csv.field-delimiter' = ';')",
        );
        assert_eq!(c.name.to_string(), "orders");
        assert!(c.temporary);
        assert_eq!(c.primary_key, vec!["id"]);
        assert_eq!(c.partition_cols, vec!["dt"]);
        assert_eq!(c.columns.len(), 2);
        assert_eq!(
            c.options.get("aws.secret_access_key"),
            Some(&OptionValue::Secret("S3_KEY".into()))
        );
        assert_eq!(c.style, DdlStyle::With);
    }

    #[test]
    fn parses_connections() {
        match parse_statement(
            "CREATE OR REPLACE CONNECTION pg WITH ('type' = 'postgres', 'password' = secret('PG_PW'))",
        )
        .unwrap()
        {
            SluiceStatement::CreateConnection(c) => {
                assert_eq!(c.name, "pg");
                assert!(c.or_replace);
                assert_eq!(
                    c.options.get("password"),
                    Some(&OptionValue::Secret("PG_PW".into()))
                );
            }
            other => panic!("not a connection: {other:?}"),
        }
        assert!(matches!(
            parse_statement("DROP CONNECTION IF EXISTS pg").unwrap(),
            SluiceStatement::DropConnection {
                if_exists: true,
                ..
            }
        ));
        let e = parse_statement("CREATE CONNECTION pg ('type' = 'postgres')").unwrap_err();
        assert!(e.to_string().contains("expected WITH"), "{e}");
    }

    #[test]
    fn create_table_with_may_leave_out_the_columns() {
        let c = create(
            "CREATE TABLE IF NOT EXISTS dim.customers WITH ('connector' = 'postgres', 'table' = 'public.c')",
        );
        assert_eq!(c.name.to_string(), "dim.customers");
        assert!(c.columns.is_empty());
        assert_eq!(c.options.literal("connector").unwrap(), Some("postgres"));
    }

    #[test]
    fn parses_external_table_like_datafusion() {
        let c = create(
            "CREATE EXTERNAL TABLE IF NOT EXISTS t (a INT) STORED AS CSV \
             PARTITIONED BY (dt DATE) LOCATION 'data/t/' OPTIONS ('format.has_header' 'true', format.delimiter '|')",
        );
        assert!(c.if_not_exists);
        assert_eq!(c.partition_cols, vec!["dt"]);
        assert_eq!(c.columns.len(), 2);
        assert_eq!(c.options.literal("format").unwrap(), Some("csv"));
        assert_eq!(c.options.literal("path").unwrap(), Some("data/t/"));
        assert_eq!(c.options.literal("format.delimiter").unwrap(), Some("|"));
    }

    #[test]
    fn plain_create_table_goes_to_datafusion() {
        assert!(matches!(
            parse_statement("CREATE TABLE t AS SELECT 1").unwrap(),
            SluiceStatement::DataFusion(_)
        ));
    }

    #[test]
    fn parses_set_in_both_quotings() {
        for sql in [
            "SET 'execution.runtime-mode' = 'batch'",
            "SET execution.runtime-mode = batch",
        ] {
            match parse_statement(sql).unwrap() {
                SluiceStatement::Set { key, value } => {
                    assert_eq!(key, "execution.runtime-mode");
                    assert_eq!(value, "batch");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn parses_insert_overwrite_partition() {
        match parse_statement("INSERT OVERWRITE t PARTITION (dt = '2024-01-01', hr) SELECT 1")
            .unwrap()
        {
            SluiceStatement::Insert(i) => {
                assert!(i.overwrite);
                let spec: Vec<_> = i
                    .partitioned
                    .unwrap()
                    .iter()
                    .map(|e| partition_spec_item(e).unwrap())
                    .collect();
                assert_eq!(
                    spec,
                    vec![
                        ("dt".into(), Some("2024-01-01".into())),
                        ("hr".into(), None)
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn syntax_errors_carry_positions() {
        let err = parse_statement("SELECT a\nFROM t WHERE )").unwrap_err();
        assert_eq!(err.position(), Some((2, 14)), "{err:?}");
        assert!(err.position().is_some(), "{err:?}");
        let err = parse_statement("CREATE TABLE t (a INT) WITH ('path' 'x' 'y')").unwrap_err();
        assert!(err.position().is_some(), "{err:?}");
    }
}
