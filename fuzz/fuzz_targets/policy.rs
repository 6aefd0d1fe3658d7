//! The policy loader: any bytes given as a policy file are refused with a positioned error or
//! become a validated policy; nothing panics, whatever the YAML (anchors, aliases, deep
//! nesting, huge numbers, odd keys).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use openshell_sandbox::policy::{self, PolicyOrigin};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = PolicyOrigin::File("fuzzed.yaml".into());
    let file = match policy::parse(text, &origin) {
        Ok(file) => file,
        Err(error) => {
            let _ = error.to_string();
            return;
        }
    };
    match policy::validate(file, origin, Path::new("/work")) {
        Ok(policy) => {
            let _ = format!("{policy:?}");
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
});
