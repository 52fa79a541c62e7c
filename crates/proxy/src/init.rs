//! `weft-proxy init`: the iptables rules that send a pod's TCP traffic through its proxy.
//!
//! All rules live in weft's own chains of the `nat` table, entered by one jump each from
//! `OUTPUT` and `PREROUTING`, so that running init again replaces them instead of piling up
//! (the command is idempotent) and `--cleanup` removes exactly what init added.
//!
//! - Outbound (`OUTPUT`): every TCP connection the pod opens is redirected to the outbound
//!   port, except the proxy's own (its UID), loopback traffic, and excluded ports and CIDRs.
//! - Inbound (`PREROUTING`): every TCP connection arriving at the pod is redirected to the
//!   inbound port, except excluded ports (by default the proxy's own inbound and admin
//!   ports, which peers and probes reach directly).
//!
//! [`rules`] builds the `iptables-restore` input as a pure function; [`run`] applies it.

use std::io::Write as _;
use std::process::{Command, Stdio};

use clap::Args;

use crate::settings::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT};

/// The UID the proxy runs as; its own connections are never redirected.
pub const PROXY_UID: u32 = 2102;

const CHAINS: [&str; 4] = [
    "WEFT_INBOUND",
    "WEFT_INBOUND_REDIRECT",
    "WEFT_OUTPUT",
    "WEFT_OUTBOUND_REDIRECT",
];
const JUMPS: [(&str, &str); 2] = [("PREROUTING", "WEFT_INBOUND"), ("OUTPUT", "WEFT_OUTPUT")];

#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// The proxy's UID, excluded from outbound redirection.
    #[arg(long, env = "WEFT_PROXY_UID", default_value_t = PROXY_UID)]
    pub proxy_uid: u32,
    #[arg(long, env = "WEFT_OUTBOUND_PORT", default_value_t = OUTBOUND_PORT)]
    pub outbound_port: u16,
    #[arg(long, env = "WEFT_INBOUND_PORT", default_value_t = INBOUND_PORT)]
    pub inbound_port: u16,
    /// Inbound ports reached directly, never redirected (the proxy's inbound and admin ports
    /// are always excluded).
    #[arg(long, env = "WEFT_EXCLUDE_INBOUND_PORTS", value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports never redirected.
    #[arg(long, env = "WEFT_EXCLUDE_OUTBOUND_PORTS", value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destination networks never redirected (CIDR).
    #[arg(long, env = "WEFT_EXCLUDE_OUTBOUND_CIDRS", value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<String>,
    /// Also program ip6tables.
    #[arg(long, env = "WEFT_IPV6")]
    pub ipv6: bool,
    /// Remove the rules instead.
    #[arg(long)]
    pub cleanup: bool,
    /// Print the rules instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("running {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("{cidr:?} is not a CIDR of this address family")]
    Cidr { cidr: String },
}

/// The `iptables-restore --noflush` input for one address family.
pub fn rules(args: &InitArgs, ipv6: bool) -> Result<String, InitError> {
    let mut out = String::from("*nat\n");
    for chain in CHAINS {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    out.push_str(&format!(
        "-A WEFT_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports {}\n",
        args.inbound_port
    ));
    out.push_str(&format!(
        "-A WEFT_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports {}\n",
        args.outbound_port
    ));

    let mut inbound_skip = vec![args.inbound_port, ADMIN_PORT];
    inbound_skip.extend(&args.exclude_inbound_ports);
    inbound_skip.sort_unstable();
    inbound_skip.dedup();
    for port in inbound_skip {
        out.push_str(&format!(
            "-A WEFT_INBOUND -p tcp --dport {port} -j RETURN\n"
        ));
    }
    out.push_str("-A WEFT_INBOUND -p tcp -j WEFT_INBOUND_REDIRECT\n");

    out.push_str(&format!(
        "-A WEFT_OUTPUT -m owner --uid-owner {} -j RETURN\n",
        args.proxy_uid
    ));
    out.push_str("-A WEFT_OUTPUT -o lo -j RETURN\n");
    for port in &args.exclude_outbound_ports {
        out.push_str(&format!("-A WEFT_OUTPUT -p tcp --dport {port} -j RETURN\n"));
    }
    for cidr in &args.exclude_outbound_cidrs {
        if !cidr_matches_family(cidr, ipv6) {
            // A v4 CIDR has no meaning for ip6tables, and the reverse; an unparseable one is
            // an error in both.
            if cidr_matches_family(cidr, !ipv6) {
                continue;
            }
            return Err(InitError::Cidr { cidr: cidr.clone() });
        }
        out.push_str(&format!("-A WEFT_OUTPUT -d {cidr} -j RETURN\n"));
    }
    out.push_str("-A WEFT_OUTPUT -j WEFT_OUTBOUND_REDIRECT\n");
    for (from, to) in JUMPS {
        out.push_str(&format!("-A {from} -p tcp -j {to}\n"));
    }
    out.push_str("COMMIT\n");
    Ok(out)
}

fn cidr_matches_family(cidr: &str, ipv6: bool) -> bool {
    let (ip, len) = cidr
        .split_once('/')
        .unwrap_or((cidr, if ipv6 { "128" } else { "32" }));
    let Ok(len) = len.parse::<u8>() else {
        return false;
    };
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => !ipv6 && len <= 32,
        Ok(std::net::IpAddr::V6(_)) => ipv6 && len <= 128,
        Err(_) => false,
    }
}

/// Installs (or with `--cleanup`, removes) the rules.
pub fn run(args: &InitArgs) -> Result<(), InitError> {
    let families: &[(bool, &str, &str)] = if args.ipv6 {
        &[
            (false, "iptables", "iptables-restore"),
            (true, "ip6tables", "ip6tables-restore"),
        ]
    } else {
        &[(false, "iptables", "iptables-restore")]
    };
    for &(ipv6, iptables, restore) in families {
        if args.dry_run {
            if args.cleanup {
                println!("# {iptables}: remove the jumps to and the chains {CHAINS:?}");
            } else {
                println!("# {restore} --noflush\n{}", rules(args, ipv6)?);
            }
            continue;
        }
        remove_jumps(iptables);
        if args.cleanup {
            for chain in CHAINS {
                let _ = Command::new(iptables)
                    .args(["-t", "nat", "-F", chain])
                    .output();
            }
            for chain in CHAINS {
                let _ = Command::new(iptables)
                    .args(["-t", "nat", "-X", chain])
                    .output();
            }
            eprintln!("weft-proxy init: {iptables} rules removed");
        } else {
            restore_rules(restore, &rules(args, ipv6)?)?;
            eprintln!("weft-proxy init: {iptables} rules installed");
        }
    }
    Ok(())
}

/// Deletes every jump into weft's chains, however many earlier runs added.
fn remove_jumps(iptables: &str) {
    for (from, to) in JUMPS {
        // Each -D removes one copy; stop when none is left (or the chain does not exist).
        for _ in 0..64 {
            let ok = Command::new(iptables)
                .args(["-t", "nat", "-D", from, "-p", "tcp", "-j", to])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                break;
            }
        }
    }
}

fn restore_rules(restore: &str, rules: &str) -> Result<(), InitError> {
    let command = format!("{restore} --noflush");
    let mut child = Command::new(restore)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| InitError::Spawn {
            command: command.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(|source| InitError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| InitError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(InitError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        init: InitArgs,
    }

    fn args(extra: &[&str]) -> InitArgs {
        let mut argv = vec!["init"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().init
    }

    #[test]
    fn default_rules_redirect_both_ways_and_spare_the_proxy() {
        let text = rules(&args(&[]), false).unwrap();
        let expected = "\
*nat
:WEFT_INBOUND - [0:0]
:WEFT_INBOUND_REDIRECT - [0:0]
:WEFT_OUTPUT - [0:0]
:WEFT_OUTBOUND_REDIRECT - [0:0]
-A WEFT_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15143
-A WEFT_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15140
-A WEFT_INBOUND -p tcp --dport 15143 -j RETURN
-A WEFT_INBOUND -p tcp --dport 15191 -j RETURN
-A WEFT_INBOUND -p tcp -j WEFT_INBOUND_REDIRECT
-A WEFT_OUTPUT -m owner --uid-owner 2102 -j RETURN
-A WEFT_OUTPUT -o lo -j RETURN
-A WEFT_OUTPUT -j WEFT_OUTBOUND_REDIRECT
-A PREROUTING -p tcp -j WEFT_INBOUND
-A OUTPUT -p tcp -j WEFT_OUTPUT
COMMIT
";
        assert_eq!(text, expected);
    }

    #[test]
    fn exclusions_are_rendered_per_family() {
        let a = args(&[
            "--exclude-inbound-ports",
            "22,15191",
            "--exclude-outbound-ports",
            "5432",
            "--exclude-outbound-cidrs",
            "10.0.0.0/8,fd00::/8",
        ]);
        let v4 = rules(&a, false).unwrap();
        assert!(v4.contains("-A WEFT_INBOUND -p tcp --dport 22 -j RETURN\n"));
        assert_eq!(
            v4.matches("--dport 15191").count(),
            1,
            "duplicates are merged"
        );
        assert!(v4.contains("-A WEFT_OUTPUT -p tcp --dport 5432 -j RETURN\n"));
        assert!(v4.contains("-A WEFT_OUTPUT -d 10.0.0.0/8 -j RETURN\n"));
        assert!(!v4.contains("fd00::/8"));
        let v6 = rules(&a, true).unwrap();
        assert!(v6.contains("-A WEFT_OUTPUT -d fd00::/8 -j RETURN\n"));
        assert!(!v6.contains("10.0.0.0/8"));
    }

    #[test]
    fn a_bad_cidr_is_an_error() {
        let a = args(&["--exclude-outbound-cidrs", "10.0.0.0/99"]);
        assert!(matches!(rules(&a, false), Err(InitError::Cidr { .. })));
        let a = args(&["--exclude-outbound-cidrs", "not-a-cidr"]);
        assert!(matches!(rules(&a, false), Err(InitError::Cidr { .. })));
    }
}
