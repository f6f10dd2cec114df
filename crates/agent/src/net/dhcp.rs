//! The default network's DHCP server: answers the VMs on this node's pod bridge with the address
//! the agent reserved for each NIC's MAC, so a guest's address is decided by the agent (and kept
//! across agent restarts), never by a lease race. Frames from unknown MACs get no answer.
//!
//! Guests are untrusted: `parse` takes any bytes and returns a request or an error, and the fuzz
//! test below feeds it random and mutated packets.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Fixed BOOTP header before the magic cookie.
const HEADER: usize = 236;

const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

/// What a server answers with for one MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
    pub mtu: Option<u16>,
    pub hostname: Option<String>,
}

/// Leases by MAC (lower-case `aa:bb:..`), shared between the agent and the server task.
pub type Leases = Arc<Mutex<HashMap<String, Lease>>>;

/// A client's message, as far as the server needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: u8,
    pub xid: [u8; 4],
    pub flags: [u8; 2],
    pub ciaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub mac: String,
    pub requested: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
}

/// Reads a client message; an error says why it is not one.
pub fn parse(packet: &[u8]) -> Result<Request, String> {
    if packet.len() < HEADER + 4 {
        return Err(format!("{} bytes is too short for DHCP", packet.len()));
    }
    if packet[0] != 1 {
        return Err("not a BOOTREQUEST".into());
    }
    if packet[1] != 1 || packet[2] != 6 {
        return Err("not an Ethernet hardware address".into());
    }
    if packet[HEADER..HEADER + 4] != MAGIC {
        return Err("no DHCP magic cookie".into());
    }
    let ip = |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
    let mut chaddr = [0u8; 16];
    chaddr.copy_from_slice(&packet[28..44]);
    let mac = chaddr[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let mut request = Request {
        kind: 0,
        xid: [packet[4], packet[5], packet[6], packet[7]],
        flags: [packet[10], packet[11]],
        ciaddr: ip(12),
        chaddr,
        mac,
        requested: None,
        server_id: None,
    };
    let mut at = HEADER + 4;
    while at < packet.len() {
        let code = packet[at];
        match code {
            0 => {
                at += 1;
                continue;
            }
            255 => break,
            _ => {}
        }
        let len = *packet.get(at + 1).ok_or("an option runs past the end")? as usize;
        let value = packet
            .get(at + 2..at + 2 + len)
            .ok_or("an option runs past the end")?;
        match (code, len) {
            (53, 1) => request.kind = value[0],
            (50, 4) => {
                request.requested = Some(Ipv4Addr::new(value[0], value[1], value[2], value[3]))
            }
            (54, 4) => {
                request.server_id = Some(Ipv4Addr::new(value[0], value[1], value[2], value[3]))
            }
            _ => {}
        }
        at += 2 + len;
    }
    if request.kind == 0 {
        return Err("no DHCP message type".into());
    }
    Ok(request)
}

/// The answer to `request` from server `server` (its address on the bridge) given the MAC's
/// lease: the packet, and whether it must be broadcast (the client has no address yet).
pub fn answer(request: &Request, lease: &Lease, server: Ipv4Addr) -> Option<(Vec<u8>, bool)> {
    let kind = match request.kind {
        DISCOVER => OFFER,
        REQUEST => {
            // Asked for another server's offer: not ours to answer.
            if request.server_id.is_some_and(|s| s != server) {
                return None;
            }
            let asked = request
                .requested
                .or((!request.ciaddr.is_unspecified()).then_some(request.ciaddr));
            match asked {
                Some(a) if a != lease.address => NAK,
                _ => ACK,
            }
        }
        _ => return None,
    };
    let mut p = vec![0u8; HEADER];
    p[0] = 2; // BOOTREPLY
    p[1] = 1;
    p[2] = 6;
    p[4..8].copy_from_slice(&request.xid);
    p[10..12].copy_from_slice(&request.flags);
    p[12..16].copy_from_slice(&request.ciaddr.octets());
    if kind != NAK {
        p[16..20].copy_from_slice(&lease.address.octets());
        p[20..24].copy_from_slice(&server.octets());
    }
    p[28..44].copy_from_slice(&request.chaddr);
    p.extend_from_slice(&MAGIC);
    let mut option = |code: u8, value: &[u8]| {
        p.push(code);
        p.push(value.len() as u8);
        p.extend_from_slice(value);
    };
    option(53, &[kind]);
    option(54, &server.octets());
    if kind != NAK {
        let mask = if lease.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - lease.prefix)
        };
        let broadcast = u32::from(lease.address) | !mask;
        option(51, &LEASE_SECONDS.to_be_bytes());
        option(58, &(LEASE_SECONDS / 2).to_be_bytes());
        option(59, &(LEASE_SECONDS / 8 * 7).to_be_bytes());
        option(1, &mask.to_be_bytes());
        option(28, &broadcast.to_be_bytes());
        option(3, &lease.gateway.octets());
        if !lease.dns.is_empty() {
            let dns: Vec<u8> = lease.dns.iter().take(8).flat_map(|d| d.octets()).collect();
            option(6, &dns);
        }
        if let Some(mtu) = lease.mtu {
            option(26, &mtu.to_be_bytes());
        }
        if let Some(h) = &lease.hostname {
            let h: Vec<u8> = h.bytes().take(63).collect();
            option(12, &h);
        }
    }
    p.push(255);
    // Some clients drop replies shorter than a BOOTP minimum packet.
    if p.len() < 300 {
        p.resize(300, 0);
    }
    let broadcast = request.ciaddr.is_unspecified() || kind == NAK;
    Some((p, broadcast))
}

/// How long a lease lasts; guests renew at half of it. Short, so that a guest that moved to
/// another node (live migration) rebinds to that node's address within minutes.
const LEASE_SECONDS: u32 = 600;

/// Serves `leases` on `bridge` (whose address is `server`) until the task is dropped.
pub async fn serve(bridge: String, server: Ipv4Addr, leases: Leases) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.bind_device(Some(bridge.as_bytes()))?;
    socket.set_nonblocking(true)?;
    socket.bind(&std::net::SocketAddr::from(([0, 0, 0, 0], 67)).into())?;
    let socket = tokio::net::UdpSocket::from_std(socket.into())?;
    let mut buf = vec![0u8; 1500];
    loop {
        let (n, _) = socket.recv_from(&mut buf).await?;
        let request = match parse(&buf[..n]) {
            Ok(r) => r,
            Err(why) => {
                tracing::debug!(bridge, why, "ignored a DHCP packet");
                continue;
            }
        };
        let lease = leases
            .lock()
            .expect("leases lock")
            .get(&request.mac)
            .cloned();
        let Some(lease) = lease else {
            tracing::debug!(bridge, mac = request.mac, "DHCP from a MAC with no lease");
            continue;
        };
        if let Some((reply, broadcast)) = answer(&request, &lease, server) {
            let to = if broadcast {
                Ipv4Addr::BROADCAST
            } else {
                request.ciaddr
            };
            if let Err(e) = socket.send_to(&reply, (to, 68)).await {
                tracing::warn!(bridge, mac = request.mac, error = %e, "could not send a DHCP reply");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(kind: u8, mac: [u8; 6], requested: Option<Ipv4Addr>, ciaddr: Ipv4Addr) -> Vec<u8> {
        let mut p = vec![0u8; HEADER];
        p[0] = 1;
        p[1] = 1;
        p[2] = 6;
        p[4..8].copy_from_slice(&[1, 2, 3, 4]);
        p[12..16].copy_from_slice(&ciaddr.octets());
        p[28..34].copy_from_slice(&mac);
        p.extend_from_slice(&MAGIC);
        p.extend_from_slice(&[53, 1, kind]);
        if let Some(r) = requested {
            p.extend_from_slice(&[50, 4]);
            p.extend_from_slice(&r.octets());
        }
        p.push(255);
        p
    }

    fn lease() -> Lease {
        Lease {
            address: Ipv4Addr::new(100, 64, 1, 10),
            prefix: 24,
            gateway: Ipv4Addr::new(100, 64, 1, 1),
            dns: vec![Ipv4Addr::new(9, 9, 9, 9)],
            mtu: Some(1500),
            hostname: Some("vm1".into()),
        }
    }

    fn option(reply: &[u8], code: u8) -> Option<Vec<u8>> {
        let mut at = HEADER + 4;
        while at + 1 < reply.len() && reply[at] != 255 {
            let len = reply[at + 1] as usize;
            if reply[at] == code {
                return Some(reply[at + 2..at + 2 + len].to_vec());
            }
            at += 2 + len;
        }
        None
    }

    const MAC: [u8; 6] = [2, 0, 0, 0xaa, 0xbb, 0xcc];
    const SERVER: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 1);

    #[test]
    fn a_discover_gets_an_offer_of_the_reserved_address_with_the_gateway() {
        let request = parse(&client(DISCOVER, MAC, None, Ipv4Addr::UNSPECIFIED)).unwrap();
        assert_eq!(request.mac, "02:00:00:aa:bb:cc");
        let (reply, broadcast) = answer(&request, &lease(), SERVER).unwrap();
        assert!(broadcast);
        assert_eq!(reply[0], 2);
        assert_eq!(&reply[4..8], &[1, 2, 3, 4]);
        assert_eq!(&reply[16..20], &[100, 64, 1, 10]);
        assert_eq!(option(&reply, 53), Some(vec![OFFER]));
        assert_eq!(option(&reply, 1), Some(vec![255, 255, 255, 0]));
        assert_eq!(option(&reply, 3), Some(vec![100, 64, 1, 1]));
        assert_eq!(option(&reply, 6), Some(vec![9, 9, 9, 9]));
        assert_eq!(option(&reply, 12), Some(b"vm1".to_vec()));
    }

    #[test]
    fn a_request_for_the_reserved_address_is_acked_and_any_other_refused() {
        let good = client(
            REQUEST,
            MAC,
            Some(Ipv4Addr::new(100, 64, 1, 10)),
            Ipv4Addr::UNSPECIFIED,
        );
        let (reply, _) = answer(&parse(&good).unwrap(), &lease(), SERVER).unwrap();
        assert_eq!(option(&reply, 53), Some(vec![ACK]));
        // A guest that moved to another node and renews its old address is told no, so it asks
        // again and gets this node's.
        let stale = client(REQUEST, MAC, None, Ipv4Addr::new(100, 64, 0, 10));
        let (reply, broadcast) = answer(&parse(&stale).unwrap(), &lease(), SERVER).unwrap();
        assert_eq!(option(&reply, 53), Some(vec![NAK]));
        assert!(broadcast);
        // A renewal of the right address goes back unicast.
        let renew = client(REQUEST, MAC, None, Ipv4Addr::new(100, 64, 1, 10));
        let (reply, broadcast) = answer(&parse(&renew).unwrap(), &lease(), SERVER).unwrap();
        assert_eq!(option(&reply, 53), Some(vec![ACK]));
        assert!(!broadcast);
    }

    #[test]
    fn broken_packets_are_errors_and_random_bytes_never_panic() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[1u8; 100]).is_err());
        let mut truncated = client(
            DISCOVER,
            MAC,
            Some(Ipv4Addr::LOCALHOST),
            Ipv4Addr::UNSPECIFIED,
        );
        truncated.truncate(truncated.len() - 3);
        assert!(parse(&truncated).is_err());
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seed = client(
            REQUEST,
            MAC,
            Some(Ipv4Addr::new(100, 64, 1, 10)),
            Ipv4Addr::UNSPECIFIED,
        );
        for _ in 0..20_000 {
            let mut p = seed.clone();
            for _ in 0..(next() % 8) {
                let i = (next() as usize) % p.len();
                p[i] = next() as u8;
            }
            p.truncate(HEADER + (next() as usize % (p.len() - HEADER + 1)));
            if let Ok(r) = parse(&p) {
                let _ = answer(&r, &lease(), SERVER);
            }
        }
    }
}
