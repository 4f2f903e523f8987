//! Published test vectors, run through exactly the functions the protocol uses.

use fedcare_secagg::crypto::{
    IdentityKey, X25519Secret, aead_open, aead_seal, hkdf_sha256, verify_ed25519,
};
use fedcare_secagg::prg;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn h32(s: &str) -> [u8; 32] {
    hex(s).try_into().unwrap()
}

/// RFC 7748 §5.2: the two single scalar multiplications, and the iterated one (1 and 1000).
#[test]
fn x25519_rfc7748_section_5_2() {
    let cases = [
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ];
    for (k, u, out) in cases {
        assert_eq!(
            *X25519Secret::from_bytes(h32(k)).agree(&h32(u)).unwrap(),
            h32(out)
        );
    }
    let mut k = [0u8; 32];
    k[0] = 9;
    let mut u = k;
    for i in 1..=1000 {
        let r = *X25519Secret::from_bytes(k).agree(&u).unwrap();
        u = k;
        k = r;
        if i == 1 {
            assert_eq!(
                k,
                h32("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
            );
        }
    }
    assert_eq!(
        k,
        h32("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")
    );
}

/// RFC 7748 §6.1: Diffie-Hellman between Alice and Bob.
#[test]
fn x25519_rfc7748_section_6_1() {
    let a = X25519Secret::from_bytes(h32(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    ));
    let b = X25519Secret::from_bytes(h32(
        "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    ));
    assert_eq!(
        a.public_key(),
        h32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    );
    assert_eq!(
        b.public_key(),
        h32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    );
    let k = h32("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
    assert_eq!(*a.agree(&b.public_key()).unwrap(), k);
    assert_eq!(*b.agree(&a.public_key()).unwrap(), k);
    // A low-order peer key gives no shared secret and is refused.
    assert!(a.agree(&[0u8; 32]).is_none());
    assert!(
        a.agree(&h32(
            "0100000000000000000000000000000000000000000000000000000000000000"
        ))
        .is_none()
    );
}

/// RFC 5869 appendix A.1 and A.3 (HKDF-SHA256).
#[test]
fn hkdf_rfc5869() {
    let mut okm = [0u8; 42];
    hkdf_sha256(
        &hex("000102030405060708090a0b0c"),
        &[0x0b; 22],
        &[&hex("f0f1f2f3f4f5f6f7f8f9")],
        &mut okm,
    )
    .unwrap();
    assert_eq!(
        okm.to_vec(),
        hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
    );
    // The info may be given in pieces: same result.
    let mut okm2 = [0u8; 42];
    hkdf_sha256(
        &hex("000102030405060708090a0b0c"),
        &[0x0b; 22],
        &[&hex("f0f1f2"), &hex("f3f4f5f6f7f8f9")],
        &mut okm2,
    )
    .unwrap();
    assert_eq!(okm, okm2);
    hkdf_sha256(&[], &[0x0b; 22], &[], &mut okm).unwrap();
    assert_eq!(
        okm.to_vec(),
        hex("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")
    );
}

/// RFC 8439 §2.8.2 (ChaCha20-Poly1305).
#[test]
fn chacha20_poly1305_rfc8439_section_2_8_2() {
    let key = h32("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
    let nonce: [u8; 12] = hex("070000004041424344454647").try_into().unwrap();
    let aad = hex("50515253c0c1c2c3c4c5c6c7");
    let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
    let expected = hex(
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
         3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
         92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
         3ff4def08e4b7a9de576d26586cec64b6116 1ae10b594f09e26a7e902ecbd0600691",
    );
    let ct = aead_seal(&key, nonce, &aad, pt);
    assert_eq!(ct, expected);
    assert_eq!(aead_open(&key, nonce, &aad, &ct).unwrap().as_slice(), pt);
    let mut bad = ct.clone();
    bad[10] ^= 1;
    assert!(aead_open(&key, nonce, &aad, &bad).is_none());
    assert!(aead_open(&key, nonce, b"other aad", &ct).is_none());
}

/// The mask PRG is AES-128-CTR under K = SHA-256("fedcare-secagg mask prg AES-128 v1" ‖ seed)
/// truncated to 16 bytes. Expected values from Python's `hashlib` and `cryptography` (OpenSSL's
/// AES-CTR), independently of ring:
///
/// ```python
/// import hashlib
/// from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
/// def ks(seed, chunk, n):
///     key = hashlib.sha256(b"fedcare-secagg mask prg AES-128 v1" + seed).digest()[:16]
///     iv = chunk.to_bytes(8, 'big') + b'\0' * 4 + (2).to_bytes(4, 'big')
///     return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor().update(b'\0' * n)
/// ks(bytes(32), 0, 16); ks(bytes(range(32)), 1, 64)  # and chunks 0, 1, 300 as words
/// ```
///
/// (That GCM's ciphertext of zeros is this CTR keystream for AES-128 is GCM spec test case 2:
/// zero key and IV give 0388dace60b6a392f328c2b971b2fe78 = E(0, 0^96 ‖ 2).)
#[test]
fn mask_prg_is_aes_128_ctr() {
    assert_eq!(prg::KEY_LABEL, b"fedcare-secagg mask prg AES-128 v1");
    let mut buf = [0u8; 16];
    prg::MaskPrg::new(&[0u8; 32]).keystream(0, &mut buf);
    assert_eq!(buf.to_vec(), hex("8da732a131c98feb05df2dce52cd883f"));
    prg::MaskPrg::new_portable(&[0u8; 32]).keystream(0, &mut buf);
    assert_eq!(buf.to_vec(), hex("8da732a131c98feb05df2dce52cd883f"));

    let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
    let mut ks = [0u8; 64];
    prg::MaskPrg::new(&seed).keystream(1, &mut ks);
    assert_eq!(
        ks.to_vec(),
        hex(
            "0c1a8872fd03468a758b7708fd8023db03e510a0451722b295a86d0a053659b9ccef049bf32afadf117bfe0a7ad29c6a842fe53d431ac622e0f8302a5419d572"
        )
    );
    let c = prg::CHUNK;
    let m = prg::expand(&seed, 32, 300 * c + 4);
    assert_eq!(m[..4], [3755489813, 163387441, 3776008777, 2383708981]);
    assert_eq!(m[c..c + 4], [1921522188, 2319844349, 142052213, 3676537085]);
    assert_eq!(
        m[300 * c..300 * c + 4],
        [1174320102, 356108375, 2577192400, 4282878027]
    );
    // 12 bits: two keystream bytes per coordinate, little-endian, reduced mod 2^12.
    let m = prg::expand(&seed, 12, c + 4);
    assert_eq!(m[..4], [2581, 4056, 2097, 2493]);
    assert_eq!(m[c..c + 4], [2572, 648, 1021, 2630]);
}

/// Unmasking on several threads and the client's one-pass mask-and-pack give exactly what the
/// single-threaded accumulator gives, for every lane width and ragged last chunks.
#[test]
fn threaded_and_packed_masking_match_the_accumulator() {
    let c = prg::CHUNK;
    let masks = || -> Vec<prg::SignedMask> {
        (0..4u8)
            .map(|i| prg::SignedMask {
                prg: prg::MaskPrg::new(&[i; 32]),
                negate: i % 2 == 1,
            })
            .collect()
    };
    for bits in [1u32, 8, 12, 16, 32, 33, 64] {
        for dim in [0, 5, c, 3 * c + 7] {
            let top = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            let input: Vec<u64> = (0..dim as u64)
                .map(|i| i.wrapping_mul(0x9e3779b97f4a7c15) & top)
                .collect();
            let mut reference = prg::Accumulator::from_values(bits, &input);
            reference.apply_masks(&masks());
            for threads in [0, 2, 3, 5] {
                let mut acc = prg::Accumulator::from_values(bits, &input);
                acc.apply_masks_threads(&masks(), threads);
                assert_eq!(acc, reference, "bits {bits}, dim {dim}, threads {threads}");
            }
            let mut want = Vec::new();
            reference.write_packed(&mut want);
            let mut got = vec![0xAA];
            if prg::mask_into_packed(bits, &input, &masks(), &mut got) {
                assert!(bits % 8 == 0 && bits != 33, "bits {bits}");
                assert_eq!(got[0], 0xAA);
                assert_eq!(got[1..], want[..], "bits {bits}, dim {dim}");
            } else {
                assert_eq!(got, [0xAA]);
                assert!(bits % 8 != 0, "bits {bits}");
            }
        }
    }
}

/// The fast path (VAES, where the CPU has it) and the portable path (`ring`) give the same
/// masks through every entry point: accumulators of every lane width (fused and buffered
/// widths), threaded unmasking, one-pass packing, and the raw keystream, for ragged lengths.
#[test]
fn fast_and_portable_mask_paths_agree() {
    let c = prg::CHUNK;
    let masks = |portable: bool| -> Vec<prg::SignedMask> {
        (0..5u8)
            .map(|i| prg::SignedMask {
                prg: if portable {
                    prg::MaskPrg::new_portable(&[i ^ 0x5c; 32])
                } else {
                    prg::MaskPrg::new(&[i ^ 0x5c; 32])
                },
                negate: i % 3 == 1,
            })
            .collect()
    };
    for bits in [1u32, 8, 12, 16, 24, 32, 33, 48, 64] {
        for dim in [1, 127, 129, c - 1, 2 * c + 513] {
            let top = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            let input: Vec<u64> = (0..dim as u64)
                .map(|i| i.wrapping_mul(0xbf58476d1ce4e5b9) & top)
                .collect();
            let mut portable = prg::Accumulator::from_values(bits, &input);
            portable.apply_masks(&masks(true));
            let mut fast = prg::Accumulator::from_values(bits, &input);
            fast.apply_masks_threads(&masks(false), 2);
            assert_eq!(fast, portable, "bits {bits}, dim {dim}");
            let (mut a, mut b) = (Vec::new(), Vec::new());
            if prg::mask_into_packed(bits, &input, &masks(false), &mut a) {
                assert!(prg::mask_into_packed(bits, &input, &masks(true), &mut b));
                assert_eq!(a, b, "bits {bits}, dim {dim}");
            }
        }
    }
    for len in [0usize, 1, 17, 511, 512, 513, 4 * c, 8 * c] {
        let (mut a, mut b) = (vec![1u8; len], vec![2u8; len]);
        prg::MaskPrg::new(&[9; 32]).keystream(12345, &mut a);
        prg::MaskPrg::new_portable(&[9; 32]).keystream(12345, &mut b);
        assert_eq!(a, b, "keystream of {len} bytes");
    }
}

/// RFC 8032 §7.1 TEST 1 (Ed25519, empty message), through IdentityKey.
#[test]
fn ed25519_rfc8032_test_1() {
    let id = IdentityKey::from_seed(&h32(
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    ))
    .unwrap();
    let pk = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
    assert_eq!(id.public_key(), pk);
    let sig = id.sign(b"");
    assert_eq!(
        sig,
        hex(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        )
    );
    assert!(verify_ed25519(&pk, b"", &sig));
    assert!(!verify_ed25519(&pk, b"x", &sig));
    // The PKCS#8 document round-trips through ring's parser.
    let again = IdentityKey::from_pkcs8(id.pkcs8()).unwrap();
    assert_eq!(again.public_key(), pk);
    assert!(IdentityKey::from_pkcs8(&id.pkcs8()[..40]).is_err());
}
