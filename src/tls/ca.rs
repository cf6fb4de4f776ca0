//! The interception CA: loads (or, for `portcullis ca init`, creates) an ECDSA P-256
//! certificate authority and signs short-lived leaf certificates with it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData as _, SanType,
};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

/// Leaves are backdated by this much, so a client whose clock runs a little behind still
/// accepts a certificate minted a moment ago.
const BACKDATE: Duration = Duration::from_secs(300);

/// Why a CA could not be loaded, created, or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("cannot sign a certificate for {host:?}: {message}")]
    Sign { host: String, message: String },
    #[error("{0}")]
    Other(String),
}

fn file_error(path: &Path, message: impl Into<String>) -> CaError {
    CaError::File {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// A CA certificate and key in PEM, as `ca init` writes them.
pub struct GeneratedCa {
    pub cert_pem: String,
    pub key_pem: SecretString,
}

/// Creates a self-signed CA (ECDSA P-256) valid for `lifetime`. It may sign leaves only
/// (path length 0), and its key is never used for TLS itself.
pub fn generate(common_name: &str, lifetime: Duration) -> Result<GeneratedCa, CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::Other(format!("cannot generate a P-256 key: {e}")))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| CaError::Other(e.to_string()))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, "Portcullis");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
    params.serial_number = Some(random_serial());
    let cert = params
        .self_signed(&key)
        .map_err(|e| CaError::Other(format!("cannot self-sign the CA: {e}")))?;
    Ok(GeneratedCa {
        cert_pem: cert.pem(),
        key_pem: SecretString::from(key.serialize_pem()),
    })
}

/// A leaf certificate for one host name, with its chain and key in PEM.
pub struct Leaf {
    /// The leaf followed by the CA certificate.
    pub chain_pem: String,
    pub key_pem: SecretString,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A loaded CA, ready to sign.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    not_after: SystemTime,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Reads a CA certificate and its private key (PEM, PKCS#8 or SEC1), and checks that
    /// they belong together, that the certificate is a CA and that it has not expired.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<CertificateAuthority, CaError> {
        let cert_pem = std::fs::read_to_string(cert_file)
            .map_err(|e| file_error(cert_file, format!("cannot read the CA certificate: {e}")))?;
        let key_pem = SecretString::from(
            std::fs::read_to_string(key_file)
                .map_err(|e| file_error(key_file, format!("cannot read the CA key: {e}")))?,
        );
        CertificateAuthority::from_pem(&cert_pem, &key_pem, cert_file, key_file)
    }

    /// As [`CertificateAuthority::load`], from PEM text; the paths only name the inputs in
    /// errors.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &SecretString,
        cert_file: &Path,
        key_file: &Path,
    ) -> Result<CertificateAuthority, CaError> {
        // Never echo the key file's content in an error: it is the CA's secret.
        let key = KeyPair::from_pem(key_pem.expose_secret()).map_err(|_| {
            file_error(
                key_file,
                "not a PEM private key (expected an ECDSA, Ed25519 or RSA key in PKCS#8 or SEC1 form)",
            )
        })?;
        let der = pem_certificate(cert_pem)
            .ok_or_else(|| file_error(cert_file, "no PEM CERTIFICATE block"))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| file_error(cert_file, format!("not an X.509 certificate: {e}")))?;
        if !x509.is_ca() {
            return Err(file_error(
                cert_file,
                "the certificate is not a CA (basicConstraints CA:TRUE is missing)",
            ));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(file_error(
                key_file,
                format!(
                    "this key does not belong to the CA certificate {}",
                    cert_file.display()
                ),
            ));
        }
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(x509.validity().not_after.timestamp().max(0) as u64);
        if not_after <= SystemTime::now() {
            return Err(file_error(
                cert_file,
                format!("the CA expired on {}", x509.validity().not_after),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key)
            .map_err(|e| file_error(cert_file, format!("cannot use it as an issuer: {e}")))?;
        Ok(CertificateAuthority {
            issuer,
            cert_pem: cert_pem.trim_end().to_owned() + "\n",
            not_after,
        })
    }

    /// When the CA itself expires: leaves never outlive it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Signs a fresh leaf for `host` (a DNS name, lower case), valid for `lifetime` but
    /// never past the CA's own expiry. Each leaf has its own P-256 key.
    pub fn mint(&self, host: &str, lifetime: Duration) -> Result<Leaf, CaError> {
        let sign_error = |message: String| CaError::Sign {
            host: host.to_owned(),
            message,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| sign_error(e.to_string()))?;
        let mut params = CertificateParams::default();
        let san = SanType::DnsName(
            host.to_owned()
                .try_into()
                .map_err(|e| sign_error(format!("not a DNS name: {e}")))?,
        );
        params.subject_alt_names = vec![san];
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, host);
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let not_after = (now + lifetime).min(self.not_after);
        params.not_before = OffsetDateTime::from(now - BACKDATE);
        params.not_after = OffsetDateTime::from(not_after);
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| sign_error(e.to_string()))?;
        Ok(Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: SecretString::from(key.serialize_pem()),
            not_after,
        })
    }
}

/// Writes a new CA into `dir` as `ca.crt` (0644) and `ca.key` (0600). Refuses to replace
/// existing files unless `force`.
pub fn write_new(
    dir: &Path,
    common_name: &str,
    lifetime: Duration,
    force: bool,
) -> Result<(PathBuf, PathBuf), CaError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    let cert_path = dir.join("ca.crt");
    let key_path = dir.join("ca.key");
    if !force {
        for path in [&cert_path, &key_path] {
            if path.exists() {
                return Err(file_error(
                    path,
                    "already exists; pass --force to replace the CA (every workload that trusts the old one must then trust the new one)",
                ));
            }
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| file_error(dir, format!("cannot create the directory: {e}")))?;
    let ca = generate(common_name, lifetime)?;
    let write = |path: &Path, mode: u32, text: &str| -> Result<(), CaError> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(|e| file_error(path, format!("cannot write: {e}")))?;
        file.write_all(text.as_bytes())
            .map_err(|e| file_error(path, format!("cannot write: {e}")))
    };
    write(&key_path, 0o600, ca.key_pem.expose_secret())?;
    write(&cert_path, 0o644, &ca.cert_pem)?;
    Ok((cert_path, key_path))
}

fn pem_certificate(text: &str) -> Option<Vec<u8>> {
    let (_, rest) = x509_parser::pem::parse_x509_pem(text.as_bytes()).ok()?;
    (rest.label == "CERTIFICATE").then_some(rest.contents)
}

/// A positive 128-bit serial: unique per certificate, as clients expect.
fn random_serial() -> rcgen::SerialNumber {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] &= 0x7f;
    rcgen::SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> CertificateAuthority {
        let generated = generate("test CA", Duration::from_secs(3600)).unwrap();
        CertificateAuthority::from_pem(
            &generated.cert_pem,
            &generated.key_pem,
            Path::new("ca.crt"),
            Path::new("ca.key"),
        )
        .unwrap()
    }

    #[test]
    fn a_leaf_names_its_host_chains_to_the_ca_and_ends_on_time() {
        let ca = ca();
        let leaf = ca
            .mint("api.example.com", Duration::from_secs(600))
            .unwrap();
        let blocks: Vec<_> = x509_parser::pem::Pem::iter_from_buffer(leaf.chain_pem.as_bytes())
            .map(|p| p.unwrap())
            .collect();
        assert_eq!(blocks.len(), 2, "leaf then CA");
        let leaf_cert = blocks[0].parse_x509().unwrap();
        let ca_cert = blocks[1].parse_x509().unwrap();
        assert_eq!(leaf_cert.issuer(), ca_cert.subject());
        leaf_cert
            .verify_signature(Some(ca_cert.public_key()))
            .expect("signed by the CA");
        assert!(!leaf_cert.is_ca());
        let sans = leaf_cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", sans.value.general_names),
            r#"[DNSName("api.example.com")]"#
        );
        let lifetime = leaf_cert.validity().not_after.timestamp()
            - leaf_cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 600 + BACKDATE.as_secs() as i64);
    }

    #[test]
    fn a_leaf_never_outlives_its_ca() {
        let ca = ca();
        let leaf = ca
            .mint("a.example", Duration::from_secs(86_400 * 30))
            .unwrap();
        assert_eq!(leaf.not_after, ca.not_after());
    }

    #[test]
    fn a_key_of_another_ca_is_refused_without_echoing_it() {
        let one = generate("one", Duration::from_secs(3600)).unwrap();
        let two = generate("two", Duration::from_secs(3600)).unwrap();
        let error = CertificateAuthority::from_pem(
            &one.cert_pem,
            &two.key_pem,
            Path::new("one.crt"),
            Path::new("two.key"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("two.key: this key does not belong"),
            "{error}"
        );
        let garbage = SecretString::from("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n".to_owned());
        let error = CertificateAuthority::from_pem(
            &one.cert_pem,
            &garbage,
            Path::new("one.crt"),
            Path::new("bad.key"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("bad.key: not a PEM private key"),
            "{error}"
        );
        assert!(!error.contains("c2VjcmV0"));
    }

    #[test]
    fn a_leaf_certificate_is_refused_as_a_ca() {
        let ca = ca();
        let leaf = ca.mint("x.example", Duration::from_secs(60)).unwrap();
        let error = CertificateAuthority::from_pem(
            &leaf.chain_pem,
            &leaf.key_pem,
            Path::new("leaf.crt"),
            Path::new("leaf.key"),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("not a CA"), "{error}");
    }

    #[test]
    fn init_writes_a_private_key_and_refuses_to_overwrite() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_new(dir.path(), "t", Duration::from_secs(3600), false).unwrap();
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        CertificateAuthority::load(&cert, &key).unwrap();
        let again = write_new(dir.path(), "t", Duration::from_secs(3600), false)
            .unwrap_err()
            .to_string();
        assert!(again.contains("already exists"), "{again}");
        write_new(dir.path(), "t", Duration::from_secs(3600), true).unwrap();
    }
}
