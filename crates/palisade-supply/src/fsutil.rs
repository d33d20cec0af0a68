//! Bounded, symlink-refusing file reads and streaming hashes.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use aws_lc_rs::digest::{Context, SHA256, SHA512};

use crate::PinError;

/// Opens a regular file without following a final symlink and without
/// blocking on a FIFO; anything but a regular file is an error.
pub(crate) fn open_regular(path: &Path) -> Result<(File, std::fs::Metadata), PinError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                PinError::Hostile(format!("{} is a symlink where a file was expected", path.display()))
            } else {
                PinError::Io(format!("cannot open {}: {e}", path.display()))
            }
        })?;
    let meta = file
        .metadata()
        .map_err(|e| PinError::Io(format!("cannot stat {}: {e}", path.display())))?;
    if !meta.file_type().is_file() {
        return Err(PinError::Hostile(format!(
            "{} is not a regular file ({})",
            path.display(),
            kind_name(&meta.file_type())
        )));
    }
    Ok((file, meta))
}

pub(crate) fn kind_name(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_dir() {
        "a directory"
    } else {
        "a regular file"
    }
}

pub(crate) fn is_executable(meta: &std::fs::Metadata) -> bool {
    meta.permissions().mode() & 0o111 != 0
}

/// Which SHA-2 function.
#[derive(Clone, Copy)]
pub(crate) enum Algo {
    Sha256,
    Sha512,
}

/// Streams `reader` through the hash, failing past `max_bytes`.
pub(crate) fn hash_reader<R: Read>(
    mut reader: R,
    algo: Algo,
    max_bytes: u64,
    what: &dyn Fn() -> String,
) -> Result<(Vec<u8>, u64), PinError> {
    let mut ctx = Context::new(match algo {
        Algo::Sha256 => &SHA256,
        Algo::Sha512 => &SHA512,
    });
    let mut buf = vec![0u8; 128 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PinError::Io(format!("cannot read {}: {e}", what()))),
        };
        total += n as u64;
        if total > max_bytes {
            return Err(PinError::Limit(format!("{} is larger than {max_bytes} bytes", what())));
        }
        ctx.update(&buf[..n]);
    }
    Ok((ctx.finish().as_ref().to_vec(), total))
}

/// SHA-256 of a regular file (not following a final symlink), bounded.
pub(crate) fn hash_file(path: &Path, algo: Algo, max_bytes: u64) -> Result<(Vec<u8>, u64, bool), PinError> {
    let (file, meta) = open_regular(path)?;
    if meta.len() > max_bytes {
        return Err(PinError::Limit(format!(
            "{} is larger than {max_bytes} bytes ({} bytes)",
            path.display(),
            meta.len()
        )));
    }
    let (d, n) = hash_reader(file, algo, max_bytes, &|| path.display().to_string())?;
    Ok((d, n, is_executable(&meta)))
}

/// Reads a small text file (manifests, lockfiles), bounded.
pub(crate) fn read_small(path: &Path, max_bytes: u64) -> Result<String, PinError> {
    let (file, meta) = open_regular(path)?;
    if meta.len() > max_bytes {
        return Err(PinError::Limit(format!(
            "{} is larger than {max_bytes} bytes",
            path.display()
        )));
    }
    let mut s = String::new();
    file.take(max_bytes + 1)
        .read_to_string(&mut s)
        .map_err(|e| PinError::Io(format!("cannot read {}: {e}", path.display())))?;
    if s.len() as u64 > max_bytes {
        return Err(PinError::Limit(format!(
            "{} is larger than {max_bytes} bytes",
            path.display()
        )));
    }
    Ok(s)
}

/// `sha256:<hex>`.
pub(crate) fn sha256_pin(d: &[u8]) -> String {
    format!("sha256:{}", hex::encode(d))
}

/// SHA-256 of bytes.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
