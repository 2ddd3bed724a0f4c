//! Workspace secrets: defined at create, stored on the host in a 0700
//! directory of 0600 files, installed in the guest on a tmpfs
//! (`/run/pyro-secrets`) at every boot, handed to single commands as
//! environment variables on request, and redacted from everything pyro
//! shows: command output (streamed and stored), logs and diffs.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::vmm::client::OutputSink;

pub const MAX_SECRET_BYTES: usize = 64 * 1024;
const REDACTED: &[u8] = b"[REDACTED]";

/// A secret as given at create: a literal value or a host file to read.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretInput {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub file_path: Option<PathBuf>,
}

/// Where a secret's value came from.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretSource {
    Literal,
    File,
}

impl SecretSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretSource::Literal => "literal",
            SecretSource::File => "file",
        }
    }
}

/// What status shows of a secret: never its value.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    /// `literal` or `file`.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub source_kind: SecretSource,
}

pub fn valid_env_name(kind: &str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = name.len() <= 64
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{kind} {name:?} must be letters, digits and '_', not starting with a digit, at most 64"
        )))
    }
}

/// A regular file of at most [`MAX_SECRET_BYTES`], read without ever
/// holding more (a device or an endless file is refused, not read).
fn read_small(p: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = fs::File::open(p)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    f.take(MAX_SECRET_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > MAX_SECRET_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_SECRET_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

/// Checks and resolves secrets (reading files) before anything is created.
pub fn resolve(inputs: &[SecretInput]) -> Result<Vec<(SecretInfo, String)>> {
    let mut out: Vec<(SecretInfo, String)> = Vec::new();
    for s in inputs {
        valid_env_name("secret name", &s.name)?;
        if out.iter().any(|(i, _)| i.name == s.name) {
            return Err(Error::invalid(format!("secret {} is given twice", s.name)));
        }
        let (value, kind) = match (&s.value, &s.file_path) {
            (Some(v), None) => (v.clone(), SecretSource::Literal),
            (None, Some(p)) => {
                let bytes = read_small(p).map_err(|e| {
                    Error::invalid(format!(
                        "secret {}: cannot read {}: {e}",
                        s.name,
                        p.display()
                    ))
                })?;
                let text = String::from_utf8(bytes).map_err(|_| {
                    Error::invalid(format!("secret {}: {} is not UTF-8", s.name, p.display()))
                })?;
                (text, SecretSource::File)
            }
            _ => {
                return Err(Error::invalid(format!(
                    "secret {} needs exactly one of a value or a file",
                    s.name
                )))
            }
        };
        if value.is_empty() || value.len() > MAX_SECRET_BYTES {
            return Err(Error::invalid(format!(
                "secret {} must be 1 to {MAX_SECRET_BYTES} bytes",
                s.name
            )));
        }
        out.push((
            SecretInfo {
                name: s.name.clone(),
                source_kind: kind,
            },
            value,
        ));
    }
    Ok(out)
}

fn dir(ws_dir: &Path) -> PathBuf {
    ws_dir.join("secrets")
}

pub fn store(ws_dir: &Path, secrets: &[(SecretInfo, String)]) -> Result<()> {
    let d = dir(ws_dir);
    fs::create_dir_all(&d).ctx(|| format!("create {}", d.display()))?;
    fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).ctx(|| "chmod secrets".into())?;
    for (info, value) in secrets {
        let p = d.join(&info.name);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .ctx(|| format!("create {}", p.display()))?;
        f.write_all(value.as_bytes())
            .ctx(|| format!("write {}", p.display()))?;
        f.sync_all().ctx(|| "sync secret".into())?;
    }
    Ok(())
}

pub fn load(ws_dir: &Path, infos: &[SecretInfo]) -> Result<BTreeMap<String, String>> {
    infos
        .iter()
        .map(|i| {
            let p = dir(ws_dir).join(&i.name);
            let v = fs::read_to_string(&p).ctx(|| format!("read secret {}", i.name))?;
            Ok((i.name.clone(), v))
        })
        .collect()
}

/// Maps `secret_env` (secret name → environment variable) to variables.
pub fn environment(
    values: &BTreeMap<String, String>,
    secret_env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for (secret, var) in secret_env {
        let value = values.get(secret).ok_or_else(|| {
            Error::invalid(format!(
                "secret_env references unknown workspace secret {secret:?}"
            ))
        })?;
        let var = if var.is_empty() { secret } else { var };
        valid_env_name("environment variable", var)?;
        env.insert(var.clone(), value.clone());
    }
    Ok(env)
}

/// Replaces secret values with `[REDACTED]`, longest first.
pub fn redact(text: &str, values: &[String]) -> String {
    let mut out = text.to_string();
    for v in values {
        if !v.is_empty() {
            out = out.replace(v.as_str(), "[REDACTED]");
        }
    }
    out
}

/// Secret values ordered for redaction: longest first.
pub fn redaction_list(values: &BTreeMap<String, String>) -> Vec<String> {
    let mut v: Vec<String> = values.values().filter(|s| !s.is_empty()).cloned().collect();
    v.sort_by_key(|s| std::cmp::Reverse(s.len()));
    v
}

/// Redacts a byte stream that arrives in pieces: a secret split across two
/// pieces is still caught, because the tail that could start one is held
/// back until the next piece (or the end).
pub struct Redactor<'a> {
    inner: &'a mut dyn OutputSink,
    secrets: Vec<Vec<u8>>,
    hold: usize,
    out: Vec<u8>,
    err: Vec<u8>,
}

impl<'a> Redactor<'a> {
    pub fn new(inner: &'a mut dyn OutputSink, secrets: &[String]) -> Redactor<'a> {
        let secrets: Vec<Vec<u8>> = secrets.iter().map(|s| s.as_bytes().to_vec()).collect();
        let hold = secrets
            .iter()
            .map(|s| s.len())
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        Redactor {
            inner,
            secrets,
            hold,
            out: Vec::new(),
            err: Vec::new(),
        }
    }

    /// Emits what can safely be emitted from `buf`; with `all`, everything.
    /// Linear in `buf`: each secret is searched for once per occurrence
    /// found before it.
    fn drain(secrets: &[Vec<u8>], hold: usize, buf: &mut Vec<u8>, all: bool) -> Vec<u8> {
        let mut emitted = Vec::new();
        let mut pos = 0;
        let mut next: Vec<Option<usize>> = secrets.iter().map(|s| find(buf, s, 0)).collect();
        loop {
            let found = next
                .iter()
                .zip(secrets)
                .filter_map(|(n, s)| n.map(|i| (i, s.len())))
                .min_by_key(|(i, len)| (*i, std::cmp::Reverse(*len)));
            match found {
                Some((i, len)) => {
                    emitted.extend_from_slice(&buf[pos..i]);
                    emitted.extend_from_slice(REDACTED);
                    pos = i + len;
                    for (n, s) in next.iter_mut().zip(secrets) {
                        if matches!(n, Some(j) if *j < pos) {
                            *n = find(buf, s, pos);
                        }
                    }
                }
                None => {
                    let keep = if all { 0 } else { hold.min(buf.len() - pos) };
                    let cut = buf.len() - keep;
                    emitted.extend_from_slice(&buf[pos..cut]);
                    buf.drain(..cut);
                    return emitted;
                }
            }
        }
    }

    pub fn finish(mut self) {
        let out = Self::drain(&self.secrets, 0, &mut self.out, true);
        if !out.is_empty() {
            self.inner.stdout(&out);
        }
        let err = Self::drain(&self.secrets, 0, &mut self.err, true);
        if !err.is_empty() {
            self.inner.stderr(&err);
        }
    }
}

/// Where `needle` next occurs in `hay` at or after `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    memchr::memmem::find(&hay[from..], needle).map(|i| i + from)
}

impl OutputSink for Redactor<'_> {
    fn stdout(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
        let emitted = Self::drain(&self.secrets, self.hold, &mut self.out, false);
        if !emitted.is_empty() {
            self.inner.stdout(&emitted);
        }
    }
    fn stderr(&mut self, bytes: &[u8]) {
        self.err.extend_from_slice(bytes);
        let emitted = Self::drain(&self.secrets, self.hold, &mut self.err, false);
        if !emitted.is_empty() {
            self.inner.stderr(&emitted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Vec<u8>, Vec<u8>);
    impl OutputSink for Collect {
        fn stdout(&mut self, b: &[u8]) {
            self.0.extend_from_slice(b)
        }
        fn stderr(&mut self, b: &[u8]) {
            self.1.extend_from_slice(b)
        }
    }

    #[test]
    fn secrets_split_across_pieces_are_still_redacted() {
        let secrets = vec!["hunter22".to_string(), "abc".to_string()];
        let text = b"x hunter22 y abc z hunter2 w";
        for split in 1..text.len() {
            let mut c = Collect::default();
            let mut r = Redactor::new(&mut c, &secrets);
            r.stdout(&text[..split]);
            r.stdout(&text[split..]);
            r.finish();
            assert_eq!(
                String::from_utf8(c.0).unwrap(),
                "x [REDACTED] y [REDACTED] z hunter2 w",
                "split at {split}"
            );
        }
    }

    #[test]
    fn secret_files_are_small_regular_files() {
        let file = |p: &str| SecretInput {
            name: "S".into(),
            value: None,
            file_path: Some(p.into()),
        };
        let e = resolve(&[file("/dev/zero")]).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let big = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(big.path(), vec![b'x'; MAX_SECRET_BYTES + 1]).unwrap();
        let e = resolve(&[file(big.path().to_str().unwrap())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than"), "{e}");
    }

    #[test]
    fn names_and_sizes_are_checked() {
        assert!(resolve(&[SecretInput {
            name: "1BAD".into(),
            value: Some("v".into()),
            file_path: None
        }])
        .is_err());
        assert!(resolve(&[SecretInput {
            name: "OK".into(),
            value: Some(String::new()),
            file_path: None
        }])
        .is_err());
        assert!(resolve(&[SecretInput {
            name: "OK".into(),
            value: None,
            file_path: None
        }])
        .is_err());
        let env = environment(
            &BTreeMap::from([("TOKEN".to_string(), "v".to_string())]),
            &BTreeMap::from([("TOKEN".to_string(), "API_TOKEN".to_string())]),
        )
        .unwrap();
        assert_eq!(env["API_TOKEN"], "v");
        let err = environment(
            &BTreeMap::new(),
            &BTreeMap::from([("NOPE".to_string(), String::new())]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown workspace secret"));
    }
}
