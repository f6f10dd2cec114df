//! NICs plugged into and out of a running guest (KubeVirt's dynamic network interfaces): a NIC
//! added to the instance gets its tap, then QEMU's `netdev_add` and `device_add` on a free PCIe
//! hot-plug port; a NIC marked `state: absent` is asked out with `device_del`, and once the guest
//! lets go (QEMU's DEVICE_DELETED) its netdev and tap are removed. The ports used are recorded on
//! the instance, so a migration target builds the same machine.

use crate::net::nics::{NicBackend, HOTPLUGGED_ANNOTATION, HOTPLUG_PORTS};
use crate::qmp::Qmp;
use crate::runner::Runner;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use vmo_api::kinds::hotplug::is_absent;
use vmo_api::kinds::kubevirt::VmiSpec;
use vmo_api::Object;
use vmo_client::events::EventType;

/// The NICs in the running guest: name -> hot-plug port (None: present at boot).
#[derive(Debug, Default)]
pub(crate) struct Plugged {
    ports: BTreeMap<String, Option<String>>,
    unplugging: BTreeSet<String>,
}

impl Plugged {
    /// The NICs the instance was launched (or adopted) with.
    pub(crate) fn of(vmi: &Object) -> Self {
        let hot = crate::net::nics::hotplugged(vmi);
        let ports = vmi.spec()["domain"]["devices"]["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|nic| !is_absent(nic))
            .filter_map(|nic| nic["name"].as_str())
            .map(|name| (name.to_string(), hot.get(name).cloned()))
            .collect();
        Self {
            ports,
            unplugging: BTreeSet::new(),
        }
    }

    fn free_port(&self) -> Option<String> {
        (0..HOTPLUG_PORTS)
            .map(|k| format!("hp{k}"))
            .find(|p| !self.ports.values().any(|q| q.as_deref() == Some(p)))
    }

    fn annotation(&self) -> String {
        let hot: BTreeMap<&String, &String> = self
            .ports
            .iter()
            .filter_map(|(n, p)| Some((n, p.as_ref()?)))
            .collect();
        serde_json::to_string(&hot).unwrap_or_default()
    }
}

impl Runner {
    /// Plugs in NICs the instance gained and asks out those marked absent.
    pub(crate) async fn sync_nics(&self, vmi: &Object, qmp: &Qmp, plugged: &mut Plugged) {
        let Ok(spec) = vmo_api::kinds::kubevirt::decode_at::<VmiSpec>(vmi.spec(), "spec") else {
            return;
        };
        let run_dir = self.run_dir(vmi);
        let mut changed = false;
        for (i, nic) in spec.domain.devices.interfaces.iter().enumerate() {
            let absent = nic.extra.get("state").and_then(Value::as_str)
                == Some(vmo_api::kinds::hotplug::ABSENT);
            let present = plugged.ports.contains_key(&nic.name);
            if absent && present && !plugged.unplugging.contains(&nic.name) {
                match qmp
                    .execute(
                        "device_del",
                        Some(json!({"id": format!("nic-{}", nic.name)})),
                    )
                    .await
                {
                    Ok(_) => {
                        plugged.unplugging.insert(nic.name.clone());
                    }
                    Err(e) => {
                        let message = format!("Could not unplug NIC {}: {e}", nic.name);
                        self.events
                            .record(vmi, EventType::Warning, "NICUnplugFailed", &message)
                            .await;
                    }
                }
            } else if !absent && !present {
                match self.plug(vmi, &spec, i, &run_dir, qmp, plugged).await {
                    Ok(port) => {
                        plugged.ports.insert(nic.name.clone(), Some(port.clone()));
                        changed = true;
                        let message = format!("Plugged NIC {} into the guest ({port})", nic.name);
                        self.events
                            .record(vmi, EventType::Normal, "NICPlugged", &message)
                            .await;
                    }
                    Err(why) => {
                        let message = format!("Could not plug NIC {}: {why}", nic.name);
                        self.events
                            .record(vmi, EventType::Warning, "NICPlugFailed", &message)
                            .await;
                    }
                }
            }
        }
        if changed {
            self.nics_changed(vmi, &spec, plugged).await;
        }
    }

    async fn plug(
        &self,
        vmi: &Object,
        spec: &VmiSpec,
        i: usize,
        run_dir: &std::path::Path,
        qmp: &Qmp,
        plugged: &Plugged,
    ) -> Result<String, String> {
        let port = plugged
            .free_port()
            .ok_or_else(|| format!("all {HOTPLUG_PORTS} hot-plug ports are in use"))?;
        let nic = self
            .network
            .attach_nic(&self.client, vmi, spec, i, run_dir, &mut None)
            .await
            .map_err(|e| match e {
                crate::net::nics::AttachError::Wait { message, .. } => message,
                crate::net::nics::AttachError::Refused { field, why } => format!("{field}: {why}"),
            })?;
        let NicBackend::Tap(tap) = &nic.backend else {
            return Err("only tap-backed NICs can be plugged into a running guest".into());
        };
        let netdev = format!("net-{}", nic.name);
        qmp.execute(
            "netdev_add",
            Some(json!({"type": "tap", "id": netdev, "ifname": tap, "script": "no", "downscript": "no"})),
        )
        .await
        .map_err(|e| format!("netdev_add: {e}"))?;
        let device = json!({"driver": nic.device, "id": format!("nic-{}", nic.name),
            "netdev": netdev, "mac": nic.mac, "bus": port});
        if let Err(e) = qmp.execute("device_add", Some(device)).await {
            let _ = qmp.execute("netdev_del", Some(json!({"id": netdev}))).await;
            return Err(format!("device_add: {e}"));
        }
        Ok(port)
    }

    /// QEMU's DEVICE_DELETED for `device`: finishes unplugging that NIC.
    pub(crate) async fn nic_deleted(
        &self,
        vmi: &Object,
        device: &str,
        qmp: &Qmp,
        plugged: &mut Plugged,
    ) {
        let Some(name) = device.strip_prefix("nic-") else {
            return;
        };
        if !plugged.unplugging.remove(name) {
            return;
        }
        let _ = qmp
            .execute("netdev_del", Some(json!({"id": format!("net-{name}")})))
            .await;
        plugged.ports.remove(name);
        if let Some(i) = vmi.spec()["domain"]["devices"]["interfaces"]
            .as_array()
            .and_then(|nics| nics.iter().position(|n| n["name"] == name))
        {
            let tap = self.network.tap_name(&vmi.metadata.uid, i);
            crate::net::spoof::release(&tap).await;
            let _ = crate::net::links::delete(&tap).await;
            self.network.vlans.prune().await;
        }
        let message = format!("Unplugged NIC {name} from the guest");
        self.events
            .record(vmi, EventType::Normal, "NICUnplugged", &message)
            .await;
        if let Ok(spec) = vmo_api::kinds::kubevirt::decode_at::<VmiSpec>(vmi.spec(), "spec") {
            self.nics_changed(vmi, &spec, plugged).await;
        }
    }

    /// Records the ports and reports the interfaces (and the metrics' taps) after a change.
    async fn nics_changed(&self, vmi: &Object, spec: &VmiSpec, plugged: &Plugged) {
        let patch =
            json!({"metadata": {"annotations": {HOTPLUGGED_ANNOTATION: plugged.annotation()}}});
        if let Err(e) = self
            .client
            .merge_patch(
                &self.vmi_kind,
                &vmi.metadata.namespace,
                &vmi.metadata.name,
                None,
                &patch,
                "vmo-agent",
            )
            .await
        {
            tracing::warn!(vmi = %vmi.display_name(), error = %e, "could not record the hot-plug ports");
        }
        let interfaces: Vec<Value> = self
            .network
            .interfaces_status(vmi, spec, &self.run_dir(vmi))
            .into_iter()
            .filter(|i| {
                i["name"]
                    .as_str()
                    .is_some_and(|n| plugged.ports.contains_key(n))
            })
            .collect();
        let _ = self
            .set_status(vmi, json!({"interfaces": interfaces}))
            .await;
        if let Some(handle) = self
            .vms
            .lock()
            .expect("vms lock")
            .get_mut(&vmi.metadata.uid)
        {
            handle.taps = self.network.taps_of(vmi);
        }
    }
}
