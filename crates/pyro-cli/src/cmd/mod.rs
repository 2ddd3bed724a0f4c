//! One module per command group. Each command parses its arguments into
//! the library's parameters, makes one façade call and renders the result.

pub mod env;
pub mod mcp;
pub mod ollama;
pub mod run;
pub mod workspace;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};

/// The words after `--` as a command, by the one rule: exactly one word is
/// a shell command string (`/bin/sh -lc`), several are an argv.
pub fn command(words: Vec<String>) -> pyro::Command {
    match <[String; 1]>::try_from(words) {
        Ok([one]) => pyro::Command::Shell(one),
        Err(many) => pyro::Command::Argv(many),
    }
}

/// `SECRET` or `SECRET=ENV`, repeated: secret name → variable name.
pub fn secret_env(items: &[String]) -> BTreeMap<String, String> {
    items
        .iter()
        .map(|s| match s.split_once('=') {
            Some((secret, var)) => (secret.to_string(), var.to_string()),
            None => (s.clone(), s.clone()),
        })
        .collect()
}

/// `KEY=VALUE`, both non-empty.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.into(), v.into())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// A UTF-8 text file given on the command line.
pub fn read_utf8(path: &Path, what: &str) -> anyhow::Result<String> {
    if path.is_dir() {
        bail!("{what} {} is a directory", path.display());
    }
    let bytes = std::fs::read(path).with_context(|| format!("read {what} {}", path.display()))?;
    String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{what} {} is not UTF-8 text", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_word_is_a_shell_string_and_several_are_an_argv() {
        assert_eq!(
            command(words(&["python3 -c \"print(1)\""])),
            pyro::Command::shell("python3 -c \"print(1)\"")
        );
        assert_eq!(
            command(words(&["sh", "-c", "echo \"$0\"", "hi"])),
            pyro::Command::argv(["sh", "-c", "echo \"$0\"", "hi"])
        );
        assert_eq!(secret_env(&words(&["A", "B=C"]))["B"], "C");
        assert_eq!(secret_env(&words(&["A"]))["A"], "A");
        assert!(key_value("k=").is_err());
    }
}
