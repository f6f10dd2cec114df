//! Instance types (`instancetype.kubevirt.io/v1beta1`) through the API and the controllers: a new
//! cluster has the common sizes, a VM naming one gets its vCPUs and memory in the instance the
//! controller creates (cluster-wide and namespaced sizes), and a VM naming a missing size, an
//! unknown kind, or setting the vCPUs itself is refused naming the field.

use serde_json::{json, Value};
use std::time::Duration;
use vmo_client::ClientError;
use vmo_testkit::{vm_manifest, wait_for, TestServer};

const WAIT: Duration = Duration::from_secs(20);

fn sized(name: &str, instancetype: Value) -> Value {
    let mut vm = vm_manifest(name);
    vm["spec"]["runStrategy"] = json!("Always");
    vm["spec"]["instancetype"] = instancetype;
    let domain = &mut vm["spec"]["template"]["spec"]["domain"];
    domain.as_object_mut().unwrap().remove("cpu");
    domain.as_object_mut().unwrap().remove("memory");
    vm
}

fn refused_fields(r: Result<impl std::fmt::Debug, ClientError>) -> Vec<String> {
    match r {
        Err(ClientError::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            s.details
                .map(|d| d.causes.into_iter().map(|c| c.field).collect())
                .unwrap_or_default()
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn vms_are_sized_by_instance_types() {
    let s = TestServer::start_with_controllers().await;
    let (vm, vmi) = (s.kind("vm"), s.kind("vmi"));
    let cluster_sizes = s.kind("vmcit");
    let all = wait_for("the common instance types", WAIT, || async {
        let list = s.client.list(&cluster_sizes, None, "").await.ok()?;
        (list.items.len() >= 8).then_some(list.items)
    })
    .await;
    let nano = all.iter().find(|o| o.metadata.name == "u1.nano").unwrap();
    assert_eq!(nano.spec()["cpu"]["guest"], 1);
    assert_eq!(nano.spec()["memory"]["guest"], "512Mi");

    s.client
        .create(
            &vm,
            "default",
            &sized("small", json!({"name": "u1.2xmedium"})),
        )
        .await
        .expect("a VM sized by a cluster instance type");
    let instance = wait_for("the instance of small", WAIT, || async {
        s.client.get(&vmi, "default", "small").await.ok()
    })
    .await;
    let domain = &instance.spec()["domain"];
    assert_eq!(domain["cpu"]["sockets"], 2, "{domain}");
    assert_eq!(domain["memory"]["guest"], "4Gi", "{domain}");

    let own_sizes = s.kind("vmit");
    s.client
        .create(
            &own_sizes,
            "default",
            &json!({"apiVersion": "instancetype.kubevirt.io/v1beta1",
                "kind": "VirtualMachineInstancetype", "metadata": {"name": "db"},
                "spec": {"cpu": {"guest": 3}, "memory": {"guest": "768Mi"}}}),
        )
        .await
        .expect("a namespaced instance type");
    s.client
        .create(
            &vm,
            "default",
            &sized(
                "db1",
                json!({"kind": "VirtualMachineInstancetype", "name": "db"}),
            ),
        )
        .await
        .expect("a VM sized by a namespaced instance type");
    let instance = wait_for("the instance of db1", WAIT, || async {
        s.client.get(&vmi, "default", "db1").await.ok()
    })
    .await;
    assert_eq!(instance.spec()["domain"]["cpu"]["sockets"], 3);
    assert_eq!(instance.spec()["domain"]["memory"]["guest"], "768Mi");

    let missing = s
        .client
        .create(
            &vm,
            "default",
            &sized("nope", json!({"name": "u1.gigantic"})),
        )
        .await;
    assert_eq!(refused_fields(missing), ["spec.instancetype.name"]);
    let mut both = sized("both", json!({"name": "u1.nano", "kind": "Flavor"}));
    both["spec"]["template"]["spec"]["domain"]["cpu"] = json!({"cores": 4});
    let fields = refused_fields(s.client.create(&vm, "default", &both).await);
    assert_eq!(
        fields,
        ["spec.instancetype.kind", "spec.template.spec.domain.cpu"]
    );
    let bad_size = s
        .client
        .create(
            &own_sizes,
            "default",
            &json!({"apiVersion": "instancetype.kubevirt.io/v1beta1",
                "kind": "VirtualMachineInstancetype", "metadata": {"name": "bad"},
                "spec": {"cpu": {"guest": 0}}}),
        )
        .await;
    assert_eq!(
        refused_fields(bad_size),
        ["spec.cpu.guest", "spec.memory.guest"]
    );
}
