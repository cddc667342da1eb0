//! `frostguard-worker plugins new NAME`: writes a complete plugin crate outside this repository, the starting
//! point of a plugin author. It builds and passes its own harness test as generated.
//!
//! The crate depends on `frostguard-plugin-api` by path: the interface crate is not published to a registry,
//! so a path to a checkout of it is the honest dependency. A binary built from a checkout knows where that
//! checkout's `plugin-api/` is and uses it by default; `--api-path` names another one (a relative path is
//! written relative to the new crate, so the two can move together in one repository).

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::cli::NewPluginArgs;
use crate::output::out;
use crate::plugins::settings;

const CARGO_TOML: &str = include_str!("../templates/plugin/Cargo.toml.tmpl");
const LIB_RS: &str = include_str!("../templates/plugin/lib.rs.tmpl");
const HARNESS_RS: &str = include_str!("../templates/plugin/harness.rs.tmpl");
const README_MD: &str = include_str!("../templates/plugin/README.md.tmpl");
const GITIGNORE: &str = include_str!("../templates/plugin/gitignore.tmpl");

/// The `plugin-api/` of the checkout this binary was built from.
const BUILT_FROM_API: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-api");

/// Runs `plugins new`.
pub fn main(args: NewPluginArgs) -> anyhow::Result<ExitCode> {
    if let Some(problem) = name_problem(&args.name) {
        bail!("plugin name {:?}: {problem}", args.name);
    }
    let queue = args.queue.clone().unwrap_or_else(|| args.name.clone());
    if let Some(problem) = queue_problem(&queue) {
        bail!("queue name {queue:?}: {problem}");
    }
    let dir = args
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    let api = find_api(args.api_path.as_deref())?;
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} already exists and is not empty; nothing was written",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = write_crate(&dir, &args, &queue, &api);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result?;

    let lib = args.name.replace('-', "_");
    out!(
        "created plugin crate {} in {} (queue {queue}, job count-words)",
        args.name,
        dir.display()
    );
    out!("next steps:");
    out!("  cd {} && cargo test", dir.display());
    out!("  cargo build --release");
    out!(
        "  frostguard-worker plugins run --plugin target/release/lib{lib}.so --queue {queue} \
         --name count-words --data '{{\"text\": \"hello plugin\"}}'"
    );
    Ok(ExitCode::SUCCESS)
}

/// Where the interface crate is: the canonical path, and how the generated `Cargo.toml` refers to it.
struct ApiLocation {
    canonical: PathBuf,
    written_relative: bool,
}

fn find_api(given: Option<&Path>) -> anyhow::Result<ApiLocation> {
    let (path, written_relative) = match given {
        Some(p) => (p.to_owned(), p.is_relative()),
        None => (PathBuf::from(BUILT_FROM_API), false),
    };
    let manifest = path.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|e| match given {
        Some(_) => anyhow::anyhow!(
            "--api-path {}: cannot read {}: {e}",
            path.display(),
            manifest.display()
        ),
        None => anyhow::anyhow!(
            "this frostguard-worker was built from a checkout that is no longer at {}; pass --api-path \
             <checkout>/plugin-api",
            path.display()
        ),
    })?;
    if !text
        .lines()
        .any(|l| l.trim() == r#"name = "frostguard-plugin-api""#)
    {
        bail!(
            "{} is not the frostguard-plugin-api crate",
            manifest.display()
        );
    }
    let canonical = path
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    Ok(ApiLocation {
        canonical,
        written_relative,
    })
}

fn write_crate(
    dir: &Path,
    args: &NewPluginArgs,
    queue: &str,
    api: &ApiLocation,
) -> anyhow::Result<()> {
    let crate_dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let api_path = if api.written_relative {
        relative_path(&crate_dir, &api.canonical)
    } else {
        api.canonical.clone()
    };
    let api_path = api_path
        .to_str()
        .context("the plugin-api path is not valid UTF-8")?
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let env_name = settings::env_prefix(&args.name);
    let env_name = env_name
        .strip_prefix("PLUGIN_")
        .and_then(|n| n.strip_suffix('_'))
        .unwrap_or(&env_name);
    let render = |template: &str| {
        template
            .replace("{{name}}", &args.name)
            .replace("{{lib_name}}", &args.name.replace('-', "_"))
            .replace("{{queue}}", queue)
            .replace("{{env_name}}", env_name)
            .replace("{{api_path}}", &api_path)
    };
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join("tests"))?;
    for (file, template) in [
        ("Cargo.toml", CARGO_TOML),
        ("src/lib.rs", LIB_RS),
        ("tests/harness.rs", HARNESS_RS),
        ("README.md", README_MD),
        (".gitignore", GITIGNORE),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, render(template))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Why `name` cannot name a plugin crate, if it cannot: lower-case ASCII letters, digits and single dashes,
/// starting with a letter (it becomes the package, library and plugin name).
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("it is empty");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Some("it must start with a lower-case letter");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Some("use lower-case letters, digits and '-' only");
    }
    if name.ends_with('-') || name.contains("--") {
        return Some("dashes must separate words");
    }
    None
}

/// Why `queue` cannot name a BullMQ queue served by a plugin, if it cannot.
fn queue_problem(queue: &str) -> Option<&'static str> {
    if queue.trim().is_empty() {
        Some("it is empty")
    } else if queue.contains(':') {
        Some("':' separates BullMQ key parts and cannot appear in a queue name")
    } else if queue
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\')
    {
        Some("no spaces, quotes or backslashes")
    } else {
        None
    }
}

/// `to` relative to the directory `from` (both absolute and canonical).
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for c in &to[common..] {
        path.push(c);
    }
    if path.as_os_str().is_empty() {
        path.push(".");
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names() {
        for (name, ok) in [
            ("word-count", true),
            ("sms2", true),
            ("a", true),
            ("", false),
            ("Word", false),
            ("2fa", false),
            ("word_count", false),
            ("word-", false),
            ("word--count", false),
            ("wörd", false),
        ] {
            assert_eq!(name_problem(name).is_none(), ok, "{name:?}");
        }
    }

    #[test]
    fn queue_names() {
        for (queue, ok) in [
            ("email-digests", true),
            ("sms_notifications", true),
            ("bull:x", false),
            (" ", false),
            ("a b", false),
        ] {
            assert_eq!(queue_problem(queue).is_none(), ok, "{queue:?}");
        }
    }

    #[test]
    fn relative_paths() {
        for (from, to, expected) in [
            ("/w/plugins/mine", "/w/fg/plugin-api", "../../fg/plugin-api"),
            ("/w/mine", "/w/mine/api", "api"),
            ("/w/mine", "/w/mine", "."),
            ("/a", "/b/c", "../b/c"),
        ] {
            assert_eq!(
                relative_path(Path::new(from), Path::new(to)),
                PathBuf::from(expected),
                "{from} -> {to}"
            );
        }
    }

    #[test]
    fn templates_have_no_unknown_placeholders() {
        for template in [CARGO_TOML, LIB_RS, HARNESS_RS, README_MD, GITIGNORE] {
            let rest = ["name", "lib_name", "queue", "env_name", "api_path"]
                .iter()
                .fold(template.to_owned(), |t, key| {
                    t.replace(&format!("{{{{{key}}}}}"), "")
                });
            assert!(!rest.contains("{{"), "{rest}");
        }
    }
}
