//! Attribute macros of klp-rs, re-exported by `klp_runtime`. Each writes one entry of the
//! table format (`klp_runtime::abi`) into the crate's table sections; `klp_runtime::patch!()`
//! at the crate root makes the header that points to them.
//!
//! Each entry point is a shim: parse the arguments ([`internals::attr`]; the items are
//! `syn`'s), validate the item ([`internals::check`]), expand ([`expand`]). Misuse is a compile error with a span and
//! the fix; what needs the whole crate (duplicate set ids, a shadow type owned by a set that
//! does not exist, a function patched twice) is checked when the tables are loaded
//! (`klp_runtime::check`).

mod btf;
mod expand;
mod internals;

use proc_macro::TokenStream;

/// Marks the replacement for a kernel function.
///
/// Keys: `name = "symbol"` (required: the function to replace), `object = "vmlinux"` (or a
/// module name; default `vmlinux`), `sympos = N` (which of several same-named local symbols;
/// default 0, meaning the name is unique). The function must be `extern "C"` and not generic.
///
/// ```ignore
/// #[klp_func(name = "cmdline_proc_show")]
/// extern "C" fn cmdline_proc_show(m: *mut SeqFile, v: *mut c_void) -> c_int { ... }
/// ```
#[proc_macro_attribute]
pub fn klp_func(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::func::expand(args.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Declares kernel symbols the kernel does not export, for the patch to call or read: a
/// static function, a variable, or a module's. `cargo klp build` checks each against the
/// booted target kernel and reaches it through a livepatch relocation, which the livepatch
/// core resolves when the module (or, for a module's symbol, that module) loads.
///
/// Keys: `object = "vmlinux"` (default) or a module name; `sympos = N` (which of several
/// symbols of the same name, in kallsyms order; default 0, meaning the name is unique; a
/// block with `sympos` declares one item). A plain `extern "C"` block works too for unique
/// vmlinux symbols. On the host, the items keep their plain names: the test defines them.
///
/// ```ignore
/// #[klp_extern(object = "binfmt_misc")]
/// extern "C" {
///     fn bm_status_read(file: *mut c_void, buf: *mut u8, n: usize, pos: *mut i64) -> isize;
///     // A static function the compiler renamed: its kernel name in `link_name`.
///     #[link_name = "load_misc_binary.isra.0"]
///     fn load_misc_binary(bprm: *mut c_void) -> c_int;
/// }
/// ```
#[proc_macro_attribute]
pub fn klp_extern(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::external::expand(args.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// A kernel struct with the members the patch uses, under the kernel's names. In the
/// kernel build each member sits where the target kernel's BTF puts it (`cargo klp build`
/// hands the macro the kernel's BTF), so the same source builds for kernels whose layouts
/// differ; a member the kernel lacks, a bitfield, or a declared type that does not fit the
/// kernel's is a build error naming both. On the host it is a plain `repr(C)` struct with
/// the declared fields, for tests to make. Either way, read a member with its accessor:
/// `task.pid()` (a reference) or `task.pid_ptr()` (a raw pointer, for `READ_ONCE`-style reads
/// and writes). Members of anonymous structs and unions are named as C names them.
///
/// Keys: `name = "..."` (the kernel's struct name, if the Rust name differs), `object =
/// "vmlinux"` (default) or a module whose own struct it is (read from its split BTF).
///
/// ```ignore
/// #[kernel_struct]
/// pub struct task_struct {
///     pub pid: i32,
///     pub comm: [u8; 16],
/// }
/// ```
#[proc_macro_attribute]
pub fn kernel_struct(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::kernel_struct::expand(args.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Declares a callback set on an inline module whose `pub fn`s are its hooks: any of
/// `pre_patch` (returns `klp_runtime::Result`; an error vetoes the patch), `post_patch`,
/// `pre_unpatch`, `post_unpatch`. Each takes `&klp_runtime::Object` or nothing. Other
/// functions in the module must be private.
///
/// Keys: `id = N` (required, non-zero, unique in the patch: sets are matched by id across
/// patches on replace), `object = "vmlinux"` (default) or a module name.
///
/// ```ignore
/// #[klp_callbacks(id = 3)]
/// mod inflight {
///     pub fn pre_patch(obj: &Object) -> Result { Ok(()) }
///     pub fn post_unpatch(obj: &Object) {}
/// }
/// ```
#[proc_macro_attribute]
pub fn klp_callbacks(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::callbacks::expand(args.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Declares a shadow variable type, owned by a callback set: when that set leaves (disable,
/// or a replace by a patch without it), every variable of the type is freed.
///
/// Keys: `id = N` (required, non-zero: the `klp_shadow` id), `callbacks = N` (required: the
/// owning set's id), `type = T` (the data; omit it to use the annotated struct itself).
///
/// On a unit struct with `type = T`, the struct becomes the handle; on a struct without
/// `type`, the struct is the data and its own handle. Either way the handle gets `get(obj)`,
/// `get_or_alloc(obj, init)`, `alloc(obj, value)`, `free(obj)` and `free_all()`; the
/// destructor is `Drop`.
///
/// ```ignore
/// #[klp_shadow(type = u64, id = 0x20, callbacks = 2)]
/// pub struct TaskReads;
/// ```
#[proc_macro_attribute]
pub fn klp_shadow(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::shadow::expand(args.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
