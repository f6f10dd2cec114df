//! KubeVirt's dynamic network interfaces: which changes to a running VM's NICs apply without a
//! restart. Adding an interface on a `multus` network (bridge binding), or marking one
//! `state: absent`, is carried from the VM's template to its running instance; any other NIC
//! change waits for the next start.

use serde_json::{json, Value};

/// The `state` an interface is marked with to unplug it.
pub const ABSENT: &str = "absent";

/// True when the interface is marked for unplugging.
pub fn is_absent(interface: &Value) -> bool {
    interface["state"] == ABSENT
}

fn interfaces(spec: &Value) -> Vec<Value> {
    spec["domain"]["devices"]["interfaces"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn networks(spec: &Value) -> Vec<Value> {
    spec["networks"].as_array().cloned().unwrap_or_default()
}

fn named<'a>(list: &'a [Value], name: &Value) -> Option<&'a Value> {
    list.iter().find(|v| v["name"] == *name)
}

/// The `{interfaces, networks}` the running instance (spec `running`) should take from the VM's
/// template (spec `template`), when they differ only by hot-pluggable changes; None when there is
/// nothing to carry over or the change needs a restart.
pub fn live_change(template: &Value, running: &Value) -> Option<Value> {
    let (want_nics, have_nics) = (interfaces(template), interfaces(running));
    let (want_nets, have_nets) = (networks(template), networks(running));
    if want_nics == have_nics && want_nets == have_nets {
        return None;
    }
    // Every running NIC is still there, unchanged or now marked absent.
    for have in &have_nics {
        let want = named(&want_nics, &have["name"])?;
        let mut unmarked = want.clone();
        if let Some(o) = unmarked.as_object_mut() {
            o.remove("state");
        }
        let mut have_unmarked = have.clone();
        if let Some(o) = have_unmarked.as_object_mut() {
            o.remove("state");
        }
        if unmarked != have_unmarked || (is_absent(have) && !is_absent(want)) {
            return None;
        }
        if named(&want_nets, &have["name"]) != named(&have_nets, &have["name"]) {
            return None;
        }
    }
    // New NICs: bridge binding on a multus network.
    for want in want_nics
        .iter()
        .filter(|w| named(&have_nics, &w["name"]).is_none())
    {
        let network = named(&want_nets, &want["name"])?;
        if network["multus"].is_null() || want["masquerade"].is_object() {
            return None;
        }
    }
    Some(json!({"interfaces": want_nics, "networks": want_nets}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(nics: Value, nets: Value) -> Value {
        json!({"domain": {"devices": {"interfaces": nics}}, "networks": nets})
    }

    #[test]
    fn adding_a_multus_nic_and_unplugging_one_are_live_changes() {
        let running = spec(
            json!([{"name": "default", "masquerade": {}}]),
            json!([{"name": "default", "pod": {}}]),
        );
        let added = spec(
            json!([{"name": "default", "masquerade": {}}, {"name": "v31", "bridge": {}}]),
            json!([{"name": "default", "pod": {}}, {"name": "v31", "multus": {"networkName": "vlan31"}}]),
        );
        let change = live_change(&added, &running).expect("a live change");
        assert_eq!(change["interfaces"][1]["name"], "v31");
        let unplugged = spec(
            json!([{"name": "default", "masquerade": {}}, {"name": "v31", "bridge": {}, "state": "absent"}]),
            json!([{"name": "default", "pod": {}}, {"name": "v31", "multus": {"networkName": "vlan31"}}]),
        );
        assert!(live_change(&unplugged, &added).is_some());
        assert!(live_change(&added, &added).is_none());
    }

    #[test]
    fn other_nic_changes_wait_for_a_restart() {
        let running = spec(
            json!([{"name": "default", "masquerade": {}}]),
            json!([{"name": "default", "pod": {}}]),
        );
        // A changed model, a removed NIC, a second pod NIC: none of them live.
        let model = spec(
            json!([{"name": "default", "masquerade": {}, "model": "e1000"}]),
            json!([{"name": "default", "pod": {}}]),
        );
        assert!(live_change(&model, &running).is_none());
        assert!(live_change(&spec(json!([]), json!([])), &running).is_none());
        let pod = spec(
            json!([{"name": "default", "masquerade": {}}, {"name": "p2", "masquerade": {}}]),
            json!([{"name": "default", "pod": {}}, {"name": "p2", "pod": {}}]),
        );
        assert!(live_change(&pod, &running).is_none());
    }
}
