//! Finding a plugin's entry points beside its root module (feature `loader`): the [`ExportedEntry`] a
//! plugin exports under [`PENDING_SYMBOL`] (pending jobs) or [`DIRECT_SYMBOL`] (jobs lent as a `JobRef`),
//! checked with abi_stable's layout check before use.
//!
//! abi_stable checks the root module itself; these exports are looked up by hand, which needs the one
//! `unsafe` call of the loader (reading a symbol as a given type), and then checked the same way.
//!
//! [`PENDING_SYMBOL`]: crate::abi::PENDING_SYMBOL
//! [`DIRECT_SYMBOL`]: crate::abi::DIRECT_SYMBOL

use std::ffi::CString;
use std::path::Path;

use abi_stable::abi_stability::abi_checking::check_layout_compatibility;
use abi_stable::library::RawLibrary;
use abi_stable::StableAbi;

use crate::abi::ExportedEntry;

/// The entry points `M` the library at `path` exports under `symbol`: `Ok(None)` when it has none (built
/// before they existed), `Err` with a one-line reason naming `what` when it has them in a layout this host
/// cannot use.
pub(crate) fn find<M: StableAbi + Copy + 'static>(
    path: &Path,
    symbol: &str,
    what: &str,
) -> Result<Option<M>, String> {
    // The library is already open (the root module was loaded from it): this only takes another reference
    // to it, kept for the life of the process as every plugin library is.
    let library: &'static RawLibrary = match RawLibrary::load_at(path) {
        Ok(library) => Box::leak(Box::new(library)),
        Err(e) => return Err(format!("cannot reopen the library: {e}")),
    };
    let name = CString::new(symbol).expect("the symbol name has no NUL");
    // SAFETY: a library that exports `symbol` defines it with `export_plugin!` as a static
    // `ExportedEntry<M>` (`repr(C)`), whose first field (`layout`, an abi_stable `TypeLayout` of the
    // abi_stable 0.11 the root module's check already accepted) is read and compared with `M`'s before
    // `module` is used; the symbol's value is the address of that static, which lives as long as the
    // library, which is never unloaded.
    let entry: &'static ExportedEntry<M> =
        match unsafe { library.get::<*const ExportedEntry<M>>(name.as_bytes_with_nul()) } {
            Ok(symbol) => unsafe { &**symbol },
            Err(_) => return Ok(None),
        };
    check_layout_compatibility(<M as StableAbi>::LAYOUT, entry.layout).map_err(|e| {
        format!(
            "incompatible {what}: {}",
            e.to_string()
                .lines()
                .find(|l| l.trim_start().starts_with("Error:"))
                .unwrap_or("layout differs")
                .trim()
        )
    })?;
    Ok(Some(entry.module))
}
