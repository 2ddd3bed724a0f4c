//! Registry credentials where `docker login` and `podman login` keep
//! them: `REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, first file that
//! has an entry for the registry wins. Entries hold `auth`
//! (base64 `user:password`) or `username` and `password`. Credential
//! helpers (`credsStore`, `credHelpers`) are not run.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// The files searched, in order.
fn auth_files() -> Vec<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut files = Vec::new();
    files.extend(var("REGISTRY_AUTH_FILE"));
    files.extend(var("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
    match var("DOCKER_CONFIG") {
        Some(d) => files.push(d.join("config.json")),
        None => files.extend(var("HOME").map(|h| h.join(".docker/config.json"))),
    }
    files
}

/// The names an entry for `registry` may be filed under.
fn keys(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_owned(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
        format!("https://{registry}/v2/"),
    ];
    if matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        keys.extend(
            [
                "https://index.docker.io/v1/",
                "docker.io",
                "index.docker.io",
                "registry-1.docker.io",
            ]
            .map(String::from),
        );
    }
    keys
}

pub fn lookup(registry: &str) -> Result<RegistryAuth> {
    for file in auth_files() {
        let Ok(bytes) = fs::read(&file) else { continue };
        let parsed: AuthFile = match serde_json::from_slice(&bytes) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("{} is not a valid auth file, skipped: {e}", file.display());
                continue;
            }
        };
        let Some(entry) = keys(registry).iter().find_map(|k| parsed.auths.get(k)) else {
            continue;
        };
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
        }
        if let Some(auth) = &entry.auth {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "{}: the entry for {registry} is not base64 of user:password",
                        file.display()
                    ))
                })?;
            if let Some((u, p)) = decoded.split_once(':') {
                return Ok(RegistryAuth::Basic(u.into(), p.into()));
            }
        }
    }
    Ok(RegistryAuth::Anonymous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_entries_are_found_under_their_legacy_name() {
        assert!(keys("docker.io").contains(&"https://index.docker.io/v1/".to_string()));
        assert!(keys("127.0.0.1:5000").contains(&"127.0.0.1:5000".to_string()));
    }
}
