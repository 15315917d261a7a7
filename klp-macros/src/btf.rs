//! The target kernel's BTF as `cargo klp build` names it: vmlinux's in [`BTF_ENV`], and the
//! modules' split BTF it has extracted in [`MODULES_ENV`]; each loaded once per compilation.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use klp_btf::*;

/// The variable naming vmlinux's BTF file (cargo-klp's `build::BTF_ENV`, the same name).
pub const BTF_ENV: &str = "KLP_RS_BTF";
/// The variable naming the modules whose split BTF cargo klp build extracted:
/// `DIR:name,name` (DIR holds `name.btf`); cargo-klp's `build::MODULES_ENV`.
pub const MODULES_ENV: &str = "KLP_RS_BTF_MODULES";

type Loaded = HashMap<PathBuf, Arc<Kernel>>;

fn load(path: PathBuf, base: Option<&Kernel>) -> Result<Arc<Kernel>, String> {
    static LOADED: Mutex<Option<Loaded>> = Mutex::new(None);
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    let loaded = loaded.get_or_insert_with(HashMap::new);
    if let Some(btf) = loaded.get(&path) {
        return Ok(btf.clone());
    }
    let btf = Arc::new(klp_btf::load(&path, base)?);
    loaded.insert(path, btf.clone());
    Ok(btf)
}

/// vmlinux's BTF, if `cargo klp build` named it.
pub fn kernel() -> Option<Result<Arc<Kernel>, String>> {
    let path = std::env::var_os(BTF_ENV).filter(|v| !v.is_empty())?;
    Some(load(PathBuf::from(path), None))
}

/// The BTF to read `object`'s types and functions in: vmlinux's, or the module's split BTF
/// on it. `None` if the build did not provide it (no BTF, or a module it has not extracted:
/// the build then extracts it and compiles again).
pub fn for_object(object: &str) -> Option<Result<Arc<Kernel>, String>> {
    let vmlinux = match kernel()? {
        Ok(v) => v,
        Err(e) => return Some(Err(e)),
    };
    if object == crate::internals::symbol::VMLINUX {
        return Some(Ok(vmlinux));
    }
    let modules = std::env::var(MODULES_ENV).ok()?;
    let (dir, names) = modules.rsplit_once(':')?;
    names.split(',').any(|n| n == object).then(|| {
        load(
            PathBuf::from(dir).join(format!("{object}.btf")),
            Some(&vmlinux),
        )
    })
}

/// Items that make cargo rebuild the crate when the BTF it was checked against changes:
/// vmlinux's file, and for a module object the list of modules' BTF extracted.
pub fn tracking(object: &str) -> proc_macro2::TokenStream {
    let (btf, modules) = (BTF_ENV, MODULES_ENV);
    let module = (object != crate::internals::symbol::VMLINUX).then(|| {
        quote::quote! {
            #[cfg(target_os = "none")]
            const _: ::core::option::Option<&str> = ::core::option_env!(#modules);
        }
    });
    quote::quote! {
        #[cfg(target_os = "none")]
        const _: ::core::option::Option<&str> = ::core::option_env!(#btf);
        #module
    }
}
