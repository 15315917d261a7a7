//! The names the macros know: attribute keys and hook names.

pub const NAME: &str = "name";
pub const OBJECT: &str = "object";
pub const SYMPOS: &str = "sympos";
pub const ID: &str = "id";
pub const TYPE: &str = "type";
pub const CALLBACKS: &str = "callbacks";

pub const PRE_PATCH: &str = "pre_patch";
pub const POST_PATCH: &str = "post_patch";
pub const PRE_UNPATCH: &str = "pre_unpatch";
pub const POST_UNPATCH: &str = "post_unpatch";
/// In table order.
pub const HOOKS: [&str; 4] = [PRE_PATCH, POST_PATCH, PRE_UNPATCH, POST_UNPATCH];

pub const VMLINUX: &str = "vmlinux";
