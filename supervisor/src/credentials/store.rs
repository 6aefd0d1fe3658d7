//! Where real values live: pages of their own that the sandbox's init never gets.
//!
//! The sandbox's init is forked from the supervisor, so it starts with a copy of all of the
//! supervisor's memory. Values kept on the ordinary heap would be in that copy; these pages
//! are marked `MADV_WIPEONFORK`, so any process forked from the supervisor finds them zeroed
//! (Linux 4.14), and `MADV_DONTDUMP`, so no core dump holds them. They are locked in memory
//! when the limit allows (never written to swap) and zeroed when dropped.

use std::fmt;
use std::ptr::NonNull;

use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags, madvise, mlock, mmap_anonymous, munmap};

/// Why the store could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The pages could not be mapped.
    #[error("cannot map memory for credential values: {0}")]
    Map(nix::errno::Errno),
    /// The kernel cannot wipe them in forked processes.
    #[error(
        "this kernel cannot keep credential values out of the sandbox's init \
         (MADV_WIPEONFORK: {0}; Linux 4.14 or later)"
    )]
    WipeOnFork(nix::errno::Errno),
}

/// Values, each at its index (`None`: an optional credential whose source was missing).
pub struct Store {
    base: NonNull<std::ffi::c_void>,
    len: usize,
    values: Vec<Option<(usize, usize)>>,
}

// SAFETY: the mapping is owned by the store and only read (through `&self`) after it is
// filled; nothing else holds the pointer.
unsafe impl Send for Store {}
// SAFETY: as above: shared access only reads.
unsafe impl Sync for Store {}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the values.
        f.debug_struct("Store")
            .field(
                "values",
                &self.values.iter().filter(|v| v.is_some()).count(),
            )
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Copies `values` into fresh pages (and nowhere else); the caller wipes its own copies.
    pub fn new(values: &[Option<&[u8]>]) -> Result<Store, StoreError> {
        let total: usize = values.iter().flatten().map(|v| v.len()).sum();
        let page = page_size();
        let len = total.div_ceil(page).max(1) * page;
        let size =
            std::num::NonZeroUsize::new(len).ok_or(StoreError::Map(nix::errno::Errno::EINVAL))?;
        // SAFETY: a fresh private anonymous mapping; nothing aliases it.
        let base = unsafe {
            mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )
        }
        .map_err(StoreError::Map)?;
        let mut store = Store {
            base,
            len,
            values: Vec::with_capacity(values.len()),
        };
        // SAFETY: advice on the mapping just made, before anything is written to it.
        unsafe { madvise(base, len, MmapAdvise::MADV_WIPEONFORK) }
            .map_err(StoreError::WipeOnFork)?;
        // SAFETY: as above; core dumps are an optional place for values to leak.
        let _ = unsafe { madvise(base, len, MmapAdvise::MADV_DONTDUMP) };
        // SAFETY: locking pages of our own mapping; failure (RLIMIT_MEMLOCK) only means they
        // may be swapped, which is said at debug level.
        if let Err(e) = unsafe { mlock(base, len) } {
            tracing::debug!(layer = "credentials", "credential pages not locked: {e}");
        }
        let mut offset = 0;
        for value in values {
            store.values.push(value.map(|v| {
                // SAFETY: `offset + v.len() <= total <= len`, inside the mapping.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        v.as_ptr(),
                        base.as_ptr().cast::<u8>().add(offset),
                        v.len(),
                    );
                }
                let at = (offset, v.len());
                offset += v.len();
                at
            }));
        }
        Ok(store)
    }

    /// The value at `index`, when it was loaded.
    pub fn value(&self, index: usize) -> Option<&[u8]> {
        let (offset, len) = (*self.values.get(index)?)?;
        // SAFETY: the range was written in `new` and stays mapped while `self` lives.
        Some(unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().cast::<u8>().add(offset), len)
        })
    }

    /// Whether the value at `index` was loaded.
    pub fn has(&self, index: usize) -> bool {
        self.values.get(index).is_some_and(Option::is_some)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: the whole mapping is ours; it is zeroed and then unmapped exactly once.
        unsafe {
            wipe(std::slice::from_raw_parts_mut(
                self.base.as_ptr().cast::<u8>(),
                self.len,
            ));
            let _ = munmap(self.base, self.len);
        }
    }
}

/// Zeroes `bytes` in a way the compiler may not drop as a dead store.
pub fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: `b` is a valid, exclusive reference.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| usize::try_from(p).ok())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};

    #[test]
    fn values_are_kept_and_debug_shows_none_of_them() {
        let store = Store::new(&[Some(b"sk-real-1"), None, Some(b"two")]).unwrap();
        assert_eq!(store.value(0), Some(&b"sk-real-1"[..]));
        assert_eq!(store.value(1), None);
        assert!(!store.has(1) && store.has(2));
        assert_eq!(store.value(2), Some(&b"two"[..]));
        assert_eq!(store.value(3), None);
        let debug = format!("{store:?}");
        assert!(
            !debug.contains("sk-real") && debug.contains("values: 2"),
            "{debug}"
        );
    }

    /// A forked child (as the sandbox's init is) finds the pages zeroed; the parent keeps them.
    #[test]
    fn a_forked_process_finds_the_values_wiped() {
        let store = Store::new(&[Some(b"sk-wiped-on-fork")]).unwrap();
        // SAFETY: the child only reads memory and exits; the test harness's other threads
        // are not touched.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let code = match store.value(0) {
                    Some(v) if v.iter().all(|b| *b == 0) => 0,
                    _ => 1,
                };
                // SAFETY: leaving the child without running destructors.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
                assert_eq!(store.value(0), Some(&b"sk-wiped-on-fork"[..]));
            }
        }
    }
}
