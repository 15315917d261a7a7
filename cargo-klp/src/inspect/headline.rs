//! What every report needs, read from the ELF header, the section header table, the section
//! names, `.modinfo` and the file's last bytes (the signature marker): a few small reads per
//! file, through [`ReadAt`], from a file (`pread`) or from bytes in memory. Only modules that
//! turn out to be live patches are then read whole for their tables.
//!
//! The section headers are checked against the file's length here, once for both sources: a
//! truncated file is reported with the offsets involved, and the sections that occupy file
//! space may not add up to more than the file (in real modules they never share bytes):
//! headers that all describe the same bytes would have the decoders read them once per header.

use std::borrow::Cow;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::decode::Names;
use super::load::SIGNATURE_MAGIC;
use super::InspectError;

/// Reads byte ranges of a module.
pub(super) trait ReadAt {
    fn len(&self) -> u64;
    /// `n` bytes at `at`; the caller has checked that they are within [`ReadAt::len`].
    fn read_at(&self, at: u64, n: u64) -> std::io::Result<Cow<'_, [u8]>>;
}

impl ReadAt for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_at(&self, at: u64, n: u64) -> std::io::Result<Cow<'_, [u8]>> {
        let range = usize::try_from(at)
            .ok()
            .zip(usize::try_from(n).ok())
            .and_then(|(at, n)| self.get(at..at.checked_add(n)?));
        range
            .map(Cow::Borrowed)
            .ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
    }
}

/// An uncompressed module on disk, read by range. Its first and last few KiB are read at
/// once: the ELF header is at the start, and a linked module keeps its section header table
/// and section names at the end, followed by the signature.
pub(super) struct OnDisk {
    file: File,
    len: u64,
    head: Vec<u8>,
    /// The last bytes of the file, from offset `tail_at`.
    tail: Vec<u8>,
    tail_at: u64,
}

const HEAD: u64 = 4 << 10;
const TAIL: u64 = 16 << 10;

impl OnDisk {
    pub fn open(path: &Path) -> std::io::Result<OnDisk> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut head = vec![0; HEAD.min(len) as usize];
        file.read_exact_at(&mut head, 0)?;
        let tail_at = len.saturating_sub(TAIL).max(head.len() as u64);
        let mut tail = vec![0; (len - tail_at) as usize];
        file.read_exact_at(&mut tail, tail_at)?;
        Ok(OnDisk {
            file,
            len,
            head,
            tail,
            tail_at,
        })
    }

    /// The file's first bytes (up to 4 KiB).
    pub fn head(&self) -> &[u8] {
        &self.head
    }
}

impl ReadAt for OnDisk {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, at: u64, n: u64) -> std::io::Result<Cow<'_, [u8]>> {
        let end = at.saturating_add(n);
        if end <= self.head.len() as u64 {
            return Ok(Cow::Borrowed(&self.head[at as usize..end as usize]));
        }
        if at >= self.tail_at && end <= self.len {
            let from = (at - self.tail_at) as usize;
            return Ok(Cow::Borrowed(&self.tail[from..from + n as usize]));
        }
        // Within the file's length (checked by the caller), so never a huge allocation.
        let mut buf = vec![0; usize::try_from(n.min(self.len)).unwrap_or(0)];
        self.file.read_exact_at(&mut buf, at)?;
        Ok(Cow::Owned(buf))
    }
}

/// The facts every report has.
pub(super) struct Headline {
    /// The raw `.modinfo` section (`key=value` strings, NUL-separated).
    pub modinfo: Vec<u8>,
    pub signed: bool,
    /// `.modinfo` says `livepatch=Y`.
    pub livepatch: bool,
    /// Names of the `.klp.rela.*` sections (klp relocations).
    pub klp_rela_sections: Vec<String>,
}

impl Headline {
    /// `.modinfo`'s `key=value` pairs.
    pub fn modinfo(&self) -> Vec<(&str, &str)> {
        self.modinfo
            .split(|b| *b == 0)
            .filter_map(|f| std::str::from_utf8(f).ok()?.split_once('='))
            .collect()
    }

    /// Whether the module carries livepatch tables of some kind: only then is it read whole.
    pub fn needs_tables(&self) -> bool {
        self.livepatch || !self.klp_rela_sections.is_empty()
    }
}

/// One section header: type, name offset, file extent.
struct Shdr {
    name: u64,
    kind: u64,
    offset: u64,
    size: u64,
}

const SHT_NOBITS: u64 = 8;
/// `e_shstrndx` saying the index is in section 0's `sh_link`.
const SHN_XINDEX: u64 = 0xffff;

/// Reads the headline of the module `path` from `src`.
/// Names copied into it count against `names`.
pub(super) fn read<R: ReadAt + ?Sized>(
    path: &str,
    src: &R,
    names: &Names,
) -> Result<Headline, InspectError> {
    let elf = |what: String| InspectError::Elf {
        file: path.into(),
        what,
    };
    let io = |source| InspectError::Io {
        file: path.into(),
        source,
    };
    let len = src.len();
    let ident = if len >= 64 {
        src.read_at(0, 64).map_err(io)?
    } else {
        Cow::Borrowed(&[][..])
    };
    if !ident.starts_with(b"\x7fELF") {
        return Err(elf(format!(
            "no ELF header: the file is {len} bytes and does not start with \\x7fELF"
        )));
    }
    // As object does: a class and a byte order it knows, and section headers of their size.
    if !matches!(ident[4], 1 | 2) || !matches!(ident[5], 1 | 2) {
        return Err(elf(format!(
            "unknown ELF class {} or byte order {} (offsets 4 and 5)",
            ident[4], ident[5]
        )));
    }
    let big_endian = ident[5] == 2;
    let num = |b: &[u8]| {
        let fold = |v: u64, x: &u8| (v << 8) | u64::from(*x);
        if big_endian {
            b.iter().fold(0, fold)
        } else {
            b.iter().rev().fold(0, fold)
        }
    };
    let field = |b: &[u8], at: usize, n: usize| b.get(at..at + n).map_or(0, num);
    // ELF64 or ELF32: where e_shoff, e_shnum and e_shstrndx are, a section header's size,
    // and where its sh_name, sh_type, sh_link, sh_offset and sh_size are, with their width.
    let elf64 = ident[4] == 2;
    let (shoff, shnum_at, strndx_at, entry, link_at, off_at, size_at, w) = if elf64 {
        (
            field(&ident, 0x28, 8),
            0x3c,
            0x3e,
            64u64,
            0x28,
            0x18,
            0x20,
            8,
        )
    } else {
        (field(&ident, 0x20, 4), 0x30, 0x32, 40, 0x18, 0x10, 0x14, 4)
    };
    let shdr = |b: &[u8], i: u64| {
        let h = (i * entry) as usize;
        Shdr {
            name: field(b, h, 4),
            kind: field(b, h + 4, 4),
            offset: field(b, h + off_at, w),
            size: field(b, h + size_at, w),
        }
    };
    let shentsize_at = if elf64 { 0x3a } else { 0x2e };
    if shoff != 0 && field(&ident, shentsize_at, 2) != entry {
        return Err(elf(format!(
            "section headers of {} bytes (e_shentsize); ELF{} has {entry}",
            field(&ident, shentsize_at, 2),
            if elf64 { 64 } else { 32 }
        )));
    }
    let mut shnum = field(&ident, shnum_at, 2);
    let mut strndx = field(&ident, strndx_at, 2);
    if shoff == 0 {
        shnum = 0;
    } else if shnum == 0 || strndx == SHN_XINDEX {
        // Many sections: section 0 holds the count (sh_size) and the names' index (sh_link).
        if shoff.saturating_add(entry) > len {
            return Err(elf(format!(
                "truncated: the section header table at offset {shoff:#x} is past the end of \
                 the file ({len:#x} bytes)"
            )));
        }
        let first = src.read_at(shoff, entry).map_err(io)?;
        if shnum == 0 {
            shnum = field(&first, size_at, w);
        }
        if strndx == SHN_XINDEX {
            strndx = field(&first, link_at, 4);
        }
    }
    let end = shoff.saturating_add(shnum.saturating_mul(entry));
    if end > len {
        return Err(elf(format!(
            "truncated: the section header table at offset {shoff:#x} ({shnum} entries) ends at \
             offset {end:#x}, past the end of the file ({len:#x} bytes)"
        )));
    }
    let too_big = |what: &str, n: u64| {
        elf(format!(
            "{what} is {n} bytes, more than any module's ({} MiB at most)",
            super::MAX_MODULE >> 20
        ))
    };
    if end - shoff > super::MAX_MODULE as u64 {
        return Err(too_big("the section header table", end - shoff));
    }
    let table = src.read_at(shoff, end - shoff).map_err(io)?;
    let mut total = 0u64;
    // Section 0 describes no section (with many sections, it holds their count).
    for i in 1..shnum {
        let s = shdr(&table, i);
        // SHT_NOBITS occupies no file space.
        if s.kind == SHT_NOBITS {
            continue;
        }
        if s.offset.saturating_add(s.size) > len {
            return Err(elf(format!(
                "truncated or corrupt: section {i} spans offsets {:#x}..{:#x}, past the end of \
                 the file ({len:#x} bytes)",
                s.offset,
                s.offset.saturating_add(s.size),
            )));
        }
        total = total.saturating_add(s.size);
    }
    if total > len {
        return Err(elf(format!(
            "corrupt: its sections add up to {total:#x} bytes, more than the file's {len:#x}: \
             section headers describe the same bytes more than once"
        )));
    }
    // Every extent is now within the file: the reads below are bounded by its length.
    let data_of = |s: &Shdr| -> Result<Vec<u8>, InspectError> {
        if s.kind == SHT_NOBITS || s.size == 0 {
            return Ok(Vec::new());
        }
        if s.size > super::MAX_MODULE as u64 {
            return Err(too_big("a section", s.size));
        }
        Ok(src.read_at(s.offset, s.size).map_err(io)?.into_owned())
    };
    let strtab = if (1..shnum).contains(&strndx) {
        data_of(&shdr(&table, strndx))?
    } else {
        Vec::new()
    };
    let name = |s: &Shdr| {
        let at = usize::try_from(s.name).ok()?;
        let tail = strtab.get(at..)?;
        let end = tail.iter().position(|b| *b == 0)?;
        std::str::from_utf8(&tail[..end]).ok()
    };
    let mut headline = Headline {
        modinfo: Vec::new(),
        signed: false,
        livepatch: false,
        klp_rela_sections: Vec::new(),
    };
    // The first `.modinfo`, as `section_by_name` finds it.
    let mut modinfo_seen = false;
    for i in 1..shnum {
        let s = shdr(&table, i);
        match name(&s) {
            Some(".modinfo") if !modinfo_seen => {
                modinfo_seen = true;
                headline.modinfo = data_of(&s)?;
            }
            Some(n) if n.starts_with(".klp.rela.") => headline.klp_rela_sections.push(names.own(n)),
            _ => {}
        }
    }
    headline.livepatch = headline.modinfo().contains(&("livepatch", "Y"));
    let marker = SIGNATURE_MAGIC.len() as u64;
    headline.signed =
        len >= marker && *src.read_at(len - marker, marker).map_err(io)? == *SIGNATURE_MAGIC;
    Ok(headline)
}
