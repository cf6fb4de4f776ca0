//! Signed JWT assertions for the `jwt_bearer` OAuth grant and Google service accounts:
//! RS256 or ES256, with keys read from PEM (PKCS#8, PKCS#1 RSA, SEC1 EC P-256; encrypted
//! keys are refused). Errors describe the key's shape, never its content.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::http::clip;
use crate::secrets::SecretValue;

/// The algorithms an assertion can be signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JwtAlgorithm {
    Rs256,
    Es256,
}

impl JwtAlgorithm {
    pub(super) fn parse(text: &str) -> Option<JwtAlgorithm> {
        match text.trim() {
            t if t.eq_ignore_ascii_case("RS256") => Some(JwtAlgorithm::Rs256),
            t if t.eq_ignore_ascii_case("ES256") => Some(JwtAlgorithm::Es256),
            _ => None,
        }
    }
}

/// Signs `claims` with a PEM private key. Errors describe the key's shape, never its
/// content.
pub(super) fn sign_jwt(
    pem: &SecretValue,
    algorithm: JwtAlgorithm,
    key_id: Option<&str>,
    claims: &serde_json::Value,
) -> Result<SecretValue, String> {
    let key = signing_key(pem.expose(), algorithm)?;
    let mut header = Header::new(match algorithm {
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Es256 => Algorithm::ES256,
    });
    header.kid = key_id.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key)
        .map(SecretValue::new)
        .map_err(|e| format!("cannot sign with the key ({})", clip(&e.to_string())))
}

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) as a signing key for `algorithm`.
fn signing_key(pem: &str, algorithm: JwtAlgorithm) -> Result<EncodingKey, String> {
    let (label, der) = decode_pem(pem)?;
    let wrong = |found: &str| {
        Err(format!(
            "the key is {found}, which cannot sign {}",
            match algorithm {
                JwtAlgorithm::Rs256 => "RS256 (needs an RSA key)",
                JwtAlgorithm::Es256 => "ES256 (needs an EC P-256 key)",
            }
        ))
    };
    match (label.as_str(), algorithm) {
        ("PRIVATE KEY", _) => {
            let info = pkcs8(&der).ok_or("the PKCS#8 key is malformed")?;
            match (info.algorithm, algorithm) {
                (OID_RSA, JwtAlgorithm::Rs256) => Ok(EncodingKey::from_rsa_der(info.private_key)),
                (OID_EC, JwtAlgorithm::Es256) if info.curve == Some(OID_P256) => {
                    Ok(EncodingKey::from_ec_der(&der))
                }
                (OID_RSA, _) => wrong("an RSA key"),
                (OID_EC, _) => wrong("an EC key on another curve"),
                _ => wrong("of another type"),
            }
        }
        ("RSA PRIVATE KEY", JwtAlgorithm::Rs256) => Ok(EncodingKey::from_rsa_der(&der)),
        ("RSA PRIVATE KEY", _) => wrong("an RSA key"),
        ("EC PRIVATE KEY", JwtAlgorithm::Es256) => {
            match sec1_curve(&der).ok_or("the EC key is malformed")? {
                Some(curve) if curve != OID_P256 => wrong("an EC key on another curve"),
                _ => Ok(EncodingKey::from_ec_der(&sec1_to_pkcs8(&der))),
            }
        }
        ("EC PRIVATE KEY", _) => wrong("an EC key"),
        ("ENCRYPTED PRIVATE KEY", _) => {
            Err("the key is encrypted; give an unencrypted PEM key".into())
        }
        _ => Err(format!("a PEM {label:?} block is not a private key")),
    }
}

/// The label and DER bytes of the first PEM block. Tolerates `\n` written as two
/// characters (a key pasted into an environment variable).
fn decode_pem(pem: &str) -> Result<(String, Vec<u8>), String> {
    const NOT_PEM: &str = "the value is not a PEM private key (-----BEGIN PRIVATE KEY-----)";
    let start = pem.find("-----BEGIN ").ok_or(NOT_PEM)?;
    let rest = &pem[start + "-----BEGIN ".len()..];
    let label_end = rest.find("-----").ok_or(NOT_PEM)?;
    let label = &rest[..label_end];
    let body_and_end = &rest[label_end + 5..];
    let end = body_and_end
        .find(&format!("-----END {label}-----"))
        .ok_or(NOT_PEM)?;
    let body: String = body_and_end[..end]
        .replace("\\n", "")
        .replace("\\r", "")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| format!("the PEM {label:?} block is not valid base64"))?;
    Ok((label.to_owned(), der))
}

/// One DER element: its tag, its content, and what follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

fn der_encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

struct Pkcs8<'a> {
    algorithm: &'a [u8],
    curve: Option<&'a [u8]>,
    private_key: &'a [u8],
}

/// `PrivateKeyInfo ::= SEQUENCE { version, AlgorithmIdentifier, OCTET STRING }`.
fn pkcs8(input: &[u8]) -> Option<Pkcs8<'_>> {
    let Some((0x30, info, _)) = der(input) else {
        return None;
    };
    let Some((0x02, _version, rest)) = der(info) else {
        return None;
    };
    let Some((0x30, algorithm_id, rest)) = der(rest) else {
        return None;
    };
    let Some((0x06, algorithm, params)) = der(algorithm_id) else {
        return None;
    };
    let curve = match der(params) {
        Some((0x06, curve, _)) => Some(curve),
        _ => None,
    };
    let Some((0x04, private_key, _)) = der(rest) else {
        return None;
    };
    Some(Pkcs8 {
        algorithm,
        curve,
        private_key,
    })
}

/// The curve named in a SEC1 `ECPrivateKey` (`None` when it names none).
fn sec1_curve(input: &[u8]) -> Option<Option<&[u8]>> {
    let Some((0x30, key, _)) = der(input) else {
        return None;
    };
    let Some((0x02, _version, rest)) = der(key) else {
        return None;
    };
    let Some((0x04, _private, mut rest)) = der(rest) else {
        return None;
    };
    while let Some((tag, content, next)) = der(rest) {
        if tag == 0xa0 {
            return match der(content) {
                Some((0x06, curve, _)) => Some(Some(curve)),
                _ => None,
            };
        }
        rest = next;
    }
    Some(None)
}

/// Wraps a SEC1 P-256 key in PKCS#8.
fn sec1_to_pkcs8(sec1: &[u8]) -> Vec<u8> {
    let mut algorithm = der_encode(0x06, OID_EC);
    algorithm.extend(der_encode(0x06, OID_P256));
    let mut info = der_encode(0x02, &[0]);
    info.extend(der_encode(0x30, &algorithm));
    info.extend(der_encode(0x04, sec1));
    der_encode(0x30, &info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::sources::http::now;
    use jsonwebtoken::{DecodingKey, Validation};

    const RSA_PKCS8: &str = include_str!("../../../tests/fixtures/keys/rsa-private.pem");
    const RSA_PKCS1: &str = include_str!("../../../tests/fixtures/keys/rsa-private-pkcs1.pem");
    const RSA_PUBLIC: &str = include_str!("../../../tests/fixtures/keys/rsa-public.pem");
    const EC_PKCS8: &str = include_str!("../../../tests/fixtures/keys/ec-private.pem");
    const EC_SEC1: &str = include_str!("../../../tests/fixtures/keys/ec-private-sec1.pem");
    const EC_PUBLIC: &str = include_str!("../../../tests/fixtures/keys/ec-public.pem");

    fn rsa_public() -> DecodingKey {
        DecodingKey::from_rsa_der(&decode_pem(RSA_PUBLIC).unwrap().1)
    }

    /// The uncompressed point at the end of a P-256 SubjectPublicKeyInfo.
    fn ec_public() -> DecodingKey {
        let spki = decode_pem(EC_PUBLIC).unwrap().1;
        DecodingKey::from_ec_der(&spki[spki.len() - 65..])
    }

    fn verify(jwt: &SecretValue, key: &DecodingKey, alg: Algorithm) -> serde_json::Value {
        let mut validation = Validation::new(alg);
        validation.validate_aud = false;
        jsonwebtoken::decode::<serde_json::Value>(jwt.expose(), key, &validation)
            .unwrap()
            .claims
    }

    #[test]
    fn signs_with_every_key_form() {
        let claims = serde_json::json!({"iss": "me", "exp": now() + 60});
        for pem in [RSA_PKCS8, RSA_PKCS1, &RSA_PKCS8.replace('\n', "\\n")] {
            let jwt = sign_jwt(
                &SecretValue::new(pem),
                JwtAlgorithm::Rs256,
                Some("k1"),
                &claims,
            )
            .unwrap();
            assert_eq!(verify(&jwt, &rsa_public(), Algorithm::RS256)["iss"], "me");
            let header = jsonwebtoken::decode_header(jwt.expose()).unwrap();
            assert_eq!(header.kid.as_deref(), Some("k1"));
        }
        for pem in [EC_PKCS8, EC_SEC1] {
            let jwt = sign_jwt(&SecretValue::new(pem), JwtAlgorithm::Es256, None, &claims).unwrap();
            assert_eq!(verify(&jwt, &ec_public(), Algorithm::ES256)["iss"], "me");
        }
    }

    #[test]
    fn key_mistakes_are_described_without_content() {
        let err = |pem: &str, alg| signing_key(pem, alg).err().unwrap();
        assert!(err(RSA_PKCS8, JwtAlgorithm::Es256).contains("an RSA key"));
        assert!(err(EC_PKCS8, JwtAlgorithm::Rs256).contains("an EC key"));
        assert!(err(EC_SEC1, JwtAlgorithm::Rs256).contains("an EC key"));
        assert!(err("s3cr3t", JwtAlgorithm::Rs256).contains("not a PEM private key"));
        assert!(err(RSA_PUBLIC, JwtAlgorithm::Rs256).contains("\"PUBLIC KEY\""));
        let garbage = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----";
        assert_eq!(
            err(garbage, JwtAlgorithm::Rs256),
            "the PKCS#8 key is malformed"
        );
        let bad =
            "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKxx\n-----END RSA PRIVATE KEY-----";
        let e = sign_jwt(
            &SecretValue::new(bad),
            JwtAlgorithm::Rs256,
            None,
            &serde_json::json!({}),
        )
        .unwrap_err();
        assert!(e.starts_with("cannot sign with the key"), "{e}");
        assert!(!e.contains("MIIBOgIBAAJBAK"));
    }
}
