//! `envpack unpack` on arbitrary bytes: whatever the archive holds, nothing is written
//! outside DEST, DEST appears only on success, and no temporary folder is left.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use envpack::{Reporter, SharedReporter, UnpackOptions, unpack};
use libfuzzer_sys::fuzz_target;

struct Quiet;

impl Reporter for Quiet {}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let root = tempfile::tempdir().unwrap();
    let archive = root.path().join("input");
    std::fs::write(&archive, data).unwrap();
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret\n").unwrap();
    let work = root.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let dest = work.join("dest");
    let reporter: SharedReporter = Arc::new(Quiet);
    let result = unpack(&archive, &dest, &UnpackOptions::default(), &reporter);
    assert_eq!(names(root.path()), ["input", "outside", "work"]);
    assert_eq!(names(&outside), ["secret"]);
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret\n");
    assert_eq!(std::fs::read(&archive).unwrap(), data);
    match result {
        Ok(_) => assert_eq!(names(&work), ["dest"]),
        Err(_) => assert!(names(&work).is_empty(), "left {:?}", names(&work)),
    }
    // Whatever was extracted can be removed by its owner (no folder left unwritable).
    make_writable(&dest);
});

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if meta.is_dir() {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                make_writable(&e.path());
            }
        }
    }
}
