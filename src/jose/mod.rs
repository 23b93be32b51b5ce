//! JOSE, the parts FIT-Connect uses: RSA JSON Web Keys (RFC 7517), compact
//! JWE with `RSA-OAEP-256` and `A256GCM` (RFC 7516, decrypting), and
//! compact JWS with `PS512` (RFC 7515, signing and verifying).
//!
//! Built on aws-lc-rs, the project's one crypto library: the JOSE crates
//! either need OpenSSL (josekit), lack RSA-OAEP-256 (jwt-simple, biscuit)
//! or decrypt with the RustCrypto `rsa` crate, whose RSA decryption is not
//! constant-time (RUSTSEC-2023-0071), which matters for ciphertexts a
//! sender controls. Each primitive is held to published test vectors
//! (`tests.rs`: RFC 7516 A.1, Wycheproof's RSA-OAEP-256 JWE and PS512 JWS
//! groups).
//!
//! Only what a receiver needs and nothing it should not accept: one key
//! algorithm, one content algorithm, one signature algorithm; anything
//! else in a header is refused, never negotiated.

mod der;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io::Read as _;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use aws_lc_rs::rsa::{
    KeyPair, KeyPairComponents, KeySize, OAEP_SHA256_MGF1SHA256, OaepAlgorithm, OaepPrivateDecryptingKey,
    PrivateDecryptingKey, PublicKeyComponents,
};
use aws_lc_rs::signature::{RSA_PSS_2048_8192_SHA512, RSA_PSS_SHA512};
use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use serde::{Deserialize, Serialize};

/// Why a key, a JWE or a JWS was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoseError {
    #[error("not a compact {0}")]
    Malformed(&'static str),
    #[error("unsupported {field} {value:?}; only {expected} is accepted")]
    Unsupported { field: &'static str, value: String, expected: &'static str },
    /// The key could not be unwrapped or the content did not authenticate:
    /// one error for both, so that a sender learns nothing from which.
    #[error("the content could not be decrypted")]
    Undecryptable,
    #[error("the decrypted content is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the signature does not verify")]
    BadSignature,
    #[error("not a usable RSA key: {0}")]
    Key(String),
}

/// base64url without padding (RFC 7515 §2), strict: padding and
/// non-canonical trailing bits are refused.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_encode_padding(false).with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

pub fn base64url(bytes: &[u8]) -> String {
    BASE64URL.encode(bytes)
}

pub fn base64url_decode(text: &str) -> Result<Vec<u8>, JoseError> {
    BASE64URL.decode(text).map_err(|_| JoseError::Malformed("base64url value"))
}

/// A protected header is a few hundred bytes; a larger one is not a
/// header but an attempt to make us parse.
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// An RSA JSON Web Key as FIT-Connect writes them: public (`n`, `e`) or
/// private (with `d`, `p`, `q`, `dp`, `dq`, `qi`). Members this module
/// does not use (`x5t`, …) are ignored when read and not written.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Jwk {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ops: Option<Vec<String>>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub usage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x5c: Option<Vec<String>>,
    pub n: String,
    pub e: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dq: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qi: Option<String>,
}

/// Private members stay out of logs and panics.
impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwk")
            .field("kty", &self.kty)
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("key_ops", &self.key_ops)
            .field("private", &self.d.is_some())
            .finish_non_exhaustive()
    }
}

/// A JSON Web Key Set (RFC 7517 §5).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

impl Jwk {
    /// The public half: the same key without its private members.
    pub fn to_public(&self) -> Jwk {
        Jwk { d: None, p: None, q: None, dp: None, dq: None, qi: None, ..self.clone() }
    }

    /// Size of the modulus in bits.
    pub fn bits(&self) -> Result<usize, JoseError> {
        let n = base64url_decode(&self.n)?;
        let leading = n.iter().take_while(|&&b| b == 0).count();
        let n = &n[leading..];
        Ok(n.first().map_or(0, |first| (n.len() - 1) * 8 + (8 - first.leading_zeros() as usize)))
    }

    fn check_rsa(&self, alg: &'static str) -> Result<(), JoseError> {
        if self.kty != "RSA" {
            return Err(JoseError::Key(format!("kty is {:?}, not \"RSA\"", self.kty)));
        }
        if let Some(declared) = &self.alg
            && declared != alg {
                return Err(JoseError::Key(format!("alg is {declared:?}; this key is used for {alg}")));
            }
        Ok(())
    }

    fn key_pair(&self) -> Result<KeyPair, JoseError> {
        let part = |name: &str, value: &Option<String>| {
            value.as_deref().ok_or_else(|| JoseError::Key(format!("the private member {name:?} is missing"))).and_then(base64url_decode)
        };
        let components = KeyPairComponents {
            public_key: PublicKeyComponents { n: base64url_decode(&self.n)?, e: base64url_decode(&self.e)? },
            d: part("d", &self.d)?,
            p: part("p", &self.p)?,
            q: part("q", &self.q)?,
            dP: part("dp", &self.dp)?,
            dQ: part("dq", &self.dq)?,
            qInv: part("qi", &self.qi)?,
        };
        KeyPair::from_components(&components).map_err(|e| JoseError::Key(format!("the private key is inconsistent ({e})")))
    }
}

/// What a generated key pair is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPurpose {
    /// Senders encrypt to its public half (`RSA-OAEP-256`, `wrapKey`);
    /// the private half unwraps (`unwrapKey`).
    Encryption,
    /// The private half signs (`PS512`, `sign`); the public half verifies.
    Signing,
}

/// A new RSA-4096 key pair as JWKs: (private, public), both with `kid`,
/// `alg` and `key_ops` as FIT-Connect's self-service portal expects them.
pub fn generate(kid: &str, purpose: KeyPurpose) -> Result<(Jwk, Jwk), JoseError> {
    let pair = KeyPair::generate(KeySize::Rsa4096).map_err(|_| JoseError::Key("could not generate a key".into()))?;
    let pkcs8 = pair.as_der().map_err(|_| JoseError::Key("could not encode the key".into()))?;
    let parts = der::rsa_private_key(pkcs8.as_ref()).ok_or_else(|| JoseError::Key("could not read the generated key".into()))?;
    let (alg, private_op, public_op) = match purpose {
        KeyPurpose::Encryption => ("RSA-OAEP-256", "unwrapKey", "wrapKey"),
        KeyPurpose::Signing => ("PS512", "sign", "verify"),
    };
    let private = Jwk {
        kty: "RSA".into(),
        kid: Some(kid.into()),
        alg: Some(alg.into()),
        key_ops: Some(vec![private_op.into()]),
        n: base64url(parts.n),
        e: base64url(parts.e),
        d: Some(base64url(parts.d)),
        p: Some(base64url(parts.p)),
        q: Some(base64url(parts.q)),
        dp: Some(base64url(parts.dp)),
        dq: Some(base64url(parts.dq)),
        qi: Some(base64url(parts.qi)),
        ..Jwk::default()
    };
    let public = Jwk { key_ops: Some(vec![public_op.into()]), ..private.to_public() };
    Ok((private, public))
}

/// A private key that unwraps content keys (`RSA-OAEP-256`).
pub struct DecryptionKey {
    kid: Option<String>,
    key: OaepPrivateDecryptingKey,
    bits: usize,
    /// `n` and `e` as the JWK has them, to compare with a registered key.
    public: (String, String),
}

impl DecryptionKey {
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, JoseError> {
        jwk.check_rsa("RSA-OAEP-256")?;
        Self::from_jwk_unchecked(jwk)
    }

    /// Without the `alg` check: for test vectors written for `RSA-OAEP`.
    fn from_jwk_unchecked(jwk: &Jwk) -> Result<Self, JoseError> {
        let pair = jwk.key_pair()?;
        let pkcs8 = pair.as_der().map_err(|_| JoseError::Key("could not encode the key".into()))?;
        let private = PrivateDecryptingKey::from_pkcs8(pkcs8.as_ref()).map_err(|e| JoseError::Key(e.to_string()))?;
        let bits = private.key_size_bits();
        let key = OaepPrivateDecryptingKey::new(private).map_err(|_| JoseError::Key("not an RSA-OAEP key".into()))?;
        Ok(Self { kid: jwk.kid.clone(), key, bits, public: (jwk.n.clone(), jwk.e.clone()) })
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub fn bits(&self) -> usize {
        self.bits
    }
}

impl DecryptionKey {
    /// Whether `public` is this key's public half (same modulus and
    /// exponent).
    pub fn matches(&self, public: &Jwk) -> bool {
        self.public == (public.n.clone(), public.e.clone())
    }
}

/// A private key that signs (`PS512`).
pub struct SigningKey {
    kid: String,
    pair: KeyPair,
    /// `n` and `e` as the JWK has them, to compare with a registered key.
    public: (String, String),
}

impl SigningKey {
    /// The key must name itself (`kid`): the verifier picks the key by it.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, JoseError> {
        jwk.check_rsa("PS512")?;
        let kid = jwk.kid.clone().ok_or_else(|| JoseError::Key("the signing key has no kid".into()))?;
        Ok(Self { kid, pair: jwk.key_pair()?, public: (jwk.n.clone(), jwk.e.clone()) })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn bits(&self) -> usize {
        self.pair.public_modulus_len() * 8
    }

    /// Whether `public` is this key's public half.
    pub fn matches(&self, public: &Jwk) -> bool {
        self.public == (public.n.clone(), public.e.clone())
    }

    /// A compact JWS of `payload`, its header `{"alg":"PS512","typ":typ,"kid":…}`.
    pub fn sign(&self, typ: &str, payload: &[u8]) -> Result<String, JoseError> {
        let header = serde_json::json!({ "alg": "PS512", "typ": typ, "kid": self.kid });
        let mut compact = base64url(header.to_string().as_bytes());
        compact.push('.');
        compact.push_str(&base64url(payload));
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(&RSA_PSS_SHA512, &SystemRandom::new(), compact.as_bytes(), &mut signature)
            .map_err(|_| JoseError::Key("could not sign".into()))?;
        compact.push('.');
        compact.push_str(&base64url(&signature));
        Ok(compact)
    }
}

/// A public key that verifies `PS512` signatures.
#[derive(Debug, Clone)]
pub struct VerifyingKey {
    kid: Option<String>,
    n: Vec<u8>,
    e: Vec<u8>,
    bits: usize,
}

impl VerifyingKey {
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, JoseError> {
        jwk.check_rsa("PS512")?;
        Ok(Self { kid: jwk.kid.clone(), n: base64url_decode(&jwk.n)?, e: base64url_decode(&jwk.e)?, bits: jwk.bits()? })
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub fn bits(&self) -> usize {
        self.bits
    }
}

#[derive(Debug, Deserialize)]
struct JweHeader {
    alg: String,
    enc: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    zip: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// A compact JWE (`RSA-OAEP-256`, `A256GCM`), parsed but not decrypted.
#[derive(Debug)]
pub struct Jwe<'a> {
    protected: &'a str,
    header: JweHeader,
    encrypted_key: &'a str,
    iv: &'a str,
    ciphertext: &'a str,
    tag: &'a str,
}

impl<'a> Jwe<'a> {
    pub fn parse(compact: &'a str) -> Result<Self, JoseError> {
        Self::parse_for(compact, "RSA-OAEP-256")
    }

    fn parse_for(compact: &'a str, key_algorithm: &'static str) -> Result<Self, JoseError> {
        let mut parts = compact.trim().split('.');
        let mut next = || parts.next().ok_or(JoseError::Malformed("JWE (five parts)"));
        let (protected, encrypted_key, iv, ciphertext, tag) = (next()?, next()?, next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(JoseError::Malformed("JWE (five parts)"));
        }
        if protected.len() > MAX_HEADER_BYTES {
            return Err(JoseError::Malformed("JWE (header too large)"));
        }
        let header: JweHeader =
            serde_json::from_slice(&base64url_decode(protected)?).map_err(|_| JoseError::Malformed("JWE (header)"))?;
        if header.alg != key_algorithm {
            return Err(JoseError::Unsupported { field: "alg", value: header.alg, expected: key_algorithm });
        }
        if header.enc != "A256GCM" {
            return Err(JoseError::Unsupported { field: "enc", value: header.enc, expected: "A256GCM" });
        }
        if let Some(zip) = &header.zip
            && zip != "DEF" {
                return Err(JoseError::Unsupported { field: "zip", value: zip.clone(), expected: "DEF" });
            }
        if header.crit.is_some() {
            return Err(JoseError::Unsupported { field: "crit", value: "present".into(), expected: "none" });
        }
        Ok(Self { protected, header, encrypted_key, iv, ciphertext, tag })
    }

    /// The `kid` of the key the content key was wrapped for.
    pub fn kid(&self) -> Option<&str> {
        self.header.kid.as_deref()
    }

    /// The authentication tag, base64url as received: what FIT-Connect's
    /// events name the content by.
    pub fn authentication_tag(&self) -> &'a str {
        self.tag
    }

    /// The plaintext, inflated if the header says `zip: DEF`; refused if it
    /// (or, compressed, what it inflates to) exceeds `limit` bytes.
    pub fn decrypt(&self, key: &DecryptionKey, limit: usize) -> Result<Vec<u8>, JoseError> {
        self.decrypt_with(key, &OAEP_SHA256_MGF1SHA256, limit)
    }

    fn decrypt_with(&self, key: &DecryptionKey, oaep: &'static OaepAlgorithm, limit: usize) -> Result<Vec<u8>, JoseError> {
        let encrypted_key = base64url_decode(self.encrypted_key)?;
        let iv = base64url_decode(self.iv)?;
        let tag = base64url_decode(self.tag)?;
        if iv.len() != 12 || tag.len() != 16 {
            return Err(JoseError::Malformed("JWE (A256GCM takes a 96-bit IV and a 128-bit tag)"));
        }
        if self.ciphertext.len() / 4 * 3 > limit.saturating_mul(2).saturating_add(1024) {
            return Err(JoseError::TooLarge(limit));
        }
        let mut content = base64url_decode(self.ciphertext)?;
        // RFC 7516 §11.5: a content key that does not unwrap is replaced by
        // a random one, so that the failure shows only where the content
        // does not authenticate, the same as any other tampering.
        let mut cek = [0u8; 32];
        let mut unwrapped = vec![0u8; key.key.min_output_size()];
        match key.key.decrypt(oaep, &encrypted_key, &mut unwrapped, None) {
            Ok(plain) if plain.len() == 32 => cek.copy_from_slice(plain),
            _ => SystemRandom::new().fill(&mut cek).map_err(|_| JoseError::Undecryptable)?,
        }
        unwrapped.iter_mut().for_each(|b| *b = 0);
        let gcm = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &cek).map_err(|_| JoseError::Undecryptable)?);
        cek.iter_mut().for_each(|b| *b = 0);
        let nonce = Nonce::try_assume_unique_for_key(&iv).map_err(|_| JoseError::Undecryptable)?;
        gcm.open_in_place_separate_tag(nonce, Aad::from(self.protected.as_bytes()), &tag, &mut content)
            .map_err(|_| JoseError::Undecryptable)?;
        if self.header.zip.is_some() {
            return inflate(&content, limit);
        }
        if content.len() > limit {
            return Err(JoseError::TooLarge(limit));
        }
        Ok(content)
    }
}

/// Raw DEFLATE (RFC 1951), stopped at `limit` bytes: a small ciphertext
/// must not inflate into the process's memory.
fn inflate(compressed: &[u8], limit: usize) -> Result<Vec<u8>, JoseError> {
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(compressed)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| JoseError::Malformed("JWE (zip: DEF content does not inflate)"))?;
    if out.len() > limit {
        return Err(JoseError::TooLarge(limit));
    }
    Ok(out)
}

#[derive(Debug, Clone, Deserialize)]
pub struct JwsHeader {
    pub alg: String,
    #[serde(default)]
    pub typ: Option<String>,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// A compact JWS (`PS512`), parsed; [`Jws::verify`] checks its signature.
#[derive(Debug)]
pub struct Jws<'a> {
    pub header: JwsHeader,
    signing_input: &'a str,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl<'a> Jws<'a> {
    pub fn parse(compact: &'a str) -> Result<Self, JoseError> {
        let compact = compact.trim();
        let mut parts = compact.split('.');
        let (Some(protected), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JoseError::Malformed("JWS (three parts)"));
        };
        if protected.len() > MAX_HEADER_BYTES {
            return Err(JoseError::Malformed("JWS (header too large)"));
        }
        let header: JwsHeader =
            serde_json::from_slice(&base64url_decode(protected)?).map_err(|_| JoseError::Malformed("JWS (header)"))?;
        if header.alg != "PS512" {
            return Err(JoseError::Unsupported { field: "alg", value: header.alg, expected: "PS512" });
        }
        if header.crit.is_some() {
            return Err(JoseError::Unsupported { field: "crit", value: "present".into(), expected: "none" });
        }
        Ok(Self {
            header,
            signing_input: &compact[..protected.len() + 1 + payload.len()],
            payload: base64url_decode(payload)?,
            signature: base64url_decode(signature)?,
        })
    }

    /// The payload, whether or not the signature was checked: read it for
    /// what it claims only after [`Jws::verify`].
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    pub fn verify(&self, key: &VerifyingKey) -> Result<(), JoseError> {
        PublicKeyComponents { n: &key.n, e: &key.e }
            .verify(&RSA_PSS_2048_8192_SHA512, self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| JoseError::BadSignature)
    }
}
