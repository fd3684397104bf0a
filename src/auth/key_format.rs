//! The format of keys the gateway issues: `sk-sg-`, 32 random base62 characters, and a
//! 6-character checksum of what precedes it. A typo or a scanner's guess fails the checksum
//! and is refused without looking anything up; secret scanners can match the shape.

use sha2::{Digest, Sha256};

pub const PREFIX: &str = "sk-sg-";
const RANDOM_CHARS: usize = 32;
const CHECKSUM_CHARS: usize = 6;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new key from the operating system's random source (about 190 bits).
pub fn generate() -> String {
    let mut random = [0u8; RANDOM_CHARS];
    aws_lc_rs::rand::fill(&mut random).expect("invariant: the system random source works");
    // 62 * 4 = 248 < 256: values at or above 248 are drawn again, so every character is
    // equally likely.
    let mut body = String::with_capacity(RANDOM_CHARS);
    let mut fresh = [0u8; 1];
    for mut byte in random {
        while byte >= 248 {
            aws_lc_rs::rand::fill(&mut fresh).expect("invariant: the system random source works");
            byte = fresh[0];
        }
        body.push(char::from(BASE62[usize::from(byte % 62)]));
    }
    let mut key = format!("{PREFIX}{body}");
    key.push_str(&checksum(&key));
    key
}

/// Whether `key` claims to be an issued key (its prefix).
pub fn is_issued_shape(key: &[u8]) -> bool {
    key.starts_with(PREFIX.as_bytes())
}

/// Whether an issued-looking key is well formed: its length, alphabet and checksum.
pub fn is_well_formed(key: &[u8]) -> bool {
    if key.len() != PREFIX.len() + RANDOM_CHARS + CHECKSUM_CHARS || !is_issued_shape(key) {
        return false;
    }
    // All ASCII before any slicing, so no cut can land inside a character.
    if !key[PREFIX.len()..].iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let (body, sum) = key.split_at(key.len() - CHECKSUM_CHARS);
    std::str::from_utf8(body).is_ok_and(|body| checksum(body).as_bytes() == sum)
}

/// Six base62 characters of the SHA-256 of `text`.
fn checksum(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut n = u64::from_be_bytes(
        digest[..8]
            .try_into()
            .expect("invariant: a digest has 8 bytes"),
    );
    (0..CHECKSUM_CHARS)
        .map(|_| {
            let c = char::from(BASE62[(n % 62) as usize]);
            n /= 62;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::cases;
    use proptest::prelude::*;

    #[test]
    fn a_multibyte_character_at_the_checksum_boundary_is_refused() {
        let key = format!("{PREFIX}{}é{}", "a".repeat(31), "b".repeat(5));
        assert_eq!(key.len(), 44);
        assert!(!is_well_formed(key.as_bytes()));
    }

    #[test]
    fn issued_keys_are_well_formed_and_distinct() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), 44);
        assert!(is_issued_shape(a.as_bytes()) && is_well_formed(a.as_bytes()));
    }

    proptest! {
        #![proptest_config(cases(256))]

        /// Any single-character change to an issued key fails the check.
        #[test]
        fn a_typo_fails_the_checksum(at in 6usize..44, with in 0usize..62) {
            let key = generate();
            let mut typo = key.clone().into_bytes();
            prop_assume!(typo[at] != BASE62[with]);
            typo[at] = BASE62[with];
            prop_assert!(!is_well_formed(&typo));
        }

        /// Text of the right length with any characters (multi-byte ones included) is refused
        /// without a panic.
        #[test]
        fn arbitrary_text_never_passes(text in "[a-zé漢😀]{30,40}") {
            let key = format!("{PREFIX}{text}");
            prop_assert!(!is_well_formed(key.as_bytes()));
        }

        #[test]
        fn arbitrary_bytes_never_pass(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut key = PREFIX.as_bytes().to_vec();
            key.extend(bytes);
            // A random 6-character checksum matches with odds of one in 56 billion.
            prop_assert!(!is_well_formed(&key));
        }
    }
}
