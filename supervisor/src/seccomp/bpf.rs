//! Compiles [`RULES`](super::rules::RULES) into a classic BPF seccomp program.
//!
//! Layout, each check ending in its own `ret` so that every jump is short and forward:
//!
//! ```text
//!   arch != x86_64            -> deny   (int 0x80 / IA32 emulation, any foreign ABI)
//!   nr >= 0x40000000          -> deny   (x32 ABI: same table, different numbers)
//!   nr == clone3              -> ENOSYS (flags are in memory the filter cannot read)
//!   nr == row.nr && row.when  -> deny   (one block per refused row)
//!   nr == row.nr && row.when  -> notify (one block per observed row; the supervisor answers)
//!   otherwise                 -> allow
//! ```
//!
//! A call may have several rows (`sendto` is refused with `MSG_FASTOPEN` and observed with an
//! address): a block whose condition does not hold reloads the call number and falls through
//! to the next row instead of allowing.
//!
//! The architecture and x32 checks come first because a filter that compares syscall numbers
//! without them can be bypassed by making the same call through another ABI.

use libc::{ENOSYS, EPERM, sock_filter};

use super::rules::{
    ALLOWED_FAMILIES, ALLOWED_NETLINK_PROTOCOL, OBSERVED, REFUSED_TYPES, RULES, SOCK_TYPE_MASK,
    When,
};

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
/// Low 32 bits of argument `i` (x86_64 is little-endian).
const fn offset_arg(i: u8) -> u32 {
    16 + 8 * i as u32
}

/// High 32 bits of argument `i`.
const fn offset_arg_high(i: u8) -> u32 {
    offset_arg(i) + 4
}

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// What a refused call turns into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deny {
    /// Ask the supervisor, which logs the call and answers with the row's errno.
    Notify,
    /// Return the row's errno directly (kernels without user notification).
    RuleErrno,
    /// Return one fixed errno for every refusal and another for every observed call, so a
    /// test can tell exactly what the filter did, as opposed to the kernel.
    Sentinel {
        /// Errno of refused calls.
        refused: u16,
        /// Errno of calls that would go to the supervisor to be observed.
        observed: u16,
    },
}

impl Deny {
    fn ret(self, errno: i32) -> u32 {
        match self {
            Deny::Notify => libc::SECCOMP_RET_USER_NOTIF,
            Deny::RuleErrno => errno_ret(errno),
            Deny::Sentinel { refused, .. } => errno_ret(i32::from(refused)),
        }
    }

    /// What an observed call turns into: a notification when someone listens, else nothing.
    fn observe(self) -> u32 {
        match self {
            Deny::Notify => libc::SECCOMP_RET_USER_NOTIF,
            Deny::RuleErrno => libc::SECCOMP_RET_ALLOW,
            Deny::Sentinel { observed, .. } => errno_ret(i32::from(observed)),
        }
    }
}

fn errno_ret(errno: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA)
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// A program too long for 8-bit jump offsets cannot be built; the table is far below that.
#[derive(Debug, thiserror::Error)]
#[error("seccomp filter block for {0} is too long for a BPF jump")]
pub struct TooLong(&'static str);

/// Builds the whole program.
pub fn compile(deny: Deny) -> Result<Vec<sock_filter>, TooLong> {
    let mut prog = vec![
        stmt(LD_W_ABS, OFFSET_ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, deny.ret(EPERM)),
        stmt(LD_W_ABS, OFFSET_NR),
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(RET_K, deny.ret(EPERM)),
        jump(JEQ_K, libc::SYS_clone3 as u32, 0, 1),
        stmt(RET_K, errno_ret(ENOSYS)),
    ];
    let refused = RULES
        .iter()
        .map(|r| (r.name, r.nr, r.when, deny.ret(r.errno)));
    let observed = OBSERVED
        .iter()
        .map(|o| (o.name, o.nr, o.when, deny.observe()));
    for (name, nr, when, action) in refused.chain(observed) {
        let body = next_row_on_allow(block(when, action, deny));
        let skip = u8::try_from(body.len()).map_err(|_| TooLong(name))?;
        prog.push(jump(JEQ_K, nr as u32, 0, skip));
        prog.extend(body);
    }
    prog.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
    Ok(prog)
}

/// `block` with every "allow" turned into "go on with the next row": a jump to a reload of
/// the call number appended at the end, from which the next row's compare follows.
fn next_row_on_allow(mut body: Vec<sock_filter>) -> Vec<sock_filter> {
    let allow = |i: &sock_filter| i.code == RET_K && i.k == libc::SECCOMP_RET_ALLOW;
    if !body.iter().any(allow) {
        return body;
    }
    let reload = body.len();
    for (i, insn) in body.iter_mut().enumerate() {
        if allow(insn) {
            *insn = stmt(JA, (reload - i - 1) as u32);
        }
    }
    body.push(stmt(LD_W_ABS, OFFSET_NR));
    body
}

/// The instructions run when the syscall number matched a row: `action` when `when` holds,
/// allow otherwise (which [`next_row_on_allow`] turns into the next row); every path ends in
/// `ret`.
fn block(when: When, action: u32, deny: Deny) -> Vec<sock_filter> {
    let refuse = stmt(RET_K, action);
    let allow = stmt(RET_K, libc::SECCOMP_RET_ALLOW);
    match when {
        When::Always => vec![refuse],
        When::AnyFlag { arg, mask } => vec![
            stmt(LD_W_ABS, offset_arg(arg)),
            jump(JSET_K, mask, 0, 1),
            refuse,
            allow,
        ],
        When::ArgIn { arg, values } => {
            let mut out = vec![stmt(LD_W_ABS, offset_arg(arg))];
            let n = values.len();
            for (i, value) in values.iter().enumerate() {
                // Match: jump over the remaining compares and the allow, onto the refuse.
                out.push(jump(JEQ_K, *value, (n - i) as u8, 0));
            }
            out.extend([allow, refuse]);
            out
        }
        When::ArgNotIn { arg, values } => {
            let mut out = vec![stmt(LD_W_ABS, offset_arg(arg))];
            let n = values.len();
            for (i, value) in values.iter().enumerate() {
                // Match: jump over the remaining compares and the refuse, onto the allow.
                out.push(jump(JEQ_K, *value, (n - i) as u8, 0));
            }
            out.extend([refuse, allow]);
            out
        }
        When::ArgInRanges { arg, ranges } => {
            // Per range: below it -> next range; above it -> next range; else refuse. The
            // refuse sits after the ranges, the allow after the refuse.
            let mut out = vec![stmt(LD_W_ABS, offset_arg(arg))];
            let n = ranges.len();
            for (i, (low, high)) in ranges.iter().enumerate() {
                // A jump lands at (its own index + 1 + offset). Not in this range: the next
                // range's first compare, or past the refuse after the last range.
                let last = i + 1 == n;
                let below = if last { 2 } else { 1 };
                let above = if last { 1 } else { 0 };
                let inside = (2 * (n - i - 1)) as u8;
                out.push(jump(JGE_K, *low, 0, below));
                out.push(jump(JGT_K, *high, above, inside));
            }
            out.extend([refuse, allow]);
            out
        }
        When::SocketPolicy => socket_block(deny),
        // A jump lands at (its own index + 1 + offset).
        When::NonZero { arg } => vec![
            /* 0 */ stmt(LD_W_ABS, offset_arg(arg)),
            /* 1 */ jump(JEQ_K, 0, 0, 2),
            /* 2 */ stmt(LD_W_ABS, offset_arg_high(arg)),
            /* 3 */ jump(JEQ_K, 0, 1, 0),
            /* 4 */ refuse,
            /* 5 */ allow,
        ],
    }
}

/// `socket(family, type, protocol)`: route netlink of any type; unix/IPv4/IPv6 unless raw or
/// packet; nothing else.
fn socket_block(deny: Deny) -> Vec<sock_filter> {
    let refuse_family = stmt(RET_K, deny.ret(libc::EAFNOSUPPORT));
    let refuse_type = stmt(RET_K, deny.ret(EPERM));
    let allow = stmt(RET_K, libc::SECCOMP_RET_ALLOW);
    let [unix, inet, inet6] = ALLOWED_FAMILIES;
    let [raw, packet] = REFUSED_TYPES;
    // A jump lands at (its own index + 1 + offset).
    vec![
        /* 0 */ stmt(LD_W_ABS, offset_arg(0)),
        /* 1 */ jump(JEQ_K, unix, 8, 0),
        /* 2 */ jump(JEQ_K, inet, 7, 0),
        /* 3 */ jump(JEQ_K, inet6, 6, 0),
        /* 4 */ jump(JEQ_K, libc::AF_NETLINK as u32, 1, 0),
        /* 5 */ refuse_family,
        /* 6 */ stmt(LD_W_ABS, offset_arg(2)),
        /* 7 */ jump(JEQ_K, ALLOWED_NETLINK_PROTOCOL, 0, 1),
        /* 8 */ allow,
        /* 9 */ refuse_family,
        /* 10: type check for unix, IPv4 and IPv6, without SOCK_NONBLOCK / SOCK_CLOEXEC */
        stmt(LD_W_ABS, offset_arg(1)),
        /* 11 */ stmt(AND_K, SOCK_TYPE_MASK),
        /* 12 */ jump(JEQ_K, raw, 1, 0),
        /* 13 */ jump(JEQ_K, packet, 0, 1),
        /* 14 */ refuse_type,
        /* 15 */ allow,
    ]
}
