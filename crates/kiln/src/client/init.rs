//! `kiln init`: a new filter project that builds with kiln as it is.

use anyhow::{Context, Result, bail};
use std::path::Path;

pub struct Template {
    pub name: &'static str,
    pub about: &'static str,
    pub phases: &'static [&'static str],
    lib_rs: &'static str,
}

pub const TEMPLATES: &[Template] = &[
    Template {
        name: "headers",
        about: "adds a request header and response headers (the plugin configuration in x-kiln-conf)",
        phases: &["request_headers", "response_headers"],
        lib_rs: include_str!("templates/headers/lib.rs"),
    },
    Template {
        name: "deny",
        about: "answers requests under /admin with a 403 itself; others go on upstream",
        phases: &["request_headers"],
        lib_rs: include_str!("templates/deny/lib.rs"),
    },
];

pub fn template(name: &str) -> Result<&'static Template> {
    TEMPLATES.iter().find(|t| t.name == name).with_context(|| {
        let names: Vec<&str> = TEMPLATES.iter().map(|t| t.name).collect();
        format!(
            "no template {name:?}; the templates are {}",
            names.join(", ")
        )
    })
}

/// A crate name from a directory name: `My Filter` → `my-filter`.
pub fn crate_name(dir: &str) -> Result<String> {
    let name: String = dir
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches('-').to_owned();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        bail!("{dir:?} does not make a crate name: start it with a letter");
    }
    Ok(name)
}

/// Writes the project into `dir`, which must not exist or be empty.
pub fn create(dir: &Path, template: &Template) -> Result<String> {
    let base = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("the project needs a directory name")?;
    let name = crate_name(base)?;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} already exists and is not empty", dir.display());
    }
    let phases: Vec<String> = template.phases.iter().map(|p| format!("{p:?}")).collect();
    let cargo_toml = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
proxy-wasm = "0.2"
log = "0.4"

[profile.release]
opt-level = "s"
lto = true
strip = true

# What `kiln deploy` declares (override with --phases).
[package.metadata.kiln]
phases = [{phases}]
"#,
        phases = phases.join(", ")
    );
    let readme = format!(
        "# {name}\n\nA proxy-wasm HTTP filter: {about}.\n\n\
         Phases: `{phases}`.\n\n\
         ```sh\n\
         kiln deploy . --app {name}          # builds it on the kiln server, with the live log\n\
         kiln try VERSION_ID --request 'GET /admin'\n\
         ```\n\n\
         `kiln deploy` takes the version from `Cargo.toml`; bump it for each deploy\n\
         (or use `kiln deploy --watch`). kiln generates `Cargo.lock` if it is missing.\n",
        about = template.about,
        phases = template.phases.join(","),
    );
    let files = [
        ("Cargo.toml", cargo_toml.as_str()),
        ("src/lib.rs", template.lib_rs),
        ("README.md", readme.as_str()),
        (".gitignore", "/target\n"),
    ];
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_crate_names() {
        assert_eq!(crate_name("My Filter").unwrap(), "my-filter");
        assert!(crate_name("9lives").is_err());
        assert!(crate_name("日本").is_err());
    }

    #[test]
    fn a_project_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("demo");
        create(&project, template("headers").unwrap()).unwrap();
        let toml = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
        assert!(toml.contains("name = \"demo\"") && toml.contains("\"response_headers\""));
        assert!(create(&project, &TEMPLATES[0]).is_err());
    }
}
