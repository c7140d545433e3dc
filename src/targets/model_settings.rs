//! Editor for `MLServer`'s `model-settings.json`.
//!
//! The `MLServer` target points a model at its packed environment through
//! `parameters.environment_tarball`. The file is validated with `serde_json`; a small scanner of
//! our own then finds the byte spans of the members, and the edit is a splice: key order,
//! indentation and every other byte of the file stay as they were.

use std::ops::Range;

use serde_json::Value;

const PARAMETERS: &str = "parameters";
const ENVIRONMENT_TARBALL: &str = "environment_tarball";

/// Errors of the `model-settings.json` editor.
#[derive(Debug, thiserror::Error)]
pub enum ModelSettingsError {
    /// The text is not valid JSON; `line` and `column` are 1-based.
    #[error("model-settings.json is not valid JSON (line {line}, column {column})")]
    InvalidJson {
        line: usize,
        column: usize,
        #[source]
        source: serde_json::Error,
    },
    /// The document is valid JSON but not an object.
    #[error("model-settings.json must hold a JSON object, not {found}")]
    NotAnObject { found: &'static str },
    /// `parameters` is neither an object nor `null`.
    #[error("\"parameters\" in model-settings.json must be an object, not {found}")]
    ParametersNotAnObject { found: &'static str },
    /// `parameters.environment_tarball` is neither a string nor `null`.
    #[error(
        "\"parameters.environment_tarball\" in model-settings.json must be a string, not {found}"
    )]
    TarballNotAString { found: &'static str },
}

/// The facts of a `model-settings.json` that checks need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelSettingsSummary {
    /// `name`, when it is a string.
    pub name: Option<String>,
    /// `implementation` (the Python path of the runtime class), when it is a string.
    pub implementation: Option<String>,
    /// `parameters.environment_tarball`.
    pub environment_tarball: Option<String>,
    /// `parallel_workers`, when it is an integer; `MLServer` ignores the tarball when it is 0.
    pub parallel_workers: Option<i64>,
}

/// Sets `parameters.environment_tarball` to `value`, creating `parameters` if absent (or
/// `null`), keeping key order, indentation style and everything else byte-identical.
///
/// # Errors
///
/// Invalid JSON, a document that is not an object, or `parameters` that is not an object.
pub fn set_environment_tarball(text: &str, value: &str) -> Result<String, ModelSettingsError> {
    let root_value = validate(text)?;
    parameters_of(&root_value)?;
    let root = Scanner {
        bytes: text.as_bytes(),
    }
    .document();
    let NodeKind::Object(members) = &root.kind else {
        return Ok(text.to_owned());
    };
    let style = Style::detect(text, &root, members);
    let value_text = Value::String(value.to_owned()).to_string();
    let key_text = Value::String(ENVIRONMENT_TARBALL.to_owned()).to_string();

    let edit = if let Some(params) = members.iter().rev().find(|m| m.key == PARAMETERS) {
        match &params.value.kind {
            NodeKind::Object(inner) => {
                if let Some(existing) = inner.iter().rev().find(|m| m.key == ENVIRONMENT_TARBALL) {
                    Edit {
                        range: existing.value.span.clone(),
                        text: value_text,
                    }
                } else {
                    let indent = member_indent(text, params);
                    insert_member(
                        text,
                        &style,
                        &params.value,
                        inner,
                        indent,
                        &key_text,
                        &value_text,
                    )
                }
            }
            // `null`: replace it with a fresh object.
            NodeKind::Other => Edit {
                range: params.value.span.clone(),
                text: style.object(member_indent(text, params), &key_text, &value_text),
            },
        }
    } else {
        // The new object is laid out like the root's members, a level deeper.
        let indent = match members.last() {
            Some(last) => member_indent(text, last),
            None => empty_object_indent(text, &root).map(|close| close + &style.unit),
        };
        let params_text = style.object(indent, &key_text, &value_text);
        let params_key = Value::String(PARAMETERS.to_owned()).to_string();
        insert_member(
            text,
            &style,
            &root,
            members,
            None,
            &params_key,
            &params_text,
        )
    };
    let mut out = String::with_capacity(text.len() + edit.text.len());
    out.push_str(&text[..edit.range.start]);
    out.push_str(&edit.text);
    out.push_str(&text[edit.range.end..]);
    Ok(out)
}

/// `parameters.environment_tarball`, if set (a `null` counts as unset).
///
/// # Errors
///
/// Invalid JSON, a document that is not an object, `parameters` that is not an object, or an
/// `environment_tarball` that is not a string.
#[cfg(test)]
pub fn environment_tarball(text: &str) -> Result<Option<String>, ModelSettingsError> {
    let root = validate(text)?;
    tarball_of(&root)
}

/// `name`, `implementation`, `parameters.environment_tarball` and `parallel_workers`.
///
/// # Errors
///
/// When the text is not valid JSON of the shape MLServer reads.
pub fn summary(text: &str) -> Result<ModelSettingsSummary, ModelSettingsError> {
    let root = validate(text)?;
    let environment_tarball = tarball_of(&root)?;
    let string = |key: &str| root.get(key).and_then(Value::as_str).map(str::to_owned);
    Ok(ModelSettingsSummary {
        name: string("name"),
        implementation: string("implementation"),
        environment_tarball,
        parallel_workers: root.get("parallel_workers").and_then(Value::as_i64),
    })
}

fn validate(text: &str) -> Result<Value, ModelSettingsError> {
    let value: Value =
        serde_json::from_str(text).map_err(|source| ModelSettingsError::InvalidJson {
            line: source.line(),
            column: source.column(),
            source,
        })?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(ModelSettingsError::NotAnObject {
            found: type_name(&value),
        })
    }
}

fn parameters_of(
    root: &Value,
) -> Result<Option<&serde_json::Map<String, Value>>, ModelSettingsError> {
    match root.get(PARAMETERS) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(ModelSettingsError::ParametersNotAnObject {
            found: type_name(other),
        }),
    }
}

fn tarball_of(root: &Value) -> Result<Option<String>, ModelSettingsError> {
    match parameters_of(root)?.and_then(|p| p.get(ENVIRONMENT_TARBALL)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ModelSettingsError::TarballNotAString {
            found: type_name(other),
        }),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------------
// Layout

/// Replace `range` of the original text with `text`.
struct Edit {
    range: Range<usize>,
    text: String,
}

/// How the document lays out its members, for text we generate.
struct Style {
    newline: &'static str,
    /// One level of indentation.
    unit: String,
    /// Between a key and its value, e.g. `": "` or `":"`.
    colon: String,
    /// Inside the braces of a single-line object, e.g. `" "` or `""`.
    pad: String,
}

impl Style {
    fn detect(text: &str, root: &Node, members: &[Member]) -> Style {
        let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
        let first = members.first();
        let colon = first.map_or_else(
            || ": ".to_owned(),
            |m| text[m.key_span.end..m.value.span.start].to_owned(),
        );
        let (unit, pad) = if let Some(m) = first {
            let gap = &text[m.gap_start..m.key_span.start];
            if let Some(nl) = gap.rfind('\n') {
                let indent = &gap[nl + 1..];
                let base = line_indent(text, root.span.start);
                let unit = indent.strip_prefix(base).unwrap_or(indent);
                let unit = if unit.is_empty() { "  " } else { unit };
                (unit.to_owned(), String::new())
            } else {
                ("  ".to_owned(), gap.to_owned())
            }
        } else {
            let inner = &text[root.span.start + 1..root.span.end - 1];
            let pad = if inner.is_empty() { "" } else { " " };
            ("  ".to_owned(), pad.to_owned())
        };
        Style {
            newline,
            unit,
            colon,
            pad,
        }
    }

    /// An object holding one member; multi-line when `indent` (that of the line holding the
    /// object's opening brace) is given.
    fn object(&self, indent: Option<String>, key: &str, value: &str) -> String {
        let Style {
            newline: nl,
            unit,
            colon,
            pad,
        } = self;
        match indent {
            Some(indent) => format!("{{{nl}{indent}{unit}{key}{colon}{value}{nl}{indent}}}"),
            None => format!("{{{pad}{key}{colon}{value}{pad}}}"),
        }
    }
}

/// Leading blanks of the line holding byte `pos`.
fn line_indent(text: &str, pos: usize) -> &str {
    let start = text[..pos].rfind('\n').map_or(0, |p| p + 1);
    let line = &text[start..];
    &line[..line.len() - line.trim_start_matches([' ', '\t']).len()]
}

/// The indentation of `member` when it starts its own line, `None` when it shares a line with
/// what precedes it (a single-line object).
fn member_indent(text: &str, member: &Member) -> Option<String> {
    let gap = &text[member.gap_start..member.key_span.start];
    gap.rfind('\n').map(|nl| gap[nl + 1..].to_owned())
}

/// For an empty object spanning several lines, the indentation of its closing brace.
fn empty_object_indent(text: &str, object: &Node) -> Option<String> {
    let inner = &text[object.span.start + 1..object.span.end - 1];
    inner.rfind('\n').map(|nl| inner[nl + 1..].to_owned())
}

/// Inserts `key: value` as the last member of `object`, after the layout of its other members.
/// An empty object whose braces share a line is laid out over several lines when `indent` (that
/// of the line holding its opening brace) is given, and kept on one line otherwise.
fn insert_member(
    text: &str,
    style: &Style,
    object: &Node,
    members: &[Member],
    indent: Option<String>,
    key: &str,
    value: &str,
) -> Edit {
    if let Some(last) = members.last() {
        let gap = &text[last.gap_start..last.key_span.start];
        let colon = &text[last.key_span.end..last.value.span.start];
        let gap = match gap.rfind('\n') {
            Some(nl) => format!("{}{}", style.newline, &gap[nl + 1..]),
            // The only member of a one-line object: its gap follows the brace, not a comma.
            None if members.len() == 1 && colon.ends_with(' ') => " ".to_owned(),
            None if members.len() == 1 => String::new(),
            None => gap.to_owned(),
        };
        let at = last.value.span.end;
        return Edit {
            range: at..at,
            text: format!(",{gap}{key}{colon}{value}"),
        };
    }
    // An empty object: rewrite what lies between its braces.
    let inner = object.span.start + 1..object.span.end - 1;
    let colon = &style.colon;
    let text = match (empty_object_indent(text, object), indent) {
        (Some(close), _) => {
            let nl = style.newline;
            format!("{nl}{close}{}{key}{colon}{value}{nl}{close}", style.unit)
        }
        (None, Some(indent)) => {
            let nl = style.newline;
            format!("{nl}{indent}{}{key}{colon}{value}{nl}{indent}", style.unit)
        }
        (None, None) => format!("{}{key}{colon}{value}{}", style.pad, style.pad),
    };
    Edit { range: inner, text }
}

// ---------------------------------------------------------------------------------------------
// Scanner

/// A JSON value and its byte span.
struct Node {
    span: Range<usize>,
    kind: NodeKind,
}

enum NodeKind {
    Object(Vec<Member>),
    /// Any other value: only its span matters.
    Other,
}

struct Member {
    /// Decoded key.
    key: String,
    key_span: Range<usize>,
    value: Node,
    /// Just after the `{` or `,` that precedes the member.
    gap_start: usize,
}

/// Finds spans in text that `serde_json` has already accepted, so it never fails; on other
/// input it returns meaningless spans but does not panic.
struct Scanner<'a> {
    bytes: &'a [u8],
}

impl Scanner<'_> {
    fn document(&self) -> Node {
        let start = self.skip_ws(0);
        self.value(start)
    }

    fn skip_ws(&self, mut i: usize) -> usize {
        while matches!(self.bytes.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            i += 1;
        }
        i
    }

    fn value(&self, start: usize) -> Node {
        match self.bytes.get(start) {
            Some(b'{') => self.object(start),
            Some(b'[') => self.array(start),
            Some(b'"') => Node {
                span: start..self.string_end(start),
                kind: NodeKind::Other,
            },
            _ => {
                let len = self.bytes[start.min(self.bytes.len())..]
                    .iter()
                    .position(|b| matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'))
                    .unwrap_or(self.bytes.len().saturating_sub(start));
                Node {
                    span: start..start + len,
                    kind: NodeKind::Other,
                }
            }
        }
    }

    /// End (exclusive) of the string starting at `start`.
    fn string_end(&self, start: usize) -> usize {
        let mut i = start + 1;
        while let Some(&b) = self.bytes.get(i) {
            match b {
                b'\\' => i += 2,
                b'"' => return i + 1,
                _ => i += 1,
            }
        }
        self.bytes.len()
    }

    fn object(&self, start: usize) -> Node {
        let mut members = Vec::new();
        let mut gap_start = start + 1;
        let mut i = self.skip_ws(gap_start);
        loop {
            match self.bytes.get(i) {
                Some(b'"') => {
                    let key_span = i..self.string_end(i);
                    let key = std::str::from_utf8(&self.bytes[key_span.clone()])
                        .ok()
                        .and_then(|raw| serde_json::from_str::<String>(raw).ok())
                        .unwrap_or_default();
                    i = self.skip_ws(key_span.end);
                    i = self.skip_ws(i + 1); // past ':'
                    let value = self.value(i);
                    i = self.skip_ws(value.span.end);
                    members.push(Member {
                        key,
                        key_span,
                        value,
                        gap_start,
                    });
                    if self.bytes.get(i) == Some(&b',') {
                        gap_start = i + 1;
                        i = self.skip_ws(gap_start);
                    }
                }
                Some(b'}') => {
                    return Node {
                        span: start..i + 1,
                        kind: NodeKind::Object(members),
                    };
                }
                _ => {
                    return Node {
                        span: start..i.min(self.bytes.len()),
                        kind: NodeKind::Object(members),
                    };
                }
            }
        }
    }

    fn array(&self, start: usize) -> Node {
        let mut i = self.skip_ws(start + 1);
        loop {
            match self.bytes.get(i) {
                Some(b']') => {
                    return Node {
                        span: start..i + 1,
                        kind: NodeKind::Other,
                    };
                }
                Some(b',') => i = self.skip_ws(i + 1),
                Some(_) => {
                    let end = self.value(i).span.end;
                    if end <= i {
                        return Node {
                            span: start..i,
                            kind: NodeKind::Other,
                        };
                    }
                    i = self.skip_ws(end);
                }
                None => {
                    return Node {
                        span: start..i,
                        kind: NodeKind::Other,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARBALL: &str = "./environment.tar.gz";

    fn set(text: &str, value: &str) -> String {
        set_environment_tarball(text, value).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn absent_parameters_are_added_with_sibling_indentation() {
        let text = "{\n  \"name\": \"modelA\",\n  \"implementation\": \"model.MyModel\"\n}\n";
        assert_eq!(
            set(text, TARBALL),
            "{\n  \"name\": \"modelA\",\n  \"implementation\": \"model.MyModel\",\n  \"parameters\": {\n    \"environment_tarball\": \"./environment.tar.gz\"\n  }\n}\n"
        );
    }

    #[test]
    fn empty_parameters_get_the_member() {
        let text = "{\n    \"name\": \"m\",\n    \"parameters\": {}\n}";
        assert_eq!(
            set(text, TARBALL),
            "{\n    \"name\": \"m\",\n    \"parameters\": {\n        \"environment_tarball\": \"./environment.tar.gz\"\n    }\n}"
        );
        let text = "{\"name\": \"m\", \"parameters\": { }}";
        assert_eq!(
            set(text, "x"),
            "{\"name\": \"m\", \"parameters\": {\"environment_tarball\": \"x\"}}"
        );
        let text = "{\n  \"parameters\": {\n  }\n}";
        assert_eq!(
            set(text, "x"),
            "{\n  \"parameters\": {\n    \"environment_tarball\": \"x\"\n  }\n}"
        );
    }

    #[test]
    fn null_parameters_become_an_object() {
        let text = "{\n  \"name\": \"m\",\n  \"parameters\": null\n}\n";
        assert_eq!(
            set(text, "x"),
            "{\n  \"name\": \"m\",\n  \"parameters\": {\n    \"environment_tarball\": \"x\"\n  }\n}\n"
        );
    }

    #[test]
    fn existing_value_is_replaced_in_place() {
        let text = "{ \"parameters\" : { \"environment_tarball\" :\"old.tar.gz\" , \"uri\": \"./m.joblib\" }, \"name\":\"m\" }";
        assert_eq!(
            set(text, TARBALL),
            text.replace("\"old.tar.gz\"", "\"./environment.tar.gz\"")
        );
        let text = "{\"parameters\": {\"environment_tarball\": null}}";
        assert_eq!(
            set(text, "x"),
            "{\"parameters\": {\"environment_tarball\": \"x\"}}"
        );
    }

    #[test]
    fn other_keys_keep_their_order() {
        let text = "{\n  \"z\": 1,\n  \"parameters\": {\n    \"uri\": \"./model.joblib\",\n    \"version\": \"v1\"\n  },\n  \"a\": [1, {\"b\": 2}],\n  \"name\": \"m\"\n}\n";
        let out = set(text, TARBALL);
        assert_eq!(
            out,
            "{\n  \"z\": 1,\n  \"parameters\": {\n    \"uri\": \"./model.joblib\",\n    \"version\": \"v1\",\n    \"environment_tarball\": \"./environment.tar.gz\"\n  },\n  \"a\": [1, {\"b\": 2}],\n  \"name\": \"m\"\n}\n"
        );
        let keys: Vec<String> = serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, ["z", "parameters", "a", "name"]);
    }

    #[test]
    fn four_spaces_and_tabs_are_matched() {
        let text = "{\n    \"name\": \"m\"\n}";
        assert_eq!(
            set(text, "x"),
            "{\n    \"name\": \"m\",\n    \"parameters\": {\n        \"environment_tarball\": \"x\"\n    }\n}"
        );
        let text = "{\n\t\"name\": \"m\",\n\t\"parameters\": {\n\t\t\"uri\": \"u\"\n\t}\n}\n";
        assert_eq!(
            set(text, "x"),
            "{\n\t\"name\": \"m\",\n\t\"parameters\": {\n\t\t\"uri\": \"u\",\n\t\t\"environment_tarball\": \"x\"\n\t}\n}\n"
        );
        let text = "{\n\t\"name\": \"m\"\n}";
        assert_eq!(
            set(text, "x"),
            "{\n\t\"name\": \"m\",\n\t\"parameters\": {\n\t\t\"environment_tarball\": \"x\"\n\t}\n}"
        );
    }

    #[test]
    fn minified_and_single_line_inputs_stay_on_one_line() {
        assert_eq!(
            set("{\"name\":\"m\"}", "x"),
            "{\"name\":\"m\",\"parameters\":{\"environment_tarball\":\"x\"}}"
        );
        assert_eq!(
            set("{ \"name\": \"m\", \"implementation\": \"a.B\" }", "x"),
            "{ \"name\": \"m\", \"implementation\": \"a.B\", \"parameters\": { \"environment_tarball\": \"x\" } }"
        );
        assert_eq!(
            set("{}", "x"),
            "{\"parameters\": {\"environment_tarball\": \"x\"}}"
        );
        assert_eq!(
            set(" { } ", "x"),
            " { \"parameters\": { \"environment_tarball\": \"x\" } } "
        );
        assert_eq!(
            set("{\n}\n", "x"),
            "{\n  \"parameters\": {\n    \"environment_tarball\": \"x\"\n  }\n}\n"
        );
    }

    #[test]
    fn crlf_line_endings_are_kept() {
        let text =
            "{\r\n  \"name\": \"m\",\r\n  \"parameters\": {\r\n    \"uri\": \"u\"\r\n  }\r\n}\r\n";
        let out = set(text, "x");
        assert_eq!(
            out,
            "{\r\n  \"name\": \"m\",\r\n  \"parameters\": {\r\n    \"uri\": \"u\",\r\n    \"environment_tarball\": \"x\"\r\n  }\r\n}\r\n"
        );
        let text = "{\r\n  \"name\": \"m\"\r\n}";
        let out = set(text, "x");
        assert!(!out.replace("\r\n", "").contains('\n'), "{out:?}");
    }

    #[test]
    fn escaped_value_and_keys_round_trip() {
        let value = "a \"quoted\" \\ path\n\u{1}é$$";
        let text = "{\"na\\u006de\": \"m\\\"\", \"param\\u0065ters\": {\"u\\\\\": 1}}";
        let out = set(text, value);
        assert_eq!(environment_tarball(&out).unwrap().as_deref(), Some(value));
        assert!(out.starts_with("{\"na\\u006de\": \"m\\\"\", \"param\\u0065ters\": {\"u\\\\\": 1, \"environment_tarball\": "));
        assert_eq!(summary(&out).unwrap().name.as_deref(), Some("m\""));
    }

    #[test]
    fn duplicate_keys_edit_the_effective_last_one() {
        let text = "{\"parameters\": 1, \"parameters\": {\"environment_tarball\": \"a\", \"environment_tarball\": \"b\"}}";
        let out = set(text, "x");
        assert_eq!(out, text.replace("\"b\"", "\"x\""));
        assert_eq!(environment_tarball(&out).unwrap().as_deref(), Some("x"));
    }

    #[test]
    fn invalid_json_names_line_and_column() {
        let err =
            set_environment_tarball("{\n  \"name\": \"m\",\n  \"x\": [1,, 2]\n}", "x").unwrap_err();
        let ModelSettingsError::InvalidJson { line, column, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!(line, 3);
        assert!(column > 1);
        assert!(err_text("{\"a\": 1,}").contains("line 1"));
    }

    fn err_text(text: &str) -> String {
        environment_tarball(text).unwrap_err().to_string()
    }

    #[test]
    fn wrong_types_are_reported() {
        assert!(matches!(
            set_environment_tarball("[1]", "x"),
            Err(ModelSettingsError::NotAnObject { found: "an array" })
        ));
        assert!(matches!(
            set_environment_tarball("{\"parameters\": []}", "x"),
            Err(ModelSettingsError::ParametersNotAnObject { found: "an array" })
        ));
        assert!(matches!(
            environment_tarball("{\"parameters\": {\"environment_tarball\": 3}}"),
            Err(ModelSettingsError::TarballNotAString { found: "a number" })
        ));
    }

    #[test]
    fn summary_reads_the_checked_fields() {
        let text = "{\"name\": \"m\", \"implementation\": \"mlserver_sklearn.SKLearnModel\", \"parallel_workers\": 0, \"parameters\": {\"environment_tarball\": \"./e.tar.gz\"}}";
        assert_eq!(
            summary(text).unwrap(),
            ModelSettingsSummary {
                name: Some("m".into()),
                implementation: Some("mlserver_sklearn.SKLearnModel".into()),
                environment_tarball: Some("./e.tar.gz".into()),
                parallel_workers: Some(0),
            }
        );
        assert_eq!(summary("{}").unwrap(), ModelSettingsSummary::default());
        assert_eq!(environment_tarball("{\"parameters\": null}").unwrap(), None);
    }

    mod generated {
        use super::*;
        use proptest::prelude::*;

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                Just(Value::from(0.5)),
                "[a-z \"\\\\/\n\u{1}é-]{0,8}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::vec((key(), inner), 0..4)
                        .prop_map(|members| Value::Object(members.into_iter().collect())),
                ]
            })
        }

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("name".to_owned()),
                Just(PARAMETERS.to_owned()),
                Just(ENVIRONMENT_TARBALL.to_owned()),
                "[a-z_\"\\\\é]{0,6}",
            ]
        }

        /// A model-settings object; `parameters` absent, null, or an object (perhaps holding
        /// the tarball already).
        fn settings() -> impl Strategy<Value = Value> {
            let params = prop_oneof![
                Just(None),
                Just(Some(Value::Null)),
                prop::collection::vec((key(), json()), 0..4)
                    .prop_map(|m| Some(Value::Object(m.into_iter().collect()))),
            ];
            (
                prop::collection::vec(
                    (key().prop_filter("top", |k| k != PARAMETERS), json()),
                    0..5,
                ),
                params,
                any::<prop::sample::Index>(),
            )
                .prop_map(|(members, params, at)| {
                    let mut members: Vec<(String, Value)> = members;
                    if let Some(params) = params {
                        let at = at.index(members.len() + 1);
                        members.insert(at, (PARAMETERS.to_owned(), params));
                    }
                    Value::Object(members.into_iter().collect())
                })
        }

        fn print(value: &Value, style: u8) -> String {
            let unit = match style {
                0 => return value.to_string(),
                1 => "  ",
                2 => "    ",
                _ => "\t",
            };
            // serde_json indents by two spaces; strings hold no raw newline, so lines can be
            // re-indented safely.
            let pretty = serde_json::to_string_pretty(value).unwrap();
            let lines: Vec<String> = pretty
                .lines()
                .map(|line| {
                    let body = line.trim_start_matches(' ');
                    unit.repeat((line.len() - body.len()) / 2) + body
                })
                .collect();
            lines.join("\n")
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn set_environment_tarball_changes_only_that_value(
                doc in settings(),
                style in 0..4u8,
                crlf in any::<bool>(),
                newline_at_end in any::<bool>(),
                value in "[a-z./$\"\\\\ \n\té-]{0,16}",
            ) {
                let mut text = print(&doc, style);
                if newline_at_end {
                    text.push('\n');
                }
                if crlf {
                    text = text.replace('\n', "\r\n");
                }
                let out = set_environment_tarball(&text, &value).unwrap();
                let parsed: Value = serde_json::from_str(&out).unwrap();
                let mut expected = doc.clone();
                let root = expected.as_object_mut().unwrap();
                let params = root.entry(PARAMETERS).or_insert(Value::Null);
                if params.is_null() {
                    *params = Value::Object(serde_json::Map::new());
                }
                params
                    .as_object_mut()
                    .unwrap()
                    .insert(ENVIRONMENT_TARBALL.to_owned(), Value::String(value.clone()));
                // Equal in order too: compare serialisations.
                prop_assert_eq!(parsed.to_string(), expected.to_string());
                prop_assert_eq!(environment_tarball(&out).unwrap(), Some(value.clone()));
                // Where the input is serde's own layout, so is the output.
                if !doc.as_object().unwrap().is_empty() {
                    let mut printed = print(&expected, style);
                    if newline_at_end {
                        printed.push('\n');
                    }
                    if crlf {
                        printed = printed.replace('\n', "\r\n");
                    }
                    prop_assert_eq!(&out, &printed);
                }
                prop_assert_eq!(set_environment_tarball(&out, &value).unwrap(), out);
            }
        }
    }
}
