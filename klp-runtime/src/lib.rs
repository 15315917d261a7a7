//! Runtime of Rust livepatch modules, in one `no_std` crate used everywhere:
//!
//! - [`abi`]: the table format the macros write into the module (the single definition);
//! - [`reader`]: the single decoder of it, for the kernel, the simulator and `cargo klp inspect`;
//! - [`plan`]: the replace planner, pure, run by the kernel module itself on replace;
//! - `dispatch`: the dispatcher that runs the plans from the kernel's callbacks, in the
//!   kernel module and (over a model of the livepatch core) in the simulator;
//! - [`shadow`], [`hook`]: what patch code uses (shadow variables, callback types);
//! - `kernel` (target `x86_64-unknown-none`): the in-kernel dispatcher and bindings;
//! - `sim` (host): a model of the kernel's livepatch core to run patches under `cargo test`.
//!
//! The simulator is compiled for every hosted target rather than behind a feature: a patch
//! crate cannot give its own dependency target-dependent default features, and the kernel
//! build (`target_os = "none"`) must never see it.
#![cfg_attr(target_os = "none", no_std)]

extern crate alloc;

pub mod abi;
pub mod bindings;
pub mod check;
mod dispatch;
pub mod fallible;
pub mod hook;
pub mod plan;
pub mod reader;
pub mod shadow;

#[cfg(not(target_os = "none"))]
pub mod sim;

#[cfg(target_os = "none")]
pub mod kernel;

pub use hook::{Errno, Object, Result};
pub use klp_macros::{kernel_struct, klp_callbacks, klp_extern, klp_func, klp_shadow};

/// The platform layer: `klp_shadow_*`, logging and the kernel interfaces of [`bindings`],
/// from the kernel or the simulator, behind one face. Everything above calls only this.
mod sys {
    #[cfg(target_os = "none")]
    pub(crate) use crate::kernel::sys::*;
    #[cfg(target_os = "none")]
    pub use crate::kernel::SeqFile;
    #[cfg(not(target_os = "none"))]
    pub(crate) use crate::sim::sys::*;
    #[cfg(not(target_os = "none"))]
    pub use crate::sim::SeqFile;
}

/// Logs a message from patch code: `pr_info` in the kernel (prefixed with the module name),
/// the simulator's log on the host.
#[macro_export]
macro_rules! pr_info {
    ($($arg:tt)*) => { $crate::__log(::core::format_args!($($arg)*)) };
}

#[doc(hidden)]
pub fn __log(args: core::fmt::Arguments<'_>) {
    sys::log(args)
}

/// The section a table of the calling crate lives in. Each crate gets its own (see
/// [`abi::section`]); the macros and [`patch!`] name sections only through this.
#[doc(hidden)]
#[macro_export]
macro_rules! __section {
    (patch) => {
        ::core::concat!("klp_rs_patch_", ::core::env!("CARGO_CRATE_NAME"))
    };
    (funcs) => {
        ::core::concat!("klp_rs_funcs_", ::core::env!("CARGO_CRATE_NAME"))
    };
    (sets) => {
        ::core::concat!("klp_rs_sets_", ::core::env!("CARGO_CRATE_NAME"))
    };
    (shadows) => {
        ::core::concat!("klp_rs_shadows_", ::core::env!("CARGO_CRATE_NAME"))
    };
}

/// Declares the patch: once, at the root of a patch crate. It emits the patch header
/// (`KLP_PATCH`), which points to the tables that `#[klp_func]`, `#[klp_callbacks]` and
/// `#[klp_shadow]` fill, wherever in the crate they are.
///
/// ```ignore
/// klp_runtime::patch!();
/// ```
#[macro_export]
macro_rules! patch {
    () => {
        /// This patch's tables (see `klp_runtime::abi::PatchHeader`).
        #[used]
        #[unsafe(link_section = $crate::__section!(patch))]
        pub static KLP_PATCH: $crate::abi::PatchHeader = {
            // Zero-length markers make each section exist even when nothing else is in it,
            // so the linker defines its bounds.
            #[used]
            #[unsafe(link_section = $crate::__section!(funcs))]
            static FUNCS: [$crate::abi::FuncEntry; 0] = [];
            #[used]
            #[unsafe(link_section = $crate::__section!(sets))]
            static SETS: [$crate::abi::CallbackSetEntry; 0] = [];
            #[used]
            #[unsafe(link_section = $crate::__section!(shadows))]
            static SHADOWS: [$crate::abi::ShadowEntry; 0] = [];
            unsafe extern "C" {
                #[link_name = ::core::concat!("__start_", $crate::__section!(funcs))]
                static FUNCS_START: u8;
                #[link_name = ::core::concat!("__stop_", $crate::__section!(funcs))]
                static FUNCS_STOP: u8;
                #[link_name = ::core::concat!("__start_", $crate::__section!(sets))]
                static SETS_START: u8;
                #[link_name = ::core::concat!("__stop_", $crate::__section!(sets))]
                static SETS_STOP: u8;
                #[link_name = ::core::concat!("__start_", $crate::__section!(shadows))]
                static SHADOWS_START: u8;
                #[link_name = ::core::concat!("__stop_", $crate::__section!(shadows))]
                static SHADOWS_STOP: u8;
            }
            $crate::abi::PatchHeader::new(
                $crate::abi::cstr(::core::concat!(::core::env!("CARGO_CRATE_NAME"), "\0")),
                $crate::abi::Table {
                    start: &raw const FUNCS_START,
                    end: &raw const FUNCS_STOP,
                },
                $crate::abi::Table {
                    start: &raw const SETS_START,
                    end: &raw const SETS_STOP,
                },
                $crate::abi::Table {
                    start: &raw const SHADOWS_START,
                    end: &raw const SHADOWS_STOP,
                },
            )
        };
    };
}
