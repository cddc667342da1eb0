//! Free ports, and ports held for a server that stops and starts again on the same port.
//!
//! Tests run in parallel processes (nextest). A server killed to simulate an outage must come back on its
//! port (the worker under test keeps its URL), so while it is down no other test may take that port: the
//! server holds a reservation (a file named after the port in a directory shared by every test process),
//! and [`free_port`] never hands out a port that a live process has reserved.

use std::net::TcpListener;
use std::path::PathBuf;

fn registry() -> PathBuf {
    std::env::temp_dir().join("frostguard-test-ports")
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it) and that no running test holds.
/// Servers started on it retry with a new port if another process took it in between.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        if !is_reserved(port) {
            return port;
        }
    }
}

/// Whether a live process holds a reservation of `port`.
fn is_reserved(port: u16) -> bool {
    let Ok(owner) = std::fs::read_to_string(registry().join(port.to_string())) else {
        return false;
    };
    owner.trim().parse::<i32>().is_ok_and(process_alive)
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists; it sends nothing.
    pid == std::process::id() as i32 || unsafe { libc::kill(pid, 0) == 0 }
}

/// Holds `port` for this process until dropped; see the module docs.
#[derive(Debug)]
pub struct PortReservation {
    path: PathBuf,
}

impl PortReservation {
    /// Reserves `port` (taking over a reservation whose owner has died).
    pub fn new(port: u16) -> anyhow::Result<PortReservation> {
        let dir = registry();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(port.to_string());
        anyhow::ensure!(
            !is_reserved(port)
                || std::fs::read_to_string(&path)?.trim() == std::process::id().to_string(),
            "port {port} is reserved by another test process"
        );
        std::fs::write(&path, std::process::id().to_string())?;
        Ok(PortReservation { path })
    }
}

impl Drop for PortReservation {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A free port held for the caller until the reservation is dropped, with nothing listening on it: for a
/// test that needs an address where no server answers (and no other test's server will appear).
pub fn reserved_port() -> (u16, PortReservation) {
    loop {
        let port = free_port();
        if let Ok(reservation) = PortReservation::new(port) {
            return (port, reservation);
        }
    }
}
