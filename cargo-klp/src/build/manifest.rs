//! The patch crate: its package and its `[package.metadata.klp]` settings.

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use cargo_metadata::{MetadataCommand, Package};

use crate::kbuild::{self, ModuleSettings};

use super::*;

pub(super) fn settings(pkg: &Package) -> Result<ModuleSettings> {
    let meta = pkg.metadata.get("klp");
    let get = |k: &str| meta.and_then(|m| m.get(k));
    let string = |k: &str| -> Result<Option<String>> {
        match get(k) {
            None => Ok(None),
            Some(v) => v.as_str().map(|s| Some(s.to_string())).ok_or_else(|| {
                anyhow!(
                    "[package.metadata.klp] {k} in {} must be a string",
                    pkg.manifest_path
                )
            }),
        }
    };
    let name = string("name")?.unwrap_or_else(|| format!("klp_{}", pkg.name.replace('-', "_")));
    kbuild::check_module_name(&name)
        .map_err(|e| anyhow!("[package.metadata.klp] in {}: {e}", pkg.manifest_path))?;
    let replace = match get("replace") {
        None => true,
        Some(v) => v.as_bool().ok_or_else(|| {
            anyhow!(
                "[package.metadata.klp] replace in {} must be true or false",
                pkg.manifest_path
            )
        })?,
    };
    Ok(ModuleSettings {
        name,
        replace,
        description: string("description")?.or_else(|| pkg.description.clone()),
        license: string("license")?.unwrap_or_else(|| "GPL".into()),
        author: string("author")?.or_else(|| pkg.authors.first().cloned()),
        alloc_faults: false,
        native_sets: false,
    })
}

pub(super) fn find_package(opts: &BuildOptions) -> Result<(Package, PathBuf)> {
    let mut cmd = MetadataCommand::new();
    cmd.no_deps();
    if let Some(m) = &opts.manifest_path {
        cmd.manifest_path(m);
    }
    let meta = cmd.exec().context("cargo metadata failed")?;
    let target_dir = meta.target_directory.clone().into_std_path_buf();
    let pkg = match &opts.package {
        Some(p) => meta
            .packages
            .iter()
            .find(|k| k.name.as_str() == p.as_str())
            .cloned(),
        None => {
            let manifest = match &opts.manifest_path {
                Some(m) => std::fs::canonicalize(m)?,
                None => std::env::current_dir()?.join("Cargo.toml"),
            };
            meta.packages
                .iter()
                .find(|k| k.manifest_path.as_std_path() == manifest)
                .cloned()
        }
    };
    let pkg = pkg.ok_or_else(|| match &opts.package {
        Some(p) => anyhow!("no package `{p}` in this workspace"),
        None => {
            anyhow!("run cargo klp in a patch crate's directory, or pass -p or --manifest-path")
        }
    })?;
    Ok((pkg, target_dir))
}
