//! The `config.pbtxt` editor on arbitrary text: parsing, reading and setting the
//! `EXECUTION_ENV_PATH` parameter never panic; a set is read back; every other top-level
//! piece (fields, other parameters) stays byte-identical and in order; an appended parameter
//! leaves the original text as the output's prefix; setting twice changes nothing more.
//!
//! Input: the config, optionally followed by a NUL byte and the value to set.
#![no_main]

use envpack::fuzzing::pbtxt::{Piece, get_field, get_parameter, pieces, set_parameter};
use libfuzzer_sys::fuzz_target;

const KEY: &str = "EXECUTION_ENV_PATH";
const DEFAULT: &str = "$$TRITON_MODEL_DIRECTORY/model-conda.tar.gz";

fn is_key(piece: &Piece<'_>) -> bool {
    matches!(piece, Piece::Entry { key: Some(k), .. } if k == KEY.as_bytes())
}

fuzz_target!(|data: &[u8]| {
    let (config, value) = match data.iter().position(|&b| b == 0) {
        Some(i) => (
            &data[..i],
            String::from_utf8_lossy(&data[i + 1..]).into_owned(),
        ),
        None => (data, DEFAULT.to_owned()),
    };
    // envpack reads config.pbtxt as UTF-8 text.
    let Ok(config) = std::str::from_utf8(config) else {
        return;
    };
    let _ = get_field(config, "backend");
    let _ = get_field(config, "platform");
    let before = get_parameter(config, KEY);
    let parts = pieces(config);
    let edited = set_parameter(config, KEY, &value);
    let (out, parts) = match (edited, parts) {
        (Ok(out), Ok(parts)) => {
            assert!(before.is_ok());
            (out, parts)
        }
        (Err(e), Err(_)) => {
            assert!(before.is_err());
            assert!(!e.to_string().is_empty());
            return;
        }
        (edited, parts) => panic!(
            "set_parameter and the parser disagree: set {:?}, parse {:?}",
            edited.map(|_| ()),
            parts.map(|_| ())
        ),
    };
    let after =
        pieces(&out).unwrap_or_else(|e| panic!("the edited config does not parse: {e}\n{out}"));
    assert_eq!(
        get_parameter(&out, KEY).unwrap().as_deref(),
        Some(value.as_str()),
        "the value set is not read back:\n{out}"
    );
    assert_eq!(after.iter().filter(|p| is_key(p)).count(), 1, "{out}");
    let kept_before: Vec<_> = parts.iter().filter(|p| !is_key(p)).collect();
    let kept_after: Vec<_> = after.iter().filter(|p| !is_key(p)).collect();
    assert_eq!(
        kept_before, kept_after,
        "the edit changed other text:\n{out}"
    );
    if !parts.iter().any(is_key) {
        assert!(
            out.starts_with(config),
            "appending changed the text before:\n{out}"
        );
    }
    assert_eq!(
        set_parameter(&out, KEY, &value).unwrap(),
        out,
        "setting the same value again changed the text"
    );
});
