//! A party's side of enrolment: make a key and a CSR on the party's own machine. The key
//! stays in its file (0600); only the CSR goes to the CA operator.

use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

use crate::files::{self, KEY_MODE, PUBLIC_MODE};
use crate::identity::check_name;
use crate::PkiError;

/// Makes a new ECDSA P-256 key and a CSR for it in `dir` (made if missing): `<name>.key`
/// (mode 0600) and `<name>.csr`. Refuses if either file exists: a key is never overwritten.
/// `name` only names the files and the CSR's subject; the CA decides the certificate's
/// identity. Returns (key path, CSR path).
pub fn make_key_and_csr(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), PkiError> {
    check_name(name)?;
    let key_path = dir.join(format!("{name}.key"));
    let csr_path = dir.join(format!("{name}.csr"));
    files::ensure_dir(dir)?;
    // The key is written with O_EXCL below; this check only avoids leaving a new key beside
    // an old CSR that does not match it.
    if csr_path.exists() {
        return Err(PkiError::Exists(csr_path));
    }
    let key = KeyPair::generate().map_err(|source| PkiError::Certificate { what: "generate a key", source })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|source| PkiError::Certificate { what: "make the CSR", source })?;
    files::write_new(&key_path, key.serialize_pem().as_bytes(), KEY_MODE)?;
    files::write_new(&csr_path, csr.as_bytes(), PUBLIC_MODE)?;
    Ok((key_path, csr_path))
}
