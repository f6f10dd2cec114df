//! Storage classes and their profiles. A cluster with no class at all gets vmo's two: `local`
//! (the default; the node's own pool, bound when a VM first uses it, so the VM and its disk land
//! on the same node) and `shared` (the pool every node mounts; ReadWriteMany, bound at once). A
//! StorageProfile per class tells DataVolumes what a claim of that class gets by default, as CDI's
//! does (the reference architecture's `storageprofile-cdi-pwx`).

use super::{logged, Storage};
use serde_json::{json, Value};
use vmo_api::kinds::storage::{
    is_default_class, StorageClass, DEFAULT_CLASS_ANNOTATION, LOCAL_PROVISIONER, SHARED_PROVISIONER,
};
use vmo_api::Object;

/// The classes a fresh cluster gets: (name, provisioner, binding mode, default).
pub const BUILTIN_CLASSES: &[(&str, &str, &str, bool)] = &[
    ("local", LOCAL_PROVISIONER, "WaitForFirstConsumer", true),
    ("shared", SHARED_PROVISIONER, "Immediate", false),
];

/// The default class among `classes`: the newest one marked default, as Kubernetes picks.
pub fn default_class(classes: &[Object]) -> Option<&Object> {
    classes
        .iter()
        .filter(|c| is_default_class(c))
        .max_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        })
}

/// Creates the built-in classes when the cluster has none; true once done (or not needed).
pub(super) async fn bootstrap(s: &Storage) -> bool {
    if !s.classes.list().is_empty() {
        return true;
    }
    let mut done = true;
    for (name, provisioner, binding, default) in BUILTIN_CLASSES {
        let class = json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name, "annotations": {
                DEFAULT_CLASS_ANNOTATION: if *default { "true" } else { "false" }}},
            "provisioner": provisioner, "reclaimPolicy": "Delete",
            "volumeBindingMode": binding, "allowVolumeExpansion": true,
        });
        match s.client.create(&s.class_kind, "", &class).await {
            Ok(_) => tracing::info!(class = name, "created the built-in storage class"),
            Err(e) if e.is_conflict() => {}
            Err(e) => {
                tracing::warn!(class = name, error = %e, "could not create a built-in storage class");
                done = false;
            }
        }
    }
    done
}

/// What claims of `class` get when a DataVolume's `storage` leaves them out.
pub fn profile_status(class: &Object) -> Value {
    let spec = StorageClass::of(class);
    let modes = if spec.shared() {
        json!(["ReadWriteMany"])
    } else {
        json!(["ReadWriteOnce"])
    };
    json!({
        "storageClass": class.metadata.name,
        "provisioner": spec.provisioner,
        "claimPropertySets": [{"accessModes": modes, "volumeMode": "Filesystem"}],
        // Clones inside one pool are copy-on-write, made by the provisioner itself.
        "cloneStrategy": "csi-clone",
    })
}

/// One profile per class, named like it; profiles of deleted classes go.
pub(super) async fn sync_profiles(s: &Storage) {
    let classes = s.classes.list();
    let profiles = s.profiles.list();
    for class in &classes {
        let status = profile_status(class);
        match profiles
            .iter()
            .find(|p| p.metadata.name == class.metadata.name)
        {
            None => {
                let profile = json!({
                    "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "StorageProfile",
                    "metadata": {"name": class.metadata.name},
                    "spec": {},
                });
                if let Ok(created) = s.client.create(&s.profile_kind, "", &profile).await {
                    let patch = json!({"status": status});
                    let r = s
                        .client
                        .merge_patch(
                            &s.profile_kind,
                            "",
                            &created.metadata.name,
                            Some("status"),
                            &patch,
                            "vmo-storage-controller",
                        )
                        .await;
                    logged("write a storage profile", &created, r);
                }
            }
            Some(p) if p.status() != &status => {
                let r = s
                    .client
                    .merge_patch(
                        &s.profile_kind,
                        "",
                        &p.metadata.name,
                        Some("status"),
                        &json!({"status": status}),
                        "vmo-storage-controller",
                    )
                    .await;
                logged("write a storage profile", p, r);
            }
            Some(_) => {}
        }
    }
    for p in &profiles {
        if !classes.iter().any(|c| c.metadata.name == p.metadata.name) {
            let r = s
                .client
                .delete(&s.profile_kind, "", &p.metadata.name, "Background")
                .await;
            logged("delete a storage profile", p, r);
        }
    }
}

/// The access modes and volume mode the profile of `class` gives (spec overrides first).
pub fn profile_defaults(profile: Option<&Object>) -> (Vec<String>, String) {
    let set = profile.and_then(|p| {
        [
            &p.spec()["claimPropertySets"],
            &p.status()["claimPropertySets"],
        ]
        .into_iter()
        .find_map(|sets| sets.as_array().and_then(|a| a.first()).cloned())
    });
    let modes = set
        .as_ref()
        .and_then(|s| s["accessModes"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .filter(|m: &Vec<String>| !m.is_empty())
        .unwrap_or_else(|| vec!["ReadWriteOnce".into()]);
    let mode = set
        .as_ref()
        .and_then(|s| s["volumeMode"].as_str())
        .unwrap_or("Filesystem")
        .to_string();
    (modes, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, default: bool, created: &str, provisioner: &str) -> Object {
        Object::from_value(
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name, "creationTimestamp": created,
                         "annotations": {DEFAULT_CLASS_ANNOTATION: default.to_string()}},
            "provisioner": provisioner}),
        )
        .expect("class")
    }

    #[test]
    fn the_newest_default_class_wins() {
        let classes = vec![
            class("a", true, "2026-01-01T00:00:00Z", LOCAL_PROVISIONER),
            class("b", true, "2026-02-01T00:00:00Z", LOCAL_PROVISIONER),
            class("c", false, "2026-03-01T00:00:00Z", LOCAL_PROVISIONER),
        ];
        assert_eq!(
            default_class(&classes).map(|c| c.metadata.name.as_str()),
            Some("b")
        );
        assert!(default_class(&classes[2..]).is_none());
    }

    #[test]
    fn profiles_give_shared_classes_read_write_many() {
        let shared = class("s", false, "2026-01-01T00:00:00Z", SHARED_PROVISIONER);
        let profile = Object::from_value(json!({"apiVersion": "cdi.kubevirt.io/v1beta1",
            "kind": "StorageProfile", "metadata": {"name": "s"},
            "status": profile_status(&shared)}))
        .expect("profile");
        assert_eq!(
            profile_defaults(Some(&profile)),
            (vec!["ReadWriteMany".to_string()], "Filesystem".to_string())
        );
        assert_eq!(profile_defaults(None).0, vec!["ReadWriteOnce".to_string()]);
    }
}
