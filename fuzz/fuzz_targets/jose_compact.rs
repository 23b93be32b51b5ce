//! Compact JWE and JWS as FIT-Connect senders and the delivery service
//! hand them in: any text is parsed and then decrypted (with a fixed key)
//! or verified, or refused; never a panic, and what decrypts (a `zip: DEF`
//! bomb included) stays within the limit asked for.
#![no_main]

use std::sync::LazyLock;

use amtsbote::jose::{DecryptionKey, Jwe, Jwk, Jws, VerifyingKey};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 64 * 1024;

static KEYS: LazyLock<(DecryptionKey, VerifyingKey)> = LazyLock::new(|| {
    let vectors: serde_json::Value = serde_json::from_str(include_str!("../../src/jose/testdata/wycheproof.json")).expect("JSON");
    let jwk = |value: &serde_json::Value| serde_json::from_value::<Jwk>(value.clone()).expect("a JWK");
    let encryption = vectors["jwe"].as_array().unwrap().iter().find(|g| g["comment"] == "jwe_rsa_oaep_256").unwrap();
    (DecryptionKey::from_jwk(&jwk(&encryption["private"])).unwrap(), VerifyingKey::from_jwk(&jwk(&vectors["jws"][0]["public"])).unwrap())
});

fuzz_target!(|text: &str| {
    let (decryption, verifying) = &*KEYS;
    if let Ok(jwe) = Jwe::parse(text)
        && let Ok(plaintext) = jwe.decrypt(decryption, LIMIT)
    {
        assert!(plaintext.len() <= LIMIT);
    }
    if let Ok(jws) = Jws::parse(text) {
        let _ = jws.verify(verifying);
    }
});
