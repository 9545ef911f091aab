//! What an endpoint's host veth says about it, in its alias: enough for
//! `reconcile --from-kernel` to rebuild the endpoint's record.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::state::CniAttachment;

/// Alias prefix that marks a link as a vethbpf endpoint's host veth.
const TAG_PREFIX: &str = "vethbpf:";
/// `IFALIASZ` - 1.
const ALIAS_MAX: usize = 255;

/// What an endpoint's host veth says about it (its `IFLA_IFALIAS`, as
/// `vethbpf:` + compact JSON): the part of its record that the maps do not hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KernelTag {
    pub(crate) name: String,
    pub(crate) ifname: String,
    /// Left out when the alias would be too long (a very long namespace path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) netns: Option<PathBuf>,
    pub(crate) netns_created: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cni: Option<CniAttachment>,
}

impl KernelTag {
    /// The alias; parts are left out, least needed first, until it fits in 255
    /// bytes (a name and an interface name always fit).
    pub(crate) fn encode(&self) -> String {
        let mut tag = self.clone();
        loop {
            let alias = format!(
                "{TAG_PREFIX}{}",
                serde_json::to_string(&tag).unwrap_or_default()
            );
            if alias.len() <= ALIAS_MAX {
                return alias;
            }
            if let Some(cni) = tag.cni.as_mut().filter(|c| c.ipam.is_some()) {
                cni.ipam = None;
            } else if tag.cni.is_some() {
                tag.cni = None;
            } else if tag.netns.is_some() {
                tag.netns = None;
            } else {
                return alias;
            }
        }
    }

    pub(crate) fn decode(alias: &str) -> Option<KernelTag> {
        serde_json::from_str(alias.strip_prefix(TAG_PREFIX)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(netns: &str, cni: bool) -> KernelTag {
        KernelTag {
            name: "pod-a".into(),
            ifname: "eth0".into(),
            netns: Some(PathBuf::from(netns)),
            netns_created: false,
            cni: cni.then(|| CniAttachment {
                container_id: "c".repeat(64),
                ifname: "eth0".into(),
                network: "vethbpf-network".into(),
                ipam: Some("host-local".into()),
            }),
        }
    }

    #[test]
    fn tag_round_trips_through_the_alias() {
        let t = tag("/run/netns/cni-1234", true);
        let alias = t.encode();
        assert!(alias.len() <= ALIAS_MAX, "{}", alias.len());
        assert_eq!(KernelTag::decode(&alias), Some(t));
        assert_eq!(KernelTag::decode("some admin's alias"), None);
        assert_eq!(KernelTag::decode("vethbpf:{broken"), None);
    }

    #[test]
    fn long_tags_drop_the_least_needed_parts_first() {
        let long = format!("/run/netns/{}", "n".repeat(150));
        let alias = tag(&long, true).encode();
        assert!(alias.len() <= ALIAS_MAX);
        let back = KernelTag::decode(&alias).unwrap();
        assert_eq!(back.netns, Some(PathBuf::from(&long)));
        assert!(back.cni.is_none() || back.cni.as_ref().unwrap().ipam.is_none());

        let longer = format!("/run/netns/{}", "n".repeat(250));
        let back = KernelTag::decode(&tag(&longer, true).encode()).unwrap();
        assert_eq!(
            (back.name.as_str(), back.netns, back.cni),
            ("pod-a", None, None)
        );
    }
}
