//! TLS on both sides of an inspected connection: a certificate authority made at start, a leaf
//! certificate per host for the agent's side, and verified connections upstream.
//!
//! **The CA.** An ECDSA P-256 key generated in memory at every start; it is never written to
//! a file, never put in an environment variable, and the process holding it is invisible to
//! the agent (another PID namespace, another uid, not dumpable; the sandbox's init holds a
//! fork-time copy and is equally out of reach). Where every L7 host is a name or a name glob,
//! the CA carries name constraints permitting only those domains, so even a leaked CA could
//! sign nothing else. Leaf certificates (SAN = the host, signed by the CA, one shared P-256
//! key) are made on first use per host and cached with their server configuration, which
//! also keeps the agent's TLS session resumption working.
//!
//! **Upstream.** Verified against the system's trust store (the agent image's, as the
//! supervisor sees it at start) plus `OPENSHELL_UPSTREAM_CA_FILE` (an extra PEM bundle for
//! private CAs); an image with no trust store at all gets Mozilla's roots compiled into the
//! supervisor. SNI is the host; sessions are resumed (a per-process cache), so a new agent
//! connection usually costs upstream an abbreviated handshake only.
//!
//! **ALPN.** `http/1.1` on both sides. A client that also offers `h2` gets `http/1.1`; one
//! offering only protocols we do not speak gets no ALPN answer rather than a fatal alert
//! (upstream's #2426), and is then refused with a log line once it speaks.
//!
//! **Crypto provider: ring.** The release binaries are static `x86_64-unknown-linux-musl`
//! builds. ring's few C and assembly files build with Debian's `musl-gcc` (musl-tools) and
//! need nothing else, and it adds about 0.5 MB. aws-lc-rs (rustls' default) also needs a musl
//! C toolchain, plus its much larger C library (about 2 MB more, and a longer build on a
//! 2-core machine); the pure-Rust providers (rustls-rustcrypto, graviola) are young, unaudited
//! or x86-only-fast. ring is what most of the field ships with rustls. Its one gap: no
//! post-quantum key exchange (X25519MLKEM768), which is why rustls 0.23.48 marks its ring
//! provider deprecated; connections use X25519 (or P-256) until that lands in ring or the
//! binary can afford aws-lc-rs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SanType, SerialNumber,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::policy::{HostPattern, Label};

/// ALPN protocol id of HTTP/1.1, the only one spoken for now.
pub const HTTP1: &[u8] = b"http/1.1";
/// How long the CA and its leaves are valid: longer than any agent run.
const VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Clocks drift: certificates start an hour early.
const BACKDATE: Duration = Duration::from_secs(3600);
/// Hosts whose leaf configuration is cached; past this the cache starts over (a sandbox
/// reaching this many distinct hosts through L7 endpoints is an outlier).
const MAX_CACHED_HOSTS: usize = 1024;
/// What one TLS session (to the client or upstream) is charged to the proxy's memory budget
/// while it lives. rustls does not say what its buffers hold, so this is a measured estimate:
/// 1,000 idle TLS-terminated tunnels (two sessions each) cost the supervisor about 44 MiB.
/// Records being assembled or waiting to be written can hold more for a moment.
pub const SESSION_STATE: usize = 24 * 1024;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Making a key or certificate failed.
    #[error("cannot make the L7 certificate authority: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused a configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// No usable upstream root certificate.
    #[error("{0}")]
    Roots(String),
}

/// The CA, the leaf cache and the upstream client configuration.
pub struct Tls {
    issuer: Issuer<'static, KeyPair>,
    ca: CertificateDer<'static>,
    ca_pem: String,
    leaf_key: KeyPair,
    leaf_signer: Arc<dyn rustls::sign::SigningKey>,
    provider: Arc<CryptoProvider>,
    servers: Mutex<HashMap<String, Arc<ServerConfig>>>,
    client: Arc<ClientConfig>,
    not_after: SystemTime,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Tls {
    /// Makes the CA (constrained to `hosts` where possible) and the upstream client
    /// configuration trusting `upstream_roots`.
    pub fn new(
        hosts: &[&HostPattern],
        upstream_roots: &[CertificateDer<'static>],
    ) -> Result<Tls, TlsError> {
        // Deprecated only for lacking post-quantum key exchange (see the module doc).
        #[allow(deprecated)]
        let mut provider = rustls::crypto::ring::default_provider();
        // No P-384 key exchange: ring computes it in generic code, about 2 ms a handshake
        // here against tens of microseconds for X25519, and a server preferring it (nginx
        // with OpenSSL's defaults does) would make every upstream handshake pay that. Every
        // TLS 1.3 peer speaks X25519 or P-256.
        provider.kx_groups = vec![
            rustls::crypto::ring::kx_group::X25519,
            rustls::crypto::ring::kx_group::SECP256R1,
        ];
        let provider = Arc::new(provider);
        let now = SystemTime::now();
        let not_after = now + VALIDITY;
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("OpenShell Sandbox CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.name_constraints = constraints(hosts);
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        params.serial_number = Some(serial(&provider)?);
        let ca = params.self_signed(&ca_key)?;
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let leaf_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let leaf_signer = provider.key_provider.load_private_key(leaf_der)?;
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(upstream_roots.iter().cloned());
        if added == 0 {
            return Err(TlsError::Roots(
                "no usable root certificate to verify upstream servers with".into(),
            ));
        }
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![HTTP1.to_vec()];
        Ok(Tls {
            ca_pem: ca.pem(),
            ca: ca.der().clone(),
            issuer: Issuer::new(params, ca_key),
            leaf_key,
            leaf_signer,
            provider,
            servers: Mutex::default(),
            client: Arc::new(client),
            not_after,
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    /// The configuration for upstream connections.
    pub fn client(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// The server configuration presenting `host`'s leaf certificate, made on first use.
    pub fn server(&self, host: &str) -> Result<Arc<ServerConfig>, TlsError> {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = servers.get(host) {
            return Ok(config.clone());
        }
        let leaf = self.leaf(host)?;
        let certified = Arc::new(CertifiedKey::new(
            vec![leaf, self.ca.clone()],
            self.leaf_signer.clone(),
        ));
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
        config.alpn_protocols = vec![HTTP1.to_vec()];
        let config = Arc::new(config);
        if servers.len() >= MAX_CACHED_HOSTS {
            servers.clear();
        }
        servers.insert(host.to_owned(), config.clone());
        Ok(config)
    }

    fn leaf(&self, host: &str) -> Result<CertificateDer<'static>, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(host);
        params.subject_alt_names = vec![match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.to_owned().try_into()?),
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = (SystemTime::now() - BACKDATE).into();
        params.not_after = self.not_after.into();
        params.serial_number = Some(serial(&self.provider)?);
        Ok(params
            .signed_by(&self.leaf_key, &self.issuer)?
            .der()
            .clone())
    }
}

/// The name upstream servers are verified against: a DNS name, or an IP literal (no SNI).
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(host.to_owned()).ok()
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// A random positive serial: each leaf must have its own (clients refuse two certificates
/// from one issuer with the same serial).
fn serial(provider: &CryptoProvider) -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    provider
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| TlsError::Roots("no random numbers".into()))?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Name constraints permitting only the policy's L7 hosts: an exact name permits itself and
/// its subdomains (RFC 5280's DNS constraint), a glob the domain after its wildcards, an IP
/// literal itself. `None` (no constraint) when there is nothing to permit.
fn constraints(hosts: &[&HostPattern]) -> Option<NameConstraints> {
    let mut permitted: Vec<GeneralSubtree> = Vec::new();
    for host in hosts {
        let subtree = match host {
            HostPattern::Exact(name) => GeneralSubtree::DnsName(name.clone()),
            HostPattern::Ip(ip) => {
                let prefix = if ip.is_ipv4() { 32 } else { 128 };
                GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(*ip, prefix))
            }
            HostPattern::Glob(labels) => {
                let suffix: Vec<&str> = labels
                    .iter()
                    .rev()
                    .map_while(|l| match l {
                        Label::Literal(l) => Some(l.as_str()),
                        _ => None,
                    })
                    .collect();
                let domain: Vec<&str> = suffix.into_iter().rev().collect();
                GeneralSubtree::DnsName(domain.join("."))
            }
        };
        if !permitted.contains(&subtree) {
            permitted.push(subtree);
        }
    }
    // A constraint limits only names of its own type: without an IP subtree, a certificate
    // for any address would pass. Exclude them all unless an IP host was permitted.
    let mut excluded = Vec::new();
    if !permitted
        .iter()
        .any(|s| matches!(s, GeneralSubtree::IpAddress(_)))
    {
        excluded.push(GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])));
        excluded.push(GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])));
    }
    (!permitted.is_empty()).then_some(NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: excluded,
    })
}
