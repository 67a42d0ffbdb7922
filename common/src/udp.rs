//! UDP sockets for QUIC endpoints that carry thousands of sessions (the
//! master's, the fleet simulator's). A burst of handshakes or heartbeats,
//! e.g. every agent coming back after a master restart, overflows the
//! kernel's default receive buffer (about 208 KiB): the kernel then drops
//! datagrams (`RcvbufErrors` in /proc/net/snmp), handshakes time out and are
//! retried, and the burst feeds itself.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// The receive buffer a fleet's endpoint asks for.
pub const FLEET_RECV_BUFFER: usize = 8 << 20;

/// A bound socket and the receive buffer the kernel granted. Linux caps the
/// request at `net.core.rmem_max`.
pub struct BoundUdp {
    pub socket: UdpSocket,
    pub recv_buffer: usize,
}

impl BoundUdp {
    /// Whether the kernel granted less than asked: say so with the fix.
    pub fn shortfall(&self, asked: usize) -> Option<String> {
        (self.recv_buffer < asked).then(|| {
            format!(
                "UDP receive buffer is {} KiB, not the {} KiB asked for: bursts of agent traffic may be dropped; raise the limit with `sysctl -w net.core.rmem_max={asked}`",
                self.recv_buffer / 1024,
                asked / 1024
            )
        })
    }
}

/// Binds `addr` (non-blocking, for an async runtime) with a receive buffer
/// of up to `recv_buffer` bytes.
pub fn bind_with_recv_buffer(addr: SocketAddr, recv_buffer: usize) -> io::Result<BoundUdp> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer still works, and `shortfall` tells.
    let _ = socket.set_recv_buffer_size(recv_buffer);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // Linux reports twice what was granted (its bookkeeping included).
    let granted = socket.recv_buffer_size()? / 2;
    Ok(BoundUdp { socket: socket.into(), recv_buffer: granted })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_with_a_larger_buffer_than_the_default() {
        let bound = bind_with_recv_buffer("127.0.0.1:0".parse().expect("addr"), 1 << 20).expect("bind");
        assert!(bound.socket.local_addr().expect("addr").port() > 0);
        // What the kernel allows decides which answer is right.
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max").expect("rmem_max").trim().parse().expect("a number");
        if rmem_max >= 1 << 20 {
            assert!(bound.recv_buffer >= 1 << 20, "granted {}", bound.recv_buffer);
            assert_eq!(bound.shortfall(1 << 20), None);
        } else {
            let why = bound.shortfall(1 << 20).expect("a shortfall");
            assert!(why.contains("sysctl -w net.core.rmem_max=1048576"), "{why}");
        }
    }
}
