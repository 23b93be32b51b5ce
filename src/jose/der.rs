//! Just enough DER to read the components of an RSA private key out of
//! the PKCS #8 document aws-lc-rs writes (it has no getters for them), so
//! that a generated key can be written as a JWK.

/// The integers of an RSA private key (RFC 8017 A.1.2), big-endian,
/// without leading zero bytes.
pub struct RsaPrivateKey<'a> {
    pub n: &'a [u8],
    pub e: &'a [u8],
    pub d: &'a [u8],
    pub p: &'a [u8],
    pub q: &'a [u8],
    pub dp: &'a [u8],
    pub dq: &'a [u8],
    pub qi: &'a [u8],
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;

/// `PrivateKeyInfo ::= SEQUENCE { version, algorithm, privateKey OCTET STRING }`
/// with an `RSAPrivateKey` in the octet string.
pub fn rsa_private_key(pkcs8: &[u8]) -> Option<RsaPrivateKey<'_>> {
    let (info, _) = element(pkcs8, SEQUENCE)?;
    let (_version, rest) = element(info, INTEGER)?;
    let (_algorithm, rest) = element(rest, SEQUENCE)?;
    let (private, _) = element(rest, OCTET_STRING)?;
    let (key, _) = element(private, SEQUENCE)?;
    let (_version, rest) = element(key, INTEGER)?;
    let mut rest = rest;
    let mut next = || {
        let (value, after) = element(rest, INTEGER)?;
        rest = after;
        Some(strip_sign_byte(value))
    };
    Some(RsaPrivateKey { n: next()?, e: next()?, d: next()?, p: next()?, q: next()?, dp: next()?, dq: next()?, qi: next()? })
}

/// The contents of the element at the start of `input` if its tag is
/// `tag`, and what follows it.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&actual, rest) = input.split_first()?;
    if actual != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let octets = (first & 0x7f) as usize;
        if octets == 0 || octets > 4 || rest.len() < octets {
            return None;
        }
        let length = rest[..octets].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (length, &rest[octets..])
    };
    (rest.len() >= length).then(|| rest.split_at(length))
}

/// DER integers are signed: a positive one with its top bit set carries a
/// leading zero that JWK's unsigned encoding leaves out.
fn strip_sign_byte(value: &[u8]) -> &[u8] {
    match value {
        [0, rest @ ..] if !rest.is_empty() => rest,
        _ => value,
    }
}
