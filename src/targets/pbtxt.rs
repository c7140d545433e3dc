//! Lossless editor for Triton's `config.pbtxt` (protobuf text format).
//!
//! The Triton target points the python backend at the packed environment through the
//! `EXECUTION_ENV_PATH` entry of the model's top-level `parameters` map. Users keep comments,
//! order and formatting in these files, so edits are splices into the original text: a small
//! tokenizer and parser record the byte span of every field, and only the spans that change are
//! rewritten. Nested `parameters` maps (accelerators, repository agents) belong to other messages
//! and are never touched.

use std::fmt::Write as _;
use std::ops::Range;

/// Name of the top-level map field that holds the model's parameters.
const PARAMETERS: &str = "parameters";

/// Errors of the `config.pbtxt` editor.
#[derive(Debug, thiserror::Error)]
pub enum PbtxtError {
    /// The text is not valid protobuf text format; `line` and `column` are 1-based.
    #[error(
        "config.pbtxt is not valid protobuf text format: line {line}, column {column}: {message}"
    )]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
}

/// Value of the top-level `parameters` entry with key `key` (its `string_value`), if any.
///
/// When the key occurs several times the last entry wins, as in protobuf's map parsing. An entry
/// whose value has no `string_value` yields `None`.
///
/// # Errors
///
/// [`PbtxtError::Syntax`] when `config` is not valid protobuf text format.
pub fn get_parameter(config: &str, key: &str) -> Result<Option<String>, PbtxtError> {
    let doc = parse(config)?;
    let value = top_entries(&doc)
        .filter(|entry| entry.key() == Some(key.as_bytes()))
        .last()
        .and_then(|entry| {
            let value = last_field(entry.msg, "value")?;
            let Value::Message { msg, .. } = &value.value else {
                return None;
            };
            match &last_field(msg, "string_value")?.value {
                Value::Str { bytes, .. } => Some(String::from_utf8_lossy(bytes).into_owned()),
                _ => None,
            }
        });
    Ok(value)
}

/// Returns the config with the top-level parameter `key` set to the `string_value` `value`.
///
/// An existing entry is edited in place, whatever its form (block, inline or list), keeping its
/// quoting style; further entries with the same key are removed. Without one, a new block is
/// appended at the end of the file. Everything else stays byte-identical.
///
/// # Errors
///
/// [`PbtxtError::Syntax`] when `config` is not valid protobuf text format.
pub fn set_parameter(config: &str, key: &str, value: &str) -> Result<String, PbtxtError> {
    let doc = parse(config)?;
    let mut edits = Vec::new();
    let mut seen = false;
    // Per top-level field: indices of list items to remove, or the whole field.
    let mut removals: Vec<(usize, Vec<usize>)> = Vec::new();
    for (field_index, field) in doc.fields.iter().enumerate() {
        if field.name != PARAMETERS {
            continue;
        }
        match &field.value {
            Value::Message { msg, span } => {
                if entry_key(msg) == Some(key.as_bytes()) {
                    if seen {
                        removals.push((field_index, Vec::new()));
                    } else {
                        seen = true;
                        value_edits(config, msg, span, value, &mut edits);
                    }
                }
            }
            Value::List { items, .. } => {
                let mut removed = Vec::new();
                for (item_index, item) in items.iter().enumerate() {
                    let Value::Message { msg, span } = &item.value else {
                        continue;
                    };
                    if entry_key(msg) == Some(key.as_bytes()) {
                        if seen {
                            removed.push(item_index);
                        } else {
                            seen = true;
                            value_edits(config, msg, span, value, &mut edits);
                        }
                    }
                }
                if !removed.is_empty() {
                    removals.push((field_index, removed));
                }
            }
            Value::Scalar { .. } | Value::Str { .. } => {}
        }
    }
    if !seen {
        return Ok(append_block(config, key, value));
    }
    for (field_index, items) in removals {
        let field = &doc.fields[field_index];
        match &field.value {
            Value::List { items: all, .. } if items.len() < all.len() => {
                for range in list_item_removals(all, &items) {
                    edits.push(Edit::remove(whole_lines(config, range)));
                }
            }
            _ => edits.push(Edit::remove(whole_lines(
                config,
                field.span.start..field.end,
            ))),
        }
    }
    Ok(apply(config, edits))
}

/// Value of the top-level scalar field `field` (e.g. `backend`, `platform`), if any.
///
/// Strings are returned decoded, identifiers and numbers as written. A field holding a message or
/// a list yields `None`.
///
/// # Errors
///
/// [`PbtxtError::Syntax`] when `config` is not valid protobuf text format.
pub fn get_field(config: &str, field: &str) -> Result<Option<String>, PbtxtError> {
    let doc = parse(config)?;
    Ok(doc
        .fields
        .iter()
        .filter(|f| f.name == field)
        .find_map(|f| match &f.value {
            Value::Scalar { text, .. } => Some(text.clone()),
            Value::Str { bytes, .. } => Some(String::from_utf8_lossy(bytes).into_owned()),
            Value::Message { .. } | Value::List { .. } => None,
        }))
}

/// One top-level piece of a config, as written: what an edit of a parameter must keep.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A top-level field other than `parameters`, or a `parameters` value (or list element)
    /// that is not a map entry: its text from the name (or element) to the value's end.
    Other(&'a str),
    /// One entry of the top-level `parameters` map: its decoded key and its text.
    Entry {
        /// The entry's `key`, when it has a string one.
        key: Option<Vec<u8>>,
        /// The entry message as written, braces included.
        text: &'a str,
    },
}

/// The top-level pieces of `config` in source order, for the fuzz target that checks that
/// [`set_parameter`] keeps every piece but the entry it edits.
///
/// # Errors
///
/// [`PbtxtError::Syntax`] when `config` is not valid protobuf text format.
#[doc(hidden)]
pub fn pieces(config: &str) -> Result<Vec<Piece<'_>>, PbtxtError> {
    let doc = parse(config)?;
    let mut out = Vec::new();
    for field in &doc.fields {
        let values: Vec<&Value> = match &field.value {
            _ if field.name != PARAMETERS => {
                out.push(Piece::Other(&config[field.span.clone()]));
                continue;
            }
            Value::List { items, .. } => items.iter().map(|i| &i.value).collect(),
            value => vec![value],
        };
        for value in values {
            out.push(match value {
                Value::Message { msg, span } => Piece::Entry {
                    key: entry_key(msg).map(<[u8]>::to_vec),
                    text: &config[span.clone()],
                },
                other => Piece::Other(&config[other.span()]),
            });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Syntax tree

/// A message: its fields in source order.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub(crate) fields: Vec<Field>,
}

/// One `name: value` field.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    pub(crate) name: String,
    pub(crate) value: Value,
    /// From the first byte of the name to the last byte of the value.
    pub(crate) span: Range<usize>,
    /// End of the field including its optional `,` or `;` separator.
    pub(crate) end: usize,
}

/// A field value; every span covers the value's own text (braces and brackets included).
#[derive(Debug, Clone)]
pub(crate) enum Value {
    /// Identifier or number, as written (`TYPE_FP32`, `-1`, `0x1f`, `true`).
    Scalar {
        text: String,
        span: Range<usize>,
    },
    /// One string literal or several adjacent ones, decoded and concatenated.
    Str {
        bytes: Vec<u8>,
        span: Range<usize>,
        /// Quote character of the first literal.
        quote: u8,
    },
    Message {
        msg: Message,
        span: Range<usize>,
    },
    List {
        items: Vec<Item>,
        span: Range<usize>,
    },
}

/// One element of a `[ ... ]` list.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub(crate) value: Value,
    /// Position of the `,` that follows the element, if any.
    pub(crate) comma: Option<usize>,
}

impl Value {
    fn span(&self) -> Range<usize> {
        match self {
            Value::Scalar { span, .. }
            | Value::Str { span, .. }
            | Value::Message { span, .. }
            | Value::List { span, .. } => span.clone(),
        }
    }
}

/// One top-level `parameters` map entry.
struct Entry<'a> {
    msg: &'a Message,
}

impl<'a> Entry<'a> {
    fn key(&self) -> Option<&'a [u8]> {
        entry_key(self.msg)
    }
}

/// The `key` string of a map entry message (its first `key` field).
fn entry_key(msg: &Message) -> Option<&[u8]> {
    msg.fields
        .iter()
        .find(|f| f.name == "key")
        .and_then(|f| match &f.value {
            Value::Str { bytes, .. } => Some(bytes.as_slice()),
            _ => None,
        })
}

fn last_field<'a>(msg: &'a Message, name: &str) -> Option<&'a Field> {
    msg.fields.iter().rev().find(|f| f.name == name)
}

/// All entries of the top-level `parameters` map, in source order.
fn top_entries(doc: &Message) -> impl Iterator<Item = Entry<'_>> {
    doc.fields
        .iter()
        .filter(|f| f.name == PARAMETERS)
        .flat_map(|f| match &f.value {
            Value::Message { msg, .. } => vec![Entry { msg }],
            Value::List { items, .. } => items
                .iter()
                .filter_map(|item| match &item.value {
                    Value::Message { msg, .. } => Some(Entry { msg }),
                    _ => None,
                })
                .collect(),
            Value::Scalar { .. } | Value::Str { .. } => Vec::new(),
        })
}

// ---------------------------------------------------------------------------------------------
// Edits

/// Replace `range` of the original text with `text`.
struct Edit {
    range: Range<usize>,
    text: String,
}

impl Edit {
    fn remove(range: Range<usize>) -> Self {
        Edit {
            range,
            text: String::new(),
        }
    }
}

/// Applies non-overlapping edits to `text`.
fn apply(text: &str, mut edits: Vec<Edit>) -> String {
    edits.sort_by_key(|e| e.range.start);
    let mut out = String::with_capacity(text.len() + 64);
    let mut pos = 0;
    for edit in edits {
        out.push_str(&text[pos..edit.range.start]);
        out.push_str(&edit.text);
        pos = edit.range.end;
    }
    out.push_str(&text[pos..]);
    out
}

/// Edits that make the entry `msg` (spanning `span`) hold exactly `string_value: value`.
fn value_edits(text: &str, msg: &Message, span: &Range<usize>, value: &str, edits: &mut Vec<Edit>) {
    let values: Vec<&Field> = msg.fields.iter().filter(|f| f.name == "value").collect();
    let Some(first) = values.first() else {
        // An entry without a value: add one after its last field.
        let at = msg.fields.last().map_or(span.start + 1, |f| f.end);
        edits.push(Edit {
            range: at..at,
            text: format!(" value: {{ string_value: {} }}", quote(value, b'"')),
        });
        return;
    };
    match &first.value {
        Value::Message { msg: inner, .. }
            if values.len() == 1
                && inner.fields.len() == 1
                && inner.fields[0].name == "string_value"
                && matches!(inner.fields[0].value, Value::Str { .. }) =>
        {
            if let Value::Str { span, quote: q, .. } = &inner.fields[0].value {
                edits.push(Edit {
                    range: span.clone(),
                    text: quote(value, *q),
                });
            }
        }
        other => edits.push(Edit {
            range: other.span(),
            text: format!("{{ string_value: {} }}", quote(value, b'"')),
        }),
    }
    for extra in &values[1..] {
        edits.push(Edit::remove(whole_lines(text, extra.span.start..extra.end)));
    }
}

/// Byte ranges that remove the list elements `removed` (sorted indices) of `items`, with their
/// commas, leaving a well-formed list. At least one element must remain.
fn list_item_removals(items: &[Item], removed: &[usize]) -> Vec<Range<usize>> {
    let mut ranges: Vec<Range<usize>> = Vec::new();
    for &index in removed {
        let item = &items[index];
        let span = item.value.span();
        let range = if let Some(comma) = item.comma {
            span.start..comma + 1
        } else {
            // The last element without a trailing comma: remove from the end of the last kept
            // element before it, which takes that element's comma too.
            let kept = (0..index).rev().find(|i| !removed.contains(i));
            match kept {
                Some(k) => items[k].value.span().end..span.end,
                None => span,
            }
        };
        ranges.push(range);
    }
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::new();
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
}

/// Widens a removal to whole lines when nothing but blanks shares its first and last line.
fn whole_lines(text: &str, range: Range<usize>) -> Range<usize> {
    let bytes = text.as_bytes();
    let line_start = bytes[..range.start]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let line_end = bytes[range.end..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |p| range.end + p + 1);
    let blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    if bytes[line_start..range.start].iter().all(blank)
        && bytes[range.end..line_end].iter().all(blank)
    {
        line_start..line_end
    } else {
        range
    }
}

/// Appends a new top-level entry in the layout of Triton's documentation.
fn append_block(text: &str, key: &str, value: &str) -> String {
    let nl = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let block = format!(
        "{PARAMETERS}: {{{nl}  key: {},{nl}  value: {{ string_value: {} }}{nl}}}",
        quote(key, b'"'),
        quote(value, b'"')
    );
    let content_end = text.trim_end().len();
    if content_end == 0 {
        return format!("{text}{block}{nl}");
    }
    let newlines = text[content_end..].matches('\n').count();
    let ends_with_newline = text.ends_with('\n');
    let mut out = String::with_capacity(text.len() + block.len() + 8);
    out.push_str(text);
    for _ in newlines..2 {
        out.push_str(nl);
    }
    out.push_str(&block);
    if ends_with_newline {
        out.push_str(nl);
    }
    out
}

/// A string literal for `value` in quote character `q`.
fn quote(value: &str, q: u8) -> String {
    let q = char::from(q);
    let mut out = String::with_capacity(value.len() + 2);
    out.push(q);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\{:03o}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Identifier or number.
    Word,
    /// One string literal.
    Str,
    /// One of `{ } < > [ ] : , ;`.
    Punct(u8),
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    span: Range<usize>,
    /// Decoded bytes of a string literal.
    bytes: Vec<u8>,
}

fn syntax_error(text: &str, pos: usize, message: impl Into<String>) -> PbtxtError {
    let (line, column) = line_column(text, pos);
    PbtxtError::Syntax {
        line,
        column,
        message: message.into(),
    }
}

/// 1-based line and column (in characters) of byte offset `pos`.
fn line_column(text: &str, pos: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..pos.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let line = before.split(|&b| b == b'\n').count();
    let column = before[line_start..]
        .iter()
        .filter(|&&b| b & 0xC0 != 0x80)
        .count()
        + 1;
    (line, column)
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'+')
}

fn tokenize(text: &str) -> Result<Vec<Token>, PbtxtError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b' ' | b'\t' | b'\r' | b'\n' | b'\x0b' | b'\x0c' => i += 1,
            b'#' => {
                i = bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |p| i + p);
            }
            b'{' | b'}' | b'<' | b'>' | b'[' | b']' | b':' | b',' | b';' => {
                tokens.push(Token {
                    kind: Kind::Punct(b),
                    span: i..i + 1,
                    bytes: Vec::new(),
                });
                i += 1;
            }
            b'"' | b'\'' => {
                let (decoded, end) = string_literal(text, i)?;
                tokens.push(Token {
                    kind: Kind::Str,
                    span: i..end,
                    bytes: decoded,
                });
                i = end;
            }
            b if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-') => {
                let end = bytes[i..]
                    .iter()
                    .position(|&b| !is_word_byte(b))
                    .map_or(bytes.len(), |p| i + p);
                if b == b'-' && end == i + 1 {
                    return Err(syntax_error(text, i, "expected a number after '-'"));
                }
                tokens.push(Token {
                    kind: Kind::Word,
                    span: i..end,
                    bytes: Vec::new(),
                });
                i = end;
            }
            _ => {
                let c = text.get(i..).and_then(|s| s.chars().next()).unwrap_or('?');
                return Err(syntax_error(text, i, format!("unexpected character {c:?}")));
            }
        }
    }
    tokens.push(Token {
        kind: Kind::Eof,
        span: bytes.len()..bytes.len(),
        bytes: Vec::new(),
    });
    Ok(tokens)
}

/// Decodes the string literal starting at `start`; returns its bytes and end offset.
fn string_literal(text: &str, start: usize) -> Result<(Vec<u8>, usize), PbtxtError> {
    let bytes = text.as_bytes();
    let quote = bytes[start];
    let mut out = Vec::new();
    let mut i = start + 1;
    loop {
        match bytes.get(i) {
            None | Some(b'\n') => {
                return Err(syntax_error(text, start, "unterminated string literal"));
            }
            Some(&b) if b == quote => return Ok((out, i + 1)),
            Some(b'\\') => i = escape(text, i, &mut out)?,
            Some(&b) => {
                out.push(b);
                i += 1;
            }
        }
    }
}

/// Decodes the escape sequence at `at` (a backslash) into `out`; returns the offset after it.
fn escape(text: &str, at: usize, out: &mut Vec<u8>) -> Result<usize, PbtxtError> {
    let bytes = text.as_bytes();
    let invalid = |message: &str| syntax_error(text, at, message);
    let Some(&c) = bytes.get(at + 1) else {
        return Err(invalid("unterminated string literal"));
    };
    let simple = match c {
        b'n' => Some(b'\n'),
        b't' => Some(b'\t'),
        b'r' => Some(b'\r'),
        b'a' => Some(0x07),
        b'b' => Some(0x08),
        b'f' => Some(0x0c),
        b'v' => Some(0x0b),
        b'\\' | b'\'' | b'"' | b'?' => Some(c),
        _ => None,
    };
    if let Some(b) = simple {
        out.push(b);
        return Ok(at + 2);
    }
    let digits = |from: usize, max: usize, radix: u32| {
        let run = bytes[from..]
            .iter()
            .take(max)
            .take_while(|&&b| char::from(b).is_digit(radix))
            .count();
        let value = text[from..from + run]
            .chars()
            .fold(0u32, |acc, d| acc * radix + d.to_digit(radix).unwrap_or(0));
        (value, run)
    };
    match c {
        b'0'..=b'7' => {
            let (value, run) = digits(at + 1, 3, 8);
            let byte = u8::try_from(value).map_err(|_| invalid("octal escape above \\377"))?;
            out.push(byte);
            Ok(at + 1 + run)
        }
        b'x' | b'X' => {
            let (value, run) = digits(at + 2, 2, 16);
            if run == 0 {
                return Err(invalid("expected hex digits after \\x"));
            }
            out.push(u8::try_from(value).unwrap_or(b'?'));
            Ok(at + 2 + run)
        }
        b'u' | b'U' => {
            let len = if c == b'u' { 4 } else { 8 };
            let (mut code, run) = digits(at + 2, len, 16);
            if run != len {
                return Err(invalid(&format!(
                    "expected {len} hex digits after \\{}",
                    char::from(c)
                )));
            }
            let mut end = at + 2 + len;
            if (0xD800..0xDC00).contains(&code) && bytes.get(end..end + 2) == Some(b"\\u") {
                let (low, run) = digits(end + 2, 4, 16);
                if run == 4 && (0xDC00..0xE000).contains(&low) {
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                    end += 6;
                }
            }
            let ch = char::from_u32(code).ok_or_else(|| invalid("invalid unicode escape"))?;
            out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
            Ok(end)
        }
        _ => Err(invalid(&format!(
            "invalid escape sequence '\\{}'",
            text.get(at + 1..)
                .and_then(|s| s.chars().next())
                .unwrap_or('?')
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Parser

/// Parses a whole `config.pbtxt` into its syntax tree (the top-level message).
pub(crate) fn parse(config: &str) -> Result<Message, PbtxtError> {
    let tokens = tokenize(config)?;
    let mut parser = Parser {
        text: config,
        tokens,
        pos: 0,
        depth: 0,
    };
    parser.message_body(None)
}

/// How deep messages may nest, as in protobuf's own text parser: deeper input is refused
/// rather than overflowing the stack (Triton's configs nest a handful of levels).
const MAX_DEPTH: usize = 100;

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token>,
    pos: usize,
    /// Messages open around the current token.
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn bump(&mut self) -> Token {
        let token = self.peek().clone();
        if token.kind != Kind::Eof {
            self.pos += 1;
        }
        token
    }

    fn describe(&self, token: &Token) -> String {
        match token.kind {
            Kind::Eof => "end of file".to_owned(),
            Kind::Str => "a string".to_owned(),
            Kind::Word | Kind::Punct(_) => format!("'{}'", &self.text[token.span.clone()]),
        }
    }

    fn error(&self, token: &Token, expected: &str) -> PbtxtError {
        syntax_error(
            self.text,
            token.span.start,
            format!("expected {expected}, found {}", self.describe(token)),
        )
    }

    /// Fields up to `close` (`}` or `>`) or, for the top level, the end of the file.
    /// `open` is the position of the opening brace, for error messages.
    fn message_body(&mut self, close: Option<(u8, usize)>) -> Result<Message, PbtxtError> {
        let mut fields = Vec::new();
        loop {
            let token = self.peek().clone();
            match (token.kind, close) {
                (Kind::Eof, None) => return Ok(Message { fields }),
                (Kind::Punct(p), Some((c, _))) if p == c => return Ok(Message { fields }),
                (Kind::Word, _) => fields.push(self.field()?),
                (_, None) => return Err(self.error(&token, "a field name")),
                (_, Some((c, open))) => {
                    let (line, column) = line_column(self.text, open);
                    return Err(self.error(
                        &token,
                        &format!(
                            "a field name or '{}' closing the message opened at line {line}, column {column}",
                            char::from(c)
                        ),
                    ));
                }
            }
        }
    }

    fn field(&mut self) -> Result<Field, PbtxtError> {
        let name = self.bump();
        let name_text = &self.text[name.span.clone()];
        let valid = name_text
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name_text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(self.error(&name, "a field name"));
        }
        let colon = self.peek().kind == Kind::Punct(b':');
        if colon {
            self.bump();
        }
        let token = self.peek().clone();
        let value = match token.kind {
            Kind::Punct(b'{' | b'<') => self.message_value()?,
            Kind::Punct(b'[') => self.list()?,
            Kind::Str | Kind::Word if colon => self.scalar(),
            _ if colon => return Err(self.error(&token, &format!("a value for '{name_text}'"))),
            _ => return Err(self.error(&token, &format!("':' or '{{' after '{name_text}'"))),
        };
        let value_end = value.span().end;
        let mut end = value_end;
        if matches!(self.peek().kind, Kind::Punct(b',' | b';')) {
            end = self.bump().span.end;
        }
        Ok(Field {
            name: name_text.to_owned(),
            value,
            span: name.span.start..value_end,
            end,
        })
    }

    fn message_value(&mut self) -> Result<Value, PbtxtError> {
        let open = self.bump();
        let close = if open.kind == Kind::Punct(b'<') {
            b'>'
        } else {
            b'}'
        };
        if self.depth == MAX_DEPTH {
            return Err(syntax_error(
                self.text,
                open.span.start,
                format!("messages nested more than {MAX_DEPTH} deep"),
            ));
        }
        self.depth += 1;
        let msg = self.message_body(Some((close, open.span.start)))?;
        self.depth -= 1;
        let end = self.bump().span.end;
        Ok(Value::Message {
            msg,
            span: open.span.start..end,
        })
    }

    fn scalar(&mut self) -> Value {
        let first = self.bump();
        if first.kind == Kind::Word {
            return Value::Scalar {
                text: self.text[first.span.clone()].to_owned(),
                span: first.span,
            };
        }
        let quote = self.text.as_bytes()[first.span.start];
        let mut bytes = first.bytes;
        let mut end = first.span.end;
        while self.peek().kind == Kind::Str {
            let next = self.bump();
            bytes.extend_from_slice(&next.bytes);
            end = next.span.end;
        }
        Value::Str {
            bytes,
            span: first.span.start..end,
            quote,
        }
    }

    fn list(&mut self) -> Result<Value, PbtxtError> {
        let open = self.bump();
        let mut items: Vec<Item> = Vec::new();
        loop {
            let token = self.peek().clone();
            let value = match token.kind {
                Kind::Punct(b']') => {
                    self.bump();
                    return Ok(Value::List {
                        items,
                        span: open.span.start..token.span.end,
                    });
                }
                Kind::Punct(b'{' | b'<') => self.message_value()?,
                Kind::Str | Kind::Word => self.scalar(),
                _ => return Err(self.error(&token, "a list element or ']'")),
            };
            let next = self.peek().clone();
            let comma = match next.kind {
                Kind::Punct(b',') => {
                    self.bump();
                    Some(next.span.start)
                }
                Kind::Punct(b']') => None,
                _ => return Err(self.error(&next, "',' or ']' in list")),
            };
            items.push(Item { value, comma });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "EXECUTION_ENV_PATH";
    const ENV: &str = "$$TRITON_MODEL_DIRECTORY/model-conda.tar.gz";

    // --- structural view for comparisons -----------------------------------------------------

    /// A span-free view of a value, for comparing structure.
    #[derive(Debug, Clone, PartialEq)]
    enum Plain {
        Scalar(String),
        Str(Vec<u8>),
        Msg(Vec<(String, Plain)>),
        List(Vec<Plain>),
    }

    fn plain(value: &Value) -> Plain {
        match value {
            Value::Scalar { text, .. } => Plain::Scalar(text.clone()),
            Value::Str { bytes, .. } => Plain::Str(bytes.clone()),
            Value::Message { msg, .. } => plain_msg(msg),
            Value::List { items, .. } => {
                Plain::List(items.iter().map(|i| plain(&i.value)).collect())
            }
        }
    }

    fn plain_msg(msg: &Message) -> Plain {
        Plain::Msg(
            msg.fields
                .iter()
                .map(|f| (f.name.clone(), plain(&f.value)))
                .collect(),
        )
    }

    /// Top-level fields other than `parameters`, and the flattened list of top-level entries.
    fn split(config: &str) -> (Vec<(String, Plain)>, Vec<Plain>) {
        let doc = parse(config).unwrap_or_else(|e| panic!("{e}\n{config}"));
        let others = doc
            .fields
            .iter()
            .filter(|f| f.name != PARAMETERS)
            .map(|f| (f.name.clone(), plain(&f.value)))
            .collect();
        let entries = top_entries(&doc).map(|e| plain_msg(e.msg)).collect();
        (others, entries)
    }

    fn entry_has_key(entry: &Plain, key: &str) -> bool {
        let Plain::Msg(fields) = entry else {
            return false;
        };
        fields
            .iter()
            .find(|(n, _)| n == "key")
            .is_some_and(|(_, v)| *v == Plain::Str(key.as_bytes().to_vec()))
    }

    fn count_key(config: &str, key: &str) -> usize {
        split(config)
            .1
            .iter()
            .filter(|e| entry_has_key(e, key))
            .count()
    }

    fn set(config: &str, value: &str) -> String {
        set_parameter(config, KEY, value).unwrap_or_else(|e| panic!("{e}\n{config}"))
    }

    fn get(config: &str, key: &str) -> Option<String> {
        get_parameter(config, key).unwrap()
    }

    fn error_line(config: &str) -> (usize, usize, String) {
        match parse(config) {
            Err(PbtxtError::Syntax {
                line,
                column,
                message,
            }) => (line, column, message),
            Ok(doc) => panic!("parsed: {doc:?}"),
        }
    }

    // --- forms ---------------------------------------------------------------------------------

    #[test]
    fn block_form_is_replaced_in_place() {
        let cfg = "name: \"m\"\nbackend: \"python\"\nparameters {\n  key: \"EXECUTION_ENV_PATH\"\n  value { string_value: \"old.tar.gz\" }\n}\n# tail\n";
        let out = set(cfg, ENV);
        assert_eq!(out, cfg.replace("old.tar.gz", ENV));
        assert_eq!(get(&out, KEY).as_deref(), Some(ENV));
    }

    #[test]
    fn inline_form_is_replaced_in_place() {
        let cfg = "backend: \"python\"\nparameters: {key: \"EXECUTION_ENV_PATH\", value: {string_value: \"a\"}}\nmax_batch_size: 0\n";
        let out = set(cfg, "b");
        assert_eq!(out, cfg.replace("\"a\"", "\"b\""));
    }

    #[test]
    fn list_form_with_trailing_comma_is_replaced_in_place() {
        let cfg = "parameters: [\n  {key: \"A\" value: {string_value: \"1\"}},\n  {key: \"EXECUTION_ENV_PATH\", value: {string_value: \"V\"}},\n]\n";
        let out = set(cfg, "new");
        assert_eq!(out, cfg.replace("\"V\"", "\"new\""));
        assert_eq!(get(&out, "A").as_deref(), Some("1"));
    }

    #[test]
    fn semicolon_separators_and_angle_brackets_are_accepted() {
        let cfg = "name: \"m\"; backend: 'python';\nparameters < key: \"EXECUTION_ENV_PATH\"; value < string_value: \"x\"; >; >;\n";
        assert_eq!(
            get_field(cfg, "backend").unwrap().as_deref(),
            Some("python")
        );
        let out = set(cfg, "y");
        assert_eq!(out, cfg.replace("\"x\"", "\"y\""));
    }

    #[test]
    fn escaped_key_and_value_are_decoded_and_encoded() {
        let cfg = r#"parameters { key: "EXEC\x55TION_ENV_\120ATH" value { string_value: "a\"b\\c\n\u00e9\t\'" } }"#;
        assert_eq!(get(cfg, KEY).as_deref(), Some("a\"b\\c\n\u{e9}\t'"));
        let value = "q\"uo'te\\ $$X\n\u{1}é";
        let out = set(cfg, value);
        assert_eq!(get(&out, KEY).as_deref(), Some(value));
        assert!(out.contains(r#""q\"uo'te\\ $$X\n\001é""#), "{out}");
    }

    #[test]
    fn single_quotes_are_kept() {
        let cfg = "parameters { key: 'EXECUTION_ENV_PATH' value { string_value: 'old' } }";
        let out = set(cfg, "it's \"x\"");
        assert_eq!(
            out,
            r#"parameters { key: 'EXECUTION_ENV_PATH' value { string_value: 'it\'s "x"' } }"#
        );
        assert_eq!(get(&out, KEY).as_deref(), Some("it's \"x\""));
    }

    #[test]
    fn adjacent_literals_concatenate_and_are_replaced_as_one() {
        let cfg = "parameters { key: \"EXECUTION_\" 'ENV_PATH'\n value { string_value: \"a\" # part one\n \"b\" } }\n";
        assert_eq!(get(cfg, KEY).as_deref(), Some("ab"));
        let out = set(cfg, "c");
        assert_eq!(
            out,
            "parameters { key: \"EXECUTION_\" 'ENV_PATH'\n value { string_value: \"c\" } }\n"
        );
    }

    #[test]
    fn comments_between_tokens_are_kept() {
        let cfg = "# head\nparameters # a\n{ # b\n key # c\n : # d\n \"EXECUTION_ENV_PATH\" # e\n value # f\n { string_value # g\n : \"x\" # h\n } # i\n} # j\n";
        let out = set(cfg, "y");
        assert_eq!(out, cfg.replace("\"x\"", "\"y\""));
    }

    #[test]
    fn nested_parameters_are_untouched() {
        let cfg = "optimization { execution_accelerators { gpu_execution_accelerator: [ { name: \"tensorrt\" parameters { key: \"EXECUTION_ENV_PATH\" value: \"FP16\" } } ] } }\nmodel_repository_agents { agents [ { name: \"checksum\", parameters { key: \"EXECUTION_ENV_PATH\" value: \"y\" } } ] }\n";
        assert_eq!(get(cfg, KEY), None);
        let out = set(cfg, ENV);
        assert!(out.starts_with(cfg), "{out}");
        assert_eq!(count_key(&out, KEY), 1);
        assert_eq!(get(&out, KEY).as_deref(), Some(ENV));
    }

    #[test]
    fn key_present_twice_keeps_only_the_first() {
        let cfg = "parameters {\n  key: \"EXECUTION_ENV_PATH\"\n  value { string_value: \"one\" }\n}\nbackend: \"python\"\nparameters: [ {key: \"B\" value {string_value: \"b\"}}, {key: \"EXECUTION_ENV_PATH\" value {string_value: \"two\"}} ]\nparameters {\n  key: \"EXECUTION_ENV_PATH\"\n  value { string_value: \"three\" }\n}\n";
        assert_eq!(get(cfg, KEY).as_deref(), Some("three"));
        let out = set(cfg, "v");
        assert_eq!(
            out,
            "parameters {\n  key: \"EXECUTION_ENV_PATH\"\n  value { string_value: \"v\" }\n}\nbackend: \"python\"\nparameters: [ {key: \"B\" value {string_value: \"b\"}} ]\n"
        );
        assert_eq!(count_key(&out, KEY), 1);
        assert_eq!(get(&out, "B").as_deref(), Some("b"));
    }

    #[test]
    fn list_of_only_duplicates_is_removed_entirely() {
        let cfg = "parameters { key: \"EXECUTION_ENV_PATH\" value { string_value: \"1\" } }\nparameters: [\n  { key: \"EXECUTION_ENV_PATH\" value { string_value: \"2\" } },\n  { key: \"EXECUTION_ENV_PATH\" value { string_value: \"3\" } }\n];\nname: \"m\"\n";
        let out = set(cfg, "v");
        assert_eq!(
            out,
            "parameters { key: \"EXECUTION_ENV_PATH\" value { string_value: \"v\" } }\nname: \"m\"\n"
        );
    }

    #[test]
    fn absent_key_appends_documented_block() {
        let cfg = "name: \"m\"\nbackend: \"python\"\n";
        let out = set(cfg, ENV);
        assert_eq!(
            out,
            "name: \"m\"\nbackend: \"python\"\n\nparameters: {\n  key: \"EXECUTION_ENV_PATH\",\n  value: { string_value: \"$$TRITON_MODEL_DIRECTORY/model-conda.tar.gz\" }\n}\n"
        );
        // Without a trailing newline, none is added; an existing blank line is reused.
        let out = set("backend: \"python\"", "v");
        assert!(out.starts_with("backend: \"python\"\n\nparameters: {\n") && out.ends_with('}'));
        let out = set("backend: \"python\"\n\n", "v");
        assert!(out.starts_with("backend: \"python\"\n\nparameters: {\n") && out.ends_with("}\n"));
    }

    #[test]
    fn empty_config_gets_a_block() {
        let out = set("", "v");
        assert!(out.starts_with("parameters: {\n") && out.ends_with("}\n"));
        assert_eq!(get(&out, KEY).as_deref(), Some("v"));
        assert_eq!(get("", KEY), None);
    }

    #[test]
    fn crlf_line_endings_are_kept() {
        let cfg = "name: \"m\"\r\nparameters {\r\n  key: \"A\"\r\n  value { string_value: \"1\" }\r\n}\r\n";
        let out = set(cfg, "v");
        assert!(out.starts_with(cfg));
        assert!(!out.replace("\r\n", "").contains('\n'), "{out:?}");
        let again = set(&out, "w");
        assert_eq!(again, out.replace("\"v\"", "\"w\""));
        let dup = format!(
            "{again}parameters {{\r\n  key: \"EXECUTION_ENV_PATH\"\r\n  value {{ string_value: \"z\" }}\r\n}}\r\n"
        );
        assert_eq!(set(&dup, "w"), again);
    }

    #[test]
    fn value_with_other_fields_is_replaced_whole() {
        let cfg =
            "parameters { key: \"EXECUTION_ENV_PATH\" value { int_value: 3 string_value: \"a\" } }";
        assert_eq!(
            set(cfg, "v"),
            "parameters { key: \"EXECUTION_ENV_PATH\" value { string_value: \"v\" } }"
        );
        let cfg = "parameters { key: \"EXECUTION_ENV_PATH\" value: 'x' }";
        assert_eq!(
            set(cfg, "v"),
            "parameters { key: \"EXECUTION_ENV_PATH\" value: { string_value: \"v\" } }"
        );
        let cfg = "parameters { key: \"EXECUTION_ENV_PATH\", }";
        assert_eq!(
            set(cfg, "v"),
            "parameters { key: \"EXECUTION_ENV_PATH\", value: { string_value: \"v\" } }"
        );
    }

    #[test]
    fn get_field_reads_backend_and_platform() {
        let cfg = "platform: onnxruntime_onnx # c\nbackend: \"py\" 'thon'\ninput [ { dims: [ -1, 0x1F, 1.5e-3 ] } ]\n";
        assert_eq!(
            get_field(cfg, "backend").unwrap().as_deref(),
            Some("python")
        );
        assert_eq!(
            get_field(cfg, "platform").unwrap().as_deref(),
            Some("onnxruntime_onnx")
        );
        assert_eq!(get_field(cfg, "input").unwrap(), None);
        assert_eq!(get_field(cfg, "name").unwrap(), None);
    }

    #[test]
    fn escapes_decode_like_protobuf() {
        let doc = parse(r#"s: "\x41\101\u00e9\U0001F600\ud83d\ude00\a\?\0""#).unwrap();
        let Value::Str { bytes, .. } = &doc.fields[0].value else {
            panic!()
        };
        assert_eq!(bytes, "AAé😀😀\x07?\0".as_bytes());
    }

    // --- errors ---------------------------------------------------------------------------------

    #[test]
    fn error_unterminated_string_names_its_line() {
        let (line, column, message) = error_line("name: \"m\"\nbackend: \"python\n");
        assert_eq!((line, column), (2, 10));
        assert!(message.contains("unterminated"), "{message}");
    }

    #[test]
    fn error_invalid_escape_names_its_line() {
        let (line, column, message) = error_line("a: 1\n\nb: \"x\\qy\"");
        assert_eq!((line, column), (3, 6));
        assert!(message.contains("escape"), "{message}");
        assert_eq!(error_line("a: \"\\x\"").0, 1);
        assert_eq!(error_line("a: 1\nb: \"\\u12\"").0, 2);
        assert_eq!(error_line("a: 1\nb: \"\\777\"").0, 2);
    }

    #[test]
    fn error_unexpected_character_names_its_line() {
        let (line, column, message) = error_line("a: 1\n  b = 2\n");
        assert_eq!((line, column), (2, 5));
        assert!(message.contains("unexpected character '='"), "{message}");
    }

    #[test]
    fn error_unclosed_message_names_where_it_opened() {
        let (line, _, message) = error_line("a {\n  b: 1\n");
        assert_eq!(line, 3);
        assert!(
            message.contains("end of file") && message.contains("line 1"),
            "{message}"
        );
    }

    #[test]
    fn error_stray_close_names_its_line() {
        let (line, column, message) = error_line("a: 1\n}\n");
        assert_eq!((line, column), (2, 1));
        assert!(message.contains("field name"), "{message}");
        assert_eq!(error_line("a { b: 1 >").0, 1);
    }

    #[test]
    fn error_missing_value_names_its_line() {
        let (line, _, message) = error_line("a: 1\nb:\n}\n");
        assert_eq!(line, 3);
        assert!(message.contains("value for 'b'"), "{message}");
        let (line, _, message) = error_line("a: 1\nb \"x\"\n");
        assert_eq!(line, 2);
        assert!(message.contains("':' or '{'"), "{message}");
    }

    #[test]
    fn error_missing_list_comma_names_its_line() {
        let (line, _, message) = error_line("dims: [\n 1\n 2 ]\n");
        assert_eq!(line, 3);
        assert!(message.contains("',' or ']'"), "{message}");
        assert_eq!(error_line("dims: [ 1, , 2 ]").0, 1);
        assert_eq!(error_line("dims: [ 1,\n").0, 2);
    }

    #[test]
    fn error_bad_field_name_names_its_line() {
        let (line, column, _) = error_line("a: 1\n\n  12: 3\n");
        assert_eq!((line, column), (3, 3));
        assert_eq!(error_line("a: 1\nb: - 3").0, 2);
    }

    /// Deep nesting is refused with its place, not a stack overflow (a crash found by review:
    /// the fuzz target's inputs are too short to reach the stack's end).
    #[test]
    fn error_nesting_too_deep_names_its_line() {
        let deep = format!("{}{}", "a {\n".repeat(200_000), "}".repeat(200_000));
        let e = get_parameter(&deep, KEY).unwrap_err().to_string();
        assert!(
            e.contains("line 101, column 3: messages nested more than 100 deep"),
            "{e}"
        );
        let e = set_parameter(&"p: [<".repeat(200_000), KEY, "v")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nested more than 100 deep"), "{e}");
        let ok = format!("{}{}", "a {".repeat(100), "}".repeat(100));
        assert_eq!(get_parameter(&ok, KEY).unwrap(), None);
    }

    #[test]
    fn errors_surface_through_the_public_api() {
        let err = set_parameter("a {", KEY, "v").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        assert!(get_parameter("a: 'x", KEY).is_err());
        assert!(get_field("a: [", "a").is_err());
    }

    // --- property test --------------------------------------------------------------------------

    mod generated {
        use super::*;
        use proptest::prelude::*;

        /// Semantic content of a generated field value.
        #[derive(Debug, Clone)]
        enum G {
            Word(String),
            Str(String),
            Msg(Vec<(String, G)>),
            List(Vec<G>),
        }

        /// Splitmix64: rendering choices come from a seed so content still shrinks.
        struct Rng(u64);

        impl Rng {
            fn next(&mut self) -> u64 {
                self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = self.0;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            }
            fn below(&mut self, n: u64) -> u64 {
                self.next() % n
            }
            fn chance(&mut self, one_in: u64) -> bool {
                self.below(one_in) == 0
            }
        }

        struct Writer {
            out: String,
            rng: Rng,
        }

        impl Writer {
            /// Whitespace and comments between tokens; never empty between two words.
            fn gap(&mut self, needs_space: bool) {
                match self.rng.below(8) {
                    0 if !needs_space => {}
                    1 => self.out.push_str("\n  "),
                    2 => self.out.push_str("  # note: \"{ [ ' } \\\n\t"),
                    3 => self.out.push_str("\n\n"),
                    4 => self.out.push('\t'),
                    _ => self.out.push(' '),
                }
            }

            fn token(&mut self, token: &str) {
                let word = |c: Option<char>| {
                    c.is_some_and(|c| c.is_ascii_alphanumeric() || "_.-+\"'".contains(c))
                };
                let needs = word(self.out.chars().last()) && word(token.chars().next());
                if !self.out.is_empty() {
                    self.gap(needs);
                }
                self.out.push_str(token);
            }

            fn string(&mut self, value: &str) {
                let chars: Vec<char> = value.chars().collect();
                let split = if chars.len() > 1 && self.rng.chance(3) {
                    usize::try_from(self.rng.below(chars.len() as u64)).unwrap_or(0)
                } else {
                    0
                };
                let parts: Vec<String> = if split == 0 {
                    vec![value.to_owned()]
                } else {
                    vec![
                        chars[..split].iter().collect(),
                        chars[split..].iter().collect(),
                    ]
                };
                for part in parts {
                    let q = if self.rng.chance(3) { '\'' } else { '"' };
                    let mut lit = String::new();
                    lit.push(q);
                    for c in part.chars() {
                        match (c, self.rng.below(12)) {
                            ('\\', _) => lit.push_str("\\\\"),
                            ('\n', _) => lit.push_str("\\n"),
                            (c, _) if c == q => {
                                lit.push('\\');
                                lit.push(c);
                            }
                            (c, 0) if c.is_ascii() => {
                                let _ = write!(lit, "\\x{:02x}", u32::from(c));
                            }
                            (c, 1) if c.is_ascii() => {
                                let _ = write!(lit, "\\{:03o}", u32::from(c));
                            }
                            (c, 2) if u32::from(c) <= 0xFFFF => {
                                let _ = write!(lit, "\\u{:04x}", u32::from(c));
                            }
                            (c, _) if c.is_ascii_control() => {
                                let _ = write!(lit, "\\{:03o}", u32::from(c));
                            }
                            (c, _) => lit.push(c),
                        }
                    }
                    lit.push(q);
                    self.token(&lit);
                }
            }

            fn separator(&mut self) {
                match self.rng.below(4) {
                    0 => self.token(","),
                    1 => self.token(";"),
                    _ => {}
                }
            }

            fn field(&mut self, name: &str, value: &G) {
                self.token(name);
                match value {
                    G::Word(w) => {
                        self.token(":");
                        self.token(w);
                    }
                    G::Str(s) => {
                        self.token(":");
                        self.string(s);
                    }
                    G::Msg(fields) => {
                        if self.rng.chance(2) {
                            self.token(":");
                        }
                        self.message(fields);
                    }
                    G::List(items) => {
                        let all_messages = items.iter().all(|i| matches!(i, G::Msg(_)));
                        if !all_messages || !self.rng.chance(4) {
                            self.token(":");
                        }
                        self.list(items);
                    }
                }
                self.separator();
            }

            fn message(&mut self, fields: &[(String, G)]) {
                let angle = self.rng.chance(5);
                self.token(if angle { "<" } else { "{" });
                for (name, value) in fields {
                    self.field(name, value);
                }
                self.token(if angle { ">" } else { "}" });
            }

            fn value(&mut self, value: &G) {
                match value {
                    G::Word(w) => self.token(w),
                    G::Str(s) => self.string(s),
                    G::Msg(fields) => self.message(fields),
                    G::List(items) => self.list(items),
                }
            }

            fn list(&mut self, items: &[G]) {
                self.token("[");
                for (i, item) in items.iter().enumerate() {
                    self.value(item);
                    if i + 1 < items.len() || self.rng.chance(2) {
                        self.token(",");
                    }
                }
                self.token("]");
            }
        }

        fn no_list(g: G) -> G {
            match g {
                G::List(items) => {
                    G::Msg(items.into_iter().map(|i| ("value".to_owned(), i)).collect())
                }
                g => g,
            }
        }

        fn text() -> impl Strategy<Value = String> {
            proptest::string::string_regex("[a-zA-Z0-9 _./$\"'\\\\\n\t\u{1}é€-]{0,12}").unwrap()
        }

        fn word() -> impl Strategy<Value = G> {
            prop_oneof![
                Just("TYPE_FP32"),
                Just("true"),
                Just("-1"),
                Just("0x1F"),
                Just("1.5e-3"),
                Just("KIND_CPU"),
                Just("8"),
            ]
            .prop_map(|w| G::Word(w.to_owned()))
        }

        fn entry(key: impl Strategy<Value = String>) -> impl Strategy<Value = G> {
            (key, text(), 0..8u8).prop_map(|(key, value, shape)| {
                let value = match shape {
                    0 => G::Msg(vec![("int_value".into(), G::Word("3".into()))]),
                    1 => G::Str(value),
                    _ => G::Msg(vec![("string_value".into(), G::Str(value))]),
                };
                G::Msg(vec![("key".into(), G::Str(key)), ("value".into(), value)])
            })
        }

        fn any_key() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => Just(KEY.to_owned()),
                1 => Just("FOO".to_owned()),
                1 => text(),
            ]
        }

        /// Values of nested fields, including nested `parameters` maps with our key.
        fn nested() -> impl Strategy<Value = G> {
            let leaf = prop_oneof![word(), text().prop_map(G::Str)];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(
                        (
                            prop::sample::select(vec![
                                "name",
                                "kind",
                                "dims",
                                "parameters",
                                "key",
                                "value"
                            ]),
                            inner.clone()
                        )
                            .prop_map(|(n, v)| (n.to_owned(), v)),
                        0..4
                    )
                    .prop_map(G::Msg),
                    // Lists hold no lists: a nested one becomes a message of `value` fields.
                    prop::collection::vec(inner.prop_map(no_list), 0..3).prop_map(G::List),
                    entry(any_key()).prop_map(|e| G::Msg(vec![("parameters".into(), e)])),
                ]
            })
        }

        /// A top-level `parameters` occurrence: one entry, or a list of entries.
        fn parameters() -> impl Strategy<Value = G> {
            prop_oneof![
                entry(any_key()),
                prop::collection::vec(entry(any_key()), 1..4).prop_map(G::List),
            ]
        }

        fn config() -> impl Strategy<Value = (String, bool)> {
            let others = prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "name",
                        "backend",
                        "max_batch_size",
                        "input",
                        "optimization",
                        "model_repository_agents",
                    ]),
                    nested(),
                )
                    .prop_map(|(n, v)| (n.to_owned(), v)),
                0..5,
            );
            let params = prop::collection::vec((parameters(), any::<prop::sample::Index>()), 0..4);
            (others, params, any::<u64>(), any::<bool>()).prop_map(
                |(mut fields, params, seed, crlf)| {
                    for (p, at) in params {
                        let at = at.index(fields.len() + 1);
                        fields.insert(at, (PARAMETERS.to_owned(), p));
                    }
                    let mut w = Writer {
                        out: String::new(),
                        rng: Rng(seed),
                    };
                    if w.rng.chance(3) {
                        w.out.push_str("# generated config\n");
                    }
                    for (name, value) in &fields {
                        w.field(name, value);
                    }
                    match w.rng.below(3) {
                        0 => w.out.push('\n'),
                        1 => w.out.push_str("\n\n"),
                        _ => {}
                    }
                    let text = if crlf {
                        w.out.replace('\n', "\r\n")
                    } else {
                        w.out
                    };
                    (text, crlf)
                },
            )
        }

        fn without_key(entries: &[Plain]) -> Vec<Plain> {
            entries
                .iter()
                .filter(|e| !entry_has_key(e, KEY))
                .cloned()
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn set_parameter_edits_only_the_top_level_entry(
                (cfg, crlf) in config(),
                value in proptest::string::string_regex("[a-z$/\"'\\\\ \n\té.-]{0,16}").unwrap(),
            ) {
                let (others, entries) = split(&cfg);
                let out = set_parameter(&cfg, KEY, &value).unwrap();
                let (out_others, out_entries) = split(&out);
                prop_assert_eq!(get_parameter(&out, KEY).unwrap(), Some(value.clone()));
                prop_assert_eq!(count_key(&out, KEY), 1);
                prop_assert_eq!(&out_others, &others);
                prop_assert_eq!(without_key(&out_entries), without_key(&entries));
                if crlf && cfg.contains('\n') {
                    prop_assert!(!out.replace("\r\n", "").contains('\n'), "{:?}", out);
                }
                let twice = set_parameter(&out, KEY, &value).unwrap();
                prop_assert_eq!(&twice, &out);
            }
        }
    }
}
