//! Checks a plugin file against this host before `dlopen`: the machine it was built for, and the glibc symbol
//! versions it needs.
//!
//! Both mistakes are easy to make when a plugin is built on a developer's machine and deployed into the
//! container image: a plugin built on a newer distribution than the image needs newer `GLIBC_x.y` symbol
//! versions, and a plugin built for another target (an ARM laptop) has another machine type. The dynamic
//! loader reports either as a terse `dlopen` error (`version 'GLIBC_2.39' not found`, `wrong ELF class`);
//! here the author reads which version is missing, which glibc the host has and what to do about it.
//!
//! The decisions ([`glibc_version`], [`missing_glibc`]) are pure and tested as tables; reading the ELF
//! files is separate.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use object::read::elf::{ElfFile64, Sym};
use object::{Architecture, Endianness, Object};

/// A glibc release or symbol version, as its dotted numbers (`GLIBC_2.2.5` is `[2, 2, 5]`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GlibcVersion(pub Vec<u32>);

impl fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u32::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

/// The version of a symbol-version name such as `GLIBC_2.34`; `None` for anything else (`GLIBC_PRIVATE`,
/// `GCC_3.0`, …).
pub fn glibc_version(name: &str) -> Option<GlibcVersion> {
    let numbers = name.strip_prefix("GLIBC_")?;
    let parts: Option<Vec<u32>> = numbers.split('.').map(|p| p.parse().ok()).collect();
    parts.filter(|p| p.len() >= 2).map(GlibcVersion)
}

/// One symbol version a library requires (an ELF `verneed` entry) and the symbols that use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionNeed {
    /// The library that must define it (`libc.so.6`).
    pub library: String,
    /// The version name (`GLIBC_2.34`).
    pub version: String,
    /// Undefined dynamic symbols bound to this version, sorted.
    pub symbols: Vec<String>,
}

/// The glibc symbol versions in `needs` that a host with glibc `host` does not define, newest first. glibc's
/// versions are cumulative: a release defines every `GLIBC_x.y` up to its own number.
pub fn missing_glibc<'a>(
    needs: &'a [VersionNeed],
    host: &GlibcVersion,
) -> Vec<(GlibcVersion, &'a VersionNeed)> {
    let mut missing: Vec<_> = needs
        .iter()
        .filter_map(|n| glibc_version(&n.version).map(|v| (v, n)))
        .filter(|(v, _)| v > host)
        .collect();
    missing.sort_by(|a, b| b.0.cmp(&a.0));
    missing
}

/// The sentence an author reads when a plugin needs a newer glibc than the host's.
pub fn explain_missing(missing: &[(GlibcVersion, &VersionNeed)], host: &GlibcVersion) -> String {
    let names: Vec<String> = missing
        .iter()
        .map(|(_, n)| {
            let mut symbols: Vec<&str> = n.symbols.iter().map(String::as_str).take(3).collect();
            if n.symbols.len() > 3 {
                symbols.push("…");
            }
            if symbols.is_empty() {
                format!("{} ({})", n.version, n.library)
            } else {
                format!("{} ({}: {})", n.version, n.library, symbols.join(", "))
            }
        })
        .collect();
    let newest = &missing[0].0;
    format!(
        "needs glibc {newest} but this host has glibc {host}: missing symbol version{} {}; build the plugin \
         against glibc {host} or older (inside the container image's build stage, or on a base image with an \
         older glibc)",
        if names.len() == 1 { "" } else { "s" },
        names.join(", ")
    )
}

/// Why a plugin file cannot run on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// Built for another machine (another target triple).
    Machine(String),
    /// Needs glibc symbol versions this host lacks.
    Glibc(String),
}

/// Checks the parsed plugin file `elf` (raw bytes `data`) against this host.
pub fn check(elf: &object::File<'_>, data: &[u8]) -> Result<(), Mismatch> {
    if let Some(host) = host_architecture() {
        let built_for = elf.architecture();
        if built_for != host || elf.is_64() != cfg!(target_pointer_width = "64") {
            return Err(Mismatch::Machine(format!(
                "built for another machine ({}, {}-bit) than this host ({}, {}-bit): build the plugin for \
                 this host's target ({})",
                arch_name(built_for),
                if elf.is_64() { 64 } else { 32 },
                arch_name(host),
                usize::BITS,
                host_target()
            )));
        }
    }
    let Some(host) = host_glibc() else {
        return Ok(());
    };
    let Ok(needs) = version_needs(data) else {
        // Unreadable version tables are left to the dynamic loader, which reports them itself.
        return Ok(());
    };
    let missing = missing_glibc(&needs, host);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Mismatch::Glibc(explain_missing(&missing, host)))
    }
}

fn host_architecture() -> Option<Architecture> {
    if cfg!(target_arch = "x86_64") {
        Some(Architecture::X86_64)
    } else if cfg!(target_arch = "aarch64") {
        Some(Architecture::Aarch64)
    } else {
        None
    }
}

fn host_target() -> &'static str {
    if cfg!(all(target_arch = "x86_64", target_env = "gnu")) {
        "x86_64-unknown-linux-gnu"
    } else if cfg!(all(target_arch = "aarch64", target_env = "gnu")) {
        "aarch64-unknown-linux-gnu"
    } else {
        std::env::consts::ARCH
    }
}

fn arch_name(arch: Architecture) -> String {
    match arch {
        Architecture::X86_64 => "x86_64".into(),
        Architecture::X86_64_X32 => "x86_64 x32".into(),
        Architecture::I386 => "i686".into(),
        Architecture::Aarch64 => "aarch64".into(),
        Architecture::Arm => "arm".into(),
        Architecture::Riscv64 => "riscv64".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The `verneed` entries of a 64-bit ELF file, with the undefined dynamic symbols bound to each.
pub fn version_needs(data: &[u8]) -> object::Result<Vec<VersionNeed>> {
    let elf = ElfFile64::<Endianness>::parse(data)?;
    let endian = elf.endian();
    let sections = elf.elf_section_table();
    let mut needs: BTreeMap<String, VersionNeed> = BTreeMap::new();
    if let Some((mut verneeds, link)) = sections.gnu_verneed(endian, data)? {
        let strings = sections.strings(endian, data, link)?;
        while let Some((verneed, mut auxes)) = verneeds.next()? {
            let library = String::from_utf8_lossy(verneed.file(endian, strings)?).into_owned();
            while let Some(aux) = auxes.next()? {
                let version = String::from_utf8_lossy(aux.name(endian, strings)?).into_owned();
                needs.insert(
                    version.clone(),
                    VersionNeed {
                        library: library.clone(),
                        version,
                        symbols: Vec::new(),
                    },
                );
            }
        }
    }
    if let Some(versions) = sections.versions(endian, data)? {
        let dynsyms = elf.elf_dynamic_symbol_table();
        for (index, sym) in dynsyms.enumerate() {
            if !sym.is_undefined(endian) {
                continue;
            }
            let version_index = versions.version_index(endian, index).index();
            let Ok(Some(version)) = versions.version(version_index) else {
                continue;
            };
            let name = String::from_utf8_lossy(version.name());
            if let Some(need) = needs.get_mut(name.as_ref()) {
                let symbol = dynsyms.symbol_name(endian, sym)?;
                need.symbols
                    .push(String::from_utf8_lossy(symbol).into_owned());
            }
        }
    }
    let mut needs: Vec<VersionNeed> = needs.into_values().collect();
    for need in &mut needs {
        need.symbols.sort();
    }
    Ok(needs)
}

/// The glibc of this process: the newest `GLIBC_x.y` that the loaded `libc.so.6` defines. `None` when the host
/// does not run on glibc (then there is nothing to check).
pub fn host_glibc() -> Option<&'static GlibcVersion> {
    static HOST: OnceLock<Option<GlibcVersion>> = OnceLock::new();
    HOST.get_or_init(|| {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let libc = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| {
                p.rsplit('/')
                    .next()
                    .is_some_and(|f| f.starts_with("libc.so."))
            })?
            .to_owned();
        let data = std::fs::read(libc).ok()?;
        defined_versions(&data)
            .ok()?
            .iter()
            .filter_map(|v| glibc_version(v))
            .max()
    })
    .as_ref()
}

/// The version names a 64-bit ELF library defines (`verdef`).
fn defined_versions(data: &[u8]) -> object::Result<Vec<String>> {
    let elf = ElfFile64::<Endianness>::parse(data)?;
    let endian = elf.endian();
    let sections = elf.elf_section_table();
    let mut names = Vec::new();
    if let Some((mut verdefs, link)) = sections.gnu_verdef(endian, data)? {
        let strings = sections.strings(endian, data, link)?;
        while let Some((_, mut auxes)) = verdefs.next()? {
            if let Some(aux) = auxes.next()? {
                names.push(String::from_utf8_lossy(aux.name(endian, strings)?).into_owned());
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(parts: &[u32]) -> GlibcVersion {
        GlibcVersion(parts.to_vec())
    }

    fn need(version: &str, symbols: &[&str]) -> VersionNeed {
        VersionNeed {
            library: "libc.so.6".into(),
            version: version.into(),
            symbols: symbols.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn symbol_version_names() {
        for (name, expected) in [
            ("GLIBC_2.2.5", Some(v(&[2, 2, 5]))),
            ("GLIBC_2.34", Some(v(&[2, 34]))),
            ("GLIBC_2.3", Some(v(&[2, 3]))),
            ("GLIBC_PRIVATE", None),
            ("GLIBC_2", None),
            ("GCC_3.0", None),
            ("GLIBC_2.x", None),
        ] {
            assert_eq!(glibc_version(name), expected, "{name}");
        }
    }

    #[test]
    fn only_versions_newer_than_the_host_are_missing() {
        let needs = [
            need("GLIBC_2.2.5", &["malloc"]),
            need("GLIBC_2.34", &["pthread_create"]),
            need("GLIBC_2.39", &["pidfd_spawnp"]),
            need("GLIBC_2.38", &["strlcpy"]),
            need("GLIBC_PRIVATE", &[]),
            need("GCC_4.2.0", &[]),
        ];
        let cases: [(&[u32], &[&str]); 4] = [
            (&[2, 36], &["GLIBC_2.39", "GLIBC_2.38"]),
            (&[2, 38], &["GLIBC_2.39"]),
            (&[2, 39], &[]),
            (&[2, 17], &["GLIBC_2.39", "GLIBC_2.38", "GLIBC_2.34"]),
        ];
        for (host, expected) in cases {
            let missing: Vec<&str> = missing_glibc(&needs, &v(host))
                .iter()
                .map(|(_, n)| n.version.as_str())
                .collect();
            assert_eq!(missing, expected, "host {host:?}");
        }
    }

    #[test]
    fn explanation_names_the_version_the_symbols_and_the_host_glibc() {
        let needs = [need("GLIBC_2.39", &["a", "b", "c", "d"])];
        let host = v(&[2, 36]);
        let text = explain_missing(&missing_glibc(&needs, &host), &host);
        assert!(
            text.starts_with("needs glibc 2.39 but this host has glibc 2.36: missing symbol version GLIBC_2.39 (libc.so.6: a, b, c, …)"),
            "{text}"
        );
        assert!(text.contains("build stage"), "{text}");
    }

    #[test]
    fn this_process_runs_on_a_known_glibc() {
        if cfg!(target_env = "gnu") {
            let host = host_glibc().expect("glibc of this process");
            assert!(host >= &v(&[2, 17]), "{host}");
        }
    }
}
