//! Reading a module file: decompression within bounds, the ELF extent check, parsing.

use std::path::Path;

use super::*;

/// A module's bytes: mapped, or decompressed into memory.
pub enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A writer that refuses to grow past a limit (decompression bombs).
pub(super) struct Bounded(Vec<u8>);

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len().saturating_add(buf.len()) > MAX_MODULE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!("decompresses to more than {} MiB", MAX_MODULE >> 20),
            ));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads a module, decompressing `.ko.xz` and `.ko.zst` as distributions ship them.
pub fn load(path: &Path) -> Result<(Bytes, Option<&'static str>), InspectError> {
    let file = path.display().to_string();
    let io = |source| InspectError::Io {
        file: file.clone(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only and private to this process; a file changed under us
    // can only yield wrong bytes, which the parser treats like any malformed input.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
    let bad = |what: String| InspectError::Decompress {
        file: file.clone(),
        what,
    };
    if map.starts_with(b"\xfd7zXZ\x00") {
        // lzma-rs holds a whole block in memory before writing any of it: the size is
        // checked first, from the chunk headers.
        let size = xz_size(&map).map_err(bad)?;
        let mut out = Bounded(Vec::new());
        lzma_rs::xz_decompress(&mut std::io::BufReader::new(&map[..]), &mut out)
            .map_err(|e| bad(format!("corrupt xz data: {e}")))?;
        if out.0.len() as u64 != size {
            return Err(bad(format!(
                "corrupt xz data: its chunk headers declare {size} bytes, it decodes to {}",
                out.0.len()
            )));
        }
        return Ok((Bytes::Owned(out.0), Some("xz")));
    }
    if map.starts_with(b"\x28\xb5\x2f\xfd") {
        let mut dec = ruzstd::decoding::StreamingDecoder::new(&map[..])
            .map_err(|e| bad(format!("corrupt zstd data: {e}")))?;
        let mut out = Bounded(Vec::new());
        std::io::copy(&mut dec, &mut out).map_err(|e| match e.kind() {
            std::io::ErrorKind::FileTooLarge => bad(e.to_string()),
            _ => bad(format!("corrupt zstd data: {e}")),
        })?;
        return Ok((Bytes::Owned(out.0), Some("zstd")));
    }
    Ok((Bytes::Mapped(map), None))
}

/// What an xz stream decompresses to, from its LZMA2 chunk headers (each declares the bytes
/// it decodes to; the decoder stops a chunk there), refused above [`MAX_MODULE`]. Walks
/// what lzma-rs decodes: one stream, blocks of one filter, up to the index. lzma-rs has no
/// memory limit for xz; it reads the chunks as these headers say as long as each chunk's
/// compressed data ends where its header says, which a decoded size other than the one
/// declared reveals (checked after decoding): only a stream crafted against lzma-rs itself
/// could still make it buffer more.
pub(super) fn xz_size(data: &[u8]) -> Result<u64, String> {
    let byte = |at: usize| {
        data.get(at)
            .copied()
            .ok_or_else(|| format!("corrupt xz data: truncated at offset {at:#x}"))
    };
    let be16 = |at: usize| Ok::<_, String>((u64::from(byte(at)?) << 8) | u64::from(byte(at + 1)?));
    // Stream header: magic, flags (the check type), CRC32.
    let check = match byte(7)? & 0x0f {
        0 => 0,
        1 => 4,
        4 => 8,
        0x0a => 32,
        c => return Err(format!("corrupt xz data: check type {c} at offset 0x7")),
    };
    let (mut at, mut total) = (12usize, 0u64);
    loop {
        let block = at;
        let size = byte(block)?;
        if size == 0 {
            return Ok(total); // the index
        }
        let filters = (byte(block + 1)? & 0x03) + 1;
        if filters != 1 {
            return Err(format!(
                "xz block at offset {block:#x} has {filters} filters; modules use LZMA2 alone"
            ));
        }
        at = block + (usize::from(size) + 1) * 4;
        loop {
            let control = byte(at)?;
            let (unpacked, next) = match control {
                0 => break,
                // Uncompressed: its size, then the bytes.
                1 | 2 => {
                    let n = be16(at + 1)? + 1;
                    (n, at + 3 + n as usize)
                }
                // LZMA: unpacked size (21 bits), packed size, and new properties from 0xc0.
                0x80.. => {
                    let n = ((u64::from(control & 0x1f) << 16) | be16(at + 1)?) + 1;
                    let packed = be16(at + 3)? as usize + 1;
                    (n, at + 5 + usize::from(control >= 0xc0) + packed)
                }
                _ => {
                    return Err(format!(
                        "corrupt xz data: LZMA2 control byte {control:#x} at offset {at:#x}"
                    ))
                }
            };
            total += unpacked;
            if total > MAX_MODULE as u64 {
                return Err(format!(
                    "decompresses to more than {} MiB (its LZMA2 chunks say so by offset {at:#x})",
                    MAX_MODULE >> 20
                ));
            }
            at = next;
        }
        // The end marker, padding to 4 bytes from the block's start, the check.
        at = block + (at + 1 - block).next_multiple_of(4) + check;
    }
}

pub(super) const SIGNATURE_MAGIC: &[u8] = b"~Module signature appended~\n";
