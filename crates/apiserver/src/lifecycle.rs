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
}

impl Action {
    /// Parses a subresource name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "start" => Some(Self::Start),
            "stop" => Some(Self::Stop),
            "restart" => Some(Self::Restart),
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

    async fn request(&self, vm: &Object, action: &str) -> Result<(), Status> {
        let (vm_kind, _) = self.kinds();
        let mut requests = vm.status()["stateChangeRequests"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        requests.push(json!({"action": action}));
        self.merge(
            &vm_kind,
            &vm.metadata.namespace,
            &vm.metadata.name,
            json!({"status": {"stateChangeRequests": requests}}),
            Scope::Status,
        )
        .await
        .map(|_| ())
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
                    _ => self.request(&vm, "Start").await,
                }
            }
            Action::Stop => {
                if !running && vmi.is_none() {
                    return refuse("VM is not running");
                }
                match strategy.as_str() {
                    "Always" | "RerunOnFailure" | "Once" => self.set_running(&vm, false).await,
                    _ => self.request(&vm, "Stop").await,
                }
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
                    self.request(&vm, "Start").await?;
                }
                Ok(())
            }
        }
    }
}
