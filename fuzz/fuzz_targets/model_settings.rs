//! The `model-settings.json` editor on arbitrary text: reading and setting
//! `parameters.environment_tarball` never panic; set fails only on text `summary` rejects too; a
//! set is read back; the document is otherwise the same JSON, member order included (a `null`
//! or absent `parameters` becomes an object holding only the tarball); setting twice changes
//! nothing more.
//!
//! Input: the file, optionally followed by a NUL byte and the value to set.
#![no_main]

use envpack::fuzzing::model_settings::{set_environment_tarball, summary};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const DEFAULT: &str = "./environment.tar.gz";

fuzz_target!(|data: &[u8]| {
    let (text, value) = match data.iter().position(|&b| b == 0) {
        Some(i) => (
            &data[..i],
            String::from_utf8_lossy(&data[i + 1..]).into_owned(),
        ),
        None => (data, DEFAULT.to_owned()),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let read = summary(text);
    let out = match set_environment_tarball(text, &value) {
        Ok(out) => out,
        Err(e) => {
            assert!(read.is_err(), "set failed ({e}) on a file summary accepts");
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let read_out =
        summary(&out).unwrap_or_else(|e| panic!("the edited file does not read: {e}\n{out}"));
    assert_eq!(
        read_out.environment_tarball.as_deref(),
        Some(value.as_str()),
        "{out}"
    );
    if let Ok(read) = read {
        assert_eq!(read.name, read_out.name);
        assert_eq!(read.implementation, read_out.implementation);
        assert_eq!(read.parallel_workers, read_out.parallel_workers);
    }

    // Apart from the tarball, the same document (serde_json keeps member order here).
    let mut old: Value = serde_json::from_str(text).unwrap();
    let mut new: Value = serde_json::from_str(&out).unwrap();
    let old_params = old.get("parameters").cloned();
    let new_root = new.as_object_mut().unwrap();
    let params = new_root
        .get_mut("parameters")
        .and_then(Value::as_object_mut)
        .unwrap();
    assert_eq!(
        params.shift_remove("environment_tarball"),
        Some(Value::String(value.clone()))
    );
    match old_params {
        None => {
            assert!(params.is_empty());
            new_root.shift_remove("parameters");
        }
        Some(Value::Null) => {
            assert!(params.is_empty());
            new_root.insert("parameters".into(), Value::Null);
        }
        Some(_) => {
            old["parameters"]
                .as_object_mut()
                .unwrap()
                .shift_remove("environment_tarball");
        }
    }
    assert_eq!(
        serde_json::to_string(&old).unwrap(),
        serde_json::to_string(&new).unwrap(),
        "the edit changed other members:\n{text}\n->\n{out}"
    );
    assert_eq!(set_environment_tarball(&out, &value).unwrap(), out);
});
