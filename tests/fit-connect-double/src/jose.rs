//! The sender's and the delivery service's JOSE: encrypting compact JWEs
//! (RSA-OAEP-256 + A256GCM), signing and verifying PS512 JWS, HMAC-SHA512
//! for callbacks. On aws-lc-rs, written apart from amtsbote's receiving
//! side.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use aws_lc_rs::rsa::{KeyPair, KeySize, OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey, PublicKey, PublicKeyComponents};
use aws_lc_rs::signature::{KeyPair as _, RSA_PSS_2048_8192_SHA512, RSA_PSS_SHA512};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};
use uuid::Uuid;

/// A JWK as JSON.
pub type Jwk = Value;

/// The delivery service's signing key.
pub struct SigningKey {
    kid: String,
    pair: KeyPair,
}

impl SigningKey {
    pub fn generate() -> Self {
        Self { kid: Uuid::new_v4().to_string(), pair: KeyPair::generate(KeySize::Rsa4096).expect("RSA key generation") }
    }

    pub fn public_jwk(&self) -> Jwk {
        let (n, e) = rsa_public_components(self.pair.public_key().as_ref()).expect("an RSA public key");
        json!({ "kty": "RSA", "kid": self.kid, "alg": "PS512", "key_ops": ["verify"], "n": B64.encode(n), "e": B64.encode(e) })
    }

    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({ "alg": "PS512", "typ": "secevent+jwt", "kid": self.kid });
        let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair.sign(&RSA_PSS_SHA512, &SystemRandom::new(), input.as_bytes(), &mut signature).expect("signing");
        format!("{input}.{}", B64.encode(signature))
    }
}

/// A destination's public encryption key.
pub struct EncryptionKey {
    kid: String,
    key: OaepPublicEncryptingKey,
}

impl EncryptionKey {
    pub fn from_jwk(jwk: &Jwk) -> Self {
        let component = |name: &str| B64.decode(jwk[name].as_str().expect("an RSA JWK")).expect("base64url");
        let der = rsa_public_key_der(&component("n"), &component("e"));
        let spki = PublicKey::from_der(&der).expect("an RSA public key").as_der().expect("SPKI");
        let key = PublicEncryptingKey::from_der(spki.as_ref()).expect("an RSA encryption key");
        Self { kid: jwk["kid"].as_str().expect("a kid").to_owned(), key: OaepPublicEncryptingKey::new(key).expect("OAEP") }
    }

    /// The same key under a `kid` the destination does not know.
    pub fn with_unknown_kid(jwk: &Jwk) -> Self {
        Self { kid: Uuid::new_v4().to_string(), ..Self::from_jwk(jwk) }
    }

    pub fn encrypt(&self, plaintext: &[u8], content_type: &str) -> String {
        let random = SystemRandom::new();
        let mut cek = [0u8; 32];
        let mut iv = [0u8; 12];
        random.fill(&mut cek).expect("random");
        random.fill(&mut iv).expect("random");
        let header = json!({ "alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": self.kid, "cty": content_type });
        let protected = B64.encode(header.to_string());
        let mut wrapped = vec![0; self.key.ciphertext_size()];
        let wrapped = self.key.encrypt(&OAEP_SHA256_MGF1SHA256, &cek, &mut wrapped, None).expect("RSA-OAEP");
        let gcm = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &cek).expect("AES key"));
        let mut content = plaintext.to_vec();
        let tag = gcm
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::from(protected.as_bytes()), &mut content)
            .expect("AES-GCM");
        format!("{protected}.{}.{}.{}.{}", B64.encode(wrapped), B64.encode(iv), B64.encode(content), B64.encode(tag.as_ref()))
    }
}

/// A JWE's authentication tag (its fifth part).
pub fn tag(jwe: &str) -> &str {
    jwe.rsplit('.').next().expect("a compact JWE")
}

/// The JWE with one bit of its ciphertext changed.
pub fn flip_ciphertext(jwe: &str) -> String {
    let mut parts: Vec<String> = jwe.split('.').map(str::to_owned).collect();
    let mut ciphertext = B64.decode(&parts[3]).expect("base64url");
    ciphertext[0] ^= 1;
    parts[3] = B64.encode(ciphertext);
    parts.join(".")
}

/// A compact JWS's header and claims, and a check of its PS512 signature
/// against a public JWK.
pub fn parse_jws(compact: &str) -> Option<(Value, Value, impl Fn(&Jwk) -> bool + '_)> {
    let mut parts = compact.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header_json: Value = serde_json::from_slice(&B64.decode(header).ok()?).ok()?;
    let claims: Value = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
    let signature = B64.decode(signature).ok()?;
    let input = &compact[..header.len() + 1 + payload.len()];
    let verify = move |jwk: &Jwk| {
        let component = |name: &str| jwk[name].as_str().and_then(|v| B64.decode(v).ok());
        match (component("n"), component("e")) {
            (Some(n), Some(e)) => PublicKeyComponents { n, e }.verify(&RSA_PSS_2048_8192_SHA512, input.as_bytes(), &signature).is_ok(),
            _ => false,
        }
    };
    Some((header_json, claims, verify))
}

pub fn hmac_sha512_hex(key: &[u8], message: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA512, key);
    super::hex(aws_lc_rs::hmac::sign(&key, message).as_ref())
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut body = der_integer(n);
    body.extend(der_integer(e));
    der(0x30, &body)
}

fn der_integer(unsigned: &[u8]) -> Vec<u8> {
    let trimmed: &[u8] = {
        let start = unsigned.iter().position(|&b| b != 0).unwrap_or(unsigned.len().saturating_sub(1));
        &unsigned[start..]
    };
    let mut value = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
        value.push(0);
    }
    value.extend_from_slice(trimmed);
    der(0x02, &value)
}

fn der(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match value.len() {
        len @ 0..0x80 => out.push(len as u8),
        len => {
            let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|&b| b == 0).collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
    }
    out.extend_from_slice(value);
    out
}

/// `n` and `e` of an `RSAPublicKey` DER.
fn rsa_public_components(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (&actual, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        if actual != tag {
            return None;
        }
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let count = (first & 0x7f) as usize;
            (rest.get(..count)?.iter().fold(0usize, |acc, &b| acc << 8 | b as usize), &rest[count..])
        };
        Some((rest.get(..len)?, &rest[len..]))
    }
    let (sequence, _) = element(der, 0x30)?;
    let (n, rest) = element(sequence, 0x02)?;
    let (e, _) = element(rest, 0x02)?;
    let strip = |v: &[u8]| if v.len() > 1 && v[0] == 0 { v[1..].to_vec() } else { v.to_vec() };
    Some((strip(n), strip(e)))
}
