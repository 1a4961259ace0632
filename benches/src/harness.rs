//! Helpers shared by the harness binaries that run real `serval-translator` processes
//! (`e2e --path chain`, `idle_conns`).

use std::io;
use std::path::PathBuf;

/// An `io::Error` carrying `msg` (the harnesses report every failure as one).
pub fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// The `serval-translator` binary: `E2E_TRANSLATOR`, or next to the running binary (the
/// same `--release` target directory: `cargo build --release -p translator`).
pub fn translator_binary() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("E2E_TRANSLATOR") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name("serval-translator");
    if p.exists() {
        Ok(p)
    } else {
        Err(bad(format!(
            "{} not found: `cargo build --release -p translator` into the same target \
             directory, or set E2E_TRANSLATOR",
            p.display()
        )))
    }
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`, ...).
pub fn proc_status_kib(pid: u32, field: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    kib_field(&text, field).ok_or_else(|| bad(format!("no {field} in /proc/{pid}/status")))
}

/// `field:   1234 kB` of a `/proc` file in KiB.
pub fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The kernel's socket memory: `/proc/net/sockstat`'s `TCP: ... mem P` and `UDP: ... mem P`
/// (pages, machine-wide), and the kernel's slab (`Slab:` of `/proc/meminfo`, KiB).
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelMem {
    /// TCP sockets in use (this network namespace).
    pub tcp_inuse: u64,
    /// TCP socket buffer memory, pages (machine-wide).
    pub tcp_mem_pages: u64,
    /// UDP socket buffer memory, pages (machine-wide).
    pub udp_mem_pages: u64,
    /// Kernel slab, KiB (machine-wide: socket structures, dentries, epoll items...).
    pub slab_kib: u64,
}

impl KernelMem {
    /// Reads the figures now.
    pub fn read() -> io::Result<Self> {
        let sockstat = std::fs::read_to_string("/proc/net/sockstat")?;
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        let get = |proto: &str, key: &str| -> u64 {
            sockstat
                .lines()
                .find(|l| l.starts_with(proto))
                .and_then(|l| {
                    let mut it = l.split_whitespace();
                    while let Some(w) = it.next() {
                        if w == key {
                            return it.next()?.parse().ok();
                        }
                    }
                    None
                })
                .unwrap_or(0)
        };
        Ok(Self {
            tcp_inuse: get("TCP:", "inuse"),
            tcp_mem_pages: get("TCP:", "mem"),
            udp_mem_pages: get("UDP:", "mem"),
            slab_kib: kib_field(&meminfo, "Slab").unwrap_or(0),
        })
    }
}
