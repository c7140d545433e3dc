//! Relocation of an extracted tree, as its own `conda-unpack` would do it, with the same byte
//! rewriting envpack uses when packing ([`crate::pack::relocate`]).
//!
//! - envpack: `share/envpack/relocations.json` lists `[path, "text"|"binary", room]`; the
//!   files hold the prefix in `share/envpack/location` (the archive placeholder, or the
//!   `--dest-prefix` the archive was packed for). The new prefix is the real path of the
//!   environment; `location` is then rewritten, so self-relocation has nothing left to do.
//!   A record `[path, "binary", room, held]` names a file that holds its own prefix `held`
//!   (an ELF file conda did not install, packed unchanged): it is relocated when the new
//!   prefix fits its `room`, and otherwise left as it is with a warning; its record is then
//!   updated to what it holds (see [`crate::pack::scripts`]).
//! - conda-pack: its `bin/conda-unpack` embeds `_prefix_records = [(path, placeholder,
//!   mode), ...]` as Python literals; each file holds its own placeholder. The new prefix is
//!   the absolute path of the environment (`os.path.abspath`, symlinks kept). conda-pack's
//!   files are left as its `conda-unpack` leaves them: nothing is added.
//!
//! Files are rewritten through a temporary file renamed over them (as envpack's
//! `conda-unpack` does), keeping their permission bits. A record whose path goes through a
//! symlink, or is not a regular file, is skipped: nothing is ever written outside the tree.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{Origin, UnpackError, extract::member_path};
use crate::pack::relocate::{self as bytes, Mode, Transform};
use crate::pack::scripts;
use crate::report::{Notice, SharedReporter, Stage};

/// Files larger than this are not relocation data envpack or conda-pack wrote.
const MAX_RECORDS_FILE: u64 = 256 << 20;

/// One file to rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    /// Relative path.
    pub path: String,
    /// The prefix the file holds.
    pub from: Vec<u8>,
    /// How it is rewritten.
    pub mode: Mode,
    /// Where the record is in envpack's `files` list, when it names the prefix its file
    /// holds: such a file is left unchanged, with a warning, when the new prefix does not fit.
    pub own: Option<usize>,
}

/// What was relocated.
pub(super) struct Relocation {
    pub origin: Origin,
    pub prefix: Option<String>,
    pub rewritten: u64,
}

/// Relocates the environment at `root` (inside the temporary tree) for the prefix
/// `dest_prefix`, or for where it will be once renamed into place (`final_real` for envpack,
/// `final_abs` for conda-pack).
pub(super) fn relocate(
    root: &Path,
    dest_prefix: Option<&str>,
    final_real: &Path,
    final_abs: &Path,
    reporter: &SharedReporter,
    warnings: &mut Vec<Notice>,
) -> Result<Relocation, UnpackError> {
    let pick = |p: &Path| {
        dest_prefix.map_or_else(
            || p.as_os_str().as_bytes().to_vec(),
            |d| d.trim_end_matches('/').as_bytes().to_vec(),
        )
    };
    if let Some(records) = envpack_records(root)? {
        let (old, records, doc) = records;
        let new = pick(final_real);
        let rewritten = if old == new {
            0
        } else {
            let done = rewrite_all(root, &records, &new, reporter, warnings)?;
            update_held(root, doc, &records, &done, &new)?;
            done.iter()
                .filter(|o| matches!(o, Outcome::Rewritten))
                .count() as u64
        };
        write_location(root, &new)?;
        return Ok(Relocation {
            origin: Origin::Envpack,
            prefix: Some(String::from_utf8_lossy(&new).into_owned()),
            rewritten,
        });
    }
    if let Some(records) = conda_pack_records(root)? {
        let new = pick(final_abs);
        let done = rewrite_all(root, &records, &new, reporter, warnings)?;
        let rewritten = done
            .iter()
            .filter(|o| matches!(o, Outcome::Rewritten))
            .count() as u64;
        return Ok(Relocation {
            origin: Origin::CondaPack,
            prefix: Some(String::from_utf8_lossy(&new).into_owned()),
            rewritten,
        });
    }
    if root.join("conda-meta").is_dir() {
        warnings.push(Notice::warning(
            "the archive holds no relocation records (envpack's share/envpack/relocations.json or conda-pack's bin/conda-unpack): extracted as it is",
        ));
    } else {
        warnings.push(Notice::warning(
            "the archive holds no conda environment (no conda-meta folder): extracted as it is",
        ));
    }
    Ok(Relocation {
        origin: Origin::Plain,
        prefix: None,
        rewritten: 0,
    })
}

/// Reads a regular file of the tree (never through a link), at most [`MAX_RECORDS_FILE`].
fn read_tree_file(root: &Path, rel: &str) -> Result<Option<Vec<u8>>, UnpackError> {
    let Some(path) = tree_file(root, rel) else {
        return Ok(None);
    };
    let read_err = |source| UnpackError::Read {
        path: path.clone(),
        source,
    };
    let mut data = Vec::new();
    File::open(&path)
        .map_err(read_err)?
        .take(MAX_RECORDS_FILE)
        .read_to_end(&mut data)
        .map_err(read_err)?;
    Ok(Some(data))
}

/// The path of `rel` when it is a regular file reached through real folders only.
pub(super) fn tree_file(root: &Path, rel: &str) -> Option<PathBuf> {
    let rel = member_path(rel.as_bytes()).ok().flatten()?;
    let mut sofar = root.to_path_buf();
    let mut components = rel.components().peekable();
    while let Some(c) = components.next() {
        sofar.push(c);
        let meta = std::fs::symlink_metadata(&sofar).ok()?;
        let ok = if components.peek().is_some() {
            meta.is_dir()
        } else {
            meta.file_type().is_file()
        };
        if !ok {
            return None;
        }
    }
    Some(sofar)
}

/// envpack's records, the prefix its files hold and the records' document, if this is an
/// envpack environment.
#[allow(clippy::type_complexity)]
fn envpack_records(
    root: &Path,
) -> Result<Option<(Vec<u8>, Vec<Record>, serde_json::Value)>, UnpackError> {
    let Some(data) = read_tree_file(root, scripts::RELOCATIONS)? else {
        return Ok(None);
    };
    let bad = |reason: String| UnpackError::RelocationData {
        file: scripts::RELOCATIONS.into(),
        reason,
    };
    let doc: serde_json::Value =
        serde_json::from_slice(&data).map_err(|e| bad(format!("not JSON: {e}")))?;
    let format = doc.get("envpack").and_then(serde_json::Value::as_u64);
    if format.is_some_and(|f| f != 1) {
        return Err(bad(format!(
            "format {} (this envpack understands format 1)",
            format.unwrap_or_default()
        )));
    }
    let files = doc
        .get("files")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| bad("no `files` list".into()))?;
    let location = read_tree_file(root, scripts::LOCATION)?
        .map(|l| scripts::location_value(&l).to_vec())
        .filter(|l| !l.is_empty());
    let old = location
        .or_else(|| {
            doc.get("prefix")
                .and_then(serde_json::Value::as_str)
                .filter(|p| !p.is_empty())
                .map(|p| p.as_bytes().to_vec())
        })
        .ok_or_else(|| bad("no prefix recorded (share/envpack/location is empty)".into()))?;
    let mut records = Vec::with_capacity(files.len());
    for (i, entry) in files.iter().enumerate() {
        let fields = entry.as_array().filter(|a| (2..=4).contains(&a.len()));
        let parsed = fields.and_then(|a| {
            let path = a[0].as_str()?;
            let padding = match a.get(2) {
                Some(r) => usize::try_from(r.as_u64()?).ok()?,
                None => 0,
            };
            // The prefix this file holds, when it is not the environment's location.
            let held = match a.get(3) {
                Some(h) => Some(h.as_str().filter(|h| !h.is_empty())?.as_bytes()),
                None => None,
            };
            let from = held.unwrap_or(&old);
            let mode = match a[1].as_str()? {
                "text" => Mode::Text,
                "binary" => Mode::Binary {
                    room: padding.max(from.len()),
                },
                _ => return None,
            };
            Some((path, mode, from.to_vec(), held.map(|_| i)))
        });
        let (path, mode, from, own) = parsed.ok_or_else(|| bad(format!("bad record {entry}")))?;
        if member_path(path.as_bytes()).ok().flatten().is_none() {
            return Err(bad(format!("unsafe path {path:?}")));
        }
        records.push(Record {
            path: path.to_string(),
            from,
            mode,
            own,
        });
    }
    Ok(Some((old, records, doc)))
}

/// conda-pack's records, if `bin/conda-unpack` is conda-pack's script.
fn conda_pack_records(root: &Path) -> Result<Option<Vec<Record>>, UnpackError> {
    let Some(script) = read_tree_file(root, "bin/conda-unpack")? else {
        return Ok(None);
    };
    let marker = b"\n_prefix_records = [";
    let Some(at) = memchr::memmem::find(&script, marker) else {
        return Ok(None);
    };
    let bad = |reason: String| UnpackError::RelocationData {
        file: "bin/conda-unpack".into(),
        reason,
    };
    let mut p = PyParser {
        s: &script,
        i: at + marker.len(),
    };
    let mut records = Vec::new();
    loop {
        p.skip_space();
        match p.peek() {
            Some(b']') => break,
            Some(b'(') => p.i += 1,
            _ => return Err(bad(format!("unexpected text at byte {}", p.i))),
        }
        let mut fields = Vec::with_capacity(3);
        for close in [b',', b',', b')'] {
            p.skip_space();
            fields.push(
                p.string()
                    .map_err(|e| bad(format!("{e} at byte {}", p.i)))?,
            );
            p.skip_space();
            if p.peek() != Some(close) {
                return Err(bad(format!("unexpected text at byte {}", p.i)));
            }
            p.i += 1;
        }
        p.skip_space();
        if p.peek() == Some(b',') {
            p.i += 1;
        }
        let [path, placeholder, mode]: [Vec<u8>; 3] =
            fields.try_into().expect("three fields were read");
        let path = String::from_utf8(path).map_err(|_| bad("a path that is not UTF-8".into()))?;
        if member_path(path.as_bytes()).ok().flatten().is_none() {
            return Err(bad(format!("unsafe path {path:?}")));
        }
        if placeholder.is_empty() {
            return Err(bad(format!("{path}: empty placeholder")));
        }
        let mode = match mode.as_slice() {
            b"text" => Mode::Text,
            // conda-pack refuses a new prefix longer than the placeholder.
            b"binary" => Mode::Binary {
                room: placeholder.len(),
            },
            other => {
                return Err(bad(format!(
                    "{path}: unknown mode {:?}",
                    String::from_utf8_lossy(other)
                )));
            }
        };
        records.push(Record {
            path,
            from: placeholder,
            mode,
            own: None,
        });
    }
    Ok(Some(records))
}

/// A reader of the Python literals conda-pack writes with `repr()`: strings in single or
/// double quotes with backslash escapes (`\\ \' \" \n \r \t \xhh \uhhhh \Uhhhhhhhh`);
/// surrogates `\udc80`-`\udcff` are the bytes of a non-UTF-8 path (`surrogateescape`).
struct PyParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl PyParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn hex(&mut self, n: usize) -> Result<u32, &'static str> {
        let digits = self.s.get(self.i..self.i + n).ok_or("truncated escape")?;
        let v = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .ok_or("bad escape")?;
        self.i += n;
        Ok(v)
    }

    fn string(&mut self) -> Result<Vec<u8>, &'static str> {
        let Some(quote @ (b'\'' | b'"')) = self.peek() else {
            return Err("expected a string");
        };
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let c = self.peek().ok_or("unterminated string")?;
            self.i += 1;
            if c == quote {
                return Ok(out);
            }
            if c == b'\n' {
                return Err("newline in a string");
            }
            if c != b'\\' {
                out.push(c);
                continue;
            }
            let e = self.peek().ok_or("unterminated string")?;
            self.i += 1;
            let code = match e {
                b'\\' | b'\'' | b'"' => {
                    out.push(e);
                    continue;
                }
                b'n' => u32::from(b'\n'),
                b'r' => u32::from(b'\r'),
                b't' => u32::from(b'\t'),
                b'x' => self.hex(2)?,
                b'u' => self.hex(4)?,
                b'U' => self.hex(8)?,
                _ => return Err("unknown escape"),
            };
            if (0xdc80..=0xdcff).contains(&code) {
                out.push(u8::try_from(code - 0xdc00).expect("in range"));
            } else {
                let ch = char::from_u32(code).ok_or("bad code point")?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

/// Rewrites every record (in parallel), returning what became of each.
fn rewrite_all(
    root: &Path,
    records: &[Record],
    new: &[u8],
    reporter: &SharedReporter,
    warnings: &mut Vec<Notice>,
) -> Result<Vec<Outcome>, UnpackError> {
    let results: Vec<Result<Outcome, UnpackError>> = super::stage(
        reporter,
        Stage::Relocate,
        Some(records.len() as u64),
        || {
            records
                .par_iter()
                .map(|r| {
                    let out = rewrite(root, r, new);
                    reporter.on_progress(Stage::Relocate, 1);
                    out
                })
                .collect()
        },
    );
    let mut outcomes = Vec::with_capacity(records.len());
    let mut skipped = Vec::new();
    for (r, outcome) in records.iter().zip(results) {
        let outcome = outcome?;
        match &outcome {
            Outcome::Rewritten | Outcome::Unchanged => {}
            Outcome::Skipped => skipped.push(r.path.as_str()),
            Outcome::Kept(why) => warnings.push(Notice::warning(format!(
                "{}: not relocated: {why}; it still names {}",
                r.path,
                String::from_utf8_lossy(&r.from)
            ))),
        }
        outcomes.push(outcome);
    }
    if !skipped.is_empty() {
        warnings.push(Notice::warning(format!(
            "{} recorded files are missing, not regular files, or below a symlink, and were not relocated: {}",
            skipped.len(),
            skipped.iter().take(5).copied().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(outcomes)
}

/// What became of one record's file.
enum Outcome {
    Rewritten,
    /// It does not hold its prefix.
    Unchanged,
    /// Missing, not a regular file, or below a symlink.
    Skipped,
    /// A file holding its own prefix that cannot take the new one; why.
    Kept(String),
}

/// Why a file whose record names its own prefix cannot take `new`, if it cannot before it is
/// read: the new prefix is longer than its room, or cannot be recorded.
fn unfit(r: &Record, new: &[u8]) -> Option<String> {
    r.own?;
    if std::str::from_utf8(new).is_err() {
        return Some("the new prefix is not UTF-8, and its record could not name it".into());
    }
    match r.mode {
        Mode::Binary { room } if new.len() > room => Some(format!(
            "it can hold a prefix of at most {room} characters, and the new one has {}",
            new.len()
        )),
        _ => None,
    }
}

/// Sets the prefix each rewritten file whose record names its own prefix now holds, in
/// `relocations.json` (written anew only when one changed).
fn update_held(
    root: &Path,
    mut doc: serde_json::Value,
    records: &[Record],
    outcomes: &[Outcome],
    new: &[u8],
) -> Result<(), UnpackError> {
    let Ok(new) = std::str::from_utf8(new) else {
        return Ok(());
    };
    let Some(files) = doc
        .get_mut("files")
        .and_then(serde_json::Value::as_array_mut)
    else {
        return Ok(());
    };
    let mut changed = false;
    for (r, outcome) in records.iter().zip(outcomes) {
        if let (Some(i), Outcome::Rewritten) = (r.own, outcome)
            && let Some(held) = files.get_mut(i).and_then(|e| e.get_mut(3))
            && held.as_str() != Some(new)
        {
            *held = serde_json::Value::String(new.to_string());
            changed = true;
        }
    }
    if !changed {
        return Ok(());
    }
    let mut data = serde_json::to_vec_pretty(&doc).expect("a JSON value");
    data.push(b'\n');
    replace_file(root, scripts::RELOCATIONS, &data, 0o644)
}

/// Rewrites one file through a temporary file beside it.
fn rewrite(root: &Path, r: &Record, new: &[u8]) -> Result<Outcome, UnpackError> {
    let Some(path) = tree_file(root, &r.path) else {
        return Ok(Outcome::Skipped);
    };
    let read_err = |source| UnpackError::Read {
        path: path.clone(),
        source,
    };
    let open = || {
        File::open(&path)
            .map(|f| BufReader::with_capacity(256 * 1024, f))
            .map_err(read_err)
    };
    let from = bytes::Needles::one(&r.from);
    if bytes::scan(open()?, &from).map_err(read_err)?.count == 0 {
        return Ok(Outcome::Unchanged);
    }
    if let Some(why) = unfit(r, new) {
        return Ok(Outcome::Kept(why));
    }
    let dir = path.parent().unwrap_or(root);
    let write_err = |source| UnpackError::Write {
        path: path.clone(),
        source,
    };
    let mode = std::fs::symlink_metadata(&path)
        .map_err(read_err)?
        .permissions()
        .mode();
    let mut tmp = tempfile::Builder::new()
        .prefix(".envpack-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(write_err)?;
    {
        let mut w = BufWriter::with_capacity(256 * 1024, tmp.as_file_mut());
        let t = Transform {
            mode: Some(r.mode),
            ..Transform::default()
        };
        match bytes::apply(open()?, &mut w, &t, &from, new) {
            Ok(_) => {}
            // The file does not have the layout its record describes: left as it is.
            Err(source) if source.kind() == std::io::ErrorKind::Other && r.own.is_some() => {
                return Ok(Outcome::Kept(source.to_string()));
            }
            Err(source) if source.kind() == std::io::ErrorKind::Other => {
                return Err(UnpackError::Relocate {
                    path: r.path.clone(),
                    prefix: String::from_utf8_lossy(new).into_owned(),
                    source,
                });
            }
            Err(source) => return Err(write_err(source)),
        }
        w.flush().map_err(write_err)?;
    }
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(write_err)?;
    tmp.persist(&path).map_err(|e| write_err(e.error))?;
    Ok(Outcome::Rewritten)
}

/// Records the environment's new location, and forgets any recorded failure: the
/// self-relocation hooks then have nothing to do.
fn write_location(root: &Path, new: &[u8]) -> Result<(), UnpackError> {
    replace_file(root, scripts::LOCATION, new, 0o644)?;
    let failed = root.join(scripts::DATA_DIR).join("failed");
    if std::fs::symlink_metadata(&failed).is_ok() {
        std::fs::remove_file(&failed).map_err(|source| UnpackError::Write {
            path: failed,
            source,
        })?;
    }
    Ok(())
}

/// Replaces `rel` (a file of envpack's data folder) with `data` through a temporary file
/// renamed over it, keeping its permission bits (`mode` for a new file).
fn replace_file(root: &Path, rel: &str, data: &[u8], mode: u32) -> Result<(), UnpackError> {
    let path = root.join(rel);
    let dir = path.parent().unwrap_or(root);
    let write_err = |source| UnpackError::Write {
        path: path.clone(),
        source,
    };
    let mode = std::fs::symlink_metadata(&path)
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map_or(mode, |m| m.permissions().mode() & 0o7777);
    // The folder was checked to be a real folder when relocations.json was read from it.
    let mut tmp = tempfile::Builder::new()
        .prefix(".envpack-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(write_err)?;
    tmp.write_all(data).map_err(write_err)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(write_err)?;
    tmp.persist(&path).map_err(|e| write_err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(script: &str) -> Result<Option<Vec<Record>>, UnpackError> {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("bin")).unwrap();
        std::fs::write(d.path().join("bin/conda-unpack"), script).unwrap();
        conda_pack_records(d.path())
    }

    #[test]
    fn conda_pack_records_are_read_from_its_script() {
        let script = "#!/usr/bin/env python\nimport os\n\n_prefix_records = [\n('bin/x', '/opt/ph', 'text'),\n(\"lib/it's\", '/opt/ph', 'binary'),\n('lib/caf\\xe9 \\udcff\\\\', '/p', 'text')\n]\n\nif __name__ == '__main__':\n    pass\n";
        // Not UTF-8 (a surrogate-escaped byte): refused, as its path could not be named.
        assert!(parse(script).is_err());
        let r = parse(&script.replace(" \\udcff", "")).unwrap().unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].path, "bin/x");
        assert_eq!(r[0].from, b"/opt/ph");
        assert_eq!(r[0].mode, Mode::Text);
        assert_eq!(r[1].path, "lib/it's");
        assert_eq!(r[1].mode, Mode::Binary { room: 7 });
        assert_eq!(r[2].path, "lib/caf\u{e9}\\");
        // Empty list, no list, hostile paths.
        assert!(
            parse("x\n_prefix_records = [\n\n]\n")
                .unwrap()
                .unwrap()
                .is_empty()
        );
        assert!(parse("#!/bin/sh\n# envpack's own\n").unwrap().is_none());
        assert!(parse("\n_prefix_records = [\n('../x', '/p', 'text')\n]").is_err());
        assert!(parse("\n_prefix_records = [\n('/etc/x', '/p', 'text')\n]").is_err());
        assert!(parse("\n_prefix_records = [\n('x', '/p', 'exec')\n]").is_err());
        assert!(parse("\n_prefix_records = [\n('x', '/p')\n]").is_err());
        assert!(parse("\n_prefix_records = [\n('x', '/p', 'text'").is_err());
    }

    #[test]
    fn records_below_symlinks_are_not_files_of_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("f"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("lib")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), d.path().join("g")).unwrap();
        std::fs::write(d.path().join("h"), "x").unwrap();
        assert!(tree_file(d.path(), "lib/f").is_none());
        assert!(tree_file(d.path(), "g").is_none());
        assert!(tree_file(d.path(), "../h").is_none());
        assert_eq!(tree_file(d.path(), "h"), Some(d.path().join("h")));
    }
}
