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

/// The `.BTF` section of a module (an uncompressed `.ko`): split BTF on vmlinux's.
pub fn from_module(ko: &[u8]) -> Result<Vec<u8>> {
    let file = object::File::parse(ko).context("not an ELF file")?;
    let section = object::Object::section_by_name(&file, ".BTF")
        .ok_or_else(|| anyhow!("the module has no .BTF section (CONFIG_DEBUG_INFO_BTF_MODULES)"))?;
    Ok(object::ObjectSection::data(&section)?.to_vec())
}

/// Where a kernel's BTF files are kept: in the per-user cache (or in `work` without one),
/// under the release and a stamp of the image, so that another build under the same release
/// name gets its own.
pub fn btf_dir(kernel: &Kernel, work: &Path) -> Result<PathBuf> {
    let stamp = kernel
        .image_stamp()
        .with_context(|| format!("cannot read {}", kernel.vmlinux.display()))?;
    let dir = crate::cache_dir()
        .unwrap_or_else(|| work.to_path_buf())
        .join("btf")
        .join(format!("{}-{stamp}", kernel.release));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Writes whole under another name, then renames: a reader never sees half of it.
fn keep(file: &Path, data: &[u8]) -> Result<()> {
    let tmp = file.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, data).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("cannot write {}", file.display()))
}

/// The kernel's BTF as a file, extracted from its image once.
pub fn vmlinux_btf(kernel: &Kernel, work: &Path) -> Result<PathBuf> {
    let file = btf_dir(kernel, work)?.join("vmlinux.btf");
    if !file.exists() {
        let image = std::fs::read(&kernel.vmlinux)
            .with_context(|| format!("cannot read {}", kernel.vmlinux.display()))?;
        let btf = from_image(&image).with_context(|| kernel.vmlinux.display().to_string())?;
        keep(&file, &btf)?;
    }
    Ok(file)
}

/// A module's split BTF as a file (`NAME.btf` beside vmlinux's), extracted from the
/// kernel image's module once.
pub fn module_btf(kernel: &Kernel, name: &str, work: &Path) -> Result<PathBuf> {
    let file = btf_dir(kernel, work)?.join(format!("{name}.btf"));
    if !file.exists() {
        let ko = kernel.image_module(name, work)?;
        let data = std::fs::read(&ko).with_context(|| format!("cannot read {}", ko.display()))?;
        let btf = from_module(&data).with_context(|| ko.display().to_string())?;
        keep(&file, &btf)?;
    }
    Ok(file)
}

/// The modules whose BTF is already extracted for this kernel.
pub fn extracted_modules(kernel: &Kernel, work: &Path) -> Vec<String> {
    let Ok(dir) = btf_dir(kernel, work) else {
        return Vec::new();
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let module = name.strip_suffix(".btf")?;
            (module != "vmlinux").then(|| module.to_string())
        })
        .collect();
    names.sort();
    names
}
