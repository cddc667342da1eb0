//! Finding a plugin's pending-job entry point (feature `loader`): the [`PendingEntry`] a plugin built with
//! pending jobs exports under [`PENDING_SYMBOL`], checked with abi_stable's layout check before use.
//!
//! abi_stable checks the root module itself; this second export is looked up by hand, which needs the one
//! `unsafe` call of the loader (reading a symbol as a given type), and then checked the same way.

use std::ffi::CString;
use std::path::Path;

use abi_stable::abi_stability::abi_checking::check_layout_compatibility;
use abi_stable::library::RawLibrary;
use abi_stable::StableAbi;

use crate::abi::{PendingEntry, PendingModule, PENDING_SYMBOL};

/// The pending-job entry points of the library at `path`: `Ok(None)` when it has none (built before they
/// existed), `Err` with a one-line reason when it has them in a layout this host cannot use.
pub(crate) fn find(path: &Path) -> Result<Option<PendingModule>, String> {
    // The library is already open (the root module was loaded from it): this only takes another reference
    // to it, kept for the life of the process as every plugin library is.
    let library: &'static RawLibrary = match RawLibrary::load_at(path) {
        Ok(library) => Box::leak(Box::new(library)),
        Err(e) => return Err(format!("cannot reopen the library: {e}")),
    };
    let name = CString::new(PENDING_SYMBOL).expect("the symbol name has no NUL");
    // SAFETY: a library that exports `PENDING_SYMBOL` defines it with `export_plugin!` as a static
    // `PendingEntry`, whose first field (`layout`, an abi_stable `TypeLayout` of the abi_stable 0.11 the root
    // module's check already accepted) is read before `module` is used; the symbol's value is the address of
    // that static, which lives as long as the library, which is never unloaded.
    let entry: &'static PendingEntry =
        match unsafe { library.get::<*const PendingEntry>(name.as_bytes_with_nul()) } {
            Ok(symbol) => unsafe { &**symbol },
            Err(_) => return Ok(None),
        };
    check_layout_compatibility(<PendingModule as StableAbi>::LAYOUT, entry.layout).map_err(
        |e| {
            format!(
                "incompatible pending-job interface: {}",
                e.to_string()
                    .lines()
                    .find(|l| l.trim_start().starts_with("Error:"))
                    .unwrap_or("layout differs")
                    .trim()
            )
        },
    )?;
    Ok(Some(entry.module))
}
