//! Trust on both sides: the roots upstream servers are verified with, and the files and
//! variables that make the agent's clients trust the sandbox's CA with no setup.
//!
//! The agent gets, read-only under [`DIR`]: the CA alone (`openshell-ca.pem`, for variables
//! that *add* a CA to a client's own roots), a bundle (`ca-bundle.pem`: the roots the agent
//! trusted before plus ours, for variables that *replace* the roots, so that plain tunnels to
//! other hosts keep verifying), and the same bundle as a PKCS#12 trust store for the JVM
//! (`truststore.p12`), which reads no PEM. None of them holds a private key.

use std::fmt::Write as _;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::tls::Tls;
use crate::view::ProvidedFile;

/// Where the agent finds the files, in its own view of the filesystem.
pub const DIR: &str = "/run/openshell/tls";
/// The CA certificate alone.
pub const CA_FILE: &str = "/run/openshell/tls/openshell-ca.pem";
/// The agent's previous roots plus the CA.
pub const BUNDLE_FILE: &str = "/run/openshell/tls/ca-bundle.pem";
/// The bundle as a PKCS#12 trust store (no password, no MAC: it holds only certificates).
pub const TRUSTSTORE_FILE: &str = "/run/openshell/tls/truststore.p12";
/// Extra upstream roots (PEM), for servers behind a private CA.
pub const UPSTREAM_CA_VAR: &str = "OPENSHELL_UPSTREAM_CA_FILE";

/// Variables that replace a client's roots: they get the bundle.
const BUNDLE_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
    "CARGO_HTTP_CAINFO",
    "AWS_CA_BUNDLE",
];
/// Variables that add to a client's built-in roots: they get the CA alone.
const EXTRA_CA_VARS: &[&str] = &["NODE_EXTRA_CA_CERTS", "DENO_CERT"];
/// How the JVM is pointed at the trust store (added to what the pod already set).
const JAVA_VAR: &str = "JAVA_TOOL_OPTIONS";

/// Root certificates and where they came from.
#[derive(Debug, Clone)]
pub struct Roots {
    /// Every root, DER.
    pub certs: Vec<CertificateDer<'static>>,
    /// Where they came from, for the log.
    pub source: String,
}

/// Why the roots could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// `OPENSHELL_UPSTREAM_CA_FILE` names a file that cannot be used.
    #[error("{UPSTREAM_CA_VAR}={path}: {reason}")]
    ExtraRoots {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// The roots the agent image trusts (its trust store as found at start, following
/// `SSL_CERT_FILE` / `SSL_CERT_DIR` like OpenSSL; Mozilla's compiled-in roots when it has
/// none), plus the PEM file named by [`UPSTREAM_CA_VAR`].
pub fn roots() -> Result<Roots, TrustError> {
    let native = rustls_native_certs::load_native_certs();
    let (mut certs, mut source) = if native.certs.is_empty() {
        (
            webpki_root_certs::TLS_SERVER_ROOT_CERTS.to_vec(),
            "no system trust store: Mozilla's roots built into openshell-sandbox".to_owned(),
        )
    } else {
        let count = native.certs.len();
        (
            native.certs,
            format!("{count} roots of the system trust store"),
        )
    };
    if let Ok(path) = std::env::var(UPSTREAM_CA_VAR) {
        let fail = |reason: String| TrustError::ExtraRoots {
            path: path.clone(),
            reason,
        };
        let extra: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
            .map_err(|e| fail(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| fail(e.to_string()))?;
        if extra.is_empty() {
            return Err(fail("no PEM certificate in it".into()));
        }
        let _ = write!(source, " and {} from {path}", extra.len());
        certs.extend(extra);
    }
    Ok(Roots { certs, source })
}

/// The CA, the bundle and the trust store, for the agent. `agent_roots` are the roots the
/// agent trusted before (so its plain tunnels keep verifying).
pub fn agent_files(tls: &Tls, agent_roots: &[CertificateDer<'static>]) -> Vec<ProvidedFile> {
    let mut bundle = String::new();
    for cert in agent_roots {
        bundle.push_str(&pem(cert));
    }
    bundle.push_str(tls.ca_pem());
    let mut store: Vec<(String, &CertificateDer<'_>)> =
        vec![("openshell-sandbox-ca".to_owned(), tls.ca_der())];
    store.extend(
        agent_roots
            .iter()
            .enumerate()
            .map(|(i, cert)| (format!("root-{i}"), cert)),
    );
    vec![
        ProvidedFile {
            path: CA_FILE.into(),
            contents: tls.ca_pem().as_bytes().to_vec(),
            mode: 0o444,
        },
        ProvidedFile {
            path: BUNDLE_FILE.into(),
            contents: bundle.into_bytes(),
            mode: 0o444,
        },
        ProvidedFile {
            path: TRUSTSTORE_FILE.into(),
            contents: pkcs12_trust_store(&store),
            mode: 0o444,
        },
    ]
}

/// The variables pointing the agent's clients at the files; `java_options` is what the pod
/// already had in `JAVA_TOOL_OPTIONS` (kept, ours appended).
pub fn agent_environment(java_options: Option<&str>) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = BUNDLE_VARS
        .iter()
        .map(|var| (*var, BUNDLE_FILE.to_owned()))
        .chain(EXTRA_CA_VARS.iter().map(|var| (*var, CA_FILE.to_owned())))
        .collect();
    let ours = format!(
        "-Djavax.net.ssl.trustStore={TRUSTSTORE_FILE} -Djavax.net.ssl.trustStoreType=PKCS12"
    );
    env.push((
        JAVA_VAR,
        match java_options.map(str::trim).filter(|o| !o.is_empty()) {
            Some(existing) => format!("{existing} {ours}"),
            None => ours,
        },
    ));
    env
}

fn pem(cert: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", cert.as_ref().to_vec()))
}

/// A PKCS#12 file (RFC 7292) holding `certs` as trusted certificate entries, the way Java's
/// keytool writes them: one certificate bag each, with a friendly name (the alias) and
/// Oracle's trusted-key-usage attribute, without which the JVM ignores a certificate-only
/// entry. No encryption and no MAC: there is nothing secret in it, and the JVM loads such a
/// store without a password.
pub fn pkcs12_trust_store(certs: &[(String, &CertificateDer<'_>)]) -> Vec<u8> {
    const DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 1];
    const CERT_BAG: &[u64] = &[1, 2, 840, 113549, 1, 12, 10, 1, 3];
    const X509_CERTIFICATE: &[u64] = &[1, 2, 840, 113549, 1, 9, 22, 1];
    const FRIENDLY_NAME: &[u64] = &[1, 2, 840, 113549, 1, 9, 20];
    const ORACLE_TRUSTED_KEY_USAGE: &[u64] = &[2, 16, 840, 1, 113894, 746875, 1, 1];
    const ANY_EXTENDED_KEY_USAGE: &[u64] = &[2, 5, 29, 37, 0];
    let bags: Vec<Vec<u8>> = certs
        .iter()
        .map(|(alias, cert)| {
            let cert_bag = der::seq(&[
                der::oid(X509_CERTIFICATE),
                der::explicit(0, &der::octets(cert.as_ref())),
            ]);
            let bmp: Vec<u8> = alias.encode_utf16().flat_map(u16::to_be_bytes).collect();
            let attributes = der::set(vec![
                der::seq(&[
                    der::oid(FRIENDLY_NAME),
                    der::set(vec![der::tlv(0x1e, &bmp)]),
                ]),
                der::seq(&[
                    der::oid(ORACLE_TRUSTED_KEY_USAGE),
                    der::set(vec![der::oid(ANY_EXTENDED_KEY_USAGE)]),
                ]),
            ]);
            der::seq(&[der::oid(CERT_BAG), der::explicit(0, &cert_bag), attributes])
        })
        .collect();
    let safe_contents = der::seq(&bags);
    let data =
        |content: &[u8]| der::seq(&[der::oid(DATA), der::explicit(0, &der::octets(content))]);
    let authenticated_safe = der::seq(&[data(&safe_contents)]);
    der::seq(&[der::integer(3), data(&authenticated_safe)])
}

/// The handful of DER encoders the trust store needs.
mod der {
    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(content);
        out
    }

    pub fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    /// A SET OF, its elements in DER's sorted order.
    pub fn set(mut parts: Vec<Vec<u8>>) -> Vec<u8> {
        parts.sort();
        tlv(0x31, &parts.concat())
    }

    pub fn explicit(number: u8, inner: &[u8]) -> Vec<u8> {
        tlv(0xa0 | number, inner)
    }

    pub fn octets(content: &[u8]) -> Vec<u8> {
        tlv(0x04, content)
    }

    pub fn integer(value: u8) -> Vec<u8> {
        tlv(0x02, &[value])
    }

    pub fn oid(arcs: &[u64]) -> Vec<u8> {
        let mut body = Vec::new();
        let mut arcs = arcs.iter().copied();
        let first = arcs.next().unwrap_or(0) * 40 + arcs.next().unwrap_or(0);
        for arc in std::iter::once(first).chain(arcs) {
            let mut digits = vec![(arc & 0x7f) as u8];
            let mut rest = arc >> 7;
            while rest > 0 {
                digits.push(0x80 | (rest & 0x7f) as u8);
                rest >>= 7;
            }
            body.extend(digits.into_iter().rev());
        }
        tlv(0x06, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_encode_like_the_standards_say() {
        assert_eq!(
            der::oid(&[1, 2, 840, 113549, 1, 7, 1]),
            [
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01
            ]
        );
        assert_eq!(
            der::oid(&[2, 5, 29, 37, 0]),
            [0x06, 0x04, 0x55, 0x1d, 0x25, 0x00]
        );
        assert_eq!(der::tlv(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn every_variable_points_at_a_file_and_java_options_are_kept() {
        let env = agent_environment(Some("-Xmx1g"));
        for var in BUNDLE_VARS {
            assert!(env.contains(&(var, BUNDLE_FILE.to_owned())), "{var}");
        }
        for var in EXTRA_CA_VARS {
            assert!(env.contains(&(var, CA_FILE.to_owned())), "{var}");
        }
        let java = &env.iter().find(|(k, _)| *k == JAVA_VAR).unwrap().1;
        assert!(
            java.starts_with("-Xmx1g -Djavax.net.ssl.trustStore="),
            "{java}"
        );
        let fresh = agent_environment(None);
        let java = &fresh.iter().find(|(k, _)| *k == JAVA_VAR).unwrap().1;
        assert!(java.starts_with("-Djavax"), "{java}");
    }

    #[test]
    fn the_files_hold_certificates_only() {
        let host = crate::policy::HostPattern::parse("api.example.com").unwrap();
        let roots = roots().unwrap();
        let tls = Tls::new(&[&host], &roots.certs).unwrap();
        let files = agent_files(&tls, &roots.certs[..3]);
        assert_eq!(files.len(), 3);
        for file in &files {
            assert!(file.path.starts_with(DIR));
            assert_eq!(file.mode, 0o444);
            let text = String::from_utf8_lossy(&file.contents);
            assert!(!text.contains("PRIVATE"), "{}", file.path.display());
        }
        let bundle = String::from_utf8(files[1].contents.clone()).unwrap();
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 4);
        assert!(bundle.ends_with(tls.ca_pem()));
    }
}
