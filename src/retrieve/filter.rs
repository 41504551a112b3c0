//! Metadata filters: which documents of a collection a question looks at.
//!
//! A [`Filter`] is a tree of conditions on a document's external id and its metadata. It is
//! written by users as an expression (`tenant=acme and year>=2020`, see [`Filter::from_str`])
//! or sent as the proto `Filter` message, and is resolved once per question against the
//! collection's metadata key types ([`crate::index::MetaType`]) into the documents that pass:
//! the scope ([`super::docs::Scope`]) every method then scores.
//!
//! Grammar (keywords in any case, values bare or double-quoted with `\"` and `\\` escapes):
//! ```text
//! expr  := and ("or" and)*
//! and   := unary ("and" unary)*
//! unary := "not" unary | "(" expr ")" | cond
//! cond  := KEY ("=" | "!=" | "<" | "<=" | ">" | ">=") VALUE
//!        | KEY "in" "(" [VALUE ("," VALUE)*] ")"
//!        | "doc" ("=" | "!=") ID | "doc" "in" "(" [ID ("," ID)*] ")"
//! ```
//! `doc` (bare) names the document's external id; a metadata key called `doc` is written
//! quoted, `"doc"=x`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::str::FromStr;

use crate::index::{DocumentInfo, MetaType, MetaValue};

use super::error::{Result, RetrieveError};

/// A comparison of a range condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Ge,
    /// Less than.
    Lt,
    /// Less than or equal.
    Le,
}

impl Cmp {
    fn symbol(self) -> &'static str {
        match self {
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Lt => "<",
            Self::Le => "<=",
        }
    }

    fn holds(self, value: &MetaValue, bound: &MetaValue) -> bool {
        match self {
            Self::Gt => value > bound,
            Self::Ge => value >= bound,
            Self::Lt => value < bound,
            Self::Le => value <= bound,
        }
    }
}

/// One bound of a range condition: the value compared with `op` against `value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Bound {
    /// The comparison.
    pub op: Cmp,
    /// The bound, read as the key's type when the filter is resolved.
    pub value: String,
}

/// A condition on a document's id and metadata.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// The key has one of these values (one value: equality).
    OneOf {
        /// The metadata key.
        key: String,
        /// The values, read as the key's type.
        values: Vec<String>,
    },
    /// The key has a value within all the bounds.
    Range {
        /// The metadata key.
        key: String,
        /// The type the bounds are meant as (`None`: the key's own, number or date).
        expect: Option<MetaType>,
        /// The bounds, all of which hold.
        bounds: Vec<Bound>,
    },
    /// Every condition holds.
    All(Vec<Filter>),
    /// At least one condition holds.
    Any(Vec<Filter>),
    /// The condition does not hold.
    Not(Box<Filter>),
    /// The document's external id is one of these.
    Docs(Vec<String>),
}

/// Most conditions in one filter: a bound on the work of resolving it.
pub const MAX_FILTER_CONDITIONS: usize = 1024;

impl Filter {
    /// Returns how many conditions the filter holds (each node of the tree counts).
    pub fn conditions(&self) -> usize {
        1 + match self {
            Self::All(fs) | Self::Any(fs) => fs.iter().map(Filter::conditions).sum(),
            Self::Not(f) => f.conditions(),
            Self::OneOf { .. } | Self::Range { .. } | Self::Docs(_) => 0,
        }
    }

    /// Resolves the filter against a collection's key types and returns, for each of `docs`,
    /// whether it passes, with what the trace reports. A value that does not parse as its
    /// key's type, or a range on a string key, is refused naming the key; a key the
    /// collection has never typed passes no document and is named in the report.
    pub fn select(
        &self,
        docs: &[DocumentInfo],
        types: &BTreeMap<String, MetaType>,
    ) -> Result<(Vec<bool>, FilterReport)> {
        let n = self.conditions();
        if n > MAX_FILTER_CONDITIONS {
            return Err(RetrieveError::invalid(
                "filter",
                format!("{n} conditions, over the limit of {MAX_FILTER_CONDITIONS}"),
            ));
        }
        let mut unknown = BTreeSet::new();
        let compiled = self.compile(types, &mut unknown)?;
        let keep: Vec<bool> = docs.iter().map(|d| compiled.passes(d)).collect();
        let report = FilterReport {
            expression: self.to_string(),
            documents: keep.iter().filter(|&&k| k).count(),
            of: docs.len(),
            notes: unknown
                .into_iter()
                .map(|k| format!("key `{k}` is not a metadata key of this collection: its conditions pass no document"))
                .collect(),
        };
        Ok((keep, report))
    }

    fn compile(
        &self,
        types: &BTreeMap<String, MetaType>,
        unknown: &mut BTreeSet<String>,
    ) -> Result<Compiled> {
        let mut all = |fs: &[Filter]| {
            fs.iter()
                .map(|f| f.compile(types, unknown))
                .collect::<Result<Vec<_>>>()
        };
        Ok(match self {
            Self::All(fs) => Compiled::All(all(fs)?),
            Self::Any(fs) => Compiled::Any(all(fs)?),
            Self::Not(f) => Compiled::Not(Box::new(f.compile(types, unknown)?)),
            Self::Docs(ids) => Compiled::Docs(ids.iter().cloned().collect()),
            Self::OneOf { key, values } => {
                let Some(&t) = types.get(key) else {
                    unknown.insert(key.clone());
                    return Ok(Compiled::Never);
                };
                let values = values
                    .iter()
                    .map(|v| read_as(key, t, v))
                    .collect::<Result<Vec<_>>>()?;
                Compiled::OneOf {
                    key: key.clone(),
                    t,
                    values,
                }
            }
            Self::Range {
                key,
                expect,
                bounds,
            } => {
                let Some(&t) = types.get(key) else {
                    unknown.insert(key.clone());
                    return Ok(Compiled::Never);
                };
                if t == MetaType::String || expect.is_some_and(|e| e != t) {
                    let wanted =
                        expect.map_or("a number or date".to_string(), |e| format!("a {e}"));
                    return Err(RetrieveError::invalid(
                        "filter",
                        format!("key `{key}` holds {t} values; a range on it needs {wanted} key"),
                    ));
                }
                let bounds = bounds
                    .iter()
                    .map(|b| Ok((b.op, read_as(key, t, &b.value)?)))
                    .collect::<Result<Vec<_>>>()?;
                Compiled::Range {
                    key: key.clone(),
                    t,
                    bounds,
                }
            }
        })
    }
}

/// Reads a filter value as its key's type, refusing one that does not parse as it.
fn read_as(key: &str, t: MetaType, value: &str) -> Result<MetaValue> {
    t.read(value).ok_or_else(|| {
        RetrieveError::invalid(
            "filter",
            format!("`{value}` is not a {t}, the type of key `{key}` in this collection"),
        )
    })
}

/// A filter with its values read as their keys' types.
enum Compiled {
    OneOf {
        key: String,
        t: MetaType,
        values: Vec<MetaValue>,
    },
    Range {
        key: String,
        t: MetaType,
        bounds: Vec<(Cmp, MetaValue)>,
    },
    All(Vec<Compiled>),
    Any(Vec<Compiled>),
    Not(Box<Compiled>),
    Docs(HashSet<String>),
    /// A condition on a key the collection does not know.
    Never,
}

/// Returns a document's values of a key, read as its type (stores from before key types may
/// hold values that do not parse: those pass nothing).
fn values_of<'a>(
    d: &'a DocumentInfo,
    key: &'a str,
    t: MetaType,
) -> impl Iterator<Item = MetaValue> + 'a {
    d.meta
        .iter()
        .filter(move |(k, _)| k == key)
        .filter_map(move |(_, v)| t.read(v))
}

impl Compiled {
    fn passes(&self, d: &DocumentInfo) -> bool {
        match self {
            Self::OneOf { key, t, values } => values_of(d, key, *t).any(|v| values.contains(&v)),
            Self::Range { key, t, bounds } => {
                values_of(d, key, *t).any(|v| bounds.iter().all(|(op, b)| op.holds(&v, b)))
            }
            Self::All(cs) => cs.iter().all(|c| c.passes(d)),
            Self::Any(cs) => cs.iter().any(|c| c.passes(d)),
            Self::Not(c) => !c.passes(d),
            Self::Docs(ids) => ids.contains(&d.id),
            Self::Never => false,
        }
    }
}

/// What a filter did to a question's scope, for the trace.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FilterReport {
    /// The filter, written as an expression.
    pub expression: String,
    /// Documents that passed.
    pub documents: usize,
    /// Documents it was asked of.
    pub of: usize,
    /// Conditions that could pass nothing (keys the collection does not know).
    pub notes: Vec<String>,
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, items: &[String]| {
            let quoted: Vec<String> = items.iter().map(|v| quote(v)).collect();
            write!(f, "({})", quoted.join(", "))
        };
        let join = |f: &mut fmt::Formatter<'_>, fs: &[Filter], word: &str| {
            let parts: Vec<String> = fs.iter().map(|x| format!("({x})")).collect();
            if parts.is_empty() {
                // `all_of` of nothing passes everything, `any_of` of nothing nothing.
                f.write_str(if word == "and" {
                    "not doc in ()"
                } else {
                    "doc in ()"
                })
            } else {
                f.write_str(&parts.join(&format!(" {word} ")))
            }
        };
        match self {
            Self::OneOf { key, values } if values.len() == 1 => {
                write!(f, "{}={}", quote_key(key), quote(&values[0]))
            }
            Self::OneOf { key, values } => {
                write!(f, "{} in ", quote_key(key))?;
                list(f, values)
            }
            Self::Range { key, bounds, .. } => {
                let parts: Vec<String> = bounds
                    .iter()
                    .map(|b| format!("{}{}{}", quote_key(key), b.op.symbol(), quote(&b.value)))
                    .collect();
                f.write_str(&parts.join(" and "))
            }
            Self::All(fs) => join(f, fs, "and"),
            Self::Any(fs) => join(f, fs, "or"),
            Self::Not(x) => write!(f, "not ({x})"),
            Self::Docs(ids) => {
                f.write_str("doc in ")?;
                list(f, ids)
            }
        }
    }
}

/// Returns a value bare when it reads back as one token, else double-quoted.
fn quote(v: &str) -> String {
    let bare = !v.is_empty()
        && v.chars().all(is_bare)
        && !["and", "or", "not", "in"].contains(&v.to_ascii_lowercase().as_str());
    if bare {
        v.to_string()
    } else {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Returns a metadata key as the grammar writes it (`doc` quoted: bare, it is the id).
fn quote_key(k: &str) -> String {
    if k.eq_ignore_ascii_case("doc") {
        format!("\"{k}\"")
    } else {
        quote(k)
    }
}

/// Returns whether a char may stand in a bare word.
fn is_bare(c: char) -> bool {
    !(c.is_whitespace() || matches!(c, '(' | ')' | ',' | '"' | '=' | '!' | '<' | '>'))
}

/// A filter expression that does not parse: what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter: {message} at column {column}")]
pub struct FilterSyntaxError {
    /// The column (1-based, in chars) where the problem starts.
    pub column: usize,
    /// What was expected or found.
    pub message: String,
}

impl From<FilterSyntaxError> for RetrieveError {
    fn from(e: FilterSyntaxError) -> Self {
        RetrieveError::invalid("filter", format!("{} at column {}", e.message, e.column))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A bare word (`quoted` false) or a quoted string.
    Word {
        text: String,
        quoted: bool,
    },
    Op(&'static str),
    Open,
    Close,
    Comma,
}

/// Splits an expression into tokens with their char columns (1-based).
fn lex(s: &str) -> std::result::Result<Vec<(usize, Tok)>, FilterSyntaxError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        if let Some(op) = ["!=", "<=", ">="].into_iter().find(|op| *op == two) {
            out.push((col, Tok::Op(op)));
            i += 2;
            continue;
        }
        let tok = match c {
            '(' => Tok::Open,
            ')' => Tok::Close,
            ',' => Tok::Comma,
            '=' => Tok::Op("="),
            '<' => Tok::Op("<"),
            '>' => Tok::Op(">"),
            '!' => {
                return Err(FilterSyntaxError {
                    column: col,
                    message: "`!` must be followed by `=`".into(),
                })
            }
            '"' => {
                let mut text = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => {
                            return Err(FilterSyntaxError {
                                column: col,
                                message: "unterminated quoted string".into(),
                            })
                        }
                        Some('"') => break,
                        Some('\\') => match chars.get(j + 1) {
                            Some(&e @ ('"' | '\\')) => {
                                text.push(e);
                                j += 1;
                            }
                            _ => {
                                return Err(FilterSyntaxError {
                                    column: j + 1,
                                    message: "`\\` escapes only `\"` and `\\`".into(),
                                })
                            }
                        },
                        Some(&ch) => text.push(ch),
                    }
                    j += 1;
                }
                out.push((col, Tok::Word { text, quoted: true }));
                i = j + 1;
                continue;
            }
            _ => {
                let mut j = i;
                while j < chars.len() && is_bare(chars[j]) {
                    j += 1;
                }
                out.push((
                    col,
                    Tok::Word {
                        text: chars[i..j].iter().collect(),
                        quoted: false,
                    },
                ));
                i = j;
                continue;
            }
        };
        out.push((col, tok));
        i += 1;
    }
    Ok(out)
}

/// A recursive-descent parser over the tokens.
struct Parser {
    toks: Vec<(usize, Tok)>,
    at: usize,
    /// The column just past the expression, for errors at its end.
    end: usize,
}

/// Deepest nesting of parentheses and `not`: bounds the parser's recursion.
const MAX_DEPTH: usize = 64;

impl Parser {
    fn column(&self) -> usize {
        self.toks.get(self.at).map_or(self.end, |t| t.0)
    }

    fn fail<T>(&self, message: impl Into<String>) -> std::result::Result<T, FilterSyntaxError> {
        Err(FilterSyntaxError {
            column: self.column(),
            message: message.into(),
        })
    }

    fn found(&self) -> String {
        match self.toks.get(self.at).map(|t| &t.1) {
            None => "the end".into(),
            Some(Tok::Word { text, .. }) => format!("`{text}`"),
            Some(Tok::Op(op)) => format!("`{op}`"),
            Some(Tok::Open) => "`(`".into(),
            Some(Tok::Close) => "`)`".into(),
            Some(Tok::Comma) => "`,`".into(),
        }
    }

    /// Takes the keyword `kw` (any case, bare) if it comes next.
    fn keyword(&mut self, kw: &str) -> bool {
        let hit = matches!(self.toks.get(self.at), Some((_, Tok::Word { text, quoted: false })) if text.eq_ignore_ascii_case(kw));
        if hit {
            self.at += 1;
        }
        hit
    }

    fn take(&mut self, tok: &Tok) -> bool {
        let hit = self.toks.get(self.at).is_some_and(|t| &t.1 == tok);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn expr(&mut self, depth: usize) -> std::result::Result<Filter, FilterSyntaxError> {
        if depth > MAX_DEPTH {
            return self.fail(format!("nesting deeper than {MAX_DEPTH}"));
        }
        let mut any = vec![self.and(depth)?];
        while self.keyword("or") {
            any.push(self.and(depth)?);
        }
        Ok(if any.len() == 1 {
            any.remove(0)
        } else {
            Filter::Any(any)
        })
    }

    fn and(&mut self, depth: usize) -> std::result::Result<Filter, FilterSyntaxError> {
        let mut all = vec![self.unary(depth)?];
        while self.keyword("and") {
            all.push(self.unary(depth)?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Filter::All(all)
        })
    }

    fn unary(&mut self, depth: usize) -> std::result::Result<Filter, FilterSyntaxError> {
        if depth > MAX_DEPTH {
            return self.fail(format!("nesting deeper than {MAX_DEPTH}"));
        }
        if self.keyword("not") {
            return Ok(Filter::Not(Box::new(self.unary(depth + 1)?)));
        }
        if self.take(&Tok::Open) {
            let inner = self.expr(depth + 1)?;
            if !self.take(&Tok::Close) {
                return self.fail(format!("expected `)` or a keyword, found {}", self.found()));
            }
            return Ok(inner);
        }
        self.condition()
    }

    fn word(&mut self, what: &str) -> std::result::Result<(String, bool), FilterSyntaxError> {
        match self.toks.get(self.at) {
            Some((_, Tok::Word { text, quoted })) => {
                let out = (text.clone(), *quoted);
                self.at += 1;
                Ok(out)
            }
            _ => self.fail(format!("expected {what}, found {}", self.found())),
        }
    }

    fn condition(&mut self) -> std::result::Result<Filter, FilterSyntaxError> {
        let key_column = self.column();
        let (key, quoted) = self.word("a key, `doc`, `not` or `(`")?;
        if !quoted
            && ["and", "or", "not", "in"]
                .iter()
                .any(|k| key.eq_ignore_ascii_case(k))
        {
            return Err(FilterSyntaxError {
                column: key_column,
                message: format!("expected a key, found the keyword `{key}`"),
            });
        }
        let is_doc = !quoted && key.eq_ignore_ascii_case("doc");
        if self.keyword("in") {
            if !self.take(&Tok::Open) {
                return self.fail(format!("expected `(` after `in`, found {}", self.found()));
            }
            // An empty list passes nothing (it is how an empty `any_of` is written).
            let mut values = Vec::new();
            if !self.take(&Tok::Close) {
                values.push(self.word("a value")?.0);
                while self.take(&Tok::Comma) {
                    values.push(self.word("a value")?.0);
                }
                if !self.take(&Tok::Close) {
                    return self.fail(format!("expected `,` or `)`, found {}", self.found()));
                }
            }
            return Ok(if is_doc {
                Filter::Docs(values)
            } else {
                Filter::OneOf { key, values }
            });
        }
        let op = match self.toks.get(self.at) {
            Some((_, Tok::Op(op))) => *op,
            _ => {
                return self.fail(format!(
                    "expected `=`, `!=`, `<`, `<=`, `>`, `>=` or `in` after `{key}`, found {}",
                    self.found()
                ))
            }
        };
        let op_column = self.column();
        self.at += 1;
        let value = self.word("a value")?.0;
        let cmp = match op {
            "=" | "!=" => {
                let eq = if is_doc {
                    Filter::Docs(vec![value])
                } else {
                    Filter::OneOf {
                        key,
                        values: vec![value],
                    }
                };
                return Ok(if op == "=" {
                    eq
                } else {
                    Filter::Not(Box::new(eq))
                });
            }
            "<" => Cmp::Lt,
            "<=" => Cmp::Le,
            ">" => Cmp::Gt,
            _ => Cmp::Ge,
        };
        if is_doc {
            return Err(FilterSyntaxError {
                column: op_column,
                message: "`doc` takes `=`, `!=` or `in`, not a range".into(),
            });
        }
        Ok(Filter::Range {
            key,
            expect: None,
            bounds: vec![Bound { op: cmp, value }],
        })
    }
}

impl FromStr for Filter {
    type Err = FilterSyntaxError;

    /// Parses a filter expression (the grammar is in the module's documentation).
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let toks = lex(s)?;
        let mut p = Parser {
            toks,
            at: 0,
            end: s.chars().count() + 1,
        };
        if p.toks.is_empty() {
            return p.fail("the filter is empty");
        }
        let f = p.expr(0)?;
        if p.at < p.toks.len() {
            return p.fail(format!(
                "expected `and`, `or` or the end, found {}",
                p.found()
            ));
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Filter {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn bad(s: &str) -> FilterSyntaxError {
        s.parse::<Filter>().expect_err(s)
    }

    fn one(key: &str, v: &str) -> Filter {
        Filter::OneOf {
            key: key.into(),
            values: vec![v.into()],
        }
    }

    fn doc(id: &str, meta: &[(&str, &str)]) -> DocumentInfo {
        DocumentInfo {
            id: id.into(),
            number: 0,
            tokens: 1,
            chars: 1,
            bytes: 1,
            positions: 0..1,
            meta: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn expressions_parse_with_precedence() {
        assert_eq!(parse("tenant=acme"), one("tenant", "acme"));
        assert_eq!(
            parse("a=1 or b=2 and not c=3"),
            Filter::Any(vec![
                one("a", "1"),
                Filter::All(vec![one("b", "2"), Filter::Not(Box::new(one("c", "3")))]),
            ])
        );
        assert_eq!(
            parse("(a=1 OR b=2) AND c != 3"),
            Filter::All(vec![
                Filter::Any(vec![one("a", "1"), one("b", "2")]),
                Filter::Not(Box::new(one("c", "3"))),
            ])
        );
        assert_eq!(
            parse("tenant in (a, \"b c\")"),
            Filter::OneOf {
                key: "tenant".into(),
                values: vec!["a".into(), "b c".into()]
            }
        );
        assert_eq!(
            parse("doc in (x,y)"),
            Filter::Docs(vec!["x".into(), "y".into()])
        );
        assert_eq!(parse("\"doc\"=x"), one("doc", "x"));
        assert_eq!(
            parse("date<2024-01-01T00:00:00+02:00"),
            Filter::Range {
                key: "date".into(),
                expect: None,
                bounds: vec![Bound {
                    op: Cmp::Lt,
                    value: "2024-01-01T00:00:00+02:00".into()
                }]
            }
        );
        // Written back, an expression parses to the same filter.
        for s in [
            "a=1 or b=2 and not c=3",
            "tenant in (a, \"b c\", \"x\\\"y\")",
            "doc in (x,y) and year>=2020",
            "\"doc\"=x and \"and\"=\"or\"",
        ] {
            let f = parse(s);
            assert_eq!(parse(&f.to_string()), f, "{s} -> {f}");
        }
    }

    #[test]
    fn bad_expressions_are_refused_with_their_column() {
        let cases = [
            ("", 1, "empty"),
            ("tenant", 7, "expected `=`"),
            ("tenant=", 8, "expected a value"),
            ("tenant=acme and", 16, "expected a key"),
            (
                "tenant=acme year=2020",
                13,
                "expected `and`, `or` or the end",
            ),
            ("(tenant=acme", 13, "expected `)`"),
            ("tenant in (a,", 14, "expected a value"),
            ("tenant in a", 11, "expected `(`"),
            ("tenant ! acme", 8, "`!` must be followed by `=`"),
            ("tenant=\"acme", 8, "unterminated"),
            ("doc>3", 4, "not a range"),
            ("and=1", 1, "keyword `and`"),
            ("a=\"x\\n\"", 5, "escapes only"),
        ];
        for (s, column, says) in cases {
            let e = bad(s);
            assert_eq!(e.column, column, "{s}: {e}");
            assert!(e.message.contains(says), "{s}: {e}");
        }
        let deep = format!("{}a=1{}", "(".repeat(100), ")".repeat(100));
        assert!(bad(&deep).message.contains("nesting"));
        let e = RetrieveError::from(bad("tenant"));
        assert!(e.to_string().contains("filter"), "{e}");
    }

    #[test]
    fn filters_select_by_typed_values() {
        let docs = [
            doc(
                "a1",
                &[("tenant", "acme"), ("year", "2019"), ("date", "2023-06-01")],
            ),
            doc(
                "a2",
                &[
                    ("tenant", "acme"),
                    ("year", "2021.0"),
                    ("date", "2024-02-01T00:00:00Z"),
                ],
            ),
            doc("b1", &[("tenant", "beta"), ("year", "2022")]),
            doc("c1", &[]),
        ];
        let types: BTreeMap<String, MetaType> = [
            ("tenant", MetaType::String),
            ("year", MetaType::Number),
            ("date", MetaType::Date),
        ]
        .into_iter()
        .map(|(k, t)| (k.to_string(), t))
        .collect();
        let pick = |s: &str| {
            let (keep, report) = parse(s).select(&docs, &types).unwrap();
            let ids: Vec<&str> = docs
                .iter()
                .zip(keep)
                .filter(|(_, k)| *k)
                .map(|(d, _)| d.id.as_str())
                .collect();
            assert_eq!(report.documents, ids.len());
            (ids, report)
        };
        assert_eq!(pick("tenant=acme").0, ["a1", "a2"]);
        assert_eq!(pick("year=2021").0, ["a2"]);
        assert_eq!(pick("year>=2020 and year<2022").0, ["a2"]);
        assert_eq!(pick("date<2024-01-01T00:00:00Z").0, ["a1"]);
        assert_eq!(pick("not tenant=acme").0, ["b1", "c1"]);
        assert_eq!(pick("tenant in (beta, gamma) or doc=c1").0, ["b1", "c1"]);
        // An unknown key passes nothing and is named.
        let (ids, report) = pick("region=eu");
        assert!(ids.is_empty());
        assert!(report.notes[0].contains("`region`"), "{:?}", report.notes);
        // Values that do not parse as the key's type, and ranges on strings, are refused.
        let refused = |s: &str| parse(s).select(&docs, &types).unwrap_err().to_string();
        assert!(refused("year>=soon").contains("`soon` is not a number"));
        assert!(refused("tenant>=a").contains("holds string values"));
        let date_range_on_number = Filter::Range {
            key: "year".into(),
            expect: Some(MetaType::Date),
            bounds: vec![],
        };
        let e = date_range_on_number.select(&docs, &types).unwrap_err();
        assert!(e.to_string().contains("needs a date key"), "{e}");
    }
}
