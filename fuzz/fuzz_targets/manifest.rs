//! The copier's `SHA256SUMS` parser: any bytes are refused with a line number or searched for
//! the entry of the file being installed; nothing panics.
#![no_main]

use std::ffi::OsStr;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use openshell_copier::manifest;

fuzz_target!(|data: &[u8]| {
    for name in ["openshell-sandbox", "a\nb", ""] {
        match manifest::lookup(Path::new("SHA256SUMS"), data, OsStr::new(name)) {
            Ok(digest) => {
                let _ = digest.map(|d| d.to_string());
            }
            Err(error) => {
                let _ = error.to_string();
            }
        }
    }
});
