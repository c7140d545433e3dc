//! Relocate: rewrite the paths a prefix embeds, as bytes stream into the archive.
//!
//! Files installed into the staging prefix hold its path (text files anywhere, binary files
//! inside NUL-terminated C strings). While packing, each is rewritten to hold the archive
//! prefix instead, so the archive does not depend on where it was built; `bin/` shebangs
//! become location-independent; `conda-meta` records lose their build-machine paths.
//! Everything here streams with a bounded buffer.

use std::cell::RefCell;
use std::io::{self, Read, Write};

use memchr::memmem;

use crate::channels::UrlRewrites;

/// How one file's occurrences of the prefix are rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// Every occurrence, as bytes; the file changes length.
    Text,
    /// Inside C strings, length kept. `room` is the length of the placeholder the file was
    /// built with: a string may grow into the NUL padding that placeholder left.
    Binary {
        /// Original placeholder length.
        room: usize,
    },
}

/// What to do to one file's bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transform {
    /// Replace `from` by `to` in this mode, if the file holds `from`.
    pub mode: Option<Mode>,
    /// A new first line (with its newline) replacing the file's first line.
    pub shebang: Option<Vec<u8>>,
    /// What the file holds in place of `from`, when it is not the plan's source prefix: the
    /// package's own placeholder, for a file read straight from the package cache.
    pub placeholder: Option<Vec<u8>>,
}

/// The result of scanning one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Occurrences of the needles.
    pub count: u64,
    /// Their total length.
    pub matched: u64,
    /// The longest needle found (0 when none is).
    pub longest: usize,
    /// Whether the whole file is valid UTF-8 (conda-pack's text test).
    pub utf8: bool,
    /// The first line (without newline) when the file starts with `#!`, up to 4 KiB.
    pub shebang: Option<Vec<u8>>,
    /// The length of that first line with its newline, when it ends within 4 KiB (or is the
    /// whole file).
    pub first_line: Option<u64>,
    /// Whether any of the extra needles given to [`scan_with`] occurs.
    pub other: bool,
}

const CHUNK: usize = 256 * 1024;
/// Longest C string we follow while looking for its terminator.
const MAX_CSTRING: usize = 16 * 1024 * 1024;

/// The prefixes a file may hold, every one of them replaced by the same new prefix: the
/// prefix's own path, and where an earlier envpack output left it (its `location`, or the
/// archive placeholder in a `--format dir` output that was never activated).
#[derive(Debug, Clone)]
pub struct Needles {
    list: Vec<Vec<u8>>,
    search: Search,
}

#[derive(Debug, Clone)]
enum Search {
    /// One needle: memchr's memmem, as fast as a single prefix always was.
    One(Box<memmem::Finder<'static>>),
    /// Several: one aho-corasick pass.
    Many(aho_corasick::AhoCorasick),
}

impl Needles {
    /// One prefix.
    #[must_use]
    pub fn one(needle: &[u8]) -> Self {
        Self::new([needle])
    }

    /// Several prefixes (empty ones and repeats dropped; the first is the main one). Where
    /// two start at the same byte, the longer wins.
    ///
    /// # Panics
    /// When every needle is empty.
    pub fn new<'a>(needles: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut list: Vec<Vec<u8>> = Vec::new();
        for n in needles {
            if !n.is_empty() && !list.iter().any(|l| l == n) {
                list.push(n.to_vec());
            }
        }
        assert!(!list.is_empty(), "a prefix to look for");
        let search = if list.len() == 1 {
            Search::One(Box::new(memmem::Finder::new(&list[0]).into_owned()))
        } else {
            Search::Many(
                aho_corasick::AhoCorasick::builder()
                    .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                    .build(&list)
                    .expect("a few short needles"),
            )
        };
        Self { list, search }
    }

    /// The needles, the main one first.
    #[must_use]
    pub fn list(&self) -> &[Vec<u8>] {
        &self.list
    }

    /// The main needle.
    #[must_use]
    pub fn first(&self) -> &[u8] {
        &self.list[0]
    }

    /// The longest needle's length.
    #[must_use]
    pub fn max_len(&self) -> usize {
        self.list.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// The shortest needle's length.
    #[must_use]
    pub fn min_len(&self) -> usize {
        self.list.iter().map(Vec::len).min().unwrap_or(0)
    }

    /// The first occurrence in `hay`: (start, length).
    #[must_use]
    pub fn find(&self, hay: &[u8]) -> Option<(usize, usize)> {
        match &self.search {
            Search::One(f) => f.find(hay).map(|i| (i, self.list[0].len())),
            Search::Many(ac) => ac.find(hay).map(|m| (m.start(), m.len())),
        }
    }

    /// The occurrences in `hay` and their total length.
    #[must_use]
    pub fn count(&self, hay: &[u8]) -> (u64, u64) {
        let (mut n, mut bytes, mut pos) = (0u64, 0u64, 0usize);
        while let Some((i, len)) = self.find(&hay[pos..]) {
            n += 1;
            bytes += len as u64;
            pos += i + len;
        }
        (n, bytes)
    }

    /// `hay` with every occurrence replaced by `to`, and the padding the installer left
    /// after a string holding those occurrences (`room - len` each, `room` being the
    /// placeholder's length).
    fn replace_counting(&self, hay: &[u8], to: &[u8], room: usize) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(hay.len());
        let mut pos = 0;
        let mut padding = 0;
        while let Some((i, len)) = self.find(&hay[pos..]) {
            out.extend_from_slice(&hay[pos..pos + i]);
            out.extend_from_slice(to);
            padding += room.saturating_sub(len);
            pos += i + len;
        }
        out.extend_from_slice(&hay[pos..]);
        (out, padding)
    }

    /// `hay` with every occurrence replaced by `to`.
    #[must_use]
    pub fn replace_all(&self, hay: &[u8], to: &[u8]) -> Vec<u8> {
        self.replace_counting(hay, to, 0).0
    }

    /// What follows the needle `s` starts with, if any (the longest).
    #[must_use]
    pub fn strip_prefix<'s>(&self, s: &'s [u8]) -> Option<&'s [u8]> {
        self.list
            .iter()
            .filter(|n| s.starts_with(n))
            .max_by_key(|n| n.len())
            .map(|n| &s[n.len()..])
    }
}

/// Counts `needles` in a stream and checks it for UTF-8, reading it once.
pub fn scan(reader: impl Read, needles: &Needles) -> io::Result<Scan> {
    scan_with(reader, needles, &[])
}

/// [`scan`], also telling whether any of `others` occurs, in the same read.
pub fn scan_with(mut reader: impl Read, needles: &Needles, others: &[Vec<u8>]) -> io::Result<Scan> {
    let max = needles.max_len();
    let longest = others.iter().map(Vec::len).fold(max, usize::max);
    // One buffer per thread, reused from file to file: zeroing a fresh one for each of an
    // environment's ten thousand files was a fifth of the scan.
    let mut buf = SCAN_BUFFER.with(RefCell::take);
    if buf.len() < CHUNK + longest {
        buf.resize(CHUNK + longest, 0);
    }
    let result = scan_into(&mut reader, needles, others, (max, longest), &mut buf);
    SCAN_BUFFER.with(|b| b.replace(buf));
    result
}

thread_local! {
    static SCAN_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// [`scan_with`] in `buf` (at least `CHUNK + longest` bytes; what it holds is overwritten).
fn scan_into(
    reader: &mut impl Read,
    needles: &Needles,
    others: &[Vec<u8>],
    (max, longest): (usize, usize),
    buf: &mut [u8],
) -> io::Result<Scan> {
    let mut carry = 0usize; // bytes kept from the previous chunk
    let mut skip = 0usize; // where the next search for `needle` starts
    let mut utf8_tail: Vec<u8> = Vec::new();
    let mut result = Scan {
        utf8: true,
        ..Scan::default()
    };
    let mut first = true;
    loop {
        let n = read_full(reader, &mut buf[carry..carry + CHUNK])?;
        let len = carry + n;
        if first {
            first = false;
            if buf[..len].starts_with(b"#!") {
                let head = len.min(4096);
                let newline = memchr::memchr(b'\n', &buf[..head]);
                let end = newline.unwrap_or(head);
                result.shebang = Some(buf[..end].to_vec());
                result.first_line = match newline {
                    Some(i) => Some(i as u64 + 1),
                    // The whole file is its first line.
                    None if n < CHUNK && len <= 4096 => Some(len as u64),
                    None => None,
                };
            }
        }
        // Occurrences that start in this window, before its last max-1 bytes unless at the
        // end (there, a longer needle may need the next bytes).
        let limit = if n == 0 {
            len
        } else {
            len.saturating_sub(max - 1)
        };
        let mut from = skip.min(len);
        while let Some((i, l)) = needles.find(&buf[from..len]) {
            if from + i >= limit {
                break;
            }
            result.count += 1;
            result.matched += l as u64;
            result.longest = result.longest.max(l);
            from += i + l;
        }
        if !result.other {
            result.other = others
                .iter()
                .any(|o| !o.is_empty() && memmem::find(&buf[..len], o).is_some());
        }
        if result.utf8 && utf8_tail.is_empty() {
            // Checked in place; only a character cut by the chunk's end is kept for the next.
            match std::str::from_utf8(&buf[carry..len]) {
                Ok(_) => {}
                Err(e) if e.error_len().is_none() && n > 0 => {
                    utf8_tail.extend_from_slice(&buf[carry + e.valid_up_to()..len]);
                }
                Err(_) => result.utf8 = false,
            }
        } else if result.utf8 {
            utf8_tail.extend_from_slice(&buf[carry..len]);
            match std::str::from_utf8(&utf8_tail) {
                Ok(_) => utf8_tail.clear(),
                Err(e) if e.error_len().is_none() && n > 0 => {
                    let keep = utf8_tail.split_off(e.valid_up_to());
                    utf8_tail = keep;
                }
                Err(_) => result.utf8 = false,
            }
        }
        if n == 0 {
            break;
        }
        // Keep the last longest-1 bytes: a match of any needle may straddle into the next
        // chunk; the next search starts after the last match, and not before `limit`.
        let keep = longest.saturating_sub(1).min(len);
        buf.copy_within(len - keep..len, 0);
        skip = from.max(limit).saturating_sub(len - keep);
        carry = keep;
    }
    Ok(result)
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Applies `t`, replacing each of `from` by `to`, from `reader` to `writer`. Returns bytes
/// written.
pub fn apply(
    mut reader: impl Read,
    writer: &mut impl Write,
    t: &Transform,
    from: &Needles,
    to: &[u8],
) -> io::Result<u64> {
    let placeholder = t.placeholder.as_deref().map(Needles::one);
    let from = placeholder.as_ref().unwrap_or(from);
    let mut written = 0u64;
    if let Some(line) = &t.shebang {
        // Skip the old first line.
        let mut byte = [0u8; 1];
        loop {
            if reader.read(&mut byte)? == 0 || byte[0] == b'\n' {
                break;
            }
        }
        writer.write_all(line)?;
        written += line.len() as u64;
    }
    match t.mode {
        None => written += io::copy(&mut reader, writer)?,
        Some(Mode::Text) => written += replace_text(reader, writer, from, to)?,
        Some(Mode::Binary { room }) => written += replace_binary(reader, writer, from, to, room)?,
    }
    Ok(written)
}

/// Replaces every occurrence, streaming.
fn replace_text(
    mut reader: impl Read,
    writer: &mut impl Write,
    from: &Needles,
    to: &[u8],
) -> io::Result<u64> {
    let max = from.max_len();
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + max);
    let mut written = 0u64;
    let mut eof = false;
    while !eof {
        let start = buf.len();
        buf.resize(start + CHUNK, 0);
        let n = read_full(&mut reader, &mut buf[start..])?;
        buf.truncate(start + n);
        eof = n == 0;
        let search_end = if eof {
            buf.len()
        } else {
            buf.len().saturating_sub(max - 1)
        };
        let mut pos = 0;
        while let Some((i, len)) = from.find(&buf[pos..]) {
            let at = pos + i;
            if at >= search_end {
                break;
            }
            writer.write_all(&buf[pos..at])?;
            writer.write_all(to)?;
            written += (at - pos + to.len()) as u64;
            pos = at + len;
        }
        let flush_to = search_end.max(pos);
        writer.write_all(&buf[pos..flush_to])?;
        written += (flush_to - pos) as u64;
        buf.drain(..flush_to);
    }
    Ok(written)
}

/// Replaces occurrences inside C strings keeping the length: a string that shrinks is padded
/// with NULs before its terminator; one that grows uses the NULs its placeholder left
/// (`room`: the placeholder's length), which must really be NULs.
fn replace_binary(
    mut reader: impl Read,
    writer: &mut impl Write,
    from: &Needles,
    to: &[u8],
    room: usize,
) -> io::Result<u64> {
    let max = from.max_len();
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    let mut eof = false;
    let mut written = 0u64;
    let fill = |buf: &mut Vec<u8>, reader: &mut dyn Read| -> io::Result<bool> {
        let start = buf.len();
        buf.resize(start + CHUNK, 0);
        let mut r = reader;
        let n = read_full(&mut r, &mut buf[start..])?;
        buf.truncate(start + n);
        Ok(n == 0)
    };
    loop {
        // An occurrence near the end of what is read may be the start of a longer needle.
        let found = from
            .find(&buf[pos..])
            .filter(|&(i, _)| eof || pos + i + max <= buf.len());
        if let Some((i, len)) = found {
            let at = pos + i;
            // Find the terminator, reading on if needed.
            let nul = loop {
                if let Some(n) = memchr::memchr(0, &buf[at + len..]) {
                    break at + len + n;
                }
                if eof {
                    break buf.len();
                }
                if buf.len() - at > MAX_CSTRING {
                    return Err(io::Error::other(
                        "a string holding the prefix has no terminator within 16 MiB",
                    ));
                }
                eof = fill(&mut buf, &mut reader)?;
            };
            let segment = &buf[at..nul];
            let (replaced, allowed) = from.replace_counting(segment, to, room);
            let region_end = if replaced.len() > segment.len() {
                let grow = replaced.len() - segment.len();
                if grow > allowed {
                    return Err(io::Error::other(format!(
                        "the new prefix ({} bytes) is longer than this binary file's placeholder allows ({room} bytes)",
                        to.len()
                    )));
                }
                while buf.len() < nul + 1 + grow && !eof {
                    eof = fill(&mut buf, &mut reader)?;
                }
                let end = nul + 1 + grow;
                if end > buf.len() || buf[nul..end].iter().any(|&b| b != 0) {
                    return Err(io::Error::other(
                        "no room to grow a string holding the prefix (the bytes after it are not padding)",
                    ));
                }
                end
            } else {
                (nul + 1).min(buf.len())
            };
            writer.write_all(&buf[pos..at])?;
            writer.write_all(&replaced)?;
            let pad = region_end - at - replaced.len();
            writer.write_all(&vec![0u8; pad])?;
            written += (region_end - pos) as u64;
            pos = region_end;
        } else {
            let keep = if eof { 0 } else { max - 1 };
            let end = buf.len().saturating_sub(keep).max(pos);
            writer.write_all(&buf[pos..end])?;
            written += (end - pos) as u64;
            pos = end;
            if eof {
                break;
            }
            buf.drain(..pos);
            pos = 0;
            eof = fill(&mut buf, &mut reader)?;
        }
    }
    Ok(written)
}

/// A location-independent first line for a `bin/` script whose shebang points into `prefix`
/// (`#!<prefix>/bin/<exe> [args]`), or `None` when it points elsewhere.
///
/// Python scripts get a `/bin/sh` trampoline that runs the interpreter next to the script
/// (with its arguments, which `env` would get as one word on Linux): run by path, an entry
/// point uses its own environment's Python whatever `PATH` holds, where conda-pack's
/// `#!/usr/bin/env python3.11` runs the first `python3.11` on `PATH`. Other interpreters get
/// conda-pack's `#!/usr/bin/env <exe>`, or `env -S` when they have arguments.
#[must_use]
pub fn shebang_for(line: &[u8], prefix: &Needles) -> Option<Vec<u8>> {
    let rest = line.strip_prefix(b"#!")?;
    let rest = rest.trim_ascii_start();
    let after = prefix.strip_prefix(rest)?.strip_prefix(b"/bin/")?;
    let text = std::str::from_utf8(after)
        .ok()?
        .trim_end_matches('\r')
        .trim_end();
    let (exe, args) = match text.split_once([' ', '\t']) {
        Some((e, a)) => (e, a.trim()),
        None => (text, ""),
    };
    if exe.is_empty() || exe.contains('/') {
        return None;
    }
    Some(
        if exe.starts_with("python") {
            python_trampoline(exe, args)
        } else if args.is_empty() {
            format!("#!/usr/bin/env {exe}\n")
        } else {
            format!("#!/usr/bin/env -S {exe} {args}\n")
        }
        .into_bytes(),
    )
}

/// The first lines of a Python script that runs the interpreter `exe` next to the script
/// (symlinks to the script resolved when `readlink` is there), whatever PATH holds and wherever
/// the environment is: valid sh, and a string literal for Python.
#[must_use]
pub fn python_trampoline(exe: &str, args: &str) -> String {
    let args = if args.is_empty() {
        String::new()
    } else {
        format!(" {args}")
    };
    format!(
        "#!/bin/sh\n'''true';p=$(readlink -f -- \"$0\" 2>/dev/null)||p=$0;case $p in */*);;*)p=./$p;;esac;exec \"${{p%/*}}/{exe}\"{args} \"$0\" \"$@\"\n' '''\n"
    )
}

/// A `conda-meta` record without build-machine paths: `extracted_package_dir`,
/// `package_tarball_full_path` and `link.source` emptied (as conda-pack does), URLs of
/// mirrors mapped back to their canonical channels, and `from` replaced by `to`.
pub fn scrub_record(
    json: &[u8],
    rewrites: &UrlRewrites,
    link_type: Option<rattler_conda_types::prefix_record::LinkType>,
    from: &Needles,
    to: &str,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut v: serde_json::Value = serde_json::from_slice(json)?;
    if let Some(obj) = v.as_object_mut() {
        for key in ["extracted_package_dir", "package_tarball_full_path"] {
            if obj.contains_key(key) {
                obj.insert(key.into(), serde_json::Value::String(String::new()));
            }
        }
        if let Some(link) = obj.get_mut("link").and_then(|l| l.as_object_mut())
            && link.contains_key("source")
        {
            link.insert("source".into(), serde_json::Value::String(String::new()));
            if let Some(t) = link_type {
                link.insert("type".into(), serde_json::json!(t as u8));
            }
        }
        // What the installer measured in the staging prefix depends on its path; the files
        // change again whenever the environment moves.
        if let Some(paths) = obj
            .get_mut("paths_data")
            .and_then(|p| p.get_mut("paths"))
            .and_then(|p| p.as_array_mut())
        {
            for entry in paths.iter_mut().filter_map(|e| e.as_object_mut()) {
                entry.remove("sha256_in_prefix");
                let generated = entry
                    .get("path_type")
                    .and_then(|t| t.as_str())
                    .is_some_and(|t| t.contains("entry_point"));
                if generated {
                    // Written by the installer with the prefix inside: no stable hash.
                    entry.remove("sha256");
                }
                if generated || entry.contains_key("prefix_placeholder") {
                    entry.remove("size_in_bytes");
                }
            }
        }
        for key in ["url", "channel"] {
            if let Some(serde_json::Value::String(s)) = obj.get_mut(key)
                && let Some(canonical) = rewrites.apply(s)
            {
                *s = canonical;
            }
        }
    }
    let mut out = serde_json::to_vec_pretty(&v)?;
    out.push(b'\n');
    if from.find(&out).is_some() {
        out = from.replace_all(&out, to.as_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], t: &Transform, from: &str, to: &str) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let n = apply(
            input,
            &mut out,
            t,
            &Needles::one(from.as_bytes()),
            to.as_bytes(),
        )?;
        assert_eq!(n, out.len() as u64);
        Ok(out)
    }

    /// A binary blob as rattler's installer leaves it: `placeholder` (length `room`) replaced
    /// by `prefix` in a C string, NULs before the terminator.
    fn installed_cstring(prefix: &str, suffix: &str, k: usize, room: usize) -> Vec<u8> {
        let mut s = Vec::new();
        for _ in 0..k {
            s.extend_from_slice(prefix.as_bytes());
            s.extend_from_slice(suffix.as_bytes());
        }
        s.extend(std::iter::repeat_n(0u8, k * (room - prefix.len()) + 1));
        s
    }

    #[test]
    fn text_replacement_streams_across_chunks() {
        let from = "/staging/prefix";
        let mut input = vec![b'x'; CHUNK - 5];
        input.extend_from_slice(from.as_bytes()); // straddles the first chunk boundary
        input.extend_from_slice(b" and ");
        input.extend_from_slice(from.as_bytes());
        let out = run(
            &input,
            &Transform {
                mode: Some(Mode::Text),
                shebang: None,
                placeholder: None,
            },
            from,
            "/A",
        )
        .unwrap();
        let mut expect = vec![b'x'; CHUNK - 5];
        expect.extend_from_slice(b"/A and /A");
        assert_eq!(out, expect);
        let s = scan(&input[..], &Needles::one(from.as_bytes())).unwrap();
        assert_eq!(s.count, 2);
        assert!(s.utf8);
    }

    #[test]
    fn binary_replacement_keeps_length_and_pads_before_terminator() {
        let from = "/home/user/build/staging-prefix-1234";
        let mut input = b"\x7fELF\0head\0".to_vec();
        let blob = installed_cstring(from, "/lib:", 2, 255);
        input.extend_from_slice(&blob);
        input.extend_from_slice(b"tail\0");
        let t = Transform {
            mode: Some(Mode::Binary { room: 255 }),
            shebang: None,
            placeholder: None,
        };
        let out = run(&input, &t, from, "/A").unwrap();
        assert_eq!(out.len(), input.len());
        let start = 10;
        let s = &out[start..];
        let end = s.iter().position(|&b| b == 0).unwrap();
        assert_eq!(&s[..end], b"/A/lib:/A/lib:");
        assert!(out.ends_with(b"tail\0"));
        // And back to a prefix longer than the staging one, using the placeholder's room.
        let long = format!("/{}", "l".repeat(200));
        let back = run(&out, &t, "/A", &long).unwrap();
        assert_eq!(back.len(), input.len());
        let s = &back[start..];
        let end = s.iter().position(|&b| b == 0).unwrap();
        assert_eq!(
            s[..end].to_vec(),
            format!("{long}/lib:{long}/lib:").into_bytes()
        );
        assert!(back.ends_with(b"tail\0"));
    }

    #[test]
    fn binary_growth_beyond_room_is_an_error() {
        let input = installed_cstring("/short", "/x", 1, 40);
        let t = Transform {
            mode: Some(Mode::Binary { room: 40 }),
            shebang: None,
            placeholder: None,
        };
        assert!(run(&input, &t, "/short", &"/y".repeat(30)).is_err());
        // Room without padding behind it (an unmanaged file: room = current length).
        let mut input = b"/short/x\0data".to_vec();
        input.push(0);
        assert!(
            run(
                &input,
                &Transform {
                    mode: Some(Mode::Binary { room: 6 }),
                    shebang: None,
                    placeholder: None,
                },
                "/short",
                "/longer"
            )
            .is_err()
        );
    }

    #[test]
    fn several_prefixes_are_each_replaced_streaming_and_in_c_strings() {
        let stage = b"/stage/env".as_slice();
        let ph = b"/__envpack_placeholder_prefix__".as_slice();
        let needles = Needles::new([stage, ph, stage, b"".as_slice()]);
        assert_eq!(needles.list().len(), 2);
        // Text, with an occurrence of the longer needle straddling the chunk boundary.
        let mut input = vec![b'x'; CHUNK - 10];
        input.extend_from_slice(ph);
        input.extend_from_slice(b" ");
        input.extend_from_slice(stage);
        let mut out = Vec::new();
        let t = Transform {
            mode: Some(Mode::Text),
            ..Transform::default()
        };
        apply(&input[..], &mut out, &t, &needles, b"/new").unwrap();
        let mut expect = vec![b'x'; CHUNK - 10];
        expect.extend_from_slice(b"/new /new");
        assert_eq!(out, expect);
        let s = scan(&input[..], &needles).unwrap();
        assert_eq!(
            (s.count, s.matched, s.longest),
            (2, (ph.len() + stage.len()) as u64, ph.len())
        );
        // Binary: both in one C string, each with the padding its placeholder (255) left.
        let mut s = Vec::new();
        s.extend_from_slice(ph);
        s.extend_from_slice(b":");
        s.extend_from_slice(stage);
        s.extend(std::iter::repeat_n(
            0u8,
            (255 - ph.len()) + (255 - stage.len()) + 1,
        ));
        s.extend_from_slice(b"tail\0");
        let long = format!("/{}", "l".repeat(100));
        let mut out = Vec::new();
        let t = Transform {
            mode: Some(Mode::Binary { room: 255 }),
            ..Transform::default()
        };
        apply(&s[..], &mut out, &t, &needles, long.as_bytes()).unwrap();
        assert_eq!(out.len(), s.len());
        assert!(out.starts_with(format!("{long}:{long}\0").as_bytes()));
        assert!(out.ends_with(b"\0tail\0"));
        // Where one needle starts another, the longer wins.
        let n = Needles::new([b"/a/env".as_slice(), b"/a/env-old".as_slice()]);
        assert_eq!(n.replace_all(b"/a/env-old/x /a/env/y", b"/N"), b"/N/x /N/y");
        assert_eq!(n.strip_prefix(b"/a/env-old/bin"), Some(&b"/bin"[..]));
        assert_eq!(n.count(b"/a/env-old/x /a/env/y"), (2, 16));
    }

    #[test]
    fn shebangs_become_location_independent() {
        let p = &Needles::one(b"/stage/env");
        assert_eq!(
            shebang_for(b"#!/stage/env/bin/python3.11", p).unwrap(),
            python_trampoline("python3.11", "").into_bytes()
        );
        assert_eq!(
            shebang_for(b"#!/stage/env/bin/tclsh8.6", p).unwrap(),
            b"#!/usr/bin/env tclsh8.6\n"
        );
        assert_eq!(
            shebang_for(b"#! /stage/env/bin/perl -w", p).unwrap(),
            b"#!/usr/bin/env -S perl -w\n"
        );
        let t =
            String::from_utf8(shebang_for(b"#!/stage/env/bin/python3.11 -E", p).unwrap()).unwrap();
        assert!(t.starts_with("#!/bin/sh\n'''true';"));
        assert!(t.contains("/python3.11\" -E \"$0\" \"$@\""));
        assert!(shebang_for(b"#!/usr/bin/python3", p).is_none());
        assert!(shebang_for(b"#!/stage/env/libexec/x", p).is_none());
        let input = b"#!/stage/env/bin/tclsh8.6\nset x /stage/env\n";
        let t = Transform {
            mode: Some(Mode::Text),
            shebang: shebang_for(b"#!/stage/env/bin/tclsh8.6", p),
            placeholder: None,
        };
        let out = run(input, &t, "/stage/env", "/A").unwrap();
        assert_eq!(out, b"#!/usr/bin/env tclsh8.6\nset x /A\n");
    }

    #[test]
    fn shell_trampoline_runs_the_interpreter_next_to_the_script() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(which_python(), bin.join("python3")).unwrap();
        let line = shebang_for(b"#!/old/bin/python3 -E", &Needles::one(b"/old")).unwrap();
        let mut script = line;
        script
            .extend_from_slice(b"import sys\nprint(sys.flags.ignore_environment, sys.argv[1:])\n");
        let path = bin.join("tool");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let out = std::process::Command::new(&path)
            .arg("a b")
            .env("PATH", "/nonexistent")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1 ['a b']");
        // Through a symlink from another folder (as in /usr/local/bin), and by a relative name.
        let symlinked = d.path().join("tool-link");
        std::os::unix::fs::symlink(&path, &symlinked).unwrap();
        for (cmd, dir) in [
            (symlinked.clone(), d.path().to_path_buf()),
            ("./tool".into(), bin.clone()),
        ] {
            let out = std::process::Command::new(&cmd)
                .arg("x")
                .current_dir(dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                cmd.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1 ['x']");
        }
    }

    fn which_python() -> std::path::PathBuf {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .unwrap();
        std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    }

    #[test]
    fn scan_finds_shebang_and_binary() {
        let s = scan(&b"#!/x/bin/python\n\xff\xfe"[..], &Needles::one(b"/x")).unwrap();
        assert_eq!(s.shebang.as_deref(), Some(&b"#!/x/bin/python"[..]));
        assert!(!s.utf8);
        assert_eq!(s.count, 1);
        // A multi-byte character split across the chunk boundary is still UTF-8.
        let mut input = vec![b'a'; CHUNK - 1];
        input.extend_from_slice("é".as_bytes());
        assert!(scan(&input[..], &Needles::one(b"/x")).unwrap().utf8);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Occurrences, UTF-8 validity and the first line as a plain search over the whole
        /// input tells them, with prefixes and multi-byte characters across the chunk
        /// boundary, and again in the thread's reused (dirty) buffer.
        #[test]
        fn scan_agrees_with_a_plain_search(
            head in proptest::collection::vec(0usize..6, 0..30),
            pad in 0usize..40,
            tail in proptest::collection::vec(0usize..6, 0..30),
            invalid in proptest::bool::weighted(0.2),
        ) {
            // Mostly valid UTF-8: an invalid byte anywhere would hide a mistake at the boundary.
            let bad: &[u8] = if invalid { b"\xff" } else { b"a" };
            let pieces: [&[u8]; 6] =
                [b"/opt/prefix", "\u{e9}".as_bytes(), "\u{20ac}".as_bytes(), b"#!", b"\n", bad];
            let mut input: Vec<u8> = head.iter().flat_map(|&i| pieces[i].to_vec()).collect();
            if input.len() + pad < CHUNK {
                input.resize(CHUNK - pad, b'a');
            }
            input.extend(tail.iter().flat_map(|&i| pieces[i].to_vec()));
            let needles = Needles::one(b"/opt/prefix");
            for _ in 0..2 {
                let s = scan(&input[..], &needles).unwrap();
                proptest::prop_assert_eq!(s.count, memmem::find_iter(&input, b"/opt/prefix").count() as u64);
                proptest::prop_assert_eq!(s.utf8, std::str::from_utf8(&input).is_ok());
                let first = input.split(|&b| b == b'\n').next().unwrap();
                let shebang = input.starts_with(b"#!").then(|| first[..first.len().min(4096)].to_vec());
                proptest::prop_assert_eq!(s.shebang, shebang);
            }
        }
    }

    #[test]
    fn records_are_scrubbed() {
        let rec = br#"{"name":"numpy","url":"file:///srv/cf/linux-64/numpy.conda","channel":"file:///srv/cf","extracted_package_dir":"/home/builder/.cache/rattler/pkgs/numpy","package_tarball_full_path":"/home/builder/.cache/x.conda","link":{"source":"/home/builder/.cache/rattler/pkgs/numpy","type":1},"requested_spec":"/stage/env","paths_data":{"paths":[{"_path":"bin/x","prefix_placeholder":"/ph","sha256_in_prefix":"ab","size_in_bytes":7},{"_path":"lib/y","size_in_bytes":3}]}}"#;
        let rewrites = UrlRewrites::from_pairs(vec![(
            "file:///srv/cf".into(),
            "https://conda.anaconda.org/conda-forge".into(),
        )]);
        let stage = &Needles::one(b"/stage/env");
        let out = scrub_record(rec, &rewrites, None, stage, "/A").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["link"]["type"], 1, "kept as the record says");
        let copy = Some(rattler_conda_types::prefix_record::LinkType::Copy);
        let out = scrub_record(rec, &rewrites, copy, stage, "/A").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("/home/builder/"), "{text}");
        assert!(!text.contains("/srv/"), "{text}");
        assert!(!text.contains("/stage/env"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["url"],
            "https://conda.anaconda.org/conda-forge/linux-64/numpy.conda"
        );
        assert_eq!(
            v["link"]["type"], 3,
            "a hard link from the cache is a copy in the archive"
        );
        assert_eq!(v["link"]["source"], "");
        assert!(
            v["paths_data"]["paths"][0]
                .get("sha256_in_prefix")
                .is_none()
        );
        assert!(v["paths_data"]["paths"][0].get("size_in_bytes").is_none());
        assert_eq!(v["paths_data"]["paths"][1]["size_in_bytes"], 3);
    }
}
