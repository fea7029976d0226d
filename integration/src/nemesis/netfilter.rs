//! Network partitions made with real packet filtering: `iptables` rules in the `INPUT` chain that
//! drop packets between two loopback addresses, both ways. Connections then time out rather than
//! being refused, as across a real partition.
//!
//! Every rule carries the comment [`RULE_COMMENT`], so that rules left over by a run that was
//! killed can be found and removed at the start of the next ([`Netfilter::new`]); a
//! [`Netfilter`] removes its own rules when dropped, on every exit path including a panic.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;

use anyhow::{bail, Context};

/// Marks the rules this module adds.
pub const RULE_COMMENT: &str = "vbs-nemesis";

/// Runs `iptables ARGS`; fails with its stderr.
fn iptables(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("iptables")
        .args(args)
        .output()
        .context("running iptables")?;
    if !out.status.success() {
        bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes sure `iptables` can be run, installing Debian's package when it is missing.
pub fn ensure_installed() -> anyhow::Result<()> {
    crate::tools::ensure("iptables", "iptables")?;
    iptables(&["-S", "INPUT"]).context("running iptables")?;
    Ok(())
}

/// The rule that drops packets from `from` to `to`, as `iptables` arguments after the verb.
fn rule(from: IpAddr, to: IpAddr) -> Vec<String> {
    [
        "INPUT",
        "-s",
        &from.to_string(),
        "-d",
        &to.to_string(),
        "-m",
        "comment",
        "--comment",
        RULE_COMMENT,
        "-j",
        "DROP",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Removes every rule marked [`RULE_COMMENT`]; returns how many there were.
pub fn remove_leftovers() -> anyhow::Result<usize> {
    let listing = iptables(&["-S", "INPUT"])?;
    let mut removed = 0;
    for line in listing.lines() {
        // `-A INPUT -s 127.0.0.21/32 -d ... -m comment --comment vbs-nemesis -j DROP`
        if !line.contains(RULE_COMMENT) {
            continue;
        }
        let Some(spec) = line.strip_prefix("-A ") else {
            continue;
        };
        let args: Vec<&str> = std::iter::once("-D")
            .chain(spec.split_whitespace())
            .collect();
        iptables(&args)?;
        removed += 1;
    }
    Ok(removed)
}

/// The partitions in force. Dropping it heals them all.
pub struct Netfilter {
    /// Directed pairs (from, to) whose packets are dropped.
    cut: BTreeSet<(IpAddr, IpAddr)>,
}

impl Netfilter {
    /// Checks that rules can be added and removes any left over by an earlier run.
    pub fn new() -> anyhow::Result<Netfilter> {
        ensure_installed()?;
        let leftovers = remove_leftovers()?;
        if leftovers > 0 {
            eprintln!("nemesis: removed {leftovers} packet filter rules left by an earlier run");
        }
        Ok(Netfilter {
            cut: BTreeSet::new(),
        })
    }

    /// Drops every packet between each address of `side_a` and each of `side_b`, both ways.
    pub fn partition(&mut self, side_a: &[IpAddr], side_b: &[IpAddr]) -> anyhow::Result<()> {
        for a in side_a {
            for b in side_b {
                for (from, to) in [(*a, *b), (*b, *a)] {
                    if from != to && self.cut.insert((from, to)) {
                        let mut args = vec!["-I".to_string()];
                        args.extend(rule(from, to));
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        iptables(&args)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes every rule this filter added.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        for (from, to) in std::mem::take(&mut self.cut) {
            let mut args = vec!["-D".to_string()];
            args.extend(rule(from, to));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(e) = iptables(&args) {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub fn is_healed(&self) -> bool {
        self.cut.is_empty()
    }
}

impl Drop for Netfilter {
    fn drop(&mut self) {
        if let Err(e) = self.heal() {
            eprintln!("nemesis: removing packet filter rules: {e:#}");
        }
        // Whatever a failed removal left, by its comment.
        if let Err(e) = remove_leftovers() {
            eprintln!("nemesis: removing leftover packet filter rules: {e:#}");
        }
    }
}
