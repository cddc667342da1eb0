//! TLS to PostgreSQL the way libpq's `sslmode` and `sslrootcert` describe it, on rustls.
//!
//! FrostGuard's managed-database compose file puts `?sslmode=require` in `DATABASE_URL`. tokio-postgres
//! itself knows only `disable`, `prefer` and `require` and no `sslrootcert`, so the URL's TLS parameters are
//! taken out here ([`split_tls_params`], pure) and turned into a rustls client configuration
//! ([`client_config`]) with libpq's meaning:
//!
//! | sslmode | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | if the server offers it | not checked |
//! | `require` | always | not checked; with `sslrootcert`, checked as `verify-ca` (as libpq does) |
//! | `verify-ca` | always | chain to `sslrootcert` (else the public web roots) |
//! | `verify-full` | always | chain, and the certificate names the host of the URL |
//!
//! Unchecked modes still verify the handshake's signatures: they protect against eavesdropping, not against a
//! server that impersonates the database — which is what libpq promises for them too.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// libpq's `sslmode` values that the plugin supports (`allow` is refused: it prefers plain text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, String> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(format!(
                "DATABASE_URL has sslmode={other:?}; use disable, prefer, require, verify-ca or verify-full"
            )),
        }
    }

    /// What tokio-postgres is told: whether TLS is attempted, and whether it is mandatory.
    pub fn driver_mode(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Driver;
        match self {
            SslMode::Disable => Driver::Disable,
            SslMode::Prefer => Driver::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Driver::Require,
        }
    }
}

/// The TLS settings of a `DATABASE_URL`, and the URL without them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsParams {
    /// The URL with `sslmode` and `sslrootcert` removed (every other parameter kept verbatim).
    pub url: String,
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file of CA certificates (`system` means the public web roots).
    pub root_cert: Option<String>,
}

impl TlsParams {
    /// Whether the server's certificate chain is checked.
    pub fn verifies_chain(&self) -> bool {
        match self.mode {
            SslMode::VerifyCa | SslMode::VerifyFull => true,
            SslMode::Require => self.root_cert.is_some(),
            SslMode::Disable | SslMode::Prefer => false,
        }
    }
}

/// Takes `sslmode` and `sslrootcert` out of a `postgres://` / `postgresql://` URL. Other forms (a key=value
/// string) are passed on untouched with `prefer`: tokio-postgres reads their `sslmode` itself.
pub fn split_tls_params(database_url: &str) -> Result<TlsParams, String> {
    let is_url =
        database_url.starts_with("postgres://") || database_url.starts_with("postgresql://");
    let Some((base, query)) = database_url.split_once('?').filter(|_| is_url) else {
        return Ok(TlsParams {
            url: database_url.to_owned(),
            mode: SslMode::Prefer,
            root_cert: None,
        });
    };
    let mut mode = SslMode::Prefer;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for segment in query.split('&').filter(|s| !s.is_empty()) {
        // One `key=value` pair, percent-decoded as the driver decodes the rest of the URL.
        let (key, value) = url::form_urlencoded::parse(segment.as_bytes())
            .next()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .unwrap_or_default();
        match key.as_str() {
            "sslmode" => mode = SslMode::parse(&value)?,
            "sslrootcert" => root_cert = Some(value).filter(|v| !v.is_empty()),
            _ => kept.push(segment),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(TlsParams {
        url,
        mode,
        root_cert,
    })
}

/// The rustls client configuration for `params` (also built for `disable`, where it is never used).
pub fn client_config(params: &TlsParams) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = if params.verifies_chain() {
        let roots = Arc::new(root_store(params.root_cert.as_deref())?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| format!("TLS set-up failed: {e}"))?;
        if params.mode == SslMode::VerifyFull {
            webpki
        } else {
            Arc::new(ChainOnly(webpki))
        }
    } else {
        Arc::new(SignaturesOnly(provider))
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The CAs a verifying mode trusts: the `sslrootcert` file, or the public web roots (`system` or unset).
fn root_store(root_cert: Option<&str>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        None | Some("system") => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(Path::new(path))
                .map_err(|e| format!("cannot read sslrootcert {path}: {e}"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("sslrootcert {path} is not a PEM certificate file: {e}"))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("sslrootcert {path} holds no usable CA certificate"));
            }
        }
    }
    Ok(roots)
}

/// `verify-ca` (and `require` with `sslrootcert`): the chain must lead to a trusted CA; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name, so a name error means the chain itself was accepted.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` / `require`: encryption without checking who holds the certificate (libpq's meaning).
#[derive(Debug)]
struct SignaturesOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for SignaturesOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> TlsParams {
        split_tls_params(url).unwrap()
    }

    #[test]
    fn tls_parameters_are_taken_out_of_the_url_and_the_rest_kept_verbatim() {
        let cases = [
            ("postgres://u@h/db", "postgres://u@h/db", SslMode::Prefer, None),
            ("postgres://u@h/db?sslmode=require", "postgres://u@h/db", SslMode::Require, None),
            ("postgresql://u:p@h:6432/db?sslmode=disable", "postgresql://u:p@h:6432/db", SslMode::Disable, None),
            (
                "postgres://u@h/db?application_name=a%20b&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=3",
                "postgres://u@h/db?application_name=a%20b&connect_timeout=3",
                SslMode::VerifyFull,
                Some("/etc/ca.pem"),
            ),
            ("postgres://u@h/db?sslrootcert=/ca.pem&sslmode=verify-ca", "postgres://u@h/db", SslMode::VerifyCa, Some("/ca.pem")),
            ("host=h user=u sslmode=require", "host=h user=u sslmode=require", SslMode::Prefer, None),
        ];
        for (url, rest, mode, root) in cases {
            let p = split(url);
            assert_eq!(
                (p.url.as_str(), p.mode, p.root_cert.as_deref()),
                (rest, mode, root),
                "{url}"
            );
        }
    }

    #[test]
    fn unknown_sslmodes_are_refused_with_the_choices() {
        let err = split_tls_params("postgres://h/db?sslmode=allow").unwrap_err();
        assert!(
            err.contains("sslmode=\"allow\"") && err.contains("verify-full"),
            "{err}"
        );
        assert!(split_tls_params("postgres://h/db?sslmode=").is_err());
    }

    #[test]
    fn which_modes_check_the_chain_and_what_the_driver_is_told() {
        use tokio_postgres::config::SslMode as Driver;
        let table = [
            ("disable", false, Driver::Disable),
            ("prefer", false, Driver::Prefer),
            ("require", false, Driver::Require),
            ("require&sslrootcert=/ca.pem", true, Driver::Require),
            ("verify-ca", true, Driver::Require),
            ("verify-full", true, Driver::Require),
        ];
        for (query, verifies, driver) in table {
            let p = split(&format!("postgres://h/db?sslmode={query}"));
            assert_eq!(
                (p.verifies_chain(), p.mode.driver_mode()),
                (verifies, driver),
                "{query}"
            );
        }
    }

    #[test]
    fn a_missing_root_certificate_file_is_named() {
        let p = split("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
        let err = client_config(&p).unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        assert!(client_config(&split("postgres://h/db?sslmode=verify-full")).is_ok());
        assert!(client_config(&split("postgres://h/db?sslmode=require")).is_ok());
    }
}
