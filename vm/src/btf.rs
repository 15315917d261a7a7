//! The kernel's own description of its types (BTF: `CONFIG_DEBUG_INFO_BTF`), taken from its
//! image's `.BTF` section, as `/sys/kernel/btf/vmlinux` would give it on the running kernel.
//! `cargo klp build` hands it to the macros, which lay out kernel structs and check
//! prototypes by it.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::kernels::Kernel;

/// The BTF magic (`BTF_MAGIC`, include/uapi/linux/btf.h), little-endian.
const BTF_MAGIC: [u8; 2] = [0x9f, 0xeb];

/// The `.BTF` section of an uncompressed kernel (an ELF `vmlinux`) or of a bzImage.
pub fn from_image(image: &[u8]) -> Result<Vec<u8>> {
    let elf;
    let elf = if image.starts_with(b"\x7fELF") {
        image
    } else {
        elf = crate::kernels::vmlinux_from_bzimage(image)?;
        &elf[..]
    };
    let file = object::File::parse(elf).context("the kernel image is not an ELF file")?;
    let section = object::Object::section_by_name(&file, ".BTF").ok_or_else(|| {
        anyhow!("the kernel has no .BTF section: it was built without CONFIG_DEBUG_INFO_BTF")
    })?;
    let data = object::ObjectSection::data(&section)?;
    if !data.starts_with(&BTF_MAGIC) {
        bail!("the kernel's .BTF section does not start with the BTF magic");
    }
    Ok(data.to_vec())
}

/// The kernel's BTF as a file, extracted once and kept in the per-user cache (or in `work`
/// without one): named by release and a stamp of the image, so that another build under the
/// same release name gets its own.
pub fn vmlinux_btf(kernel: &Kernel, work: &Path) -> Result<PathBuf> {
    let dir = crate::cache_dir()
        .unwrap_or_else(|| work.to_path_buf())
        .join("btf");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let meta = std::fs::metadata(&kernel.vmlinux)
        .with_context(|| format!("cannot read {}", kernel.vmlinux.display()))?;
    let time = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let file = dir.join(format!("{}-{}-{time}.btf", kernel.release, meta.len()));
    if file.exists() {
        return Ok(file);
    }
    let image = std::fs::read(&kernel.vmlinux)
        .with_context(|| format!("cannot read {}", kernel.vmlinux.display()))?;
    let btf = from_image(&image).with_context(|| kernel.vmlinux.display().to_string())?;
    // Written whole under another name, then renamed: a reader never sees half of it.
    let tmp = file.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, btf).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &file).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(file)
}
