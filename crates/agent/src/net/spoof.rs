//! `macspoofchk`: frames a VM sends with a source MAC other than its NIC's are dropped where they
//! enter the bridge, with ebtables rules on the tap (bridge FORWARD and INPUT), added when the
//! tap is attached and removed with it.

use super::links::{self, LinkError};

const CHAINS: [&str; 2] = ["FORWARD", "INPUT"];

/// Drops frames from `tap` whose source is not `mac`.
pub async fn enforce(tap: &str, mac: &str) -> Result<(), LinkError> {
    release(tap).await;
    for chain in CHAINS {
        links::run(
            "ebtables",
            &["-A", chain, "-i", tap, "-s", "!", mac, "-j", "DROP"],
        )
        .await
        .map_err(|e| LinkError {
            output: format!("{} (macspoofchk needs ebtables on the node)", e.output),
            ..e
        })?;
    }
    Ok(())
}

/// Removes `tap`'s rules, if any.
pub async fn release(tap: &str) {
    for chain in CHAINS {
        let Ok(listing) = links::run("ebtables", &["-L", chain, "--Ln"]).await else {
            return;
        };
        let needle = format!("-i {tap} ");
        let mut numbers: Vec<u32> = listing
            .lines()
            .filter(|l| l.contains(&needle))
            .filter_map(|l| l.split('.').next()?.trim().parse().ok())
            .collect();
        numbers.sort_unstable_by(|a, b| b.cmp(a));
        for n in numbers {
            let _ = links::run("ebtables", &["-D", chain, &n.to_string()]).await;
        }
    }
}
