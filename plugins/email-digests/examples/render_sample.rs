//! Renders the sample digest (daily and weekly, HTML and text) to files for review in a browser:
//! `cargo run -p frostguard-email-digests --example render_sample -- [out-dir]` (default `target/digest-sample`).

use std::path::PathBuf;

use fg_email_digests::job::Period;
use fg_email_digests::sample;

fn main() -> Result<(), String> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/digest-sample"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for period in [Period::Daily, Period::Weekly] {
        let r = sample::render(period)?;
        for (ext, body) in [("html", &r.html), ("txt", &r.text)] {
            let path = dir.join(format!("{}-digest.{ext}", period.as_str()));
            std::fs::write(&path, body).map_err(|e| format!("{}: {e}", path.display()))?;
            println!("{}", path.display());
        }
        println!("  subject: {}", r.subject);
    }
    Ok(())
}
