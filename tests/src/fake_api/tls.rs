//! A certificate authority of the test network's own, and the server certificate it signs for
//! the fake APIs' host names.
//!
//! Clients trust it by its PEM file: an agent through `NODE_EXTRA_CA_CERTS` or `SSL_CERT_FILE`
//! (before the supervisor terminates TLS), the supervisor through `OPENSHELL_UPSTREAM_CA_FILE`
//! (once it does). Nothing here is trusted by the machine itself.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The test CA and one server certificate for every name the fake APIs answer under.
#[derive(Debug)]
pub struct TestCa {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl TestCa {
    /// A new CA (ECDSA P-256, made in memory) and a leaf certificate whose subject alternative
    /// names are `names`.
    pub fn new(names: &[&str]) -> TestCa {
        let ca_key = KeyPair::generate().expect("generating the test CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.distinguished_name
            .push(DnType::CommonName, "openshell test network CA");
        let ca_cert = ca.self_signed(&ca_key).expect("self-signing the test CA");
        let issuer = Issuer::new(ca, ca_key);

        let leaf_key = KeyPair::generate().expect("generating the server key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut leaf = CertificateParams::new(names).expect("server certificate parameters");
        leaf.distinguished_name
            .push(DnType::CommonName, "openshell fake model API");
        let leaf_cert = leaf
            .signed_by(&leaf_key, &issuer)
            .expect("signing the server certificate");
        TestCa {
            ca_pem: ca_cert.pem(),
            chain: vec![leaf_cert.der().clone(), ca_cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        }
    }

    /// The CA certificate, PEM: what a client must trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A server configuration presenting the certificate, HTTP/1.1 only (ALPN), as the
    /// supervisor's L7 relay speaks it.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        // ring: small and quick to build. rustls deprecates it for lacking post-quantum key
        // exchange, which a test server does not need (clients fall back to X25519).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .expect("the server certificate and its key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}
