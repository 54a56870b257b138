//! A machine's RSA key pair, its key file, public keys and the [`MachineId`] fingerprint.

use super::error::KeyError;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use std::fmt;
use std::path::Path;
use zeroize::Zeroizing;

/// Modulus size of every key Outpost makes: about 128-bit security strength.
pub const KEY_BITS: usize = 3072;
/// Smallest and largest modulus accepted from files and peers.
const MIN_BITS: usize = 2048;
const MAX_BITS: usize = 4096;

/// The identity of a machine: the first 128 bits of SHA-256 over its public key's SPKI DER
/// encoding, as 32 lowercase hexadecimal characters.
///
/// Why 128 bits: forging an id means finding a second key whose fingerprint matches an existing
/// one (a second preimage, about 2^128 work); even two accidental equal ids among all machines
/// ever made need about 2^64 keys. 32 characters still fit a dashboard column and a log line.
/// The cloud's signing key has a fingerprint of the same form, so the same type names it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MachineId(String);

impl MachineId {
    /// Hex characters in an id.
    pub const LEN: usize = 32;

    /// The fingerprint of a public key given as SPKI DER.
    pub fn of_spki_der(spki_der: &[u8]) -> MachineId {
        let digest = super::sha256(spki_der);
        MachineId(hex::encode(&digest[..Self::LEN / 2]))
    }

    /// Checks the form of an id received as text (32 lowercase hex characters).
    pub fn parse(text: &str) -> Result<MachineId, KeyError> {
        let ok = text.len() == Self::LEN && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ok {
            Ok(MachineId(text.to_string()))
        } else {
            Err(KeyError::BadMachineId(text.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MachineId {
    type Error = KeyError;
    fn try_from(text: String) -> Result<Self, KeyError> {
        MachineId::parse(&text)
    }
}

impl From<MachineId> for String {
    fn from(id: MachineId) -> String {
        id.0
    }
}

impl std::str::FromStr for MachineId {
    type Err = KeyError;
    fn from_str(text: &str) -> Result<Self, KeyError> {
        MachineId::parse(text)
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MachineId({})", self.0)
    }
}

/// Someone's public key, with its SPKI encoding and fingerprint computed once.
#[derive(Clone)]
pub struct PublicKey {
    key: rsa::PublicKey,
    spki_der: Vec<u8>,
    id: MachineId,
    /// Modulus and exponent for ring, which verifies: an RSA-3072 PSS verification in about a
    /// quarter of the `rsa` crate's time (`crypto_bench`), and a cloud or connector verifies one
    /// per signed request or batch. `None` for an exponent other than 65537 (every key Outpost
    /// makes has it; ring's limits for other exponents differ): those keys verify with the `rsa`
    /// crate.
    ring: Option<std::sync::Arc<ring::signature::RsaPublicKeyComponents<Box<[u8]>>>>,
}

impl PublicKey {
    fn from_rsa(key: rsa::PublicKey) -> Result<PublicKey, KeyError> {
        check_size(key.size() * 8)?;
        let spki_der = key.to_public_key_der().map_err(|e| KeyError::BadPublicKey(e.to_string()))?.into_vec();
        let id = MachineId::of_spki_der(&spki_der);
        let e = key.e_bytes();
        let ring = (*e == [1, 0, 1])
            .then(|| std::sync::Arc::new(ring::signature::RsaPublicKeyComponents { n: key.n_bytes(), e }));
        Ok(PublicKey { key, spki_der, id, ring })
    }

    /// Parses a `BEGIN PUBLIC KEY` PEM block (SubjectPublicKeyInfo).
    pub fn from_pem(pem: &str) -> Result<PublicKey, KeyError> {
        let key = rsa::PublicKey::from_public_key_pem(pem.trim())
            .map_err(|e| KeyError::BadPublicKey(e.to_string()))?;
        PublicKey::from_rsa(key)
    }

    /// Parses a SubjectPublicKeyInfo DER encoding.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, KeyError> {
        let key =
            rsa::PublicKey::from_public_key_der(der).map_err(|e| KeyError::BadPublicKey(e.to_string()))?;
        PublicKey::from_rsa(key)
    }

    /// Accepts this key only if its fingerprint is `expected`: how a hub pins the cloud key
    /// whose fingerprint its enrollment token carried, whatever path the key itself came by.
    pub fn expect_fingerprint(self, expected: &MachineId) -> Result<PublicKey, KeyError> {
        if &self.id == expected {
            Ok(self)
        } else {
            Err(KeyError::FingerprintMismatch { expected: expected.clone(), found: self.id })
        }
    }

    pub fn to_pem(&self) -> String {
        // Encoding a key that was already encoded once cannot fail.
        self.key.to_public_key_pem(LineEnding::LF).expect("RSA public key re-encodes")
    }

    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The fingerprint of this key: the owner's machine id.
    pub fn machine_id(&self) -> &MachineId {
        &self.id
    }

    /// Checks an RSA-PSS (SHA-256, 32-byte salt) signature over `message`.
    pub(crate) fn verify_pss(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.ring {
            // ring wants the salt as long as the digest (32 bytes), which is what every Outpost
            // signer (ring, or the `rsa` crate) uses.
            Some(ring) => ring.verify(&ring::signature::RSA_PSS_2048_8192_SHA256, message, signature).is_ok(),
            None => self.verify_pss_slow(message, signature),
        }
    }

    /// The `rsa` crate's verification: for keys ring is not asked to take, and to check both agree.
    fn verify_pss_slow(&self, message: &[u8], signature: &[u8]) -> bool {
        self.key.pss_verify::<sha2::Sha256>(message, signature).is_ok()
    }

    /// Encrypts a short value (a content key) with RSA-OAEP, SHA-256 and MGF1-SHA-256.
    pub(crate) fn oaep_encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.key.oaep_encrypt::<sha2::Sha256>(plaintext).map_err(|e| KeyError::Rsa(e.to_string()))
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.spki_der == other.spki_der
    }
}

impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}, {} bits)", self.id, self.key.size() * 8)
    }
}

/// A machine's own key pair. The private half never leaves this type except as the PKCS#8 file
/// written by [`KeyPair::save_new`]; the `rsa` crate's copy is wiped from memory on drop.
#[derive(Clone)]
pub struct KeyPair {
    private: rsa::PrivateKey,
    /// The same private key prepared for ring, which signs: ring's RSA-3072 PSS signature takes
    /// 1.7–2.5 ms where the `rsa` crate's constant-time big integers take 6–12 ms (measured on
    /// 2 cores, AMD EPYC; `crypto_bench` in BENCHMARKS.md), and a signature is on the path of
    /// every command and result. ring does
    /// not zeroize its copy on drop; it lives as long as the process's identity anyway. `None`
    /// for a key ring refuses (it wants a public exponent of at least 65537): such a key still
    /// signs, with the `rsa` crate.
    signer: Option<std::sync::Arc<ring::rsa::KeyPair>>,
    public: PublicKey,
}

impl KeyPair {
    /// Makes a new RSA-3072 key pair from the operating system's random source. This takes from
    /// under a second to several seconds: call it once at install or first start, never on a hot
    /// path.
    pub fn generate() -> Result<KeyPair, KeyError> {
        // `Generate` makes keys of `DEFAULT_BITS` (3072) from the operating system's RNG.
        const _: () = assert!(rsa::PrivateKey::DEFAULT_BITS == KEY_BITS);
        let private = <rsa::PrivateKey as rsa::Generate>::try_generate()
            .map_err(|e| KeyError::Random(e.to_string()))?;
        KeyPair::from_rsa(private)
    }

    fn from_rsa(private: rsa::PrivateKey) -> Result<KeyPair, KeyError> {
        let public = PublicKey::from_rsa(private.to_public_key())?;
        let signer = private
            .to_pkcs8_der()
            .ok()
            .and_then(|der| ring::rsa::KeyPair::from_pkcs8(der.as_bytes()).ok())
            .map(std::sync::Arc::new);
        Ok(KeyPair { private, signer, public })
    }

    /// Loads the key pair at `path`, or makes one and writes it there if the file does not exist.
    /// Returns `true` as second value when the key was created now (a new machine identity).
    pub fn load_or_create(path: &Path) -> Result<(KeyPair, bool), KeyError> {
        KeyPair::load_or_create_with(path, KeyPair::generate)
    }

    /// [`KeyPair::load_or_create`] with the generator given, so tests can hand in a key made
    /// once instead of waiting for a new one each time.
    pub fn load_or_create_with(
        path: &Path,
        generate: impl FnOnce() -> Result<KeyPair, KeyError>,
    ) -> Result<(KeyPair, bool), KeyError> {
        match KeyPair::load(path) {
            Ok(pair) => return Ok((pair, false)),
            Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let pair = generate()?;
        match pair.save_new(path) {
            Ok(()) => Ok((pair, true)),
            // Another process made the key between our check and our write: theirs wins, so
            // both end up with the same identity.
            Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((KeyPair::load(path)?, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Loads a PKCS#8 PEM private key file. On Unix, a file that group or others may read is
    /// refused: a key others could have copied is no longer a proof of identity.
    pub fn load(path: &Path) -> Result<KeyPair, KeyError> {
        let io = |source| KeyError::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions { path: path.to_path_buf(), mode });
            }
        }
        let mut pem = Zeroizing::new(String::new());
        std::io::Read::read_to_string(&mut &file, &mut pem).map_err(io)?;
        KeyPair::from_pkcs8_pem(&pem).map_err(|e| match e {
            KeyError::BadPrivateKey { reason, .. } => {
                KeyError::BadPrivateKey { path: path.to_path_buf(), reason }
            }
            other => other,
        })
    }

    /// Parses a `BEGIN PRIVATE KEY` PEM block.
    pub fn from_pkcs8_pem(pem: &str) -> Result<KeyPair, KeyError> {
        let bad = |reason: String| KeyError::BadPrivateKey { path: Default::default(), reason };
        let private = rsa::PrivateKey::from_pkcs8_pem(pem.trim()).map_err(|e| bad(e.to_string()))?;
        private.validate().map_err(|e| bad(e.to_string()))?;
        KeyPair::from_rsa(private)
    }

    /// The private key as PKCS#8 PEM, wiped from memory when dropped.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        self.private.to_pkcs8_pem(LineEnding::LF).expect("RSA private key re-encodes")
    }

    /// Writes the private key to `path` atomically with mode 0600, replacing nothing: fails with
    /// an `AlreadyExists` I/O error if a key is already there (an identity is never overwritten
    /// by accident; delete the file deliberately to re-key).
    pub fn save_new(&self, path: &Path) -> Result<(), KeyError> {
        write_new_private(path, self.to_pkcs8_pem().as_bytes())
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub fn machine_id(&self) -> &MachineId {
        &self.public.id
    }

    /// RSA-PSS signature (SHA-256, 32-byte salt) over `message`.
    pub(crate) fn sign_pss(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.signer {
            Some(signer) => {
                let mut signature = vec![0; signer.public().modulus_len()];
                signer
                    .sign(
                        &ring::signature::RSA_PSS_SHA256,
                        &ring::rand::SystemRandom::new(),
                        message,
                        &mut signature,
                    )
                    .map_err(|_| {
                        KeyError::Rsa("ring could not sign (no randomness from the system?)".into())
                    })?;
                Ok(signature)
            }
            None => self.sign_pss_slow(message),
        }
    }

    /// The `rsa` crate's signature: for keys ring refuses, and to check both agree.
    fn sign_pss_slow(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.private.pss_sign::<sha2::Sha256>(message).map_err(|e| KeyError::Rsa(e.to_string()))
    }

    /// Undoes [`PublicKey::oaep_encrypt`]. Fails alike for every wrong input, so the error
    /// says nothing about where decryption went wrong.
    pub(crate) fn oaep_decrypt(&self, ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        self.private.oaep_decrypt::<sha2::Sha256>(ciphertext).ok().map(Zeroizing::new)
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({}, private key hidden)", self.public.id)
    }
}

fn check_size(bits: usize) -> Result<(), KeyError> {
    if (MIN_BITS..=MAX_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(KeyError::KeySize { bits })
    }
}

/// Writes `bytes` to a temporary file in the target's directory that is created with mode 0600
/// (so the secret is never readable by others, not even for a moment), syncs it, then links it
/// to `path` without replacing an existing file, and syncs the directory.
fn write_new_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    use std::io::Write;
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| KeyError::Io { path: p, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let suffix: [u8; 6] = super::random_bytes()?;
    let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(suffix)));

    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = (|| {
        let mut file = options.open(&tmp).map_err(io(&tmp))?;
        file.write_all(bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        // A hard link fails if `path` exists, where a rename would silently replace it. Where
        // the file system has no hard links, fall back to a rename after an existence check.
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(io(path)(e)),
            Err(_) if path.exists() => {
                return Err(io(path)(std::io::Error::from(std::io::ErrorKind::AlreadyExists)))
            }
            Err(_) => std::fs::rename(&tmp, path).map_err(io(path))?,
        }
        #[cfg(unix)]
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_and_the_rsa_crate_make_signatures_the_other_side_accepts() {
        let key = KeyPair::generate().unwrap();
        assert!(key.signer.is_some(), "ring refused a key Outpost made");
        let fast = key.sign_pss(b"switch relay 1").unwrap();
        let slow = key.sign_pss_slow(b"switch relay 1").unwrap();
        let public = key.public();
        assert!(public.ring.is_some(), "keys Outpost makes verify with ring");
        for signature in [&fast, &slow] {
            assert_eq!(signature.len(), KEY_BITS / 8);
            for (check, verify) in [
                ("ring", PublicKey::verify_pss as fn(&PublicKey, &[u8], &[u8]) -> bool),
                ("rsa", PublicKey::verify_pss_slow),
            ] {
                assert!(verify(public, b"switch relay 1", signature), "{check} accepts");
                assert!(!verify(public, b"switch relay 2", signature), "{check} refuses another message");
                let mut bent = signature.clone();
                bent[100] ^= 1;
                assert!(!verify(public, b"switch relay 1", &bent), "{check} refuses a bent signature");
                assert!(!verify(public, b"switch relay 1", &signature[1..]), "{check} refuses a short one");
            }
        }
        // PSS is salted: the same message never gives the same signature twice.
        assert_ne!(fast, key.sign_pss(b"switch relay 1").unwrap());
        // A key ring would refuse still signs, with the rsa crate.
        let fallback = KeyPair { signer: None, ..key.clone() };
        assert!(key.public().verify_pss(b"x", &fallback.sign_pss(b"x").unwrap()));
    }
}
