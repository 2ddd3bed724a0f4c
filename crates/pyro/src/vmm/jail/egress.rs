//! What a jailed guest's network may reach. passt makes the guest's
//! connections as the jail's passt uid, so the host's firewall can tell
//! them apart: one nftables table (`inet pyro_egress`) rejects, for every
//! jail uid, the host's own addresses, link-local ones (a cloud's metadata
//! service at 169.254.169.254) and, unless the VM was allowed them
//! (`PYRO_EGRESS_ALLOW_PRIVATE=1` when it starts), private ranges. Queries
//! to the host's resolvers (`/etc/resolv.conf`) on port 53 pass: passt
//! forwards the guest's DNS there. The guest cannot touch any of it.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

const TABLE: &str = "inet pyro_egress";

/// Blocked whatever the VM was allowed.
const ALWAYS_V4: &str = "0.0.0.0/8, 169.254.0.0/16";
const ALWAYS_V6: &str = "fe80::/10";
/// Blocked unless the VM was allowed private networks.
const PRIVATE_V4: &str = "10.0.0.0/8, 100.64.0.0/10, 172.16.0.0/12, 192.168.0.0/16";
const PRIVATE_V6: &str = "fc00::/7";

/// Whether VMs started now may reach private networks.
pub fn allow_private() -> bool {
    std::env::var("PYRO_EGRESS_ALLOW_PRIVATE").is_ok_and(|v| v == "1")
}

/// The nameservers of a `resolv.conf`.
pub fn resolvers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().split('%').next()?.parse().ok())
        .collect()
}

/// The nftables script that (re)makes the table for jail uids
/// `uids` (an inclusive range) and sets whether the passt of uid
/// `passt_uid` may reach private
/// networks. Idempotent, and one transaction: `nft -f` applies all of it
/// or nothing.
pub fn script(
    uids: (u32, u32),
    resolvers: &[IpAddr],
    passt_uid: u32,
    allow_private: bool,
) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(format!("add table {TABLE}"));
    line(format!(
        "add chain {TABLE} output {{ type filter hook output priority 0 ; policy accept ; }}"
    ));
    line(format!("add chain {TABLE} guest"));
    line(format!("add set {TABLE} private_ok {{ type uid ; }}"));
    line(format!("add set {TABLE} dns4 {{ type ipv4_addr ; }}"));
    line(format!("add set {TABLE} dns6 {{ type ipv6_addr ; }}"));
    line(format!("flush chain {TABLE} output"));
    line(format!("flush chain {TABLE} guest"));
    line(format!("flush set {TABLE} dns4"));
    line(format!("flush set {TABLE} dns6"));
    for r in resolvers {
        let set = if r.is_ipv4() { "dns4" } else { "dns6" };
        line(format!("add element {TABLE} {set} {{ {r} }}"));
    }
    // Only packets of a socket a jail uid owns go to `guest`: a packet
    // with no owner (a closed connection's last FIN) matches no uid, and
    // a negated match would have filtered it.
    line(format!(
        "add rule {TABLE} output meta skuid {}-{} jump guest",
        uids.0, uids.1
    ));
    let rule = |r: &str| format!("add rule {TABLE} guest {r}");
    line(rule(
        "ip daddr @dns4 meta l4proto { tcp, udp } th dport 53 accept",
    ));
    line(rule(
        "ip6 daddr @dns6 meta l4proto { tcp, udp } th dport 53 accept",
    ));
    line(rule("fib daddr type local reject"));
    line(rule(&format!("ip daddr {{ {ALWAYS_V4} }} reject")));
    line(rule(&format!("ip6 daddr {{ {ALWAYS_V6} }} reject")));
    line(rule("meta skuid @private_ok accept"));
    line(rule(&format!("ip daddr {{ {PRIVATE_V4} }} reject")));
    line(rule(&format!("ip6 daddr {{ {PRIVATE_V6} }} reject")));
    // A slot's earlier holder may have been allowed: add, then delete,
    // is "make sure it is absent" in one transaction.
    let uid = passt_uid;
    line(format!("add element {TABLE} private_ok {{ {uid} }}"));
    line(format!("delete element {TABLE} private_ok {{ {uid} }}"));
    if allow_private {
        line(format!("add element {TABLE} private_ok {{ {uid} }}"));
    }
    s
}

/// Applies [`script`] with `nft`.
pub fn install(uids: (u32, u32), passt_uid: u32) -> Result<(), String> {
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let text = script(uids, &resolvers(&resolv), passt_uid, allow_private());
    let nft = crate::host::which("nft")
        .or_else(|| ["/usr/sbin/nft", "/sbin/nft"].iter().map(Into::into).find(|p: &std::path::PathBuf| p.exists()))
        .ok_or("nft is not installed: guests' egress cannot be kept off the host's addresses (run scripts/setup.sh, or apt-get install nftables)")?;
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .map_err(|e| format!("nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft refused the egress rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolvers_are_read_from_resolv_conf() {
        let conf =
            "# comment\nnameserver 10.0.0.2\nsearch x\nnameserver fe80::1%eth0\nnameserver ::1\n";
        let got: Vec<String> = resolvers(conf).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["10.0.0.2", "fe80::1", "::1"]);
    }

    #[test]
    fn the_rules_filter_only_jail_uids_and_private_ranges_are_opt_in() {
        let closed = script((10, 99), &["10.0.0.2".parse().unwrap()], 11, false);
        assert!(closed.contains("add rule inet pyro_egress output meta skuid 10-99 jump guest\n"));
        assert!(
            !closed.contains("!="),
            "a negated owner match also filters ownerless packets"
        );
        assert!(closed.contains("add element inet pyro_egress dns4 { 10.0.0.2 }\n"));
        assert!(closed.contains("fib daddr type local reject\n"));
        assert!(closed.contains("169.254.0.0/16"));
        assert!(closed.ends_with("delete element inet pyro_egress private_ok { 11 }\n"));
        let open = script((10, 99), &[], 11, true);
        assert!(open.ends_with(
            "delete element inet pyro_egress private_ok { 11 }\nadd element inet pyro_egress private_ok { 11 }\n"
        ));
    }
}
