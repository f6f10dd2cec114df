//! KubeVirt's lifecycle subresources (`/apis/subresources.kubevirt.io/v1/namespaces/NS/
//! virtualmachines/NAME/{start,stop,restart}`), expressed as ordinary writes the VM controller
//! reconciles: a change of run strategy where KubeVirt makes one, or a `stateChangeRequests` entry.

use crate::service::{ResourceService, WriteOptions};
use serde_json::{json, Value};
use vmo_api::fieldset::Scope;
use vmo_api::kinds::kubevirt::run_strategy;
use vmo_api::patch::PatchKind;
use vmo_api::{KindInfo, Object, Status};

/// A lifecycle request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
    Pause,
    Unpause,
}

/// The annotation carrying a paused instance's desired state; the agent reconciles QEMU to it.
pub const PAUSED_ANNOTATION: &str = "vmo.io/paused";

impl Action {
    /// Parses a subresource name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "start" => Some(Self::Start),
            "stop" => Some(Self::Stop),
            "restart" => Some(Self::Restart),
            "pause" => Some(Self::Pause),
            "unpause" => Some(Self::Unpause),
            _ => None,
        }
    }
}

fn live(vmi: &Object) -> bool {
    vmi.metadata.deletion_timestamp.is_none()
        && !matches!(vmi.status()["phase"].as_str(), Some("Succeeded" | "Failed"))
}

const MANAGER: &str = "vmo-lifecycle";

impl ResourceService {
    /// Pauses or unpauses the running instance `ns/name` (the VM's, for a VM).
    pub async fn set_paused(&self, ns: &str, name: &str, paused: bool) -> Result<(), Status> {
        let (_, vmi_kind) = self.kinds();
        let vmi = match self.get(&vmi_kind, ns, name).await {
            Ok(i) => i,
            Err(s) if s.code == 404 => {
                return Err(Status::conflict(
                    "virtualmachineinstances.kubevirt.io",
                    name,
                    "VM is not running",
                ))
            }
            Err(s) => return Err(s),
        };
        if !live(&vmi) || vmi.status()["phase"] != "Running" {
            return Err(Status::conflict(
                "virtualmachineinstances.kubevirt.io",
                name,
                "VM is not running",
            ));
        }
        let is_paused = vmi
            .metadata
            .annotations
            .get(PAUSED_ANNOTATION)
            .is_some_and(|v| v == "true");
        if is_paused == paused {
            let why = if paused {
                "VMI is already paused"
            } else {
                "VMI is not paused"
            };
            return Err(Status::conflict(
                "virtualmachineinstances.kubevirt.io",
                name,
                why,
            ));
        }
        let value = if paused { json!("true") } else { Value::Null };
        self.merge(
            &vmi_kind,
            ns,
            name,
            json!({"metadata": {"annotations": {PAUSED_ANNOTATION: value}}}),
            Scope::Main,
        )
        .await
        .map(|_| ())
    }

    fn kinds(&self) -> (KindInfo, KindInfo) {
        (
            *self.registry().resolve("vm").expect("vms are registered"),
            *self.registry().resolve("vmi").expect("vmis are registered"),
        )
    }

    async fn merge(
        &self,
        kind: &KindInfo,
        ns: &str,
        name: &str,
        patch: Value,
        scope: Scope,
    ) -> Result<Object, Status> {
        let body = serde_json::to_vec(&patch).unwrap_or_default();
        let opts = WriteOptions {
            field_manager: MANAGER.into(),
            ..Default::default()
        };
        self.patch(kind, ns, name, PatchKind::Merge, &body, scope, &opts)
            .await
    }

    /// Appends a state change request (`Stop` names the instance it stops, as KubeVirt's do) to
    /// the VM's status. The write is conditional on the version read, and retried on a conflict,
    /// so concurrent requests and the controller's own status writes never lose one.
    async fn request(&self, vm: &Object, action: &str, uid: Option<&str>) -> Result<(), Status> {
        let (vm_kind, _) = self.kinds();
        let mut vm = vm.clone();
        let mut request = json!({"action": action});
        if let Some(uid) = uid {
            request["uid"] = json!(uid);
        }
        for _ in 0..10 {
            let mut requests = vm.status()["stateChangeRequests"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            requests.push(request.clone());
            let patch = json!({
                "metadata": {"resourceVersion": vm.metadata.resource_version},
                "status": {"stateChangeRequests": requests},
            });
            let (ns, name) = (&vm.metadata.namespace, &vm.metadata.name);
            match self.merge(&vm_kind, ns, name, patch, Scope::Status).await {
                Ok(_) => return Ok(()),
                Err(s) if s.code == 409 => vm = self.get(&vm_kind, ns, name).await?,
                Err(s) => return Err(s),
            }
        }
        Err(Status::conflict(
            "virtualmachines.kubevirt.io",
            &vm.metadata.name,
            "the VM changed too often to record the request; try again",
        ))
    }

    async fn set_running(&self, vm: &Object, running: bool) -> Result<(), Status> {
        let (vm_kind, _) = self.kinds();
        let spec = if vm.spec().get("running").is_some_and(|r| !r.is_null()) {
            json!({"running": running})
        } else {
            json!({"runStrategy": if running { "Always" } else { "Halted" }})
        };
        self.merge(
            &vm_kind,
            &vm.metadata.namespace,
            &vm.metadata.name,
            json!({"spec": spec}),
            Scope::Main,
        )
        .await
        .map(|_| ())
    }

    /// Carries out `action` on the VirtualMachine `ns/name`; `grace` overrides the instance's
    /// termination grace period for this stop or restart (0 with force: at once).
    pub async fn vm_lifecycle(
        &self,
        ns: &str,
        name: &str,
        action: Action,
        grace: Option<i64>,
    ) -> Result<(), Status> {
        let (vm_kind, vmi_kind) = self.kinds();
        if matches!(action, Action::Pause | Action::Unpause) {
            return self.set_paused(ns, name, action == Action::Pause).await;
        }
        let vm = self.get(&vm_kind, ns, name).await?;
        let vmi = match self.get(&vmi_kind, ns, name).await {
            Ok(i) => Some(i),
            Err(s) if s.code == 404 => None,
            Err(s) => return Err(s),
        };
        let running = vmi.as_ref().is_some_and(live);
        let strategy = run_strategy(&vm);
        let refuse = |why: &str| Err(Status::conflict("virtualmachines.kubevirt.io", name, why));
        if let (Some(seconds), Some(_)) = (grace, &vmi) {
            if matches!(action, Action::Stop | Action::Restart) {
                let patch = json!({"spec": {"terminationGracePeriodSeconds": seconds}});
                self.merge(&vmi_kind, ns, name, patch, Scope::Main).await?;
            }
        }
        match action {
            Action::Start => {
                if running {
                    return refuse("VM is already running");
                }
                match strategy.as_str() {
                    "Halted" => self.set_running(&vm, true).await,
                    _ => self.request(&vm, "Start", None).await,
                }
            }
            Action::Stop => {
                if !running && vmi.is_none() {
                    return refuse("VM is not running");
                }
                // As KubeVirt: Always and Once become Halted; RerunOnFailure and Manual keep
                // their strategy and get a stop request for the running instance.
                match strategy.as_str() {
                    "Always" | "Once" => self.set_running(&vm, false).await,
                    _ => {
                        let uid = vmi.as_ref().map(|i| i.metadata.uid.as_str());
                        self.request(&vm, "Stop", uid).await
                    }
                }
            }
            // Answered before the VM is read (a standalone instance has none); kept for completeness.
            Action::Pause | Action::Unpause => {
                self.set_paused(ns, name, action == Action::Pause).await
            }
            Action::Restart => {
                let Some(i) = vmi.filter(|i| i.metadata.deletion_timestamp.is_none()) else {
                    return refuse("VM is not running");
                };
                let opts = crate::service::DeleteOptions {
                    precondition_uid: Some(i.metadata.uid.clone()),
                    ..Default::default()
                };
                self.delete(&vmi_kind, ns, name, &opts).await?;
                if matches!(strategy.as_str(), "Manual" | "Once") {
                    self.request(&vm, "Start", None).await?;
                }
                Ok(())
            }
        }
    }
}
