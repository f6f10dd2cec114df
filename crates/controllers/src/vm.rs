//! The VirtualMachine controller: keeps one VirtualMachineInstance per VirtualMachine according to
//! its run strategy, and reports the VM's `printableStatus`, `created`, `ready` and conditions.
//!
//! | runStrategy    | instance wanted                                   | after the instance ends |
//! |----------------|---------------------------------------------------|-------------------------|
//! | Always         | yes                                               | replaced                |
//! | RerunOnFailure | yes, until a stop request; again on a start request | replaced if it Failed   |
//! | Halted         | no (a running one is stopped)                     | -                       |
//! | Manual, Once   | created once, then left to start/stop requests    | left as it ended        |
//!
//! The legacy `running: true|false` means Always or Halted.

use crate::informer::{self, Cache};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use vmo_api::meta::{format_rfc3339, parse_rfc3339, unix_now};
use vmo_api::{KindInfo, Object, Registry};

/// First wait after a failed start; doubled per consecutive failure, up to `MAX_BACKOFF_SECS`.
const FIRST_BACKOFF_SECS: i64 = 10;
const MAX_BACKOFF_SECS: i64 = 300;

/// When the next start may be tried after failures (`status.startFailure.retryAfterTimestamp`).
fn retry_after(vm: &Object) -> Option<i64> {
    vm.status()["startFailure"]["retryAfterTimestamp"]
        .as_str()
        .and_then(parse_rfc3339)
}
use vmo_client::events::{EventType, Recorder};
use vmo_client::{Client, ClientError};

/// How many VMs reconcile at once.
const RECONCILE_WORKERS: usize = 16;

/// The label an instance carries with the name of the VM it belongs to (KubeVirt's).
pub const VM_LABEL: &str = "vm.kubevirt.io/name";

pub use vmo_api::kinds::kubevirt::run_strategy;

/// Runs the controller until the task is dropped.
pub async fn run(client: Client, registry: Arc<Registry>) {
    let changed = Arc::new(Notify::new());
    let vm_kind = *registry.resolve("vm").expect("vms are registered");
    let vmi_kind = *registry.resolve("vmi").expect("vmis are registered");
    let vms = informer::start(
        client.clone(),
        vm_kind,
        changed.clone(),
        informer::every_change,
    );
    let vmis = informer::start(
        client.clone(),
        vmi_kind,
        changed.clone(),
        informer::every_change,
    );
    let dv_kind = *registry
        .resolve("datavolumes")
        .expect("datavolumes are registered");
    let dvs = informer::start(client.clone(), dv_kind, changed.clone(), |event, _| {
        event != "MODIFIED"
    });
    tokio::spawn(seed_instancetypes(client.clone()));
    let recorder = Recorder::new(client.clone(), "vmo-vm-controller", "");
    let mut retries: std::collections::HashMap<String, (u32, tokio::time::Instant)> =
        Default::default();
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        if !(vms.synced() && vmis.synced() && dvs.synced()) {
            continue;
        }
        let now = tokio::time::Instant::now();
        // A VM whose reconcile keeps failing is retried with a doubling delay, not in a hot loop.
        let due: Vec<Object> = vms
            .list()
            .into_iter()
            .filter(|vm| {
                retries
                    .get(&vm.metadata.uid)
                    .is_none_or(|(_, at)| *at <= now)
            })
            .collect();
        // VMs are independent: several reconcile at once, so a VM created while many others are
        // writing their status waits for a free worker, not for all of them.
        let (client, recorder, dvs, vmis) = (&client, &recorder, &dvs, &vmis);
        let outcomes: Vec<(Object, Result<(), ClientError>)> = futures_util::stream::iter(due)
            .map(|vm| async move {
                let reconciled = match data_volumes(client, recorder, &dv_kind, &vm, dvs).await {
                    Ok(()) => reconcile(client, recorder, &vm_kind, &vmi_kind, &vm, vmis).await,
                    Err(e) => Err(e),
                };
                (vm, reconciled)
            })
            .buffer_unordered(RECONCILE_WORKERS)
            .collect()
            .await;
        for (vm, reconciled) in outcomes {
            match reconciled {
                Ok(()) => {
                    retries.remove(&vm.metadata.uid);
                }
                Err(e) => {
                    if !e.is_conflict() && !e.is_not_found() {
                        tracing::warn!(vm = %vm.display_name(), error = %e, "reconciling VM failed; will retry");
                    }
                    let failures = retries
                        .get(&vm.metadata.uid)
                        .map(|(n, _)| n + 1)
                        .unwrap_or(0);
                    let delay = Duration::from_millis(200) * 2u32.pow(failures.min(8));
                    retries.insert(vm.metadata.uid.clone(), (failures, now + delay));
                    let changed = changed.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        changed.notify_one();
                    });
                }
            }
        }
    }
}

/// Creates the DataVolumes of the VM's `dataVolumeTemplates` that do not exist yet, owned by the
/// VM (so they go with it). One that exists and belongs to someone else is reported, not touched.
async fn data_volumes(
    client: &Client,
    recorder: &Recorder,
    dv_kind: &KindInfo,
    vm: &Object,
    dvs: &Cache,
) -> Result<(), ClientError> {
    if vm.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let templates = vm.spec()["dataVolumeTemplates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ns = &vm.metadata.namespace;
    for t in templates {
        let name = t["metadata"]["name"].as_str().unwrap_or("");
        let existing = dvs.select(|d| d.metadata.namespace == *ns && d.metadata.name == name);
        if let Some(d) = existing.first() {
            if !d
                .metadata
                .owner_references
                .iter()
                .any(|r| r.uid == vm.metadata.uid)
            {
                let message = format!(
                    "DataVolume {name} exists and is not owned by this VM; it is used as it is"
                );
                tracing::debug!(vm = %vm.display_name(), "{message}");
            }
            continue;
        }
        let mut metadata = t["metadata"].clone();
        metadata["namespace"] = json!(ns);
        metadata["ownerReferences"] = json!([{
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "name": vm.metadata.name, "uid": vm.metadata.uid,
            "controller": true, "blockOwnerDeletion": true
        }]);
        let dv = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                        "metadata": metadata, "spec": t["spec"]});
        match client.create(dv_kind, ns, &dv).await {
            Ok(_) => {
                let message = format!("Created DataVolume {name}");
                recorder
                    .record(
                        vm,
                        EventType::Normal,
                        "SuccessfulDataVolumeCreate",
                        &message,
                    )
                    .await;
            }
            Err(e) if e.is_conflict() => {}
            Err(e) => {
                let message = format!("Error creating DataVolume {name}: {e}");
                recorder
                    .record(vm, EventType::Warning, "FailedDataVolumeCreate", &message)
                    .await;
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Whether a VM without an instance should get one now.
fn wants_instance(vm: &Object, strategy: &str, start_requested: bool) -> bool {
    match strategy {
        "Always" => true,
        // Stopped on request (`vmo stop` keeps RerunOnFailure, as in KubeVirt): until started.
        "RerunOnFailure" => start_requested || !has_request(vm, "Stop"),
        "Once" => start_requested || vm.status()["created"].is_null(),
        "Manual" => start_requested,
        _ => false,
    }
}

fn has_request(vm: &Object, action: &str) -> bool {
    vm.status()["stateChangeRequests"]
        .as_array()
        .is_some_and(|rs| rs.iter().any(|r| r["action"] == action))
}

fn phase(vmi: &Object) -> &str {
    vmi.status()["phase"].as_str().unwrap_or("Pending")
}

fn instance_for(vm: &Object) -> Value {
    let template = &vm.spec()["template"];
    let mut labels = template["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels[VM_LABEL] = json!(vm.metadata.name);
    let annotations = match &template["metadata"]["annotations"] {
        Value::Object(a) => Value::Object(a.clone()),
        _ => json!({}),
    };
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {
            "name": vm.metadata.name,
            "namespace": vm.metadata.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                "name": vm.metadata.name, "uid": vm.metadata.uid,
                "controller": true, "blockOwnerDeletion": true
            }],
        },
        "spec": template["spec"].clone(),
    })
}

async fn reconcile(
    client: &Client,
    recorder: &Recorder,
    vm_kind: &KindInfo,
    vmi_kind: &KindInfo,
    vm: &Object,
    vmis: &Cache,
) -> Result<(), ClientError> {
    let ns = &vm.metadata.namespace;
    let vmi = vmis
        .select(|i| i.metadata.namespace == *ns && i.metadata.name == vm.metadata.name)
        .into_iter()
        .find(|i| {
            i.metadata
                .owner_references
                .iter()
                .any(|r| r.uid == vm.metadata.uid)
        });
    let strategy = run_strategy(vm);
    let deleting = vm.metadata.deletion_timestamp.is_some();
    // What the instance is after this reconcile, for the status (the cache lags behind our writes).
    let mut now: Option<Option<Object>> = None;
    let requests = vm.status()["stateChangeRequests"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let start_requested = requests.iter().any(|r| r["action"] == "Start");
    // A stop request names the instance it stops; one for an earlier instance stops nothing now.
    let stop_requested = requests.iter().any(|r| {
        r["action"] == "Stop"
            && (r["uid"].is_null() || vmi.as_ref().is_some_and(|i| r["uid"] == i.metadata.uid))
    });
    match (&vmi, strategy.as_str()) {
        (None, _) if !deleting && wants_instance(vm, &strategy, start_requested) => {
            let mut instance = instance_for(vm);
            if let Some((kind, name)) = vmo_api::kinds::instancetype::reference(vm.spec()) {
                let size = sized_by(client, recorder, vm, kind, name).await?;
                vmo_api::kinds::instancetype::apply(&mut instance["spec"], &size);
            }
            // Report what was just done, not the cache's older view.
            let created = client.create(vmi_kind, ns, &instance).await?;
            let message = format!(
                "Started the virtual machine by creating the new virtual machine instance {}",
                created.metadata.name
            );
            recorder
                .record(vm, EventType::Normal, "SuccessfulCreate", &message)
                .await;
            now = Some(Some(created));
        }
        (Some(i), _) if i.metadata.deletion_timestamp.is_none() => {
            let ended = matches!(phase(i), "Succeeded" | "Failed");
            let replace = ended
                && (strategy == "Always"
                    || start_requested
                    || (strategy == "RerunOnFailure" && phase(i) == "Failed"));
            // A failure not yet counted is recorded (with its backoff) before it is replaced.
            let counted = vm.status()["startFailure"]["lastFailedVMIUID"].as_str()
                == Some(i.metadata.uid.as_str());
            let backing_off = phase(i) == "Failed"
                && (!counted || retry_after(vm).is_some_and(|t| t > unix_now()));
            if deleting || strategy == "Halted" || stop_requested || (replace && !backing_off) {
                let deleted = client
                    .delete_with_uid(
                        vmi_kind,
                        ns,
                        &i.metadata.name,
                        "Background",
                        Some(&i.metadata.uid),
                    )
                    .await?;
                let message = format!(
                    "Stopped the virtual machine by deleting the virtual machine instance {}",
                    i.metadata.uid
                );
                recorder
                    .record(vm, EventType::Normal, "SuccessfulDelete", &message)
                    .await;
                now = Some(
                    deleted
                        .metadata
                        .deletion_timestamp
                        .is_some()
                        .then_some(deleted),
                );
            }
        }
        _ => {}
    }
    if now.is_none() {
        if let Some(i) = vmi.as_ref().filter(|i| phase(i) == "Running") {
            now = hotplug_nics(client, recorder, vmi_kind, vm, i).await?;
        }
    }
    let vmi = now.unwrap_or(vmi);
    write_status(client, recorder, vm_kind, vm, vmi.as_ref(), &strategy).await
}

/// Gives a cluster without cluster instance types the common sizes (u1.nano ... u1.2xlarge),
/// retrying until the server takes them.
async fn seed_instancetypes(client: Client) {
    use vmo_api::kinds::instancetype::{common, COMMON};
    let registry = vmo_api::Registry::builtin();
    let kind = registry
        .resolve("virtualmachineclusterinstancetypes")
        .expect("instance types are registered");
    loop {
        match client.list(kind, None, "limit=1").await {
            Ok(list) if !list.items.is_empty() => return,
            Ok(_) => {
                let mut done = true;
                for (name, cpus, memory) in COMMON {
                    match client.create(kind, "", &common(name, *cpus, memory)).await {
                        Ok(_) => {}
                        Err(e) if e.is_conflict() => {}
                        Err(e) => {
                            tracing::warn!(instancetype = name, error = %e, "could not create a common instance type");
                            done = false;
                        }
                    }
                }
                if done {
                    tracing::info!("created the common instance types");
                    return;
                }
            }
            Err(e) => tracing::debug!(error = %e, "listing instance types failed; will retry"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The instance type (`kind`, `name`) a VM is sized by; a missing one is reported on the VM (and
/// the start retried with backoff, so creating the instance type later starts the VM).
async fn sized_by(
    client: &Client,
    recorder: &Recorder,
    vm: &Object,
    kind: &str,
    name: &str,
) -> Result<Object, ClientError> {
    let registry = vmo_api::Registry::builtin();
    let Some(info) = registry.resolve(&format!("{}s", kind.to_lowercase())) else {
        // Validation refuses unknown kinds; an older object may still hold one.
        return Err(ClientError::Decode(format!(
            "unknown instance type kind {kind}"
        )));
    };
    let namespace = if info.namespaced {
        vm.metadata.namespace.as_str()
    } else {
        ""
    };
    match client.get(info, namespace, name).await {
        Err(e) if e.is_not_found() => {
            let message = format!("cannot start: the {kind} {name} does not exist");
            recorder
                .record(vm, EventType::Warning, "FailedCreate", &message)
                .await;
            Err(e)
        }
        other => other,
    }
}

/// Carries NICs added to (or marked absent in) the template of a running VM over to its instance,
/// whose agent plugs them in (or out) of the guest.
async fn hotplug_nics(
    client: &Client,
    recorder: &Recorder,
    vmi_kind: &KindInfo,
    vm: &Object,
    vmi: &Object,
) -> Result<Option<Option<Object>>, ClientError> {
    let Some(change) =
        vmo_api::kinds::hotplug::live_change(&vm.spec()["template"]["spec"], vmi.spec())
    else {
        return Ok(None);
    };
    let patch = json!({
        "metadata": {"resourceVersion": vmi.metadata.resource_version},
        "spec": {"domain": {"devices": {"interfaces": change["interfaces"]}}, "networks": change["networks"]},
    });
    let patched = client
        .merge_patch(
            vmi_kind,
            &vmi.metadata.namespace,
            &vmi.metadata.name,
            None,
            &patch,
            "vmo-vm-controller",
        )
        .await?;
    recorder
        .record(
            vm,
            EventType::Normal,
            "NetworkInterfacesChanged",
            "Carried the template's network interfaces over to the running instance",
        )
        .await;
    Ok(Some(Some(patched)))
}

fn printable_status(vm: &Object, vmi: Option<&Object>) -> &'static str {
    if vm.metadata.deletion_timestamp.is_some() {
        return "Terminating";
    }
    let Some(i) = vmi else { return "Stopped" };
    if i.metadata.deletion_timestamp.is_some() {
        return "Stopping";
    }
    let paused = i.status()["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Paused" && c["status"] == "True")
    });
    let migrating = vmo_api::kinds::migration::MigrationState::of(i).is_some_and(|s| s.active());
    match phase(i) {
        "Running" if paused => "Paused",
        "Running" if migrating => "Migrating",
        "Running" => "Running",
        "Succeeded" => "Stopped",
        "Failed" => {
            let unschedulable = i.status()["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["reason"] == "Unschedulable"));
            if unschedulable {
                "ErrorUnschedulable"
            } else {
                "CrashLoopBackOff"
            }
        }
        _ => {
            let unschedulable = i.status()["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["reason"] == "Unschedulable"));
            let waiting = i.status()["conditions"].as_array().and_then(|c| {
                c.iter().find_map(|c| match c["reason"].as_str() {
                    Some("Provisioning") => Some("Provisioning"),
                    Some("WaitingForVolumeBinding") => Some("WaitingForVolumeBinding"),
                    Some("DataVolumeError") => Some("DataVolumeError"),
                    Some("PvcNotFound") => Some("ErrorPvcNotFound"),
                    _ => None,
                })
            });
            if unschedulable {
                "ErrorUnschedulable"
            } else {
                waiting.unwrap_or("Starting")
            }
        }
    }
}

async fn write_status(
    client: &Client,
    recorder: &Recorder,
    kind: &KindInfo,
    vm: &Object,
    vmi: Option<&Object>,
    strategy: &str,
) -> Result<(), ClientError> {
    let mut printable = printable_status(vm, vmi);
    let failed_now = vmi.is_some_and(|i| phase(i) == "Failed");
    let running_now = vmi.is_some_and(|i| phase(i) == "Running");
    let ready = vmi.is_some_and(|i| {
        i.metadata.deletion_timestamp.is_none()
            && i.status()["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    });
    let mut status = vm.status().clone();
    if !status.is_object() {
        status = json!({});
    }
    let before = status.clone();
    if running_now {
        status.as_object_mut().map(|s| s.remove("startFailure"));
    } else if failed_now
        && printable != "ErrorUnschedulable"
        && matches!(strategy, "Always" | "RerunOnFailure")
    {
        let failed_uid = vmi.map(|i| i.metadata.uid.clone()).unwrap_or_default();
        let counted =
            status["startFailure"]["lastFailedVMIUID"].as_str() == Some(failed_uid.as_str());
        if !counted {
            let count = status["startFailure"]["consecutiveFailCount"]
                .as_i64()
                .unwrap_or(0)
                + 1;
            let wait = (FIRST_BACKOFF_SECS << (count - 1).min(10)).min(MAX_BACKOFF_SECS);
            status["startFailure"] = json!({
                "consecutiveFailCount": count,
                "lastFailedVMIUID": failed_uid,
                "retryAfterTimestamp": format_rfc3339(unix_now() + wait),
            });
            let message = format!("The virtual machine failed to start ({count} in a row); the next attempt is in {wait}s");
            recorder
                .record(vm, EventType::Warning, "CrashLoopBackOff", &message)
                .await;
        }
        printable = "CrashLoopBackOff";
    }
    status["printableStatus"] = json!(printable);
    // A start request is done once an instance runs or starts, a stop request once none is left.
    let live = vmi.is_some_and(|i| {
        i.metadata.deletion_timestamp.is_none() && !matches!(phase(i), "Succeeded" | "Failed")
    });
    if let Some(requests) = status["stateChangeRequests"].as_array().cloned() {
        let start_pending = requests.iter().any(|r| r["action"] == "Start") && !live;
        let pending: Vec<Value> = requests
            .into_iter()
            .filter(|r| match r["action"].as_str() {
                Some("Start") => !live,
                Some("Stop") => match vmi.filter(|i| i.metadata.deletion_timestamp.is_none()) {
                    // Still to carry out, unless it names an earlier instance.
                    Some(i) => r["uid"].is_null() || r["uid"] == i.metadata.uid,
                    // Done; for RerunOnFailure it keeps the VM stopped until a start request.
                    None => strategy == "RerunOnFailure" && !start_pending,
                },
                _ => false,
            })
            .collect();
        if pending.is_empty() {
            status
                .as_object_mut()
                .map(|s| s.remove("stateChangeRequests"));
        } else {
            status["stateChangeRequests"] = Value::Array(pending);
        }
    }
    status["ready"] = json!(ready);
    status["runStrategy"] = json!(strategy);
    status["observedGeneration"] = json!(vm.metadata.generation);
    if vmi.is_some() {
        status["created"] = json!(true);
    } else if !matches!(strategy, "Once" | "Manual") {
        status.as_object_mut().map(|s| s.remove("created"));
    }
    let ready_condition = json!({
        "type": "Ready",
        "status": if ready { "True" } else { "False" },
        "reason": if ready { "" } else { printable },
    });
    status["conditions"] = json!([ready_condition]);
    if status == before {
        return Ok(());
    }
    let mut updated = vm.clone();
    updated.body.insert("status".into(), status);
    client
        .update(kind, &updated, Some("status"))
        .await
        .map(|_| ())
}
