//! TLS between the nodes of a keyed cluster, mutually authenticated.
//!
//! Every key holder derives the same CA key pair from the cluster key (an Ed25519 seed
//! from HKDF), so each node can issue itself a certificate that every other member
//! accepts, and no one without the key can. A node makes a fresh leaf key pair at each
//! start and signs it with the derived CA; servers require a client certificate from the
//! same CA and clients check the server's, so a host without the key can neither call a
//! node, nor read its traffic, nor pass for one. Which member a connection reaches is
//! then checked as before, by the peer's node id (`HealthCheck`).
//!
//! This is a key-derived scheme rather than a fingerprint-pinning one: membership is the
//! key, and a member's certificate proves it without depending on which announcement
//! arrived first (plans and peers files work the same as UDP discovery).

use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::ClusterKey;

/// The name every node's certificate carries and every client asks for: nodes are told
/// apart by node id, not by host name (their addresses come from discovery).
pub const TLS_SERVER_NAME: &str = "exo-node";

/// The TLS settings of one node: its certificate and the cluster's CA.
#[derive(Clone)]
pub struct NodeTls {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    server: Arc<rustls::ServerConfig>,
    group_server: Arc<rustls::ServerConfig>,
    group_client: Arc<rustls::ClientConfig>,
}

/// The protocol a tensor-parallel group link asks for by ALPN: a group link and a gRPC
/// connection are never taken for each other.
pub const GROUP_ALPN: &[u8] = b"exo-group/1";

impl NodeTls {
    /// Derives the cluster CA from the key and issues this node a certificate.
    pub fn new(key: &ClusterKey) -> anyhow::Result<Self> {
        let (ca_params, ca_key) = cluster_ca(key)?;
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("cannot make the cluster CA certificate")?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .context("cannot make a node key pair")?;
        let mut leaf = CertificateParams::new(vec![TLS_SERVER_NAME.to_string()])
            .context("bad certificate name")?;
        leaf.distinguished_name = DistinguishedName::new();
        leaf.distinguished_name
            .push(DnType::CommonName, "exo-rs node");
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let leaf_cert = leaf
            .signed_by(&leaf_key, &issuer)
            .context("cannot sign the node certificate")?;
        let key_der = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let (ca_der, leaf_der) = (ca_cert.der().clone(), leaf_cert.der().clone());
        let server = server_config(ca_der.clone(), leaf_der.clone(), key_der(), b"h2")?;
        let group_server = server_config(ca_der.clone(), leaf_der.clone(), key_der(), GROUP_ALPN)?;
        let group_client = group_client_config(ca_der, leaf_der, key_der())?;
        Ok(NodeTls {
            ca_pem: ca_cert.pem(),
            cert_pem: leaf_cert.pem(),
            key_pem: leaf_key.serialize_pem(),
            server,
            group_server,
            group_client,
        })
    }

    /// For the gRPC server: present our certificate, require one from the cluster CA (the
    /// server runs the handshake itself, to time and count it).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// For peer channels: trust only the cluster CA, present our certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(TLS_SERVER_NAME)
            .assume_http2(true)
    }

    /// For the group links this node accepts: as the gRPC server's, with [`GROUP_ALPN`].
    pub fn group_server_config(&self) -> Arc<rustls::ServerConfig> {
        self.group_server.clone()
    }

    /// For the group links this node opens: trust only the cluster CA, present our
    /// certificate, ask for [`GROUP_ALPN`].
    pub fn group_client_config(&self) -> Arc<rustls::ClientConfig> {
        self.group_client.clone()
    }

    /// The cluster CA certificate (PEM): the same trust anchor on every member.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeTls")
    }
}

/// The server side of the node's TLS: TLS 1.3 with the ring provider (as the client side),
/// our certificate, a client certificate of the cluster CA required, `alpn` (HTTP/2 for
/// gRPC).
fn server_config(
    ca: rustls_pki_types::CertificateDer<'static>,
    cert: rustls_pki_types::CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    alpn: &[u8],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (provider, roots) = ring_and_roots(ca)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .context("cannot check client certificates against the cluster CA")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)
        .context("the node certificate and key do not match")?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The ring provider, and a root store holding only the cluster CA.
fn ring_and_roots(
    ca: rustls_pki_types::CertificateDer<'static>,
) -> anyhow::Result<(Arc<rustls::crypto::CryptoProvider>, rustls::RootCertStore)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca)
        .context("the cluster CA is not a usable trust anchor")?;
    Ok((provider, roots))
}

/// The client side of a group link: TLS 1.3 with the ring provider, only the cluster CA
/// trusted, our certificate presented, [`GROUP_ALPN`].
fn group_client_config(
    ca: rustls_pki_types::CertificateDer<'static>,
    cert: rustls_pki_types::CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let (provider, roots) = ring_and_roots(ca)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)
        .context("the node certificate and key do not match")?;
    config.alpn_protocols = vec![GROUP_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The CA every key holder derives alike: the same name and the same key pair, so the
/// trust anchor (subject and public key) is the same on every node.
fn cluster_ca(key: &ClusterKey) -> anyhow::Result<(CertificateParams, KeyPair)> {
    // PKCS#8 v1 wrapping of a raw Ed25519 seed (RFC 8410).
    const ED25519_PKCS8_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&key.derive("tls cluster ca ed25519 seed"));
    let ca_key =
        KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(der), &PKCS_ED25519)
            .context("cannot derive the cluster CA key")?;
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("exo-rs cluster {}", key.key_id()),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok((params, ca_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_holder_derives_the_same_ca_key() {
        let key = ClusterKey::from_bytes([3; 32]);
        let (_, a) = cluster_ca(&key).unwrap();
        let (_, b) = cluster_ca(&key).unwrap();
        let (_, c) = cluster_ca(&ClusterKey::from_bytes([4; 32])).unwrap();
        assert_eq!(a.public_key_raw(), b.public_key_raw());
        assert_ne!(a.public_key_raw(), c.public_key_raw());
        assert!(NodeTls::new(&key).is_ok());
    }
}
