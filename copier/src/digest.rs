//! SHA-256 digests: parsing the hex that pins and manifests carry, and hashing an open file.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use sha2::{Digest as _, Sha256};

/// Read-back buffer: large enough that syscall overhead vanishes next to hashing, small enough
/// to stay in L2 so the hash reads bytes the previous `pread` just brought in.
const READ_CHUNK: usize = 256 * 1024;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Parses exactly 64 hex digits, in either case (sha256sum writes lowercase, people paste
    /// uppercase).
    pub fn from_hex(hex: &[u8]) -> Result<Self, &'static str> {
        if hex.len() != 64 {
            return Err("must be exactly 64 hex digits");
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
            match (nibble(pair[0]), nibble(pair[1])) {
                (Some(high), Some(low)) => *byte = high << 4 | low,
                _ => return Err("contains a character that is not a hex digit"),
            }
        }
        Ok(Self(bytes))
    }

    /// Hashes `file` from offset 0 to its end; returns the digest and the number of bytes hashed.
    pub fn of_file(file: &File) -> io::Result<(Self, u64)> {
        ReadBack::new().finish(file)
    }

    /// Hashes at most the first `len` bytes of `file`; returns the digest and the number of
    /// bytes hashed. Reading stops there whatever the file's size: a file planted to look like
    /// ours may be 20 GiB (sparse, so it costs its planter nothing) or keep growing.
    pub fn of_prefix(file: &File, len: u64) -> io::Result<(Self, u64)> {
        let mut readback = ReadBack::new();
        readback.advance(file, len)?;
        Ok(readback.digest())
    }
}

/// An incremental SHA-256 of a file read back front to back with `pread`, so it can trail a
/// writer that is still appending (and leaves the file position, which the writer uses, alone).
#[derive(Debug)]
pub struct ReadBack {
    hasher: Sha256,
    offset: u64,
    buf: Vec<u8>,
}

impl Default for ReadBack {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadBack {
    /// Starts at offset 0.
    pub fn new() -> Self {
        Self {
            hasher: Sha256::new(),
            offset: 0,
            buf: vec![0u8; READ_CHUNK],
        }
    }

    /// Hashes the file's bytes up to offset `end`, or to its end if that comes first.
    pub fn advance(&mut self, file: &File, end: u64) -> io::Result<()> {
        while self.offset < end {
            let want = usize::try_from(end - self.offset).map_or(READ_CHUNK, |n| n.min(READ_CHUNK));
            match file.read_at(&mut self.buf[..want], self.offset) {
                Ok(0) => break,
                Ok(n) => {
                    self.hasher.update(&self.buf[..n]);
                    self.offset += n as u64;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Hashes whatever remains up to the end of the file; returns the digest and the number of
    /// bytes hashed in all.
    pub fn finish(mut self, file: &File) -> io::Result<(Digest, u64)> {
        self.advance(file, u64::MAX)?;
        Ok(self.digest())
    }

    fn digest(self) -> (Digest, u64) {
        (Digest(self.hasher.finalize().into()), self.offset)
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Scratch;
    use std::io::Write;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_either_case_and_prints_lowercase() {
        let lower = Digest::from_hex(EMPTY.as_bytes()).unwrap();
        let upper = Digest::from_hex(EMPTY.to_uppercase().as_bytes()).unwrap();
        assert_eq!(lower, upper);
        assert_eq!(upper.to_string(), EMPTY);
    }

    #[test]
    fn rejects_wrong_length_and_non_hex() {
        assert!(Digest::from_hex(&EMPTY.as_bytes()[..63]).is_err());
        assert!(Digest::from_hex(format!("{EMPTY}0").as_bytes()).is_err());
        let mut bad = EMPTY.as_bytes().to_vec();
        bad[10] = b'g';
        assert!(Digest::from_hex(&bad).is_err());
    }

    #[test]
    fn hashes_files_across_chunk_boundaries() {
        let scratch = Scratch::new();
        let mut file = scratch.file("f", b"");
        let data: Vec<u8> = (0..READ_CHUNK * 2 + 17).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).unwrap();
        let (digest, len) = Digest::of_file(&file).unwrap();
        assert_eq!(len, data.len() as u64);
        let expected: [u8; 32] = Sha256::digest(&data).into();
        assert_eq!(digest, Digest(expected));
    }

    #[test]
    fn read_back_can_trail_a_growing_file() {
        let scratch = Scratch::new();
        let mut file = scratch.file("f", b"");
        let data: Vec<u8> = (0..READ_CHUNK + 1000).map(|i| (i % 13) as u8).collect();
        let mut trail = ReadBack::new();
        file.write_all(&data[..500]).unwrap();
        trail.advance(&file, 500).unwrap();
        // Asking past the end just stops at the end; the rest is picked up later.
        trail.advance(&file, 10_000).unwrap();
        file.write_all(&data[500..]).unwrap();
        trail.advance(&file, 700).unwrap();
        assert_eq!(
            trail.finish(&file).unwrap(),
            Digest::of_file(&file).unwrap()
        );
        let expected: [u8; 32] = Sha256::digest(&data).into();
        assert_eq!(
            Digest::of_file(&file).unwrap(),
            (Digest(expected), data.len() as u64)
        );
    }

    #[test]
    fn a_prefix_hash_reads_no_further_than_asked() {
        let scratch = Scratch::new();
        let file = scratch.file("f", b"0123456789");
        let (digest, len) = Digest::of_prefix(&file, 4).unwrap();
        let expected: [u8; 32] = Sha256::digest(b"0123").into();
        assert_eq!((digest, len), (Digest(expected), 4));
        // A file shorter than asked: what there is.
        assert_eq!(Digest::of_prefix(&file, 1 << 40).unwrap().1, 10);
    }

    #[test]
    fn hashes_an_empty_file() {
        let scratch = Scratch::new();
        let file = scratch.file("f", b"");
        let (digest, len) = Digest::of_file(&file).unwrap();
        assert_eq!((digest.to_string().as_str(), len), (EMPTY, 0));
    }
}
