//! Makes the pod's nameserver addresses local to the sandbox: each is added to the loopback
//! interface of the agent's network namespace, where the policy resolver listens on it. The
//! agent's stub resolver then sends its queries exactly where `/etc/resolv.conf` says, and
//! they arrive at the supervisor instead of leaving the pod.
//!
//! One `RTM_NEWADDR` message per address, written by hand: the request is a fixed 40-byte
//! structure and its answer one acknowledgement. The `rtnetlink` crate would bring an async
//! netlink stack (and `netlink-packet-route` a large typed model of every route message) for
//! that; here the message is built and checked in a few lines, then read back with
//! `getifaddrs`, like every other step of the sandbox's set-up.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

use crate::policy::canonical_ip;

const NLMSG_ERROR: u16 = 2;
const RTM_NEWADDR: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RT_SCOPE_HOST: u8 = 254;
const IFA_F_NODAD: u8 = 0x02;

/// The addresses among `nameservers` that must be added to loopback: those not already
/// local to any network namespace (loopback ranges, the unspecified address).
pub fn to_add(nameservers: &[IpAddr]) -> Vec<IpAddr> {
    nameservers
        .iter()
        .map(|ip| canonical_ip(*ip))
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .collect()
}

/// Adds each of `addresses` to `lo` in the calling thread's network namespace (host scope,
/// one address per prefix), and reads them back.
pub fn add_to_loopback(addresses: &[IpAddr]) -> io::Result<()> {
    if addresses.is_empty() {
        return Ok(());
    }
    let index = nix::net::if_::if_nametoindex("lo").map_err(io::Error::from)?;
    let sock = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    for (seq, ip) in addresses.iter().enumerate() {
        let message = new_address(seq as u32 + 1, index, *ip);
        sendto(
            sock.as_raw_fd(),
            &message,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )?;
        let mut reply = [0u8; 1024];
        let n = recv(sock.as_raw_fd(), &mut reply, MsgFlags::empty())?;
        match acknowledged(&reply[..n]) {
            // EEXIST: another sandbox of this supervisor already made it local (or the pod
            // itself): what we need either way.
            Some(0) | Some(libc::EEXIST) => {}
            Some(errno) => {
                return Err(io::Error::other(format!(
                    "adding {ip} to lo: {}",
                    nix::errno::Errno::from_raw(errno).desc()
                )));
            }
            None => return Err(io::Error::other("unreadable netlink acknowledgement")),
        }
    }
    let present: Vec<IpAddr> = nix::ifaddrs::getifaddrs()?
        .filter(|a| a.interface_name == "lo")
        .filter_map(|a| {
            let address = a.address?;
            address
                .as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| address.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .collect();
    match addresses.iter().find(|ip| !present.contains(ip)) {
        Some(missing) => Err(io::Error::other(format!(
            "{missing} is not on lo after it was added"
        ))),
        None => Ok(()),
    }
}

/// `nlmsghdr` + `ifaddrmsg` + `IFA_LOCAL` + `IFA_ADDRESS` for `ip`/32 (or /128) on `index`.
fn new_address(seq: u32, index: u32, ip: IpAddr) -> Vec<u8> {
    let (family, prefix, bytes): (u8, u8, Vec<u8>) = match ip {
        IpAddr::V4(v4) => (libc::AF_INET as u8, 32, v4.octets().to_vec()),
        IpAddr::V6(v6) => (libc::AF_INET6 as u8, 128, v6.octets().to_vec()),
    };
    let attribute_len = 4 + bytes.len();
    let len = 16 + 8 + 2 * attribute_len.next_multiple_of(4);
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&RTM_NEWADDR.to_ne_bytes());
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // ifaddrmsg: family, prefix length, flags, scope, interface index.
    m.extend_from_slice(&[family, prefix, IFA_F_NODAD, RT_SCOPE_HOST]);
    m.extend_from_slice(&index.to_ne_bytes());
    for kind in [IFA_LOCAL, IFA_ADDRESS] {
        m.extend_from_slice(&(attribute_len as u16).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&bytes);
        m.resize(m.len().next_multiple_of(4), 0);
    }
    m
}

/// The errno of an `NLMSG_ERROR` acknowledgement (0: success).
fn acknowledged(reply: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    let error = i32::from_ne_bytes(reply.get(16..20)?.try_into().ok()?);
    (kind == NLMSG_ERROR).then_some(-error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_that_are_not_local_already_are_added() {
        let servers: Vec<IpAddr> = ["10.96.0.10", "127.0.0.53", "::1", "fd00::a", "0.0.0.0"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            to_add(&servers),
            [
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fd00::a".parse().unwrap()
            ]
        );
    }

    #[test]
    fn adds_addresses_in_a_fresh_namespace() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: needs root for a network namespace");
            return;
        }
        let added = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let ips: Vec<IpAddr> = vec!["10.96.0.10".parse().unwrap(), "fd00::a".parse().unwrap()];
            add_to_loopback(&ips)?;
            // Twice is fine (EEXIST), and a socket can bind the address now.
            add_to_loopback(&ips)?;
            std::net::UdpSocket::bind("10.96.0.10:53").map(drop)
        })
        .join()
        .expect("thread");
        added.expect("addresses on lo");
    }
}
