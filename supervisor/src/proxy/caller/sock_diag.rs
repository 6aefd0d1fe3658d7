//! The `sock_diag` wire format: one exact NETLINK_INET_DIAG query turns a TCP 4-tuple into
//! the socket's inode in one round trip, however many sockets are open. The netlink socket
//! must live in the namespace whose sockets it asks about (the agent's).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_NOCOOKIE: u32 = !0;

#[repr(C)]
#[derive(Clone, Copy)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagSockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// Opens the `sock_diag` socket; call it inside the agent's network namespace.
pub fn diag_socket() -> io::Result<OwnedFd> {
    // SAFETY: a plain netlink socket; ownership passes to the OwnedFd.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, owned here.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

fn words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(v4) => [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        IpAddr::V6(v6) => {
            let o = v6.octets();
            std::array::from_fn(|i| {
                u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
            })
        }
    }
}

#[repr(C)]
struct Request {
    header: NlMsgHdr,
    body: InetDiagReqV2,
}

/// A TCP request about `local` → `remote` in the given `states` (a bit per TCP state).
fn request(flags: u16, states: u32, local: SocketAddr, remote: SocketAddr) -> Request {
    Request {
        header: NlMsgHdr {
            len: size_of::<Request>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags,
            seq: 1,
            pid: 0,
        },
        body: InetDiagReqV2 {
            family: if local.is_ipv4() {
                libc::AF_INET as u8
            } else {
                libc::AF_INET6 as u8
            },
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states,
            id: InetDiagSockId {
                sport: local.port().to_be(),
                dport: remote.port().to_be(),
                src: words(local.ip()),
                dst: words(remote.ip()),
                interface: 0,
                cookie: [INET_DIAG_NOCOOKIE; 2],
            },
        },
    }
}

/// Sends `request` and receives the first message of the reply: its bytes and length, or the
/// error the kernel answered.
fn exchange(diag: &OwnedFd, request: &Request) -> io::Result<([u64; 128], usize)> {
    // SAFETY: sends the request struct's bytes to the kernel (destination: the kernel, pid 0).
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            diag.as_raw_fd(),
            (request as *const Request).cast(),
            size_of::<Request>(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u64; 128];
    // SAFETY: receives into a buffer of the given size.
    let got = unsafe {
        libc::recv(
            diag.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            size_of_val(&reply),
            0,
        )
    };
    if got < size_of::<NlMsgHdr>() as isize {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the buffer holds at least a header; it is 8-byte aligned and plain old data.
    let header = unsafe { *reply.as_ptr().cast::<NlMsgHdr>() };
    // An error message carries a negative errno right after the header; so does the end of a
    // dump that failed (no `tcp_diag`, with `inet_diag` loaded).
    if matches!(header.kind, NLMSG_ERROR | NLMSG_DONE) && got >= size_of::<NlMsgHdr>() as isize + 4
    {
        // SAFETY: checked above that four bytes follow the header.
        let code = unsafe {
            *reply
                .as_ptr()
                .cast::<u8>()
                .add(size_of::<NlMsgHdr>())
                .cast::<i32>()
        };
        if code < 0 {
            return Err(io::Error::from_raw_os_error(-code));
        }
    }
    Ok((reply, got as usize))
}

/// Looks up the inode of the TCP socket `local` → `remote` in the diag socket's namespace.
pub fn socket_inode(diag: &OwnedFd, local: SocketAddr, remote: SocketAddr) -> io::Result<u64> {
    let (reply, got) = exchange(diag, &request(NLM_F_REQUEST, !0, local, remote))?;
    if got < size_of::<NlMsgHdr>() + size_of::<InetDiagMsg>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short sock_diag reply",
        ));
    }
    // SAFETY: checked above that a full inet_diag_msg follows the header.
    let msg = unsafe {
        *reply
            .as_ptr()
            .cast::<u8>()
            .add(size_of::<NlMsgHdr>())
            .cast::<InetDiagMsg>()
    };
    Ok(u64::from(msg.inode))
}

/// Whether this kernel answers `sock_diag` about TCP sockets: without its `inet_diag` and
/// `tcp_diag` (modules on many distribution kernels, loaded on first use where the node can
/// load modules) every question fails with ENOENT, as if no socket existed. Asks for the
/// sockets in no state at all, which costs nothing.
pub fn tcp_available() -> io::Result<()> {
    let any = SocketAddr::from(([0, 0, 0, 0], 0));
    let dump = request(NLM_F_REQUEST | NLM_F_DUMP, 0, any, any);
    exchange(&diag_socket()?, &dump).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_inode_of_a_local_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let diag = diag_socket().unwrap();
        let inode = socket_inode(
            &diag,
            client.local_addr().unwrap(),
            client.peer_addr().unwrap(),
        )
        .unwrap();
        let fd_target =
            std::fs::read_link(format!("/proc/self/fd/{}", client.as_raw_fd())).unwrap();
        assert_eq!(fd_target.to_string_lossy(), format!("socket:[{inode}]"));
        let missing = socket_inode(
            &diag,
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        assert_eq!(missing.unwrap_err().raw_os_error(), Some(libc::ENOENT));
        // The machine this runs on answers about TCP sockets (the lookup above found one).
        tcp_available().unwrap();
    }
}
