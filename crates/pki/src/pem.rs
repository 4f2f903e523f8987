//! PEM text to DER, for the kinds of object this crate reads.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::PkiError;

fn bad(what: &'static str, reason: impl ToString) -> PkiError {
    PkiError::Pem { what, reason: reason.to_string() }
}

/// Every certificate in `pem` (at least one).
pub(crate) fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(what, e))?;
    if certs.is_empty() {
        return Err(bad(what, "no CERTIFICATE section"));
    }
    Ok(certs)
}

/// The one certificate in `pem`.
pub(crate) fn one_cert(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    let mut certs = certs(pem, "certificate")?;
    match certs.len() {
        1 => Ok(certs.remove(0)),
        n => Err(bad("certificate", format!("{n} certificates where one was expected"))),
    }
}

pub(crate) fn key(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| bad("private key", e))
}

pub(crate) fn crls(pem: &str) -> Result<Vec<CertificateRevocationListDer<'static>>, PkiError> {
    let crls = CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("CRL", e))?;
    if crls.is_empty() {
        return Err(bad("CRL", "no X509 CRL section"));
    }
    Ok(crls)
}
