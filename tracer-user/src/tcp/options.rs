//! The TCP choices of one tracing run (`--tcp-hooks`, `--tcp-accept-wait`,
//! `--tcp-rtt`), passed explicitly to [`attach_tcp`](super::attach_tcp) and
//! [`inspect_kernel`](super::inspect_kernel). A choice not given on the
//! command line falls back to its environment variable, read when the hooks
//! are attached (as the integration tests and the QEMU run set them), then
//! to the default.

use anyhow::{Context, Result, anyhow};
use tracer_common::tcp::OFF_NONE;

use super::hooks::{self, DEFAULT_ORDER, Mechanism, Plan};

/// Environment override of the preference order, e.g. `kprobe,tracepoint`.
pub const HOOK_ORDER_ENV: &str = "TRACER_TCP_HOOKS";

/// Environment override of [`AcceptWait`].
pub const ACCEPT_WAIT_ENV: &str = "TRACER_TCP_ACCEPT_WAIT";

/// Environment override of [`RttMode`].
pub const RTT_MODE_ENV: &str = "TRACER_TCP_RTT";

/// What the TCP hooks measure and through which mechanisms; `None` fields
/// were not given and fall back to the environment, then to the default.
#[derive(Clone, Debug, Default)]
pub struct TcpOptions {
    /// `--tcp-hooks`: mechanism preference order.
    pub hook_order: Option<Vec<Mechanism>>,
    /// `--tcp-accept-wait`.
    pub accept_wait: Option<AcceptWait>,
    /// `--tcp-rtt`.
    pub rtt: Option<RttMode>,
    /// Optional roles (`destroy`, `rtt`, ...) left without a hook, as on a
    /// kernel that lacks them: how the fallbacks for such kernels are tested.
    pub unhooked: Vec<String>,
}

impl TcpOptions {
    /// The order in force: `--tcp-hooks`, else `$TRACER_TCP_HOOKS`, else
    /// kprobe, fentry, raw tracepoint, tracepoint.
    pub fn hook_order(&self) -> Result<Vec<Mechanism>> {
        if let Some(o) = &self.hook_order {
            return Ok(o.clone());
        }
        match std::env::var(HOOK_ORDER_ENV) {
            Ok(v) => hooks::parse_order(&v)
                .map_err(|e| anyhow!(e))
                .with_context(|| format!("${HOOK_ORDER_ENV}")),
            Err(_) => Ok(DEFAULT_ORDER.to_vec()),
        }
    }

    /// The mode in force: `--tcp-accept-wait`, else
    /// `$TRACER_TCP_ACCEPT_WAIT`, else `auto` (an unparsable variable is
    /// reported and ignored).
    pub fn accept_wait(&self) -> AcceptWait {
        mode_in_force(
            self.accept_wait,
            ACCEPT_WAIT_ENV,
            AcceptWait::parse,
            AcceptWait::Auto,
        )
    }

    /// The mode in force: `--tcp-rtt`, else `$TRACER_TCP_RTT`, else `calls`.
    pub fn rtt(&self) -> RttMode {
        mode_in_force(self.rtt, RTT_MODE_ENV, RttMode::parse, RttMode::Calls)
    }
}

/// Which hooks may measure accept-queue waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptWait {
    /// kprobe/fentry on `inet_csk_accept` only: they cost one program run per
    /// accept.
    Auto,
    /// Also `syscalls:sys_exit_accept{4,}`. Enabling any syscall tracepoint
    /// sends every syscall of every process on the node through the
    /// kernel's syscall-tracing slow path (measured here: short connections
    /// 0.88 of untraced with it, 0.98 without), so it is never the default.
    Syscalls,
    Off,
}

impl AcceptWait {
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "syscalls" => Ok(Self::Syscalls),
            "off" => Ok(Self::Off),
            other => Err(format!("{other:?}: expected auto, syscalls or off")),
        }
    }
}

/// Where smoothed-RTT samples come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RttMode {
    /// Read from the socket by the send/recv programs on a flow's 1st,
    /// 17th, 33rd... call ([`RTT_EVERY`]) and at its close: no program runs
    /// per received segment. Needs the kernel's BTF (`tcp_sock.srtt_us`);
    /// without it, `segments`.
    Calls,
    /// The `rtt` role's hook (`tcp_rcv_established` / `tcp:tcp_probe`) on
    /// every segment received on the node: a sample per segment of a traced
    /// flow, at one more program run per segment (about a fifth of the
    /// events of a bulk transfer).
    Segments,
}

/// In [`RttMode::Calls`], one sample every this many send/recv calls.
pub const RTT_EVERY: u16 = 16;

impl RttMode {
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "calls" => Ok(Self::Calls),
            "segments" => Ok(Self::Segments),
            other => Err(format!("{other:?}: expected calls or segments")),
        }
    }
}

/// Configures `plan` for `mode`: sampling at calls needs the socket's
/// `srtt_us` offset, else the `rtt` role's hook is used.
pub fn plan_rtt(plan: &mut Plan, mode: RttMode) {
    plan.config.rtt_every = match mode {
        RttMode::Calls if plan.config.tp_srtt_us != OFF_NONE => RTT_EVERY,
        _ => 0,
    };
}

/// The mode given, else the one `$env` names, else `default`; an
/// unparsable variable is reported and ignored.
fn mode_in_force<T: Copy + std::fmt::Debug>(
    given: Option<T>,
    env: &str,
    parse: fn(&str) -> std::result::Result<T, String>,
    default: T,
) -> T {
    if let Some(m) = given {
        return m;
    }
    match std::env::var(env) {
        Ok(v) => parse(&v).unwrap_or_else(|e| {
            tracing::warn!("${env}: {e}; using {default:?}");
            default
        }),
        Err(_) => default,
    }
}
