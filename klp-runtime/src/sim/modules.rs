//! Target modules loading and unloading: `klp_module_coming`, `klp_module_going` and
//! `klp_cleanup_module_patches_limited`, as the 5.10, 6.1 and 6.12 cores call patches' callbacks.

use super::*;

impl Kernel {
    /// A target module loads (`klp_module_coming`, then its init succeeds). When a patch's
    /// `pre_patch` refuses it, the load fails: the log says why, and the module is not
    /// loaded.
    pub fn load_object(&mut self, object: &str) -> Result<(), SimError> {
        self.module_coming(object).map(|_| ())
    }

    /// A target module loads and its init then fails: `klp_module_coming`, then
    /// `klp_module_going` for the module still coming.
    pub fn load_object_failing_init(&mut self, object: &str) -> Result<(), SimError> {
        if self.module_coming(object)? {
            self.module_going(object);
        }
        Ok(())
    }

    /// Whether the module came (no `pre_patch` refused it).
    fn module_coming(&mut self, object: &str) -> Result<bool, SimError> {
        if self.loaded.contains_key(object) {
            return Err(SimError::AlreadyLoaded(object.into()));
        }
        if crate::abi::is_vmlinux(object) {
            // klp_module_coming refuses it: "vmlinux.ko: invalid module name".
            return Err(SimError::InvalidModuleName(object.into()));
        }
        self.loaded.insert(object.into(), 0);
        let transition = self.transition.as_ref().map(|t| t.patch);
        for (i, p) in self.klp_patches.clone().into_iter().enumerate() {
            let Some((m, o)) = self.object_of(p, object) else {
                continue;
            };
            if self.pre_patch(m, o).is_err() {
                // klp_cleanup_module_patches_limited(mod, patch): the patches before.
                self.cleanup_module(object, Some(i));
                self.release_module(object);
                return Ok(false);
            }
            self.modules[m].objects[o].patched = true;
            if transition != Some(p) {
                let _ = self.callback(m, o, Hook::PostPatch);
            }
        }
        Ok(true)
    }

    /// A target module unloads (`rmmod`, then `klp_module_going`). A module the runtime
    /// pinned for a transition is in use: `rmmod` fails, as `try_module_get` makes it.
    pub fn unload_object(&mut self, object: &str) -> Result<(), SimError> {
        match self.loaded.get(object) {
            None => Ok(()),
            Some(&refs) if refs > 0 => Err(SimError::ModuleInUse(object.into())),
            Some(_) => {
                self.module_going(object);
                Ok(())
            }
        }
    }

    /// `rmmod -f`: the module goes even if pinned (`klp_module_going` all the same).
    pub fn force_unload_object(&mut self, object: &str) {
        if self.loaded.contains_key(object) {
            self.module_going(object);
        }
    }

    fn module_going(&mut self, object: &str) {
        self.cleanup_module(object, None);
        self.release_module(object);
    }

    /// `klp_cleanup_module_patches_limited`: the patches before `limit` (all: `None`) tear
    /// down their object for the module.
    fn cleanup_module(&mut self, object: &str, limit: Option<usize>) {
        let transition = self.transition.as_ref().map(|t| t.patch);
        let patches = self.klp_patches.clone();
        for p in patches.into_iter().take(limit.unwrap_or(usize::MAX)) {
            let Some((m, o)) = self.object_of(p, object) else {
                continue;
            };
            if transition != Some(p) {
                let _ = self.callback(m, o, Hook::PreUnpatch);
            }
            self.modules[m].objects[o].patched = false;
            self.post_unpatch(m, o);
        }
    }

    /// The module is freed. A pin still held on it would be a reference to freed memory in
    /// the kernel: a runtime bug, which the simulator stops at.
    fn release_module(&mut self, object: &str) {
        self.loaded.remove(object);
        if let Some(m) = self
            .modules
            .iter()
            .find(|m| m.pins.iter().any(|p| *p == object))
        {
            panic!(
                "klp-rs runtime bug: {} still pins {object}, which has been freed",
                m.name
            );
        }
    }

    /// Patch `patch`'s object for module `object` (the first, as the kernel's loops take):
    /// the indexes of the patch module and of the object.
    fn object_of(&self, patch: &str, object: &str) -> Option<(usize, usize)> {
        let m = self.index(patch).ok()?;
        let o = self.modules[m]
            .objects
            .iter()
            .position(|o| o.name == object)?;
        Some((m, o))
    }
}
