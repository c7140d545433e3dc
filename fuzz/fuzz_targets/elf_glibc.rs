//! The glibc check's ELF reader on arbitrary bytes: it never panics, reads only what the file
//! holds, and reports a version only for a file that starts with the ELF magic.
#![no_main]

use envpack::fuzzing::glibc::needed_minor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("input");
    std::fs::write(&file, data).unwrap();
    let minor = needed_minor(&file).expect("a readable file is never an error");
    if minor.is_some() {
        assert!(data.starts_with(b"\x7fELF"), "a version from a file that is not ELF");
    }
    // Reading is all it does.
    assert_eq!(std::fs::read(&file).unwrap(), data);
});
