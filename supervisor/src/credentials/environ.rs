//! The supervisor's own environment block: credential values taken out of it in place.
//!
//! `/proc/PID/environ` is not a list the kernel keeps: it reads the process's memory between
//! `env_start` and `env_end`, where `execve` laid out the environment. A forked process
//! inherits that memory, so the sandbox's init (whose `/proc/1/environ` is what it was forked
//! with) would show every variable the pod gave the supervisor. Removing a variable with
//! `unsetenv` only edits the `environ` array and leaves the bytes there, so the values are
//! overwritten where they lie, before the fork, and the block is read back through
//! `/proc/self/environ` to prove it. The values are handed to the caller as slices of the
//! block itself, to be copied into the [`super::store::Store`] and nowhere else.

use std::ffi::{CStr, c_char};

use super::store::wipe;

/// Why the environment could not be scrubbed.
#[derive(Debug, thiserror::Error)]
pub enum EnvironError {
    /// Other threads could read the environment while it is rewritten.
    #[error("internal error: {0} threads running while credential variables are scrubbed")]
    Threads(usize),
    /// `/proc/self/stat` or `/proc/self/environ` could not be read.
    #[error("cannot read this process's environment block from /proc/self")]
    Proc,
    /// After scrubbing, a value was still in the block.
    #[error("variable {0} still holds its value in /proc/self/environ after scrubbing")]
    Remains(String),
}

unsafe extern "C" {
    /// The C library's environment array (glibc and musl both define it).
    static mut environ: *const *const c_char;
}

/// Hands `keep` the value of each variable named in `names` (`None`: absent or empty), then
/// overwrites every value of those variables with zeros, in the `environ` strings and in the
/// original block, and checks `/proc/self/environ`. The variables stay, empty.
pub fn take<R>(
    names: &[&str],
    keep: impl FnOnce(&[Option<&[u8]>]) -> R,
) -> Result<R, EnvironError> {
    // Start-up probes run in threads of their own, joined before this.
    let threads = crate::procfs::settled_thread_count();
    if threads > 1 {
        return Err(EnvironError::Threads(threads));
    }
    let (start, end) = crate::procfs::env_block().ok_or(EnvironError::Proc)?;
    // SAFETY: single-threaded (checked above), so nothing reads or changes the environment
    // meanwhile. `environ` is a NULL-terminated array of NUL-terminated strings this process
    // owns and may write (in its stack block or its heap); the block between env_start and
    // env_end is part of this process's writable stack, laid out by execve. The slices made
    // here are dropped before this function returns.
    let kept = unsafe {
        let mut entries: Vec<&mut [u8]> = Vec::new();
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let len = CStr::from_ptr(*entry).to_bytes().len();
            let bytes = std::slice::from_raw_parts_mut((*entry).cast_mut().cast::<u8>(), len);
            entries.push(bytes);
            entry = entry.add(1);
        }
        let mut values: Vec<Option<&[u8]>> = vec![None; names.len()];
        for bytes in &entries {
            // The first occurrence is the one getenv (and so the pod's programs) would use.
            if let Some((index, value)) = matching(bytes, names)
                && values[index].is_none()
                && !value.is_empty()
            {
                values[index] = Some(value);
            }
        }
        let kept = keep(&values);
        drop(values);
        for bytes in entries {
            if let Some((_, value)) = matching_mut(bytes, names) {
                wipe(value);
            }
        }
        let block = std::slice::from_raw_parts_mut(start as *mut u8, end - start);
        for entry in block.split_mut(|b| *b == 0) {
            if let Some((_, value)) = matching_mut(entry, names) {
                wipe(value);
            }
        }
        kept
    };
    verify(names)?;
    Ok(kept)
}

/// `(index, value)` when `entry` (`NAME=VALUE`) names one of `names`.
fn matching<'e>(entry: &'e [u8], names: &[&str]) -> Option<(usize, &'e [u8])> {
    let eq = entry.iter().position(|b| *b == b'=')?;
    let index = names.iter().position(|n| n.as_bytes() == &entry[..eq])?;
    Some((index, &entry[eq + 1..]))
}

fn matching_mut<'e>(entry: &'e mut [u8], names: &[&str]) -> Option<(usize, &'e mut [u8])> {
    let (index, value) = matching(entry, names)?;
    let at = entry.len() - value.len();
    Some((index, &mut entry[at..]))
}

/// Reads the block back as the kernel shows it to others: no named variable has a value.
fn verify(names: &[&str]) -> Result<(), EnvironError> {
    let block = std::fs::read("/proc/self/environ").map_err(|_| EnvironError::Proc)?;
    for entry in block.split(|b| *b == 0) {
        if let Some((index, value)) = matching(entry, names)
            && !value.is_empty()
        {
            return Err(EnvironError::Remains(names[index].to_owned()));
        }
    }
    Ok(())
}
