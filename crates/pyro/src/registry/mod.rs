//! OCI registries, through `oci-client`: references, credentials, TLS,
//! and the few operations pyro needs (a manifest, a blob into a file, a
//! blob or manifest pushed), each run to completion on a runtime of its
//! own so the rest of the library stays synchronous.
//!
//! Plain HTTP is used only for a registry on a loopback address or one the
//! caller names as insecure (`PYRO_INSECURE_REGISTRIES`, or the CLI's
//! `--insecure-registry`), and only after HTTPS failed to connect, as
//! Docker and Podman do.

mod auth;

use std::fs;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use tokio::io::AsyncWrite;

use crate::error::{Error, ErrorKind, IoContext, Result};

const USER_AGENT: &str = concat!("pyro/", env!("CARGO_PKG_VERSION"));

/// Parses an image reference (`registry/repo:tag`, `@sha256:...`).
pub fn parse(reference: &str) -> Result<Reference> {
    reference.parse::<Reference>().map_err(|e| {
        Error::InvalidArgument(format!("{reference:?} is not an image reference: {e}"))
    })
}

/// Whether plain HTTP may be tried for `registry` (`host` or `host:port`).
pub fn insecure_allowed(registry: &str, extra: &[String]) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let listed = std::env::var("PYRO_INSECURE_REGISTRIES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .map(str::to_owned)
        .chain(extra.iter().cloned())
        .any(|r| r == registry || r == host);
    loopback || listed
}

/// One registry session: a client for a reference's registry, with its
/// credentials and the protocol that answered.
pub struct Session {
    client: Client,
    pub reference: Reference,
    auth: RegistryAuth,
    runtime: tokio::runtime::Runtime,
}

fn install_crypto() {
    // The TLS stack's cryptography (ring); installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Session {
    /// Opens a session for pulling (`push` false) or pushing `reference`,
    /// deciding between HTTPS and (where allowed) HTTP by asking the
    /// registry's API root.
    pub fn open(reference: &Reference, insecure: &[String], push: bool) -> Result<Session> {
        install_crypto();
        let registry = reference.resolve_registry().to_owned();
        let auth = auth::lookup(&registry)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .ctx(|| "start the registry client's runtime".into())?;
        let op = if push {
            RegistryOperation::Push
        } else {
            RegistryOperation::Pull
        };
        let mut session = Session {
            client: Client::new(config(&registry, false)?),
            reference: reference.clone(),
            auth,
            runtime,
        };
        match session.authenticate(op) {
            Err(https) if https.connection && insecure_allowed(&registry, insecure) => {
                session.client = Client::new(config(&registry, true)?);
                if let Err(http) = session.authenticate(op) {
                    // Neither answered: what HTTPS said is the likelier
                    // story (a certificate this host does not trust).
                    let mut e = if http.connection { https } else { http };
                    e.detail.push_str(" (tried HTTPS, then plain HTTP)");
                    return Err(e.into_error(reference));
                }
            }
            r => r.map_err(|e| e.into_error(reference))?,
        }
        Ok(session)
    }

    fn block<T: Send>(&self, fut: impl Future<Output = T> + Send) -> T {
        // On a thread of its own: the caller may be inside another
        // runtime (the MCP server's blocking pool).
        std::thread::scope(|s| {
            s.spawn(|| self.runtime.block_on(fut))
                .join()
                .expect("registry call panicked")
        })
    }

    fn authenticate(&self, op: RegistryOperation) -> std::result::Result<(), Failure> {
        self.block(self.client.auth(&self.reference, &self.auth, op))
            .map(|_| ())
            .map_err(Failure::from)
    }

    fn fail(&self, e: OciDistributionError) -> Error {
        Failure::from(e).into_error(&self.reference)
    }

    /// The manifest `reference` names (an image manifest or an index) and
    /// its digest.
    pub fn manifest(&self, reference: &Reference) -> Result<(OciManifest, String)> {
        self.block(self.client.pull_manifest(reference, &self.auth))
            .map_err(|e| self.fail(e))
    }

    /// The image manifest of `digest` in this repository.
    pub fn image_manifest(&self, digest: &str) -> Result<OciImageManifest> {
        let r = Reference::with_digest(
            self.reference.registry().to_owned(),
            self.reference.repository().to_owned(),
            digest.to_owned(),
        );
        match self.manifest(&r)? {
            (OciManifest::Image(m), _) => Ok(m),
            (OciManifest::ImageIndex(_), _) => Err(Error::Registry {
                reference: self.reference.whole(),
                detail: format!("{digest} is an index inside an index, which pyro does not follow"),
                kind: ErrorKind::InvalidArgument,
            }),
        }
    }

    /// A small blob (a configuration: at most 16 MiB), verified against
    /// its digest, in memory.
    pub fn blob_bytes(&self, desc: &OciDescriptor) -> Result<Vec<u8>> {
        const LIMIT: i64 = 16 << 20;
        if !(0..=LIMIT).contains(&desc.size) {
            return Err(Error::Registry {
                reference: self.reference.whole(),
                detail: format!(
                    "{} is {} bytes, more than a configuration may be",
                    desc.digest, desc.size
                ),
                kind: ErrorKind::InvalidArgument,
            });
        }
        let mut out = Vec::new();
        let writer = Counting {
            inner: &mut out,
            done: Arc::new(AtomicU64::new(0)),
            written: 0,
            limit: desc.size as u64,
        };
        self.block(self.client.pull_blob(&self.reference, desc, writer))
            .map_err(|e| self.fail(e))?;
        Ok(out)
    }

    /// Downloads blobs (at most three at a time) into the files given,
    /// each verified against its digest as it streams; `done` counts the
    /// bytes written so far, for progress.
    pub fn blobs_to_files(
        &self,
        blobs: &[(OciDescriptor, std::path::PathBuf)],
        done: &Arc<AtomicU64>,
    ) -> Result<()> {
        let limit = Arc::new(tokio::sync::Semaphore::new(3));
        let result: std::result::Result<(), OciDistributionError> = self.block(async {
            let mut tasks = tokio::task::JoinSet::new();
            for (desc, path) in blobs {
                let (client, reference) = (self.client.clone(), self.reference.clone());
                let (desc, path, done, limit) =
                    (desc.clone(), path.clone(), done.clone(), limit.clone());
                tasks.spawn(async move {
                    let _permit = limit.acquire_owned().await.expect("open semaphore");
                    let file = tokio::fs::File::create(&path).await?;
                    let out = Counting {
                        inner: tokio::io::BufWriter::with_capacity(1 << 20, file),
                        done,
                        written: 0,
                        limit: desc.size.max(0) as u64,
                    };
                    client.pull_blob(&reference, &desc, out).await
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.expect("download task panicked")?;
            }
            Ok(())
        });
        result.map_err(|e| self.fail(e))
    }

    /// Pushes a blob unless the registry has it.
    pub fn push_blob(&self, data: Vec<u8>, digest: &str) -> Result<()> {
        let exists = self
            .block(self.client.blob_exists(&self.reference, digest))
            .unwrap_or(false);
        if exists {
            return Ok(());
        }
        self.block(self.client.push_blob(&self.reference, data, digest))
            .map(|_| ())
            .map_err(|e| self.fail(e))
    }

    /// Pushes the manifest; returns its digest as the registry names it.
    pub fn push_manifest(&self, manifest: &OciImageManifest) -> Result<String> {
        self.block(
            self.client
                .push_manifest(&self.reference, &OciManifest::Image(manifest.clone())),
        )
        .map_err(|e| self.fail(e))?;
        self.block(
            self.client
                .fetch_manifest_digest(&self.reference, &self.auth),
        )
        .map_err(|e| self.fail(e))
    }
}

/// What pyro publishes: an environment image (and the guest kernel it
/// boots with) as an OCI artifact.
pub mod artifact {
    pub const TYPE: &str = "application/vnd.pyro.environment.v1";
    pub const CONFIG: &str = "application/vnd.pyro.environment.config.v1+json";
    pub const ROOTFS: &str = "application/vnd.pyro.environment.rootfs.ext4.v1+gzip";
    pub const KERNEL: &str = "application/vnd.pyro.kernel.v1.tar+gzip";
}

/// The registry repository environments are pulled from
/// (`PYRO_ENVIRONMENT_REGISTRY`, e.g. `registry.example/pyro`), if one is
/// set: the catalog's `debian:12` is then `registry.example/pyro/debian:12`.
pub fn environment_registry() -> Option<String> {
    std::env::var("PYRO_ENVIRONMENT_REGISTRY")
        .ok()
        .map(|s| s.trim().trim_end_matches('/').to_owned())
        .filter(|s| !s.is_empty())
}

/// Pulls a pyro artifact's manifest and configuration from `reference`,
/// checking it is one.
pub fn artifact_manifest(
    reference: &str,
    insecure: &[String],
) -> Result<(Session, OciImageManifest, Vec<u8>)> {
    let r = parse(reference)?;
    let session = Session::open(&r, insecure, false)?;
    let manifest = match session.manifest(&r)? {
        (OciManifest::Image(m), _) if m.config.media_type == artifact::CONFIG => m,
        _ => {
            return Err(Error::Registry {
                reference: r.whole(),
                detail: "not a pyro environment artifact (publish one with `pyro env publish`)"
                    .into(),
                kind: ErrorKind::InvalidArgument,
            })
        }
    };
    let config = session.blob_bytes(&manifest.config)?;
    Ok((session, manifest, config))
}

/// Downloads the artifact's layer of `media_type` into `dest` (verified).
pub fn artifact_layer(
    session: &Session,
    manifest: &OciImageManifest,
    media_type: &str,
    dest: &Path,
) -> Result<u64> {
    let layer = manifest
        .layers
        .iter()
        .find(|l| l.media_type == media_type)
        .ok_or_else(|| Error::Registry {
            reference: session.reference.whole(),
            detail: format!("the artifact has no {media_type} layer"),
            kind: ErrorKind::InvalidArgument,
        })?;
    let done = Arc::new(AtomicU64::new(0));
    session.blobs_to_files(&[(layer.clone(), dest.to_path_buf())], &done)?;
    Ok(done.load(Ordering::Relaxed))
}

fn config(registry: &str, http: bool) -> Result<ClientConfig> {
    Ok(ClientConfig {
        protocol: if http {
            ClientProtocol::HttpsExcept(vec![registry.to_owned()])
        } else {
            ClientProtocol::Https
        },
        extra_root_certificates: certificates(registry)?,
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(120)),
        user_agent: USER_AGENT,
        ..ClientConfig::default()
    })
}

/// Extra CAs for `registry`: every `*.crt` in `certs.d/<registry>/` under
/// `/etc/containers` and `/etc/docker` (where Podman and Docker look), and
/// the PEM files listed in `PYRO_REGISTRY_CA` (colon-separated).
fn certificates(registry: &str) -> Result<Vec<Certificate>> {
    let mut files = Vec::new();
    for base in ["/etc/containers/certs.d", "/etc/docker/certs.d"] {
        let dir = Path::new(base).join(registry);
        if let Ok(entries) = fs::read_dir(&dir) {
            files.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "crt")),
            );
        }
    }
    if let Some(list) = std::env::var_os("PYRO_REGISTRY_CA") {
        files.extend(std::env::split_paths(&list).filter(|p| !p.as_os_str().is_empty()));
    }
    files
        .into_iter()
        .map(|f| {
            let data = fs::read(&f).ctx(|| format!("read the CA certificate {}", f.display()))?;
            Ok(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            })
        })
        .collect()
}

/// A failed registry call, sorted into what a user can act on.
struct Failure {
    kind: ErrorKind,
    detail: String,
    /// Nothing answered (refused, TLS handshake, timeout): another
    /// protocol may.
    connection: bool,
}

impl Failure {
    fn into_error(self, reference: &Reference) -> Error {
        Error::Registry {
            reference: reference.whole(),
            detail: self.detail,
            kind: self.kind,
        }
    }
}

impl From<OciDistributionError> for Failure {
    fn from(e: OciDistributionError) -> Failure {
        let text = e.to_string();
        let status = match &e {
            OciDistributionError::ServerError { code, .. } => Some(*code),
            OciDistributionError::UnauthorizedError { .. } => Some(401),
            OciDistributionError::AuthenticationFailure(_) => Some(401),
            OciDistributionError::ImageManifestNotFoundError(_) => Some(404),
            OciDistributionError::RegistryError { envelope, .. } => {
                envelope.errors.first().map(|err| match err.code {
                    OciErrorCode::Unauthorized | OciErrorCode::Denied => 401,
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound => 404,
                    OciErrorCode::Toomanyrequests => 429,
                    _ => 400,
                })
            }
            OciDistributionError::RequestError(r) => r.status().map(|s| s.as_u16()),
            _ => None,
        };
        let connection = matches!(&e, OciDistributionError::RequestError(r)
            if r.is_connect() || r.is_timeout() || r.status().is_none());
        let (kind, detail) = match (status, &e) {
            (Some(401 | 403), _) => (
                ErrorKind::InvalidArgument,
                format!(
                    "unauthorized: the registry refused these credentials or needs some \
                     (pyro reads them from REGISTRY_AUTH_FILE, \
                     $XDG_RUNTIME_DIR/containers/auth.json and ~/.docker/config.json, \
                     as `docker login` and `podman login` write them) ({text})"
                ),
            ),
            (Some(404), _) => (
                ErrorKind::NotFound,
                format!("not found in the registry ({text})"),
            ),
            (Some(429), _) => (
                ErrorKind::Unavailable,
                format!("rate-limited by the registry; try again later or log in ({text})"),
            ),
            (_, OciDistributionError::DigestError(d)) => (
                ErrorKind::Internal,
                format!("digest mismatch: {d}; the content does not match what the manifest names, nothing was installed"),
            ),
            _ if connection => (
                ErrorKind::Unavailable,
                format!("cannot reach the registry: {}", chain(&e)),
            ),
            _ => (ErrorKind::Internal, chain(&e)),
        };
        Failure {
            kind,
            detail,
            connection,
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// A writer that counts what passes through it and refuses more than the
/// descriptor's size (a registry that sends more is not sending the blob,
/// and would otherwise fill the disk before the digest is checked).
struct Counting<W> {
    inner: W,
    /// Progress, shared by every download of a pull.
    done: Arc<AtomicU64>,
    written: u64,
    limit: u64,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counting<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.written + buf.len() as u64 > self.limit {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the registry sent more than the blob's size",
            )));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written += n as u64;
            self.done.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_answers_are_sorted_into_what_a_user_can_do() {
        let server = |code: u16| OciDistributionError::ServerError {
            code,
            url: "https://r.example/v2/x/manifests/1".into(),
            message: String::new(),
        };
        let cases = [
            (server(401), ErrorKind::InvalidArgument, "unauthorized"),
            (server(404), ErrorKind::NotFound, "not found"),
            (server(429), ErrorKind::Unavailable, "rate-limited"),
        ];
        for (e, kind, words) in cases {
            let f = Failure::from(e);
            assert_eq!(f.kind, kind);
            assert!(f.detail.starts_with(words), "{}", f.detail);
            assert!(!f.connection);
        }
        let envelope: oci_client::errors::OciEnvelope = serde_json::from_str(
            r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#,
        )
        .unwrap();
        let f = Failure::from(OciDistributionError::RegistryError {
            envelope,
            url: String::new(),
        });
        assert_eq!(f.kind, ErrorKind::Unavailable);
    }

    #[test]
    fn plain_http_only_for_loopback_or_named_registries() {
        assert!(insecure_allowed("127.0.0.1:5000", &[]));
        assert!(insecure_allowed("localhost:5000", &[]));
        assert!(insecure_allowed("[::1]:5000", &[]));
        assert!(!insecure_allowed("registry.example:5000", &[]));
        assert!(insecure_allowed(
            "registry.example:5000",
            &["registry.example:5000".into()]
        ));
        assert!(!insecure_allowed("10.0.0.1:5000", &[]));
    }
}
