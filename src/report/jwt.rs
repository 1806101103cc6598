//! GitHub App authentication: the App's private key (PEM) and the RS256 JWT it signs to ask
//! for installation tokens.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// GitHub refuses JWTs that live longer than 10 minutes; 9 leaves room for clock drift.
const LIFETIME_SECONDS: i64 = 9 * 60;
/// Issued a minute in the past, as GitHub recommends, against clocks slightly ahead of ours.
const BACKDATE_SECONDS: i64 = 60;

/// The App's private key, parsed once.
pub struct AppKey {
    key: RsaKeyPair,
}

impl std::fmt::Debug for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppKey(..)")
    }
}

impl AppKey {
    /// Parses a PEM private key: PKCS#1 (`RSA PRIVATE KEY`, what GitHub hands out) or PKCS#8
    /// (`PRIVATE KEY`). The error says what is wrong, never what the key contains.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let (label, der) = pem_block(pem)?;
        let key = match label.as_str() {
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der)
                .map_err(|e| format!("the PKCS#1 RSA private key is invalid ({e})"))?,
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der).map_err(|e| {
                format!("the PKCS#8 private key is invalid or not an RSA key ({e})")
            })?,
            "ENCRYPTED PRIVATE KEY" => {
                return Err(
                    "the private key is encrypted; give the unencrypted PEM that GitHub issues"
                        .into(),
                );
            }
            other => {
                return Err(format!(
                    "expected an \"RSA PRIVATE KEY\" or \"PRIVATE KEY\" PEM block, found {other:?}"
                ));
            }
        };
        Ok(Self { key })
    }

    /// A JWT for `app_id` valid from `now - 60 s` to `now + 9 min` (`now` in Unix seconds).
    pub fn jwt(&self, app_id: &str, now: i64) -> Result<String, String> {
        let signing_input = signing_input(app_id, now);
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "signing the GitHub App JWT failed".to_string())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

/// `base64url(header).base64url(claims)`. A numeric App ID goes out as a number (GitHub's
/// examples); anything else (a client ID) as a string, which GitHub also accepts.
pub fn signing_input(app_id: &str, now: i64) -> String {
    let issuer = match app_id.parse::<u64>() {
        Ok(id) => serde_json::Value::from(id),
        Err(_) => serde_json::Value::from(app_id),
    };
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    let claims = serde_json::json!({
        "iat": now - BACKDATE_SECONDS,
        "exp": now + LIFETIME_SECONDS,
        "iss": issuer,
    });
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// The label and DER bytes of the first PEM block.
fn pem_block(pem: &str) -> Result<(String, Vec<u8>), String> {
    let start = pem
        .find("-----BEGIN ")
        .ok_or("no \"-----BEGIN\" line: the private key is not in PEM format")?;
    let rest = &pem[start + "-----BEGIN ".len()..];
    let label_end = rest
        .find("-----")
        .ok_or("the PEM \"BEGIN\" line is not closed")?;
    let label = rest[..label_end].to_string();
    let body = &rest[label_end + "-----".len()..];
    let end_marker = format!("-----END {label}-----");
    let body_end = body
        .find(&end_marker)
        .ok_or_else(|| format!("no \"-----END {label}-----\" line in the private key"))?;
    let base64: String = body[..body_end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if base64.contains(':') {
        return Err(
            "the PEM block has headers (an encrypted legacy key?); give the unencrypted key".into(),
        );
    }
    let der = STANDARD
        .decode(base64)
        .map_err(|_| "the private key's PEM body is not valid base64".to_string())?;
    Ok((label, der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

    fn decode_json(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn claims_are_backdated_and_short_lived() {
        let input = signing_input("12345", 1_000_000);
        let (header, claims) = input.split_once('.').unwrap();
        assert_eq!(
            decode_json(header),
            serde_json::json!({"alg": "RS256", "typ": "JWT"})
        );
        let claims = decode_json(claims);
        assert_eq!(claims["iat"], 1_000_000 - 60);
        assert_eq!(claims["exp"], 1_000_000 + 540);
        assert_eq!(claims["iss"], 12345);
        let claims = decode_json(signing_input("Iv1.abc", 0).split_once('.').unwrap().1);
        assert_eq!(claims["iss"], "Iv1.abc");
    }

    #[test]
    fn pem_errors_say_what_is_wrong() {
        assert!(AppKey::from_pem("garbage").unwrap_err().contains("PEM"));
        let err =
            AppKey::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .unwrap_err();
        assert!(err.contains("CERTIFICATE"), "{err}");
        let err =
            AppKey::from_pem("-----BEGIN RSA PRIVATE KEY-----\n!!!\n-----END RSA PRIVATE KEY-----")
                .unwrap_err();
        assert!(err.contains("base64"), "{err}");
        let err = AppKey::from_pem(
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----",
        )
        .unwrap_err();
        assert!(err.contains("PKCS#1"), "{err}");
    }

    #[test]
    fn pkcs8_keys_sign_verifiable_jwts() {
        // An RSA key generated in-process, in PKCS#8 (aws-lc-rs generates only that form).
        let pkcs8 = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .unwrap()
            .as_der()
            .unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(pkcs8.as_ref())
        );
        let key = AppKey::from_pem(&pem).unwrap();
        let jwt = key.jwt("7", 1_000).unwrap();
        let (input, signature) = jwt.rsplit_once('.').unwrap();
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.key.public_key().as_ref())
            .verify(
                input.as_bytes(),
                &URL_SAFE_NO_PAD.decode(signature).unwrap(),
            )
            .expect("the signature verifies with the public key");
    }
}
