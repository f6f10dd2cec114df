//! Fuzzing of every parser that faces users, on the stable toolchain: a seeded generator produces
//! random and mutated inputs (from valid seeds, so deep paths are reached) and each parser must
//! return a value or a typed error, never panic, hang or allocate without bound. The seed is printed,
//! so a failure can be replayed with `VMO_FUZZ_SEED`.

use serde_json::{json, Value};
use vmo_api::decode::decode_documents;
use vmo_api::selector::{FieldSelector, LabelSelector};
use vmo_api::{Object, Quantity, Registry};

/// A small, fast PRNG (xorshift64*): deterministic for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

fn seed() -> u64 {
    let seed = std::env::var("VMO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    eprintln!("fuzz seed: {seed} (replay with VMO_FUZZ_SEED={seed})");
    seed
}

/// Mutates bytes: flips, inserts interesting bytes, deletes, duplicates slices.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    const INTERESTING: &[u8] = b"{}[]:,\"'&*!|>-.\n\t 0e+-KiMmuxn()=\\\x00\xff";
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(6) {
        let pos = rng.below(out.len() + 1);
        match rng.below(5) {
            0 if !out.is_empty() && pos < out.len() => out[pos] ^= 1 << rng.below(8),
            1 => out.insert(pos, INTERESTING[rng.below(INTERESTING.len())]),
            2 if pos < out.len() => {
                out.remove(pos);
            }
            3 if !out.is_empty() => {
                let start = rng.below(out.len());
                let end = (start + rng.below(16)).min(out.len());
                let slice = out[start..end].to_vec();
                out.splice(pos..pos, slice);
            }
            _ => out.truncate(pos),
        }
    }
    out
}

const ITERATIONS: usize = 20_000;

#[test]
fn quantities_never_panic_and_round_trip_ordering() {
    let mut rng = Rng(seed());
    let parts = [
        "",
        "-",
        "+",
        "1",
        "0",
        "12",
        ".",
        "5",
        "999999999999",
        "e",
        "E",
        "3",
        "Ki",
        "Mi",
        "Gi",
        "Ei",
        "m",
        "n",
        "k",
        "G",
        "QB",
        "i",
        "e-9",
        "E+60",
    ];
    for _ in 0..ITERATIONS {
        let s: String = (0..rng.below(6)).map(|_| rng.pick(&parts)).collect();
        if let Ok(q) = Quantity::parse(&s) {
            let _ = q.value_ceil();
            let _ = q.milli_value_ceil();
            assert_eq!(q.cmp(&q), std::cmp::Ordering::Equal, "{s}");
        }
        let bytes = mutate(&mut rng, s.as_bytes());
        let _ = Quantity::parse(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn selectors_never_panic() {
    let mut rng = Rng(seed());
    let seeds = [
        "app=web,tier!=db",
        "env in (a,b),!x",
        "k notin (v)",
        "a==b",
        "kubevirt.io/vm=x",
    ];
    for _ in 0..ITERATIONS {
        let base = rng.pick(&seeds);
        let input = String::from_utf8_lossy(&mutate(&mut rng, base.as_bytes())).into_owned();
        if let Ok(sel) = LabelSelector::parse(&input) {
            // A selector that parsed prints in a form that parses to the same requirements.
            let again = LabelSelector::parse(&sel.to_string()).expect("printed selector parses");
            assert_eq!(again, sel, "{input:?}");
        }
        let _ = FieldSelector::parse(&input);
    }
}

fn vm_seed() -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "fuzz", "namespace": "default", "labels": {"a": "b"}},
        "spec": {"runStrategy": "Always", "template": {"spec": {
            "domain": {"cpu": {"cores": 2}, "memory": {"guest": "1Gi"},
                "resources": {"requests": {"memory": "1Gi", "cpu": "500m"}},
                "devices": {"disks": [{"name": "d", "disk": {"bus": "virtio"}, "bootOrder": 1}],
                            "interfaces": [{"name": "n", "masquerade": {}, "macAddress": "02:00:00:00:00:01"}]},
                "firmware": {"bootloader": {"efi": {"secureBoot": false}}}},
            "volumes": [{"name": "d", "hostDisk": {"path": "/x.img", "type": "Disk"}},
                        {"name": "c", "cloudInitNoCloud": {"userDataBase64": "I2Nsb3VkLWNvbmZpZw=="}}],
            "networks": [{"name": "n", "pod": {}}],
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]
        }}}
    })
}

#[test]
fn manifests_decode_and_validate_without_panicking() {
    let mut rng = Rng(seed());
    let registry = Registry::builtin();
    let kind = registry.resolve("vm").copied().expect("vm kind");
    let yaml = serde_yaml_ng::to_string(&vm_seed()).expect("yaml");
    let json = serde_json::to_string(&vm_seed()).expect("json");
    for i in 0..ITERATIONS / 4 {
        let base = if i % 2 == 0 {
            yaml.as_bytes()
        } else {
            json.as_bytes()
        };
        let input = mutate(&mut rng, base);
        let Ok(docs) = decode_documents(&input) else {
            continue;
        };
        for doc in docs {
            if let Ok(obj) = Object::from_value(doc) {
                let _ = (kind.validate)(&obj);
                let _ = vmo_api::validation::object_meta(&obj.metadata, true, false);
            }
        }
    }
}

fn data_volume_seed() -> Value {
    json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": "fuzz", "namespace": "default"},
        "spec": {"source": {"http": {"url": "https://images.example/disk.qcow2",
                    "secretRef": "creds", "certConfigMap": "ca", "extraHeaders": ["X-A: b"],
                    "checksum": format!("sha256:{}", "a".repeat(64))}},
                 "storage": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
                             "storageClassName": "local",
                             "resources": {"requests": {"storage": "10Gi"}}}}
    })
}

fn claim_seed() -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "fuzz", "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "shared",
                 "resources": {"requests": {"storage": "1Gi"}},
                 "dataSource": {"kind": "PersistentVolumeClaim", "name": "golden"}}
    })
}

fn class_seed() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "fuzz", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "vmo.io/local", "parameters": {"format": "qcow2"},
        "reclaimPolicy": "Retain", "volumeBindingMode": "WaitForFirstConsumer",
        "allowVolumeExpansion": true
    })
}

fn service_seed() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "fuzz", "namespace": "default",
                     "annotations": {"metallb.universe.tf/address-pool": "lan"}},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "loadBalancerIP": "10.0.0.5",
                 "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080}]}
    })
}

fn pool_seed() -> Value {
    json!({
        "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
        "metadata": {"name": "fuzz", "namespace": "default"},
        "spec": {"addresses": ["10.0.0.0/28", "10.0.1.5-10.0.1.9"], "autoAssign": true,
                 "avoidBuggyIPs": true}
    })
}

fn attachment_seed() -> Value {
    json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "fuzz", "namespace": "default",
                     "annotations": {"vmo.io/published-to": "a,b"}},
        "spec": {"config": "{\"cniVersion\": \"0.3.1\", \"type\": \"bridge\", \"bridge\": \"br0\", \"vlan\": 30, \"mtu\": 1500}"}
    })
}

#[test]
fn structured_mutations_of_valid_objects_are_validated_without_panicking() {
    for (name, seed) in [
        ("vm", vm_seed as fn() -> Value),
        ("datavolume", data_volume_seed),
        ("pvc", claim_seed),
        ("storageclass", class_seed),
        ("service", service_seed),
        ("ipaddresspool", pool_seed),
        ("network-attachment-definition", attachment_seed),
    ] {
        let registry = Registry::builtin();
        let kind = registry.resolve(name).copied().expect("kind");
        assert!(
            (kind.validate)(&Object::from_value(seed()).expect("seed")).is_empty(),
            "the {name} seed is valid"
        );
        structured_mutations(kind, seed);
    }
}

fn structured_mutations(kind: vmo_api::KindInfo, seed_object: fn() -> Value) {
    let mut rng = Rng(seed());
    let replacements = [
        json!(null),
        json!(-1),
        json!(0),
        json!(""),
        json!("12QB"),
        json!([]),
        json!({}),
        json!(true),
        json!(1e300),
        json!("x".repeat(300)),
        json!([{"name": ""}]),
    ];
    for _ in 0..ITERATIONS / 4 {
        let mut v = seed_object();
        for _ in 0..1 + rng.below(4) {
            // Walk to a random node, recording its JSON pointer, then replace it.
            let mut pointer = String::new();
            let mut node = &v;
            loop {
                let step = match node {
                    Value::Object(map) if !map.is_empty() && rng.below(4) != 0 => {
                        let key = map.keys().nth(rng.below(map.len())).cloned().expect("key");
                        Some(key)
                    }
                    Value::Array(items) if !items.is_empty() && rng.below(4) != 0 => {
                        Some(rng.below(items.len()).to_string())
                    }
                    _ => None,
                };
                let Some(step) = step else { break };
                pointer.push('/');
                pointer.push_str(&step.replace('~', "~0").replace('/', "~1"));
                node = v.pointer(&pointer).expect("just walked there");
            }
            let replacement = replacements[rng.below(replacements.len())].clone();
            if let Some(target) = v.pointer_mut(&pointer) {
                *target = replacement;
            }
        }
        if let Ok(obj) = Object::from_value(v) {
            let errors = (kind.validate)(&obj);
            for e in errors {
                assert!(!e.path.is_empty(), "every error names a field: {e}");
            }
        }
    }
}
