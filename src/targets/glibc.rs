//! Does every ELF file of the environment load with the target's C library?
//!
//! The solve keeps packages whose metadata asks for a newer glibc than `--glibc` out, but a
//! package's metadata can be wrong (a package built against a newer glibc than it declares, a
//! `pip:` wheel, a file a user added to a `--prefix`). The C library's symbol versions a file
//! needs are in its ELF `.gnu.version_r` section (`GLIBC_2.35`, ...): the dynamic loader
//! refuses the file on an older glibc. Each file's section is read (a few small reads, never
//! the whole file) and the files that need more than the target has are reported in one
//! warning, before the archive is written.
//!
//! The ELF reader takes its input from strangers: every offset and count is checked, reads are
//! bounded, and a file that is not what it claims is simply not reported.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;

use crate::pack::{Body, PackPlan};
use crate::report::Notice;

/// `SHT_GNU_verneed`: the versions a file needs from the libraries it links.
const SHT_GNU_VERNEED: u32 = 0x6fff_fffe;
/// Largest `.gnu.version_r` section read (real ones are a few hundred bytes).
const MAX_VERNEED: u64 = 1 << 20;
/// Most section headers read.
const MAX_SECTIONS: u64 = 1 << 16;
/// Files named like this are never ELF files (the check does not open them).
const NOT_ELF: &[&str] = &[
    "py", "pyc", "pyi", "pyx", "pxd", "txt", "json", "h", "hpp", "c", "cc", "cpp", "md", "rst",
    "html", "js", "css", "yaml", "yml", "toml", "cfg", "ini", "csv", "png", "svg", "typed", "pem",
    "mo", "po", "tcl", "xml", "sh", "pc", "cmake", "la", "a",
];
/// Files named in the warning (the rest are counted).
const NAMED: usize = 5;

/// The highest `GLIBC_2.N` version (`N`) that the ELF file `path` needs, `None` when it needs
/// none or is not an ELF file (or not one this reader understands).
pub fn needed_minor(path: &Path) -> io::Result<Option<u32>> {
    let file = File::open(path)?;
    Ok(Elf::read(&file)?.and_then(|elf| elf.glibc_minor(&file)))
}

/// The warning for the file members of `plan` that need a newer glibc than `target` ("2.28"),
/// if any (read on `pool`). A `target` that is not `2.N` checks nothing.
#[must_use]
pub fn check(plan: &PackPlan, target: &str, pool: &rayon::ThreadPool) -> Option<Notice> {
    let limit = minor_of(target)?;
    let files: Vec<(&str, &Path)> = plan
        .members
        .iter()
        .filter_map(|m| match &m.body {
            Body::File { source, .. } if maybe_elf(&m.path) => {
                Some((m.path.as_str(), source.as_path()))
            }
            _ => None,
        })
        .collect();
    let mut newer: Vec<(&str, u32)> = pool.install(|| {
        files
            .par_iter()
            .filter_map(|(name, source)| {
                // Unreadable files are the pack's to report, with its context.
                let minor = needed_minor(source).ok().flatten()?;
                (minor > limit).then_some((*name, minor))
            })
            .collect()
    });
    if newer.is_empty() {
        return None;
    }
    // The most demanding first, then by name: one order whatever the pool did.
    newer.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let named: Vec<String> = newer
        .iter()
        .take(NAMED)
        .map(|(name, minor)| format!("{name} (GLIBC_2.{minor})"))
        .collect();
    let more = match newer.len().saturating_sub(NAMED) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    let files = if newer.len() == 1 {
        "file needs"
    } else {
        "files need"
    };
    Some(Notice::warning(format!(
        "{} ELF {files} a newer glibc than the target's {target} (--glibc): {}{more}; they will not load on a system with that glibc (built against a newer C library than their package says); if the server's glibc is newer, give it with --glibc",
        newer.len(),
        named.join(", "),
    )))
}

/// `N` of a glibc version `2.N` (`2.N.M` too).
fn minor_of(version: &str) -> Option<u32> {
    let rest = version.strip_prefix("2.")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn maybe_elf(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    match name.rsplit_once('.') {
        Some((_, ext)) => !NOT_ELF.contains(&ext),
        None => true,
    }
}

/// The parts of an ELF header the check needs.
struct Elf {
    wide: bool,
    little: bool,
    shoff: u64,
    shentsize: u64,
    shnum: u64,
}

/// A section header's fields the check needs.
struct Section {
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
    info: u32,
}

impl Elf {
    /// The header of `file`, `None` when it is not an ELF file this reader understands.
    fn read(file: &File) -> io::Result<Option<Self>> {
        let mut h = [0u8; 64];
        let n = read_at_most(file, &mut h, 0)?;
        if n < 52 || h[..4] != *b"\x7fELF" {
            return Ok(None);
        }
        let wide = match h[4] {
            1 => false,
            2 if n == 64 => true,
            _ => return Ok(None),
        };
        let little = match h[5] {
            1 => true,
            2 => false,
            _ => return Ok(None),
        };
        let e = Endian(little);
        let (shoff, shentsize, shnum) = if wide {
            (e.u64(&h[0x28..]), e.u16(&h[0x3a..]), e.u16(&h[0x3c..]))
        } else {
            (
                u64::from(e.u32(&h[0x20..])),
                e.u16(&h[0x2e..]),
                e.u16(&h[0x30..]),
            )
        };
        let min = if wide { 64 } else { 40 };
        if shoff == 0 || u64::from(shentsize) < min || u64::from(shnum) > MAX_SECTIONS {
            return Ok(None);
        }
        Ok(Some(Self {
            wide,
            little,
            shoff,
            shentsize: shentsize.into(),
            shnum: shnum.into(),
        }))
    }

    fn section(&self, file: &File, index: u64) -> Option<Section> {
        if index >= self.shnum {
            return None;
        }
        let at = self.shoff.checked_add(index.checked_mul(self.shentsize)?)?;
        let mut s = [0u8; 64];
        let len = if self.wide { 64 } else { 40 };
        if read_at_most(file, &mut s[..len], at).ok()? < len {
            return None;
        }
        let e = Endian(self.little);
        Some(if self.wide {
            Section {
                kind: e.u32(&s[4..]),
                offset: e.u64(&s[24..]),
                size: e.u64(&s[32..]),
                link: e.u32(&s[40..]),
                info: e.u32(&s[44..]),
            }
        } else {
            Section {
                kind: e.u32(&s[4..]),
                offset: e.u32(&s[16..]).into(),
                size: e.u32(&s[20..]).into(),
                link: e.u32(&s[24..]),
                info: e.u32(&s[28..]),
            }
        })
    }

    /// The highest `GLIBC_2.N` named by the file's version needs.
    fn glibc_minor(&self, file: &File) -> Option<u32> {
        let verneed = (0..self.shnum)
            .filter_map(|i| self.section(file, i))
            .find(|s| s.kind == SHT_GNU_VERNEED)?;
        let strings = self.section(file, verneed.link.into())?;
        if verneed.size > MAX_VERNEED {
            return None;
        }
        let mut data = vec![0u8; usize::try_from(verneed.size).ok()?];
        if read_at_most(file, &mut data, verneed.offset).ok()? < data.len() {
            return None;
        }
        let e = Endian(self.little);
        let field = |at: usize, width: usize| data.get(at..at + width);
        let mut best = None;
        let mut need = 0usize;
        // `info` entries, each followed by its chain of `vn_cnt` auxiliary entries.
        for _ in 0..verneed.info.min(1024) {
            let entry = field(need, 16)?;
            let (count, aux, next) = (e.u16(&entry[2..]), e.u32(&entry[8..]), e.u32(&entry[12..]));
            let mut at = need.checked_add(usize::try_from(aux).ok()?)?;
            for _ in 0..count.min(1024) {
                let a = field(at, 16)?;
                let (name, next_aux) = (e.u32(&a[8..]), e.u32(&a[12..]));
                if let Some(minor) = glibc_name(file, &strings, name) {
                    best = best.max(Some(minor));
                }
                if next_aux == 0 {
                    break;
                }
                at = at.checked_add(usize::try_from(next_aux).ok()?)?;
            }
            if next == 0 {
                break;
            }
            need = need.checked_add(usize::try_from(next).ok()?)?;
        }
        best
    }
}

/// `N` when the string at `offset` of the string table is `GLIBC_2.N` (or `GLIBC_2.N.M`).
fn glibc_name(file: &File, strings: &Section, offset: u32) -> Option<u32> {
    if u64::from(offset) >= strings.size {
        return None;
    }
    let mut name = [0u8; 24];
    let n = read_at_most(file, &mut name, strings.offset.checked_add(offset.into())?).ok()?;
    let name = &name[..n];
    let end = name.iter().position(|&b| b == 0)?;
    let text = std::str::from_utf8(&name[..end]).ok()?;
    minor_of(text.strip_prefix("GLIBC_")?)
}

/// Reads up to `buf.len()` bytes at `offset`; fewer at the end of the file.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset
            .checked_add(done as u64)
            .ok_or(io::ErrorKind::InvalidInput)?;
        match file.read_at(&mut buf[done..], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[derive(Clone, Copy)]
struct Endian(bool);

impl Endian {
    fn u16(self, b: &[u8]) -> u16 {
        let b = [b[0], b[1]];
        if self.0 {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    }
    fn u32(self, b: &[u8]) -> u32 {
        let b = [b[0], b[1], b[2], b[3]];
        if self.0 {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    }
    fn u64(self, b: &[u8]) -> u64 {
        let b = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
        if self.0 {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version this machine's own programs need, as `readelf -V` lists it.
    fn readelf_minor(path: &Path) -> Option<u32> {
        let out = std::process::Command::new("readelf")
            .args(["-V", "-W"])
            .arg(path)
            .output()
            .expect("readelf (binutils) runs");
        assert!(out.status.success());
        // Only the needs: a library's definitions (ld.so defines GLIBC_2.35) list names too.
        let text = String::from_utf8_lossy(&out.stdout);
        let needs = text
            .split("Version needs section")
            .nth(1)
            .unwrap_or_default();
        let needs = needs
            .split("Version definition section")
            .next()
            .unwrap_or_default();
        needs
            .lines()
            .filter_map(|l| l.split("Name: GLIBC_").nth(1))
            .filter_map(|v| minor_of(v.split_whitespace().next()?))
            .max()
    }

    #[test]
    fn the_needed_glibc_of_real_programs_is_what_readelf_says() {
        let mut checked = 0;
        for dir in [
            "/bin",
            "/usr/bin",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
        ] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.filter_map(Result::ok).take(400) {
                let p = e.path();
                if !p.is_file() || File::open(&p).is_err() {
                    continue;
                }
                let ours = needed_minor(&p).unwrap();
                let mut magic = [0u8; 4];
                let elf = read_at_most(&File::open(&p).unwrap(), &mut magic, 0).unwrap() == 4
                    && magic == *b"\x7fELF";
                if !elf {
                    assert_eq!(ours, None, "{}", p.display());
                    continue;
                }
                assert_eq!(ours, readelf_minor(&p), "{}", p.display());
                checked += usize::from(ours.is_some());
            }
        }
        assert!(
            checked > 20,
            "only {checked} ELF files needing glibc were compared"
        );
    }

    #[test]
    fn truncated_and_corrupt_files_are_not_reported_and_do_not_panic() {
        let real = std::fs::read("/bin/ls").expect("/bin/ls");
        assert!(needed_minor(Path::new("/bin/ls")).unwrap().is_some());
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        for cut in [0, 3, 4, 20, 63, 64, 1000, real.len() / 2, real.len() - 1] {
            std::fs::write(&p, &real[..cut]).unwrap();
            let _ = needed_minor(&p).unwrap();
        }
        // Every byte of the header and of the section header table flipped in turn.
        let mut x: u32 = 1;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let mut bad = real.clone();
            let at = x as usize % bad.len();
            bad[at] = bad[at].wrapping_add((x >> 24) as u8).wrapping_add(1);
            std::fs::write(&p, &bad).unwrap();
            let _ = needed_minor(&p).unwrap();
        }
    }

    #[test]
    fn both_classes_and_byte_orders_are_read() {
        // The fuzz target's seeds (fuzz/corpus/make-elf-seeds.py): hand-made ELF files.
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/elf_glibc");
        for (name, expected) in [
            ("le64", Some(34)),
            ("be64", Some(17)),
            ("le32", Some(35)),
            ("be32", Some(28)),
            ("no-versions", None),
            ("not-elf", None),
        ] {
            assert_eq!(needed_minor(&seeds.join(name)).unwrap(), expected, "{name}");
        }
    }

    #[test]
    fn versions_and_names() {
        assert_eq!(minor_of("2.28"), Some(28));
        assert_eq!(minor_of("2.2.5"), Some(2));
        assert_eq!(minor_of("PRIVATE"), None);
        assert!(maybe_elf("lib/libpython3.11.so.1.0"));
        assert!(maybe_elf("bin/python3.11"));
        assert!(!maybe_elf("lib/python3.11/os.py"));
    }
}
