//! The primitives against published vectors, then the refusals a receiver
//! relies on.

use aws_lc_rs::rsa::OAEP_SHA1_MGF1SHA1;
use serde_json::Value;

use super::*;

fn vectors(file: &str) -> Value {
    let path = format!("{}/src/jose/testdata/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("test vectors")).expect("JSON")
}

fn jwk(value: &Value) -> Jwk {
    serde_json::from_value(value.clone()).expect("a JWK")
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
}

#[test]
fn rfc7516_a1_rsa_oaep_with_a256gcm_decrypts() {
    let a1 = vectors("rfc7516-a1.json");
    let key = DecryptionKey::from_jwk_unchecked(&jwk(&a1["key"])).expect("the RFC's key");
    let jwe = Jwe::parse_for(a1["jwe"].as_str().unwrap(), "RSA-OAEP").expect("the RFC's JWE");
    assert_eq!(jwe.authentication_tag(), "XFBoMYUZodetZdvTiFvSkQ");
    let plaintext = jwe.decrypt_with(&key, &OAEP_SHA1_MGF1SHA1, 1024).expect("decrypts");
    assert_eq!(plaintext, a1["plaintext"].as_str().unwrap().as_bytes());
    // The same JWE is refused where RSA-OAEP-256 is required.
    assert!(matches!(Jwe::parse(a1["jwe"].as_str().unwrap()), Err(JoseError::Unsupported { field: "alg", .. })));
}

#[test]
fn wycheproof_rsa_oaep_256_jwe() {
    let all = vectors("wycheproof.json");
    let group = all["jwe"].as_array().unwrap().iter().find(|g| g["comment"] == "jwe_rsa_oaep_256").unwrap();
    let key = DecryptionKey::from_jwk(&jwk(&group["private"])).expect("Wycheproof's key");
    let mut decrypted = 0;
    for test in group["tests"].as_array().unwrap() {
        let id = &test["tcId"];
        let outcome = Jwe::parse(test["jwe"].as_str().unwrap()).and_then(|jwe| jwe.decrypt(&key, 1024));
        match (test["result"].as_str().unwrap(), test["enc"].as_str()) {
            ("valid", Some("A256GCM")) => {
                assert_eq!(outcome.expect("valid A256GCM vector"), unhex(test["pt"].as_str().unwrap()), "tcId {id}");
                decrypted += 1;
            }
            // Valid JOSE, but not what FIT-Connect uses: refused.
            ("valid", _) => assert!(matches!(outcome, Err(JoseError::Unsupported { field: "enc", .. })), "tcId {id}"),
            _ => assert!(outcome.is_err(), "tcId {id} must be refused"),
        }
    }
    assert_eq!(decrypted, 1);
}

#[test]
fn rfc7520_rsa_oaep_4096_with_a256gcm_decrypts() {
    let all = vectors("wycheproof.json");
    let group = all["jwe"].as_array().unwrap().iter().find(|g| g["comment"] == "rfc_7520").unwrap();
    let key = DecryptionKey::from_jwk_unchecked(&jwk(&group["private"])).expect("RFC 7520's key");
    assert_eq!(key.bits(), 4096);
    let test = &group["tests"][0];
    let jwe = Jwe::parse_for(test["jwe"].as_str().unwrap(), "RSA-OAEP").expect("parses");
    assert_eq!(jwe.kid(), Some("samwise.gamgee@hobbiton.example"));
    let plaintext = jwe.decrypt_with(&key, &OAEP_SHA1_MGF1SHA1, 4096).expect("decrypts");
    assert_eq!(plaintext, unhex(test["pt"].as_str().unwrap()));
}

#[test]
fn wycheproof_ps512_jws() {
    let all = vectors("wycheproof.json");
    let group = &all["jws"][0];
    let public = VerifyingKey::from_jwk(&jwk(&group["public"])).expect("Wycheproof's public key");
    for test in group["tests"].as_array().unwrap() {
        let id = &test["tcId"];
        let verified = Jws::parse(test["jws"].as_str().unwrap()).and_then(|jws| jws.verify(&public));
        match test["result"].as_str().unwrap() {
            "valid" => verified.unwrap_or_else(|e| panic!("tcId {id}: {e}")),
            _ => assert!(verified.is_err(), "tcId {id} must be refused"),
        }
    }
    // And what we sign with the private half verifies with the public one.
    let mut private = jwk(&group["private"]);
    private.kid = Some("PS512_2048".into());
    let signer = SigningKey::from_jwk(&private).expect("Wycheproof's private key");
    let compact = signer.sign("secevent+jwt", br#"{"a":1}"#).unwrap();
    let jws = Jws::parse(&compact).unwrap();
    jws.verify(&public).expect("our signature verifies");
    assert_eq!(jws.payload(), br#"{"a":1}"#);
    assert_eq!(jws.header.typ.as_deref(), Some("secevent+jwt"));
    assert_eq!(jws.header.kid.as_deref(), Some("PS512_2048"));
}

#[test]
fn generated_keys_are_4096_bit_jwks_that_work() {
    let (private, public) = generate("sig-1", KeyPurpose::Signing).unwrap();
    assert_eq!(public.bits().unwrap(), 4096);
    assert_eq!((public.alg.as_deref(), public.key_ops.as_deref()), (Some("PS512"), Some(&["verify".to_owned()][..])));
    assert!(public.d.is_none() && public.p.is_none());
    let text = serde_json::to_string(&public).unwrap();
    assert!(!text.contains("\"d\"") && text.contains("\"kid\":\"sig-1\""), "{text}");
    let signed = SigningKey::from_jwk(&private).unwrap().sign("secevent+jwt", b"{}").unwrap();
    Jws::parse(&signed).unwrap().verify(&VerifyingKey::from_jwk(&public).unwrap()).expect("verifies");

    let (private, public) = generate("enc-1", KeyPurpose::Encryption).unwrap();
    assert_eq!((private.alg.as_deref(), private.key_ops.as_deref()), (Some("RSA-OAEP-256"), Some(&["unwrapKey".to_owned()][..])));
    assert_eq!(public.key_ops.as_deref(), Some(&["wrapKey".to_owned()][..]));
    assert_eq!(DecryptionKey::from_jwk(&private).unwrap().bits(), 4096);
    assert!(!format!("{private:?}").contains(private.d.as_deref().unwrap()), "Debug must not show the private key");
}

#[test]
fn a_key_for_another_algorithm_is_refused() {
    let (private, _) = generate("enc-1", KeyPurpose::Encryption).unwrap();
    assert!(matches!(SigningKey::from_jwk(&private), Err(JoseError::Key(_))));
    let mut broken = private.clone();
    broken.alg = None;
    broken.d = Some(broken.p.clone().unwrap());
    assert!(matches!(DecryptionKey::from_jwk(&broken), Err(JoseError::Key(_))), "inconsistent components");
}

#[test]
fn tampered_and_malformed_jwes_are_refused() {
    let all = vectors("wycheproof.json");
    let group = all["jwe"].as_array().unwrap().iter().find(|g| g["comment"] == "jwe_rsa_oaep_256").unwrap();
    let key = DecryptionKey::from_jwk(&jwk(&group["private"])).unwrap();
    let valid = group["tests"].as_array().unwrap().iter().find(|t| t["tcId"] == 90).unwrap()["jwe"].as_str().unwrap().to_owned();
    let parts: Vec<&str> = valid.split('.').collect();
    let with = |index: usize, replacement: &str| {
        let mut changed = parts.clone();
        changed[index] = replacement;
        changed.join(".")
    };
    let flip = |part: &str| {
        let mut bytes = base64url_decode(part).unwrap();
        bytes[0] ^= 1;
        base64url(&bytes)
    };
    for (what, jwe) in [
        ("encrypted key", with(1, &flip(parts[1]))),
        ("ciphertext", with(3, &flip(parts[3]))),
        ("tag", with(4, &flip(parts[4]))),
        ("header", with(0, &base64url(br#"{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":"x"}"#))),
    ] {
        assert_eq!(Jwe::parse(&jwe).unwrap().decrypt(&key, 1024), Err(JoseError::Undecryptable), "{what}");
    }
    assert!(matches!(Jwe::parse("a.b.c.d"), Err(JoseError::Malformed(_))));
    assert!(matches!(Jwe::parse(&format!("{valid}.x")), Err(JoseError::Malformed(_))));
    assert!(matches!(Jwe::parse(&with(0, "eyJ=")), Err(JoseError::Malformed(_))));
    let critical = base64url(br#"{"alg":"RSA-OAEP-256","enc":"A256GCM","crit":["exp"]}"#);
    assert!(matches!(Jwe::parse(&with(0, &critical)), Err(JoseError::Unsupported { field: "crit", .. })));
    let zipped = base64url(br#"{"alg":"RSA-OAEP-256","enc":"A256GCM","zip":"GZ"}"#);
    assert!(matches!(Jwe::parse(&with(0, &zipped)), Err(JoseError::Unsupported { field: "zip", .. })));
    assert_eq!(Jwe::parse(&valid).unwrap().decrypt(&key, 2), Err(JoseError::TooLarge(2)));
}

#[test]
fn inflating_stops_at_the_limit() {
    use std::io::Write as _;
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&vec![b'a'; 1 << 20]).unwrap();
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 2048);
    assert_eq!(inflate(&bomb, 1 << 16), Err(JoseError::TooLarge(1 << 16)));
    assert_eq!(inflate(&bomb, 1 << 20).unwrap().len(), 1 << 20);
}

#[test]
fn der_reader_refuses_truncated_input() {
    let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let pkcs8 = pair.as_der().unwrap();
    let bytes = pkcs8.as_ref();
    assert!(der::rsa_private_key(bytes).is_some());
    for cut in [0, 1, 10, bytes.len() / 2, bytes.len() - 1] {
        assert!(der::rsa_private_key(&bytes[..cut]).is_none(), "cut at {cut}");
    }
}
