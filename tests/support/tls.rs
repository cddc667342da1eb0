//! Throwaway X.509 material for TLS tests, made with the `openssl` command: a CA, and server certificates it
//! signs for given subject alternative names (a certificate whose names do not match is how a test checks
//! hostname verification).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A certificate and its private key, both PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run openssl ({e}); install it (Debian: apt-get install openssl)"
            )
        })?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A self-signed CA `<name>.crt` / `<name>.key` in `dir`, valid for a day.
pub fn generate_ca(dir: &Path, name: &str, common_name: &str) -> anyhow::Result<CertFiles> {
    let (cert, key) = (format!("{name}.crt"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={common_name}"),
            "-keyout",
            &key,
            "-out",
            &cert,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )?;
    Ok(CertFiles {
        cert: dir.join(cert),
        key: dir.join(key),
    })
}

/// A server certificate `<name>.crt` / `<name>.key` (key mode 0600) in `dir`, signed by `ca`, for the
/// subject alternative names `sans` (e.g. `IP:127.0.0.1`, `DNS:localhost`).
pub fn generate_server_cert(
    dir: &Path,
    ca: &CertFiles,
    name: &str,
    sans: &[&str],
) -> anyhow::Result<CertFiles> {
    let (cert, key, csr, ext) = (
        format!("{name}.crt"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=frostguard-tests server",
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    )?;
    std::fs::write(
        dir.join(&ext),
        format!(
            "subjectAltName={}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
            sans.join(",")
        ),
    )?;
    let ca_cert = ca.cert.to_string_lossy().into_owned();
    let ca_key = ca.key.to_string_lossy().into_owned();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
    )?;
    let mut perms = std::fs::metadata(dir.join(&key))?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(dir.join(&key), perms)?;
    Ok(CertFiles {
        cert: dir.join(cert),
        key: dir.join(key),
    })
}
