//! The environment as the host reads it: one snapshot of the process's variables, looked up only through
//! entries of the variable table ([`super::vars`]), plus the raw look-up of the keys a plugin declares.
//!
//! Every subcommand and the plugin loader read through [`Env`]; tests build one from a list of pairs. Every
//! table entry consulted is remembered, so a test can compare what the code reads with the table.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::env::VarError;
use std::ffi::OsString;

use super::vars::{Default, Var};

/// A snapshot of the environment. Blank values count as unset for table entries; a variable whose value
/// is not UTF-8 counts as unset there too, and is an error when a plugin declared it.
pub struct Env {
    vars: BTreeMap<String, String>,
    not_unicode: BTreeMap<String, OsString>,
    consulted: RefCell<BTreeSet<&'static str>>,
}

impl Env {
    /// The process's environment now.
    pub fn from_process() -> Env {
        let mut vars = BTreeMap::new();
        let mut not_unicode = BTreeMap::new();
        for (name, value) in std::env::vars_os() {
            // A name that is not UTF-8 cannot be asked for.
            let Ok(name) = name.into_string() else {
                continue;
            };
            match value.into_string() {
                Ok(value) => {
                    vars.insert(name, value);
                }
                Err(value) => {
                    not_unicode.insert(name, value);
                }
            }
        }
        Env {
            vars,
            not_unicode,
            consulted: RefCell::new(BTreeSet::new()),
        }
    }

    /// An environment of exactly these variables.
    #[cfg(test)]
    pub fn from_vars<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        Env {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            not_unicode: BTreeMap::new(),
            consulted: RefCell::new(BTreeSet::new()),
        }
    }

    /// The value of `var` when set and not blank.
    pub fn get(&self, var: &'static Var) -> Option<String> {
        debug_assert!(!var.name.contains('<'), "{} is a family", var.name);
        self.consulted.borrow_mut().insert(var.name);
        self.vars
            .get(var.name)
            .filter(|v| !v.trim().is_empty())
            .cloned()
    }

    /// The value of `var`, else its default value (for entries with [`Default::Value`]).
    pub fn get_or_default(&self, var: &'static Var) -> Option<String> {
        self.get(var).or(match var.default {
            Default::Value(d) => Some(d.to_owned()),
            _ => None,
        })
    }

    /// The set, non-blank variables of the family `var` (`QUEUE_<Q>_…`): `(variable, <Q>, value)`.
    pub fn matching(&self, var: &'static Var) -> Vec<(String, String, String)> {
        let suffix = var.queue_suffix().expect("a QUEUE_<Q>_ family");
        self.consulted.borrow_mut().insert(var.name);
        self.vars
            .iter()
            .filter(|(_, value)| !value.trim().is_empty())
            .filter_map(|(name, value)| {
                let queue = name.strip_prefix("QUEUE_")?.strip_suffix(suffix)?;
                (!queue.is_empty()).then(|| (name.clone(), queue.to_owned(), value.clone()))
            })
            .collect()
    }

    /// The set, non-blank variables of a family with one `<NAME>` placeholder at its end
    /// (`PLUGIN_ISOLATION_<NAME>`): `(variable, <NAME>, value)`.
    pub fn family(&self, var: &'static Var) -> Vec<(String, String, String)> {
        let prefix = var
            .name
            .strip_suffix("<NAME>")
            .expect("a family ending in <NAME>");
        self.consulted.borrow_mut().insert(var.name);
        self.vars
            .iter()
            .filter(|(_, value)| !value.trim().is_empty())
            .filter_map(|(name, value)| {
                let member = name.strip_prefix(prefix)?;
                (!member.is_empty()).then(|| (name.clone(), member.to_owned(), value.clone()))
            })
            .collect()
    }

    /// A variable a plugin declared (`PLUGIN_<NAME>_<KEY>` or `<KEY>`), exactly as `std::env::var` answers:
    /// an empty value is a value, one that is not UTF-8 is an error.
    pub fn plugin_key(&self, name: &str) -> Result<String, VarError> {
        if let Some(value) = self.vars.get(name) {
            return Ok(value.clone());
        }
        match self.not_unicode.get(name) {
            Some(raw) => Err(VarError::NotUnicode(raw.clone())),
            None => Err(VarError::NotPresent),
        }
    }

    /// The names of the entries consulted so far.
    #[cfg(test)]
    pub fn consulted(&self) -> BTreeSet<&'static str> {
        self.consulted.borrow().clone()
    }

    /// An environment with these variables, and these whose values are not UTF-8.
    #[cfg(test)]
    pub fn with_not_unicode(mut self, names: &[&str]) -> Env {
        for name in names {
            self.not_unicode
                .insert((*name).to_owned(), OsString::from("\u{fffd}"));
        }
        self
    }
}
